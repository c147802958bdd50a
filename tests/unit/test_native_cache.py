"""Epoch batching: buckets never mix, remainders are dropped per bucket, repeats count, order is seeded."""

from __future__ import annotations

import random

import torch

from trainers.native.cache import Bucket, Cache, batch_tensors, epoch_batches, steps_per_epoch
from trainers.native.families.base import TextBatch


def _cache(sizes: dict[tuple[int, int], int], repeats: int = 1) -> Cache:
    buckets, reps, row = [], {}, 0
    for size, n in sizes.items():
        buckets.append(Bucket(size, torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n) + row))
        reps[size] = [repeats] * n
        row += n
    text = TextBatch(torch.arange(row + 1, dtype=torch.float32).view(-1, 1, 1), torch.ones(row + 1, 1))
    return Cache(buckets, text, row, reps)


def test_steps_per_epoch_truncates_each_bucket():
    cache = _cache({(64, 64): 10, (96, 32): 3})
    assert steps_per_epoch(cache, 4) == 2
    assert steps_per_epoch(_cache({(64, 64): 10}, repeats=2), 4) == 5


def test_batches_stay_in_one_bucket_and_follow_accumulation():
    cache = _cache({(64, 64): 8, (96, 32): 4})
    steps = list(epoch_batches(cache, micro_batch=2, grad_accum=2, seed=1, epoch=1))
    assert len(steps) == 3
    for micro_batches in steps:
        assert len(micro_batches) == 2 and len({b.bucket for b in micro_batches}) == 1
        assert all(len(b.rows) == 2 for b in micro_batches)
    first_bucket = [r for s in steps for b in s if b.bucket == 0 for r in b.rows]
    assert sorted(first_bucket) == list(range(8))


def test_order_is_seeded_per_epoch():
    cache = _cache({(64, 64): 16})
    a = list(epoch_batches(cache, 4, 1, seed=3, epoch=1))
    assert a == list(epoch_batches(cache, 4, 1, seed=3, epoch=1))
    assert a != list(epoch_batches(cache, 4, 1, seed=3, epoch=2))


def test_uncond_fraction_swaps_in_the_empty_caption():
    cache = _cache({(64, 64): 4})
    (batch,) = next(epoch_batches(cache, 4, 1, seed=0, epoch=1))
    _, text = batch_tensors(cache, batch, 1.0, random.Random(0))
    assert text.embeds.flatten().tolist() == [float(cache.empty_row)] * 4
    latents, text = batch_tensors(cache, batch, 0.0, random.Random(0))
    assert latents.flatten().tolist() == text.embeds.flatten().tolist() == [float(r) for r in batch.rows]
