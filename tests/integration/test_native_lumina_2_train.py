"""A real 2-step Lumina 2 run through ``dp-studio train`` on the tiny model (original-layout transformer file,
Gemma 2 file, Flux-style VAE), its LoRA checked from the file alone against diffusion-pipe's format and diffusers'
own loader, the loaded LoRA reproducing the trained adapter, previews, and an exact resume.

diffusion-pipe models/lumina_2.py lines 95-99 (save_adapter): ``self.peft_config.save_pretrained(save_dir)``
(adapter_config.json), then ``adapter_model.safetensors`` with ``diffusion_model.`` + the peft names of the NextDiT
(original module names: ``layers.0.attention.qkv``), metadata ``{'format': 'pt'}``. models/lumina_2.py:41 and
models/base.py lines 262-283: the LoraConfig targets every Linear inside the JointTransformerBlocks (main, noise
refiner and context refiner blocks) by full name, r = lora_alpha = rank, bias 'none'.

The transformer here keeps the released attention widths (``wide``): diffusers' Lumina 2 LoRA conversion splits
``qkv`` at 2304 / 768 / 768 rows.
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

from tests.fixtures import lumina_2_tiny as lt
from trainers.events import EventWriter, load_all
from trainers.native.families import lumina_2 as lu

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
RANK = 4
PROMPT = "a red cat photo"


def write_pair(folder: Path, model: dict, **top) -> Path:
    """A Lumina 2 main + dataset TOML pair on the demo images at 64 px; returns the main TOML."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.toml").write_text(f"resolutions = [64]\nenable_ar_bucket = false\n\n[[directory]]\n"
                                         f"path = '{REPO / 'assets' / 'demo' / 'dataset'}'\n", encoding="utf-8")
    extra = "".join(f"{key} = {value}\n" for key, value in ({"save_every_n_epochs": 1} | top).items())
    model_lines = "".join(f"{k} = '{v}'\n" for k, v in model.items())
    (folder / "main.toml").write_text(
        f"output_dir = '{folder / 'out'}'\ndataset = '{folder / 'dataset.toml'}'\nepochs = 1\n"
        f"micro_batch_size_per_gpu = 2\ngradient_accumulation_steps = 1\n{extra}\n[model]\n{model_lines}"
        "timestep_sample_method = 'logit_normal'\nlumina_shift = true\n\n"
        f"[adapter]\ntype = 'lora'\nrank = {RANK}\ndropout = 0.1\n\n[optimizer]\ntype = 'adamw'\nlr = 1e-2\n\n"
        f"[studio]\nbackend = 'native'\nsample_prompts = ['{PROMPT}']\nsample_negative_prompt = 'a blue dog'\n"
        "sample_seeds = [7]\nsample_every_n_steps = 2\nsample_at_start = false\nsample_width = 64\n"
        "sample_height = 64\nsample_steps = 2\nsample_guidance = 4.0\n", encoding="utf-8")
    return folder / "main.toml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return lt.build(tmp_path_factory.mktemp("lumina"), wide=True)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    """The run folder of ``dp-studio train main.toml --max-steps 2``."""
    from trainers.runs import RunManager
    from trainers.train_cli import train

    main = write_pair(tmp_path_factory.mktemp("run"), lt.model_table(tiny[1], comfy=True))
    manager = RunManager([main.parent / "out"])
    assert train(argparse.Namespace(main=main, max_steps=2, name=None, resume=None), manager) == 0
    (run_id,) = [info.run_id for info in manager.runs()]
    return manager.run_dir(run_id)


def original_linears(hidden: int, kv: int, ffn: int, cond: int) -> dict[str, tuple[int, int]]:
    """Every Linear of the NextDiT's JointTransformerBlocks: (out, in), one block of each kind."""
    head = hidden // 24
    block = {"attention.qkv": (hidden + 2 * kv * head, hidden), "attention.out": (hidden, hidden),
             "feed_forward.w1": (ffn, hidden), "feed_forward.w2": (hidden, ffn), "feed_forward.w3": (ffn, hidden),
             "adaLN_modulation.1": (4 * hidden, cond)}
    out = {}
    for prefix in ("layers.0", "noise_refiner.0", "context_refiner.0"):
        for name, shape in block.items():
            if not (prefix.startswith("context") and name.startswith("adaLN")):
                out[f"{prefix}.{name}"] = shape
    return out


