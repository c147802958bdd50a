"""Operations on finished runs: pick the best saved epoch, delete a run. Torch-free.

The choice of best epoch is kept in the run folder (``best.json``), like everything else about a run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from trainers.paths import REPO_ROOT
from trainers.runs import RunError, RunInfo, write_json_atomic

BEST_FILE = "best.json"
_SAVED = re.compile(r"^(epoch|step)(\d+)$")


def saves_root(run_dir: Path, meta: dict) -> Path:
    """Where the run's epochN/stepN folders are: the run folder, or diffusion-pipe's own run folder in it."""
    return run_dir / meta["dp_run_dir"] if meta.get("dp_run_dir") else run_dir


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


def mark_best(info: RunInfo, folder: str, note: str = "") -> Path:
    """Record ``folder`` (``epochN``/``stepN``) as the run's best save."""
    if folder not in saved_folders(info.run_dir, info.meta):
        raise RunError(f"{folder!r} is not a saved epoch/step folder of run {info.run_id}; pick one from the list.")
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
    if not (info.run_dir / "run.json").is_file():
        raise RunError(f"{info.run_dir} does not look like a run folder; not deleting it")
    shutil.rmtree(info.run_dir)


LAYOUTS = ("comfyui", "diffusers", "kohya")


def export_lora(info: RunInfo, folder: str, layout: str, python: str | None = None) -> Path:
    """Export a saved LoRA of the run as ``layout`` into ``<run dir>/exports/``; returns the file.

    The conversion needs torch, so it runs in a child process (``python -m trainers.native.export``) and the
    studio stays torch-free. Training facts go into the file's header.
    """
    if layout not in LAYOUTS:
        raise RunError(f"layout {layout!r} unknown; pick one of {', '.join(LAYOUTS)}")
    if folder not in saved_folders(info.run_dir, info.meta):
        raise RunError(f"{folder!r} is not a saved epoch/step folder of run {info.run_id}; pick one from the list")
    out = info.run_dir / "exports" / f"{info.run_id}_{Path(folder).name}_{layout}.safetensors"
    meta = {"run_id": info.run_id, "run_name": info.name, "saved": folder, "backend": info.backend}
    done = subprocess.run([python or sys.executable, "-m", "trainers.native.export", str(info.run_dir / folder),
                           "--layout", layout, "--out", str(out), "--meta", json.dumps(meta)],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RunError((done.stderr.strip().splitlines() or ["export failed"])[-1])
    return out
