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


def test_idle_polls_ask_whether_the_writer_lives_at_most_every_alive_check_s(tmp_path, monkeypatch):
    """An idle poll is one stat; liveness (run.json + process table) is asked once per ALIVE_CHECK_S."""
    clock = [1000.0]
    monkeypatch.setattr(event_hub.time, "monotonic", lambda: clock[0])
    EventWriter(tmp_path).emit(StepEvent(step=1, epoch=1, loss=1.0, lr=1e-4))
    asked = []
    tail = event_hub.RunTail.__new__(event_hub.RunTail)  # the poll logic alone, without its thread
    tail._alive, tail._alive_checked = (lambda: asked.append(clock[0]) or True), clock[0]
    for _ in range(100):  # 100 idle polls, 20 ms apart: 2 s
        clock[0] += event_hub.POLL_S
        assert not tail._writer_gone()
    assert 2.0 / event_hub.ALIVE_CHECK_S - 1 <= len(asked) <= 2.0 / event_hub.ALIVE_CHECK_S
    tail._alive = lambda: False
    clock[0] += event_hub.ALIVE_CHECK_S
    assert tail._writer_gone()  # a dead writer is still noticed
