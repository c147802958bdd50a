"""Sidecar sampling for real: a tiny demo run trains and saves, then the sidecar renders with its saved LoRAs.

The run's profile names its model and dataset with paths relative to the profile's folder, so the sidecar
(started from the repository root) must resolve them the way the run did.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomlkit
from PIL import Image

from trainers.demo_profile import prepare_demo
from trainers.events import load_all
from trainers.run_library import render_samples
from trainers.runs import RunError, RunManager

pytestmark = pytest.mark.integration
STEPS = 7  # 6 steps per epoch: epoch1 is saved at step 6, step7 at the end


def _relative_demo(folder, out):
    """The demo pair in ``folder`` with every path relative to ``folder``; live previews at the start (the base
model: a new LoRA changes nothing yet) and at the last step."""
    main = prepare_demo(folder, out)
    doc = tomlkit.parse(main.read_text(encoding="utf-8"))
    for key in ("diffusers_path", "transformer_path"):
        doc["model"][key] = os.path.relpath(doc["model"][key], folder)
    doc["output_dir"] = "runs"
    doc["dataset"] = os.path.relpath(doc["dataset"], folder)
    doc["save_every_n_epochs"] = 1
    doc["optimizer"]["lr"] = 4e-3  # a few steps must change the pictures visibly
    doc["studio"]["sample_at_start"] = True
    doc["studio"]["sample_every_n_steps"] = STEPS
    main.write_text(tomlkit.dumps(doc), encoding="utf-8")
    dataset = folder / doc["dataset"]
    data = tomlkit.parse(dataset.read_text(encoding="utf-8"))
    data["directory"][0]["path"] = os.path.relpath(data["directory"][0]["path"], folder)
    dataset.write_text(tomlkit.dumps(data), encoding="utf-8")
    return main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DP_STUDIO_HOME", str(tmp_path_factory.mktemp("home")))
        main = _relative_demo(folder, folder / "runs")
        manager = RunManager([folder / "runs"])
        run_id = manager.start(main, max_steps=STEPS)
        events = list(manager.events(run_id))
        assert events[-1].kind == "finished", events[-1]
        yield manager, manager.info(run_id)


def _sidecar_samples(run_dir):
    return [ev for ev in load_all(run_dir) if ev.kind == "sample" and ev.source == "sidecar"]


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_sidecar_renders_the_runs_prompts_like_the_live_previews(trained):
    _, info = trained
    progress = list(render_samples(info, f"step{STEPS}"))
    assert progress[0].startswith("2 images with step7 (step 7, epoch 2)") and progress[-1].startswith("2/2 ")
    rendered = _sidecar_samples(info.run_dir)
    assert [(ev.path, ev.step, ev.epoch, ev.seed, ev.index) for ev in rendered] == [
        ("samples/step7_p0_s7.png", STEPS, 2, 7, 0), ("samples/step7_p1_s7.png", STEPS, 2, 7, 1)]
    live = {(ev.prompt, ev.step): ev.path for ev in load_all(info.run_dir)
            if ev.kind == "sample" and ev.source == "live"}
    for ev in rendered:
        # Same LoRA, prompt, seed, size and steps as the trainer's own preview at that step: the same picture,
        # and not the base model's (the preview at step 0).
        sidecar = _pixels(info.run_dir / ev.path)
        trainer, base = (_pixels(info.run_dir / live[(ev.prompt, step)]) for step in (STEPS, 0))
        assert sidecar.shape == trainer.shape == (64, 64, 3)
        assert np.abs(sidecar - trainer).mean() < 0.1
        assert np.abs(sidecar - base).mean() > 0.5


def test_sidecar_takes_typed_prompts_and_seeds_for_an_epoch(trained):
    _, info = trained
    list(render_samples(info, "epoch1", ["a green square on a zxq background"], [3, 4]))
    typed = [ev for ev in _sidecar_samples(info.run_dir) if ev.path.startswith("samples/epoch1_")]
    assert [(ev.step, ev.epoch, ev.seed, ev.prompt) for ev in typed] == [
        (6, 1, 3, "a green square on a zxq background"), (6, 1, 4, "a green square on a zxq background")]
    assert all("_x" in ev.path and (info.run_dir / ev.path).is_file() for ev in typed)
    first, second = _pixels(info.run_dir / typed[0].path), _pixels(info.run_dir / typed[1].path)
    assert np.abs(first - second).mean() > 1.0  # different seeds, different pictures


def test_sidecar_names_missing_model_files(trained, tmp_path):
    manager, info = trained
    copy = tmp_path / "runs" / info.run_id
    shutil.copytree(info.run_dir, copy)
    config = copy / info.meta["main_config"]
    doc = tomlkit.parse(config.read_text(encoding="utf-8"))
    doc["model"]["diffusers_path"] = "no/such/flux"
    config.write_text(tomlkit.dumps(doc), encoding="utf-8")
    broken = RunManager([tmp_path / "runs"]).info(info.run_id)
    with pytest.raises(RunError, match=r"\[model\] diffusers_path = 'no/such/flux' does not exist"):
        list(render_samples(broken, "epoch1"))
    assert "does not exist" in load_all(copy)[-1].message  # the run's own log says so too


def test_sidecar_refuses_a_run_without_prompts(trained, tmp_path):
    from trainers.native.sidecar import plan

    _, info = trained
    copy = tmp_path / info.run_id
    shutil.copytree(info.run_dir, copy)
    config = copy / info.meta["main_config"]
    doc = tomlkit.parse(config.read_text(encoding="utf-8"))
    doc["studio"]["sample_prompts"] = []
    config.write_text(tomlkit.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match="sample_prompts is empty"):
        plan(copy, "epoch1")
    with pytest.raises(ValueError, match="'epoch5' is not a saved LoRA folder .* saved: epoch1, step7"):
        plan(copy, "epoch5", ["p"])
    job = plan(copy, "epoch1", ["p"])
    assert job.base == Path(info.meta["source_main"]).parent and [r[1] for r in job.renders] == [
        f"epoch1_x{hashlib.sha1(b'p').hexdigest()[:8]}_s7.png"]
