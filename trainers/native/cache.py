"""Encode every example once (VAE latents, text embeddings) and serve shuffled batches per epoch.

Like diffusion-pipe, batches never mix bucket sizes and each bucket is truncated to a multiple of the global
batch size (a bucket smaller than one global batch is dropped, with a warning).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from trainers.native.data import Item, load_pixels
from trainers.native.families.base import Family, TextBatch

log = logging.getLogger(__name__)
CHUNK = 16


@dataclass
class Bucket:
    """Cached examples of one (width, height): latents (N, C, h, w) and each example's text row."""

    size: tuple[int, int]
    latents: torch.Tensor
    text_rows: torch.Tensor


@dataclass
class Cache:
    """All cached examples plus the text table they index (the last row is the empty caption)."""

    buckets: list[Bucket]
    text: TextBatch
    empty_row: int
    repeats: dict[tuple[int, int], list[int]]

    def examples_per_epoch(self) -> int:
        """Examples in one epoch, num_repeats included."""
        return sum(sum(r) for r in self.repeats.values())


def _to_tensor(images) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


@torch.no_grad()
def encode_texts(family: Family, captions: list[str]) -> TextBatch:
    """Text embeddings for ``captions`` (in chunks)."""
    parts = [family.encode_prompts(captions[i:i + CHUNK]) for i in range(0, len(captions), CHUNK)]
    return TextBatch.cat(parts)


@torch.no_grad()
def build_cache(family: Family, items: list[Item], seed: int,
                progress: Callable[[int], None] = lambda done: None) -> Cache:
    """Encode all items: latents per bucket (the VAE posterior sampled once, seeded) and unique captions."""
    captions = sorted({item.caption for item in items})
    row_of = {c: i for i, c in enumerate(captions)}
    text = encode_texts(family, captions + [""])
    generator = torch.Generator(device="cpu").manual_seed(seed)
    by_size: dict[tuple[int, int], list[Item]] = {}
    for item in items:
        by_size.setdefault(item.size, []).append(item)
    buckets, repeats, done = [], {}, 0
    for size, group in sorted(by_size.items()):
        latents = []
        for i in range(0, len(group), CHUNK):
            chunk = group[i:i + CHUNK]
            pixels = _to_tensor([load_pixels(it) for it in chunk])
            latents.append(family.encode_images(pixels, generator=generator).cpu())
            done += len(chunk)
            progress(done)
        rows = torch.tensor([row_of[it.caption] for it in group])
        buckets.append(Bucket(size, torch.cat(latents), rows))
        repeats[size] = [it.repeats for it in group]
    return Cache(buckets, text, len(captions), repeats)


def steps_per_epoch(cache: Cache, global_batch: int) -> int:
    """Optimizer steps in one epoch (each bucket truncated to a multiple of the global batch)."""
    return sum(sum(r) // global_batch for r in cache.repeats.values())


@dataclass(frozen=True)
class Batch:
    """One micro-batch: indices into one bucket."""

    bucket: int
    rows: tuple[int, ...]


def epoch_batches(cache: Cache, micro_batch: int, grad_accum: int, seed: int,
                  epoch: int) -> Iterator[list[Batch]]:
    """The optimizer steps of ``epoch``, each a list of ``grad_accum`` micro-batches, in shuffled order."""
    rng = random.Random(seed * 1000 + epoch)
    global_batch = micro_batch * grad_accum
    steps: list[list[Batch]] = []
    for b, bucket in enumerate(cache.buckets):
        order = [i for i, r in enumerate(cache.repeats[bucket.size]) for _ in range(r)]
        rng.shuffle(order)
        usable = len(order) - len(order) % global_batch
        if usable == 0 and epoch == 1:
            log.warning("bucket %dx%d has %d examples, fewer than one global batch (%d): dropped",
                        *bucket.size, len(order), global_batch)
        for s in range(0, usable, global_batch):
            chunk = order[s:s + global_batch]
            steps.append([Batch(b, tuple(chunk[m:m + micro_batch]))
                          for m in range(0, global_batch, micro_batch)])
    rng.shuffle(steps)
    yield from steps


def batch_tensors(cache: Cache, batch: Batch, uncond_fraction: float,
                  rng: random.Random) -> tuple[torch.Tensor, TextBatch]:
    """Latents and text for one micro-batch; each caption is dropped with ``uncond_fraction`` probability."""
    bucket = cache.buckets[batch.bucket]
    rows = list(batch.rows)
    text_rows = [cache.empty_row if uncond_fraction and rng.random() < uncond_fraction else int(r)
                 for r in bucket.text_rows[rows].tolist()]
    return bucket.latents[rows], cache.text.index(text_rows)
