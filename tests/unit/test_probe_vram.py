from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from trainers.checkpoint_probe import ProbeError, check_flux_folder, probe_transformer, probe_transformer_path
from trainers.vram import VramSettings, advice, estimate, lora_params


def _ckpt(path, keys, dtype=np.float16):
    save_file({k: np.zeros((2, 3), dtype=dtype) for k in keys}, str(path))
    return path


ORIGINAL = ["distilled_guidance_layer.in_proj.weight", "double_blocks.0.img_attn.qkv.weight",
            "double_blocks.1.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "img_in.weight"]


def test_recognises_chroma_in_each_layout(tmp_path):
    original = probe_transformer(_ckpt(tmp_path / "a.safetensors", ORIGINAL))
    assert (original.family, original.layout, original.dtype) == ("chroma", "original", "float16")
    assert (original.double_blocks, original.single_blocks, original.params) == (2, 1, 30)
    comfy = probe_transformer(_ckpt(tmp_path / "b.safetensors", [f"model.diffusion_model.{k}" for k in ORIGINAL]))
    assert (comfy.family, comfy.layout) == ("chroma", "comfyui")
    diffusers = probe_transformer(_ckpt(tmp_path / "c.safetensors", [
        "distilled_guidance_layer.in_proj.weight", "transformer_blocks.0.attn.to_q.weight",
        "single_transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.1.proj_out.weight"],
        np.float32))
    assert (diffusers.family, diffusers.layout, diffusers.dtype) == ("chroma", "diffusers", "float32")
    assert (diffusers.double_blocks, diffusers.single_blocks) == (1, 2)
    assert "chroma transformer" in diffusers.summary()


def test_flux_is_not_taken_for_chroma(tmp_path):
    flux = probe_transformer(_ckpt(tmp_path / "f.safetensors", ["guidance_in.in_layer.weight",
                                                                 "double_blocks.0.img_attn.qkv.weight"]))
    assert flux.family == "flux" and not flux.is_chroma


def test_bad_files_get_a_reason(tmp_path):
    with pytest.raises(ProbeError, match="does not exist"):
        probe_transformer(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ProbeError, match="not a .safetensors"):
        probe_transformer(tmp_path / "junk.safetensors")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ProbeError, match="config.json"):
        probe_transformer_path(tmp_path / "dir")


def test_flux_folder_check_names_missing_parts(tmp_path):
    (tmp_path / "vae").mkdir()
    problems = check_flux_folder(tmp_path)
    assert len(problems) == 2 and any("text_encoder_2" in p for p in problems)
    assert "not a folder" in check_flux_folder(tmp_path / "x")[0]


def test_lora_size_matches_chroma_linears():
    # rank 1: 19 double blocks x 110592 + 38 single blocks x 52224 parameters
    assert lora_params(1) == 19 * 110_592 + 38 * 52_224
    assert lora_params(32) == 32 * lora_params(1)


def test_estimate_moves_the_right_way():
    base = VramSettings(resolution=512, batch=1, rank=32, transformer_dtype="bfloat16")
    fp8 = VramSettings(**{**base.__dict__, "transformer_dtype": "float8"})
    ckpt = VramSettings(**{**base.__dict__, "activation_checkpointing": True})
    swap = VramSettings(**{**base.__dict__, "blocks_to_swap": 20})
    big = VramSettings(**{**base.__dict__, "resolution": 1024})
    assert estimate(fp8).parts["base weights"] == pytest.approx(estimate(base).parts["base weights"] / 2)
    assert estimate(ckpt).parts["activations"] < estimate(base).parts["activations"] / 10
    assert estimate(swap).total_gb < estimate(base).total_gb
    # (1024/16)^2 + 512 text tokens against (512/16)^2 + 512
    assert estimate(big).parts["activations"] == pytest.approx(3 * estimate(base).parts["activations"])
    assert 16 < estimate(base).parts["base weights"] < 17


def test_advice_reaches_a_fit_or_says_what_else():
    s = VramSettings(resolution=1024, batch=1, rank=32, transformer_dtype="bfloat16")
    tips = advice(s, 24)
    assert tips[0].startswith("turn on activation_checkpointing")
    assert advice(VramSettings(activation_checkpointing=True, transformer_dtype="float8"), 80) == []
