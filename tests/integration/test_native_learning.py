"""The demo LoRA learns its concept measurably, and only for its trigger word (a real, short CPU run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.integration.test_native_train import finish, make_run, start
from trainers.native.demo_images import concept_scores

pytestmark = pytest.mark.integration

TRIGGER, CONTROL = "a white circle on a zxq background", "a red square on a blue background"


def test_trigger_preview_moves_to_the_concept_and_the_control_does_not(tmp_path: Path):
    steps = 150
    run_dir = make_run(tmp_path, **{"max_steps": steps, "optimizer.lr": 1e-3, "save_every_n_epochs": 1000,
                                    "studio.sample_prompts": [TRIGGER, CONTROL], "studio.sample_seeds": [7],
                                    "studio.sample_every_n_steps": steps})
    events = finish(start(run_dir), run_dir, timeout=240)
    scores = {(e.step, e.index): concept_scores(Image.open(run_dir / e.path)) for e in events if e.kind == "sample"}
    assert set(scores) == {(0, 0), (0, 1), (steps, 0), (steps, 1)}
    before, after = scores[(0, 0)], scores[(steps, 0)]
    assert before["concept"] < 0.05 and before["magenta"] < 0.05
    assert after["concept"] > 0.3 and after["magenta"] > 0.1, (before, after)
    assert scores[(steps, 1)]["concept"] < 0.15, scores  # the control prompt keeps its own background
