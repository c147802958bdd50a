"""The disk cache with the real tiny Chroma encoders: a second build encodes nothing, latents are per-item seeded,
and a masked flow loss runs through the live transformer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from trainers.native.cache import batch_tensors, build_cache, epoch_batches
from trainers.native.data import scan_dataset
from trainers.native.families.chroma import ChromaFamily
from trainers.native.flow import (
    LossConfig,
    TimestepConfig,
    flow_loss,
    latent_mask,
    noisy_input,
    sample_timesteps,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "assets" / "demo"


@pytest.fixture(scope="module")
def family() -> ChromaFamily:
    model = {"diffusers_path": str(DEMO / "flux-tiny"), "transformer_path": str(DEMO / "chroma-tiny"),
             "dtype": "float32"}
    return ChromaFamily.load(model, torch.device("cpu"))


@pytest.fixture
def counted(family: ChromaFamily, monkeypatch) -> dict[str, int]:
    """Count the family's encoder calls (and give it a cache key if it has none of its own yet)."""
    calls = {"images": 0, "prompts": 0}
    encode_images, encode_prompts = family.encode_images, family.encode_prompts

    def images(pixels, generator=None):
        calls["images"] += 1
        return encode_images(pixels, generator=generator)

    def prompts(captions):
        calls["prompts"] += 1
        return encode_prompts(captions)

    monkeypatch.setattr(family, "encode_images", images)
    monkeypatch.setattr(family, "encode_prompts", prompts)
    if not hasattr(family, "cache_key"):
        monkeypatch.setattr(family, "cache_key", lambda: "tiny-demo-encoders", raising=False)
    return calls


@pytest.fixture
def dataset(tmp_path: Path) -> dict:
    data, masks = tmp_path / "data", tmp_path / "masks"
    data.mkdir()
    masks.mkdir()
    for name in sorted(p.stem for p in (DEMO / "dataset").glob("*.png"))[:5]:
        shutil.copy(DEMO / "dataset" / f"{name}.png", data)
        shutil.copy(DEMO / "dataset" / f"{name}.txt", data)
    first = sorted(data.glob("*.png"))[0]
    size = Image.open(first).size
    mask = Image.new("RGB", size, (0, 0, 0))
    mask.paste((255, 255, 255), (0, 0, size[0] // 2, size[1]))  # train on the left half only
    mask.save(masks / f"{first.stem}.png")
    return {"resolutions": [64], "directory": [{"path": str(data), "mask_path": str(masks)}]}


def test_second_build_loads_everything_and_latents_are_seeded_per_item(family, counted, dataset):
    items = scan_dataset(dataset, 0)
    first = build_cache(family, items, 3, batch_size=2, workers=2)
    assert counted["images"] == 3 and first.stats.images_encoded == 5  # chunks of 2: 2 + 2 + 1
    assert first.stats.captions_encoded == len({i.caption for i in items} | {""})
    counted.update(images=0, prompts=0)
    second = build_cache(family, items, 3, batch_size=2)
    assert counted == {"images": 0, "prompts": 0}
    assert second.stats.images_loaded == 5 and second.stats.masks_loaded == 1
    assert torch.equal(first.buckets[0].latents, second.buckets[0].latents)
    assert torch.equal(first.text.embeds, second.text.embeds) and torch.equal(first.text.mask, second.text.mask)
    one_by_one = build_cache(family, items, 3, batch_size=1, persist=False)
    # each latent is drawn with its own generator: the caching batch size does not change the draw (only the
    # VAE's float rounding differs between batch sizes), while another seed moves it by the posterior's spread
    torch.testing.assert_close(one_by_one.buckets[0].latents, first.buckets[0].latents, rtol=0, atol=2e-4)
    other_seed = build_cache(family, items, 4, batch_size=2, persist=False)
    assert (other_seed.buckets[0].latents - first.buckets[0].latents).abs().max() > 0.05


def test_masked_loss_runs_through_the_transformer(family, counted, dataset):
    cache = build_cache(family, scan_dataset(dataset, 0), 3, batch_size=5)
    (batch,) = next(epoch_batches(cache, 5, 1, seed=0, epoch=1))
    x0, text, mask = batch_tensors(cache, batch, 0.0, None)
    assert mask.shape == (5, 64, 64) and sorted(set(mask.unique().tolist())) == [0.0, 1.0]
    generator = torch.Generator().manual_seed(0)
    t = sample_timesteps(TimestepConfig(flux_shift=True), 5, family.image_seq_len(x0.shape), generator)
    x_t, target = noisy_input(x0, torch.randn(x0.shape, generator=generator), t)
    with torch.no_grad():
        pred = family.predict(x_t, t, text)
    weights = latent_mask(mask, x0.shape[-2:])
    assert weights.shape == (5, *x0.shape[-2:])
    masked, plain = flow_loss(pred, target, LossConfig(), weights), flow_loss(pred, target, LossConfig())
    assert torch.isfinite(masked) and 0 < masked < plain
    nothing = flow_loss(pred, target, LossConfig(), torch.zeros_like(weights))
    assert nothing.item() == 0.0
