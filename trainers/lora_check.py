"""Check that a Chroma (or Flux: trainers/lora_check_flux.py; Qwen-Image: trainers/lora_check_qwen.py; Lumina 2:
trainers/lora_check_lumina.py; SD3: trainers/lora_check_sd3.py; HiDream: trainers/lora_check_hidream.py; SDXL:
trainers/lora_check_sdxl.py) LoRA file fits its base model, from safetensors headers alone (no torch, no weights).

The question users ask after "lora key not loaded": does every key of this file name a Linear of the model,
with the right shapes, and does it cover what it should? :func:`check_lora` reads the LoRA's header in any of
the layouts dp-studio writes or reads (diffusion-pipe's ComfyUI layout, diffusers, kohya, peft) and the base
model's header (an original/ComfyUI single file, or a diffusers folder), maps everything to the original
module names, and reports:

- keys that name no module of the model (what ComfyUI would print as "lora key not loaded");
- pairs whose shapes do not fit the module (A must take the module's input width, B give its output width;
  for a LoRA on one diffusers part of a fused Linear, that part's width);
- modules with only one half of their pair, and tensors that are not LoRA weights at all;
- coverage: how many of the transformer blocks' Linears (what diffusion-pipe trains) the LoRA touches, and its
  ranks.

Without the base model (its file moved or never on this machine) the check falls back to the released
Chroma's shapes (3072 wide, 19 double + 38 single blocks) and says so; keys outside the blocks are then
reported as not checked rather than unmatched.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainers.checkpoint_probe import ProbeError, read_header
from trainers.chroma_names import fused_parts, original_name
from trainers.lora_check_flux import check_flux_lora, is_flux_lora, is_flux_model
from trainers.lora_check_hidream import check_hidream_lora, is_hidream_lora, is_hidream_model
from trainers.lora_check_lumina import check_lumina_lora, is_lumina_lora, is_lumina_model
from trainers.lora_check_qwen import check_qwen_lora, is_qwen_lora, is_qwen_model
from trainers.lora_check_sd3 import check_sd3_lora, is_sd3_lora, is_sd3_model
from trainers.lora_check_sdxl import check_sdxl_lora, is_sdxl_lora, is_sdxl_model

_BLOCK_LINEAR = re.compile(r"^(double_blocks|single_blocks)\.\d+\.")
_COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
# (A suffix, B suffix) of LoRA keys: peft/diffusers/ComfyUI, then kohya.
_PAIR_SUFFIXES = ((".lora_A.weight", ".lora_B.weight"), (".lora_down.weight", ".lora_up.weight"))
FULL_SIZE = {"hidden": 3072, "mlp": 12288, "double": 19, "single": 38}


class LoraCheckError(ValueError):
    """The file cannot be checked at all (not safetensors, not a LoRA); the message says what to pick."""


@dataclass(frozen=True)
class ModelShapes:
    """Linear weights of a Chroma transformer in original names: module -> (out features, in features)."""

    linears: dict[str, tuple[int, int]]
    source: str  # what the shapes were read from, for the report
    exact: bool  # False: the released model's shapes, assumed because the base model was not found

    @property
    def block_linears(self) -> list[str]:
        return sorted(m for m in self.linears if _BLOCK_LINEAR.match(m))


def full_size_shapes() -> ModelShapes:
    """The block Linears of the released Chroma (what diffusion-pipe targets), for a check without the model."""
    h, mlp = FULL_SIZE["hidden"], FULL_SIZE["mlp"]
    linears: dict[str, tuple[int, int]] = {}
    for i in range(FULL_SIZE["double"]):
        for side in ("img", "txt"):
            linears.update({f"double_blocks.{i}.{side}_attn.qkv": (3 * h, h),
                            f"double_blocks.{i}.{side}_attn.proj": (h, h),
                            f"double_blocks.{i}.{side}_mlp.0": (mlp, h),
                            f"double_blocks.{i}.{side}_mlp.2": (h, mlp)})
    for i in range(FULL_SIZE["single"]):
        linears.update({f"single_blocks.{i}.linear1": (3 * h + mlp, h),
                        f"single_blocks.{i}.linear2": (h, h + mlp)})
    return ModelShapes(linears, "the released Chroma's shapes (the base model file was not found)", exact=False)


def _weight_shapes(header: dict) -> dict[str, list[int]]:
    return {k.removesuffix(".weight"): list(v.get("shape", [])) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and k.endswith(".weight") and len(v.get("shape", [])) == 2}


def _from_diffusers(shapes: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    """Original-name Linears of a diffusers state dict: fused parts add up their output widths."""
    outs: dict[str, dict[int, int]] = {}
    ins: dict[str, int] = {}
    for module, (out, inp) in shapes.items():
        try:
            target, slot = original_name(module)
        except KeyError:
            continue  # not a Linear with an original name (embedders' inner layers are mapped; norms are 1-D)
        outs.setdefault(target, {})[slot or 0] = out
        ins[target] = inp
    return {target: (sum(parts.values()), ins[target]) for target, parts in outs.items()}


def model_shapes(path: Path) -> ModelShapes:
    """Linear shapes of a Chroma transformer: a single file (original or ComfyUI layout, or diffusers
    names) or a diffusers folder (``*.safetensors`` shards)."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise ProbeError(f"{path} holds no .safetensors weights: pick the Chroma transformer file or folder")
        shapes: dict[str, list[int]] = {}
        for shard in shards:
            shapes.update(_weight_shapes(read_header(shard)))
        return ModelShapes(_from_diffusers(shapes), f"{path.name} (diffusers folder)", exact=True)
    shapes = _weight_shapes(read_header(path))
    for prefix in _COMFY_PREFIXES:
        if any(k.startswith(prefix) for k in shapes):
            shapes = {k.removeprefix(prefix): v for k, v in shapes.items() if k.startswith(prefix)}
            break
    if any(k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in shapes):
        return ModelShapes(_from_diffusers(shapes), f"{path.name} (diffusers names)", exact=True)
    return ModelShapes({k: (v[0], v[1]) for k, v in shapes.items()}, path.name, exact=True)


