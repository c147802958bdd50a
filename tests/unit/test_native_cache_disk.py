"""The on-disk cache: a second build encodes nothing, changes re-encode only themselves, runs resume."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trainers.native.cache import Cache, build_cache
from trainers.native.data import scan_dataset
from trainers.native.disk_cache import store_folder
from trainers.native.families.base import TextBatch


class FakeFamily:
    """Encoders that count their calls: latents are pooled pixels plus posterior noise from the generators."""

    name = "fake"
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, key: str = "encoders-v1", fail_on_image_call: int | None = None):
        self.key, self.fail_on_image_call = key, fail_on_image_call
        self.image_calls, self.prompt_calls = 0, 0
        self.images_encoded, self.captions_encoded = 0, []

    def cache_key(self) -> str:
        return self.key

    def encode_images(self, pixels: torch.Tensor, generator=None) -> torch.Tensor:
        self.image_calls += 1
        if self.image_calls == self.fail_on_image_call:
            raise RuntimeError("out of memory (simulated)")
        self.images_encoded += len(pixels)
        mean = F.avg_pool2d(pixels, 4)
        noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generator])
        return mean + 0.1 * noise

    def encode_prompts(self, captions: list[str]) -> TextBatch:
        self.prompt_calls += 1
        self.captions_encoded.extend(captions)
        codes = [[float(sum(c.encode()) % 97), float(len(c))] for c in captions]
        embeds = torch.tensor(codes).view(len(captions), 1, 2).repeat(1, 3, 1)
        mask = torch.tensor([[1, int(bool(c)), 0] for c in captions])
        return TextBatch(embeds, mask)


def _dataset(root: Path, count: int = 5) -> dict:
    data = root / "data"
    data.mkdir()
    masks = root / "masks"
    masks.mkdir()
    for i in range(count):
        size = (48, 32) if i % 2 else (32, 32)
        Image.new("RGB", size, (40 * i, 255 - 30 * i, 7 * i)).save(data / f"img{i}.png")
        (data / f"img{i}.txt").write_text(f"tag{i}, shared", encoding="utf-8")
    Image.new("RGB", (32, 32), (128, 0, 0)).save(masks / "img0.png")
    return {"resolutions": [32], "enable_ar_bucket": True, "ar_buckets": [1.0, 1.5],
            "directory": [{"path": str(data), "mask_path": str(masks)}]}


def _build(family, items, **kwargs) -> Cache:
    return build_cache(family, items, 7, batch_size=2, **kwargs)


def _assert_same(a: Cache, b: Cache) -> None:
    assert [x.size for x in a.buckets] == [y.size for y in b.buckets]
    for x, y in zip(a.buckets, b.buckets, strict=True):
        assert torch.equal(x.latents, y.latents) and torch.equal(x.text_rows, y.text_rows)
        assert torch.equal(x.latent_rows, y.latent_rows)
        assert (x.masks is None) == (y.masks is None) and (x.masks is None or torch.equal(x.masks, y.masks))
    assert torch.equal(a.text.embeds, b.text.embeds) and torch.equal(a.text.mask, b.text.mask)
    assert a.empty_row == b.empty_row


@pytest.fixture
def items(tmp_path: Path):
    return scan_dataset(_dataset(tmp_path), 0)


def test_second_build_encodes_nothing_and_returns_the_same_tensors(items, tmp_path: Path):
    first_family, second_family = FakeFamily(), FakeFamily()
    first = _build(first_family, items)
    assert first.stats.images_encoded == 5 and first.stats.captions_encoded == 6  # 5 captions + ""
    assert first.stats.masks_made == 1
    second = _build(second_family, items)
    assert second_family.image_calls == 0 and second_family.prompt_calls == 0
    assert (second.stats.images_loaded, second.stats.captions_loaded, second.stats.masks_loaded) == (5, 6, 1)
    _assert_same(first, second)
    assert first.text.index([first.empty_row]).mask.tolist() == [[1, 0, 0]]  # the uncond embedding is cached


def test_cache_lives_beside_the_directory_with_an_index(items, tmp_path: Path):
    _build(FakeFamily(), items)
    folder = store_folder(tmp_path / "data", "fake")
    assert folder == tmp_path / "data" / "cache" / "studio_fake"
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    kinds = sorted(e["kind"] for e in index["entries"].values())
    assert kinds == ["latent"] * 5 + ["mask"] + ["text"] * 6
    assert len(scan_dataset(_dataset_config(tmp_path), 0)) == 5  # the cache folder is not scanned as media


def test_latents_do_not_depend_on_the_caching_batch_size(items):
    one = build_cache(FakeFamily(), items, 7, batch_size=1, persist=False)
    three = build_cache(FakeFamily(), items, 7, batch_size=3, persist=False, workers=2)
    cached = _build(FakeFamily(), items)
    _assert_same(one, three)
    _assert_same(one, cached)
    other_seed = build_cache(FakeFamily(), items, 8, persist=False)
    assert not torch.equal(one.buckets[0].latents, other_seed.buckets[0].latents)


def test_touched_image_and_edited_caption_re_encode_only_themselves(items, tmp_path: Path):
    first = _build(FakeFamily(), items)
    image = tmp_path / "data" / "img3.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    family = FakeFamily()
    second = _build(family, items)
    assert family.images_encoded == 1 and family.prompt_calls == 0
    _assert_same(first, second)  # same pixels, same key but the mtime: the same latent comes back
    (tmp_path / "data" / "img1.txt").write_text("tag1, edited", encoding="utf-8")
    family = FakeFamily()
    _build(family, scan_dataset(_dataset_config(tmp_path), 0))
    assert family.captions_encoded == ["tag1, edited"] and family.image_calls == 0


def _dataset_config(tmp_path: Path) -> dict:
    return {"resolutions": [32], "enable_ar_bucket": True, "ar_buckets": [1.0, 1.5],
            "directory": [{"path": str(tmp_path / "data"), "mask_path": str(tmp_path / "masks")}]}


def test_new_encoders_or_regenerate_re_encode_everything(items):
    _build(FakeFamily(), items)
    family = FakeFamily(key="encoders-v2")
    _build(family, items)
    assert family.images_encoded == 5 and len(family.captions_encoded) == 6
    family = FakeFamily(key="encoders-v2")
    cache = _build(family, items, regenerate=True)
    assert family.images_encoded == 5 and cache.stats.images_loaded == 0 and cache.stats.masks_made == 1


def test_interrupted_caching_keeps_what_it_wrote_and_resumes(items):
    reference = build_cache(FakeFamily(), items, 7, persist=False)
    crashing = FakeFamily(fail_on_image_call=2)
    with pytest.raises(RuntimeError, match="simulated"):
        _build(crashing, items)
    assert crashing.images_encoded == 2
    family = FakeFamily()
    resumed = _build(family, items)
    assert family.images_encoded == 3 and resumed.stats.images_loaded == 2 and family.prompt_calls == 0
    _assert_same(reference, resumed)


def test_unreadable_entry_is_encoded_again(items, tmp_path: Path, caplog):
    _build(FakeFamily(), items)
    latents = sorted((store_folder(tmp_path / "data", "fake") / "latent").rglob("*.safetensors"))
    latents[0].write_bytes(b"truncated")
    family = FakeFamily()
    _build(family, items)
    assert family.images_encoded == 1 and "unreadable" in caplog.text


def test_shared_cache_dir_and_items_without_a_directory(items, tmp_path: Path):
    shared = tmp_path / "elsewhere"
    _build(FakeFamily(), items, cache_dir=shared)
    assert (shared / "index.json").is_file() and not (tmp_path / "data" / "cache").exists()
    with pytest.raises(ValueError, match="cache_dir"):
        _build(FakeFamily(), [replace(items[0], root=None)])
