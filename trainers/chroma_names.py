"""Chroma's module names in its two key layouts, as tables (no torch: the studio reads LoRA and checkpoint
headers with them). Diffusers splits what the original (Flux-style) model fuses: q, k and v (and, in single
blocks, the MLP input) are one Linear in the original and ComfyUI/diffusion-pipe naming.
"""

from __future__ import annotations

import re

PREFIX = "diffusion_model."

# diffusers suffix inside a double block -> (original suffix, slot in the fused Linear or None)
DOUBLE_MAP: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", None),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_add_out": ("txt_attn.proj", None),
    "ff.net.0.proj": ("img_mlp.0", None),
    "ff.net.2": ("img_mlp.2", None),
    "ff_context.net.0.proj": ("txt_mlp.0", None),
    "ff_context.net.2": ("txt_mlp.2", None),
}
SINGLE_MAP: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
}
# The parts of each fused original Linear, in output order.
FUSED_PARTS = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
}
# RMSNorm weights (diffusers ``<module>.weight`` <-> original ``<module>.scale``).
DOUBLE_NORMS = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
# Modules outside the blocks whose names differ.
GLOBAL_MAP = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
              "distilled_guidance_layer.in_proj": "distilled_guidance_layer.in_proj",
              "distilled_guidance_layer.out_proj": "distilled_guidance_layer.out_proj"}
_APPROX = re.compile(r"^distilled_guidance_layer\.(layers|norms)\.(\d+)\.?(.*)$")
_APPROX_LINEAR = {"linear_1": "in_layer", "linear_2": "out_layer"}
BLOCKS = {"transformer_blocks": ("double_blocks", DOUBLE_MAP, DOUBLE_NORMS),
          "single_transformer_blocks": ("single_blocks", SINGLE_MAP, SINGLE_NORMS)}
ORIGINAL_BLOCKS = {v[0]: k for k, v in BLOCKS.items()}
_MODULE = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)\.lora_([AB])\.weight$")
# diffusers' ChromaTransformer2DModel defaults are the released model: what a full-size checkpoint gets.
FULL_SIZE_ROPE = (16, 56, 56)


def original_name(diffusers_module: str) -> tuple[str, int | None]:
    """The original module name and fused slot for a diffusers Linear (blocks, embedders, approximator)."""
    if diffusers_module in GLOBAL_MAP:
        return GLOBAL_MAP[diffusers_module], None
    approx = _APPROX.match(diffusers_module)
    if approx and approx[1] == "layers" and approx[3] in _APPROX_LINEAR:
        return f"distilled_guidance_layer.layers.{approx[2]}.{_APPROX_LINEAR[approx[3]]}", None
    kind, _, rest = diffusers_module.partition(".")
    index, _, suffix = rest.partition(".")
    if kind not in BLOCKS or not index.isdigit() or suffix not in BLOCKS[kind][1]:
        raise KeyError(f"no original Chroma name known for {diffusers_module!r}")
    target, slot = BLOCKS[kind][1][suffix]
    return f"{BLOCKS[kind][0]}.{index}.{target}", slot


def fused_parts(original_module: str) -> tuple[str, ...] | None:
    """The diffusers modules of a fused original Linear, in output order (None when it is not fused)."""
    block, _, rest = original_module.partition(".")
    index, _, suffix = rest.partition(".")
    if block not in ORIGINAL_BLOCKS or suffix not in FUSED_PARTS:
        return None
    return tuple(f"{ORIGINAL_BLOCKS[block]}.{index}.{part}" for part in FUSED_PARTS[suffix])


def excluded(exclude: str | list[str] | None, original_module: str) -> bool:
    """peft's ``exclude_modules`` rule, as diffusion-pipe hands ``[adapter] exclude_modules`` to peft
    (diffusion-pipe models/base.py:283), applied to an original-layout module name: a string is a regular
    expression the whole name must match; a list item is the name or a dotted suffix of it."""
    if not exclude:
        return False
    if isinstance(exclude, str):
        return re.fullmatch(exclude, original_module) is not None
    return any(original_module == item or original_module.endswith(f".{item}") for item in exclude)


def kept_targets(targets: list[str], exclude: str | list[str] | None) -> tuple[list[str], list[str]]:
    """The diffusers Linears of ``targets`` whose original Linear ``exclude`` leaves in (the parts of a fused
    Linear stay or go together), and the list items of ``exclude`` that name no original module."""
    if isinstance(exclude, str):
        try:
            re.compile(exclude)
        except re.error as exc:
            raise ValueError(f"[adapter] exclude_modules = {exclude!r} is not a valid regular expression ({exc}); "
                             "give a regex matching whole module names, or a list of module names") from None
    originals = {target: original_name(target)[0] for target in targets}
    kept = [t for t in targets if not excluded(exclude, originals[t])]
    unused = [] if not exclude or isinstance(exclude, str) else [
        item for item in exclude if not any(excluded([item], name) for name in originals.values())]
    return kept, unused