@dataclass
class LoraCheck:
    """What :func:`check_lora` found; :meth:`markdown` is the report the studio shows."""

    file: Path
    layout: str
    model: str  # what the LoRA was checked against
    exact: bool
    modules: int = 0  # LoRA modules (pairs or halves) in the file
    targets: int = 0  # block Linears of the model
    covered: int = 0  # block Linears the LoRA touches
    ranks: list[int] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    half_pairs: list[str] = field(default_factory=list)
    not_lora: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Every problem found, unmatched keys first."""
        return self.unmatched + self.mismatched + self.half_pairs + self.not_lora

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        rank = ", ".join(str(r) for r in self.ranks) or "?"
        head = (f"{self.layout} layout · {self.modules} modules · rank {rank} · covers {self.covered} of "
                f"{self.targets} block Linears")
        if self.ok:
            return f"✓ every key fits the model ({head})"
        problems = [f"{len(v)} {what}" for v, what in ((self.unmatched, "unmatched keys"),
                                                       (self.mismatched, "shape mismatches"),
                                                       (self.half_pairs, "half pairs"),
                                                       (self.not_lora, "non-LoRA tensors")) if v]
        return f"⚠ {', '.join(problems)} ({head})"

    def markdown(self, limit: int = 12) -> str:
        lines = [f"**LoRA key check** of `{self.file.name}` against {self.model}: {self.summary()}"]
        sections = (
            (self.unmatched, "Keys that name no module of the model (an app would skip them: "
                             "\"lora key not loaded\")"),
            (self.mismatched, "Shapes that do not fit their module (A must be [rank, in features], "
                              "B [out features, rank])"),
            (self.half_pairs, "Modules with only one half of their A/B pair"),
            (self.not_lora, "Tensors that are not LoRA weights"),
            (self.unchecked, "Not checked (outside the transformer blocks, and the base model was not found)"),
        )
        for items, title in sections:
            if items:
                shown = "\n".join(f"- `{item}`" for item in items[:limit])
                more = f"\n- … and {len(items) - limit} more" if len(items) > limit else ""
                lines.append(f"{title}:\n{shown}{more}")
        if not self.exact:
            released = next((name for name in ("Flux", "Qwen-Image", "HiDream-I1", "SDXL") if name in self.model),
                            "Chroma")
            lines.append(f"ℹ The base model was not found, so the released {released}'s block shapes were assumed: "
                         "pick the transformer (SDXL: checkpoint) file to check against it exactly.")
        if self.targets and self.covered < self.targets and self.ok:
            lines.append(f"ℹ {self.targets - self.covered} block Linears have no LoRA (diffusion-pipe trains "
                         "them all unless exclude_modules says otherwise).")
        return "\n\n".join(lines)


def _layout(keys: list[str]) -> str:
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(k.startswith("base_model.model.") for k in keys):
        return "peft"
    if any(k.startswith("transformer.") for k in keys):
        return "diffusers"
    if any(k.startswith(_COMFY_PREFIXES) for k in keys):
        return "comfyui"
    raise LoraCheckError("no LoRA keys in a known layout (diffusion_model., transformer., lora_unet_, "
                         "base_model.model.): pick an adapter_model.safetensors or an exported LoRA file")


def _split_key(key: str) -> tuple[str, str] | None:
    """(module, "A" | "B" | "alpha") of one LoRA key, names still in the file's layout."""
    if key.endswith(".alpha"):
        return key.removesuffix(".alpha"), "alpha"
    for a_suffix, b_suffix in _PAIR_SUFFIXES:
        if key.endswith(a_suffix):
            return key.removesuffix(a_suffix), "A"
        if key.endswith(b_suffix):
            return key.removesuffix(b_suffix), "B"
    return None


