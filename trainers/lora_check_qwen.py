"""The LoRA key check (trainers/lora_check.py) for Qwen-Image: ComfyUI-layout LoRAs (``diffusion_model.<module>
.lora_A/B``, what diffusion-pipe and the native trainer save for Qwen-Image; diffusers' ``transformer.`` names are
read too) against a Qwen-Image transformer, from headers alone.

The model's block Linears come from a diffusers folder (its ``transformer/`` shards, or the pipeline folder holding
them) or one file with diffusers' names (bare or ComfyUI-prefixed). Without the model, the released Qwen-Image's
shapes (3072 wide, 60 blocks) are assumed, and the report says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainers.checkpoint_probe import ProbeError
from trainers.lora_check_flux import _shapes, _weight_files, paired_modules

ANCHOR = "transformer_blocks.0.img_mod.1.weight"  # Qwen-Image's image-stream modulation: in no other family
_QWEN_ONLY = re.compile(r"(^|\.)transformer_blocks\.\d+\.(img_mod\.1|txt_mod\.1|img_mlp\.net\.\d|txt_mlp\.net\.\d)")
_BLOCK = re.compile(r"^transformer_blocks\.\d+\.")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
_LORA_PREFIXES = ("diffusion_model.", "transformer.", "model.diffusion_model.")
FULL_SIZE = {"hidden": 3072, "blocks": 60}


def block_linears(hidden: int, blocks: int) -> dict[str, tuple[int, int]]:
    """diffusers name -> (out, in) of every Linear in Qwen-Image's blocks (what diffusion-pipe trains)."""
    h, mlp = hidden, 4 * hidden
    linears: dict[str, tuple[int, int]] = {}
    for i in range(blocks):
        block = f"transformer_blocks.{i}."
        for name in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                     "attn.to_out.0", "attn.to_add_out"):
            linears[block + name] = (h, h)
        for side in ("img", "txt"):
            linears[f"{block}{side}_mod.1"] = (6 * h, h)
            linears[f"{block}{side}_mlp.net.0.proj"], linears[f"{block}{side}_mlp.net.2"] = (mlp, h), (h, mlp)
    return linears


def _model_shapes(path: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for file in _weight_files(path):
        shapes |= _shapes(file)
    return shapes


def is_qwen_model(path: Path | None) -> bool:
    """Whether ``path`` (file or diffusers folder) holds a Qwen-Image transformer."""
    if path is None or not Path(path).exists():
        return False
    try:
        return any(k.endswith(ANCHOR) for k in _model_shapes(Path(path)))
    except (ProbeError, OSError):
        return False


def is_qwen_lora(keys: list[str]) -> bool:
    """Whether a LoRA's keys name a Linear only Qwen-Image's blocks have."""
    return any(_QWEN_ONLY.search(k.rsplit(".lora_", 1)[0]) for k in keys)


def model_linears(path: Path) -> tuple[dict[str, tuple[int, int]], str]:
    """(block Linears in diffusers names, what they were read from) of a Qwen-Image transformer file or folder."""
    shapes = _model_shapes(path)
    if not shapes:
        raise ProbeError(f"{path} holds no .safetensors weights: pick the Qwen-Image transformer file or folder")
    prefix = next(p for p in _PREFIXES if not p or any(k.startswith(p + "transformer_blocks.") for k in shapes))
    linears = {k[len(prefix):].removesuffix(".weight"): (v[0], v[1]) for k, v in shapes.items()
               if k.startswith(prefix) and k.endswith(".weight") and len(v) == 2 and _BLOCK.match(k[len(prefix):])}
    return linears, f"{path.name} (diffusers folder)" if path.is_dir() else path.name


def _target(module: str) -> str | None:
    for prefix in _LORA_PREFIXES:
        if module.startswith(prefix):
            return module.removeprefix(prefix)
    return None


def check_qwen_lora(lora: Path, shapes: dict[str, list[int]], model: Path | None, report_class, split_key):
    """The :class:`trainers.lora_check.LoraCheck` of a Qwen-Image LoRA with tensor ``shapes``, against ``model``
    (None or missing: the released Qwen-Image's shapes). ``split_key`` is lora_check's key splitter."""
    if model is not None and Path(model).exists():
        linears, source, exact = *model_linears(Path(model)), True
    else:
        linears = block_linears(FULL_SIZE["hidden"], FULL_SIZE["blocks"])
        source, exact = "the released Qwen-Image's shapes (the base model was not found)", False
    return check_peft_lora(lora, shapes, linears, source, exact, report_class, split_key)


def check_peft_lora(lora: Path, shapes: dict[str, list[int]], linears: dict[str, tuple[int, int]], source: str,
                    exact: bool, report_class, split_key):
    """The report of a LoRA saved as ``diffusion_model.`` (or ``transformer.``) + diffusers module names against
    the block Linears ``linears`` (diffusers name -> (out, in)); the families saving that layout share it."""
    layout = "diffusers" if any(k.startswith("transformer.") for k in shapes) else "comfyui"
    report = report_class(lora, layout, source, exact, targets=len(linears))
    ranks: set[int] = set()
    # alpha left out: alpha = rank is the only convention the native trainer writes
    for module, parts in paired_modules(shapes, split_key, report):
        target = _target(module)
        if target not in linears:
            report.unmatched.append(module)
            continue
        (out, inp), a, b = linears[target], parts["A"], parts["B"]
        if len(a) != 2 or len(b) != 2 or a[1] != inp or b[0] != out or a[0] != b[1]:
            report.mismatched.append(f"{module}: A {a}, B {b}; {target} is {inp} → {out}")
            continue
        report.covered += 1
        ranks.add(a[0])
    report.ranks = sorted(ranks)
    return report
