"""The LoRA key check (trainers/lora_check.py) for Flux: diffusers-layout LoRAs (``transformer.<module>.lora_A/B``,
what diffusion-pipe and the native trainer save for Flux) against a Flux transformer, from headers alone.

The model's block Linears come from a diffusers folder (its ``transformer/`` shards, or the pipeline folder holding
them), or from one original-layout (BFL) file, whose widths give every block Linear's diffusers shape. Without the
model, the released Flux's shapes (3072 wide, 19 double + 38 single blocks) are assumed, and the report says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainers.checkpoint_probe import ProbeError, read_header

FLUX_ANCHORS = ("double_blocks.0.img_mod.lin.weight", "transformer_blocks.0.norm1.linear.weight")
# Linears only Flux's blocks have (Chroma's modulation is outside them): a LoRA naming one is a Flux LoRA.
FLUX_ONLY_MODULES = re.compile(r"^transformer\.(transformer_blocks\.\d+\.norm1(_context)?\.linear|"
                               r"single_transformer_blocks\.\d+\.norm\.linear)$")
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
FULL_SIZE = {"hidden": 3072, "mlp": 12288, "double": 19, "single": 38}


def block_linears(hidden: int, mlp: int, double: int, single: int) -> dict[str, tuple[int, int]]:
    """diffusers name -> (out, in) of every Linear in Flux's double and single blocks (what diffusion-pipe trains)."""
    h = hidden
    linears: dict[str, tuple[int, int]] = {}
    for i in range(double):
        block = f"transformer_blocks.{i}."
        for name in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                     "attn.to_out.0", "attn.to_add_out"):
            linears[block + name] = (h, h)
        for side in ("ff", "ff_context"):
            linears[f"{block}{side}.net.0.proj"], linears[f"{block}{side}.net.2"] = (mlp, h), (h, mlp)
        linears[block + "norm1.linear"] = linears[block + "norm1_context.linear"] = (6 * h, h)
    for i in range(single):
        block = f"single_transformer_blocks.{i}."
        linears |= {block + "attn.to_q": (h, h), block + "attn.to_k": (h, h), block + "attn.to_v": (h, h),
                    block + "proj_mlp": (mlp, h), block + "proj_out": (h, h + mlp), block + "norm.linear": (3 * h, h)}
    return linears


def _shapes(path: Path) -> dict[str, list[int]]:
    header = read_header(path)
    return {k: list(v.get("shape", [])) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def _weight_files(path: Path) -> list[Path]:
    """The transformer's safetensors files: the file itself, a transformer folder's shards, or a pipeline folder's."""
    if path.is_file():
        return [path]
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    return sorted(folder.glob("*.safetensors"))


def paired_modules(shapes: dict[str, list[int]], split_key, report, keep_alpha: bool = False):
    """(module, {"A": shape, "B": shape}) of every LoRA module of ``shapes`` with both halves, by module name,
    counted in ``report.modules``; tensors that are not LoRA weights go to ``report.not_lora`` and modules missing
    a half to ``report.half_pairs``. ``keep_alpha``: ``.alpha`` tensors join their module's parts (as "alpha")
    instead of being left out."""
    halves: dict[str, dict[str, list[int]]] = {}
    for key, shape in shapes.items():
        split = split_key(key)
        if split is None:
            report.not_lora.append(key)
        elif keep_alpha or split[1] != "alpha":
            halves.setdefault(split[0], {})[split[1]] = shape
    pairs = []
    for module, parts in sorted(halves.items()):
        if "A" not in parts or "B" not in parts:
            missing = " and ".join(half for half in ("A", "B") if half not in parts)
            report.half_pairs.append(f"{module} (no {missing})")
            continue
        report.modules += 1
        pairs.append((module, parts))
    return pairs


def is_flux_model(path: Path | None) -> bool:
    """Whether ``path`` (file or diffusers folder) holds a Flux transformer (Flux's modulation Linears)."""
    if path is None or not Path(path).exists():
        return False
    try:
        keys = [k for file in _weight_files(Path(path)) for k in _shapes(file)]
    except (ProbeError, OSError):
        return False
    return any(k.endswith(FLUX_ANCHORS) for k in keys)


def is_flux_lora(keys: list[str]) -> bool:
    """Whether a LoRA's keys name a Linear only Flux's blocks have."""
    return any(FLUX_ONLY_MODULES.match(k.rsplit(".lora_", 1)[0]) for k in keys)


def model_linears(path: Path) -> tuple[dict[str, tuple[int, int]], str]:
    """(block Linears in diffusers names, what they were read from) of a Flux transformer file or folder."""
    files = _weight_files(path)
    if not files:
        raise ProbeError(f"{path} holds no .safetensors weights: pick the transformer file or diffusers folder")
    shapes: dict[str, list[int]] = {}
    for file in files:
        shapes |= _shapes(file)
    for prefix in _PREFIXES:
        if f"{prefix}img_in.weight" in shapes:  # original (BFL) layout: widths and block counts give the rest
            inner, mlp = shapes[f"{prefix}img_in.weight"][0], shapes[f"{prefix}double_blocks.0.img_mlp.0.weight"][0]
            count = {kind: len({k.split(".")[1] for k in shapes if k.startswith(f"{prefix}{kind}_blocks.")})
                     for kind in ("double", "single")}
            return block_linears(inner, mlp, count["double"], count["single"]), path.name
    linears = {k.removesuffix(".weight"): (v[0], v[1]) for k, v in shapes.items()
               if k.endswith(".weight") and len(v) == 2 and _BLOCK.match(k)}
    return linears, f"{path.name} (diffusers folder)" if path.is_dir() else path.name


def check_flux_lora(lora: Path, shapes: dict[str, list[int]], model: Path | None, report_class, split_key,
                    fallback: tuple[dict[str, tuple[int, int]], str] | None = None):
    """The :class:`trainers.lora_check.LoraCheck` of a Flux LoRA with tensor ``shapes``, against ``model``
    (None or missing: the released Flux's shapes). ``split_key`` is lora_check's key splitter. Other families
    saved in diffusers' layout (SD3) pass ``fallback``: the (block Linears, description) of their released model."""
    if model is not None and Path(model).exists():
        linears, source, exact = *model_linears(Path(model)), True
    elif fallback is not None:
        (linears, source), exact = fallback, False
    else:
        linears = block_linears(*(FULL_SIZE[k] for k in ("hidden", "mlp", "double", "single")))
        source, exact = "the released Flux's shapes (the base model was not found)", False
    report = report_class(lora, "diffusers", source, exact, targets=len(linears))
    ranks: set[int] = set()
    # alpha left out: alpha = rank is the only convention the native trainer writes
    for module, parts in paired_modules(shapes, split_key, report):
        target = module.removeprefix("transformer.")
        if not module.startswith("transformer.") or target not in linears:
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