def _targets(module: str, layout: str, kohya_names: dict[str, str]) -> tuple[str, int | None] | None:
    """(original module, fused slot) the LoRA module writes to, or None when no module of Chroma has it."""
    if layout == "comfyui":
        for prefix in _COMFY_PREFIXES:
            if module.startswith(prefix):
                return module.removeprefix(prefix), None
        return None
    if layout == "kohya":
        name = kohya_names.get(module.removeprefix("lora_unet_"))
        return (name, None) if name else None
    inner = module.removeprefix("transformer.") if layout == "diffusers" else module.removeprefix(
        "base_model.model.")
    try:
        return original_name(inner)
    except KeyError:
        return None


def _part_width(target: str, slot: int, out: int, inp: int) -> int:
    """Output width of one part of a fused Linear: q, k and v are as wide as the input, linear1's MLP the rest."""
    parts = len(fused_parts(target) or ())
    if target.endswith("linear1") and slot == parts - 1:
        return out - inp * (parts - 1)
    return inp if target.endswith("linear1") else out // parts


# (is it this family's model, is it this family's LoRA, its check), tried in order before Chroma's own check;
# SD3 first: its joint blocks carry Flux's double-block names
OTHER_FAMILIES = ((is_sdxl_model, is_sdxl_lora, check_sdxl_lora), (is_sd3_model, is_sd3_lora, check_sd3_lora),
                  (is_flux_model, is_flux_lora, check_flux_lora), (is_hidream_model, is_hidream_lora, check_hidream_lora),
                  (is_qwen_model, is_qwen_lora, check_qwen_lora), (is_lumina_model, is_lumina_lora, check_lumina_lora))


# model types whose LoRAs this module checks (the families of OTHER_FAMILIES and Chroma)
CHECKED_TYPES = ("chroma", "flux", "sd3", "sdxl", "qwen_image", "hidream", "lumina_2")


def base_model_value(model: dict) -> object:
    """The ``[model]`` value a run's LoRAs are checked against: ``transformer_path``, else ``diffusers_path`` (Flux,
    HiDream: the folder's transformer), else ``checkpoint_path`` (SDXL's single file)."""
    return model.get("transformer_path") or model.get("diffusers_path") or model.get("checkpoint_path")


