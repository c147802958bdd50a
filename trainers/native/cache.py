"""Encode every example once (VAE latents, text embeddings, masks), keep them on disk, serve batches per epoch.

Entries live in ``<directory>/cache/studio_<family>/`` (see ``disk_cache``): a second run on the same data
loads them instead of encoding, a changed image or caption encodes only itself, a different encoder
(``Family.cache_key``) encodes everything, and ``regenerate`` wipes the folders first. Each latent is drawn
from the VAE posterior with its own generator, seeded from the image's path, bucket size and the run seed, so
a cached latent equals a fresh one whatever the caching batch size. Like diffusion-pipe, batches never mix
buckets and each bucket is truncated to a multiple of its global batch size (a bucket smaller than one global
batch is dropped with a warning). Edit datasets also cache each target's control image, cropped to the
target's bucket and encoded by the same VAE (diffusion-pipe utils/dataset.py:1082-1098): it is one more latent
entry, keyed by the control file like any image.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from trainers.native.data import Item
from trainers.native.disk_cache import (
    CacheStats,
    Stores,
    cache_latents,
    cache_masks,
    cache_texts,
    latent_entries,
    mask_entries,
)
from trainers.native.families.base import Family, TextBatch

log = logging.getLogger(__name__)

Size = tuple[int, int]
BatchSize = int | Mapping[Size, int] | Callable[[Size], int]


@dataclass
class Bucket:
    """Cached examples of one bucket: each image's latent once, and per example its latent and text row."""

    size: Size
    latents: torch.Tensor  # (M, C, h, w): one per image of the bucket
    text_rows: torch.Tensor  # (N,): per example, a row of Cache.text
    latent_rows: torch.Tensor | None = None  # (N,): per example, a row of latents (None: row i is example i)
    repeats: list[int] | None = None  # per example num_repeats (None: 1 each)
    masks: torch.Tensor | None = None  # (M, H, W) uint8, 255 = train; None when no image of the bucket has one
    ar: float = 1.0
    controls: torch.Tensor | None = None  # (M, C, h, w): edit datasets, each image's control latent; else None

    def example_repeats(self) -> list[int]:
        """``num_repeats`` of each example."""
        return self.repeats if self.repeats is not None else [1] * len(self.text_rows)


@dataclass
class Cache:
    """All cached examples plus the text table they index (``empty_row`` is the empty caption)."""

    buckets: list[Bucket]
    text: TextBatch
    empty_row: int
    stats: CacheStats = field(default_factory=CacheStats)
    device: torch.device | None = None  # where batch_tensors puts its tensors (the family's device)

    def examples_per_epoch(self) -> int:
        """Examples in one epoch, num_repeats included."""
        return sum(sum(b.example_repeats()) for b in self.buckets)


@torch.no_grad()
def encode_texts(family: Family, captions: list[str], batch_size: int = 16) -> TextBatch:
    """Text embeddings for ``captions`` (in chunks of ``batch_size``), not cached."""
    parts = [family.encode_prompts(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)]
    return TextBatch.cat(parts)


def _bucket(group: list[Item], latents: dict, masks: dict, row_of: dict[str, int]) -> Bucket:
    images: dict[tuple, int] = {}
    control_of: dict[tuple, tuple] = {}
    for item in group:
        images.setdefault((item.path, item.size), len(images))
        if item.control is not None:
            control_of[(item.path, item.size)] = (item.control, item.size)
    mask_stack = None
    if any(item.mask is not None for item in group):
        mask_of = {(it.path, it.size): masks[(it.mask, it.size)] for it in group if it.mask is not None}
        blank = torch.full((group[0].size[1], group[0].size[0]), 255, dtype=torch.uint8)
        mask_stack = torch.stack([mask_of.get(k, blank) for k in images])
    return Bucket(
        size=group[0].size, latents=torch.stack([latents[k] for k in images]),
        text_rows=torch.tensor([row_of[it.caption] for it in group]),
        latent_rows=torch.tensor([images[(it.path, it.size)] for it in group]),
        repeats=[it.repeats for it in group], masks=mask_stack, ar=group[0].ar,
        controls=torch.stack([latents[control_of[k]] for k in images]) if control_of else None)


