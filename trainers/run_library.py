"""Operations on finished runs: pick the best saved epoch, export or delete a run, render samples for a saved
epoch in a sidecar process. Torch-free: whatever needs torch runs as a child process.

The choice of best epoch is kept in the run folder (``best.json``), like everything else about a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from trainers.checkpoints import saved_lora_file, saves_root
from trainers.events import Event
from trainers.lora_check import LoraCheck, LoraCheckError, base_model_value, check_lora
from trainers.paths import REPO_ROOT
from trainers.run_status import pid_alive
from trainers.runs import RunError, RunInfo, config_folder, resolve_config_path, write_json_atomic
from trainers.safe_paths import PathRefused, resolve_under

BEST_FILE = "best.json"
_SAVED = re.compile(r"^(epoch|step)(\d+)$")


def saved_folders(run_dir: Path, meta: dict | None = None) -> list[str]:
    """Saved LoRA/model folders relative to the run folder (``epoch3``, ``dp/<stamp>/epoch3``): epochs
    first, each in number order. A folder counts once it holds a .safetensors file."""
    root = saves_root(run_dir, meta or {})
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _SAVED.match(p.name)
        if m and p.is_dir() and any(p.glob("*.safetensors")):
            found.append((m.group(1) == "step", int(m.group(2)), str(p.relative_to(run_dir))))
    return [name for *_, name in sorted(found)]


def _check_saved_folder(info: RunInfo, folder: str) -> None:
    """``folder`` names one of the run's saved folders: a relative path inside the run folder (safe_paths) that
    the run's own listing holds."""
    try:
        resolve_under(info.run_dir, folder, "saved folder")
    except PathRefused as exc:
        raise RunError(str(exc)) from None
    if folder not in saved_folders(info.run_dir, info.meta):
        raise RunError(f"{folder!r} is not a saved epoch/step folder of run {info.run_id}; pick one from the list")


def mark_best(info: RunInfo, folder: str, note: str = "") -> Path:
    """Record ``folder`` (``epochN``/``stepN``) as the run's best save."""
    _check_saved_folder(info, folder)
    path = info.run_dir / BEST_FILE
    write_json_atomic(path, {"folder": folder, "note": note,
                             "marked": datetime.now(UTC).isoformat(timespec="seconds")})
    return path


def best_of(run_dir: Path) -> str | None:
    """The folder marked best in ``run_dir``, if any."""
    try:
        return json.loads((run_dir / BEST_FILE).read_text(encoding="utf-8")).get("folder")
    except (OSError, ValueError):
        return None


def delete_run(info: RunInfo, confirm: str) -> None:
    """Delete a run folder; ``confirm`` must repeat the run id, and a live run is never deleted."""
    if confirm.strip() != info.run_id:
        raise RunError(f"type the run id {info.run_id} to confirm deleting it")
    if info.live:
        raise RunError(f"run {info.run_id} is {info.status}: stop it before deleting it")
    if not (info.run_dir / "run.json").is_file() or info.run_dir.is_symlink():
        raise RunError(f"{info.run_dir} does not look like a run folder; not deleting it")
    _wait_for_exit(info)
    # Moved aside first, then removed: a late write to the old path fails instead of leaving half a folder.
    trash = info.run_dir.with_name(f".deleting-{info.run_id}-{os.getpid()}-{time.monotonic_ns()}")
    info.run_dir.rename(trash)
    shutil.rmtree(trash)


def _wait_for_exit(info: RunInfo, seconds: float = 10.0) -> None:
    """A run that has finished may still be writing its last files while its process exits: wait for that."""
    deadline = time.monotonic() + seconds
    while pid_alive(info.pid, info.meta.get("pid_create_time")):
        if time.monotonic() > deadline:
            raise RunError(f"run {info.run_id} has ended but its process (pid {info.pid}) is still exiting; "
                           "try again in a few seconds")
        time.sleep(0.1)


LAYOUTS = ("comfyui", "diffusers", "kohya")


