"""Flux (dev / schnell) for the native trainer: the pieces that follow diffusion-pipe's models/flux.py.

This module is the start of the Flux family: LoRA target selection, the image length ``flux_shift`` reads, the
guidance vector, ``bypass_guidance_embedding`` and the save layout. Loading, prompt encoding, sampling and the
loop wiring are not here yet, so the registry does not mark Flux native (the diffusion-pipe backend trains it).
"""

from __future__ import annotations

from functools import partial

import torch

from trainers.native.families.chroma import latent_image_ids, pack_latents, unpack_latents

# diffusion-pipe models/flux.py: adapter_target_modules = ['FluxTransformerBlock', 'FluxSingleTransformerBlock']
TARGET_BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
# diffusion-pipe save_adapter -> FluxPipeline.save_lora_weights(transformer_lora_layers=...): this file name,
# every key prefixed with the transformer's name.
LORA_FILE = "pytorch_lora_weights.safetensors"
KEY_PREFIX = "transformer."


def lora_targets(transformer: torch.nn.Module) -> list[str]:
    """Every Linear inside a double or single transformer block, as peft selects them for those block classes."""
    names = []
    for block_name, block in transformer.named_modules():
        if type(block).__name__ not in TARGET_BLOCKS:
            continue
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                names.append(f"{block_name}.{name}")
    return names


def image_seq_len(latent_shape: torch.Size) -> int:
    """Packed image tokens for latents ``(B, C, h, w)``: (h / 2) * (w / 2), the length ``flux_shift`` reads
    (models/flux.py prepare_inputs); the shift itself is trainers/native/flow.py's, shared by every family."""
    return (latent_shape[-2] // 2) * (latent_shape[-1] // 2)


def guidance_vector(batch: int, guidance: float, device: torch.device) -> torch.Tensor:
    """The ``[model] guidance`` value for every sample, float32 (diffusion-pipe prepare_inputs)."""
    return torch.full((batch,), float(guidance), device=device, dtype=torch.float32)


def _embed_without_guidance(embed: torch.nn.Module, timestep, guidance, pooled_projection):
    steps = embed.timestep_embedder(embed.time_proj(timestep).to(dtype=pooled_projection.dtype))
    return steps + embed.text_embedder(pooled_projection)


def bypass_guidance_embedding(transformer: torch.nn.Module) -> bool:
    """``bypass_guidance_embedding = true``: the time/text embedding ignores guidance; False for a model without
    a guidance embedder (schnell), which is left as it is, as diffusion-pipe does."""
    embed = transformer.time_text_embed
    if not hasattr(embed, "guidance_embedder"):
        return False
    embed.forward = partial(_embed_without_guidance, embed)
    return True


def export_lora(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft adapter weights (diffusers module names) -> the keys ``save_lora_weights`` writes for Flux."""
    return {KEY_PREFIX + name: tensor for name, tensor in state_dict.items()}


def predict(transformer: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, t5_embeds: torch.Tensor,
            pooled: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
    """Velocity for unpacked latents ``(B, C, h, w)`` at timesteps ``t`` in (0, 1), inputs packed as FluxPipeline
    packs them (2x2 patches, zero text ids, (0, row, col) image ids); ``guidance`` is None for schnell."""
    b, _, h, w = x_t.shape
    dtype = transformer.dtype
    out = transformer(
        hidden_states=pack_latents(x_t).to(dtype),
        timestep=t.to(dtype),
        guidance=None if guidance is None else guidance.to(dtype),
        pooled_projections=pooled.to(dtype),
        encoder_hidden_states=t5_embeds.to(dtype),
        txt_ids=torch.zeros(t5_embeds.shape[1], 3, device=x_t.device, dtype=dtype),
        img_ids=latent_image_ids(h // 2, w // 2, x_t.device, dtype),
        return_dict=False,
    )[0]
    return unpack_latents(out, h, w)
