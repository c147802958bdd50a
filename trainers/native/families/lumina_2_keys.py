"""Lumina 2 names: the original NextDiT layout (what diffusion-pipe trains and saves, and what ComfyUI reads) and
diffusers' ``Lumina2Transformer2DModel``.

diffusion-pipe trains Lumina-Image-2.0's own ``NextDiT`` (models/lumina_2.py:20, 63-68). Its blocks
(``JointTransformerBlock``: ``layers.N``, ``noise_refiner.N``, ``context_refiner.N``) hold the Linears
``attention.qkv`` (q, k and v in one), ``attention.out``, ``feed_forward.w1/w2/w3`` and, in the modulated blocks,
``adaLN_modulation.1``. diffusers splits ``qkv`` into ``attn.to_q``, ``attn.to_k`` and ``attn.to_v`` and renames
the rest; the table below maps the names both ways, for checkpoints and for LoRAs.
"""

from __future__ import annotations

import re

import torch

BLOCK_LISTS = ("layers", "noise_refiner", "context_refiner")
# Inside a block: original suffix -> diffusers suffix (one per Linear or norm), ``attention.qkv`` handled apart.
BLOCK_NAMES = {
    "attention.out": "attn.to_out.0",
    "attention.q_norm": "attn.norm_q",
    "attention.k_norm": "attn.norm_k",
    "feed_forward.w1": "feed_forward.linear_1",
    "feed_forward.w2": "feed_forward.linear_2",
    "feed_forward.w3": "feed_forward.linear_3",
    "adaLN_modulation.1": "norm1.linear",
    "attention_norm2": "norm2",
    "ffn_norm1": "ffn_norm1",
    "ffn_norm2": "ffn_norm2",
}
QKV = "attention.qkv"
QKV_PARTS = ("attn.to_q", "attn.to_k", "attn.to_v")
# Outside the blocks.
TOP_NAMES = {
    "x_embedder": "x_embedder",
    "t_embedder.mlp.0": "time_caption_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_caption_embed.timestep_embedder.linear_2",
    "cap_embedder.0": "time_caption_embed.caption_embedder.0",
    "cap_embedder.1": "time_caption_embed.caption_embedder.1",
    "final_layer.adaLN_modulation.1": "norm_out.linear_1",
    "final_layer.linear": "norm_out.linear_2",
}
UNUSED = ("norm_final.weight",)  # in the original checkpoints, not used by the model (nor by diffusers)
# The Linears diffusion-pipe's LoRA targets in each block (models/lumina_2.py:41, models/base.py:262-270).
LORA_LINEARS = (QKV, "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.1")
_BLOCK = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")


class CheckpointKeyError(ValueError):
    """A checkpoint key that is not part of a Lumina 2 NextDiT."""


def _attention_norm1(block: str) -> str:
    """``attention_norm1`` is the RMSNorm inside ``norm1`` in modulated blocks, ``norm1`` itself otherwise."""
    return "norm1" if block == "context_refiner" else "norm1.norm"


def to_diffusers_module(original: str) -> tuple[str, ...]:
    """An original module name -> its diffusers module(s) (three for ``attention.qkv``)."""
    if original in TOP_NAMES:
        return (TOP_NAMES[original],)
    match = _BLOCK.match(original)
    if not match:
        raise KeyError(original)
    block, index, rest = match.groups()
    if rest == QKV:
        return tuple(f"{block}.{index}.{part}" for part in QKV_PARTS)
    if rest == "attention_norm1":
        return (f"{block}.{index}.{_attention_norm1(block)}",)
    if rest not in BLOCK_NAMES:
        raise KeyError(original)
    return (f"{block}.{index}.{BLOCK_NAMES[rest]}",)


def to_original_module(diffusers: str) -> tuple[str, int | None]:
    """A diffusers module -> (its original module, which part of ``attention.qkv`` it is, or None)."""
    for original, name in TOP_NAMES.items():
        if diffusers == name:
            return original, None
    match = _BLOCK.match(diffusers)
    if not match:
        raise KeyError(diffusers)
    block, index, rest = match.groups()
    if rest in QKV_PARTS:
        return f"{block}.{index}.{QKV}", QKV_PARTS.index(rest)
    if rest == _attention_norm1(block):
        return f"{block}.{index}.attention_norm1", None
    for original, name in BLOCK_NAMES.items():
        if rest == name:
            return f"{block}.{index}.{original}", None
    raise KeyError(diffusers)


def from_original_checkpoint(state: dict[str, torch.Tensor], q_out: int) -> dict[str, torch.Tensor]:
    """An original-layout state dict (no prefix) -> diffusers names; ``qkv`` split at ``q_out`` rows and two equal
    k / v parts. Raises CheckpointKeyError for a key that is not Lumina 2's."""
    out = {}
    for key, tensor in state.items():
        if key in UNUSED:
            continue
        module, _, param = key.rpartition(".")
        try:
            targets = to_diffusers_module(module)
        except KeyError:
            raise CheckpointKeyError(f"{key!r} is not a key of a Lumina 2 (NextDiT) transformer") from None
        if len(targets) == 3:
            kv = (tensor.shape[0] - q_out) // 2
            for target, part in zip(targets, torch.split(tensor, [q_out, kv, kv]), strict=True):
                out[f"{target}.{param}"] = part
        else:
            out[f"{targets[0]}.{param}"] = tensor
    return out


