"""A real 2-step SDXL run through ``dp-studio train`` on the tiny single-file SDXL checkpoint, its LoRA checked from
the file alone against diffusion-pipe's format and diffusers' own kohya loader, the loaded LoRA reproducing the
trained adapter, and an exact resume.

diffusion-pipe models/sdxl.py:465-472 saves ``convert_state_dict_to_kohya(peft_state_dict)`` as ``lora.safetensors``
with metadata ``{"format": "pt"}`` and no adapter_config.json; the peft names carry ``unet.`` / ``text_encoder.`` /
``text_encoder_2.`` (:414-421, utils/saver.py:74 strips ``.default``), so the kohya keys are ``lora_unet_*``,
``lora_te1_*``, ``lora_te2_*`` with ``lora_down`` / ``lora_up`` and an integer ``.alpha`` = rank per module; the
main config is copied beside it (utils/saver.py:84).
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

from tests.fixtures import sdxl_tiny as st
from trainers.events import EventWriter, load_all
from trainers.native.families.sdxl import LORA_FILE, SDXLFamily

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
RANK = 4
PROMPT = "a red circle on a zxq background"


def write_pair(folder: Path, checkpoint: Path, **top) -> Path:
    """An SDXL main + dataset TOML pair on the demo images at 64 px; returns the main TOML."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.toml").write_text(f"resolutions = [64]\nenable_ar_bucket = false\n\n[[directory]]\n"
                                         f"path = '{REPO / 'assets' / 'demo' / 'dataset'}'\n", encoding="utf-8")
    extra = "".join(f"{key} = {value}\n" for key, value in ({"save_every_n_epochs": 1} | top).items())
    (folder / "main.toml").write_text(
        f"output_dir = '{folder / 'out'}'\ndataset = '{folder / 'dataset.toml'}'\nepochs = 1\n"
        f"micro_batch_size_per_gpu = 2\ngradient_accumulation_steps = 1\n{extra}\n[model]\ntype = 'sdxl'\n"
        f"checkpoint_path = '{checkpoint}'\ndtype = 'float32'\nmin_snr_gamma = 5\nunet_lr = 2e-2\n"
        f"text_encoder_2_lr = 5e-3\n\n[adapter]\ntype = 'lora'\nrank = {RANK}\ndropout = 0.1\n\n"
        "[optimizer]\ntype = 'adamw'\nlr = 1e-2\n\n[studio]\nbackend = 'native'\n"
        f"sample_prompts = ['{PROMPT}']\nsample_seeds = [7]\nsample_every_n_steps = 2\nsample_at_start = false\n"
        "sample_width = 64\nsample_height = 64\nsample_steps = 2\nsample_guidance = 4.0\n", encoding="utf-8")
    return folder / "main.toml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    checkpoint, cache = st.build(tmp_path_factory.mktemp("sdxl"))
    with pytest.MonkeyPatch.context() as mp:  # the run's child process inherits it
        mp.setenv("HF_HUB_CACHE", str(cache))
        yield checkpoint, cache


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    """The run folder of ``dp-studio train main.toml --max-steps 2``."""
    from trainers.runs import RunManager
    from trainers.train_cli import train

    main = write_pair(tmp_path_factory.mktemp("run"), tiny[0])
    manager = RunManager([main.parent / "out"])
    assert train(argparse.Namespace(main=main, max_steps=2, name=None, resume=None), manager) == 0
    (run_id,) = [info.run_id for info in manager.runs()]
    return manager.run_dir(run_id)


def _pipeline(checkpoint: Path):
    """diffusers' own StableDiffusionXLPipeline.from_single_file of the checkpoint (float32, offline)."""
    from trainers.native.families.sdxl import load_pipeline

    return load_pipeline(checkpoint, torch.float32)