def export_lora(info: RunInfo, folder: str, layout: str, python: str | None = None) -> Path:
    """Export a saved LoRA of the run as ``layout`` into ``<run dir>/exports/``; returns the file.

    The conversion needs torch, so it runs in a child process (``python -m trainers.native.export``) and the
    studio stays torch-free. Training facts go into the file's header.
    """
    if layout not in LAYOUTS:
        raise RunError(f"layout {layout!r} unknown; pick one of {', '.join(LAYOUTS)}")
    _check_saved_folder(info, folder)
    out = info.run_dir / "exports" / f"{info.run_id}_{Path(folder).name}_{layout}.safetensors"
    meta = {"run_id": info.run_id, "run_name": info.name, "saved": folder, "backend": info.backend}
    done = subprocess.run([python or sys.executable, "-m", "trainers.native.export", str(info.run_dir / folder),
                           "--layout", layout, "--out", str(out), "--meta", json.dumps(meta)],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RunError((done.stderr.strip().splitlines() or ["export failed"])[-1])
    return out


def base_model_path(info: RunInfo) -> Path | None:
    """The run's base model (:func:`trainers.lora_check.base_model_value`) as its trainer resolved it:
    relative paths against the folder of the main file the run was started from (its working directory), else the
    run folder."""
    main = info.run_dir / str(info.meta.get("main_config", ""))
    try:
        config = tomllib.loads(main.read_text(encoding="utf-8")) if main.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError):
        return None
    model = config.get("model") or {}
    value = base_model_value(model)
    if not isinstance(value, str) or not value:
        return None
    source = info.meta.get("source_main")
    folder = Path(source).parent if isinstance(source, str) and source else info.run_dir
    return resolve_config_path(config_folder(info.meta, folder), value)


def check_saved(info: RunInfo, folder: str, file: Path | None = None) -> LoraCheck:
    """Check a saved LoRA (or ``file``, e.g. its export) against the run's base model, from headers alone:
    unmatched keys, shape mismatches, coverage of the block Linears (:mod:`trainers.lora_check`)."""
    if file is None:
        _check_saved_folder(info, folder)
        file = saved_lora_file(info.run_dir / folder)
    try:
        return check_lora(file, base_model_path(info))
    except (LoraCheckError, ValueError) as exc:
        raise RunError(f"cannot check {Path(file).name}: {exc}") from None


def folder_position(events: Sequence[Event], folder: str) -> tuple[int, int]:
    """(step, epoch) at which a saved folder was written: from its newest checkpoint event, else from its
    name (``stepN``; ``epochN`` = the last step of epoch N in the run's step events, 0 when unknown)."""
    name = Path(folder).name
    checkpoints = [ev for ev in events if ev.kind == "checkpoint"]
    for same in (lambda ev: ev.path == folder, lambda ev: Path(ev.path).name == name):
        found = [ev for ev in checkpoints if same(ev)]
        if found:
            return found[-1].step, found[-1].epoch
    match = _SAVED.match(name)
    if not match:
        raise RunError(f"{folder!r} is not an epochN or stepN folder")
    number, steps = int(match.group(2)), [ev for ev in events if ev.kind == "step"]
    if match.group(1) == "step":
        return number, next((ev.epoch for ev in reversed(steps) if ev.step <= number), 1)
    return max((ev.step for ev in steps if ev.epoch <= number), default=0), number


SIDECAR_PROGRESS = "sidecar: "  # lines the sidecar prints for the UI; everything else is kept for errors
SIDECAR_FAILED = "sidecar failed: "


def sidecar_command(info: RunInfo, folder: str, prompts: Sequence[str] = (), seeds: Sequence[int] = (),
                    python: str | None = None) -> list[str]:
    """The command line rendering samples of the saved ``folder`` of a run (see trainers/native/sidecar.py)."""
    cmd = [python or sys.executable, "-m", "trainers.native.sidecar", "--run-dir", str(info.run_dir),
           "--folder", folder]
    for prompt in prompts:
        cmd += ["--prompt", prompt]
    for seed in seeds:
        cmd += ["--seed", str(int(seed))]
    return cmd


def render_samples(info: RunInfo, folder: str, prompts: Sequence[str] = (), seeds: Sequence[int] = (),
                   python: str | None = None) -> Iterator[str]:
    """Render the run's ``[studio]`` prompts x seeds (or the given ones) with the LoRA saved in ``folder``, in a
    child process; yields its progress lines. The images land in ``<run>/samples/`` with one ``sample`` event
    each (source "sidecar"), so grids and the monitor show them. Raises RunError with the child's reason."""
    _check_saved_folder(info, folder)
    proc = subprocess.Popen(sidecar_command(info, folder, prompts, seeds, python), cwd=REPO_ROOT, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail: deque[str] = deque(maxlen=40)
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith(SIDECAR_PROGRESS):
                yield line[len(SIDECAR_PROGRESS):]
            elif line:
                tail.append(line)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # the caller went away: do not leave a renderer holding the device
            proc.kill()
            proc.wait()
    if code != 0:
        raise RunError(_sidecar_reason(list(tail), code))


def _sidecar_reason(lines: list[str], code: int) -> str:
    reasons = [line[len(SIDECAR_FAILED):] for line in lines if line.startswith(SIDECAR_FAILED)]
    if reasons:
        return reasons[-1]
    return f"sample rendering failed (exit code {code}): {lines[-1] if lines else 'no output'}"
