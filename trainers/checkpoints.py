"""Resume points of a run, read from its folder (torch-free: the studio lists them without loading anything).

Two kinds, never confused in the UI:

- ``state``: a full training-state checkpoint, ``global_step<N>/`` (the native trainer's, with
  ``state.json`` + ``training_state.pt``; or diffusion-pipe's DeepSpeed one, found through its ``latest`` file).
  Resuming continues the same schedule: LoRA, optimizer, RNG states and data position are restored.
- ``lora``: a saved LoRA, ``epoch<N>/`` or ``step<N>/`` (weights only). Resuming starts a NEW run whose LoRA
  starts from those weights (``[adapter] init_from_existing``) with a fresh optimizer and schedule.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trainers.config.registry import MODEL_TYPES

STATE_PREFIX = "global_step"
STATE_META = "state.json"
STATE_FILE = "training_state.pt"
LATEST_FILE = "latest"
ADAPTER_FILE = "adapter_model.safetensors"
# The LoRA file of a saved folder, as diffusion-pipe names it for each type (trainers/config/registry.py lora_file):
# its ComfyUI layout (Chroma, Wan, ...) first, then diffusers' save_lora_weights (Flux, SD3, AuraFlow), kohya (SDXL).
LORA_FILES = tuple(dict.fromkeys((ADAPTER_FILE, *(info.lora_file for info in MODEL_TYPES.values()))))
_STATE_NAME = re.compile(rf"^{STATE_PREFIX}(\d+)$")


@dataclass(frozen=True)
class ResumePoint:
    """One place a run can be continued from."""

    name: str  # folder name inside the run (or diffusion-pipe run) folder: "global_step120", "epoch3"
    kind: Literal["state", "lora"]
    step: int
    epoch: int
    time: float
    label: str


def saves_root(run_dir: Path, meta: dict) -> Path:
    """Where the run's epochN/stepN folders are: the run folder, or diffusion-pipe's own run folder in it."""
    return run_dir / meta["dp_run_dir"] if meta.get("dp_run_dir") else run_dir


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def saved_lora_file(folder: Path) -> Path:
    """The LoRA file of a saved ``epochN``/``stepN`` folder: the first of :data:`LORA_FILES` it holds
    (``adapter_model.safetensors`` when it holds none, so messages name the usual file)."""
    for name in LORA_FILES:
        if (folder / name).is_file():
            return folder / name
    return folder / ADAPTER_FILE


def state_points(folder: Path) -> list[ResumePoint]:
    """The native training-state checkpoints in ``folder`` (complete ones only: ``state.json`` is written last)."""
    points = []
    for path in folder.glob(f"{STATE_PREFIX}*"):
        match = _STATE_NAME.match(path.name)
        meta = _read_json(path / STATE_META) if match else {}
        if not meta or not (path / STATE_FILE).is_file():
            continue
        step, epoch = int(meta.get("step", match.group(1))), int(meta.get("epoch", 0))
        points.append(ResumePoint(path.name, "state", step, epoch, float(meta.get("time", path.stat().st_mtime)),
                                  f"step {step}, epoch {epoch}: full training state (continues exactly)"))
    return points


def _dp_state_point(run_dir: Path, meta: dict) -> list[ResumePoint]:
    """diffusion-pipe's newest DeepSpeed checkpoint (it can only resume from the one ``latest`` names)."""
    dp_dir = run_dir / meta["dp_run_dir"] if meta.get("dp_run_dir") else None
    if dp_dir is None or not (dp_dir / LATEST_FILE).is_file():
        return []
    tag = (dp_dir / LATEST_FILE).read_text(encoding="utf-8").strip()
    match = _STATE_NAME.match(tag)
    step = int(match.group(1)) if match else 0
    return [ResumePoint(tag, "state", step, 0, (dp_dir / LATEST_FILE).stat().st_mtime,
                        f"step {step}: diffusion-pipe's latest training state (continues exactly)")]