def to_original_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`from_original_checkpoint` (``qkv`` concatenated in q, k, v order)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, list] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        original, slot = to_original_module(module)
        if slot is None:
            out[f"{original}.{param}"] = tensor
        else:
            parts.setdefault(f"{original}.{param}", [None] * 3)[slot] = tensor
    for key, pieces in parts.items():
        out[key] = torch.cat(pieces, dim=0)
    return out


def transformer_config(shapes: dict[str, list[int]]) -> dict:
    """``Lumina2Transformer2DModel`` config read off an original-layout checkpoint's tensor shapes."""
    try:
        dim, patch_in = shapes["x_embedder.weight"]
        head_dim = shapes["layers.0.attention.q_norm.weight"][0]
        qkv_out = shapes["layers.0.attention.qkv.weight"][0]
        hidden = shapes["layers.0.feed_forward.w1.weight"][0]
        cap_feat_dim = shapes["cap_embedder.1.weight"][1]
        out_channels = shapes["final_layer.linear.weight"][0]
    except KeyError as exc:
        raise CheckpointKeyError(f"no {exc.args[0]!r}: not a Lumina 2 (NextDiT) transformer") from None
    count = {block: len({k.split(".")[1] for k in shapes if k.startswith(block + ".")}) for block in BLOCK_LISTS}
    if count["noise_refiner"] != count["context_refiner"]:
        raise CheckpointKeyError(f"{count['noise_refiner']} noise refiner blocks but {count['context_refiner']} "
                                 "context refiner blocks")
    heads = dim // head_dim
    patch = 2
    in_channels = patch_in // (patch * patch)
    config = dict(patch_size=patch, in_channels=in_channels, out_channels=out_channels // (patch * patch),
                  hidden_size=dim, num_layers=count["layers"], num_refiner_layers=count["noise_refiner"],
                  num_attention_heads=heads, num_kv_heads=(qkv_out - dim) // (2 * head_dim),
                  cap_feat_dim=cap_feat_dim, axes_dim_rope=axes_dims(head_dim))
    if hidden != 256 * ((4 * dim + 255) // 256):  # diffusers' LuminaFeedForward rounds 4 * dim up to multiple_of
        # multiple_of = hidden and a multiplier giving int(1.5) = 1 reproduce any width
        config |= dict(multiple_of=hidden, ffn_dim_multiplier=1.5 / (4 * dim))
    return config


def axes_dims(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes for a head width: Lumina 2's (32, 32, 32) at 96, else three even thirds (the rest first)."""
    third = (head_dim // 3) // 2 * 2
    return (head_dim - 2 * third, third, third)


# ----- LoRA names ---------------------------------------------------------------------------------------------
def lora_targets(transformer: torch.nn.Module) -> list[str]:
    """The diffusers Linears that are diffusion-pipe's LoRA targets (every Linear inside a JointTransformerBlock),
    LoRA Linears left out."""
    names = []
    for name, module in transformer.named_modules():
        if not isinstance(module, torch.nn.Linear) or ".lora_" in name:
            continue
        name = name.removesuffix(".base_layer")
        try:
            original, _ = to_original_module(name)
        except KeyError:
            continue
        if _BLOCK.match(original) and original.split(".", 2)[2] in LORA_LINEARS:
            names.append(name)
    return names


def to_original_lora(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's LoRA state dict on diffusers names (``layers.0.attn.to_q.lora_A.weight``) -> original module names
    without a prefix: q, k and v share one A (the same tensor in the trained model), their Bs are stacked."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, list] = {}
    for key, tensor in state_dict.items():
        module, kind = key.split(".lora_")
        original, slot = to_original_module(module)
        if slot is None:
            out[f"{original}.lora_{kind}"] = tensor
        else:
            qkv.setdefault(f"{original}.lora_{kind}", [None] * 3)[slot] = tensor
    for key, parts in qkv.items():
        if any(p is None for p in parts):
            raise ValueError(f"{key}: the LoRA covers only some of q, k and v")
        if key.endswith("lora_A.weight"):
            if not all(torch.equal(parts[0], p) for p in parts[1:]):
                raise ValueError(f"{key}: q, k and v do not share one LoRA A")
            out[key] = parts[0]
        else:
            out[key] = torch.cat(parts, dim=0)
    return out


def split_qkv_lora(a: torch.Tensor, b: torch.Tensor, outs: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An ``attention.qkv`` LoRA -> (A, B) for each of to_q, to_k, to_v (A shared, B split by rows)."""
    if b.shape[0] != sum(outs):
        raise ValueError(f"a qkv LoRA B of {b.shape[0]} rows does not fit q/k/v of {outs} rows")
    return [(a, part) for part in torch.split(b, outs, dim=0)]


def to_diffusers_lora(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA in original names without a prefix -> diffusers module names; ``attention.qkv``'s B split into q
    (as wide as the block) and equal k / v parts, its A repeated."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        module, kind = key.split(".lora_")
        parts = to_diffusers_module(module)
        if len(parts) == 1:
            out[f"{parts[0]}.lora_{kind}"] = tensor
        elif kind.startswith("A"):
            out.update({f"{part}.lora_{kind}": tensor.clone() for part in parts})
        else:
            width = state_dict[f"{module}.lora_A.weight"].shape[1]
            kv = (tensor.shape[0] - width) // 2
            for part, rows in zip(parts, torch.split(tensor, [width, kv, kv]), strict=True):
                out[f"{part}.lora_{kind}"] = rows
    return out
