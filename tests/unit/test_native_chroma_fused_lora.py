"""diffusion-pipe's fused LoRA on diffusers' split Linears: one A per fused Linear, one dropout mask, LoRAs of
earlier studio versions (one per part, saved stacked) still load, their checkpoints are refused with the fix."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tests.fixtures.chroma_tiny import SAME_OUTPUT, max_diff, random_lora, tiny_transformer
from tests.unit import test_native_chroma_lora as lora_tests
from tests.unit.test_native_chroma_lora import RANK, family_of, outputs, save_trained
from trainers.native.families.chroma_keys import fused_parts
from trainers.native.families.chroma_lora import SharedDropout, fused_groups
from trainers.native.state import check_layout


@pytest.fixture(scope="module")
def encoders():
    return lora_tests.encoders.__wrapped__()


def _layers(model, fused: str):
    modules = dict(model.named_modules())
    return [modules[p] for p in fused_parts(fused)]


def test_new_lora_shares_one_a_per_fused_linear(encoders):
    family = family_of(encoders, tiny_transformer())
    named = family.attach_new_lora(RANK, 0.1)
    groups = fused_groups(dict(family.transformer.named_modules()))
    assert sorted(groups) == ["double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv",
                              "double_blocks.1.img_attn.qkv", "double_blocks.1.txt_attn.qkv",
                              "single_blocks.0.linear1", "single_blocks.1.linear1"]
    for fused in groups:
        layers = _layers(family.transformer, fused)
        assert len({id(layer.lora_A["default"].weight) for layer in layers}) == 1
        assert len({id(layer.lora_dropout["default"]) for layer in layers}) == 1
        assert isinstance(layers[0].lora_dropout["default"], SharedDropout)
        assert len({id(layer.lora_B["default"].weight) for layer in layers}) == len(layers)
    # Each trainable tensor once: A per fused Linear + B per part + A and B per unfused Linear.
    assert len({id(p) for _, p in named}) == len(named)
    a_params = [n for n, _ in named if ".lora_A." in n]
    assert len(a_params) == 2 * (8 - 2 + 2) + 2 * (1 + 1)  # double: 6 unfused + 2 fused; single: linear1, linear2


def test_shared_dropout_draws_one_mask_per_fused_call():
    torch.manual_seed(0)
    drop = SharedDropout(0.5, 3).train()
    x = torch.ones(4, 8)
    first = [drop(x) for _ in range(3)]
    assert torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])
    assert set(first[0].unique().tolist()) <= {0.0, 2.0}
    assert drop._mask is None  # let go after the last part: no mask outlives its fused call
    later = [drop(x) for _ in range(3)]
    assert torch.equal(later[0], later[2]) and not torch.equal(first[0], later[0])
    assert torch.equal(drop.eval()(x), x)


def test_a_stacked_lora_of_earlier_versions_loads_exactly_for_sampling(encoders, tmp_path):
    source = family_of(encoders, tiny_transformer())
    random_lora(source.transformer, RANK, fused=False)
    folder = save_trained(source, tmp_path / "old" / "epoch2")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["rank_pattern"]["single_blocks.0.linear1"] == 4 * RANK  # the old layout, as it was saved
    family = family_of(encoders, tiny_transformer())
    family.attach_saved_lora(folder)
    assert max_diff(outputs(family.transformer), outputs(source.transformer)) <= SAME_OUTPUT


def test_init_from_a_stacked_lora_takes_the_best_shared_fit_and_says_so(encoders, tmp_path, caplog):
    source = family_of(encoders, tiny_transformer())
    random_lora(source.transformer, RANK, fused=False)
    folder = save_trained(source, tmp_path / "old" / "epoch2")
    family = family_of(encoders, tiny_transformer())
    with caplog.at_level(logging.WARNING):
        family.init_from_existing(folder, RANK)
    assert "double_blocks.0.img_attn.qkv: its saved LoRA (one per q/k/v part) spans more than 2" in caplog.text
    layers = _layers(family.transformer, "double_blocks.0.img_attn.qkv")
    assert len({id(layer.lora_A["default"].weight) for layer in layers}) == 1
    # The best rank-r fit of the fused change: nothing better exists (Eckart-Young), so compare with the SVD.
    old = _layers(source.transformer, "double_blocks.0.img_attn.qkv")
    delta = torch.cat([lay.lora_B["default"].weight @ lay.lora_A["default"].weight for lay in old]).double()
    fit = torch.cat([lay.lora_B["default"].weight @ lay.lora_A["default"].weight for lay in layers]).double()
    s = torch.linalg.svdvals(delta)
    assert torch.isclose((delta - fit).norm(), s[RANK:].norm(), rtol=1e-6)


def test_init_from_a_stacked_lora_of_shared_rank_is_exact(encoders, tmp_path, caplog):
    """Parts with A_i = M_i @ A (one row space) span r directions: the stacked file converts without loss."""
    source = family_of(encoders, tiny_transformer())
    random_lora(source.transformer, RANK, fused=False)
    gen = torch.Generator().manual_seed(4)
    for fused in ("double_blocks.0.img_attn.qkv", "single_blocks.1.linear1"):
        layers = _layers(source.transformer, fused)
        a = layers[0].lora_A["default"].weight.detach().clone()
        for layer in layers[1:]:
            mix = torch.randn(RANK, RANK, generator=gen) + 2 * torch.eye(RANK)
            layer.lora_A["default"].weight.data = mix @ a
    folder = save_trained(source, tmp_path / "old" / "epoch1")
    family = family_of(encoders, tiny_transformer())
    with caplog.at_level(logging.WARNING):
        family.init_from_existing(folder, RANK)
    assert "double_blocks.0.img_attn.qkv: its saved LoRA" not in caplog.text
    assert "single_blocks.1.linear1: its saved LoRA" not in caplog.text
    assert "double_blocks.0.txt_attn.qkv: its saved LoRA" in caplog.text  # left with 3 independent parts
    for fused in ("double_blocks.0.img_attn.qkv", "single_blocks.1.linear1"):
        before, after = (torch.cat([lay.lora_B["default"].weight @ lay.lora_A["default"].weight
                                    for lay in _layers(f.transformer, fused)]) for f in (source, family))
        assert (before - after).abs().max() <= 1e-5


def test_a_checkpoint_of_the_old_layout_is_refused_with_the_fix(tmp_path):
    (tmp_path / "epoch1").mkdir()
    (tmp_path / "epoch1" / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "step7").mkdir()
    (tmp_path / "step7" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        check_layout("global_step7", {"step": 7}, "fused", tmp_path)
    message = str(err.value)
    assert "global_step7" in message and "optimizer state cannot continue" in message
    assert f"init_from_existing = '{tmp_path / 'step7'}'" in message
    check_layout("global_step7", {"step": 7, "lora_layout": "fused"}, "fused", tmp_path)  # its own layout: fine
