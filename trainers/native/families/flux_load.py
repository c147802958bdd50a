"""Loading a Flux transformer from what the ``[model]`` table names: ``diffusers_path``'s ``transformer/`` folder,
or ``transformer_path``, one original-layout (BFL) ``.safetensors`` file, bare or with ComfyUI's prefix.

diffusion-pipe reads such a file with diffusers' ``from_single_file`` and the full-size dev or schnell config
(``guidance_in`` present or not); diffusers' converter assumes the full-size widths, so here the config is read
off the tensor shapes (which gives the released configs for the released files) and the keys are converted with
the name tables Flux shares with Chroma (trainers/chroma_names.py) plus Flux's modulation and embedding layers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import accelerate
import torch
from diffusers import FluxTransformer2DModel
from safetensors import SafetensorError, safe_open

from trainers.native.families.chroma_keys import (
    CheckpointKeyError,
    _count,
    default_rope_axes,
    from_original_checkpoint,
    to_original_checkpoint,
)

log = logging.getLogger("trainers.native.families.flux")
ANCHOR_KEY = "double_blocks.0.img_mod.lin.weight"  # in every Flux checkpoint (Chroma has no modulation layers)
SCALED_FP8_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".comfy_quant")
# Original modules of Flux that Chroma does not have -> their diffusers names ("{}" is the block index).
FLUX_ONLY = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
    "double_blocks.{}.img_mod.lin": "transformer_blocks.{}.norm1.linear",
    "double_blocks.{}.txt_mod.lin": "transformer_blocks.{}.norm1_context.linear",
    "single_blocks.{}.modulation.lin": "single_transformer_blocks.{}.norm.linear",
}
SWAPPED = "final_layer.adaLN_modulation.1"  # the original's (shift, scale) halves are diffusers' (scale, shift)


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _flux_only(key: str, table: dict[str, str]) -> str | None:
    """The other layout's name of one Flux-only parameter key (``table``: FLUX_ONLY or its inverse), or None."""
    module, _, leaf = key.rpartition(".")
    for source, target in table.items():
        head, _, tail = source.partition("{}")
        if module == source:
            return f"{target}.{leaf}"
        if tail and module.startswith(head) and module.endswith(tail):
            index = module[len(head):len(module) - len(tail)]
            if index.isdigit():
                return f"{target.replace('{}', index)}.{leaf}"
    return None


def from_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-layout Flux state dict (prefix removed) with diffusers names, fused Linears split."""
    out, shared = {}, {}
    for key, tensor in state.items():
        name = _flux_only(key, FLUX_ONLY)
        if name is None:
            shared[key] = tensor
        else:
            out[name] = _swap_halves(tensor) if key.startswith(SWAPPED) else tensor
    return out | from_original_checkpoint(shared)


def to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Flux state dict in the original (BFL) layout: the inverse of :func:`from_original`."""
    inverse = {v: k for k, v in FLUX_ONLY.items()}
    out, shared = {}, {}
    for key, tensor in state.items():
        name = _flux_only(key, inverse)
        if name is None:
            shared[key] = tensor
        else:
            out[name] = _swap_halves(tensor) if name.startswith(SWAPPED) else tensor
    return out | to_original_checkpoint(shared)


