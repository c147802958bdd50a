from __future__ import annotations

import pytest

from tests.conftest import write_pair
from trainers.run_library import best_of, delete_run, mark_best
from trainers.runs import RunError, RunManager


def test_mark_best_then_delete_with_confirmation(tmp_path):
    manager = RunManager([tmp_path / "runs"], trainer_module="tests.fakes.trainer")
    run_id = manager.start(write_pair(tmp_path / "p", max_steps=3))
    list(manager.events(run_id))
    manager.info(run_id)
    run_dir = manager.run_dir(run_id)
    (run_dir / "epoch1").mkdir()
    (run_dir / "epoch1" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(RunError, match="not a saved"):
        mark_best(manager.info(run_id), "samples")
    mark_best(manager.info(run_id), "epoch1", note="crisp")
    assert best_of(run_dir) == "epoch1"
    _wait_done(manager, run_id)
    with pytest.raises(RunError, match="type the run id"):
        delete_run(manager.info(run_id), "yes")
    delete_run(manager.info(run_id), run_id)
    assert not run_dir.exists() and manager.runs() == []


def _wait_done(manager, run_id):
    import time

    for _ in range(100):
        if not manager.info(run_id).live:
            return
        time.sleep(0.05)
