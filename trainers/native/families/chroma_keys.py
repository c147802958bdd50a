"""Chroma's two key layouts: diffusers names and the original (Flux-style) names ComfyUI and diffusion-pipe use.

Checkpoints: the original model fuses q, k and v (and, in single blocks, the MLP input) into one Linear and names
the RMSNorm weights ``scale``; :func:`from_original_checkpoint` and :func:`to_original_checkpoint` convert whole
state dicts both ways, and :func:`transformer_config` reads a ``ChromaTransformer2DModel`` config off the tensor
shapes (diffusers' own converter assumes the full-size model's widths, so it cannot read small checkpoints).

LoRAs: diffusion-pipe saves Chroma LoRAs as ``diffusion_model.<original module>.lora_A/.lora_B.weight`` with
alpha equal to rank (no alpha tensors, so the scale is 1), one A and one B per fused Linear; the native trainer
trains exactly that (see chroma_lora.py). Earlier studio versions trained a LoRA per diffusers part, saved as a
stacked A with a block-diagonal B (its rank, the sum of the parts', in ``rank_pattern``).
:func:`split_fused_lora` splits both forms into the parts' LoRAs exactly.
"""

from __future__ import annotations

import itertools
import re

import torch

from trainers.chroma_names import (  # noqa: F401 - the name tables are part of this module's API
    _APPROX,
    _APPROX_LINEAR,
    _MODULE,
    BLOCKS,
    DOUBLE_MAP,
    DOUBLE_NORMS,
    FULL_SIZE_ROPE,
    FUSED_PARTS,
    GLOBAL_MAP,
    ORIGINAL_BLOCKS,
    PREFIX,
    SINGLE_MAP,
    SINGLE_NORMS,
    fused_parts,
    original_name,
)
from trainers.native.families.chroma_lora import fused_pair


def diffusers_name(original_module: str) -> str:
    """The diffusers name of an unfused original Linear (``double_blocks.0.img_attn.proj`` -> ``...to_out.0``)."""
    found = _diffusers_params(f"{original_module}.weight")
    if found is None or len(found[0]) != 1:
        raise KeyError(f"no single diffusers Linear for {original_module!r}")
    return found[0][0].removesuffix(".weight")


def _original_param(key: str) -> tuple[str, int | None]:
    """Original checkpoint key and fused slot of one diffusers parameter."""
    module, _, leaf = key.rpartition(".")
    approx = _APPROX.match(module)
    if approx and approx[1] == "norms" and leaf == "weight":
        return f"distilled_guidance_layer.norms.{approx[2]}.scale", None
    kind, _, rest = module.partition(".")
    index, _, suffix = rest.partition(".")
    if kind in BLOCKS and suffix in BLOCKS[kind][2] and leaf == "weight":
        return f"{BLOCKS[kind][0]}.{index}.{BLOCKS[kind][2][suffix]}.scale", None
    target, slot = original_name(module)
    return f"{target}.{leaf}", slot


