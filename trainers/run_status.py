"""A run's status, derived from its run folder: the events it wrote, whether its trainer process still lives (a
recycled pid does not count), and its queue flags. Nothing is kept in memory."""

from __future__ import annotations

from typing import Literal

import psutil

from trainers.events import Event

RunStatus = Literal["queued", "cancelled", "starting", "running", "completed", "stopped", "failed", "interrupted"]


def waits_in_queue(meta: dict) -> bool:
    """Whether the run waits in the queue for the device (queued, not cancelled, not yet started)."""
    return bool(meta.get("queued") and not meta.get("cancelled") and not meta.get("pid"))


def pid_alive(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` still runs and is the process started at ``started`` (not a zombie)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # A recycled pid belongs to another process: its start time differs.
        return started is None or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def derive_status(events: list[Event], alive: bool, meta: dict | None = None) -> RunStatus:
    """Status from the events a run wrote, whether its process still lives, and its queue flags."""
    meta = meta or {}
    if meta.get("cancelled"):
        return "cancelled"
    if meta.get("queued") and not meta.get("pid"):
        return "queued"
    for ev in reversed(events):
        if ev.kind == "resumed":
            break  # an earlier leg's end does not describe the resumed run
        if ev.kind == "finished":
            return "stopped" if ev.reason == "stopped" else "completed"
        if ev.kind == "failed":
            return "failed"
    if alive:
        tail = events[max((i for i, ev in enumerate(events) if ev.kind == "resumed"), default=0):]
        return "running" if any(ev.kind == "step" for ev in tail) else "starting"
    return "interrupted"


def create_time(pid: int) -> float | None:
    """The start time of process ``pid`` (None when it is gone): kept with the pid to tell a recycled pid."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
