"""Chroma key layouts: LoRA export to original fused names, whole-checkpoint conversion, exact fused splits."""

from __future__ import annotations

import pytest
import torch
from diffusers import ChromaPipeline
from diffusers.loaders.single_file_utils import convert_chroma_transformer_checkpoint_to_diffusers

from tests.fixtures.chroma_tiny import TINY_CONFIG, tiny_transformer
from trainers.native.families.chroma import latent_image_ids, pack_latents, unpack_latents
from trainers.native.families.chroma_keys import (
    PREFIX,
    CheckpointKeyError,
    default_rope_axes,
    diffusers_name,
    from_original_checkpoint,
    fused_parts,
    original_name,
    split_fused_lora,
    to_original_checkpoint,
    to_original_lora,
    transformer_config,
)

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


# ----- whole checkpoints ---------------------------------------------------------------------------------------
def test_checkpoint_layouts_round_trip_exactly():

    state = tiny_transformer().state_dict()
    original = to_original_checkpoint(state)
    assert "double_blocks.1.img_attn.qkv.weight" in original and "single_blocks.0.linear1.bias" in original
    assert "distilled_guidance_layer.norms.1.scale" in original and "final_layer.linear.weight" in original
    back = from_original_checkpoint(original)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_our_converter_agrees_with_diffusers_on_a_full_width_checkpoint():
    """diffusers' converter assumes the released widths (3072, MLP 12288); widen just what it splits."""


    original = to_original_checkpoint(tiny_transformer().state_dict())
    gen = torch.Generator().manual_seed(0)
    original["img_in.weight"] = torch.randn(3072, 2, generator=gen)
    for i in range(2):
        original[f"single_blocks.{i}.linear1.weight"] = torch.randn(3 * 3072 + 12288, 2, generator=gen)
        original[f"single_blocks.{i}.linear1.bias"] = torch.randn(3 * 3072 + 12288, generator=gen)
    ours = from_original_checkpoint(dict(original))
    theirs = convert_chroma_transformer_checkpoint_to_diffusers({"model.diffusion_model." + k: v
                                                                 for k, v in original.items()})
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_config_is_read_off_the_shapes():

    shapes = {k: list(v.shape) for k, v in to_original_checkpoint(tiny_transformer().state_dict()).items()}
    assert transformer_config(shapes) == {**TINY_CONFIG, "out_channels": None}
    assert default_rope_axes(128) == (16, 56, 56)  # the released Chroma's
    assert default_rope_axes(32) == (4, 14, 14) and sum(default_rope_axes(48)) == 48
    del shapes["img_in.weight"]
    with pytest.raises(CheckpointKeyError, match="img_in.weight missing"):
        transformer_config(shapes)


def test_unknown_checkpoint_keys_are_named():

    with pytest.raises(CheckpointKeyError, match="nerf_blocks.0.weight"):
        from_original_checkpoint({"img_in.weight": torch.zeros(4, 2), "nerf_blocks.0.weight": torch.zeros(1)})


def test_every_linear_has_an_original_name_and_back():

    model = tiny_transformer()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            original, slot = original_name(name)
            if slot is None:
                assert diffusers_name(original) == name
            else:
                assert fused_parts(original)[slot] == name
    assert original_name("x_embedder") == ("img_in", None)
    assert original_name("distilled_guidance_layer.layers.1.linear_2") == (
        "distilled_guidance_layer.layers.1.out_layer", None)


# ----- splitting fused LoRAs -----------------------------------------------------------------------------------
def test_split_inverts_our_stacking_and_splits_a_shared_down_projection():

    gen = torch.Generator().manual_seed(2)
    parts = [_lora(DIM, DIM, gen) for _ in range(3)]
    a, b = torch.cat([p["A"] for p in parts]), torch.block_diag(*[p["B"] for p in parts])
    for got, want in zip(split_fused_lora("m", a, b, [DIM] * 3, R), parts, strict=True):
        assert torch.equal(got[0], want["A"]) and torch.equal(got[1], want["B"])
    shared = _lora(3 * DIM, DIM, gen)  # a LoRA trained on the fused Linear (diffusion-pipe on the original model)
    split = split_fused_lora("m", shared["A"], shared["B"], [DIM] * 3, R)
    assert torch.equal(torch.cat([bb @ aa for aa, bb in split]), shared["B"] @ shared["A"])


def test_split_with_a_missing_part_and_when_impossible():

    gen = torch.Generator().manual_seed(3)
    q, v = _lora(DIM, DIM, gen), _lora(DIM, DIM, gen)
    a = torch.cat([q["A"], v["A"]])
    b = torch.block_diag(q["B"], torch.zeros(DIM, 0), v["B"])
    got = split_fused_lora("m", a, b, [DIM] * 3, R)
    assert got[1] is None and torch.equal(got[0][1], q["B"]) and torch.equal(got[2][0], v["A"])
    dense = _lora(3 * DIM, DIM, gen)
    dense["A"] = torch.randn(3 * R, DIM, generator=gen)
    dense["B"] = torch.randn(3 * DIM, 3 * R, generator=gen)
    with pytest.raises(ValueError, match="not block-diagonal"):
        split_fused_lora("m", dense["A"], dense["B"], [DIM] * 3, R)
    with pytest.raises(ValueError, match="does not split"):
        split_fused_lora("m", dense["A"][:5], dense["B"][:, :5], [DIM] * 3, R)
