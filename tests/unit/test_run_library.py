from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_pair
from trainers.run_library import (
    best_of,
    delete_run,
    folder_position,
    mark_best,
    render_samples,
    sidecar_command,
)
from trainers.runs import RunError, RunInfo, RunManager

REPO = Path(__file__).resolve().parents[2]


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


def test_folder_position_prefers_checkpoint_events_then_reads_the_name():
    from trainers.events import CheckpointEvent, StepEvent

    steps = [StepEvent(step=s, epoch=1 + (s - 1) // 6, loss=1.0, lr=1e-4) for s in range(1, 15)]
    events = [*steps, CheckpointEvent(step=6, epoch=1, path="epoch1"), CheckpointEvent(step=9, epoch=2, path="step9"),
              CheckpointEvent(step=7, epoch=2, path="dp/20260101_00-00-00/epoch2")]
    assert folder_position(events, "epoch1") == (6, 1)
    assert folder_position(events, "dp/20260101_00-00-00/epoch2") == (7, 2)
    assert folder_position(events, "other/epoch2") == (7, 2)  # same folder name, another base
    assert folder_position(steps, "epoch2") == (12, 2)  # no checkpoint event: last step of that epoch
    assert folder_position(steps, "step8") == (8, 2)
    assert folder_position([], "epoch3") == (0, 3)
    with pytest.raises(RunError, match="not an epochN or stepN"):
        folder_position(events, "samples")


def _fake_info(tmp_path, saved: str = "epoch1") -> RunInfo:
    run_dir = tmp_path / "run"
    (run_dir / saved).mkdir(parents=True)
    (run_dir / saved / "adapter_model.safetensors").write_bytes(b"")
    (run_dir / "run.json").write_text("{}")
    return RunInfo("run", run_dir, "x", "native", "", "completed", None, {})


def test_sidecar_command_names_the_run_folder_prompts_and_seeds(tmp_path):
    info = _fake_info(tmp_path)
    cmd = sidecar_command(info, "epoch1", ["a zxq cat", "a dog"], [7, 42], python="py")
    assert cmd == ["py", "-m", "trainers.native.sidecar", "--run-dir", str(info.run_dir), "--folder", "epoch1",
                   "--prompt", "a zxq cat", "--prompt", "a dog", "--seed", "7", "--seed", "42"]


def test_render_samples_streams_progress_and_reports_the_childs_reason(tmp_path):
    info = _fake_info(tmp_path)
    with pytest.raises(RunError, match="'epoch9' is not a saved"):
        list(render_samples(info, "epoch9"))
    # A stand-in interpreter that behaves like a failing sidecar (the real one is tested in integration).
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'sidecar: 1/2 samples/epoch1_p0_s7.png'\necho 'Traceback: noise'\n"
                    "echo 'sidecar failed: [model] diffusers_path = x does not exist'\nexit 1\n")
    fake.chmod(0o755)
    lines = []
    with pytest.raises(RunError, match=r"^\[model\] diffusers_path = x does not exist$"):
        for line in render_samples(info, "epoch1", python=str(fake)):
            lines.append(line)
    assert lines == ["1/2 samples/epoch1_p0_s7.png"]
    fake.write_text("#!/bin/sh\necho 'sidecar: done'\n")
    assert list(render_samples(info, "epoch1", python=str(fake))) == ["done"]
    fake.write_text("#!/bin/sh\necho 'Killed'\nexit 137\n")
    with pytest.raises(RunError, match=r"exit code 137\): Killed"):
        list(render_samples(info, "epoch1", python=str(fake)))


def test_the_key_check_finds_the_runs_base_model(tmp_path):
    import shutil

    from trainers.run_library import base_model_path, check_saved

    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "epoch1").mkdir(parents=True)
    source = tmp_path / "profile" / "main.toml"
    source.parent.mkdir()
    shutil.copytree(REPO / "assets" / "demo" / "chroma-tiny", tmp_path / "profile" / "models" / "chroma")
    (run_dir / "main.toml").write_text("[model]\ntype = 'chroma'\ntransformer_path = 'models/chroma'\n")
    info = RunInfo("r1", run_dir, "x", "diffusion-pipe", "", "completed", None,
                   meta={"main_config": "main.toml", "source_main": str(source)})
    assert base_model_path(info) == tmp_path / "profile" / "models" / "chroma"  # as the trainer resolved it
    with pytest.raises(RunError, match="not a saved epoch"):
        check_saved(info, "epoch2")
    (run_dir / "epoch1" / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(RunError, match="cannot check adapter_model.safetensors: .*not a .safetensors file"):
        check_saved(info, "epoch1")
    no_source = RunInfo("r1", run_dir, "x", "diffusion-pipe", "", "completed", None, meta={"main_config": "main.toml"})
    assert base_model_path(no_source) == run_dir / "models" / "chroma"
    assert base_model_path(RunInfo("r1", run_dir, "x", "native", "", "completed", None, meta={})) is None
