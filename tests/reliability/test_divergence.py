"""An absurd learning rate: the run stops before its weights are garbage, keeps the last sane state, and its
message's fix (edit the run's copy of the config, resume) really trains on."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import tomlkit
import torch
from safetensors.torch import load_file

from tests.integration.test_native_resume import FAST, losses, pin_guard_cadence, train
from tests.integration.test_native_train import make_run
from trainers.events import load_all
from trainers.native.divergence import WEIGHT_BOUND
from trainers.native.loop import NonFiniteLoss

pytestmark = pytest.mark.integration

# Adam moves every weight by about lr per step: with lr = 1e4 warmed up over 100 steps the LoRA grows by ~100, 200,
# 300 ... per step and passes the bound at step 4; on the old code it went NaN at step 3 after saving a step2 LoRA
# with |w| ~ 1e6 (the "last good" one).
ABSURD = {**FAST, "warmup_steps": 100, "optimizer.lr": 1e4, "save_every_n_steps": 1}


def _largest(tensors) -> float:
    return max(v.abs().max().item() for v in tensors.values())


def test_absurd_lr_keeps_the_last_sane_state_and_the_suggested_fix_resumes(tmp_path: Path):
    run = make_run(tmp_path, **ABSURD)
    with pytest.raises(NonFiniteLoss) as caught:
        train(run, max_steps=10)
    message = str(caught.value)
    fix = re.search(r"set \[optimizer\] lr = (\S+) \(this step used .*?\) in (\S+) .*resume from (global_step(\d+))",
                    message)
    assert fix, message
    step = int(fix[4])
    assert step >= 1 and "nonfinite_loss" not in message
    assert Path(fix[2]) == run / "chroma_demo.toml"  # the copy RunManager.resume hands the trainer
    state = torch.load(run / fix[3] / "training_state.pt", weights_only=True)
    lora = load_file(run / f"step{step}" / "adapter_model.safetensors")
    assert math.isfinite(_largest(state["lora"])) and _largest(state["lora"]) <= WEIGHT_BOUND
    assert math.isfinite(_largest(lora)) and _largest(lora) <= WEIGHT_BOUND
    assert (run / "latest").read_text().strip() == fix[3]
    doc = tomlkit.parse(Path(fix[2]).read_text(encoding="utf-8"))
    doc["optimizer"]["lr"] = float(fix[1])
    Path(fix[2]).write_text(tomlkit.dumps(doc), encoding="utf-8")
    reason, trainer = train(run, max_steps=10, resume=fix[3])
    assert reason == "completed" and trainer.step == 10
    assert all(math.isfinite(v) for v in losses(run).values())
    assert _largest(load_file(run / "step10" / "adapter_model.safetensors")) <= WEIGHT_BOUND


def test_skip_mode_rolls_back_and_never_suggests_skip(tmp_path: Path):
    run = make_run(tmp_path, **{**FAST, "warmup_steps": 0, "optimizer.lr": 1e8, "studio.nonfinite_loss": "skip"})
    with pytest.raises(NonFiniteLoss) as caught:
        train(run, max_steps=40)
    message = str(caught.value)
    assert "20 diverging steps in a row" in message and "nonfinite_loss" not in message.split("Fix:")[1]
    # Every update was undone: the steps went by (skip mode moves on), the weights stayed the sane initial ones.
    saved = [p for p in run.glob("step*") if (p / "adapter_model.safetensors").is_file()]
    assert len(saved) == 1 and _largest(load_file(saved[0] / "adapter_model.safetensors")) < 1.0


def _spike_at(step: int):
    def patch(trainer):
        setup = trainer.setup

        def setup_then_spike():
            setup()
            predict = trainer.family.predict
            trainer.family.predict = lambda x_t, t, text: predict(x_t, t, text) * (1e3 if trainer.step + 1 == step else 1)

        trainer.setup = setup_then_spike
    return patch


def test_a_loss_jump_rolls_back_to_the_weights_before_the_suspect_ones(tmp_path: Path, monkeypatch):
    pin_guard_cadence(monkeypatch, 1)  # a copy every step (a GPU step's cadence)
    run = make_run(tmp_path, **FAST)
    patch = _spike_at(6)
    with pytest.raises(NonFiniteLoss, match=r"loss .* is .*x the median of the last 5 steps"):
        train(run, max_steps=10, patch=patch)
    # Step 6's loss was computed on the weights of step 5: the state kept is step 4's.
    assert (run / "global_step4").is_dir() and not (run / "global_step5").exists()
    assert max(losses(run)) == 5


def test_between_copies_a_divergence_goes_back_to_the_last_copy_and_says_which(tmp_path: Path, monkeypatch):
    # A copy every 3 steps (a CPU step's cadence; divergence.py "Cadence"): step 1 runs before the guard's cost is
    # known (copied and checked), then the copies hold the weights after steps 1 and 3; step 6's spike (computed on
    # step 5's weights) goes back to step 3's, not 4's.
    pin_guard_cadence(monkeypatch, 3)
    run = make_run(tmp_path, **{**FAST, "save_every_n_steps": 1})
    with pytest.raises(NonFiniteLoss, match=r"resume from global_step3"):
        train(run, max_steps=10, patch=_spike_at(6))
    assert (run / "global_step3").is_dir() and not (run / "global_step4").exists()
    assert (run / "latest").read_text().strip() == "global_step3"
    messages = [e.message for e in load_all(run) if e.kind == "log"]
    assert any("saving the last sane LoRA and training state (step 3)" in m for m in messages)
    # the LoRAs saved on the way (steps 4 and 5) are named as such
    assert any("step4, step5 hold weights saved after step 3" in m for m in messages), messages
