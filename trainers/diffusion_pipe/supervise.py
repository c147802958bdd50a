"""The diffusion-pipe backend's child: launch ``deepspeed train.py``, turn its output into events, relay commands.

Runs as ``python -m trainers.diffusion_pipe --run-dir RUN_DIR`` (started by RunManager in its own session).
deepspeed runs in a process group of its own, so stopping it never takes the supervisor down with it; its merged
stdout/stderr goes raw into ``stdout.log`` and, parsed, into ``events.jsonl``. Commands map onto diffusion-pipe's
signal files in its run folder (notes §4.7): ``stop`` -> ``save_quit``, ``save`` -> ``save``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from trainers.checkpoints import saved_lora_file
from trainers.commands import Command, take_commands
from trainers.diffusion_pipe.discover import find_new_run_dir, lora_ready, saved_folders
from trainers.diffusion_pipe.launch import DP_SUBDIR, LaunchError
from trainers.diffusion_pipe.parse import LogParser
from trainers.diffusion_pipe.plan import Plan, prepare, resume_folder
from trainers.diffusion_pipe.tb_eval import EvalTail
from trainers.events import (
    TERMINAL_KINDS,
    CheckpointEvent,
    EvalEvent,
    Event,
    EventWriter,
    FailedEvent,
    LogEvent,
    PhaseEvent,
)
from trainers.lora_check import log_line as lora_log_line
from trainers.runs import RUN_FILE, write_json_atomic

__all__ = ["Plan", "Supervisor", "fail", "prepare", "resume_folder"]

POLL_S = 0.5
TERM_WAIT_S = 10.0  # after SIGTERM, this long before SIGKILL
SIGNALLED_TERM_WAIT_S = 5.0  # shorter when we were signalled: RunManager.kill waits 10 s before killing us
SIGNAL_FILES = ("save", "save_quit")
STOP_NOTE = ("diffusion-pipe writes a training-state checkpoint (global_stepN, for --resume_from_checkpoint) and "
             "exits; save_quit does NOT write a LoRA, so the newest epochN/stepN folder stays the newest LoRA")
SAVE_NOTE = ("diffusion-pipe writes a training-state checkpoint (global_stepN) at its next step and goes on; this "
             "is not a LoRA (LoRAs come from save_every_n_epochs / save_every_n_steps)")
SAMPLE_NOTE = ("diffusion-pipe cannot render samples during training; use the runs library's sidecar sampling on a "
               "saved epoch")


class _Pump(threading.Thread):
    """Copies the child's output raw into stdout.log and hands complete lines (split at \\n or \\r) to a queue."""

    def __init__(self, stream, log_path: Path, secrets: list[str]):
        super().__init__(daemon=True, name="dp-output")
        self.stream, self.log_path = stream, log_path
        self.secrets = [s.encode() for s in secrets if len(s) >= 4]
        self.lines: queue.Queue[str | None] = queue.Queue()

    def run(self) -> None:
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        buf = b""
        try:
            while chunk := os.read(self.stream.fileno(), 65536):
                for secret in self.secrets:  # never let a key reach a file
                    chunk = chunk.replace(secret, b"***")
                os.write(fd, chunk)
                buf += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    self.lines.put(raw.decode("utf-8", "replace"))
        finally:
            os.close(fd)
            if buf:
                self.lines.put(buf.decode("utf-8", "replace"))
            self.lines.put(None)


