"""The LoRA key check (trainers/lora_check.py) for HiDream: LoRAs saved as diffusion-pipe's models/hidream.py
save_adapter writes them (``diffusion_model.<diffusers module>.lora_A/B``; diffusers' ``transformer.`` names are
read too) against a HiDream transformer, from headers alone.

The model's block Linears come from a diffusers folder (its ``transformer/`` shards, or the pipeline folder holding
them) or one file with diffusers' names. Without the model, the released HiDream-I1's shapes (2560 wide, 16 double
and 32 single blocks, 4 routed experts) are assumed, and the report says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainers.checkpoint_probe import ProbeError
from trainers.lora_check_qwen import _model_shapes, check_peft_lora

ANCHOR = "double_stream_blocks.0.block.attn1.to_q_t.weight"  # HiDream's text-stream query: in no other family
_HIDREAM_ONLY = re.compile(r"(^|\.)(double|single)_stream_blocks\.\d+\.block\.")
_BLOCK = re.compile(r"^(double|single)_stream_blocks\.\d+\.block\.")
RELEASED = {"hidden": 2560, "double": 16, "single": 32, "experts": 4}


def swiglu_width(hidden: int, multiple_of: int = 256) -> int:
    """HiDreamImageFeedForwardSwiGLU's inner width for ``hidden_dim`` (two thirds, rounded up to 256)."""
    inner = int(2 * hidden / 3)
    return multiple_of * ((inner + multiple_of - 1) // multiple_of)


def block_linears(hidden: int, double: int, single: int, experts: int) -> dict[str, tuple[int, int]]:
    """diffusers name -> (out, in) of every Linear in HiDream's blocks (what diffusion-pipe trains)."""
    h = hidden
    linears: dict[str, tuple[int, int]] = {}

    def swiglu(prefix: str, width: int) -> None:
        linears[prefix + "w1"], linears[prefix + "w3"], linears[prefix + "w2"] = (width, h), (width, h), (h, width)

    for kind, count in (("double", double), ("single", single)):
        for i in range(count):
            block = f"{kind}_stream_blocks.{i}.block."
            linears[block + "adaLN_modulation.1"] = ((12 if kind == "double" else 6) * h, h)
            sides = ("", "_t") if kind == "double" else ("",)
            for side in sides:
                for name in ("to_q", "to_k", "to_v", "to_out"):
                    linears[f"{block}attn1.{name}{side}"] = (h, h)
            swiglu(block + "ff_i.shared_experts.", swiglu_width(2 * h))
            for e in range(experts):
                swiglu(f"{block}ff_i.experts.{e}.", swiglu_width(4 * h))
            if kind == "double":
                swiglu(block + "ff_t.", swiglu_width(4 * h))
    return linears


def is_hidream_model(path: Path | None) -> bool:
    """Whether ``path`` (file or diffusers folder) holds a HiDream transformer."""
    if path is None or not Path(path).exists():
        return False
    try:
        return any(k.endswith(ANCHOR) for k in _model_shapes(Path(path)))
    except (ProbeError, OSError):
        return False


def is_hidream_lora(keys: list[str]) -> bool:
    """Whether a LoRA's keys name a Linear only HiDream's blocks have."""
    return any(_HIDREAM_ONLY.search(k.rsplit(".lora_", 1)[0]) for k in keys)


def model_linears(path: Path) -> tuple[dict[str, tuple[int, int]], str]:
    """(block Linears in diffusers names, what they were read from) of a HiDream transformer file or folder (the MoE
    gates' 2-D weights are bare parameters, not Linears)."""
    shapes = _model_shapes(path)
    if not shapes:
        raise ProbeError(f"{path} holds no .safetensors weights: pick the HiDream transformer file or folder")
    linears = {k.removesuffix(".weight"): (v[0], v[1]) for k, v in shapes.items()
               if k.endswith(".weight") and len(v) == 2 and _BLOCK.match(k) and not k.endswith(".gate.weight")}
    return linears, f"{path.name} (diffusers folder)" if path.is_dir() else path.name


def check_hidream_lora(lora: Path, shapes: dict[str, list[int]], model: Path | None, report_class, split_key):
    """The :class:`trainers.lora_check.LoraCheck` of a HiDream LoRA with tensor ``shapes``, against ``model``
    (None or missing: the released HiDream-I1's shapes). ``split_key`` is lora_check's key splitter."""
    if model is not None and Path(model).exists():
        linears, source, exact = *model_linears(Path(model)), True
    else:
        linears = block_linears(**RELEASED)
        source, exact = "the released HiDream-I1's shapes (the base model was not found)", False
    return check_peft_lora(lora, shapes, linears, source, exact, report_class, split_key)
