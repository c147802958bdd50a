"""A tiny Chroma LoRA really trains from what a full config names: a ComfyUI-layout file stored in float8, a LoRA
fused into the base first, the LoRA initialised from a saved one, activation checkpointing, a pytorch_optimizer
optimizer; the saved result reloads exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.chroma_tiny import (
    REPO,
    max_diff,
    model_table,
    one_thread,
    random_lora,
    tiny_transformer,
    write_checkpoint,
)
from tests.unit.test_native_chroma_lora import save_trained
from trainers.native.families.chroma import ChromaFamily
from trainers.native.flow import noisy_input
from trainers.native.lora_io import lora_state_dict
from trainers.native.optim import build_optimizer

pytestmark = pytest.mark.integration
CPU = torch.device("cpu")
IMAGES = ("zxq_00.png", "zxq_01.png")


def _pixels() -> torch.Tensor:
    arrays = [np.asarray(Image.open(REPO / "assets" / "demo" / "dataset" / name).convert("RGB")) for name in IMAGES]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The base checkpoint (ComfyUI layout), a LoRA to fuse and a LoRA to start from, all rank 2."""
    root = tmp_path_factory.mktemp("chroma")
    base = write_checkpoint(tiny_transformer(), root / "chroma.safetensors", "model.diffusion_model.")
    family = ChromaFamily.load(model_table(base), CPU)
    random_lora(family.transformer, seed=11, std=0.05)
    style = save_trained(family, root / "style" / "epoch1")
    family = ChromaFamily.load(model_table(base), CPU)
    random_lora(family.transformer, seed=12, std=0.05)
    start = save_trained(family, root / "previous" / "epoch4")
    return base, style, start


def _load(files) -> ChromaFamily:
    base, style, _ = files
    return ChromaFamily.load(model_table(base, transformer_dtype="float8"), CPU,
                             fuse_adapters=[{"path": str(style), "weight": 0.8}])


def test_a_full_chroma_config_trains_and_its_lora_reloads(files, tmp_path):
    family = _load(files)
    plain = ChromaFamily.load(model_table(files[0]), CPU)
    plain.fuse_adapters([{"path": str(files[1]), "weight": 0.8}])
    name = "single_transformer_blocks.0.proj_mlp"
    stored = family.transformer.get_submodule(name).weight
    assert stored.dtype == torch.float8_e4m3fn  # fused in float32 first, then stored in float8 (diffusion-pipe)
    assert torch.equal(stored, plain.transformer.get_submodule(name).weight.to(torch.float8_e4m3fn))

    params = family.init_from_existing(files[2], rank=2)
    family.enable_activation_checkpointing(reentrant=False)
    family.transformer.train()
    optimizer = build_optimizer(params, {"type": "Prodigy", "lr": 1.0, "d0": 1e-4})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x0 = family.encode_images(_pixels(), generator=gen)
        text = family.encode_prompts(["a white circle on a zxq background", "a red square on a zxq background"])
    noise, t = torch.randn(x0.shape, generator=gen), torch.tensor([0.4, 0.7])
    x_t, target = noisy_input(x0, noise, t)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(family.predict(x_t, t, text), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses

    family.transformer.eval()
    saved = save_trained(family, tmp_path / "run" / "step30")
    reloaded = _load(files)
    rank, _ = reloaded.attach_saved_lora(saved)
    assert rank == 2
    trained = lora_state_dict(family.transformer)
    assert all(torch.equal(v, trained[k]) for k, v in lora_state_dict(reloaded.transformer).items())
    with torch.no_grad():
        assert max_diff(reloaded.predict(x_t, t, text), family.predict(x_t, t, text)) <= 1e-5
