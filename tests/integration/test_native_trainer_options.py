"""The trainer's model options wired end to end on the demo model: a single-file ComfyUI-layout checkpoint,
float8 storage, activation checkpointing, and a LoRA that starts from an earlier run's save."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import ChromaTransformer2DModel
from safetensors.torch import load_file

from tests.fixtures.chroma_tiny import write_checkpoint
from tests.integration.test_native_resume import FAST, losses, train
from tests.integration.test_native_train import REPO, make_run
from trainers.events import load_all

pytestmark = pytest.mark.integration


def test_single_file_float8_checkpointing_then_init_from_existing(tmp_path: Path):
    base = ChromaTransformer2DModel.from_pretrained(REPO / "assets" / "demo" / "chroma-tiny", torch_dtype=torch.float32)
    single = write_checkpoint(base, tmp_path / "chroma-tiny-comfy.safetensors", prefix="model.diffusion_model.")
    first = make_run(tmp_path / "a", **{**FAST, "model.transformer_path": str(single),
                                        "model.transformer_dtype": "float8", "activation_checkpointing": True,
                                        "studio.seed": 7})  # another seed: another random LoRA A
    reason, trainer = train(first, max_steps=3)
    assert reason == "completed"
    block_weights = [m.weight for n, m in trainer.family.transformer.named_modules()
                     if n.endswith("attn.to_q.base_layer")]
    assert block_weights and all(w.dtype == torch.float8_e4m3fn for w in block_weights)
    assert all(math.isfinite(v) for v in losses(first).values())
    saved = load_file(str(first / "step3" / "adapter_model.safetensors"))

    second = make_run(tmp_path / "b", **{**FAST, "adapter.init_from_existing": str(first / "step3")})
    reason, trainer = train(second, max_steps=1)
    assert reason == "completed"
    assert any(e.kind == "log" and "LoRA starts from" in e.message for e in load_all(second))
    # One optimizer step moves the LoRA away from where it started, but not far: it did start there (a fresh
    # LoRA of this run's seed would start from other random A matrices, far from the saved ones).
    after = load_file(str(second / "step1" / "adapter_model.safetensors"))
    assert after.keys() == saved.keys()
    drift = max((after[k].float() - saved[k].float()).abs().max().item() for k in saved)
    assert 0 < drift < 0.01