def test_two_steps_save_the_lora_as_diffusion_pipe_does(trained: Path):
    events = load_all(trained)
    assert events[-1].kind == "finished" and events[-1].step == 2
    saved = trained / "step2"
    assert sorted(p.name for p in saved.iterdir()) == [LORA_FILE, "main.toml"]
    with safe_open(str(saved / LORA_FILE), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
    tensors = load_file(str(saved / LORA_FILE))
    ref = st.tiny_pipeline()
    expected = {}
    for prefix, module, roots in (("lora_unet_", ref.unet, ("down_blocks.", "mid_block.", "up_blocks.")),
                                  ("lora_te1_", ref.text_encoder, ("",)), ("lora_te2_", ref.text_encoder_2, ("",))):
        expected |= {prefix + n.replace(".", "_"): m for n, m in module.named_modules()
                     if isinstance(m, torch.nn.Linear) and n.startswith(roots)}
    # kohya's text-encoder names, as every SDXL LoRA has them (transformers 5 dropped the first one's text_model)
    expected = {k.replace("lora_te1_encoder_", "lora_te1_text_model_encoder_"): m for k, m in expected.items()}
    assert all(k.startswith("lora_te1_text_model_encoder_layers_") for k in expected if k.startswith("lora_te1_"))
    assert all(k.startswith(("lora_te2_text_model_encoder_layers_", "lora_te2_text_projection"))
               for k in expected if k.startswith("lora_te2_"))
    assert sorted(tensors) == sorted(f"{m}.{s}" for m in expected for s in ("alpha", "lora_down.weight",
                                                                               "lora_up.weight"))
    for module, linear in expected.items():
        assert tensors[f"{module}.lora_down.weight"].shape == (RANK, linear.in_features)
        assert tensors[f"{module}.lora_up.weight"].shape == (linear.out_features, RANK)
        alpha = tensors[f"{module}.alpha"]
        assert alpha.dtype == torch.int64 and alpha.shape == () and int(alpha) == RANK
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if not k.endswith(".alpha"))
    for prefix in ("lora_unet_", "lora_te1_", "lora_te2_"):  # every component trained: its B left zero
        assert any(t.abs().sum() > 0 for k, t in tensors.items() if k.startswith(prefix) and ".lora_up." in k)
    assert [e.path for e in events if e.kind == "sample"], "no preview was rendered"
    assert all((trained / e.path).is_file() for e in events if e.kind == "sample")


def test_the_saved_lora_passes_the_key_check(trained: Path, tiny):
    # the check after the save (trainers/lora_check_sdxl.py) against the run's checkpoint_path, and the runs
    # library's check of the saved folder (its base model read from the run's main.toml)
    from trainers.run_library import base_model_path, check_saved
    from trainers.runs import RunManager

    events = load_all(trained)
    assert any(e.kind == "log" and e.message.startswith("step2 key check: ✓ every key fits the model (kohya layout")
               for e in events)
    info = RunManager([trained.parent]).info(trained.name)
    assert base_model_path(info) == tiny[0]
    report = check_saved(info, "step2")
    assert report.ok and report.exact and report.covered == report.targets == report.modules > 0
    assert report.ranks == [RANK]


def test_diffusers_loader_takes_every_key(trained: Path, tiny, caplog):
    from peft import get_peft_model_state_dict

    pipe = _pipeline(tiny[0])
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(str(trained / "step2"), weight_name=LORA_FILE, adapter_name="dp")
    # diffusers warns "... led to unexpected keys ..." / "... missing keys ..." (loaders/peft.py) on a partial load
    assert not [r.message for r in caplog.records if re.search(r"(unexpected|missing) keys", r.message)]
    saved = load_file(str(trained / "step2" / LORA_FILE))
    modules = {k.split(".")[0] for k in saved}
    counts = {name: len(get_peft_model_state_dict(getattr(pipe, name), adapter_name="dp"))
              for name in ("unet", "text_encoder", "text_encoder_2")}
    for name, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
        assert counts[name] == 2 * sum(m.startswith(prefix) for m in modules), name


