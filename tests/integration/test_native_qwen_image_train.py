"""A real 2-step Qwen-Image run through ``dp-studio train`` on the tiny model (the three single files), its LoRA
checked from the file alone against diffusion-pipe's format and diffusers' own loader, the loaded LoRA reproducing
the trained adapter, previews, and an exact resume.

diffusion-pipe models/qwen_image.py lines 284-288 (save_adapter): ``self.peft_config.save_pretrained(save_dir)``
(adapter_config.json), then ``adapter_model.safetensors`` with ``diffusion_model.`` + the peft names, metadata
``{'format': 'pt'}``; utils/saver.py lines 74-84 strip ``.default`` from the peft names and copy the main config
beside them. models/base.py lines 262-283: the peft LoraConfig targets every Linear inside the
QwenImageTransformerBlocks by full name, r = lora_alpha = rank, bias 'none'.
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

from tests.fixtures import qwen_image_tiny as qt
from trainers.events import EventWriter, load_all
from trainers.native.families import qwen_image as qi

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
RANK = 4
PROMPT = "a red cat photo"


def write_pair(folder: Path, model_lines: str, **top) -> Path:
    """A Qwen-Image main + dataset TOML pair on the demo images at 64 px; returns the main TOML."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.toml").write_text(f"resolutions = [64]\nenable_ar_bucket = false\n\n[[directory]]\n"
                                         f"path = '{REPO / 'assets' / 'demo' / 'dataset'}'\n", encoding="utf-8")
    extra = "".join(f"{key} = {value}\n" for key, value in ({"save_every_n_epochs": 1} | top).items())
    (folder / "main.toml").write_text(
        f"output_dir = '{folder / 'out'}'\ndataset = '{folder / 'dataset.toml'}'\nepochs = 1\n"
        f"micro_batch_size_per_gpu = 2\ngradient_accumulation_steps = 1\n{extra}\n[model]\ntype = 'qwen_image'\n"
        f"{model_lines}dtype = 'float32'\ntimestep_sample_method = 'logit_normal'\nshift = 3.0\n\n"
        f"[adapter]\ntype = 'lora'\nrank = {RANK}\ndropout = 0.1\n\n[optimizer]\ntype = 'adamw'\nlr = 1e-2\n\n"
        f"[studio]\nbackend = 'native'\nsample_prompts = ['{PROMPT}']\nsample_negative_prompt = 'a blue dog'\n"
        "sample_seeds = [7]\nsample_every_n_steps = 2\nsample_at_start = false\nsample_width = 64\n"
        "sample_height = 64\nsample_steps = 2\nsample_guidance = 4.0\n", encoding="utf-8")
    return folder / "main.toml"


def files_lines(files: dict[str, Path]) -> str:
    return "".join(f"{key} = '{path}'\n" for key, path in files.items())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return qt.build(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    """The run folder of ``dp-studio train main.toml --max-steps 2`` (the three single files)."""
    from trainers.runs import RunManager
    from trainers.train_cli import train

    main = write_pair(tmp_path_factory.mktemp("run"), files_lines(tiny[1]))
    manager = RunManager([main.parent / "out"])
    assert train(argparse.Namespace(main=main, max_steps=2, name=None, resume=None), manager) == 0
    (run_id,) = [info.run_id for info in manager.runs()]
    return manager.run_dir(run_id)


def test_two_steps_save_the_lora_as_diffusion_pipe_does(trained: Path):
    events = load_all(trained)
    assert events[-1].kind == "finished" and events[-1].step == 2, [e for e in events if e.kind == "failed"]
    saved = trained / "step2"
    assert sorted(p.name for p in saved.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                       "main.toml"]
    with safe_open(str(saved / "adapter_model.safetensors"), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
        keys = list(fh.keys())
    transformer = qt.transformer()
    linears = {n: m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)
               and n.startswith("transformer_blocks.")}
    assert len(linears) == 14
    assert sorted(keys) == sorted(f"diffusion_model.{n}.lora_{ab}.weight" for n in linears for ab in "AB")
    tensors = load_file(str(saved / "adapter_model.safetensors"))
    for name, linear in linears.items():
        assert tensors[f"diffusion_model.{name}.lora_A.weight"].shape == (RANK, linear.in_features)
        assert tensors[f"diffusion_model.{name}.lora_B.weight"].shape == (linear.out_features, RANK)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if ".lora_B." in k)  # trained: B left zero
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == RANK
    assert config["lora_dropout"] == 0.1 and config["bias"] == "none"
    assert sorted(config["target_modules"]) == sorted(linears)
    # the key check after the save (trainers/lora_check_qwen.py) against the transformer file
    assert any(e.kind == "log" and e.message.startswith("step2 key check: ✓") for e in events)


def test_the_adapter_config_is_the_one_peft_writes_for_diffusion_pipe(trained: Path, tmp_path: Path):
    # models/base.py:277-297 builds this LoraConfig and get_peft_model; models/qwen_image.py:285 saves it
    import peft

    transformer = qt.transformer()
    targets = qi.lora_targets(transformer)
    config = peft.LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.1, bias="none", target_modules=targets,
                             exclude_modules=None)
    peft.get_peft_model(transformer, config)
    config.save_pretrained(tmp_path)
    theirs = json.loads((tmp_path / "adapter_config.json").read_text())
    ours = json.loads((trained / "step2" / "adapter_config.json").read_text())
    theirs["target_modules"], ours["target_modules"] = sorted(theirs["target_modules"]), sorted(ours["target_modules"])
    assert ours == theirs


