"""float8 storage of the frozen transformer weights: less memory, compute in ``dtype``, the LoRA still trains."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.fixtures.chroma_tiny import (
    SAME_OUTPUT,
    block_linears,
    forward_inputs,
    max_diff,
    model_table,
    one_thread,
    random_lora,
    tiny_transformer,
)
from trainers.native.families.base import dtype_of
from trainers.native.families.chroma import ChromaFamily, apply_storage_dtype, keeps_high_precision

FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_dtype_strings_follow_diffusion_pipe():
    assert dtype_of("float8", "[model] transformer_dtype", storage=True) is FP8
    assert dtype_of("float8_e5m2", "[model] transformer_dtype", storage=True) is torch.float8_e5m2
    assert dtype_of("bfloat16", "[model] dtype") is torch.bfloat16
    with pytest.raises(ValueError, match=r"\[model\] dtype = 'float8': float8 only stores weights"):
        dtype_of("float8", "[model] dtype")
    with pytest.raises(ValueError, match="'nf4' is not a dtype"):
        dtype_of("nf4", "[model] transformer_dtype", storage=True)


def test_big_weights_are_stored_in_float8_and_the_rest_stays_high():
    model = tiny_transformer()
    before = _weight_bytes(model)
    count = apply_storage_dtype(model, FP8, torch.float32)
    assert count == len(block_linears(model))
    assert _weight_bytes(model) < 0.5 * before
    for name, param in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        big = name.endswith(".weight") and module in block_linears(model)
        assert param.dtype == (FP8 if big else torch.float32), name
    assert keeps_high_precision("x_embedder") and keeps_high_precision("distilled_guidance_layer.in_proj")
    assert keeps_high_precision("proj_out") and not keeps_high_precision("single_transformer_blocks.0.proj_out")
    assert model.dtype == torch.float32  # the compute dtype, which predict() casts its inputs to


def test_forward_and_backward_with_a_lora_on_float8_weights():
    full = tiny_transformer()
    stored = copy.deepcopy(full)
    apply_storage_dtype(stored, FP8, torch.float32)
    rounded = copy.deepcopy(full)  # the same values, kept in float32: what the float8 path must compute exactly
    for name in block_linears(rounded):
        weight = rounded.get_submodule(name).weight
        weight.data = weight.data.to(FP8).float()
    outputs, grads = [], []
    for model in (stored, rounded, full):
        model.requires_grad_(False)
        named = random_lora(model)
        out = model(**forward_inputs()).sample
        out.pow(2).mean().backward()
        outputs.append(out.detach())
        grads.append([p.grad.clone() for _, p in named])
        assert all(p.dtype == torch.float32 and p.requires_grad for _, p in named)
    assert all(torch.count_nonzero(g) for g in grads[0])
    assert max_diff(outputs[0], outputs[1]) <= SAME_OUTPUT  # float8 rounding alone would be ~1e-2
    assert all(max_diff(a, b) <= SAME_OUTPUT for a, b in zip(grads[0], grads[1], strict=True))
    assert (outputs[0] - outputs[2]).abs().max() < 0.05 * outputs[2].abs().max()
    base = stored.get_submodule("transformer_blocks.0.attn.to_q").base_layer.weight
    assert base.dtype == FP8  # back in storage after the step


def test_family_with_float8_transformer_dtype(tmp_path):
    folder = tmp_path / "transformer"
    tiny_transformer().save_pretrained(folder)
    device = torch.device("cpu")
    high = ChromaFamily.load(model_table(folder), device)
    low = ChromaFamily.load(model_table(folder, transformer_dtype="float8_e5m2"), device)
    assert low.transformer.get_submodule("transformer_blocks.0.ff.net.2").weight.dtype == torch.float8_e5m2
    text = high.encode_prompts(["a red circle on a blue background"])
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.5])
    with torch.no_grad():
        expected, got = high.predict(x, t, text), low.predict(x, t, text)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()
