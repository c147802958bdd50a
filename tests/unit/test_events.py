from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from trainers.commands import Command, pending_commands, send_command, take_commands
from trainers.events import (
    EventWriter,
    FailedEvent,
    FinishedEvent,
    LogEvent,
    PhaseEvent,
    SampleEvent,
    StepEvent,
    load_all,
    parse_event,
    read_events,
)


def test_every_kind_round_trips_through_json():
    events = [PhaseEvent(phase="caching", total=3), StepEvent(step=1, epoch=1, loss=0.5, lr=1e-4),
              SampleEvent(step=0, epoch=0, path="samples/a.png", prompt="p", seed=1),
              LogEvent(level="warning", message="w"), FinishedEvent(step=3, epoch=1, reason="stopped"),
              FailedEvent(error="boom", detail="tb")]
    for ev in events:
        back = parse_event(ev.model_dump_json())
        assert back == ev and type(back) is type(ev)


def test_events_are_frozen_and_strict():
    ev = StepEvent(step=1, epoch=1, loss=0.1, lr=0.1)
    with pytest.raises(ValidationError):
        ev.loss = 2.0
    with pytest.raises(ValidationError):
        parse_event(json.dumps({"kind": "step", "step": 1, "epoch": 1, "loss": 1, "lr": 1, "bogus": 1}))
    with pytest.raises(ValidationError):
        parse_event(json.dumps({"kind": "nope"}))
    with pytest.raises(ValidationError):
        StepEvent(step=0, epoch=1, loss=0.1, lr=0.1)  # steps count from 1, as diffusion-pipe's do


def test_reader_waits_for_a_partial_last_line(tmp_path):
    w = EventWriter(tmp_path)
    w.emit(PhaseEvent(phase="starting"))
    line = StepEvent(step=1, epoch=1, loss=0.25, lr=1e-3).model_dump_json()
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write(line[:10])
    events, offset = read_events(tmp_path)
    assert [e.kind for e in events] == ["phase"]
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write(line[10:] + "\n")
    more, offset2 = read_events(tmp_path, offset)
    assert [e.kind for e in more] == ["step"] and more[0].loss == 0.25
    assert offset2 > offset
    assert read_events(tmp_path, offset2) == ([], offset2)


def test_garbage_line_becomes_a_warning_not_a_crash(tmp_path):
    (tmp_path / "events.jsonl").write_text('{"kind": "step"}\nnot json\n')
    events = load_all(tmp_path)
    assert [e.kind for e in events] == ["log", "log"]
    assert all(e.level == "warning" and "unreadable" in e.message for e in events)


def test_missing_file_reads_as_no_events(tmp_path):
    assert read_events(tmp_path / "nowhere") == ([], 0)


def test_commands_are_taken_once(tmp_path):
    send_command(tmp_path, Command.STOP)
    send_command(tmp_path, "sample")
    assert pending_commands(tmp_path) == {Command.STOP, Command.SAMPLE}
    assert take_commands(tmp_path) == {Command.STOP, Command.SAMPLE}
    assert take_commands(tmp_path) == set()
    with pytest.raises(ValueError):
        send_command(tmp_path, "format-disk")


def test_writers_of_one_run_append_in_order_with_a_held_descriptor(tmp_path):
    """The trainer's writer keeps its O_APPEND descriptor; the studio's and the sidecar's own writers append to the
    same file between its events, and nothing is overwritten."""
    trainer, studio = EventWriter(tmp_path), EventWriter(tmp_path)
    trainer.emit(StepEvent(step=1, epoch=1, loss=0.5, lr=1e-4))
    studio.emit(LogEvent(level="info", message="from the studio"))
    trainer.emit(StepEvent(step=2, epoch=1, loss=0.25, lr=1e-4))
    studio.close()
    EventWriter(tmp_path).emit(FinishedEvent(reason="completed", step=2, epoch=1))  # a one-shot writer, closed when dropped
    trainer.close()
    trainer.close()  # closing twice is harmless
    assert [(e.kind, getattr(e, "step", None)) for e in load_all(tmp_path)] == [
        ("step", 1), ("log", None), ("step", 2), ("finished", 2)]


def test_the_trainer_polls_commands_at_most_every_poll_interval(tmp_path, monkeypatch):
    """trainers/native/loop.py COMMAND_POLL_S: a command waits at most that long; an in-process stop request is
    seen at once."""
    from types import SimpleNamespace

    from trainers.native import loop

    trainer = loop.Trainer.__new__(loop.Trainer)
    trainer.s, trainer.step, trainer.stop_requested = SimpleNamespace(run_dir=tmp_path), 0, False
    trainer.commands_polled = -loop.COMMAND_POLL_S
    trainer._log = lambda *args, **kwargs: None
    clock = [100.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    send_command(tmp_path, Command.STOP)
    assert trainer._handle_commands() is True  # the first poll takes it
    send_command(tmp_path, Command.STOP)
    clock[0] += loop.COMMAND_POLL_S / 2
    assert trainer._handle_commands() is False and pending_commands(tmp_path) == {Command.STOP}
    clock[0] += loop.COMMAND_POLL_S / 2
    assert trainer._handle_commands() is True and pending_commands(tmp_path) == set()
    trainer.stop_requested = True
    assert trainer._handle_commands() is True  # no poll due: the request alone stops
