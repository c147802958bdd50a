"""Diffusers Chroma LoRA names -> the original Chroma (Flux-style) module names ComfyUI loads.

diffusion-pipe saves Chroma LoRAs as ``diffusion_model.<original module>.lora_A/.lora_B.weight`` with alpha
equal to rank (no alpha tensors, so the scale is 1). The original model fuses q, k and v (and, in single
blocks, the MLP input) into one Linear. A LoRA on the separate diffusers Linears is exactly a LoRA on the
fused Linear whose A matrices are stacked and whose B matrices form a block diagonal: its rank is the sum of
the parts' ranks, and ``rank_pattern`` in adapter_config.json records that per module.
"""

from __future__ import annotations

import re

import torch

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
_MODULE = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def original_name(diffusers_module: str) -> tuple[str, int | None]:
    """The original module name and fused slot for a diffusers block module name."""
    kind, index, suffix = diffusers_module.split(".", 2)
    table, block = (DOUBLE_MAP, "double_blocks") if kind == "transformer_blocks" else (SINGLE_MAP, "single_blocks")
    if suffix not in table:
        raise KeyError(f"no original Chroma name known for {diffusers_module!r}")
    target, slot = table[suffix]
    return f"{block}.{index}.{target}", slot


def _group(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """original module -> diffusers module -> {"A": tensor, "B": tensor}."""
    groups: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, tensor in state_dict.items():
        match = _MODULE.match(key)
        if not match:
            raise KeyError(f"unexpected LoRA key {key!r} (only block Linears are trained)")
        module = f"{match[1]}.{match[2]}.{match[3]}"
        target, _ = original_name(module)
        groups.setdefault(target, {}).setdefault(module, {})[match[4]] = tensor
    return groups


def _fuse(target: str, parts: dict[str, dict[str, torch.Tensor]],
          out_features: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack A and block-diagonalise B over the fused parts; a part without LoRA contributes zero rows."""
    block, index, fused = target.split(".", 2)
    kind = "transformer_blocks" if block == "double_blocks" else "single_transformer_blocks"
    names = [f"{kind}.{index}.{suffix}" for suffix in FUSED_PARTS[fused]]
    a_parts = [parts[n]["A"] for n in names if n in parts]
    b_blocks = []
    for n in names:
        if n in parts:
            b_blocks.append(parts[n]["B"])
        else:
            b_blocks.append(torch.zeros(out_features[n], 0, dtype=a_parts[0].dtype))
    return torch.cat(a_parts, dim=0), torch.block_diag(*b_blocks)


def to_original_lora(state_dict: dict[str, torch.Tensor],
                     out_features: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """Convert PEFT LoRA weights (diffusers names, adapter name stripped) to diffusion-pipe's Chroma layout.

    Returns the tensors to save and the adapter_config fields that depend on the layout
    (``target_modules``, ``rank_pattern``, ``alpha_pattern``; alpha always equals rank).
    """
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    for target, parts in sorted(_group(state_dict).items()):
        if target.split(".", 2)[2] in FUSED_PARTS:
            a, b = _fuse(target, parts, out_features)
            rank_pattern[target] = a.shape[0]
        else:
            (only,) = parts.values()
            a, b = only["A"], only["B"]
        tensors[f"{PREFIX}{target}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{target}.lora_B.weight"] = b.contiguous()
    modules = sorted({t.split(".", 2)[2] for t in _group(state_dict)})
    extra = {"target_modules": modules, "rank_pattern": rank_pattern, "alpha_pattern": dict(rank_pattern)}
    return tensors, extra
