"""Eval loss as diffusion-pipe computes it: every ``eval_datasets`` set, at fixed timestep quantiles, fixed noise.

For each quantile q in 0.1 ... 0.9 every eval batch is noised at the timestep of quantile q of the training
distribution (shift included) with noise from a generator seeded the same way each time, so two evals of the
same LoRA give the same numbers and evals never touch the training RNG. ``<name>/loss`` is the mean over the
quantiles.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trainers.native import cache as cache_mod
from trainers.native.flow import (
    EVAL_QUANTILES,
    LossConfig,
    TimestepConfig,
    flow_loss,
    latent_mask,
    noisy_input,
    sample_timesteps,
)

EVAL_SEED = 12345


@dataclass
class EvalSet:
    """One cached eval dataset."""

    name: str
    cache: cache_mod.Cache


def eval_sets_from_config(config: dict, base: Path) -> list[tuple[str, Path]]:
    """``eval_datasets`` as (name, dataset TOML path); bare strings get ``evalN`` names."""
    sets = []
    for i, entry in enumerate(config.get("eval_datasets") or []):
        if isinstance(entry, str):
            name, path = f"eval{i}", entry
        elif isinstance(entry, dict) and "config" in entry:
            name, path = str(entry.get("name", f"eval{i}")), str(entry["config"])
        else:
            raise ValueError(f"eval_datasets[{i}] must be a table {{name = '...', config = 'eval.toml'}}")
        full = Path(path).expanduser()
        sets.append((name, full if full.is_absolute() else base / full))
    return sets


def _loss_at(family, q: float, x0, text, weights, generator, tcfg: TimestepConfig, loss_cfg: LossConfig,
             control=None):
    """One batch's loss at timestep quantile ``q``: flow matching, or the family's own objective (SDXL:
    ``timesteps_at`` + ``noised``, plain MSE weighted per sample, models/sdxl.py:555-557); ``control``: the
    control latents of an edit dataset, handed to the family's ``predict``."""
    if hasattr(family, "timesteps_at"):
        noise = torch.randn(x0.shape, generator=generator).to(family.device)  # float32
        t = family.timesteps_at(q, x0.shape[0]).to(family.device)
        x_t, t, target, per_sample = family.noised(x0.float(), noise, t)
        return flow_loss(family.predict(x_t, t, text), target, LossConfig(), weights, per_sample)
    t = sample_timesteps(tcfg, x0.shape[0], family.image_seq_len(x0.shape), generator, quantile=q)
    noise = torch.randn(x0.shape, generator=generator).to(family.device)  # float32
    x_t, target = noisy_input(x0, noise, t.to(family.device))
    extra = {} if control is None else {"control": control}
    return flow_loss(family.predict(x_t, t.to(family.device), text, **extra), target, loss_cfg, weights)


@torch.no_grad()
def evaluate(family, eval_set: EvalSet, tcfg: TimestepConfig, loss_cfg: LossConfig,
             micro_batch: cache_mod.BatchSize, grad_accum: int = 1) -> tuple[float, dict[str, float], float]:
    """(mean loss, {"0.10": loss, ...}, seconds) for one eval set with the live model."""
    started = time.time()
    transformer = family.transformer
    was_training = transformer.training
    transformer.eval()  # LoRA dropout off: evals are comparable
    try:
        quantiles = {}
        for q in EVAL_QUANTILES:
            generator = torch.Generator(device="cpu").manual_seed(EVAL_SEED)
            total, count = 0.0, 0
            for micro_batches in cache_mod.epoch_batches(eval_set.cache, micro_batch, grad_accum, EVAL_SEED, 1):
                for batch in micro_batches:
                    x0, text, mask = cache_mod.batch_tensors(eval_set.cache, batch, 0.0, None)
                    x0 = x0.to(family.device, family.dtype)
                    weights = latent_mask(mask, x0.shape[-2:]) if mask is not None else None
                    control = cache_mod.batch_controls(eval_set.cache, batch)
                    if control is not None:
                        control = control.to(family.device, family.dtype)
                    loss = _loss_at(family, q, x0, text, weights, generator, tcfg, loss_cfg, control)
                    total += float(loss) * x0.shape[0]
                    count += x0.shape[0]
            if count == 0:
                raise RuntimeError(f"eval set {eval_set.name!r} has no batch: every bucket is smaller than the eval "
                                   "eval batch; add images or lower eval_micro_batch_size_per_gpu")
            quantiles[f"{q:.2f}"] = total / count
    finally:
        transformer.train(was_training)
    mean = sum(quantiles.values()) / len(quantiles)
    return mean, quantiles, time.time() - started
