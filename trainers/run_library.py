"""Operations on finished runs: pick the best saved epoch, delete a run. Torch-free.

The choice of best epoch is kept in the run folder (``best.json``), like everything else about a run.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

from trainers.runs import RunError, RunInfo, write_json_atomic

BEST_FILE = "best.json"
_SAVED = re.compile(r"^(epoch|step)\d+$")


def mark_best(info: RunInfo, folder: str, note: str = "") -> Path:
    """Record ``folder`` (``epochN``/``stepN``) as the run's best save."""
    if not _SAVED.match(folder) or not (info.run_dir / folder).is_dir():
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
