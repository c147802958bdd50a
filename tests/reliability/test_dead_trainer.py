"""A trainer killed with SIGKILL is explained: one ``failed`` event with the signal and its last output."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from tests.conftest import write_pair
from trainers.events import EventWriter, StepEvent, load_all
from trainers.runs import RunManager


@pytest.fixture
def manager(tmp_path):
    return RunManager([tmp_path / "runs"], trainer_module="tests.fakes.trainer")


def _wait(cond, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _failed(run_dir):
    return [ev for ev in load_all(run_dir) if ev.kind == "failed"]


def test_kill_9_reaches_a_watching_monitor_within_2_s_with_the_signal_and_the_last_output(manager, tmp_path):
    run_id = manager.start(write_pair(tmp_path / "p", max_steps=400))
    run_dir = manager.run_dir(run_id)
    batches = manager.event_batches(run_id, heartbeat_s=0.5)
    seen = []
    for batch in batches:  # watch until the run trains, as the monitor does
        seen += batch
        if any(ev.kind == "step" for ev in seen):
            break
    (run_dir / "stdout.log").open("a").write("a line the trainer printed last\n")
    os.kill(manager.info(run_id).pid, signal.SIGKILL)
    killed = time.monotonic()
    for batch in batches:
        seen += batch
        if seen[-1].kind == "failed":
            break
    assert time.monotonic() - killed < 2.0
    failed = seen[-1]
    assert "SIGKILL" in failed.error and str(manager.info(run_id).pid) in failed.error
    assert "a line the trainer printed last" in failed.detail
    _wait(lambda: manager.info(run_id).status == "failed")
    time.sleep(0.3)  # the reaper thread, the tail and info() all noticed: still one event
    assert len(_failed(run_dir)) == 1


def _dead_run(tmp_path, name="20260101_00-00-00"):
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"pid": 999999999, "name": "x", "created": "2026"}))
    EventWriter(run_dir).emit(StepEvent(step=1, epoch=1, loss=1.0, lr=0.1))
    (run_dir / "stdout.log").write_text("".join(f"line {i}\n" for i in range(100)) + "Traceback: boom\n")
    return run_dir


def test_a_server_that_did_not_start_the_run_explains_it_once_however_many_observers(tmp_path):
    run_dir = _dead_run(tmp_path)
    managers = [RunManager([tmp_path / "runs"]) for _ in range(4)]  # four servers, no child of their own
    barrier = threading.Barrier(8)

    def observe(m, i):
        barrier.wait()
        if i % 2:
            m.info(run_dir.name)
        else:
            list(m.event_batches(run_dir.name))

    threads = [threading.Thread(target=observe, args=(managers[i % 4], i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    failed = _failed(run_dir)
    assert len(failed) == 1
    assert "999999999" in failed[0].error and "exit status is unknown" in failed[0].error
    assert failed[0].detail.endswith("Traceback: boom") and "line 81" in failed[0].detail
    assert "line 80" not in failed[0].detail  # the last 20 lines only
    assert managers[0].info(run_dir.name).status == "failed"


def test_the_next_server_start_explains_runs_that_died_while_it_was_down(tmp_path):
    run_dir = _dead_run(tmp_path)
    RunManager([tmp_path / "runs"]).runs()  # what app start-up does
    assert len(_failed(run_dir)) == 1


def test_a_run_that_closed_itself_gets_no_explanation(tmp_path):
    from trainers.events import FinishedEvent

    run_dir = _dead_run(tmp_path)
    EventWriter(run_dir).emit(FinishedEvent(step=1, epoch=1))
    assert RunManager([tmp_path / "runs"]).info(run_dir.name).status == "completed"
    assert _failed(run_dir) == []


def test_a_late_observer_of_an_earlier_leg_does_not_explain_the_resumed_one(tmp_path):
    from trainers.events import FinishedEvent, ResumedEvent
    from trainers.run_death import explain_death

    run_dir = _dead_run(tmp_path)
    EventWriter(run_dir).emit(FinishedEvent(step=1, epoch=1, reason="stopped"))
    EventWriter(run_dir).emit(ResumedEvent(step=1, epoch=1, checkpoint="global_step1"))
    # The first leg's reaper runs only now: the run names its new trainer already.
    (run_dir / "run.json").write_text(json.dumps({"pid": os.getpid(), "name": "x", "created": "2026"}))
    assert explain_death(run_dir, 999999999, returncode=0) is None
    assert _failed(run_dir) == []
