"""``dp-studio runs | export | samples``: the runs library on the command line.

Exit codes: 0 done, 1 refused or failed (the message says why and what to do), 2 usage error (argparse).
Runs are found under the studio's runs folder and every output folder a run was started in; ``--root DIR``
adds one more.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from trainers.runs import RunError, RunInfo, RunManager

EXIT_OK, EXIT_FAILED = 0, 1


def _manager(args: argparse.Namespace) -> RunManager:
    return RunManager([Path(r).expanduser() for r in args.root] if args.root else None)


def _root_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="an output folder to list runs from (repeatable; default: the studio's known folders)")


def add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list, show or delete runs")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    _root_option(verbs.add_parser("list", help="every run, newest first: id, status, backend, name"))
    show = verbs.add_parser("show", help="one run: folder, status, last step and loss, saved epochs, best")
    show.add_argument("run_id")
    _root_option(show)
    delete = verbs.add_parser("delete", help="delete a finished run's folder")
    delete.add_argument("run_id")
    delete.add_argument("--confirm", required=True, metavar="RUN_ID", help="repeat the run id to confirm")
    _root_option(delete)
    p.set_defaults(handler=_runs)


def _runs(args: argparse.Namespace, manager: RunManager | None = None) -> int:
    try:
        return {"list": _list, "show": _show, "delete": _delete}[args.verb](manager or _manager(args), args)
    except (RunError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _list(manager: RunManager, args: argparse.Namespace) -> int:
    runs = manager.runs()
    for info in runs:
        print(f"{info.run_id}\t{info.status}\t{info.backend}\t{info.name}")
    if not runs:
        print("no runs yet (folders searched: " + ", ".join(str(r) for r in manager.roots) + ")")
    return EXIT_OK


def show_lines(info: RunInfo, events: list) -> list[str]:
    """What ``runs show`` prints: the folder, status, progress, saved folders and the best one."""
    from trainers.run_library import best_of, saved_folders

    steps = [ev for ev in events if ev.kind == "step"]
    last = steps[-1] if steps else None
    saved = saved_folders(info.run_dir, info.meta)
    lines = [f"run:      {info.run_id} ({info.name})", f"folder:   {info.run_dir}",
             f"status:   {info.status} ({info.backend} backend, created {info.created})",
             f"progress: step {last.step}, epoch {last.epoch}, loss {last.loss:.4g}" if last else "progress: no step yet",
             "saved:    " + (", ".join(saved) if saved else "nothing yet")]
    best = best_of(info.run_dir)
    if best:
        lines.append(f"best:     {best}")
    ends = [ev for ev in events if ev.kind in ("finished", "failed")]
    if ends:
        end = ends[-1]
        lines.append(f"ended:    {end.reason}" if end.kind == "finished" else f"failed:   {end.error}")
    return lines


def _show(manager: RunManager, args: argparse.Namespace) -> int:
    info = manager.info(args.run_id)
    print("\n".join(show_lines(info, list(manager.events(info.run_id, follow=False)))))
    return EXIT_OK


def _delete(manager: RunManager, args: argparse.Namespace) -> int:
    from trainers.run_library import delete_run

    delete_run(manager.info(args.run_id), args.confirm)
    print(f"deleted {args.run_id}")
    return EXIT_OK


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a saved LoRA as comfyui, diffusers or kohya (comfyui also writes a "
                                      "ComfyUI workflow)")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("folder", metavar="FOLDER", help="a saved folder of the run (epochN / stepN; see `runs show`)")
    p.add_argument("--format", choices=("comfyui", "diffusers", "kohya"), default="comfyui")
    p.add_argument("--out", type=Path, default=None,
                   help="a folder (or file name) to copy the export to; default: the run's exports/ folder")
    p.add_argument("--clip-name", default=None, help="T5 file name in ComfyUI's text_encoders folder "
                                                     "(workflow only; default t5xxl_fp16.safetensors)")
    p.add_argument("--vae-name", default=None, help="VAE file name in ComfyUI's vae folder (default ae.safetensors)")
    _root_option(p)
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace, manager: RunManager | None = None) -> int:
    from trainers.run_library import export_lora

    try:
        manager = manager or _manager(args)
        info = manager.info(args.run_id)
        print(f"exporting {args.folder} of {info.run_id} as {args.format} ...", flush=True)
        made = export_lora(info, args.folder, args.format)
        files = [_copy_out(made, args.out)]
        if args.format == "comfyui":
            files.append(_write_workflow(info, files[0], args))
    except (RunError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for path in files:
        print(path)
    return EXIT_OK


def _copy_out(made: Path, out: Path | None) -> Path:
    if out is None:
        return made
    target = out / made.name if out.is_dir() or not out.suffix else out
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    shutil.copyfile(made, tmp)
    tmp.replace(target)
    return target


def _write_workflow(info: RunInfo, lora: Path, args: argparse.Namespace) -> Path:
    from trainers.comfyui_workflow import workflow_path, write_workflow

    names = {k: v for k, v in (("clip", args.clip_name), ("vae", args.vae_name)) if v}
    return write_workflow(info, lora, workflow_path(lora), **names)


def add_samples(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("samples", help="render the run's sample prompts with a saved epoch (a progress bar; the "
                                       "images join the run's samples/)")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("folder", metavar="FOLDER", help="a saved folder of the run (epochN / stepN)")
    p.add_argument("--prompt", action="append", default=[], help="instead of the run's prompts (repeatable)")
    p.add_argument("--seed", action="append", type=int, default=[], help="instead of the run's seeds (repeatable)")
    _root_option(p)
    p.set_defaults(handler=_samples)


def _samples(args: argparse.Namespace, manager: RunManager | None = None) -> int:
    from tqdm import tqdm

    from trainers.run_library import render_samples

    try:
        manager = manager or _manager(args)
        info = manager.info(args.run_id)
        with tqdm(desc=f"samples of {args.folder}", unit="line", file=sys.stdout) as bar:
            for line in render_samples(info, args.folder, args.prompt, args.seed):
                bar.set_postfix_str(line[:60])
                bar.update(1)
    except (RunError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"samples written to {info.run_dir / 'samples'}")
    return EXIT_OK


REGISTRARS = [add_runs, add_export, add_samples]
