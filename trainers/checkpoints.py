"""Resume points of a run, read from its folder (torch-free: the studio lists them without loading anything).

Two kinds, never confused in the UI:

- ``state``: a full training-state checkpoint, ``global_step<N>/`` (the native trainer's, with
  ``state.json`` + ``training_state.pt``; or diffusion-pipe's DeepSpeed one, found through its ``latest`` file).
  Resuming continues the same schedule: LoRA, optimizer, RNG states and data position are restored.
- ``lora``: a saved LoRA, ``epoch<N>/`` or ``step<N>/`` (weights only). Resuming starts a NEW run whose LoRA
  starts from those weights (``[adapter] init_from_existing``) with a fresh optimizer and schedule.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

STATE_PREFIX = "global_step"
STATE_META = "state.json"
STATE_FILE = "training_state.pt"
LATEST_FILE = "latest"
ADAPTER_FILE = "adapter_model.safetensors"
_SAVE_NAME = re.compile(r"^(epoch|step)(\d+)$")
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


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_steps(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Folder name -> (step, epoch) from the run's checkpoint events (cheap line scan, no pydantic)."""
    found: dict[str, tuple[int, int]] = {}
    try:
        with open(run_dir / "events.jsonl", encoding="utf-8") as fh:
            for line in fh:
                if '"checkpoint"' not in line:
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("kind") == "checkpoint":
                    found[str(ev.get("path"))] = (int(ev.get("step", 0)), int(ev.get("epoch", 0)))
    except OSError:
        pass
    return found


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


def _dp_state_point(run_dir: Path) -> list[ResumePoint]:
    """diffusion-pipe's newest DeepSpeed checkpoint (it can only resume from the one ``latest`` names)."""
    meta = _read_json(run_dir / "run.json")
    dp_dir = run_dir / meta["dp_run_dir"] if meta.get("dp_run_dir") else None
    if dp_dir is None or not (dp_dir / LATEST_FILE).is_file():
        return []
    tag = (dp_dir / LATEST_FILE).read_text(encoding="utf-8").strip()
    match = _STATE_NAME.match(tag)
    step = int(match.group(1)) if match else 0
    return [ResumePoint(tag, "state", step, 0, (dp_dir / LATEST_FILE).stat().st_mtime,
                        f"step {step}: diffusion-pipe's latest training state (continues exactly)")]


def lora_points(run_dir: Path, saves_root: Path | None = None) -> list[ResumePoint]:
    """Saved LoRAs (``epochN``/``stepN`` folders holding an adapter) as weights-only resume points."""
    root = saves_root or run_dir
    steps = _save_steps(run_dir)
    points = []
    for path in root.iterdir() if root.is_dir() else ():
        match = _SAVE_NAME.match(path.name)
        if not match or not (path / ADAPTER_FILE).is_file():
            continue
        number = int(match.group(2))
        step, epoch = steps.get(path.name, (number if match.group(1) == "step" else 0,
                                            number if match.group(1) == "epoch" else 0))
        points.append(ResumePoint(path.name, "lora", step, epoch, (path / ADAPTER_FILE).stat().st_mtime,
                                  f"{path.name}: LoRA weights only (new run, optimizer and schedule restart)"))
    return points


def resume_points(run_dir: Path) -> list[ResumePoint]:
    """Every resume point of a run, newest first; full states before weights-only ones at the same step."""
    meta = _read_json(run_dir / "run.json")
    saves_root = run_dir / meta["dp_run_dir"] if meta.get("dp_run_dir") else run_dir
    points = state_points(run_dir) + _dp_state_point(run_dir) + lora_points(run_dir, saves_root)
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
