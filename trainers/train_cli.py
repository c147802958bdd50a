"""``dp-studio train MAIN.toml``: run training headless, with a progress line, and print the run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainers.commands import Command
from trainers.events import Event
from trainers.runs import RunError, RunManager


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train from a main TOML without the web page (Ctrl-C stops and saves)")
    p.add_argument("main", type=Path, help="the main TOML (its dataset TOML is read from its `dataset` key; relative paths "
                   "resolve against its folder, or the current directory when the dataset is found only from there)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--name", default=None, help="run name shown in the studio")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue a run exactly: alone, the newest run of output_dir; or a run folder, or one of "
                        "its global_stepN folders")
    p.set_defaults(handler=train)


def progress_line(ev: Event) -> str | None:
    """One status line for a step or phase event; None for events printed on their own line."""
    if ev.kind == "step":
        total = f"/{ev.total_steps}" if ev.total_steps else ""
        speed = f" {ev.it_per_s:.2f} it/s" if ev.it_per_s else ""
        eta = f" ETA {int(ev.eta_s) // 60}:{int(ev.eta_s) % 60:02d}" if ev.eta_s is not None else ""
        return f"step {ev.step}{total} epoch {ev.epoch} loss {ev.loss:.4g} lr {ev.lr:.3g}{speed}{eta}"
    if ev.kind == "phase":
        return f"[{ev.phase}] {ev.message}".rstrip()
    return None


def _print_event(ev: Event) -> None:
    line = progress_line(ev)
    if line is not None and ev.kind == "step":
        sys.stdout.write("\r" + line.ljust(100))
        sys.stdout.flush()
        return
    if ev.kind == "log" and ev.level in ("warning", "error"):
        line = f"{ev.level}: {ev.message}"
    elif ev.kind == "checkpoint":
        line = f"saved {ev.path}"
    elif ev.kind == "failed":
        line = f"FAILED: {ev.error}"
    elif ev.kind == "finished":
        line = f"finished ({ev.reason}) at step {ev.step}"
    if line:
        print("\n" + line if ev.kind != "phase" else line, flush=True)


def train(args: argparse.Namespace, manager: RunManager | None = None) -> int:
    manager = manager or RunManager()
    try:
        if args.resume is not None:
            run_id, point = manager.resume_target(args.main, args.resume or None)
            print(f"resuming {run_id} from {point}", flush=True)
            run_id = manager.resume(run_id, point, max_steps=args.max_steps)
        else:
            run_id = manager.start(args.main, name=args.name, max_steps=args.max_steps)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info = manager.info(run_id)
    print(f"run folder: {info.run_dir}" + (" (queued behind the running one)" if info.status == "queued" else ""),
          flush=True)
    last: Event | None = None
    try:
        for ev in manager.events(run_id):
            _print_event(ev)
            last = ev
    except KeyboardInterrupt:
        print("\nstopping: the trainer saves its LoRA at the next step ...", flush=True)
        manager.send(run_id, Command.STOP)
        for ev in manager.events(run_id):
            last = ev
        if last is not None:
            _print_event(last)
    print(f"run folder: {info.run_dir}")
    return 0 if last is not None and last.kind == "finished" else 1