def control_items(items: list[Item]) -> list[Item]:
    """Each control image as an item of its own, at its target's bucket (so it is loaded, cropped, encoded and
    cached exactly like an image); every item must have one when any has."""
    with_control = [item for item in items if item.control is not None]
    if with_control and len(with_control) != len(items):
        plain = next(item for item in items if item.control is None)
        raise ValueError(f"{plain.path} has no control image but other images do: an edit dataset needs a "
                         "control_path in every [[directory]] (or train the two kinds of data separately)")
    return [replace(item, path=item.control, control=None, mask=None) for item in with_control]


@torch.no_grad()
def build_cache(family: Family, items: list[Item], seed: int,
                progress: Callable[[int, int], None] = lambda done, total: None, *,
                cache_dir: Path | None = None, regenerate: bool = False, persist: bool = True,
                batch_size: int = 1, workers: int = 1) -> Cache:
    """Encode (or load from the disk cache) every item's latent, caption and mask, grouped into buckets.

    ``progress(done, total)`` counts latents (one per image and bucket size). ``cache_dir`` puts every entry
    in one folder instead of beside each directory; ``persist=False`` keeps nothing on disk. ``regenerate``
    (``regenerate_cache``) wipes the cache folders first; ``batch_size`` (``caching_batch_size``) is the
    encoders' chunk size and ``workers`` (``map_num_proc``) the number of image-loading threads.
    """
    key = family.cache_key()
    stores = Stores(family.name, items, cache_dir, persist)
    if regenerate:
        for store in stores.all():
            store.clear()
    stats = CacheStats()
    try:
        text, row_of = cache_texts(family, items, stores, key, batch_size, stats)
        latents = cache_latents(family, latent_entries(items + control_items(items), stores, key, seed),
                                batch_size, workers, stats, progress)
        masks = cache_masks(mask_entries(items, stores), stats)
    finally:
        for store in stores.all():
            store.write_index()
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        groups.setdefault(item.bucket_key, []).append(item)
    buckets = [_bucket(groups[k], latents, masks, row_of) for k in sorted(groups)]
    return Cache(buckets, text, row_of[""], stats, family.device)


