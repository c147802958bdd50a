"""Training state, exact resume, eval, logging and the non-finite loss policy, on the embedded demo model.

The trainer runs in this process (the child process adds only argument parsing, tested elsewhere), so one
import of torch/diffusers serves every test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import tomlkit
import torch
from tbparse import SummaryReader

from tests.integration.test_native_train import make_run
from trainers.checkpoints import resume_points
from trainers.events import EventWriter, load_all
from trainers.native.loop import NonFiniteLoss, Trainer
from trainers.native.settings import load_run

pytestmark = pytest.mark.integration

FAST = {"studio.sample_every_n_steps": 0, "studio.sample_at_start": False, "save_every_n_steps": 1000, "micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2, "adapter.dropout": 0.1, "uncond_fraction": 0.3}


def train(run_dir: Path, *, max_steps: int, resume: str | None = None, stop_at: int | None = None,
          patch=None) -> tuple[str, Trainer]:
    trainer = Trainer(load_run(run_dir, max_steps), EventWriter(run_dir), resume=resume)
    if stop_at is not None:
        after = trainer._after_step

        def after_then_stop():
            after()
            if trainer.step == stop_at:
                trainer.request_stop()

        trainer._after_step = after_then_stop
    if patch is not None:
        patch(trainer)
    return trainer.run(), trainer


def pin_guard_cadence(monkeypatch, every: int) -> None:
    """Pin the divergence guard's copy cadence (trainers/native/divergence.py, "Cadence") to ``every`` steps once
    its cost is first measured, instead of a share of this machine's step time: a test that names the step a
    divergence rolls back to must not depend on how fast the step ran."""
    from trainers.native import divergence

    monkeypatch.setattr(divergence, "MAX_EVERY", every)
    monkeypatch.setattr(divergence, "BUDGET", math.inf if every == 1 else 1e-30)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss, the later event winning (a resumed run writes the steps after its checkpoint again)."""
    return {e.step: e.loss for e in load_all(run_dir) if e.kind == "step"}


def test_stop_and_resume_gives_the_same_losses_as_one_run(tmp_path: Path):
    whole = make_run(tmp_path / "whole", **FAST)
    assert train(whole, max_steps=8)[0] == "completed"
    split = make_run(tmp_path / "split", **FAST)
    reason, _ = train(split, max_steps=8, stop_at=3)
    assert reason == "stopped"
    assert (split / "global_step3" / "state.json").is_file() and (split / "step3").is_dir()
    assert (split / "latest").read_text().strip() == "global_step3"
    points = resume_points(split)
    assert points[0].name == "global_step3" and points[0].kind == "state" and points[0].step == 3
    assert any(p.kind == "lora" and p.name == "step3" for p in points)
    reason, trainer = train(split, max_steps=8, resume="global_step3")
    assert reason == "completed" and trainer.step == 8
    expected, got = losses(whole), losses(split)
    assert sorted(got) == list(range(1, 9))
    assert [got[s] for s in range(1, 9)] == [expected[s] for s in range(1, 9)]  # bit-exact, not approximately
    final_whole = torch.load(whole / "global_step8" / "training_state.pt", weights_only=True)["lora"]
    final_split = torch.load(split / "global_step8" / "training_state.pt", weights_only=True)["lora"]
    assert all(torch.equal(final_whole[k], final_split[k]) for k in final_whole)


def test_resume_across_an_epoch_boundary_and_a_rank_change_is_refused(tmp_path: Path):
    run = make_run(tmp_path / "r", **{**FAST, "epochs": 3, "checkpoint_every_n_epochs": 1})
    assert train(run, max_steps=7)[0] == "completed"
    epoch_states = [p for p in resume_points(run) if p.kind == "state"]
    assert [p.name for p in epoch_states][-1] == "global_step6"  # 6 steps per epoch: one after epoch 1
    meta = json.loads((run / "global_step6" / "state.json").read_text())
    assert meta["epoch"] == 2 and meta["steps_into_epoch"] == 0
    whole = make_run(tmp_path / "w", **{**FAST, "epochs": 3})
    train(whole, max_steps=9)
    reason, trainer = train(run, max_steps=9, resume="global_step6")
    assert trainer.step == 9 and losses(run)[9] == losses(whole)[9] and losses(run)[7] == losses(whole)[7]
    main = run / "chroma_demo.toml"
    main.write_text(main.read_text().replace("rank = 8", "rank = 4"))
    with pytest.raises(ValueError, match="rank"):
        train(run, max_steps=10, resume="global_step9")