def _trained_family(trained: Path, checkpoint: Path) -> SDXLFamily:
    family = SDXLFamily.load(st.model_table(checkpoint), CPU)
    params = dict(family.attach_new_lora(RANK, 0.0, torch.float32))
    state = torch.load(trained / "global_step2" / "training_state.pt", weights_only=True)["lora"]
    assert set(state) == set(params)
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    family.transformer.eval()
    return family


def test_diffusers_loaded_lora_reproduces_the_trained_adapter(trained: Path, tiny):
    family = _trained_family(trained, tiny[0])
    pipe = _pipeline(tiny[0])
    pipe.load_lora_weights(str(trained / "step2"), weight_name=LORA_FILE)
    base = _pipeline(tiny[0])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([600])
    text = family.encode_prompts([PROMPT])
    with torch.no_grad():
        ours = family.predict(x, t, text)
        theirs_family = SDXLFamily(pipe, CPU, torch.float32, {}, tiny[0])
        theirs = theirs_family.predict(x, t, text)  # diffusers' LoRA layers on the UNet and both encoders
        plain = SDXLFamily(base, CPU, torch.float32, {}, tiny[0]).predict(x, t, text)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (ours - plain).abs().max().item() > 1e-3  # the LoRA changes the output, so the comparison means something


def test_a_saved_lora_attaches_back_exactly(trained: Path, tiny):
    family = SDXLFamily.load(st.model_table(tiny[0]), CPU)
    rank, named = family.attach_saved_lora(trained / "step2")
    assert rank == RANK
    state = torch.load(trained / "global_step2" / "training_state.pt", weights_only=True)["lora"]
    loaded = dict(named)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_stop_and_resume_gives_the_same_losses_as_one_run(tiny, tmp_path: Path):
    from trainers.native.loop import Trainer
    from trainers.native.settings import load_run

    def run(folder: Path, max_steps: int, stop_at: int | None = None, resume: str | None = None) -> Path:
        if resume is None:  # a run folder as RunManager makes it: run.json beside the config pair
            write_pair(folder, tiny[0], save_every_n_steps=1000)
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


def test_exports_load_in_diffusers_like_the_saved_file(trained: Path, tiny, tmp_path: Path, caplog):
    """The runs library's exports of an SDXL save: kohya and comfyui are the saved kohya file (same tensors)
    under the export's header; diffusers is peft-style keys that StableDiffusionXLPipeline.load_lora_weights
    takes whole, drawing the same picture as the saved file (and not the base model's)."""
    from trainers.native.export import export

    saved = load_file(str(trained / "step2" / LORA_FILE))
    for layout in ("kohya", "comfyui"):
        out = export(trained / "step2", layout, tmp_path / f"{layout}.safetensors")
        assert load_file(str(out)).keys() == saved.keys()
        assert all(torch.equal(load_file(str(out))[k], t) for k, t in saved.items())
        with safe_open(str(out), framework="pt") as f:
            meta = f.metadata()
        assert meta["dp_studio.base_model"] == "sdxl" and meta["dp_studio.layout"] == layout
        assert meta["ss_network_dim"] == str(RANK) and not [k for k in meta if "api_key" in k]
    out = export(trained / "step2", "diffusers", tmp_path / "diffusers" / "pytorch_lora_weights.safetensors")
    keys = list(load_file(str(out)))
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert len(keys) == 2 * sum(k.endswith(".lora_down.weight") for k in saved)

    def picture(folder=None, name=None):
        pipe = _pipeline(tiny[0])
        if folder is not None:
            pipe.load_lora_weights(str(folder), weight_name=name, adapter_name="x")
        return pipe(PROMPT, num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(3)).images

    with caplog.at_level(logging.WARNING):
        exported = picture(out.parent, out.name)
    assert not [r.message for r in caplog.records if re.search(r"(unexpected|missing) keys", r.message)]
    original = picture(trained / "step2", LORA_FILE)
    assert abs(exported - original).max() <= 1e-5
    assert abs(original - picture()).max() > 1e-4  # the LoRA changes the picture: the comparison means something