def micro_batch_picker(value: int | list, key: str = "micro_batch_size_per_gpu") -> Callable[[Size], int]:
    """``micro_batch_size_per_gpu`` as a function of the bucket size: an int, or [[resolution, batch], ...]
    pairs where a bucket takes the pair whose resolution is nearest sqrt(width * height) (first on ties)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return lambda size: value
    pairs = value if isinstance(value, list) else None
    if not pairs or not all(isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[1], int) and p[1] > 0
                            and isinstance(p[0], int | float) for p in pairs):
        raise ValueError(f"{key} = {value!r} must be a positive integer or a list of [resolution, batch size] "
                         "pairs, e.g. [[512, 4], [1024, 1]]")
    table = dict((float(res), int(batch)) for res, batch in pairs)  # a repeated resolution: the last one wins

    def pick(size: Size) -> int:
        side = math.sqrt(size[0] * size[1])
        return min(table.items(), key=lambda rb: abs(rb[0] - side))[1]

    return pick


def micro_batch_sizes(config: dict) -> Callable[[Size], int]:
    """The per-bucket micro batch of a main config: ``image_micro_batch_size_per_gpu`` (every native bucket is
    an image bucket) or else ``micro_batch_size_per_gpu`` (default 1)."""
    for key in ("image_micro_batch_size_per_gpu", "micro_batch_size_per_gpu"):
        if key in config:
            return micro_batch_picker(config[key], key)
    return micro_batch_picker(1)


def _size_fn(value: BatchSize) -> Callable[[Size], int]:
    if isinstance(value, int):
        return lambda size: value
    if isinstance(value, Mapping):
        return lambda size: value[size]
    return value


def dropped_buckets(cache: Cache, micro_batch: BatchSize, grad_accum: int = 1) -> list[str]:
    """A message per bucket with fewer examples than its global batch (it never trains)."""
    size_of = _size_fn(micro_batch)
    messages = []
    for bucket in cache.buckets:
        examples, global_batch = sum(bucket.example_repeats()), size_of(bucket.size) * grad_accum
        if examples < global_batch:
            messages.append(f"bucket {bucket.size[0]}x{bucket.size[1]} (aspect {bucket.ar}) has {examples} examples, "
                            f"fewer than one global batch ({global_batch}): it is dropped")
    return messages


def steps_per_epoch(cache: Cache, micro_batch: BatchSize, grad_accum: int = 1, *,
                    subsample_ratio: float | None = None) -> int:
    """Optimizer steps in one epoch (each bucket truncated to a multiple of its global batch, then
    ``subsample_ratio``); logs a warning per dropped bucket. ``steps_per_epoch(cache, global_batch)`` also works."""
    for message in dropped_buckets(cache, micro_batch, grad_accum):
        log.warning(message)
    size_of = _size_fn(micro_batch)
    steps = sum(sum(b.example_repeats()) // (size_of(b.size) * grad_accum) for b in cache.buckets)
    return int(steps * subsample_ratio) if subsample_ratio is not None else steps


@dataclass(frozen=True)
class Batch:
    """One micro-batch: example indices into one bucket."""

    bucket: int
    rows: tuple[int, ...]


def _epoch_steps(cache: Cache, micro_batch: BatchSize, grad_accum: int, seed: int, epoch: int,
                 reshuffle: bool) -> list[list[Batch]]:
    rng = random.Random(seed * 1000 + (epoch if reshuffle else 0))
    size_of = _size_fn(micro_batch)
    steps: list[list[Batch]] = []
    for b, bucket in enumerate(cache.buckets):
        micro = size_of(bucket.size)
        global_batch = micro * grad_accum
        order = [i for i, r in enumerate(bucket.example_repeats()) for _ in range(r)]
        rng.shuffle(order)
        usable = len(order) - len(order) % global_batch
        for s in range(0, usable, global_batch):
            chunk = order[s:s + global_batch]
            steps.append([Batch(b, tuple(chunk[m:m + micro])) for m in range(0, global_batch, micro)])
    rng.shuffle(steps)
    return steps


def epoch_batches(cache: Cache, micro_batch: BatchSize, grad_accum: int, seed: int, epoch: int, *,
                  subsample_ratio: float | None = None, start: int = 0,
                  reshuffle: bool = False) -> Iterator[list[Batch]]:
    """The optimizer steps of ``epoch``, each a list of ``grad_accum`` micro-batches; ``micro_batch`` may differ
    per bucket size; ``start`` skips the epoch's first steps (resume). As in diffusion-pipe the order is fixed by
    the seed alone, the same every epoch, so each epoch drops the same leftover examples and keeps the same
    ``subsample_ratio`` steps; ``reshuffle`` (``[studio] epoch_order = "reshuffle"``) draws a new order per epoch."""
    steps = _epoch_steps(cache, micro_batch, grad_accum, seed, epoch, reshuffle)
    if subsample_ratio is not None:
        steps = steps[:int(len(steps) * subsample_ratio)]
    yield from steps[start:]


def batch_tensors(cache: Cache, batch: Batch, uncond_fraction: float,
                  rng: random.Random | None) -> tuple[torch.Tensor, TextBatch, torch.Tensor | None]:
    """Latents, text and pixel mask ((B, H, W) float, or None) of one micro-batch, on the cache's device; each
    caption is swapped for the empty one with probability ``uncond_fraction`` (``rng`` may be None when 0)."""
    bucket = cache.buckets[batch.bucket]
    rows = list(batch.rows)
    text_rows = [cache.empty_row if uncond_fraction and rng.random() < uncond_fraction else int(r)
                 for r in bucket.text_rows[rows].tolist()]
    images = bucket.latent_rows[rows] if bucket.latent_rows is not None else torch.tensor(rows)
    mask = None
    if bucket.masks is not None:
        # diffusion-pipe keeps masks as float16 (x / 255) and computes the loss in float32.
        mask = (bucket.masks[images].float() / 255.0).half().float()
    text = cache.text.index(text_rows)
    latents = bucket.latents[images]
    if cache.device is not None:
        latents, text = latents.to(cache.device), text.to(cache.device)
        mask = mask.to(cache.device) if mask is not None else None
    return latents, text, mask


def batch_controls(cache: Cache, batch: Batch) -> torch.Tensor | None:
    """The control latents of one micro-batch (edit datasets), row for row with :func:`batch_tensors`'
    latents, on the cache's device; None for other datasets."""
    bucket = cache.buckets[batch.bucket]
    if bucket.controls is None:
        return None
    rows = list(batch.rows)
    images = bucket.latent_rows[rows] if bucket.latent_rows is not None else torch.tensor(rows)
    controls = bucket.controls[images]
    return controls.to(cache.device) if cache.device is not None else controls