class Supervisor:
    """Owns one diffusion-pipe process for one run folder."""

    def __init__(self, run_dir: Path, plan: Plan, events: EventWriter):
        self.run_dir, self.plan, self.events = run_dir, plan, events
        self.parser = LogParser(plan.schedule, where=self._where)
        self.evals = EvalTail(plan.eval_names)
        self.dp_run_dir = plan.dp_run_dir
        self.emitted: set[str] = set()
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.stop_at: float | None = None
        self.term_at: float | None = None
        self.killed = False
        self.signalled = False
        self.terminal: Event | None = None
        self.touched: set[str] = set()

    # ---- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        """Launch, follow to the end, write the one terminal event; returns this process's exit code."""
        self._launch()
        pump = _Pump(self.proc.stdout, self.run_dir / "stdout.log", self.plan.secrets)
        pump.start()
        self._follow(pump.lines)
        rc = self._wait_exit()
        pump.join(timeout=5.0)
        self._drain(pump.lines)
        self._clean_signal_files(self.touched)
        if self.signalled:
            return 128 + signal.SIGTERM  # whoever signalled us records how the run ended (RunManager.kill does)
        self._discover()
        self._record_dp_run_dir(again=True)
        self._scan_saves()
        self._read_evals()
        self._emit(self.parser.finish(rc, stop_requested=self.stop_at is not None))
        return 0 if self.terminal is not None and self.terminal.kind == "finished" else 1

    def _launch(self) -> None:
        for warning in self.plan.warnings:
            self.events.emit(LogEvent(level="warning", message=warning))
        copy = self.plan.copy
        self.events.emit(LogEvent(message=f"launch copy {self._rel(copy.main)} (relative paths made absolute); "
                                          f"keys set: {', '.join(copy.changed)}"))
        self.events.emit(LogEvent(message=f"launching {self.plan.spec.describe()}"))
        self.started = time.time()
        spec = self.plan.spec
        try:
            self.proc = subprocess.Popen(spec.argv, cwd=spec.cwd, env=spec.env(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise LaunchError(f"could not start {spec.argv[0]}: {exc}. Fix: check [studio] deepspeed_command / "
                              "diffusion-pipe's environment") from exc
        self.events.emit(PhaseEvent(phase="loading", message=f"diffusion-pipe started (pid {self.proc.pid})"))
        if self.dp_run_dir is not None:  # resuming: its older saves were reported by the earlier run
            self._clean_signal_files(SIGNAL_FILES)
            self.evals.skip_existing(self.dp_run_dir)
            self.emitted.update(self._rel(self.dp_run_dir / name) for name, _ in saved_folders(self.dp_run_dir))
            self._record_dp_run_dir()

    def _follow(self, lines: queue.Queue) -> None:
        last = 0.0
        while not self.signalled:
            try:
                line = lines.get(timeout=0.25)
            except queue.Empty:
                line = ""
            if line is None:
                return
            if line:
                self._discover()
                self._emit(self.parser.feed(line))
            if time.monotonic() - last >= POLL_S:
                self._housekeeping()
                last = time.monotonic()

    def _wait_exit(self) -> int:
        """Wait for the process (its output may end before it does), still honouring commands and deadlines."""
        last = time.monotonic()
        while (rc := self.proc.poll()) is None:
            if self.signalled:
                self._terminate("the supervisor was asked to end")
                self._escalate()
            elif time.monotonic() - last >= POLL_S:
                self._housekeeping()
                last = time.monotonic()
            time.sleep(0.1)
        return rc

    def _drain(self, lines: queue.Queue) -> None:
        while True:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                return
            if line:
                self._emit(self.parser.feed(line))

    # ---- while running --------------------------------------------------------------------------
    def _discover(self) -> None:
        """Find diffusion-pipe's own run folder once it exists (cheap: output_dir holds only that folder)."""
        if self.dp_run_dir is None:
            found = find_new_run_dir(self.plan.copy.output_dir, self.started)
            if found is not None:
                self.dp_run_dir = found
                self._record_dp_run_dir()

    def _housekeeping(self) -> None:
        self._discover()
        self._emit(self.parser.tick())
        self._scan_saves()
        self._read_evals()
        for command in sorted(take_commands(self.run_dir)):
            self._command(command)
        self._escalate()

    def _command(self, command: Command) -> None:
        if command is Command.SAMPLE:
            self.events.emit(LogEvent(level="warning", message=SAMPLE_NOTE))
        elif command is Command.SAVE:
            if self.dp_run_dir is None:
                self.events.emit(LogEvent(level="warning", message="cannot save yet: diffusion-pipe has not created "
                                                                   "its run folder (still loading or caching)"))
                return
            self._touch("save")
            self.events.emit(LogEvent(message=f"save requested (touched {self._rel(self.dp_run_dir / 'save')}): "
                                              f"{SAVE_NOTE}"))
        elif self.stop_at is not None:
            self._terminate("stop was requested again")
        else:
            self._stop()

    def _stop(self) -> None:
        self.stop_at = time.monotonic()
        if self.dp_run_dir is None:
            self._terminate("stop requested before diffusion-pipe created its run folder (nothing to checkpoint yet)")
            return
        self._touch("save_quit")
        self.events.emit(LogEvent(message=f"stop requested (touched {self._rel(self.dp_run_dir / 'save_quit')}): "
                                          f"{STOP_NOTE}. If it has not quit within {self.plan.grace_s:g} s it is "
                                          "terminated"))

    def _escalate(self) -> None:
        now = time.monotonic()
        if self.stop_at is not None and self.term_at is None and now - self.stop_at > self.plan.grace_s:
            self._terminate(f"diffusion-pipe did not quit within {self.plan.grace_s:g} s of save_quit")
        wait = SIGNALLED_TERM_WAIT_S if self.signalled else TERM_WAIT_S
        if self.term_at is not None and not self.killed and now - self.term_at > wait:
            self.killed = True
            self._signal_group(signal.SIGKILL)

    def _terminate(self, why: str) -> None:
        if self.term_at is not None:
            return
        self.term_at = time.monotonic()
        if not self.signalled:
            self.events.emit(LogEvent(level="warning", message=f"{why}: ending its process group (SIGTERM, then "
                                                               f"SIGKILL after {TERM_WAIT_S:g} s)"))
        self._signal_group(signal.SIGTERM)

    def _touch(self, name: str) -> None:
        (self.dp_run_dir / name).touch()
        self.touched.add(name)

    def _clean_signal_files(self, names: tuple[str, ...] | set[str]) -> None:
        """Remove signal files left behind, so a later resume of this folder does not quit or save at once."""
        for name in names:
            if self.dp_run_dir is not None and (self.dp_run_dir / name).exists():
                (self.dp_run_dir / name).unlink(missing_ok=True)

    def kill(self) -> None:
        """End the whole diffusion-pipe process group now (SIGKILL), if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # ---- folders and events ---------------------------------------------------------------------
    def _rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.run_dir)).as_posix()

    def _where(self, name: str) -> tuple[str, bool]:
        self._discover()
        if self.dp_run_dir is None:
            return f"{DP_SUBDIR}/{name}", False
        folder = self.dp_run_dir / name
        return self._rel(folder), lora_ready(folder)

    def _record_dp_run_dir(self, again: bool = False) -> None:
        """Note ``dp_run_dir`` in run.json; ``again`` re-adds it at the end in case a concurrent writer of run.json
        (RunManager records the pid right after launch) replaced the file without it."""
        if self.dp_run_dir is None:
            return
        meta = json.loads((self.run_dir / RUN_FILE).read_text(encoding="utf-8"))
        if again and meta.get("dp_run_dir"):
            return
        meta["dp_run_dir"] = self._rel(self.dp_run_dir)
        write_json_atomic(self.run_dir / RUN_FILE, meta)
        if not again:
            self.events.emit(LogEvent(message=f"diffusion-pipe run folder: {meta['dp_run_dir']}"))

    def _scan_saves(self) -> None:
        if self.dp_run_dir is None:
            return
        p = self.parser
        for name, what in saved_folders(self.dp_run_dir):
            path = self._rel(self.dp_run_dir / name)
            if path in self.emitted:
                continue
            number = int("".join(ch for ch in name if ch.isdigit()))
            step, epoch = (p.step, number) if name.startswith("epoch") else (number, p.epoch)
            kind = p.schedule.save_kind if what == "lora" else "state"
            self._emit([CheckpointEvent(step=step, epoch=max(epoch, 1), path=path, what=kind)])

    def _read_evals(self) -> None:
        """Eval losses diffusion-pipe wrote to TensorBoard since the last look (tb_eval.py)."""
        try:
            results = self.evals.read(self.dp_run_dir)
        except Exception as exc:  # noqa: BLE001 - a damaged event file must not end the run
            self.evals.names = ()
            self.events.emit(LogEvent(level="warning", message=f"stopped reading eval losses from TensorBoard: "
                                                               f"{type(exc).__name__}: {exc}"))
            return
        p = self.parser
        for r in results:
            step = r.x // p.global_batch if self.plan.x_axis_examples and p.global_batch else r.x
            self._emit([EvalEvent(step=step, epoch=p.epoch_of(step), name=r.name, loss=r.loss,
                                  quantiles=r.quantiles)])

    def _emit(self, events: list[Event]) -> None:
        for ev in events:
            if ev.kind == "checkpoint":
                if ev.path in self.emitted:
                    continue
                self.emitted.add(ev.path)
            if ev.kind in TERMINAL_KINDS:
                if self.terminal is not None:
                    continue
                self.terminal = ev
            self.events.emit(ev)
            if ev.kind == "checkpoint" and ev.what == "lora" and self.plan.check_loras:
                self._check_lora(ev.path)

    def _check_lora(self, path: str) -> None:
        """Log whether the saved LoRA's keys fit the base model (the file users load in ComfyUI)."""
        level, message = lora_log_line(Path(path).name, saved_lora_file(self.run_dir / path), self.plan.lora_base)
        self.events.emit(LogEvent(level=level, message=message))


def fail(events: EventWriter, error: str, detail: str = "") -> None:
    """Write the run's one failed event (before launch, nothing else can have written one)."""
    events.emit(FailedEvent(error=error, detail=detail))
