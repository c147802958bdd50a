"""Epoch batching: buckets never mix, remainders are dropped per bucket, repeats count, order is seeded."""

from __future__ import annotations

import logging
import random

import pytest
import torch

from trainers.native.cache import (
    Batch,
    Bucket,
    Cache,
    batch_tensors,
    dropped_buckets,
    epoch_batches,
    micro_batch_picker,
    micro_batch_sizes,
    steps_per_epoch,
)
from trainers.native.families.base import TextBatch


def _cache(sizes: dict[tuple[int, int], int], repeats: int = 1) -> Cache:
    buckets, row = [], 0
    for size, n in sizes.items():
        buckets.append(Bucket(size, torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n) + row,
                              repeats=[repeats] * n))
        row += n
    text = TextBatch(torch.arange(row + 1, dtype=torch.float32).view(-1, 1, 1), torch.ones(row + 1, 1))
    return Cache(buckets, text, row)


def test_steps_per_epoch_truncates_each_bucket():
    cache = _cache({(64, 64): 10, (96, 32): 3})
    assert steps_per_epoch(cache, 4) == 2
    assert steps_per_epoch(cache, 2, 2) == 2
    assert steps_per_epoch(_cache({(64, 64): 10}, repeats=2), 4) == 5
    assert cache.examples_per_epoch() == 13


def test_batches_stay_in_one_bucket_and_follow_accumulation():
    cache = _cache({(64, 64): 8, (96, 32): 4})
    steps = list(epoch_batches(cache, micro_batch=2, grad_accum=2, seed=1, epoch=1))
    assert len(steps) == 3 == steps_per_epoch(cache, 2, 2)
    for micro_batches in steps:
        assert len(micro_batches) == 2 and len({b.bucket for b in micro_batches}) == 1
        assert all(len(b.rows) == 2 for b in micro_batches)
    first_bucket = [r for s in steps for b in s if b.bucket == 0 for r in b.rows]
    assert sorted(first_bucket) == list(range(8))


def test_order_is_seeded_and_can_start_mid_epoch():
    cache = _cache({(64, 64): 16, (32, 32): 8})
    a = list(epoch_batches(cache, 4, 1, seed=3, epoch=1))
    assert a == list(epoch_batches(cache, 4, 1, seed=3, epoch=1))
    assert a != list(epoch_batches(cache, 4, 1, seed=4, epoch=1))
    assert list(epoch_batches(cache, 4, 1, seed=3, epoch=1, start=4)) == a[4:]
    assert list(epoch_batches(cache, 4, 1, seed=3, epoch=1, start=len(a))) == []


def test_subsample_ratio_keeps_a_fraction_of_the_steps():
    cache = _cache({(64, 64): 16, (32, 32): 8})
    full = list(epoch_batches(cache, 2, 1, seed=0, epoch=1))
    half = list(epoch_batches(cache, 2, 1, seed=0, epoch=1, subsample_ratio=0.5))
    assert half == full[:6] and steps_per_epoch(cache, 2, subsample_ratio=0.5) == 6
    assert steps_per_epoch(cache, 2, subsample_ratio=0.3) == len(list(
        epoch_batches(cache, 2, 1, seed=0, epoch=1, subsample_ratio=0.3))) == 3


def _rows(steps) -> set[tuple[int, int]]:
    return {(b.bucket, r) for step in steps for b in step for r in b.rows}


def test_one_order_for_every_epoch_as_in_diffusion_pipe():
    # diffusion-pipe shuffles once, with fixed seeds (utils/dataset.py:211-212 per size bucket, :287 the caption
    # order, :355 and :974 the batch order, all shuffle_with_seed(..., constant)), truncates each bucket to a
    # multiple of its global batch once (:392-394), keeps the first int(len * subsample_ratio) batches once
    # (:985-987), and its DataLoader has no shuffling sampler (train.py's PipelineDataLoader, utils/dataset.py
    # _create_dataloader: sampler=None): every epoch is the same batches in the same order.
    cache = _cache({(64, 64): 11, (32, 32): 7})  # 1 and 3 leftover examples at global batch 2 / 4
    for micro, accum in ((2, 1), (2, 2)):
        first = list(epoch_batches(cache, micro, accum, seed=5, epoch=1, subsample_ratio=0.5))
        for epoch in (2, 3, 7):
            assert list(epoch_batches(cache, micro, accum, seed=5, epoch=epoch, subsample_ratio=0.5)) == first
    full = _rows(epoch_batches(cache, 2, 1, seed=5, epoch=1))
    assert len(full) == 10 + 6 and all(_rows(epoch_batches(cache, 2, 1, seed=5, epoch=e)) == full for e in (2, 9))


