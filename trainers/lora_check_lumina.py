"""The LoRA key check (trainers/lora_check.py) for Lumina 2: LoRAs in diffusion-pipe's layout
(``diffusion_model.<original NextDiT module>.lora_A/B``, e.g. ``diffusion_model.layers.0.attention.qkv``, what
diffusion-pipe and the native trainer save) against a Lumina 2 transformer, from headers alone.

The model's block Linears come from its original-layout file (bare or a ComfyUI checkpoint with
``model.diffusion_model.`` keys). Without the model, the released Lumina-Image-2.0's shapes (2304 wide, 26 layers,
2 noise and 2 context refiner blocks) are assumed, and the report says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainers.checkpoint_probe import ProbeError
from trainers.lora_check_flux import _shapes, _weight_files, paired_modules

ANCHOR = "context_refiner.0.attention.qkv.weight"  # NextDiT's caption refiner: Lumina 2's layout
_BLOCK_LINEAR = re.compile(r"^(layers|noise_refiner|context_refiner)\.\d+\."
                           r"(attention\.qkv|attention\.out|feed_forward\.w[123]|adaLN_modulation\.1)$")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
_LORA_PREFIX = "diffusion_model."
FULL_SIZE = {"hidden": 2304, "kv": 768, "ffn": 9216, "layers": 26, "refiners": 2}


def block_linears(hidden: int, kv: int, ffn: int, layers: int, refiners: int) -> dict[str, tuple[int, int]]:
    """original name -> (out, in) of every Linear in Lumina 2's JointTransformerBlocks (what diffusion-pipe trains)."""
    cond = min(hidden, 1024)
    linears: dict[str, tuple[int, int]] = {}
    for kind, count in (("layers", layers), ("noise_refiner", refiners), ("context_refiner", refiners)):
        for i in range(count):
            block = f"{kind}.{i}."
            linears[block + "attention.qkv"] = (hidden + 2 * kv, hidden)
            linears[block + "attention.out"] = (hidden, hidden)
            linears[block + "feed_forward.w1"] = linears[block + "feed_forward.w3"] = (ffn, hidden)
            linears[block + "feed_forward.w2"] = (hidden, ffn)
            if kind != "context_refiner":
                linears[block + "adaLN_modulation.1"] = (4 * hidden, cond)
    return linears


def _model_shapes(path: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for file in _weight_files(path):
        shapes |= _shapes(file)
    return shapes


def is_lumina_model(path: Path | None) -> bool:
    """Whether ``path`` holds a Lumina 2 transformer in the original layout."""
    if path is None or not Path(path).exists():
        return False
    try:
        return any(k.endswith(ANCHOR) for k in _model_shapes(Path(path)))
    except (ProbeError, OSError):
        return False


def is_lumina_lora(keys: list[str]) -> bool:
    """Whether a LoRA's keys name a Linear of a NextDiT caption refiner (Lumina 2's original layout)."""
    return any(k.removeprefix(_LORA_PREFIX).startswith("context_refiner.") and ".attention.qkv.lora_" in k
               for k in keys)


def model_linears(path: Path) -> tuple[dict[str, tuple[int, int]], str]:
    """(block Linears in original names, what they were read from) of a Lumina 2 transformer file."""
    shapes = _model_shapes(path)
    if not shapes:
        raise ProbeError(f"{path} holds no .safetensors weights: pick the Lumina 2 transformer file")
    prefix = next(p for p in _PREFIXES if not p or any(k.startswith(p + "layers.") for k in shapes))
    linears = {}
    for key, shape in shapes.items():
        name = key[len(prefix):].removesuffix(".weight")
        if key.startswith(prefix) and key.endswith(".weight") and len(shape) == 2 and _BLOCK_LINEAR.match(name):
            linears[name] = (shape[0], shape[1])
    return linears, path.name


def check_lumina_lora(lora: Path, shapes: dict[str, list[int]], model: Path | None, report_class, split_key):
    """The :class:`trainers.lora_check.LoraCheck` of a Lumina 2 LoRA with tensor ``shapes``, against ``model``
    (None or missing: the released model's shapes). ``split_key`` is lora_check's key splitter."""
    if model is not None and Path(model).exists():
        linears, source, exact = *model_linears(Path(model)), True
    else:
        linears = block_linears(**FULL_SIZE)
        source, exact = "the released Lumina-Image-2.0's shapes (the base model was not found)", False
    report = report_class(lora, "comfyui", source, exact, targets=len(linears))
    ranks: set[int] = set()
    for module, parts in paired_modules(shapes, split_key, report):
        target = module.removeprefix(_LORA_PREFIX)
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
