"""Explaining a trainer that died without saying why (``kill -9``, the out-of-memory killer, a crash in C code).

A trainer closes its run with a ``finished`` or ``failed`` event. When its process is gone and the run's
current leg has neither, whoever notices first (the RunManager that reaps the child, a monitor stream, the
next server start listing runs) writes one ``failed`` event with what it can see: the signal or exit code when
it is the parent, and the last lines of ``stdout.log`` (the child's stdout and stderr). Several observers,
in one process or several, may notice at once: the first to create ``.dead-<pid>`` in the run folder
(``O_CREAT | O_EXCL``) writes the event, the others write nothing. A resume claims the previous trainer's marker
before it appends its ``resumed`` event, and run.json must still name the pid, so a late observer of an earlier
leg never explains a leg that is not its own.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from trainers.events import Event, EventWriter, FailedEvent, load_all

STDOUT_FILE = "stdout.log"
TAIL_LINES = 20
TAIL_BYTES = 16_384


def marker(run_dir: Path, pid: int) -> Path:
    return run_dir / f".dead-{pid}"


def claim(run_dir: Path, pid: int) -> bool:
    """True for the one caller that gets to explain ``pid``'s end; False for every later one."""
    try:
        fd = os.open(marker(run_dir, pid), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except (FileExistsError, FileNotFoundError):  # explained already, or the run folder was deleted meanwhile
        return False
    os.close(fd)
    return True


def leg_closed(events: list[Event]) -> bool:
    """Whether the run's current leg (after its last ``resumed``) ended with a terminal event."""
    for ev in reversed(events):
        if ev.kind == "resumed":
            return False
        if ev.kind in ("finished", "failed"):
            return True
    return False


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "ended (its exit status is unknown here: this server did not start it)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (sent by `kill -9` or the out-of-memory killer: see `dmesg`)" if -returncode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {returncode}"


def output_tail(run_dir: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines the trainer printed (stdout and stderr), or '' when there are none."""
    try:
        with open(run_dir / STDOUT_FILE, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - TAIL_BYTES))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _current_pid(run_dir: Path) -> int | None:
    """The pid run.json names now (a resumed run names its new trainer's); None when unreadable or unset."""
    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError):
        return None


def explain_death(run_dir: Path, pid: int, returncode: int | None = None) -> FailedEvent | None:
    """Write the one ``failed`` event for a trainer that ended without a closing event; None when it needs none
    (the run closed itself, or another observer explained it already)."""
    if leg_closed(load_all(run_dir)) or _current_pid(run_dir) not in (pid, None) or not claim(run_dir, pid):
        return None
    if leg_closed(load_all(run_dir)):  # it closed itself between the two reads: nothing to explain
        return None
    tail = output_tail(run_dir)
    error = f"the trainer process (pid {pid}) {describe_exit(returncode)} without a closing event"
    detail = f"last lines of {STDOUT_FILE}:\n{tail}" if tail else f"{STDOUT_FILE} is empty"
    event = FailedEvent(error=error, detail=detail)
    EventWriter(run_dir).emit(event)
    return event
