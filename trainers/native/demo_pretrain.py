"""Pretraining of the embedded demo model: the tiny VAE first, then the Chroma transformer (+ T5).

The base model learns to draw "a <colour> <shape> on a <colour> background" from procedural pictures, so
the demo LoRA starts from a model whose samples look like something and only has to learn its new concept.
"""

from __future__ import annotations

import logging
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trainers.native import demo_images as di
from trainers.native.families.chroma import ChromaFamily
from trainers.native.flow import TimestepConfig, flow_loss, noisy_input, sample_timesteps

log = logging.getLogger(__name__)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> float tensor (B, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain_vae(vae, steps: int, seed: int, batch: int = 16, crop: int = 32, lr: float = 2e-3,
                 size: int = 64, pool: int = 2048) -> dict[str, float]:
    """Train the VAE to reconstruct shapes and textures (random crops; it is fully convolutional)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    images = to_tensor([di.vae_image(rng, size) for _ in range(pool)])
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    started, loss_ema = time.time(), None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, 50)
        x = _random_crops(images, batch, crop, gen)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if (step + 1) % 100 == 0:
            log.info("vae step %d/%d loss %.4f (%.0f s)", step + 1, steps, loss_ema, time.time() - started)
    vae.eval()
    return {"vae_loss": float(loss_ema or 0.0), "vae_seconds": time.time() - started}


def _random_crops(images: torch.Tensor, batch: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
    size = images.shape[-1]
    out = []
    for i in idx.tolist():
        y, x = torch.randint(0, size - crop + 1, (2,), generator=gen).tolist()
        out.append(images[i, :, y:y + crop, x:x + crop])
    return torch.stack(out)


@torch.no_grad()
def vae_psnr(vae, images: torch.Tensor) -> float:
    """Reconstruction PSNR (dB) of the VAE on ``images`` in [-1, 1] (posterior mode)."""
    recon = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
    mse = F.mse_loss((recon + 1) / 2, (images + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


@torch.no_grad()
def set_latent_stats(vae, images: torch.Tensor) -> tuple[float, float]:
    """Set the VAE's ``shift_factor`` / ``scaling_factor`` so its latents are about zero-mean, unit-variance."""
    latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in images.split(64)])
    shift, scale = float(latents.mean()), float(1.0 / latents.std())
    vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(scale, 4))
    return shift, scale


def scene_pool(count: int, size: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """Captioned pictures of the base vocabulary (colours x shapes x backgrounds), no trigger word."""
    rng = random.Random(seed)
    scenes = [di.random_scene(rng, size) for _ in range(count)]
    return [di.draw_scene(s, size) for s in scenes], [s.caption() for s in scenes]


def pretrain_transformer(family: ChromaFamily, steps: int, seed: int, batch: int = 16, lr: float = 1.5e-3,
                         pool: int = 4096, size: int = 64, uncond: float = 0.1,
                         train_text_encoder: bool = True) -> dict[str, float]:
    """Full training of the transformer (and T5) on captioned scenes with the flow-matching objective."""
    images, captions = scene_pool(pool, size, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = torch.cat([family.encode_images(chunk, generator=gen) for chunk in to_tensor(images).split(64)])
    params = list(family.transformer.parameters())
    if train_text_encoder:
        params += list(family.text_encoder.parameters())
        family.text_encoder.requires_grad_(True).train()
    family.transformer.requires_grad_(True).train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    tcfg = TimestepConfig(flux_shift=True)
    rng = random.Random(seed)
    started, loss_ema = time.time(), None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, 100)
        rows = torch.randint(0, pool, (batch,), generator=gen)
        caps = ["" if rng.random() < uncond else captions[i] for i in rows.tolist()]
        x0 = latents[rows]
        t = sample_timesteps(tcfg, batch, family.image_seq_len(x0.shape), gen)
        x_t, target = noisy_input(x0, torch.randn(x0.shape, generator=gen), t)
        loss = flow_loss(family.predict(x_t, t, family.encode_prompts(caps)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if (step + 1) % 100 == 0:
            log.info("transformer step %d/%d loss %.4f (%.0f s)", step + 1, steps, loss_ema, time.time() - started)
    family.transformer.requires_grad_(False).eval()
    family.text_encoder.requires_grad_(False).eval()
    return {"transformer_loss": float(loss_ema or 0.0), "transformer_seconds": time.time() - started}
