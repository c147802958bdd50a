"""Progress within a phase and the ETA (trainers/native/progress.py)."""

from __future__ import annotations

import pytest

from trainers.events import PhaseEvent
from trainers.native.progress import EVERY_S, EtaEstimator, PhaseProgress, preview_rounds_left


class Recorder:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


def test_phase_progress_is_throttled_but_always_reports_the_first_and_the_last():
    clock = [100.0]
    out = Recorder()
    report = PhaseProgress(out, "caching", "latents of the training set", clock=lambda: clock[0])
    for done in range(0, 11):
        report(done, 10)
        clock[0] += EVERY_S / 4  # four reports per throttle window
    assert [e.done for e in out.events] == [0, 4, 8, 10]
    assert all(isinstance(e, PhaseEvent) and e.phase == "caching" and e.total == 10 for e in out.events)
    assert out.events[-1].message == "latents of the training set: 10/10"


def test_the_eta_leaves_out_the_first_step_and_uses_the_median():
    eta = EtaEstimator()
    eta.step(40.0)  # warm-up: kernels, allocator, caches
    assert eta.step_seconds() is None and eta.eta(100) is None
    for seconds in (1.0, 1.2, 0.9, 5.0, 1.1):  # one slow step (a save, a hiccup) does not move the median
        eta.step(seconds)
    assert eta.step_seconds() == 1.1
    assert eta.eta(100) == pytest.approx(110.0)


def test_the_eta_counts_the_preview_rounds_still_to_come():
    eta = EtaEstimator()
    for seconds in (9.0, 2.0, 2.0):
        eta.step(seconds)
    eta.preview_round(10.0)
    eta.preview_round(20.0)
    assert eta.eta(50, rounds_left=3) == 50 * 2.0 + 3 * 15.0


def test_preview_rounds_left_follow_the_cadence_and_the_final_round():
    assert preview_rounds_left(0, 400, 200) == 2  # at 200 and 400
    assert preview_rounds_left(200, 400, 200) == 1
    assert preview_rounds_left(400, 400, 200) == 0
    assert preview_rounds_left(0, 450, 200) == 3  # 200, 400 and the round at the end (450)
    assert preview_rounds_left(10, 450, 0) == 0  # no cadence, no previews
