"""The shared tail: bounded memory, full history for late watchers, resumed runs keep streaming."""

from __future__ import annotations

import threading
import time

from trainers import event_hub
from trainers.event_hub import EventHub
from trainers.events import EventWriter, FinishedEvent, ResumedEvent, StepEvent


def test_window_bounds_memory_and_late_watchers_get_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(event_hub, "WINDOW", 64)
    writer = EventWriter(tmp_path)
    alive = threading.Event()
    alive.set()
    for s in range(1, 301):
        writer.emit(StepEvent(step=s, epoch=1, loss=1.0, lr=1e-4))
    tail = EventHub().tail(tmp_path, alive.is_set)
    deadline = time.monotonic() + 10
    while tail.start + len(tail.events) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(tail.events) <= 64 and tail.start > 0
    for s in range(301, 401):
        writer.emit(StepEvent(step=s, epoch=1, loss=1.0, lr=1e-4))
    writer.emit(FinishedEvent(step=400, epoch=1))
    steps = [ev.step for batch in tail.watch() for ev in batch if ev.kind == "step"]
    assert steps == list(range(1, 401))


def test_a_resumed_run_is_not_done_at_its_first_legs_end(tmp_path):
    writer = EventWriter(tmp_path)
    writer.emit(StepEvent(step=1, epoch=1, loss=1.0, lr=1e-4))
    writer.emit(FinishedEvent(step=1, epoch=1, reason="stopped"))
    hub = EventHub()
    first = hub.tail(tmp_path, lambda: False)
    assert first.done
    writer.emit(ResumedEvent(step=1, epoch=1, checkpoint="global_step1"))
    writer.emit(StepEvent(step=2, epoch=1, loss=1.0, lr=1e-4))
    second = hub.tail(tmp_path, lambda: True)
    assert second is not first and not second.done
    writer.emit(FinishedEvent(step=2, epoch=1))
    kinds = [ev.kind for batch in second.watch() for ev in batch]
    assert kinds == ["step", "finished", "resumed", "step", "finished"]
