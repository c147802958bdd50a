"""`dp-studio train`: headless run with a progress line, the run folder printed, exit code from the outcome."""

from __future__ import annotations

import argparse

from tests.conftest import write_pair
from trainers.events import PhaseEvent, StepEvent
from trainers.runs import RunManager
from trainers.train_cli import progress_line, train


def test_train_prints_progress_and_the_run_folder(tmp_path, capsys):
    manager = RunManager([tmp_path / "runs"], trainer_module="tests.fakes.trainer")
    main = write_pair(tmp_path / "p", max_steps=6)
    code = train(argparse.Namespace(main=main, max_steps=None, name="cli", resume=None), manager)
    out = capsys.readouterr().out
    assert code == 0
    assert "step 6/6 epoch 1" in out and "finished (completed) at step 6" in out
    run_dir = manager.runs()[0].run_dir
    assert out.count(f"run folder: {run_dir}") == 2


def test_train_refuses_a_missing_config(tmp_path, capsys):
    code = train(argparse.Namespace(main=tmp_path / "nope.toml", max_steps=None, name=None, resume=None),
                 RunManager([tmp_path / "runs"]))
    assert code == 1 and "not found" in capsys.readouterr().err


def test_progress_line():
    line = progress_line(StepEvent(step=3, epoch=1, loss=0.12345, lr=2e-4, total_steps=10, it_per_s=2.0, eta_s=125))
    assert line == "step 3/10 epoch 1 loss 0.1235 lr 0.0002 2.00 it/s ETA 2:05"
    assert progress_line(PhaseEvent(phase="caching", message="16 images")) == "[caching] 16 images"
