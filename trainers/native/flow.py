"""Rectified-flow training maths shared by every flow-matching family (Flux, Chroma, ...).

Matches diffusion-pipe's semantics for the ``[model]`` keys ``timestep_sample_method``, ``sigmoid_scale``,
``shift`` and ``flux_shift``: t in (0, 1) where t=1 is pure noise, x_t = (1 - t) * x0 + t * noise, and the
model predicts the velocity noise - x0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# sd-scripts / Flux constants for the resolution-dependent shift: mu goes linearly from 0.5 at 256 image
# tokens to 1.15 at 4096 tokens.
BASE_SEQ_LEN, MAX_SEQ_LEN = 256, 4096
BASE_SHIFT, MAX_SHIFT = 0.5, 1.15
# The [model] key that turns the resolution-dependent shift on, where a type names it otherwise than flux_shift.
RESOLUTION_SHIFT_KEYS = {"lumina_2": "lumina_shift"}
# Timestep quantiles diffusion-pipe evaluates the loss at.
EVAL_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class TimestepConfig:
    """How training timesteps are drawn (from ``[model]``)."""

    method: str = "logit_normal"
    sigmoid_scale: float = 1.0
    shift: float | None = None
    flux_shift: bool = False

    @classmethod
    def from_model_table(cls, model: dict) -> TimestepConfig:
        """Read the keys from a ``[model]`` table; unknown methods are an error, as in diffusion-pipe."""
        method = model.get("timestep_sample_method", "logit_normal")
        if method not in ("logit_normal", "uniform"):
            raise ValueError(
                f"[model] timestep_sample_method = {method!r} is not supported; use 'logit_normal' or 'uniform'"
            )
        shift = model.get("shift")  # 0 means no shift: diffusion-pipe tests `if shift := ...` (models/chroma.py:263)
        # the resolution-dependent shift is the same maths under another key for Lumina 2 (models/lumina_2.py:172)
        resolution_key = RESOLUTION_SHIFT_KEYS.get(model.get("type"), "flux_shift")
        return cls(method, float(model.get("sigmoid_scale", 1.0)),
                   float(shift) if shift else None, bool(model.get(resolution_key, False)))


def flux_mu(image_seq_len: int) -> float:
    """The Flux/sd-scripts shift exponent for an image of ``image_seq_len`` packed tokens."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return BASE_SHIFT + slope * (image_seq_len - BASE_SEQ_LEN)


def time_shift(mu: float, t: torch.Tensor) -> torch.Tensor:
    """Exponential time shift: t' = e^mu / (e^mu + 1/t - 1) (sigma = 1)."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


def constant_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """Fixed shift as SD3 uses it: t' = shift * t / (1 + (shift - 1) * t)."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def _base_timesteps(cfg: TimestepConfig, batch: int, generator: torch.Generator | None,
                    quantile: float | None) -> torch.Tensor:
    """Unshifted timesteps: drawn, or the ``quantile`` of the base distribution (diffusion-pipe's icdf)."""
    if quantile is not None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"timestep quantile must be in (0, 1), got {quantile}")
        q = torch.full((batch,), float(quantile))
        if cfg.method == "uniform":
            return q
        return torch.sigmoid(torch.distributions.Normal(0.0, 1.0).icdf(q) * cfg.sigmoid_scale)
    if cfg.method == "logit_normal":
        return torch.sigmoid(torch.randn(batch, generator=generator) * cfg.sigmoid_scale)
    return torch.rand(batch, generator=generator)


def sample_timesteps(cfg: TimestepConfig, batch: int, image_seq_len: int,
                     generator: torch.Generator | None = None, quantile: float | None = None) -> torch.Tensor:
    """``batch`` timesteps in (0, 1): drawn for training, or all at ``quantile`` of the distribution (eval).

    ``shift`` wins over ``flux_shift`` (diffusion-pipe's order); a quantile consumes no random numbers.
    """
    t = _base_timesteps(cfg, batch, generator, quantile)
    if cfg.shift is not None:
        t = constant_shift(cfg.shift, t)
    elif cfg.flux_shift:
        t = time_shift(flux_mu(image_seq_len), t)
    return t


def noisy_input(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy latents x_t and the velocity target for timesteps ``t`` (one per batch item), in float32.

    diffusion-pipe models/chroma.py:224 takes ``latents.float()``, draws float32 noise and t (:255) and forms
    x_t and the target in float32 (:270-273); x_t is rounded to the compute dtype only where the model reads
    it, and the loss compares against the float32 target (models/base.py:422-423). Pass float32 ``noise``.
    """
    x0, noise = x0.float(), noise.float()
    t_b = t.view(-1, *([1] * (x0.dim() - 1))).to(device=x0.device, dtype=torch.float32)
    x_t = (1.0 - t_b) * x0 + t_b * noise
    return x_t, noise - x0


@dataclass(frozen=True)
class LossConfig:
    """Loss choice from the top-level keys ``huber_delta`` / ``smooth_l1_beta`` (default MSE)."""

    huber_delta: float | None = None
    smooth_l1_beta: float | None = None

    @classmethod
    def from_config(cls, config: dict) -> LossConfig:
        """Read the loss keys of a main config."""
        h, s = config.get("huber_delta"), config.get("smooth_l1_beta")
        return cls(None if h is None else float(h), None if s is None else float(s))


def latent_mask(mask_pixels: torch.Tensor, latent_hw: tuple[int, int] | torch.Size) -> torch.Tensor:
    """A (B, H, W) pixel mask resized to latent (B, h, w) with nearest-exact interpolation (diffusion-pipe)."""
    if mask_pixels.dim() != 3:
        raise ValueError(f"mask must be (batch, height, width), got shape {tuple(mask_pixels.shape)}")
    resized = F.interpolate(mask_pixels[:, None].float(), size=tuple(latent_hw), mode="nearest-exact")
    return resized[:, 0]


def flow_loss(pred: torch.Tensor, target: torch.Tensor, cfg: LossConfig = LossConfig(),
              mask: torch.Tensor | None = None, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss between prediction and target (in float32); ``sample_weights`` (B,) scale each sample's loss
    (SDXL's min-SNR / debiased weighting: every sample has as many elements, so this is diffusion-pipe's mean of
    weighted per-sample means).

    With a latent-space ``mask`` (B, h, w) every element's loss is weighted by its position's mask value
    and the mean is still over all elements, masked ones included, as diffusion-pipe averages it.
    """
    pred, target = pred.float(), target.float()
    if cfg.huber_delta is not None:
        loss = F.huber_loss(pred, target, reduction="none", delta=cfg.huber_delta)
    elif cfg.smooth_l1_beta is not None:
        loss = F.smooth_l1_loss(pred, target, reduction="none", beta=cfg.smooth_l1_beta)
    else:
        loss = F.mse_loss(pred, target, reduction="none")
    if mask is not None:
        if mask.dim() != 3 or mask.shape[0] != loss.shape[0] or mask.shape[-2:] != loss.shape[-2:]:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit predictions of shape "
                             f"{tuple(loss.shape)}; resize it with latent_mask(mask, latents.shape[-2:])")
        loss = loss * mask.to(loss.device, torch.float32).view(mask.shape[0], *([1] * (loss.dim() - 3)),
                                                              *mask.shape[1:])
    if sample_weights is not None:
        loss = loss * sample_weights.to(loss.device, torch.float32).view(-1, *([1] * (loss.dim() - 1)))
    return loss.mean()
