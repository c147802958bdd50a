"""Progress within a phase (items cached, previews rendered) and the run's ETA, as the monitor shows them.

Before the first loss a run can spend minutes loading, caching and rendering its first previews; these events
let the page show that phase's own progress instead of a still bar. The ETA leaves out the run's first step
(it pays for warm-up: allocator, kernels, caches) and counts the preview rounds still to come.
"""

from __future__ import annotations

import statistics
import time
from collections import deque

from trainers.events import EventWriter, PhaseEvent

EVERY_S = 0.5  # progress events at most this often within a phase (the first and the last always)


class PhaseProgress:
    """A ``progress(done, total)`` callback that emits throttled ``PhaseEvent``s with ``done`` and ``total``."""

    def __init__(self, events: EventWriter, phase: str, what: str, clock=time.monotonic) -> None:
        self.events, self.phase, self.what, self.clock = events, phase, what, clock
        self.last: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.last is not None and done < total and now - self.last < EVERY_S:
            return
        self.last = now
        self.events.emit(PhaseEvent(phase=self.phase, message=f"{self.what}: {done}/{total}", total=total,
                                    done=done))


class EtaEstimator:
    """Seconds left in a run: the median of recent step times (the first step of a leg left out: it pays
    for warm-up) times the steps left, plus the preview rounds still to come at their measured cost."""

    def __init__(self, window: int = 50) -> None:
        self.durations: deque[float] = deque(maxlen=window)
        self.steps_seen = 0
        self.round_seconds: list[float] = []

    def step(self, seconds: float) -> None:
        self.steps_seen += 1
        if self.steps_seen > 1:
            self.durations.append(seconds)

    def preview_round(self, seconds: float) -> None:
        self.round_seconds.append(seconds)

    def step_seconds(self) -> float | None:
        """The typical step time, or None until a step after the first has been timed."""
        return statistics.median(self.durations) if self.durations else None

    def eta(self, steps_left: int, rounds_left: int = 0) -> float | None:
        per_step = self.step_seconds()
        if per_step is None:
            return None
        previews = rounds_left * statistics.mean(self.round_seconds) if self.round_seconds else 0.0
        return steps_left * per_step + previews


def preview_rounds_left(step: int, total_steps: int, every_n_steps: int) -> int:
    """Preview rounds after ``step`` up to ``total_steps`` at ``[studio] sample_every_n_steps``, with the round
    at the end when the last step is not on the cadence (the trainer renders one there too)."""
    if every_n_steps <= 0 or total_steps <= step:
        return 0
    return total_steps // every_n_steps - step // every_n_steps + (1 if total_steps % every_n_steps else 0)
