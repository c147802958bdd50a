"""Chroma LoRA export: diffusers module names -> original fused names, with the same weight deltas."""

from __future__ import annotations

import pytest
import torch
from diffusers import ChromaPipeline

from trainers.native.families.chroma import latent_image_ids, pack_latents, unpack_latents
from trainers.native.families.chroma_keys import PREFIX, original_name, to_original_lora

DIM, MLP, R = 8, 32, 2


def _lora(out_features: int, in_features: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"A": torch.randn(R, in_features, generator=gen), "B": torch.randn(out_features, R, generator=gen)}


def _state(parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{name}.lora_{ab}.weight": t for name, lora in parts.items() for ab, t in lora.items()}


def test_names():
    assert original_name("transformer_blocks.3.attn.to_k") == ("double_blocks.3.img_attn.qkv", 1)
    assert original_name("transformer_blocks.0.ff_context.net.2") == ("double_blocks.0.txt_mlp.2", None)
    assert original_name("single_transformer_blocks.1.proj_mlp") == ("single_blocks.1.linear1", 3)
    assert original_name("single_transformer_blocks.1.proj_out") == ("single_blocks.1.linear2", None)
    with pytest.raises(KeyError):
        original_name("transformer_blocks.0.norm1.linear")


def test_fused_delta_equals_the_separate_deltas():
    gen = torch.Generator().manual_seed(0)
    single = "single_transformer_blocks.0"
    parts = {f"{single}.attn.to_q": _lora(DIM, DIM, gen), f"{single}.attn.to_k": _lora(DIM, DIM, gen),
             f"{single}.attn.to_v": _lora(DIM, DIM, gen), f"{single}.proj_mlp": _lora(MLP, DIM, gen),
             f"{single}.proj_out": _lora(DIM, DIM + MLP, gen)}
    out_features = {n: p["B"].shape[0] for n, p in parts.items()}
    tensors, extra = to_original_lora(_state(parts), out_features)
    a, b = tensors[f"{PREFIX}single_blocks.0.linear1.lora_A.weight"], tensors[f"{PREFIX}single_blocks.0.linear1.lora_B.weight"]
    expected = torch.cat([parts[f"{single}.{s}"]["B"] @ parts[f"{single}.{s}"]["A"]
                          for s in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")])
    assert torch.allclose(b @ a, expected, atol=1e-5)
    linear2 = parts[f"{single}.proj_out"]
    assert torch.equal(tensors[f"{PREFIX}single_blocks.0.linear2.lora_A.weight"], linear2["A"])
    assert extra["rank_pattern"] == {"single_blocks.0.linear1": 4 * R}
    assert extra["alpha_pattern"] == extra["rank_pattern"]
    assert extra["target_modules"] == ["linear1", "linear2"]


def test_a_missing_part_contributes_zero_rows():
    gen = torch.Generator().manual_seed(1)
    block = "transformer_blocks.0.attn"
    parts = {f"{block}.to_q": _lora(DIM, DIM, gen), f"{block}.to_v": _lora(DIM, DIM, gen)}
    out_features = {f"{block}.to_q": DIM, f"{block}.to_k": DIM, f"{block}.to_v": DIM}
    tensors, _ = to_original_lora(_state(parts), out_features)
    a = tensors[f"{PREFIX}double_blocks.0.img_attn.qkv.lora_A.weight"]
    b = tensors[f"{PREFIX}double_blocks.0.img_attn.qkv.lora_B.weight"]
    delta = b @ a
    assert delta.shape == (3 * DIM, DIM)
    assert torch.count_nonzero(delta[DIM:2 * DIM]) == 0
    assert torch.allclose(delta[:DIM], parts[f"{block}.to_q"]["B"] @ parts[f"{block}.to_q"]["A"], atol=1e-5)


def test_packing_matches_chroma_pipeline():
    latents = torch.randn(2, 16, 8, 6)
    packed = pack_latents(latents)
    assert torch.equal(packed, ChromaPipeline._pack_latents(latents, 2, 16, 8, 6))
    assert torch.equal(unpack_latents(packed, 8, 6), latents)
    ids = latent_image_ids(4, 3, torch.device("cpu"), torch.float32)
    assert torch.equal(ids, ChromaPipeline._prepare_latent_image_ids(1, 4, 3, torch.device("cpu"), torch.float32))
