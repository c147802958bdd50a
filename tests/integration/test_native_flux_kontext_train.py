"""A real 2-step Flux Kontext run (an edit dataset: ``control_path``) through ``dp-studio train`` on the tiny
Flux model: the LoRA saves in Flux's format, previews come from FluxKontextPipeline, the control latents are
cached beside the targets', and a stopped run resumes bit-exactly on CPU.

diffusion-pipe trains Kontext with ``type = 'flux'`` and a dataset whose ``[[directory]]`` has ``control_path``
(utils/dataset.py:479, :669-672); models/flux.py:381-392 appends the control latents as extra tokens and
:234 saves the LoRA as for any Flux run.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

from tests.fixtures import flux_tiny as ft
from trainers.events import EventWriter, load_all
from trainers.native.families.flux import LORA_FILE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "assets" / "demo" / "dataset"
RANK = 4
IMAGES = 4


def edit_dataset(folder: Path) -> tuple[Path, Path]:
    """Targets (demo images with their captions) and controls (the same images mirrored and saved as .jpg, so
    pairing goes by stem, not by file name)."""
    targets, controls = folder / "targets", folder / "controls"
    targets.mkdir(parents=True)
    controls.mkdir()
    for image in sorted(DEMO.glob("*.png"))[:IMAGES]:
        shutil.copy(image, targets / image.name)
        shutil.copy(image.with_suffix(".txt"), targets / image.with_suffix(".txt").name)
        with Image.open(image) as im:
            ImageOps.mirror(im.convert("RGB")).save(controls / f"{image.stem}.jpg", quality=95)
    return targets, controls


def write_pair(folder: Path, diffusers_path: Path, data: tuple[Path, Path] | None = None, **top) -> Path:
    """A Kontext main + edit dataset TOML pair at 64 px on ``data`` (targets, controls; made in ``folder`` when
    None: runs to compare share one, since cached latents draw their posterior noise per file path)."""
    targets, controls = data or edit_dataset(folder / "data")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.toml").write_text(f"resolutions = [64]\nenable_ar_bucket = false\n\n[[directory]]\n"
                                         f"path = '{targets}'\ncontrol_path = '{controls}'\n", encoding="utf-8")
    extra = "".join(f"{key} = {value}\n" for key, value in ({"save_every_n_epochs": 1} | top).items())
    (folder / "main.toml").write_text(
        f"output_dir = '{folder / 'out'}'\ndataset = '{folder / 'dataset.toml'}'\nepochs = 2\n"
        f"micro_batch_size_per_gpu = 2\ngradient_accumulation_steps = 1\n{extra}\n[model]\ntype = 'flux'\n"
        f"diffusers_path = '{diffusers_path}'\ndtype = 'float32'\nguidance = 2.5\n\n[adapter]\ntype = 'lora'\n"
        f"rank = {RANK}\ndropout = 0.1\n\n[optimizer]\ntype = 'adamw'\nlr = 1e-2\n\n[studio]\nbackend = 'native'\n"
        "sample_prompts = ['make it mirrored']\nsample_seeds = [7]\nsample_every_n_steps = 2\n"
        "sample_at_start = false\nsample_width = 64\nsample_height = 64\nsample_steps = 2\nsample_guidance = 2.5\n",
        encoding="utf-8")
    return folder / "main.toml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ft.build(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, pair folder) of ``dp-studio train main.toml --max-steps 2``."""
    from trainers.runs import RunManager
    from trainers.train_cli import train

    main = write_pair(tmp_path_factory.mktemp("run"), tiny[0])
    manager = RunManager([main.parent / "out"])
    assert train(argparse.Namespace(main=main, max_steps=2, name=None, resume=None), manager) == 0
    (run_id,) = [info.run_id for info in manager.runs()]
    return manager.run_dir(run_id), main.parent


def test_two_kontext_steps_save_the_lora_in_flux_format(trained, tmp_path: Path):
    run_dir, _ = trained
    events = load_all(run_dir)
    assert events[-1].kind == "finished" and events[-1].step == 2
    saved = run_dir / "step2"
    assert sorted(p.name for p in saved.iterdir()) == ["main.toml", LORA_FILE]
    tensors = load_file(str(saved / LORA_FILE))
    linears = [n for n, m in ft.tiny_transformer().named_modules() if isinstance(m, torch.nn.Linear)
               and n.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    assert sorted(tensors) == sorted(f"transformer.{n}.lora_{ab}.weight" for n in linears for ab in "AB")
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if ".lora_B." in k)
    from diffusers import FluxPipeline  # diffusers' own writer writes the same bytes (models/flux.py:234)

    FluxPipeline.save_lora_weights(tmp_path, transformer_lora_layers={k.removeprefix("transformer."): v
                                                                      for k, v in tensors.items()})
    assert (tmp_path / LORA_FILE).read_bytes() == (saved / LORA_FILE).read_bytes()
    samples = [e for e in events if e.kind == "sample"]
    assert samples and all((run_dir / e.path).is_file() for e in samples)
    with Image.open(run_dir / samples[0].path) as image:
        assert image.size == (64, 64)


