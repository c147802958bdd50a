"""diffusion-pipe's Chroma LoRA on diffusers' split Linears: one A per fused original Linear, shared by its parts.

diffusion-pipe attaches peft's LoRA to every Linear inside the original model's ``DoubleStreamBlock`` and
``SingleStreamBlock`` (models/chroma.py:134 ``adapter_target_modules``, models/base.py:262-270), where q, k and v
(and, in single blocks, the MLP input) are one Linear: ``img_attn.qkv``, ``txt_attn.qkv``, ``linear1``. Such a
Linear gets one rank-r ``A [r, in]`` and one ``B [sum(out), r]``. diffusers' ``ChromaTransformer2DModel`` splits
those Linears into parts that all read the same input, so the same LoRA is: one A shared by the parts (the same
``nn.Parameter`` object), and each part's B is its rows of the fused B. :func:`tie_fused_lora` makes peft's
per-part LoRA into exactly that, dropout included (one mask per fused Linear, as one peft dropout call there).

Files saved by earlier studio versions hold a LoRA per part, stacked into a rank-``n*r`` A with a block-diagonal B
(recorded in ``rank_pattern``). They load exactly for sampling, export, key checks and ``fuse_adapters``;
``init_from_existing`` turns them into the shared-A form with :func:`shared_a_form` (exact when the parts' LoRAs
span at most r directions, else the best rank-r fit, with its error logged).
"""

from __future__ import annotations

import logging

import torch

from trainers.chroma_names import BLOCKS, fused_parts

log = logging.getLogger(__name__)


def fused_groups(modules: dict[str, torch.nn.Module]) -> dict[str, tuple[str, ...]]:
    """Original fused Linear -> its diffusers parts, for every fused Linear of the model's blocks."""
    groups = {}
    for kind, (block, mapping, _) in BLOCKS.items():
        fused = sorted({target for target, slot in mapping.values() if slot is not None})
        index = 0
        while f"{kind}.{index}" in modules:
            for suffix in fused:
                parts = fused_parts(f"{block}.{index}.{suffix}")
                if parts and all(p in modules for p in parts):
                    groups[f"{block}.{index}.{suffix}"] = parts
            index += 1
    return groups


class SharedDropout(torch.nn.Module):
    """One dropout mask for the ``n`` parts of a fused Linear: the first part's call draws it, the next ``n - 1``
    calls reuse it (the parts are called one after another on the same input, also when activation
    checkpointing recomputes a block). After the last part the mask is let go: autograd holds what backward
    needs, so no activation-sized mask outlives its step (or sits in memory through a preview round)."""

    def __init__(self, p: float, parts: int):
        super().__init__()
        self.p, self.parts = p, parts
        self._mask: torch.Tensor | None = None
        self._uses = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self._mask is None or self._mask.shape != x.shape or self._mask.device != x.device:
            keep = torch.empty_like(x).bernoulli_(1 - self.p)
            self._mask, self._uses = keep / (1 - self.p), 0
        mask = self._mask
        self._uses += 1
        if self._uses == self.parts:
            self._mask = None
        return x * mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, shared by {self.parts} parts"


def tie_fused_lora(model: torch.nn.Module, adapter: str = "default") -> int:
    """Share the first part's ``lora_A`` (and one dropout) across each fused Linear's parts; returns how many
    fused Linears were tied. Parts whose LoRA was excluded are left alone (all parts go together)."""
    modules = dict(model.named_modules())
    tied = 0
    for parts in fused_groups(modules).values():
        layers = [modules[p] for p in parts]
        if not all(adapter in getattr(layer, "lora_A", {}) for layer in layers):
            continue
        shared = layers[0].lora_A[adapter]
        dropout = layers[0].lora_dropout[adapter]
        if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
            dropout = SharedDropout(dropout.p, len(layers))
        for layer in layers:
            layer.lora_A[adapter] = shared
            layer.lora_dropout[adapter] = dropout
        tied += 1
    return tied


def shared_a_form(module: str, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                  rank: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(A ``[rank, in]``, each part's B) whose product equals the parts' LoRAs ``B_i @ A_i`` as closely as rank
    ``rank`` allows (exact when they span at most ``rank`` directions); the relative error is logged."""
    outs = [b.shape[0] for _, b in pairs]
    delta = torch.cat([b.double() @ a.double() for a, b in pairs], dim=0)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:rank].sqrt()
    a = (root[:, None] * vh[:rank]).to(pairs[0][0].dtype)
    b = (u[:, :rank] * root[None, :]).to(pairs[0][1].dtype)
    total = float(s.square().sum())
    lost = float(s[rank:].square().sum()) / total if total > 0 else 0.0
    if lost > 1e-12:
        log.warning("%s: its saved LoRA (one per q/k/v part) spans more than %d directions; it starts from the "
                    "best rank-%d fit with one shared A (%.3g%% of its squared norm left out)",
                    module, rank, rank, 100 * lost)
    return a.contiguous(), [part.contiguous() for part in torch.split(b, outs, dim=0)]


def fused_pair(parts: dict[str, dict[str, torch.Tensor]], names: tuple[str, ...]
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fused Linear's (A, B) when every part has a LoRA and all share one A (this trainer's LoRAs);
    None otherwise (LoRAs per part, saved stacked)."""
    if any(n not in parts for n in names):
        return None
    first = parts[names[0]]["A"]
    if not all(torch.equal(parts[n]["A"], first) for n in names[1:]):
        return None
    return first, torch.cat([parts[n]["B"] for n in names], dim=0)


def _groups_of(weights: dict[str, tuple[torch.Tensor, torch.Tensor]],
               modules: dict[str, torch.nn.Module]) -> dict[str, tuple[str, ...]]:
    """The fused Linears some of whose parts ``weights`` names."""
    return {fused: parts for fused, parts in fused_groups(modules).items() if any(p in weights for p in parts)}


def all_shared(weights: dict[str, tuple[torch.Tensor, torch.Tensor]], modules: dict[str, torch.nn.Module]) -> bool:
    """Whether every fused Linear's parts in ``weights`` share one A (a LoRA in diffusion-pipe's form)."""
    for parts in _groups_of(weights, modules).values():
        present = [weights[p][0] for p in parts if p in weights]
        if len(present) != len(parts) or not all(torch.equal(a, present[0]) for a in present[1:]):
            return False
    return True


def shared_weights(weights: dict[str, tuple[torch.Tensor, torch.Tensor]], modules: dict[str, torch.nn.Module],
                   rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``weights`` with every fused Linear's parts in the shared-A form (:func:`shared_a_form` where they were
    saved per part; a part without a LoRA counts as a zero change)."""
    out = dict(weights)
    for fused, parts in _groups_of(weights, modules).items():
        present = [weights[p] for p in parts if p in weights]
        if len(present) == len(parts) and all(torch.equal(a, present[0][0]) for a, _ in present[1:]):
            continue
        a0, b0 = present[0]
        pairs = [weights.get(p) or (a0.new_zeros(a0.shape), b0.new_zeros(modules[p].out_features, b0.shape[1]))
                 for p in parts]
        a, bs = shared_a_form(fused, pairs, rank)
        out.update({p: (a, b) for p, b in zip(parts, bs, strict=True)})
    return out