def test_eval_tensorboard_and_wandb_offline(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = make_run(tmp_path, **{**FAST, "eval_every_n_steps": 2, "logging_steps": 1})
    main = run / "chroma_demo.toml"
    dataset = str(run / "chroma_demo_dataset.toml")
    text = main.read_text().replace("[model]", f"eval_datasets = [{{name = 'holdout', config = '{dataset}'}}]\n\n"
                                               "[model]", 1)
    main.write_text(text + "\n[monitoring]\nenable_wandb = true\nwandb_tracker_name = 'dp-studio-test'\n")
    train(run, max_steps=4)
    evals = [e for e in load_all(run) if e.kind == "eval"]
    assert [e.step for e in evals] == [0, 2, 4]  # before the first step, then every 2 steps
    assert all(e.name == "holdout" and len(e.quantiles) == 9 for e in evals)
    first = evals[0]
    assert first.loss == pytest.approx(sum(first.quantiles.values()) / 9)
    assert first.quantiles["0.10"] != first.quantiles["0.90"]
    scalars = SummaryReader(str(run)).scalars
    tags = set(scalars["tag"])
    assert {"train/loss", "train/lr", "train/grad_norm", "holdout/loss", "holdout/loss_quantile_0.50",
            "eval/eval_time_sec"} <= tags
    train_loss = scalars[scalars["tag"] == "train/loss"].sort_values("step")
    assert list(train_loss["step"]) == [1, 2, 3, 4]
    assert train_loss["value"].tolist() == pytest.approx([losses(run)[s] for s in (1, 2, 3, 4)], rel=1e-6)
    assert list((run / "wandb").glob("offline-run-*")), "W&B wrote no offline run folder"


def _nan_at(step: int):
    def patch(trainer: Trainer):
        setup = trainer.setup

        def setup_then_poison():
            setup()
            predict = trainer.family.predict

            def poisoned(x_t, t, text):
                out = predict(x_t, t, text)
                return out * float("nan") if trainer.step + 1 == step else out

            trainer.family.predict = poisoned

        trainer.setup = setup_then_poison
    return patch


def test_non_finite_loss_stops_with_the_last_good_state(tmp_path: Path, monkeypatch):
    pin_guard_cadence(monkeypatch, 1)
    run = make_run(tmp_path, **FAST)
    with pytest.raises(NonFiniteLoss, match="lr = "):
        train(run, max_steps=6, patch=_nan_at(3))
    # The NaN loss of step 3 was computed on the weights of step 2: those are suspect, step 1's are the last sane.
    assert (run / "step1" / "adapter_model.safetensors").is_file() and not (run / "global_step2").exists()
    state = torch.load(run / "global_step1" / "training_state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["lora"].values())
    assert max(losses(run)) == 2


def test_non_finite_loss_skip_policy_goes_on(tmp_path: Path, monkeypatch):
    pin_guard_cadence(monkeypatch, 1)
    run = make_run(tmp_path, **{**FAST, "studio.nonfinite_loss": "skip"})
    reason, trainer = train(run, max_steps=5, patch=_nan_at(3))
    assert reason == "completed" and trainer.step == 5
    assert sorted(losses(run)) == [1, 2, 4, 5] and all(math.isfinite(v) for v in losses(run).values())
    assert any(e.kind == "log" and e.level == "warning" and "skipped" in e.message for e in load_all(run))


def _source_pair(folder: Path, **overrides) -> Path:
    """The demo pair as a user's own files (absolute model and image paths), returned as the main TOML."""
    run_like = make_run(folder / "src", **overrides)
    main = run_like / "chroma_demo.toml"
    doc = tomlkit.parse(main.read_text())
    doc["output_dir"] = str(folder / "out")
    main.write_text(tomlkit.dumps(doc))
    (run_like / "run.json").unlink()
    return main


def test_stop_in_the_studio_then_resume_from_the_cli(tmp_path: Path, capsys):
    import argparse

    from trainers.commands import Command
    from trainers.runs import RunManager
    from trainers.train_cli import train as train_cli

    main = _source_pair(tmp_path, **FAST)
    manager = RunManager([tmp_path / "out"])
    run_id = manager.start(main, max_steps=12)
    for ev in manager.events(run_id):
        if ev.kind == "step" and ev.step == 3:
            manager.send(run_id, Command.STOP)
    assert manager.info(run_id).status == "stopped"
    stopped_at = max(losses(manager.run_dir(run_id)))
    assert [p.name for p in resume_points(manager.run_dir(run_id)) if p.kind == "state"] == [
        f"global_step{stopped_at}"]
    code = train_cli(argparse.Namespace(main=main, max_steps=None, name=None, resume=""), manager)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"resuming {run_id} from global_step{stopped_at}" in out
    info = manager.info(run_id)
    assert info.status == "completed"
    events = load_all(info.run_dir)
    resumed = [i for i, e in enumerate(events) if e.kind == "resumed"]
    assert len(resumed) == 1 and events[resumed[0]].step == stopped_at
    after = [e.step for e in events[resumed[0]:] if e.kind == "step"]
    assert after == list(range(stopped_at + 1, 13))
    log = (info.run_dir / "stdout.log").read_text()
    # the epoch the state holds: 1, or 2 when the stop came at the end of epoch 1 (6 steps an epoch)
    epoch = json.loads((info.run_dir / f"global_step{stopped_at}" / "state.json").read_text())["epoch"]
    assert epoch == (1 if stopped_at < 6 else 2)
    assert f"Resuming training from checkpoint. Resuming at epoch: {epoch}, step: {stopped_at}" in log


def test_a_full_disk_under_tensorboard_warns_once_and_training_goes_on(tmp_path: Path):
    from tests.fixtures.full_disk import FullFile

    run = make_run(tmp_path, **FAST)

    def patch(trainer):
        setup = trainer.setup

        def setup_then_fill():
            setup()
            trainer.metrics.tb._file.close()
            trainer.metrics.tb._file = FullFile()

        trainer.setup = setup_then_fill

    reason, trainer = train(run, max_steps=4, patch=patch)
    assert reason == "completed" and trainer.step == 4
    warnings = [e.message for e in load_all(run) if e.kind == "log" and "TensorBoard" in e.message]
    assert len(warnings) == 1 and "No space left" in warnings[0] and "training goes on" in warnings[0]
    assert sorted(losses(run)) == [1, 2, 3, 4]