def test_targets_and_controls_are_both_cached(trained):
    _, pair = trained
    store = pair / "data" / "targets" / "cache" / "studio_flux"
    index = json.loads((store / "index.json").read_text())["entries"]
    sources = sorted(Path(e["source"]).parent.name for e in index.values() if e["kind"] == "latent")
    assert sources == ["controls"] * IMAGES + ["targets"] * IMAGES


def test_the_control_changes_the_loss(tiny, tmp_path: Path):
    # the control tokens reach the transformer: other control images give another loss for the same batch
    from trainers.native.loop import Trainer
    from trainers.native.settings import load_run

    targets, controls = edit_dataset(tmp_path / "data")
    flipped = tmp_path / "data" / "flipped"
    flipped.mkdir()
    for control in controls.iterdir():
        with Image.open(control) as im:
            ImageOps.flip(im.convert("RGB")).save(flipped / control.name, quality=95)
    losses = []
    for name, folder_of_controls in (("a", controls), ("b", flipped)):
        folder = tmp_path / name
        write_pair(folder, tiny[0], (targets, folder_of_controls), save_every_n_steps=1000)
        _run_json(folder)
        Trainer(load_run(folder, 1), EventWriter(folder)).run()
        losses.append([e.loss for e in load_all(folder) if e.kind == "step"])
    assert len(losses[0]) == len(losses[1]) == 1 and losses[0] != losses[1]


def _run_json(folder: Path) -> None:
    """A run folder as RunManager makes it: run.json beside the config pair."""
    (folder / "run.json").write_text(json.dumps({
        "run_id": folder.name, "backend": "native", "main_config": "main.toml",
        "dataset_config": "dataset.toml"}), encoding="utf-8")


def test_stop_and_resume_gives_the_same_losses_as_one_run(tiny, tmp_path: Path):
    from trainers.native.loop import Trainer
    from trainers.native.settings import load_run

    data = edit_dataset(tmp_path / "data")

    def run(folder: Path, max_steps: int, stop_at: int | None = None, resume: str | None = None) -> Path:
        if resume is None:
            write_pair(folder, tiny[0], data, save_every_n_steps=1000)
            _run_json(folder)
        trainer = Trainer(load_run(folder, max_steps), EventWriter(folder), resume=resume)
        if stop_at is not None:
            after = trainer._after_step

            def after_then_stop():
                after()
                if trainer.step == stop_at:
                    trainer.request_stop()

            trainer._after_step = after_then_stop
        trainer.run()
        return folder

    whole = run(tmp_path / "whole", 4)
    split = run(tmp_path / "split", 4, stop_at=2)
    assert (split / "global_step2" / "state.json").is_file()
    run(split, 4, resume="global_step2")

    def losses(run_dir: Path) -> dict[int, float]:
        return {e.step: e.loss for e in load_all(run_dir) if e.kind == "step"}

    assert sorted(losses(split)) == [1, 2, 3, 4]
    assert [losses(split)[s] for s in range(1, 5)] == [losses(whole)[s] for s in range(1, 5)]  # bit-exact
    a = torch.load(whole / "global_step4" / "training_state.pt", weights_only=True)["lora"]
    b = torch.load(split / "global_step4" / "training_state.pt", weights_only=True)["lora"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sidecar_renders_a_saved_kontext_lora_like_the_live_preview(trained, tmp_path: Path, monkeypatch):
    """Sidecar previews (trainers/native/sidecar.py) of a saved Kontext LoRA start from the same reference image
    (the dataset's first control) as the live preview, so they draw the same picture."""
    import numpy as np

    from trainers.native import sidecar
    from trainers.run_library import render_samples
    from trainers.runs import RunManager

    run_dir = tmp_path / "runs" / trained[0].name
    shutil.copytree(trained[0], run_dir)
    monkeypatch.chdir(tmp_path)  # load_model moves to the config's folder
    family = sidecar.load_model(sidecar.plan(run_dir, "step2"))
    first = sorted(DEMO.glob("*.png"))[0].stem
    assert family.preview_control == trained[1] / "data" / "controls" / f"{first}.jpg"
    progress = list(render_samples(RunManager([tmp_path / "runs"]).info(run_dir.name), "step2"))
    assert progress[-1].startswith("1/1 ")
    (sidecar,) = [e for e in load_all(run_dir) if e.kind == "sample" and e.source == "sidecar"]
    (live,) = [e for e in load_all(run_dir) if e.kind == "sample" and e.source == "live" and e.step == 2]

    def rgb(path: Path):
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.int16)

    drawn, trainer = rgb(run_dir / sidecar.path), rgb(run_dir / live.path)
    assert drawn.shape == trainer.shape == (64, 64, 3)
    assert abs(drawn - trainer).mean() < 0.5
