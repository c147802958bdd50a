"""Loading a Chroma transformer from what ``[model] transformer_path`` names: a diffusers folder, or one
``.safetensors`` file in the original layout (bare or with the ComfyUI prefix), its architecture read off the
tensor shapes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import accelerate
import torch
from diffusers import ChromaTransformer2DModel
from safetensors import SafetensorError, safe_open

from trainers.checkpoint_probe import ProbeError, probe_transformer
from trainers.native.families.chroma_keys import (
    CheckpointKeyError,
    from_original_checkpoint,
    transformer_config,
)

log = logging.getLogger("trainers.native.families.chroma")  # the family's logger, as before
ANCHOR_KEY = "distilled_guidance_layer.in_proj.weight"  # present in every Chroma checkpoint, whatever the prefix
SCALED_FP8_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".comfy_quant")


def load_transformer(path: Path, dtype: torch.dtype) -> ChromaTransformer2DModel:
    """A diffusers folder, or a single original/ComfyUI-layout ``.safetensors`` file (config from its shapes)."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"[model] transformer_path = {str(path)!r} is a folder without config.json: pick "
                                    "the Chroma .safetensors file, or a diffusers transformer folder")
        return ChromaTransformer2DModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    return load_transformer_file(path, dtype)


def _describe(path: Path) -> str:
    try:
        return probe_transformer(path).summary()
    except ProbeError as exc:
        return str(exc)


def _checkpoint_prefix(keys: list[str], path: Path, what: str) -> str:
    """The prefix in front of the transformer's keys ("", ``diffusion_model.``, ``model.diffusion_model.``)."""
    found = [k[:-len(ANCHOR_KEY)] for k in keys if k.endswith(ANCHOR_KEY)]
    if len(found) != 1 or (found[0] and not found[0].endswith(".")):
        raise ValueError(f"{what} is not a Chroma transformer (found: {_describe(path)}); pick a Chroma "
                         ".safetensors file (keys like double_blocks.0.img_attn.qkv.weight)")
    prefix = found[0]
    if any(k.startswith(prefix + "transformer_blocks.") for k in keys):
        raise ValueError(f"{what} is in diffusers' key layout: set transformer_path to the folder holding it and "
                         "its config.json")
    return prefix


def _reject_scaled_fp8(keys: list[str], what: str) -> None:
    """ComfyUI's fp8_scaled files cannot be read as plain weights (diffusion-pipe refuses them too)."""
    scaled = [k for k in keys if k.endswith(SCALED_FP8_SUFFIXES) or k == "scaled_fp8"]
    if scaled:
        raise ValueError(f"{what} is an fp8_scaled checkpoint ({len(scaled)} scale tensors such as {scaled[0]!r}): "
                         "its float8 weights only mean something with per-tensor scales, which the native trainer "
                         "does not apply. Pick the bf16 Chroma file (or an unscaled float8 one) and set [model] "
                         "transformer_dtype = 'float8' to keep the weights in float8")


def _checkpoint_config(shapes: dict[str, list[int]], path: Path, what: str) -> dict:
    """The model config read off the shapes; a diffusers ``config.json`` beside the file may set the RoPE axes
    (the one thing shapes do not tell) and must agree with the shapes on everything else."""
    try:
        config = transformer_config(shapes)
    except CheckpointKeyError as exc:
        raise ValueError(f"{what}: {exc.args[0]}") from None
    beside = path.parent / "config.json"
    if beside.is_file():
        stored = json.loads(beside.read_text(encoding="utf-8"))
        if stored.get("_class_name") == ChromaTransformer2DModel.__name__:
            for key, value in config.items():
                if key != "axes_dims_rope" and key in stored and stored[key] != value:
                    raise ValueError(f"{what}: {beside} says {key} = {stored[key]!r} but the weights have {value!r}")
            config["axes_dims_rope"] = tuple(stored.get("axes_dims_rope", config["axes_dims_rope"]))
    if sum(config["axes_dims_rope"]) != config["attention_head_dim"]:
        raise ValueError(f"{what}: RoPE axes {config['axes_dims_rope']} do not add up to the head width "
                         f"{config['attention_head_dim']}")
    return config


def load_transformer_file(path: Path, dtype: torch.dtype) -> ChromaTransformer2DModel:
    """A Chroma transformer from one original-layout file, with or without ComfyUI's prefix, in ``dtype``."""
    what = f"[model] transformer_path = {str(path)!r}"
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{what} is not a readable .safetensors file ({exc})") from None
    with handle as fh:
        keys = list(fh.keys())
        _reject_scaled_fp8(keys, what)
        prefix = _checkpoint_prefix(keys, path, what)
        names = [k for k in keys if k.startswith(prefix)]
        config = _checkpoint_config({k[len(prefix):]: fh.get_slice(k).get_shape() for k in names}, path, what)
        state = {k[len(prefix):]: fh.get_tensor(k).to(dtype) for k in names}
    try:
        state = from_original_checkpoint(state)
    except CheckpointKeyError as exc:
        raise ValueError(f"{what}: {exc.args[0]}") from None
    with accelerate.init_empty_weights():
        model = ChromaTransformer2DModel.from_config(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{what} does not fit a Chroma transformer of its own shapes: {exc}") from None
    log.info("loaded %s (%s) as %s", path.name, prefix or "original layout", config)
    return model.to(dtype).eval()
