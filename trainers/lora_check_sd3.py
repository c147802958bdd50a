"""The LoRA key check (trainers/lora_check.py) for SD3 / SD3.5: diffusers-layout LoRAs (``transformer.<module>
.lora_A/B``, what diffusion-pipe and the native trainer save for SD3) against an SD3 transformer, from headers alone.

The layout is Flux's (trainers/lora_check_flux.py does the checking); this module tells SD3 apart (its patch
embedding and joint blocks, no single blocks) and, without the model, picks the released SD3 whose shapes fit the
LoRA: SD3 Medium, SD3.5 Medium (dual attention in its first 13 blocks) or SD3.5 Large.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainers.checkpoint_probe import ProbeError
from trainers.lora_check_flux import _shapes, _weight_files, check_flux_lora

# SD3's patch embedding (Flux has x_embedder) and its joint blocks' context AdaLN (AuraFlow has neither name).
ANCHORS = ("pos_embed.proj.weight", "transformer_blocks.0.norm1_context.linear.weight")
_KEY = re.compile(r"^transformer\.transformer_blocks\.(\d+)\.(.+)$")
# name -> (hidden, blocks, dual-attention blocks) of the released SD3 transformers
RELEASED = {"SD3 Medium": (1536, 24, 0), "SD3.5 Medium": (1536, 24, 13), "SD3.5 Large": (2432, 38, 0)}


def block_linears(hidden: int, blocks: int, dual: int = 0) -> dict[str, tuple[int, int]]:
    """diffusers name -> (out, in) of every Linear in SD3's JointTransformerBlocks (what diffusion-pipe trains):
    the last block is ``context_pre_only`` (a 2-wide context AdaLN, no context output or feed-forward); the first
    ``dual`` blocks have SD3.5's second attention and a 9-wide image AdaLN."""
    h = hidden
    linears: dict[str, tuple[int, int]] = {}
    for i in range(blocks):
        block, last = f"transformer_blocks.{i}.", i == blocks - 1
        linears[block + "norm1.linear"] = (9 * h if i < dual else 6 * h, h)
        linears[block + "norm1_context.linear"] = (2 * h if last else 6 * h, h)
        for name in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                     "attn.to_out.0", *(() if last else ("attn.to_add_out",)),
                     *(("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0") if i < dual else ())):
            linears[block + name] = (h, h)
        for side in ("ff",) if last else ("ff", "ff_context"):
            linears[f"{block}{side}.net.0.proj"], linears[f"{block}{side}.net.2"] = (4 * h, h), (h, 4 * h)
    return linears


def is_sd3_model(path: Path | None) -> bool:
    """Whether ``path`` (file or diffusers folder) holds an SD3 transformer."""
    if path is None or not Path(path).exists():
        return False
    try:
        keys = {k for file in _weight_files(Path(path)) for k in _shapes(file)}
    except (ProbeError, OSError):
        return False
    return all(anchor in keys for anchor in ANCHORS)


def is_sd3_lora(keys: list[str]) -> bool:
    """Whether a LoRA's keys are an SD3 LoRA in diffusers' layout: joint blocks only (no Flux single blocks), and a
    module only SD3 has: SD3.5's second attention, or a last block with a context AdaLN but no context output."""
    modules = [k.rsplit(".lora_", 1)[0] for k in keys]
    if not modules or any(m.startswith("transformer.single_transformer_blocks.") for m in modules):
        return False
    blocks: dict[int, set[str]] = {}
    for module in modules:
        match = _KEY.match(module)
        if match:
            blocks.setdefault(int(match[1]), set()).add(match[2])
    if any(name.startswith("attn2.") for names in blocks.values() for name in names):
        return True
    last = blocks.get(max(blocks)) if blocks else None
    return bool(last) and "norm1_context.linear" in last and "attn.to_add_out" not in last and \
        any("attn.to_add_out" in names for names in blocks.values())


def released_shapes(shapes: dict[str, list[int]]) -> tuple[dict[str, tuple[int, int]], str]:
    """The released SD3 whose width and dual attention fit the LoRA's tensors (SD3.5 Large when none does)."""
    widths = {shape[1] for key, shape in shapes.items() if key.endswith("attn.to_q.lora_A.weight") and len(shape) == 2}
    dual = any(".attn2." in key for key in shapes)
    name = "SD3.5 Large"
    if 1536 in widths:
        name = "SD3.5 Medium" if dual else "SD3 Medium"
    return block_linears(*RELEASED[name]), f"the released {name}'s shapes (the base model was not found)"


def check_sd3_lora(lora: Path, shapes: dict[str, list[int]], model: Path | None, report_class, split_key):
    """The :class:`trainers.lora_check.LoraCheck` of an SD3 LoRA against ``model`` (None or missing: the released
    SD3 that fits its widths)."""
    return check_flux_lora(lora, shapes, model, report_class, split_key, fallback=released_shapes(shapes))
