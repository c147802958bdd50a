"""A real 2-step SD3 run through ``dp-studio train`` on the tiny SD3 model, its LoRA checked from the file alone
against diffusers' own writer and loader, the loaded LoRA reproducing the trained adapter, an exact resume and
sidecar previews of the saved LoRA.

diffusion-pipe models/sd3.py lines 63-64 save with ``self.save_lora_weights(save_dir,
transformer_lora_layers=peft_state_dict)`` (StableDiffusion3Pipeline's): ``pytorch_lora_weights.safetensors``,
``transformer.`` keys, metadata ``{"format": "pt"}``, no adapter_config.json; utils/saver.py lines 74-84 strip
``.default`` from the peft names and copy the main config beside it. models/sd3.py line 28 targets every Linear of
``JointTransformerBlock`` (models/base.py get_target_modules).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.fixtures import sd3_tiny as st
from trainers.events import EventWriter, load_all
from trainers.native.families.sd3 import LORA_FILE, SD3Family

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
RANK = 4


def write_pair(folder: Path, diffusers_path: Path, **top) -> Path:
    """An SD3 main + dataset TOML pair on the demo images at 64 px; returns the main TOML."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.toml").write_text(f"resolutions = [64]\nenable_ar_bucket = false\n\n[[directory]]\n"
                                         f"path = '{REPO / 'assets' / 'demo' / 'dataset'}'\n", encoding="utf-8")
    extra = "".join(f"{key} = {value}\n" for key, value in ({"save_every_n_epochs": 1} | top).items())
    (folder / "main.toml").write_text(
        f"output_dir = '{folder / 'out'}'\ndataset = '{folder / 'dataset.toml'}'\nepochs = 1\nmicro_batch_size_per_gpu = 2\n"
        f"gradient_accumulation_steps = 1\n{extra}\n[model]\ntype = 'sd3'\ndiffusers_path = '{diffusers_path}'\n"
        f"dtype = 'float32'\nflux_shift = true\n\n[adapter]\ntype = 'lora'\nrank = {RANK}\n"
        "dropout = 0.1\n\n[optimizer]\ntype = 'adamw'\nlr = 1e-2\n\n[studio]\nbackend = 'native'\n"
        "sample_prompts = ['a red circle on a zxq background']\nsample_seeds = [7]\nsample_every_n_steps = 2\n"
        "sample_at_start = false\nsample_width = 64\nsample_height = 64\nsample_steps = 2\nsample_guidance = 3.5\n",
        encoding="utf-8")
    return folder / "main.toml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return st.build(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    """The run folder of ``dp-studio train main.toml --max-steps 2``."""
    from trainers.runs import RunManager
    from trainers.train_cli import train

    main = write_pair(tmp_path_factory.mktemp("run"), tiny)
    manager = RunManager([main.parent / "out"])
    assert train(argparse.Namespace(main=main, max_steps=2, name=None, resume=None), manager) == 0
    (run_id,) = [info.run_id for info in manager.runs()]
    return manager.run_dir(run_id)


def test_two_steps_save_the_lora_as_diffusion_pipe_does(trained: Path, tiny, tmp_path: Path):
    events = load_all(trained)
    assert events[-1].kind == "finished" and events[-1].step == 2
    saved = trained / "step2"
    assert sorted(p.name for p in saved.iterdir()) == ["main.toml", LORA_FILE]
    with safe_open(str(saved / LORA_FILE), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
        keys = list(fh.keys())
    transformer = st.tiny_transformer()
    linears = {n: m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)
               and n.startswith("transformer_blocks.")}
    assert "transformer_blocks.0.attn2.to_q" in linears and "transformer_blocks.1.norm1_context.linear" in linears
    assert sorted(keys) == sorted(f"transformer.{n}.lora_{ab}.weight" for n in linears for ab in "AB")
    tensors = load_file(str(saved / LORA_FILE))
    for name, linear in linears.items():
        assert tensors[f"transformer.{name}.lora_A.weight"].shape == (RANK, linear.in_features)
        assert tensors[f"transformer.{name}.lora_B.weight"].shape == (linear.out_features, RANK)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if ".lora_B." in k)  # trained: B left zero
    # diffusers' own writer, given the same peft state dict, writes the same bytes
    from diffusers import StableDiffusion3Pipeline
    peft_state = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    StableDiffusion3Pipeline.save_lora_weights(tmp_path, transformer_lora_layers=peft_state)
    assert (tmp_path / LORA_FILE).read_bytes() == (saved / LORA_FILE).read_bytes()
    # the key check after the save (trainers/lora_check.py, SD3: lora_check_sd3.py) against the model
    assert any(e.kind == "log" and e.message.startswith("step2 key check: ✓") for e in events)
    assert [e.path for e in events if e.kind == "sample"], "no preview was rendered"
    assert all((trained / e.path).is_file() for e in events if e.kind == "sample")


def test_diffusers_loader_takes_every_key(trained: Path, tiny, caplog):
    from diffusers import StableDiffusion3Pipeline
    from peft import get_peft_model_state_dict

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny, local_files_only=True)
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(trained / "step2", weight_name=LORA_FILE, adapter_name="dp")
    # diffusers warns "... led to unexpected keys ..." / "... missing keys ..." (loaders/peft.py) on a partial load
    assert not [r.message for r in caplog.records if re.search(r"(unexpected|missing) keys", r.message)]
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="dp")
    saved = {k.removeprefix("transformer."): v for k, v in load_file(str(trained / "step2" / LORA_FILE)).items()}
    assert sorted(loaded) == sorted(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_diffusers_loaded_lora_reproduces_the_trained_adapter(trained: Path, tiny):
    from diffusers import StableDiffusion3Pipeline

    family = SD3Family.load(st.model_table(tiny), CPU)
    params = dict(family.attach_new_lora(RANK, 0.0, torch.float32))
    state = torch.load(trained / "global_step2" / "training_state.pt", weights_only=True)["lora"]
    assert set(state) == set(params)
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny, local_files_only=True)
    pipe.load_lora_weights(trained / "step2", weight_name=LORA_FILE)
    text = family.encode_prompts(["a red circle on a zxq background"])
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0.6])
    with torch.no_grad():
        ours = family.predict(x, t, text)
        from trainers.native.families import sd3
        theirs = sd3.predict(pipe.transformer.eval(), x, t, text.embeds, text.pooled)
        base = sd3.predict(st.tiny_transformer(), x, t, text.embeds, text.pooled)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (ours - base).abs().max().item() > 1e-3  # the LoRA changes the output, so the comparison means something


def test_stop_and_resume_gives_the_same_losses_as_one_run(tiny, tmp_path: Path):
    from trainers.native.loop import Trainer
    from trainers.native.settings import load_run

    def run(folder: Path, max_steps: int, stop_at: int | None = None, resume: str | None = None) -> Path:
        if resume is None:  # a run folder as RunManager makes it: run.json beside the config pair
            write_pair(folder, tiny, save_every_n_steps=1000)
            (folder / "run.json").write_text(json.dumps({
                "run_id": folder.name, "backend": "native", "main_config": "main.toml",
                "dataset_config": "dataset.toml"}), encoding="utf-8")
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


def _rgb(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("backend", ["native", "diffusion-pipe"])
def test_sidecar_renders_a_saved_sd3_lora_like_the_live_preview(trained: Path, tmp_path: Path, backend):
    """Sidecar previews (trainers/native/sidecar.py) of a saved SD3 LoRA, for a native run and for a
    diffusion-pipe run of the same files (diffusion-pipe renders nothing while training): the same picture the
    trainer rendered live at that step, from the same LoRA, prompt, seed, size and steps."""
    import shutil

    from trainers.run_library import render_samples
    from trainers.runs import RunManager

    run_dir = tmp_path / "runs" / trained.name
    shutil.copytree(trained, run_dir)
    if backend == "diffusion-pipe":  # what the supervisor writes for a diffusion-pipe run of this config
        meta = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**meta, "backend": "diffusion-pipe"}))
    info = RunManager([tmp_path / "runs"]).info(trained.name)
    assert info.meta["backend"] == backend
    progress = list(render_samples(info, "step2"))
    assert progress[-1].startswith("1/1 ")
    (sidecar,) = [e for e in load_all(run_dir) if e.kind == "sample" and e.source == "sidecar"]
    (live,) = [e for e in load_all(run_dir) if e.kind == "sample" and e.source == "live" and e.step == 2]
    assert (sidecar.step, sidecar.seed, sidecar.prompt) == (2, live.seed, live.prompt)
    drawn, trainer = _rgb(run_dir / sidecar.path), _rgb(run_dir / live.path)
    assert drawn.shape == trainer.shape == (64, 64, 3)
    assert abs(drawn - trainer).mean() < 0.5
