"""Activation checkpointing changes memory, never gradients (masked text padding included)."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.chroma_tiny import model_table, one_thread, random_lora, tiny_transformer
from trainers.native.families.chroma import ChromaFamily


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chroma") / "transformer"
    tiny_transformer().save_pretrained(folder)
    family = ChromaFamily.load(model_table(folder), torch.device("cpu"))
    random_lora(family.transformer)
    family.transformer.train()
    return family


def _grads(family: ChromaFamily) -> tuple[list[torch.Tensor], int]:
    """LoRA gradients of one loss, and how often the last single block ran (2 = recomputed in backward; a pre-hook,
    because the recomputation stops as soon as it has what backward needs)."""
    calls = []
    block = family.transformer.single_transformer_blocks[-1]
    handle = block.register_forward_pre_hook(lambda *_: calls.append(1))
    text = family.encode_prompts(["a red circle on a blue background", "zxq"])
    assert (text.mask == 0).any()  # padding is masked: a checkpoint that dropped the mask would change the result
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    params = [p for p in family.transformer.parameters() if p.requires_grad]
    try:
        family.predict(x, torch.tensor([0.3, 0.7]), text).pow(2).mean().backward()
    finally:
        handle.remove()
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return grads, len(calls)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradients_are_identical_with_checkpointing(family, reentrant):
    family.transformer.disable_gradient_checkpointing()
    expected, plain_calls = _grads(family)
    family.enable_activation_checkpointing(reentrant=reentrant)
    try:
        got, calls = _grads(family)
    finally:
        family.transformer.disable_gradient_checkpointing()
    assert plain_calls == 1 and calls == 2
    assert all(torch.count_nonzero(g) for g in got)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