def to_original_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``ChromaTransformer2DModel`` state dict in the original key layout (fused parts concatenated)."""
    groups: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        target, slot = _original_param(key)
        groups.setdefault(target, {})[slot or 0] = tensor
    return {target: torch.cat([parts[i] for i in sorted(parts)]) if len(parts) > 1 else parts[0]
            for target, parts in groups.items()}


def _reverse_tables() -> dict[tuple[str, str], tuple[str, ...]]:
    """(original block, original suffix) -> diffusers suffixes in slot order, for weights and biases."""
    table: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for block, mapping, _ in BLOCKS.values():
        for suffix, (target, slot) in mapping.items():
            table.setdefault((block, target), []).append((slot or 0, suffix))
    return {key: tuple(s for _, s in sorted(parts)) for key, parts in table.items()}


_REVERSE = _reverse_tables()
_GLOBAL_REVERSE = {v: k for k, v in GLOBAL_MAP.items()}


class CheckpointKeyError(KeyError):
    """Tensors of a checkpoint that are not part of a Chroma transformer."""


def _diffusers_params(key: str) -> tuple[list[str], str] | None:
    """(diffusers keys, "qkv" | "linear1" | "") for one original key, or None when it is not a Chroma key."""
    module, _, leaf = key.rpartition(".")
    approx = _APPROX.match(module)
    if approx:
        if approx[1] == "norms" and leaf == "scale" and not approx[3]:
            return [f"distilled_guidance_layer.norms.{approx[2]}.weight"], ""
        linear = {v: k for k, v in _APPROX_LINEAR.items()}.get(approx[3])
        return ([f"distilled_guidance_layer.layers.{approx[2]}.{linear}.{leaf}"], "") if linear else None
    if module in _GLOBAL_REVERSE:
        return [f"{_GLOBAL_REVERSE[module]}.{leaf}"], ""
    block, _, rest = module.partition(".")
    index, _, suffix = rest.partition(".")
    if block not in ORIGINAL_BLOCKS or not index.isdigit():
        return None
    kind = ORIGINAL_BLOCKS[block]
    if leaf == "scale":
        norms = {v: k for k, v in BLOCKS[kind][2].items()}
        return ([f"{kind}.{index}.{norms[suffix]}.weight"], "") if suffix in norms else None
    parts = _REVERSE.get((block, suffix))
    if parts is None:
        return None
    fused = "linear1" if suffix == "linear1" else ("qkv" if len(parts) > 1 else "")
    return [f"{kind}.{index}.{p}.{leaf}" for p in parts], fused


def from_original_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-layout Chroma state dict (prefix already removed) with diffusers names, fused Linears split.

    Raises :class:`CheckpointKeyError` listing the keys that are not part of a Chroma transformer.
    """
    inner = state_dict["img_in.weight"].shape[0] if "img_in.weight" in state_dict else None
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        found = _diffusers_params(key)
        if found is None:
            unknown.append(key)
            continue
        names, fused = found
        if fused == "qkv":
            pieces = torch.chunk(tensor, 3, dim=0)
        elif fused == "linear1":
            if inner is None:
                raise CheckpointKeyError("img_in.weight is missing: the width of linear1's q/k/v parts is unknown")
            pieces = torch.split(tensor, [inner, inner, inner, tensor.shape[0] - 3 * inner], dim=0)
        else:
            pieces = (tensor,)
        out.update(zip(names, pieces, strict=True))
    if unknown:
        raise CheckpointKeyError(f"{len(unknown)} tensors are not part of a Chroma transformer, e.g. "
                                 f"{', '.join(sorted(unknown)[:5])}")
    return out