def lora_points(run_dir: Path, meta: dict) -> list[ResumePoint]:
    """Saved LoRAs (the runs library's ``epochN``/``stepN`` folders holding an adapter) as weights-only resume
    points, at the step and epoch they were saved."""
    # run_library imports RunManager's module, which imports this one: import it when called.
    from trainers.events import load_all
    from trainers.run_library import folder_position, saved_folders

    events, points = None, []
    for folder in saved_folders(run_dir, meta):
        adapter = saved_lora_file(run_dir / folder)
        if not adapter.is_file():
            continue
        events = load_all(run_dir) if events is None else events
        step, epoch = folder_position(events, folder)
        name = Path(folder).name
        points.append(ResumePoint(name, "lora", step, epoch, adapter.stat().st_mtime,
                                  f"{name}: LoRA weights only (new run, optimizer and schedule restart)"))
    return points


def resume_points(run_dir: Path) -> list[ResumePoint]:
    """Every resume point of a run, newest first; full states before weights-only ones at the same step."""
    meta = _read_json(run_dir / "run.json")
    points = state_points(run_dir) + _dp_state_point(run_dir, meta) + lora_points(run_dir, meta)
    return sorted(points, key=lambda p: (p.step, p.kind == "state", p.time), reverse=True)


def find_point(run_dir: Path, name: str) -> ResumePoint:
    """The resume point called ``name``; the error lists the ones that exist."""
    points = resume_points(run_dir)
    for point in points:
        if point.name == name:
            return point
    have = ", ".join(p.name for p in points) or "none (set checkpoint_every_n_minutes, or stop runs from the studio)"
    raise KeyError(f"{run_dir.name} has no resume point {name!r}; it has: {have}")


def latest_state(run_dir: Path) -> ResumePoint | None:
    """The newest full training state of a native run, or None."""
    points = sorted(state_points(run_dir), key=lambda p: p.step)
    return points[-1] if points else None


# ---- saving with room to spare ---------------------------------------------------------------------------------
MB = 1024 * 1024
SPACE_MARGIN = 1.1  # a save needs its estimated size plus this share
WARN_SAVES = 2  # the monitor warns when less room is left than this many saves need
# torch.save reports a failed write as a RuntimeError from its zip writer, never as ENOSPC.
_TORCH_WRITE_FAILURES = ("inline_container", "file write failed", "No space left", "unexpected pos")


class DiskFullError(OSError):
    """A save found (or ran into) too little free space; the message names the save, the need and the room."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


def free_bytes(folder: Path) -> int:
    """Free bytes on the filesystem holding ``folder`` (or its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_full_message(name: str, need: int, free: int, previous: str) -> str:
    return (f"no space left on device while saving {name} (need ≈ {need / MB:.1f} MB, {free / MB:.1f} MB free); "
            f"{previous}. Free some space (old runs, their global_step folders) and resume or save again.")


def _write_failed(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILURES)


@contextlib.contextmanager
def room_for(folder: Path, name: str, need: int, previous: str) -> Iterator[None]:
    """Refuse a save of ``need`` bytes into ``folder`` that cannot fit, and turn a disk-full failure while it
    writes (ENOSPC, or torch's zip-writer error) into a :class:`DiskFullError` that says what happened.
    ``previous`` tells the user what is still intact (the save itself must write atomically)."""
    free = free_bytes(folder)
    if free < need * SPACE_MARGIN:
        raise DiskFullError(disk_full_message(name, need, free, previous))
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, DiskFullError) or not _write_failed(exc):
            raise
        raise DiskFullError(disk_full_message(name, need, free_bytes(folder), previous)) from exc


def space_warning(folder: Path, need_per_save: int) -> str | None:
    """A warning when ``folder`` has room for fewer than ``WARN_SAVES`` saves of ``need_per_save`` bytes."""
    free = free_bytes(folder)
    if free >= WARN_SAVES * need_per_save * SPACE_MARGIN:
        return None
    return (f"disk nearly full: {free / MB:.1f} MB free for {folder}, and the next save needs ≈ "
            f"{need_per_save / MB:.1f} MB; free some space before it (a save that does not fit is refused and "
            "the run stops, its previous saves intact)")
