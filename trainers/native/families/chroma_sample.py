"""Chroma previews with both passes of classifier-free guidance in one transformer call.

``ChromaPipeline`` runs the conditional and the unconditional prediction of each sampling step as two
transformer calls. This renders the same images (its latents, sigmas, resolution shift, scheduler and VAE
decoding, read from the same pipeline object) with the two stacked into one batch, which costs about 0.7x
the two calls on the demo model (docs/benchmarks.md, Preview cost). Every row of the batch is computed on its
own (its own attention mask), so the result matches the pipeline's within float rounding
(tests/unit/test_native_preview_prompts.py compares them).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import ChromaPipeline
from diffusers.pipelines.chroma.pipeline_chroma import calculate_shift, retrieve_timesteps
from PIL import Image


def _timesteps(pipe: ChromaPipeline, steps: int, image_seq_len: int, device: torch.device) -> torch.Tensor:
    """The pipeline's schedule: linear sigmas from 1 to 1/steps, shifted by the image's token count."""
    config = pipe.scheduler.config
    mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    sigmas = np.linspace(1.0, 1 / steps, steps)
    timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas, mu=mu)
    pipe.scheduler.set_begin_index(0)
    return timesteps


@torch.no_grad()
def render_guided(pipe: ChromaPipeline, inputs: dict[str, torch.Tensor], *, height: int, width: int, steps: int,
                  guidance: float, generators: list[torch.Generator]) -> list[Image.Image]:
    """ChromaPipeline's images for ``inputs`` (prompt and negative embeddings with their masks, as
    ``encode_prompt`` returns them) under guidance > 1, with one transformer call per step."""
    embeds, neg = inputs["prompt_embeds"], inputs["negative_prompt_embeds"]
    batch, device = embeds.shape[0], pipe._execution_device
    latents, image_ids = pipe.prepare_latents(batch, pipe.transformer.config.in_channels // 4, height, width,
                                              embeds.dtype, device, generators)
    seq = latents.shape[1]
    masks = [pipe._prepare_attention_mask(batch, seq, latents.dtype, m)
             for m in (inputs["prompt_attention_mask"], inputs["negative_prompt_attention_mask"])]
    both = {"encoder_hidden_states": torch.cat([embeds, neg]), "attention_mask": torch.cat(masks),
            "txt_ids": torch.zeros(embeds.shape[1], 3, device=device, dtype=embeds.dtype), "img_ids": image_ids}
    for t in _timesteps(pipe, steps, seq, device):
        timestep = t.expand(2 * batch).to(latents.dtype) / 1000
        pred = pipe.transformer(hidden_states=torch.cat([latents, latents]), timestep=timestep, return_dict=False,
                                **both)[0]
        cond, uncond = pred.chunk(2)
        latents = pipe.scheduler.step(uncond + guidance * (cond - uncond), t, latents, return_dict=False)[0]
    latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    return pipe.image_processor.postprocess(pipe.vae.decode(latents, return_dict=False)[0], output_type="pil")