def test_reshuffle_draws_a_new_order_and_new_leftovers_per_epoch():
    cache = _cache({(64, 64): 11, (32, 32): 7})
    epochs = [list(epoch_batches(cache, 2, 1, seed=5, epoch=e, reshuffle=True)) for e in range(1, 6)]
    assert all(len(steps) == len(epochs[0]) for steps in epochs)
    assert len({tuple(tuple(b.rows for b in step) for step in steps) for steps in epochs}) == 5
    assert len({frozenset(_rows(steps)) for steps in epochs}) > 1  # a different example is left over
    assert epochs[1] == list(epoch_batches(cache, 2, 1, seed=5, epoch=2, reshuffle=True))  # resumable


def test_per_bucket_micro_batch_from_resolution_pairs(caplog):
    pick = micro_batch_picker([[512, 4], [1024, 1]])
    assert pick((512, 512)) == 4 and pick((1024, 1024)) == 1
    assert pick((704, 704)) == 4 and pick((832, 832)) == 1  # nearest sqrt(w * h)
    assert pick((768, 768)) == 4  # a tie: the first pair
    assert pick((1248, 832)) == 1  # sqrt(1248 * 832) = 1019
    assert micro_batch_picker(3)((64, 64)) == 3
    cache = _cache({(1024, 1024): 3, (512, 512): 9})
    with caplog.at_level(logging.WARNING):
        assert steps_per_epoch(cache, pick, 1) == 3 + 2
    assert "512x512" not in caplog.text and caplog.text.count("dropped") == 0
    steps = list(epoch_batches(cache, pick, 1, seed=0, epoch=1))
    assert sorted(len(s[0].rows) for s in steps) == [1, 1, 1, 4, 4]
    mapping = {(1024, 1024): 2, (512, 512): 4}
    assert steps_per_epoch(cache, mapping, 2) == 0 + 1
    with caplog.at_level(logging.WARNING):
        steps_per_epoch(cache, mapping, 2)
    assert "bucket 1024x1024" in caplog.text and "dropped" in caplog.text
    assert dropped_buckets(cache, mapping, 2) == [
        "bucket 1024x1024 (aspect 1.0) has 3 examples, fewer than one global batch (4): it is dropped"]


def test_micro_batch_from_config_and_errors():
    assert micro_batch_sizes({})((64, 64)) == 1
    assert micro_batch_sizes({"micro_batch_size_per_gpu": 2})((64, 64)) == 2
    config = {"micro_batch_size_per_gpu": 2, "image_micro_batch_size_per_gpu": [[256, 8], [512, 2]]}
    assert micro_batch_sizes(config)((256, 256)) == 8
    with pytest.raises(ValueError, match="micro_batch_size_per_gpu"):
        micro_batch_sizes({"micro_batch_size_per_gpu": [[512]]})
    with pytest.raises(ValueError, match="image_micro_batch_size_per_gpu"):
        micro_batch_sizes({"image_micro_batch_size_per_gpu": 0})


def test_uncond_fraction_swaps_in_the_empty_caption():
    cache = _cache({(64, 64): 4})
    (batch,) = next(epoch_batches(cache, 4, 1, seed=0, epoch=1))
    _, text, mask = batch_tensors(cache, batch, 1.0, random.Random(0))
    assert text.embeds.flatten().tolist() == [float(cache.empty_row)] * 4 and mask is None
    latents, text, _ = batch_tensors(cache, batch, 0.0, None)
    assert latents.flatten().tolist() == text.embeds.flatten().tolist() == [float(r) for r in batch.rows]


def test_examples_share_latents_and_masks_follow_them():
    latents = torch.tensor([10.0, 20.0]).view(2, 1, 1, 1)
    masks = torch.tensor([[[255, 0]], [[128, 255]]], dtype=torch.uint8)  # (2, H=1, W=2)
    bucket = Bucket((2, 1), latents, torch.tensor([0, 1, 2]), latent_rows=torch.tensor([0, 0, 1]), masks=masks)
    cache = Cache([bucket], TextBatch(torch.zeros(4, 1, 1), torch.ones(4, 1)), 3, device=torch.device("cpu"))
    x0, _, mask = batch_tensors(cache, Batch(0, (2, 1)), 0.0, None)
    assert x0.flatten().tolist() == [20.0, 10.0]
    assert mask.shape == (2, 1, 2) and mask.dtype == torch.float32
    assert mask[0].flatten().tolist() == [torch.tensor(128 / 255).half().item(), 1.0]
    assert mask[1].flatten().tolist() == [1.0, 0.0]