def test_two_steps_save_the_lora_as_diffusion_pipe_does(trained: Path, tiny):
    events = load_all(trained)
    assert events[-1].kind == "finished" and events[-1].step == 2, [e for e in events if e.kind == "failed"]
    saved = trained / "step2"
    assert sorted(p.name for p in saved.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                       "main.toml"]
    with safe_open(str(saved / "adapter_model.safetensors"), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
        keys = list(fh.keys())
    ffn = tiny[0].transformer.layers[0].feed_forward.linear_1.out_features
    linears = original_linears(2304, 8, ffn, 1024)
    assert sorted(keys) == sorted(f"diffusion_model.{n}.lora_{ab}.weight" for n in linears for ab in "AB")
    tensors = load_file(str(saved / "adapter_model.safetensors"))
    for name, (out, inp) in linears.items():
        assert tensors[f"diffusion_model.{name}.lora_A.weight"].shape == (RANK, inp)
        assert tensors[f"diffusion_model.{name}.lora_B.weight"].shape == (out, RANK)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if ".lora_B." in k)  # trained: B left zero
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == RANK
    assert config["lora_dropout"] == 0.1 and config["bias"] == "none"
    assert sorted(config["target_modules"]) == sorted(linears)
    # the key check after the save (trainers/lora_check_lumina.py) against the transformer file
    assert any(e.kind == "log" and e.message.startswith("step2 key check: ✓") for e in events)


def test_previews_are_rendered(trained: Path):
    samples = [e for e in load_all(trained) if e.kind == "sample"]
    assert samples, "no preview was rendered"
    assert all((trained / e.path).is_file() for e in samples)


def _pipe(tiny):
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

    from trainers.native.families.lumina_2_load import (
        load_text_encoder,
        load_tokenizer,
        load_transformer,
        load_vae,
    )

    files = tiny[1]
    return Lumina2Pipeline(transformer=load_transformer(files["transformer_path"], torch.float32, "t"),
                           scheduler=FlowMatchEulerDiscreteScheduler(), vae=load_vae(files["vae_path"], "v"),
                           text_encoder=load_text_encoder(files["llm_path"], torch.float32, "l"),
                           tokenizer=load_tokenizer(files["llm_path"], "l"))


def test_diffusers_loader_takes_every_key_and_reproduces_the_trained_adapter(trained: Path, tiny, caplog):
    pipe = _pipe(tiny)
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(trained / "step2", weight_name="adapter_model.safetensors", adapter_name="dp")
    # diffusers warns "... led to unexpected keys ..." / "... missing keys ..." (loaders/peft.py) on a partial load
    assert not [r.message for r in caplog.records if re.search(r"(unexpected|missing) keys", r.message)]
    family = lu.Lumina2Family.load(lt.model_table(tiny[1]), CPU)
    params = dict(family.attach_new_lora(RANK, 0.0, torch.float32))
    state = torch.load(trained / "global_step2" / "training_state.pt", weights_only=True)["lora"]
    assert set(state) <= set(params)
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    text = family.encode_prompts([PROMPT, "a cat"])
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0.6, 0.3])
    with torch.no_grad():
        ours = family.predict(x, t, text)
        theirs = lu.predict(pipe.transformer.eval(), x, t, text.embeds, text.mask, torch.float32)
        pipe.transformer.disable_lora()
        base = lu.predict(pipe.transformer, x, t, text.embeds, text.mask, torch.float32)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (ours - base).abs().max().item() > 1e-3  # the LoRA changes the output, so the comparison means something


