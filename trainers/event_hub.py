"""One reader per run, many watchers: tails a run's events.jsonl once and wakes every watcher.

Twenty browser tabs watching one run cost one poll loop, not twenty, and a new event reaches every
watcher within one poll interval (20 ms; an idle poll is one ``stat``, and whether the writer still lives is asked
at most every ``ALIVE_CHECK_S``, as that reads run.json and the process table), instead of each watcher sleeping on its
own schedule. Memory stays flat however long the run: the tail keeps only the newest events in memory; a
watcher that starts from an older index (a page reload) reads those from the file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from trainers.events import EVENTS_FILE, TERMINAL_KINDS, Event, read_events

POLL_S = 0.02
ALIVE_CHECK_S = 0.5  # idle polls between two liveness checks cost one stat each
IDLE_RELEASE_S = 30.0  # a tail nobody watched for this long stops and is dropped
WINDOW = 4096  # events kept in memory per watched run (older ones are read back from the file)


class RunTail:
    """All events of one run seen so far, kept current by a background thread while watched."""

    def __init__(self, run_dir: Path, alive: Callable[[], bool]):
        self.run_dir, self._alive = run_dir, alive
        self.events: list[Event] = []  # the newest events; self.events[0] has absolute index self.start
        self.start = 0
        self.done = False  # a terminal event arrived, or the writer died
        self._offset = 0
        self._cond = threading.Condition()
        self._watchers = 0
        self._last_watch = time.monotonic()
        self._alive_checked = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"tail-{run_dir.name}")
        self._read_once()
        if not self.done:
            self._thread.start()

    def _read_once(self) -> bool:
        try:
            if (self.run_dir / EVENTS_FILE).stat().st_size <= self._offset:
                return False
        except OSError:
            return False
        batch, self._offset = read_events(self.run_dir, self._offset)
        with self._cond:
            if batch:
                self.events.extend(batch)
                if len(self.events) > WINDOW:
                    drop = len(self.events) - WINDOW // 2
                    del self.events[:drop]
                    self.start += drop
                ends = [ev.kind in TERMINAL_KINDS for ev in batch if ev.kind in TERMINAL_KINDS or ev.kind == "resumed"]
                if ends:  # a resumed run goes on after an earlier leg's terminal event
                    self.done = ends[-1]
                self._cond.notify_all()
            return bool(batch)

    def _writer_gone(self) -> bool:
        """Whether the writer is gone, asked at most every ``ALIVE_CHECK_S`` (False in between)."""
        now = time.monotonic()
        if now - self._alive_checked < ALIVE_CHECK_S:
            return False
        self._alive_checked = now
        return not self._alive()

    def _loop(self) -> None:
        while not self.done:
            if not self._read_once() and self._writer_gone():
                self._read_once()  # last lines written just before the writer died
                with self._cond:
                    self.done = True
                    self._cond.notify_all()
                return
            if self._watchers == 0 and time.monotonic() - self._last_watch > IDLE_RELEASE_S:
                return
            time.sleep(POLL_S)

    def grown(self) -> bool:
        """The file has bytes this finished tail never read (the run was resumed since)."""
        try:
            return (self.run_dir / EVENTS_FILE).stat().st_size > self._offset
        except OSError:
            return False

    @property
    def stale(self) -> bool:
        return not self.done and not self._thread.is_alive()

    def watch(self, heartbeat_s: float | None = None) -> Iterator[list[Event]]:
        """Batches of events from the first one; empty batches as heartbeats when asked for."""
        index = 0  # absolute index of the next event this watcher gets
        with self._cond:
            self._watchers += 1
        try:
            while True:
                with self._cond:
                    end = self.start + len(self.events)
                    if index >= end and not self.done:
                        self._cond.wait(timeout=heartbeat_s)
                        end = self.start + len(self.events)
                    start, batch, finished = self.start, self.events[max(0, index - self.start):], self.done
                if index < start:  # older than the in-memory window: from the file (what it held up to start)
                    batch = read_events(self.run_dir, 0)[0][index:start] + batch
                index = end
                if batch or heartbeat_s is not None:
                    yield batch
                if finished and index >= self.start + len(self.events):
                    return
        finally:
            with self._cond:
                self._watchers -= 1
                self._last_watch = time.monotonic()


class EventHub:
    """The live tails of all watched runs, created on first watch."""

    def __init__(self):
        self._tails: dict[Path, RunTail] = {}
        self._lock = threading.Lock()

    def tail(self, run_dir: Path, alive: Callable[[], bool]) -> RunTail:
        with self._lock:
            tail = self._tails.get(run_dir)
            if tail is None or tail.stale or (tail.done and tail.grown()):
                tail = self._tails[run_dir] = RunTail(run_dir, alive)
            return tail
