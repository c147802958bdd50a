"""RunManager against the torch-free fake trainer: start, watch, command, derive state from the folder."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import write_pair
from trainers.events import EventWriter, FinishedEvent, PhaseEvent, StepEvent
from trainers.run_status import derive_status
from trainers.runs import RunError, RunManager


@pytest.fixture
def manager(tmp_path):
    return RunManager([tmp_path / "runs"], trainer_module="tests.fakes.trainer")


def test_start_copies_configs_byte_for_byte_and_runs_to_completion(manager, tmp_path):
    main = write_pair(tmp_path / "profile", max_steps=12)
    run_id = manager.start(main, name="t", max_steps=12)
    run_dir = manager.run_dir(run_id)
    assert run_dir.parent == tmp_path / "profile" / "out"  # output_dir resolves against the main file
    assert (run_dir / "main.toml").read_bytes() == main.read_bytes()
    assert (run_dir / "ds.toml").read_bytes() == (tmp_path / "profile" / "ds.toml").read_bytes()
    kinds = [ev.kind for ev in manager.events(run_id)]
    assert kinds[0] == "phase" and kinds[-1] == "finished"
    assert kinds.count("step") == 12
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["pid"] and meta["main_config"] == "main.toml"
    _wait(lambda: manager.info(run_id).status == "completed")
    assert [r.run_id for r in manager.runs()] == [run_id]


def test_stop_command_ends_the_run_as_stopped(manager, tmp_path):
    run_id = manager.start(write_pair(tmp_path / "p", max_steps=400))
    steps = 0
    for ev in manager.events(run_id):
        if ev.kind == "step":
            steps += 1
            if steps == 3:
                manager.send(run_id, "stop")
        last = ev
    assert last.kind == "finished" and last.reason == "stopped"
    assert steps < 50
    _wait(lambda: manager.info(run_id).status == "stopped")
    with pytest.raises(RunError, match="stopped"):
        manager.send(run_id, "stop")


def test_since_skips_already_seen_events(manager, tmp_path):
    run_id = manager.start(write_pair(tmp_path / "p", max_steps=5))
    everything = list(manager.events(run_id))
    assert list(manager.events(run_id, since=3, follow=False)) == everything[3:]


def test_status_is_derived_from_events_and_pid():
    steps = [PhaseEvent(phase="training"), StepEvent(step=1, epoch=1, loss=1.0, lr=0.1)]
    assert derive_status([], alive=True) == "starting"
    assert derive_status(steps, alive=True) == "running"
    assert derive_status(steps, alive=False) == "interrupted"
    assert derive_status(steps + [FinishedEvent(step=1, epoch=1)], alive=False) == "completed"


def test_a_run_whose_process_died_reads_as_failed(manager, tmp_path):
    run_dir = tmp_path / "runs" / "20260101_00-00-00"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"pid": 999999999, "name": "x", "created": "2026"}))
    EventWriter(run_dir).emit(StepEvent(step=1, epoch=1, loss=1.0, lr=0.1))
    assert manager.info("20260101_00-00-00").status == "failed"  # explained on sight (run_death.py)
    assert [b for b in manager.event_batches("20260101_00-00-00")][0][0].kind == "step"


def test_bad_configs_are_refused_with_the_reason(manager, tmp_path):
    with pytest.raises(RunError, match="not found"):
        manager.start(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(RunError, match="not valid TOML"):
        manager.start(bad)
    no_ds = tmp_path / "nods.toml"
    no_ds.write_text("output_dir = 'o'\n")
    with pytest.raises(RunError, match="'dataset' is missing"):
        manager.start(no_ds)
    with pytest.raises(RunError, match="no run named"):
        manager.info("nope")


def _wait(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_second_run_waits_in_the_queue_then_starts_by_itself(manager, tmp_path):
    first = manager.start(write_pair(tmp_path / "a", max_steps=100000))
    _wait(lambda: manager.info(first).status == "running")
    second = manager.start(write_pair(tmp_path / "b", max_steps=5))
    third = manager.start(write_pair(tmp_path / "c", max_steps=5))
    assert manager.info(second).status == "queued" and manager.info(second).pid is None
    assert len({first, second, third}) == 3  # ids stay unique across output folders
    assert [r.run_id for r in manager.queued()] == [second, third]
    manager.move(third, 0)
    assert [r.run_id for r in manager.queued()] == [third, second]
    manager.cancel(second)
    assert manager.info(second).status == "cancelled" and [r.run_id for r in manager.queued()] == [third]
    with pytest.raises(RunError, match="not queued"):
        manager.cancel(second)
    # A fresh manager (a restarted server) sees the same queue.
    assert [r.run_id for r in RunManager(manager.roots, trainer_module="tests.fakes.trainer").queued()] == [third]
    manager.send(first, "stop")
    _wait(lambda: manager.info(third).status == "completed", timeout=30)
    assert manager.queued() == []


def test_output_folders_are_remembered_across_restarts(manager, tmp_path):
    seen = []
    manager.on_new_root = seen.append
    run_id = manager.start(write_pair(tmp_path / "elsewhere", max_steps=2))
    list(manager.events(run_id))
    assert seen == [tmp_path / "elsewhere" / "out"]
    restarted = RunManager([tmp_path / "runs"], trainer_module="tests.fakes.trainer")
    assert [r.run_id for r in restarted.runs()] == [run_id]


@pytest.mark.parametrize(("model_type", "studio", "backend"), [
    ("chroma", "", "native"), ("flux", "", "native"), ("wan", "", "diffusion-pipe"),
    ("wan", "backend = 'auto'\n", "diffusion-pipe"), ("chroma", "backend = 'diffusion-pipe'\n", "diffusion-pipe"),
    ("flux", "backend = 'diffusion-pipe'\n", "diffusion-pipe"), ("wan", "backend = 'native'\n", "native")])
def test_start_picks_the_backend_auto_by_model_type_unless_named(manager, tmp_path, model_type, studio, backend):
    main = write_pair(tmp_path / "p", max_steps=2)
    text = main.read_text().replace("type = 'chroma'", f"type = '{model_type}'")
    main.write_text(text + (f"\n[studio]\n{studio}" if studio else ""))
    run_id = manager.start(main, max_steps=2)
    assert manager.info(run_id).backend == backend
    _wait(lambda: manager.info(run_id).status == "completed")


def test_a_liveness_check_reads_run_json_once(manager, tmp_path, monkeypatch):
    """The event tail asks this on idle polls: one read of run.json, then the pid (queued runs count as alive)."""
    from pathlib import Path

    (tmp_path / "run.json").write_text(json.dumps({"queued": True}), encoding="utf-8")
    reads = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self.name) or real(self, *a, **k))
    assert manager._alive(tmp_path)
    assert reads == ["run.json"]


def test_a_config_path_of_an_unknown_user_is_a_missing_file_not_a_crash(manager):
    """`~name` of a user this machine does not know: Path.expanduser raises RuntimeError; start says the file
    is missing instead (found by tests/security/test_fuzz.py with start_run('~0'))."""
    for text in ("~0", "~no_such_user_here/main.toml"):
        with pytest.raises(RunError, match="config file not found"):
            manager.start(text, queue=False)