def test_previews_are_rendered_with_true_cfg(trained: Path):
    samples = [e for e in load_all(trained) if e.kind == "sample"]
    assert samples, "no preview was rendered"
    assert all((trained / e.path).is_file() for e in samples)


def test_diffusers_loader_takes_every_key(trained: Path, tiny, caplog):
    from diffusers import QwenImagePipeline
    from peft import get_peft_model_state_dict

    pipe = QwenImagePipeline.from_pretrained(tiny[0], local_files_only=True)
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(trained / "step2", weight_name="adapter_model.safetensors", adapter_name="dp")
    # diffusers warns "... led to unexpected keys ..." / "... missing keys ..." (loaders/peft.py) on a partial load
    assert not [r.message for r in caplog.records if re.search(r"(unexpected|missing) keys", r.message)]
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="dp")
    saved = {k.removeprefix("diffusion_model."): v
             for k, v in load_file(str(trained / "step2" / "adapter_model.safetensors")).items()}
    assert sorted(loaded) == sorted(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_diffusers_loaded_lora_reproduces_the_trained_adapter(trained: Path, tiny):
    from diffusers import QwenImagePipeline

    family = qi.QwenImageFamily.load(qt.model_table(tiny[0]), CPU)
    params = dict(family.attach_new_lora(RANK, 0.0, torch.float32))
    state = torch.load(trained / "global_step2" / "training_state.pt", weights_only=True)["lora"]
    assert set(state) == set(params)
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    pipe = QwenImagePipeline.from_pretrained(tiny[0], local_files_only=True)
    pipe.load_lora_weights(trained / "step2", weight_name="adapter_model.safetensors")
    text = family.encode_prompts([PROMPT, "a cat"])
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0.6, 0.3])
    with torch.no_grad():
        ours = family.predict(x, t, text)
        theirs = qi.predict(pipe.transformer.eval(), x, t, text.embeds, text.mask, torch.float32)
        base = qi.predict(qt.transformer(), x, t, text.embeds, text.mask, torch.float32)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (ours - base).abs().max().item() > 1e-3  # the LoRA changes the output, so the comparison means something


def test_a_saved_lora_attaches_back_exactly(trained: Path, tiny):
    family = qi.QwenImageFamily.load(qt.model_table(tiny[0]), CPU)
    rank, named = family.attach_saved_lora(trained / "step2")
    saved = load_file(str(trained / "step2" / "adapter_model.safetensors"))
    assert rank == RANK and len(named) == len(saved)
    params = {n.replace(".default", ""): p for n, p in named}
    assert all(torch.equal(params[k.removeprefix("diffusion_model.")], v) for k, v in saved.items())


def test_exports_load_in_diffusers_and_kohya_is_refused(trained: Path, tiny, tmp_path: Path, caplog):
    from diffusers import QwenImagePipeline

    from trainers.native.export import ExportError, export

    saved = load_file(str(trained / "step2" / "adapter_model.safetensors"))
    comfy = export(trained / "step2", "comfyui", tmp_path / "comfy.safetensors")
    with safe_open(str(comfy), "pt") as fh:
        assert fh.metadata()["dp_studio.base_model"] == "qwen_image"
        assert all(torch.equal(fh.get_tensor(k), v) for k, v in saved.items()) and len(fh.keys()) == len(saved)
    diffusers_file = export(trained / "step2", "diffusers", tmp_path / "diffusers.safetensors")
    assert sorted(load_file(str(diffusers_file))) == sorted("transformer." + k.removeprefix("diffusion_model.")
                                                            for k in saved)
    for file in (comfy, diffusers_file):
        pipe = QwenImagePipeline.from_pretrained(tiny[0], local_files_only=True)
        with caplog.at_level(logging.WARNING):
            pipe.load_lora_weights(file)
        assert not [r.message for r in caplog.records if re.search(r"(unexpected|missing) keys", r.message)]
    with pytest.raises(ExportError, match="kohya layout is not available for Qwen-Image"):
        export(trained / "step2", "kohya", tmp_path / "kohya.safetensors")


def test_stop_and_resume_gives_the_same_losses_as_one_run(tiny, tmp_path: Path):
    from trainers.native.loop import Trainer
    from trainers.native.settings import load_run

    def run(folder: Path, max_steps: int, stop_at: int | None = None, resume: str | None = None) -> Path:
        if resume is None:  # a run folder as RunManager makes it: run.json beside the config pair
            write_pair(folder, f"diffusers_path = '{tiny[0]}'\n", save_every_n_steps=1000, sample_every_n_steps=1000)
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


@pytest.mark.parametrize("backend", ["native", "diffusion-pipe"])
def test_sidecar_renders_a_saved_lora_like_the_live_preview(trained: Path, tmp_path: Path, backend):
    from tests.integration.sidecar_check import assert_sidecar_matches_live

    assert_sidecar_matches_live(trained, tmp_path, backend)
