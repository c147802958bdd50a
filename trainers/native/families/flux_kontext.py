"""Flux Kontext (edit datasets, ``control_path``) for the native Flux family, following diffusion-pipe's
models/flux.py prepare_inputs.

A Kontext example is a target image and a control image cropped to the target's bucket, both encoded by the
VAE (diffusion-pipe utils/dataset.py:1082-1098, models/flux.py:299-302). The control latents are packed into
2x2 patches like the noisy target latents and appended after them as extra image tokens; their position ids are
the target's (0, row, col) ids with the first coordinate set to 1 (models/flux.py:381-392, the index
FluxKontextPipeline gives its reference image too). The transformer's output keeps only the first
``image_seq_len`` tokens (counted at models/flux.py:379, before the controls are appended; sliced by OutputWrapper
at :545-546), so the prediction and the loss cover the target tokens alone.

Previews render with diffusers' FluxKontextPipeline on the live modules; the reference image is the first
control image of the training set (scan order: first ``[[directory]]``, files sorted by name), cropped and
resized to the preview size as training crops controls to their target's bucket.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FluxKontextPipeline, FluxPipeline
from PIL import Image, ImageOps

from trainers.native.families.chroma import latent_image_ids, pack_latents, unpack_latents
from trainers.native.media import open_image, rgb_on_white

CONTROL_INDEX = 1.0  # models/flux.py:386: control ids are the latent ids with the first dimension set to 1


def control_image_ids(h2: int, w2: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids of the packed control tokens: (1, row, col) (diffusion-pipe models/flux.py:384-386)."""
    ids = latent_image_ids(h2, w2, device, dtype)
    ids[:, 0] = CONTROL_INDEX
    return ids


def kontext_tokens(x_t: torch.Tensor, control: torch.Tensor, dtype: torch.dtype,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states, image ids) the transformer reads: the packed target tokens, then the packed control
    tokens (models/flux.py:390-392), with their ids in the same order. Control latents must have the target's
    shape, as diffusion-pipe asserts (models/flux.py:383)."""
    if control.shape != x_t.shape:
        raise ValueError(f"control latents of shape {tuple(control.shape)} do not match the target latents "
                         f"{tuple(x_t.shape)}: a control image is cropped to its target's bucket")
    _, _, h, w = x_t.shape
    hidden = torch.cat([pack_latents(x_t), pack_latents(control)], dim=1).to(dtype)
    ids = torch.cat([latent_image_ids(h // 2, w // 2, x_t.device, dtype),
                     control_image_ids(h // 2, w // 2, x_t.device, dtype)], dim=0)
    return hidden, ids


def predict_kontext(transformer: torch.nn.Module, x_t: torch.Tensor, control: torch.Tensor, t: torch.Tensor,
                    t5_embeds: torch.Tensor, pooled: torch.Tensor, guidance: torch.Tensor | None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """Velocity for the target latents ``x_t`` (B, C, h, w) with ``control`` latents appended as extra tokens;
    only the target tokens of the output are returned (unpacked), as diffusion-pipe's OutputWrapper slices them
    (models/flux.py:545-546) and FluxKontextPipeline does (``noise_pred[:, :latents.size(1)]``)."""
    _, _, h, w = x_t.shape
    dtype = dtype or transformer.dtype
    hidden, img_ids = kontext_tokens(x_t, control, dtype)
    out = transformer(
        hidden_states=hidden,
        timestep=t.to(dtype),
        guidance=None if guidance is None else guidance.to(dtype),
        pooled_projections=pooled.to(dtype),
        encoder_hidden_states=t5_embeds.to(dtype),
        txt_ids=torch.zeros(t5_embeds.shape[1], 3, device=x_t.device, dtype=dtype),
        img_ids=img_ids,
        return_dict=False,
    )[0]
    return unpack_latents(out[:, :(h // 2) * (w // 2)], h, w)


def kontext_pipeline(pipe: FluxPipeline) -> FluxKontextPipeline:
    """A FluxKontextPipeline sharing the live modules of ``pipe`` (the adapter as trained)."""
    kontext = FluxKontextPipeline(scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=pipe.text_encoder,
                                  tokenizer=pipe.tokenizer, text_encoder_2=pipe.text_encoder_2,
                                  tokenizer_2=pipe.tokenizer_2, transformer=pipe.transformer)
    kontext.set_progress_bar_config(disable=True)
    return kontext


def preview_control(path: Path, width: int, height: int) -> Image.Image:
    """The preview's reference image: ``path`` on white, centre-cropped and resized to the preview size."""
    with open_image(path) as img:
        img.load()
        rgb = rgb_on_white(img)
    return ImageOps.fit(rgb, (width, height))