def transformer_config(shapes: dict[str, list[int]], beside: dict | None = None) -> dict:
    """``FluxTransformer2DModel`` arguments read off an original-layout checkpoint's shapes; ``beside`` (a diffusers
    config of the same model) may give the RoPE axes, the one thing the weights do not store."""
    need = ("img_in.weight", "txt_in.weight", "vector_in.in_layer.weight", "final_layer.linear.weight",
            "double_blocks.0.img_attn.norm.query_norm.scale", "double_blocks.0.img_mlp.0.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise CheckpointKeyError(f"not a complete Flux transformer: {', '.join(missing)} missing")
    inner, in_channels = shapes["img_in.weight"]
    head = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    if inner % head or shapes["double_blocks.0.img_mlp.0.weight"][0] != 4 * inner:
        raise CheckpointKeyError(f"unexpected Flux shapes (width {inner}, head {head}): only mlp_ratio 4 is supported")
    out_channels = shapes["final_layer.linear.weight"][0]
    axes = tuple(beside["axes_dims_rope"]) if beside and "axes_dims_rope" in beside else default_rope_axes(head)
    if sum(axes) != head:
        raise CheckpointKeyError(f"RoPE axes {axes} do not add up to the head width {head}")
    return dict(patch_size=1, in_channels=in_channels,
                out_channels=None if out_channels == in_channels else out_channels,
                num_layers=_count(shapes, r"^double_blocks\.(\d+)\."),
                num_single_layers=_count(shapes, r"^single_blocks\.(\d+)\."),
                attention_head_dim=head, num_attention_heads=inner // head,
                joint_attention_dim=shapes["txt_in.weight"][1],
                pooled_projection_dim=shapes["vector_in.in_layer.weight"][1],
                guidance_embeds="guidance_in.in_layer.weight" in shapes, axes_dims_rope=axes)


def load_transformer(path: Path, dtype: torch.dtype, diffusers_root: Path) -> FluxTransformer2DModel:
    """A diffusers transformer folder, or one original-layout file (config from its shapes)."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: set [model] diffusers_path to a Flux diffusers "
                                    "folder with transformer/, or [model] transformer_path to a Flux .safetensors file")
        return FluxTransformer2DModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    return load_transformer_file(path, dtype, diffusers_root / "transformer" / "config.json")


def _prefix(keys: list[str], what: str) -> str:
    """The prefix in front of the transformer's keys ("", ``diffusion_model.``, ``model.diffusion_model.``)."""
    found = [k[:-len(ANCHOR_KEY)] for k in keys if k.endswith(ANCHOR_KEY)]
    if len(found) != 1 or (found[0] and not found[0].endswith(".")):
        raise ValueError(f"{what} is not a Flux transformer in the original layout (no {ANCHOR_KEY}); pick a Flux "
                         ".safetensors file (keys like double_blocks.0.img_attn.qkv.weight)")
    if any(k.startswith(found[0] + "transformer_blocks.") for k in keys):
        raise ValueError(f"{what} is in diffusers' key layout: put it in a transformer/ folder with its config.json")
    scaled = [k for k in keys if k.endswith(SCALED_FP8_SUFFIXES) or k == "scaled_fp8"]
    if scaled:
        raise ValueError(f"{what} is an fp8_scaled checkpoint ({scaled[0]!r}): its float8 weights need per-tensor "
                         "scales the native trainer does not apply. Pick the bf16 file and set [model] "
                         "transformer_dtype = 'float8'")
    return found[0]


def load_transformer_file(path: Path, dtype: torch.dtype, beside_config: Path) -> FluxTransformer2DModel:
    """A Flux transformer from one original-layout file in ``dtype``; ``beside_config``, when it exists, gives the
    RoPE axes (diffusers_path's transformer/config.json)."""
    what = f"[model] transformer_path = {str(path)!r}"
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{what} is not a readable .safetensors file ({exc})") from None
    beside = json.loads(beside_config.read_text(encoding="utf-8")) if beside_config.is_file() else None
    with handle as fh:
        keys = list(fh.keys())
        prefix = _prefix(keys, what)
        names = [k for k in keys if k.startswith(prefix)]
        try:
            config = transformer_config({k[len(prefix):]: fh.get_slice(k).get_shape() for k in names}, beside)
            state = from_original({k[len(prefix):]: fh.get_tensor(k).to(dtype) for k in names})
        except CheckpointKeyError as exc:
            raise ValueError(f"{what}: {exc.args[0]}") from None
    with accelerate.init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{what} does not fit a Flux transformer of its own shapes: {exc}") from None
    log.info("loaded %s (%s) as %s", path.name, prefix or "original layout", config)
    return model.to(dtype).eval()
