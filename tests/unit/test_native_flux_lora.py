"""The Flux family's LoRA: diffusion-pipe's peft LoRA (models/base.py lines 262-303), saved LoRAs attached exactly,
init_from_existing, fuse_adapters (models/flux.py lines 196-202, 255: fuse_lora(lora_scale=weight)),
exclude_modules, and activation checkpointing, on the tiny Flux model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from tests.fixtures import flux_tiny as ft  # noqa: E402
from trainers.native.families import flux  # noqa: E402
from trainers.native.families.flux import FluxFamily  # noqa: E402
from trainers.native.lora_io import lora_state_dict  # noqa: E402

CPU = torch.device("cpu")
RANK = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return ft.build(tmp_path_factory.mktemp("flux"))


def load(tiny, **extra) -> FluxFamily:
    return FluxFamily.load(ft.model_table(tiny[0], **extra), CPU)


def inputs(family: FluxFamily):
    gen = torch.Generator().manual_seed(4)
    return torch.randn(1, 16, 8, 8, generator=gen), torch.tensor([0.5]), family.encode_prompts(["a red circle"])


def trained_lora(family: FluxFamily, folder: Path) -> torch.Tensor:
    """Attach a LoRA with non-zero weights, save it as the loop does; returns the family's output with it."""
    params = family.attach_new_lora(RANK, 0.0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, param in params:
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    tensors, config = family.export_lora(lora_state_dict(family.transformer))
    assert config is None  # diffusers' Flux format has no adapter_config.json
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / flux.LORA_FILE), metadata={"format": "pt"})
    with torch.no_grad():
        return family.predict(*inputs(family))


def test_new_lora_is_on_every_block_linear_with_alpha_rank(tiny):
    # models/base.py lines 262-283: every Linear of the target blocks, alpha = rank (train.py line 122)
    family = load(tiny)
    params = dict(family.attach_new_lora(RANK, 0.1))
    modules = {name.split(".lora_")[0] for name in params}
    assert modules == set(flux.lora_targets(family.transformer)) == set(flux.lora_targets(ft.tiny_transformer()))
    layer = family.transformer.transformer_blocks[0].attn.to_q
    assert layer.scaling["default"] == 1.0 and layer.lora_dropout["default"].p == 0.1


def test_saved_lora_attaches_exactly_and_starts_a_new_run(tiny, tmp_path):
    expected = trained_lora(load(tiny), tmp_path / "step2")
    again = load(tiny)
    rank, params = again.attach_saved_lora(tmp_path / "step2")
    assert rank == RANK and not any(p.requires_grad for _, p in params)
    with torch.no_grad():
        assert torch.allclose(again.predict(*inputs(again)), expected, atol=1e-6)
    started = load(tiny)
    params = started.init_from_existing(str(tmp_path / "step2"), RANK)
    assert all(p.requires_grad for _, p in params)
    with torch.no_grad():
        assert torch.allclose(started.predict(*inputs(started)), expected, atol=1e-6)
    with pytest.raises(ValueError, match="has rank 2 but \\[adapter\\] rank = 4"):
        load(tiny).init_from_existing(str(tmp_path / "step2"), 4)


def test_fused_lora_gives_the_output_of_the_attached_one(tiny, tmp_path):
    expected = trained_lora(load(tiny), tmp_path / "style")
    fused = load(tiny, transformer_path=None)
    fused.fuse_adapters([{"path": str(tmp_path / "style"), "weight": 1.0}])
    with torch.no_grad():
        assert torch.allclose(fused.predict(*inputs(fused)), expected, atol=1e-5)
    half = load(tiny)
    half.fuse_adapters([{"path": str(tmp_path / "style"), "weight": 0.5}])
    with torch.no_grad():
        base = load(tiny).predict(*inputs(half))
        assert not torch.allclose(half.predict(*inputs(half)), expected, atol=1e-4)
        assert not torch.allclose(half.predict(*inputs(half)), base, atol=1e-4)


def test_a_lora_for_another_model_is_refused_by_name(tiny, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"transformer.blocks.0.q.lora_A.weight": torch.zeros(2, 4),
               "transformer.blocks.0.q.lora_B.weight": torch.zeros(4, 2)}, str(bad))
    with pytest.raises(ValueError, match="bad.safetensors: 1 LoRA modules match no block Linear"):
        load(tiny).attach_saved_lora(bad)


def test_exclude_modules_goes_to_peft_in_diffusers_names(tiny):
    # models/base.py line 283: exclude_modules=adapter_config.get('exclude_modules')
    family = load(tiny)
    params = dict(family.attach_new_lora(RANK, 0.0, exclude=["norm1.linear", "norm1_context.linear", "norm.linear"]))
    modules = {name.split(".lora_")[0] for name in params}
    assert not any(m.endswith(("norm1.linear", "norm1_context.linear", ".norm.linear")) for m in modules)
    assert "transformer_blocks.0.attn.to_q" in modules


def test_activation_checkpointing_keeps_the_gradients(tiny):
    grads = []
    for checkpointing in (False, True):
        family = load(tiny)
        torch.manual_seed(0)
        params = family.attach_new_lora(RANK, 0.0)
        with torch.no_grad():
            for _, param in params:
                param.add_(0.01)
        if checkpointing:
            family.enable_activation_checkpointing(reentrant=True)
            assert family.transformer.gradient_checkpointing
        family.transformer.train()
        family.predict(*inputs(family)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for _, p in params]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0
