"""The small interface every native model family implements, and the types that cross it.

The loop only speaks in unpacked latents ``(B, C, h, w)``, timesteps in (0, 1) and ``TextBatch`` objects;
each family hides its own packing, position ids, masks and key layout behind these methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image


@dataclass
class TextBatch:
    """Cached text-encoder output for a batch of captions; ``pooled`` is the pooled embedding of families that
    condition on one as well (Flux's CLIP), None for the others."""

    embeds: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None = None

    def index(self, rows: list[int] | torch.Tensor) -> TextBatch:
        """The rows ``rows`` of this batch."""
        return TextBatch(self.embeds[rows], self.mask[rows], None if self.pooled is None else self.pooled[rows])

    def to(self, device: torch.device) -> TextBatch:
        """This batch on ``device``."""
        pooled = None if self.pooled is None else self.pooled.to(device)
        return TextBatch(self.embeds.to(device), self.mask.to(device), pooled)

    @staticmethod
    def cat(parts: list[TextBatch]) -> TextBatch:
        """Concatenate batches along the batch dimension; sequences of different lengths (families that encode
        each prompt to its own length, like Qwen-Image) are padded with zeros, mask included, to the longest."""
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        length = max(p.embeds.shape[1] for p in parts)
        return TextBatch(torch.cat([pad_tokens(p.embeds, length) for p in parts]),
                         torch.cat([pad_tokens(p.mask, length) for p in parts]), pooled)

    @staticmethod
    def stack(embeds: list[torch.Tensor], masks: list[torch.Tensor], pooled: list[torch.Tensor] | None = None,
              ) -> TextBatch:
        """One batch from single rows (``(L, D)`` embeddings, ``(L,)`` masks), padded like :meth:`cat`."""
        length = max(e.shape[0] for e in embeds)
        return TextBatch(torch.stack([pad_tokens(e[None], length)[0] for e in embeds]),
                         torch.stack([pad_tokens(m[None], length)[0] for m in masks]),
                         None if pooled is None else torch.stack(pooled))


def pad_tokens(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``tensor`` (batch, tokens, ...) padded with zeros to ``length`` tokens (unchanged when already that long)."""
    missing = length - tensor.shape[1]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], missing, *tensor.shape[2:])], dim=1)


@dataclass(frozen=True)
class SampleRequest:
    """One preview to render."""

    prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    negative_prompt: str = ""


class Family(Protocol):
    """A model family the native trainer can train a LoRA for.

    Optional: a family that trains edit datasets (``control_path``; Flux Kontext) sets ``edit_datasets = True``;
    its ``predict`` then takes the batch's control latents as ``control=`` (same shape as ``x_t``, passed only for
    edit datasets) and the loop sets ``preview_control`` to the first control image, the previews' reference.
    """

    name: str
    device: torch.device
    dtype: torch.dtype
    pixel_multiple: int  # image sides are rounded to this many pixels (VAE factor x patch size)
    lora_file: str  # the LoRA file a save folder holds, named as diffusion-pipe names it for this family
    lora_layout: str  # how the LoRA's parameters are laid out ("peft"; Chroma: "fused"), kept in training states

    @property
    def transformer(self) -> torch.nn.Module:
        """The denoiser the adapter is attached to."""
        ...

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1], ``(B, 3, H, W)`` -> normalised latents ``(B, C, h, w)``."""
        ...

    def encode_prompts(self, captions: list[str]) -> TextBatch:
        """Captions -> text embeddings and mask, as the family's pipeline would make them."""
        ...

    def cache_key(self) -> str:
        """Identity of the encoders: a change must invalidate cached latents/embeddings."""
        ...

    def image_seq_len(self, latent_shape: torch.Size) -> int:
        """Number of image tokens the transformer sees for latents of this shape (for ``flux_shift``)."""
        ...

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """The model's velocity prediction for noisy latents ``x_t`` at timesteps ``t``."""
        ...

    def lora_targets(self) -> list[str]:
        """Module names that get a LoRA (every Linear inside the transformer blocks)."""
        ...

    def sample(self, requests: list[SampleRequest]) -> list[Image.Image]:
        """Render previews with the live model (adapter included)."""
        ...

    def export_lora(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict | None]:
        """Adapter weights (peft names) -> (tensors to save, extra adapter_config fields; None: the family's
        format has no adapter_config.json)."""
        ...

    def attach_new_lora(self, rank: int, dropout: float, dtype: torch.dtype | None = None,
                        exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """A new trainable LoRA (alpha = rank) in diffusion-pipe's parametrisation; returns its parameters."""
        ...

    def init_from_existing(self, path: str | Path, rank: int, dropout: float = 0.0, dtype: torch.dtype | None = None,
                           exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """``[adapter] init_from_existing``: a trainable LoRA starting from a saved one of the same rank."""
        ...

    def fuse_adapters(self, tables: list[dict]) -> None:
        """Merge ``[adapter] fuse_adapters`` LoRAs (``{path, weight}``) into the base weights."""
        ...

    def attach_saved_lora(self, folder_or_file: Path, trainable: bool = False, dtype: torch.dtype | None = None,
                          ) -> tuple[int, list[tuple[str, torch.nn.Parameter]]]:
        """Attach a saved LoRA exactly as it was trained; returns (rank, its named parameters)."""
        ...

    def enable_activation_checkpointing(self, reentrant: bool = False) -> None:
        """Recompute block activations in the backward pass instead of keeping them."""
        ...


def resolve_path(value: str | Path, what: str) -> Path:
    """A config path resolved against the working directory (the source config's folder); must exist."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists():
        raise FileNotFoundError(f"{what} = {str(value)!r} does not exist (resolved to {path})")
    return path


# diffusion-pipe's DTYPE_MAP strings. The float8 kinds only store weights (``transformer_dtype``); computing
# happens in ``dtype``.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float8": torch.float8_e4m3fn,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
}
FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def dtype_of(value: str, key: str, storage: bool = False) -> torch.dtype:
    """The torch dtype for a config dtype string; the error names the key and the choices.

    ``storage`` allows the float8 kinds (keys that only say how weights are kept, like ``transformer_dtype``).
    """
    try:
        dtype = DTYPES[value]
    except KeyError:
        raise ValueError(f"{key} = {value!r} is not a dtype; use one of {', '.join(DTYPES)}") from None
    if dtype in FLOAT8 and not storage:
        raise ValueError(f"{key} = {value!r}: float8 only stores weights; use float32, float16 or bfloat16 here "
                         "(and [model] transformer_dtype = 'float8' to keep the transformer's weights in float8)")
    return dtype
