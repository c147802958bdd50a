"""Loading Lumina 2 from what diffusion-pipe's ``[model]`` table names (models/lumina_2.py:43-87), offline.

- ``transformer_path``: one ``.safetensors`` file in the original NextDiT layout, bare or a ComfyUI checkpoint
  whose transformer keys start with ``model.diffusion_model.`` (its VAE and text encoder keys are ignored), as
  diffusion-pipe reads it (:71-80); the config is read off the tensor shapes. A diffusers transformer folder
  (``config.json``) is read too.
- ``llm_path``: Gemma 2 2B as one ``.safetensors`` file with ``model.``-prefixed keys (ComfyUI's
  ``gemma_2_2b``), loaded into a Gemma 2 base model (:53-58). Its config and tokenizer are the files
  diffusion-pipe ships in ``configs/gemma_2_2b``: looked for in a ``gemma_2_2b/`` folder beside the file, then
  in the diffusion-pipe checkout (``$DP_STUDIO_DIFFUSION_PIPE/configs/gemma_2_2b``). A transformers Gemma 2
  folder works as well.
- ``vae_path``: the Flux VAE as one file, read with diffusers' single-file loader and the Flux VAE config
  (:48: ``configs/flux_vae``, looked for as ``flux_vae/`` beside the file, then in the checkout), or a diffusers
  VAE folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import accelerate
import torch
from diffusers import AutoencoderKL, Lumina2Transformer2DModel
from safetensors import SafetensorError, safe_open

from trainers.native.families.lumina_2_keys import (
    CheckpointKeyError,
    from_original_checkpoint,
    transformer_config,
)

log = logging.getLogger("trainers.native.families.lumina_2")
COMFY_PREFIX = "model.diffusion_model."  # models/lumina_2.py:72-77
ANCHOR_KEY = "x_embedder.weight"
GEMMA_CONFIG = "gemma_2_2b"
VAE_CONFIG = "flux_vae"
CHECKOUT_ENV = "DP_STUDIO_DIFFUSION_PIPE"


def _open(path: Path, what: str):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{what} is not a readable .safetensors file ({exc})") from None


def load_transformer(path: Path, dtype: torch.dtype, what: str) -> Lumina2Transformer2DModel:
    """The NextDiT as diffusers' Lumina2Transformer2DModel, every parameter in ``dtype`` (:82-83)."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{what} is a folder without config.json: pick the Lumina 2 .safetensors file")
        return Lumina2Transformer2DModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True).eval()
    with _open(path, what) as fh:
        keys = list(fh.keys())
        # models/lumina_2.py:72: a full checkpoint is told by its prefixed x_embedder
        prefix = COMFY_PREFIX if COMFY_PREFIX + ANCHOR_KEY in keys else ""
        if ANCHOR_KEY not in keys and not prefix:
            raise ValueError(f"{what} is not a Lumina 2 transformer (no {ANCHOR_KEY!r} or "
                             f"{COMFY_PREFIX + ANCHOR_KEY!r})")
        names = [k for k in keys if k.startswith(prefix)] if prefix else keys
        if any(k[len(prefix):].startswith("time_caption_embed.") for k in names):
            raise ValueError(f"{what} is in diffusers' key layout: point transformer_path at its folder (with "
                             "config.json), or at the original Lumina 2 file")
        shapes = {k[len(prefix):]: fh.get_slice(k).get_shape() for k in names}
        state = {k[len(prefix):]: fh.get_tensor(k).to(dtype) for k in names}
    try:
        config = transformer_config(shapes)
        state = from_original_checkpoint(state, q_out=config["hidden_size"])
    except CheckpointKeyError as exc:
        raise ValueError(f"{what}: {exc.args[0]}") from None
    with accelerate.init_empty_weights():
        model = Lumina2Transformer2DModel.from_config(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{what} does not fit a Lumina 2 transformer of its own shapes: {exc}") from None
    log.info("loaded %s (%s) as %s", path.name, "ComfyUI checkpoint" if prefix else "original layout", config)
    return model.to(dtype).eval()


def config_folder(path: Path, name: str) -> Path | None:
    """diffusion-pipe's ``configs/<name>``: beside ``path``, else in the diffusion-pipe checkout."""
    places = [path.parent / name]
    if os.environ.get(CHECKOUT_ENV):
        places.append(Path(os.environ[CHECKOUT_ENV]).expanduser() / "configs" / name)
    return next((p for p in places if (p / "config.json").is_file()), None)


def gemma_folder(path: Path, what: str) -> Path:
    """Where the Gemma 2 config and tokenizer are (see the module docstring)."""
    if path.is_dir():
        return path
    folder = config_folder(path, GEMMA_CONFIG)
    if folder is None:
        raise FileNotFoundError(f"{what}: no Gemma 2 config and tokenizer found: put diffusion-pipe's "
                                f"configs/{GEMMA_CONFIG} folder beside the file, or set {CHECKOUT_ENV} (or [studio] "
                                "diffusion_pipe_path) to the diffusion-pipe checkout")
    return folder


def load_tokenizer(path: Path, what: str):
    """Gemma's tokenizer, padding on the right (models/lumina_2.py:50-51)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gemma_folder(path, what), local_files_only=True)
    tokenizer.padding_side = "right"
    return tokenizer


def load_text_encoder(path: Path, dtype: torch.dtype, what: str):
    """Gemma 2's base model in ``dtype`` from ``model.``-prefixed weights (models/lumina_2.py:53-60)."""
    from transformers import AutoConfig, AutoModel

    folder = gemma_folder(path, what)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if path.is_dir():
        return AutoModel.from_pretrained(folder, torch_dtype=dtype, local_files_only=True).eval()
    with accelerate.init_empty_weights():
        model = AutoModel.from_config(config)
    with _open(path, what) as fh:
        keys = set(fh.keys())
        state = {}
        for name, _ in model.named_parameters():
            if "model." + name not in keys:
                raise ValueError(f"{what} has no {'model.' + name!r}: not a Gemma 2 file of this config ({folder})")
            state[name] = fh.get_tensor("model." + name).to(dtype)
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{what} does not fit the Gemma 2 config in {folder}: {exc}") from None
    for name, buffer in model.named_buffers():  # non-persistent buffers (rotary frequencies) are rebuilt
        if buffer.is_meta:
            raise ValueError(f"{what}: {name} was not loaded")
    return model.to(dtype).eval()


def load_vae(path: Path, what: str) -> AutoencoderKL:
    """The Flux VAE in float32, as diffusion-pipe's ``from_single_file`` leaves it (models/lumina_2.py:48)."""
    if path.is_dir():
        return AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32, local_files_only=True).eval()
    folder = config_folder(path, VAE_CONFIG)
    if folder is None:
        raise FileNotFoundError(f"{what}: no Flux VAE config found: put diffusion-pipe's configs/{VAE_CONFIG} "
                                f"folder beside the file, or set {CHECKOUT_ENV} to the diffusion-pipe checkout")
    return AutoencoderKL.from_single_file(str(path), config=str(folder), torch_dtype=torch.float32,
                                          local_files_only=True).eval()
