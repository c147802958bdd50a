"""Each preview round reports its cost and the share of the run's time previews have taken so far."""

from __future__ import annotations

from trainers.native import loop


def test_preview_cost_accumulates_and_states_its_share(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    trainer = loop.Trainer.__new__(loop.Trainer)  # the cost bookkeeping alone
    trainer.step, trainer.sampling_s, trainer.training_began = 50, 0.0, 0.0
    assert trainer._preview_cost(4, 3.0) == (
        "previews at step 50: 4 images in 3.00 s; previews have taken 3.0 s, 3 % of the run's time so far")
    clock[0], trainer.step = 200.0, 100
    assert trainer._preview_cost(4, 7.0).endswith("previews have taken 10.0 s, 5 % of the run's time so far")
