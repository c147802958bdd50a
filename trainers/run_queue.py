"""The persistent queue of runs waiting for the (one) training device.

A JSON list of run folders in ``<studio home>/queue.json``; every change happens under an exclusive file
lock and is written via temp file + rename, so two studio processes never lose each other's edits and a
restarted server finds the queue as it was.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trainers.files import atomic_write_json
from trainers.paths import studio_home


class RunQueue:
    def __init__(self, path: Path | None = None):
        self.path = path or studio_home() / "queue.json"

    @contextmanager
    def _locked(self) -> Iterator[list[str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            order = self._read()
            before = list(order)
            yield order
            if order != before:
                atomic_write_json(self.path, order)

    def _read(self) -> list[str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [str(p) for p in data] if isinstance(data, list) else []

    def items(self) -> list[Path]:
        return [Path(p) for p in self._read()]

    def push(self, run_dir: Path) -> int:
        """Append a run; returns its 1-based position."""
        with self._locked() as order:
            order.append(str(run_dir))
            return len(order)

    def remove(self, run_dir: Path) -> bool:
        with self._locked() as order:
            if str(run_dir) in order:
                order.remove(str(run_dir))
                return True
            return False

    def move(self, run_dir: Path, position: int) -> None:
        """Move a queued run to 0-based ``position`` (clamped to the queue)."""
        with self._locked() as order:
            if str(run_dir) not in order:
                raise KeyError(run_dir)
            order.remove(str(run_dir))
            order.insert(max(0, min(position, len(order))), str(run_dir))

    def pop_first(self, usable: Callable[[Path], bool]) -> Path | None:
        """Take the first queued run that is still ``usable``; unusable ones are dropped."""
        with self._locked() as order:
            while order:
                candidate = Path(order.pop(0))
                if usable(candidate):
                    return candidate
            return None
