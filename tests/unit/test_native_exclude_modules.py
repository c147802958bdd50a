"""``[adapter] exclude_modules`` selects what diffusion-pipe's does: peft's rule on the original Chroma names.

diffusion-pipe models/base.py:262-283 targets every Linear inside DoubleStreamBlock / SingleStreamBlock of the
original-layout model (``double_blocks.N.img_attn.qkv``, ``single_blocks.N.linear1``, ...) and hands
``exclude_modules`` to peft, which (peft tuners_utils.check_target_module_exists) excludes a module when a string
fullmatches its name, or a list item equals the name or a dotted suffix of it.
"""

from __future__ import annotations

import logging

import pytest

from tests.fixtures.chroma_tiny import block_linears, one_thread, tiny_transformer
from trainers.native.lora_io import attach_lora

DOUBLE_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
SINGLE_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def _lora_modules(exclude) -> set[str]:
    with one_thread():
        model = tiny_transformer()
        attach_lora(model, block_linears(model), 2, 0.0, model.dtype, exclude)
    return {name.removesuffix(".lora_A.default") for name, _ in model.named_modules()
            if name.endswith(".lora_A.default")}


@pytest.fixture(scope="module")
def everything() -> set[str]:
    with one_thread():
        return set(block_linears(tiny_transformer()))


def test_a_fused_name_excludes_all_its_parts(everything):
    # 'img_attn.qkv' is a dotted suffix of double_blocks.{0,1}.img_attn.qkv: both lose q, k and v
    gone = {f"transformer_blocks.{i}.{part}" for i in (0, 1) for part in DOUBLE_QKV}
    assert _lora_modules(["img_attn.qkv"]) == everything - gone


def test_a_regex_fullmatches_original_names(everything):
    gone = {f"single_transformer_blocks.1.{part}" for part in (*SINGLE_LINEAR1, "proj_out")}
    assert _lora_modules(r"single_blocks\.1\..*") == everything - gone
    # fullmatch: a regex for part of a name excludes nothing
    assert _lora_modules("linear") == everything


def test_whole_names_and_suffixes_mix(everything):
    gone = {f"single_transformer_blocks.{i}.proj_out" for i in (0, 1)}
    gone |= {"transformer_blocks.0.ff_context.net.0.proj"}
    gone |= {f"single_transformer_blocks.0.{part}" for part in SINGLE_LINEAR1}
    assert _lora_modules(["linear2", "double_blocks.0.txt_mlp.0", "single_blocks.0.linear1"]) == everything - gone


def test_names_of_no_module_are_reported(everything, caplog):
    # diffusers names are not names of diffusion-pipe's model: they exclude nothing there, nor here
    with caplog.at_level(logging.WARNING):
        assert _lora_modules(["attn.to_q", "img_mlp.2"]) == everything - {
            f"transformer_blocks.{i}.ff.net.2" for i in (0, 1)}
    assert "'attn.to_q'" in caplog.text and "'img_mlp.2'" not in caplog.text


def test_bad_regex_and_excluding_everything_are_errors():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        _lora_modules("double_blocks.(")
    with pytest.raises(ValueError, match="excludes every LoRA target"):
        _lora_modules(".*")