def check_lora(lora: Path, model: Path | None = None) -> LoraCheck:
    """Check ``lora`` against the transformer at ``model`` (file or diffusers folder); without one, or when
    it does not exist, against the released Chroma's block shapes."""
    lora = Path(lora)
    try:
        header = read_header(lora)
    except ProbeError as exc:
        raise LoraCheckError(str(exc)) from None
    shapes = {k: list(v.get("shape", [])) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    if not shapes:
        raise LoraCheckError(f"{lora.name} holds no tensors: pick a LoRA file")
    for is_model, is_lora, check in OTHER_FAMILIES:
        of_model = is_model(model)
        if of_model or (not (model and Path(model).exists()) and is_lora(list(shapes))):
            return check(lora, shapes, model if of_model else None, LoraCheck, _split_key)
    layout = _layout(list(shapes))
    base = model_shapes(Path(model)) if model and Path(model).exists() else full_size_shapes()
    report = LoraCheck(lora, layout, base.source, base.exact, targets=len(base.block_linears))
    kohya_names = {m.replace(".", "_"): m for m in base.linears}
    halves: dict[str, dict[str, list[int]]] = {}
    for key, shape in shapes.items():
        split = _split_key(key)
        if split is None:
            report.not_lora.append(key)
            continue
        halves.setdefault(split[0], {})[split[1]] = shape
    covered: set[str] = set()
    plain_ranks: set[int] = set()  # modules that are one Linear (a fused one's A may stack its parts' ranks)
    fused_ranks: set[int] = set()
    for module, parts in sorted(halves.items()):
        if "A" not in parts or "B" not in parts:
            report.half_pairs.append(f"{module} (no {'B' if 'A' in parts else 'A'})")
            continue
        report.modules += 1
        found = _targets(module, layout, kohya_names)
        if found is None or found[0] not in base.linears:
            if not base.exact and (found is None or not _BLOCK_LINEAR.match(found[0])) and layout != "kohya":
                report.unchecked.append(module)
            else:
                report.unmatched.append(module)
            continue
        target, slot = found
        out, inp = base.linears[target]
        want_out = out if slot is None else _part_width(target, slot, out, inp)
        a, b = parts["A"], parts["B"]
        if len(a) != 2 or len(b) != 2 or a[1] != inp or b[0] != want_out or a[0] != b[1]:
            what = f"{target}" + (f" part {slot}" if slot is not None else "")
            report.mismatched.append(f"{module}: A {a}, B {b}; {what} is {inp} → {want_out}")
            continue
        covered.add(target)
        (fused_ranks if slot is None and fused_parts(target) else plain_ranks).add(a[0])
    report.covered = len([t for t in covered if _BLOCK_LINEAR.match(t)])
    report.ranks = sorted(plain_ranks or fused_ranks)
    return report


def log_line(name: str, lora: Path, model: Path | None) -> tuple[str, str]:
    """(level, message) for a run's log after a LoRA is saved: the check's summary and its first problems; a
    file that cannot be checked is a warning, never an error (the save itself went through)."""
    try:
        report = check_lora(lora, model)
    except (LoraCheckError, ProbeError, OSError) as exc:
        return "warning", f"{name}: the LoRA's keys could not be checked: {exc}"
    against = "" if report.exact else f" (against {report.model})"
    message = f"{name} key check: {report.summary()}{against}"
    if report.ok:
        return "info", message
    return "warning", (f"{message}; e.g. {'; '.join(report.problems[:3])}. Run `dp-studio check-lora {lora}` for "
                       "the full list.")


def add_check_lora(sub) -> None:
    """Register ``dp-studio check-lora FILE [--model PATH]`` (exit 0: fits, 1: problems, 2: cannot check)."""
    p = sub.add_parser("check-lora", help="check a LoRA's keys and shapes against the base model "
                                          "(safetensors headers only)")
    p.add_argument("file", type=Path, help="the LoRA .safetensors (adapter_model.safetensors, Flux's "
                   "pytorch_lora_weights.safetensors, or an export)")
    p.add_argument("--model", type=Path, default=None,
                   help="the transformer file or diffusers folder (SDXL: the checkpoint; default: the released model's "
                        "shapes)")
    p.set_defaults(handler=_check_lora_command)


def _check_lora_command(args) -> int:
    try:
        report = check_lora(args.file, args.model)
    except (LoraCheckError, ProbeError) as exc:
        print(f"check-lora: {exc}", file=sys.stderr)
        return 2
    print(report.markdown(limit=50))
    return 0 if report.ok else 1