def test_a_saved_lora_attaches_back_exactly(trained: Path, tiny):
    from trainers.native.lora_io import lora_state_dict

    family = lu.Lumina2Family.load(lt.model_table(tiny[1]), CPU)
    rank, named = family.attach_saved_lora(trained / "step2")
    saved = load_file(str(trained / "step2" / "adapter_model.safetensors"))
    assert rank == RANK
    assert all(p.requires_grad is False for _, p in named)
    tensors, _ = family.export_lora(lora_state_dict(family.transformer))
    assert sorted(tensors) == sorted(saved)
    assert all(torch.equal(tensors[k], v) for k, v in saved.items())


def test_exports_load_in_diffusers_and_kohya_is_refused(trained: Path, tiny, tmp_path: Path, caplog):
    from trainers.native.export import ExportError, export

    saved = load_file(str(trained / "step2" / "adapter_model.safetensors"))
    comfy = export(trained / "step2", "comfyui", tmp_path / "comfy.safetensors")
    with safe_open(str(comfy), "pt") as fh:
        assert fh.metadata()["dp_studio.base_model"] == "lumina_2"
        assert all(torch.equal(fh.get_tensor(k), v) for k, v in saved.items()) and len(fh.keys()) == len(saved)
    diffusers_file = export(trained / "step2", "diffusers", tmp_path / "diffusers.safetensors")
    assert all(k.startswith("transformer.") and ".attention." not in k for k in load_file(str(diffusers_file)))
    pipe = _pipe(tiny)
    states = []
    for name, file in (("comfy", comfy), ("diffusers", diffusers_file)):
        with caplog.at_level(logging.WARNING):
            pipe.load_lora_weights(file, adapter_name=name)
        assert not [r.message for r in caplog.records if re.search(r"(unexpected|missing) keys", r.message)]
        from peft import get_peft_model_state_dict

        states.append(get_peft_model_state_dict(pipe.transformer, adapter_name=name))
    assert sorted(states[0]) == sorted(states[1])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    with pytest.raises(ExportError, match="kohya layout is not available for Lumina 2"):
        export(trained / "step2", "kohya", tmp_path / "kohya.safetensors")


def test_stop_and_resume_gives_the_same_losses_as_one_run(tmp_path: Path):
    from trainers.native.loop import Trainer
    from trainers.native.settings import load_run

    _, files = lt.build(tmp_path / "model")

    def run(folder: Path, max_steps: int, stop_at: int | None = None, resume: str | None = None) -> Path:
        if resume is None:  # a run folder as RunManager makes it: run.json beside the config pair
            write_pair(folder, lt.model_table(files), save_every_n_steps=1000, sample_every_n_steps=1000)
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
def test_sidecar_renders_a_saved_lora_like_the_live_preview(trained: Path, tmp_path: Path, backend):
    """Sidecar previews (trainers/native/sidecar.py) of a saved Lumina 2 LoRA, for a native run and for a
    diffusion-pipe run of the same files: the picture the trainer rendered live at that step."""
    import shutil

    from trainers.run_library import render_samples
    from trainers.runs import RunManager

    run_dir = tmp_path / "runs" / trained.name
    shutil.copytree(trained, run_dir)
    if backend == "diffusion-pipe":  # what the supervisor writes for a diffusion-pipe run of this config
        meta = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**meta, "backend": "diffusion-pipe"}))
    info = RunManager([tmp_path / "runs"]).info(trained.name)
    progress = list(render_samples(info, "step2"))
    assert progress[-1].startswith("1/1 ")
    (sidecar,) = [e for e in load_all(run_dir) if e.kind == "sample" and e.source == "sidecar"]
    (live,) = [e for e in load_all(run_dir) if e.kind == "sample" and e.source == "live" and e.step == 2]
    assert (sidecar.step, sidecar.seed, sidecar.prompt) == (2, live.seed, live.prompt)
    drawn, trainer = _rgb(run_dir / sidecar.path), _rgb(run_dir / live.path)
    assert drawn.shape == trainer.shape == (64, 64, 3)
    assert abs(drawn - trainer).mean() < 0.5