def _count(shapes: dict[str, list[int]], pattern: str) -> int:
    found = {int(m[1]) for k in shapes if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def default_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes in Flux's proportions (16, 56, 56 for 128-wide heads), each even, summing to ``head_dim``."""
    side = (7 * head_dim // 16) // 2 * 2
    return head_dim - 2 * side, side, side


def transformer_config(shapes: dict[str, list[int]]) -> dict:
    """``ChromaTransformer2DModel`` arguments read off an original-layout checkpoint's tensor shapes.

    Only the RoPE split of the head is not stored in the weights: :func:`default_rope_axes` gives the released
    model's (16, 56, 56) for its 128-wide heads.
    """
    need = ("img_in.weight", "txt_in.weight", "final_layer.linear.weight", "distilled_guidance_layer.in_proj.weight",
            "double_blocks.0.img_attn.norm.query_norm.scale", "double_blocks.0.img_mlp.0.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise CheckpointKeyError(f"not a complete Chroma transformer: {', '.join(missing)} missing")
    inner, in_channels = shapes["img_in.weight"]
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    if inner % head_dim or shapes["double_blocks.0.img_mlp.0.weight"][0] != 4 * inner:
        raise CheckpointKeyError(f"unexpected Chroma shapes (width {inner}, head {head_dim}, MLP "
                                 f"{shapes['double_blocks.0.img_mlp.0.weight'][0]}): only mlp_ratio 4 is supported")
    out_channels = shapes["final_layer.linear.weight"][0]
    hidden, approx_channels = shapes["distilled_guidance_layer.in_proj.weight"]
    return dict(patch_size=1, in_channels=in_channels,
                out_channels=None if out_channels == in_channels else out_channels,
                num_layers=_count(shapes, r"^double_blocks\.(\d+)\."),
                num_single_layers=_count(shapes, r"^single_blocks\.(\d+)\."),
                attention_head_dim=head_dim, num_attention_heads=inner // head_dim,
                joint_attention_dim=shapes["txt_in.weight"][1], axes_dims_rope=default_rope_axes(head_dim),
                approximator_num_channels=approx_channels, approximator_hidden_dim=hidden,
                approximator_layers=_count(shapes, r"^distilled_guidance_layer\.layers\.(\d+)\."))


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
    names = fused_parts(target) or ()
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

    A fused Linear whose parts share one A (this trainer's LoRA, diffusion-pipe's parametrisation) is saved as
    diffusion-pipe saves it: that A ``[r, in]`` and the parts' B rows ``[sum(out), r]``. Parts with their own A
    (LoRAs of earlier studio versions) are stacked: A ``[n*r, in]`` and a block-diagonal B, their rank recorded
    in ``rank_pattern``/``alpha_pattern`` (alpha always equals rank). Returns the tensors and those two fields.
    """
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    for target, parts in sorted(_group(state_dict).items()):
        names = fused_parts(target)
        if names:
            pair = fused_pair(parts, names)
            a, b = pair if pair is not None else _fuse(target, parts, out_features)
            if pair is None:
                rank_pattern[target] = a.shape[0]
        else:
            (only,) = parts.values()
            a, b = only["A"], only["B"]
        tensors[f"{PREFIX}{target}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{target}.lora_B.weight"] = b.contiguous()
    return tensors, {"rank_pattern": rank_pattern, "alpha_pattern": dict(rank_pattern)}


def _block_diagonal(rows: list[torch.Tensor], chosen: tuple[int, ...], rank: int) -> bool:
    """Whether B's row blocks use only the column block assigned to them (unchosen parts: no columns)."""
    for i, block in enumerate(rows):
        if i not in chosen:
            if torch.count_nonzero(block):
                return False
            continue
        j = chosen.index(i)
        outside = torch.cat([block[:, :j * rank], block[:, (j + 1) * rank:]], dim=1)
        if torch.count_nonzero(outside):
            return False
    return True


def split_fused_lora(module: str, a: torch.Tensor, b: torch.Tensor, outs: list[int],
                     rank: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Rank-``rank`` LoRAs of the parts of a fused Linear whose LoRA is ``(a, b)``, exactly (None: no LoRA).

    A fused rank of ``rank`` is a LoRA trained on the fused Linear: every part gets the same A and its rows of
    B. A multiple of ``rank`` is :func:`to_original_lora`'s stacking: the parts' A and B come back unchanged.
    """
    fused_rank = a.shape[0]
    rows = list(torch.split(b, outs, dim=0))
    if fused_rank == rank:
        return [(a, r) for r in rows]
    if rank <= 0 or fused_rank % rank or fused_rank // rank > len(outs):
        raise ValueError(f"{module}: a LoRA of rank {fused_rank} does not split into rank-{rank} parts "
                         f"(expected {rank} or a multiple up to {rank * len(outs)})")
    for chosen in itertools.combinations(range(len(outs)), fused_rank // rank):
        if _block_diagonal(rows, chosen, rank):
            result: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(outs)
            for j, i in enumerate(chosen):
                cols = slice(j * rank, (j + 1) * rank)
                result[i] = (a[cols], rows[i][:, cols])
            return result
    raise ValueError(f"{module}: the rank-{fused_rank} LoRA is not block-diagonal over its {len(outs)} parts, so it "
                     f"cannot be split into rank-{rank} LoRAs exactly")
