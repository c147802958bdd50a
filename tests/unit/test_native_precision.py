"""Training precision as diffusion-pipe keeps it: t, x_t and the target in float32, the embedding of float32 t."""

from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from transformers import AutoTokenizer, T5EncoderModel

from tests.fixtures.chroma_tiny import FLUX_TINY, TINY_CONFIG, one_thread, tiny_transformer
from trainers.native.families.base import TextBatch
from trainers.native.families.chroma import ChromaFamily
from trainers.native.flow import noisy_input

# A t that bf16 moves by 2.8e-4 (0.3337 -> 0.333984), so 1000 t moves by 0.28 (then 334 after x1000 in bf16).
T = 0.3337


def test_noisy_input_is_float32_from_bf16_latents():
    # diffusion-pipe models/chroma.py:224 latents.float(); :268-273 x_t and target from float32 noise and t
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 6, 6, generator=gen).to(torch.bfloat16)
    noise = torch.randn(2, 4, 6, 6, generator=gen)
    t = torch.tensor([T, 0.91])
    x_t, target = noisy_input(x0, noise, t)
    assert x_t.dtype == target.dtype == torch.float32
    t_b = t.view(-1, 1, 1, 1)
    assert torch.equal(x_t, (1 - t_b) * x0.float() + t_b * noise)
    assert torch.equal(target, noise - x0.float())


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The sinusoidal embedding of 1000 t in float32 (cos half first), as Chroma's timestep_embedding computes it
    on the float32 t that diffusion-pipe passes (models/chroma.py:277, :367)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = (1000.0 * t.float())[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def test_bf16_chroma_embeds_the_float32_timestep():
    with one_thread():
        vae = AutoencoderKL.from_pretrained(FLUX_TINY / "vae", local_files_only=True)
        text_encoder = T5EncoderModel.from_pretrained(FLUX_TINY / "text_encoder_2", local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(FLUX_TINY / "tokenizer_2", local_files_only=True)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(FLUX_TINY / "scheduler", local_files_only=True)
        transformer = tiny_transformer().to(torch.bfloat16).requires_grad_(False)
        family = ChromaFamily(vae, text_encoder, tokenizer, transformer, scheduler, torch.device("cpu"),
                              torch.bfloat16)
        seen = []
        transformer.distilled_guidance_layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        x_t = torch.randn(1, TINY_CONFIG["in_channels"] // 4, 8, 8)
        text = TextBatch(torch.randn(1, 5, TINY_CONFIG["joint_attention_dim"]), torch.ones(1, 5))
        family.predict(x_t, torch.tensor([T]), text)
    width = transformer.time_text_embed.time_proj.num_channels
    expected = _timestep_embedding(torch.tensor([T]), width).to(torch.bfloat16)
    got = seen[0][:, :, :width]
    assert got.dtype == torch.bfloat16  # rounded where the autocast Linear reads it
    assert torch.allclose(got.float(), expected.float().expand_as(got), atol=1e-2)
    # outside predict (the diffusers pipeline's own calls) the embedding is diffusers' own again
    assert family._timestep is None
