"""The LoRA key check (trainers/lora_check.py) for SDXL: kohya-format LoRAs (``lora_unet_*``, ``lora_te1_*``,
``lora_te2_*`` with ``lora_down`` / ``lora_up`` / ``alpha``, what diffusion-pipe's models/sdxl.py save_adapter and
the native trainer write) against an SDXL single-file checkpoint, from its header alone.

diffusion-pipe models/sdxl.py configure_adapter (:430-463) puts a LoRA on every nn.Linear inside the UNet's
``down_blocks``, ``mid_block`` and ``up_blocks`` and on every nn.Linear of both text encoders; save_adapter
(:465-472) names them with diffusers' ``convert_state_dict_to_kohya``: the diffusers module name with its dots turned
into underscores after ``lora_unet_`` / ``lora_te1_`` / ``lora_te2_``.

The checkpoint is in the original (Stability) layout, so its Linears are mapped to diffusers' names here:

- UNet (``model.diffusion_model.``): ``input_blocks.N`` are the down blocks' layers in order, a ``.0.op`` conv
  closing each block but the last (``.0`` the resnet, ``.1`` the transformer); ``middle_block.0/1/2`` are the mid
  block's resnet, transformer, resnet; ``output_blocks.N`` are the up blocks' layers, one more per block than a
  down block has. A resnet's only Linear is ``emb_layers.1`` (diffusers' ``time_emb_proj``); a transformer's
  Linears keep their names.
- First text encoder (``conditioner.embedders.0.transformer.``): transformers' CLIP names.
- Second text encoder (``conditioner.embedders.1.model.``): OpenCLIP's, with q, k and v fused in ``attn.in_proj``,
  ``attn.out_proj``, ``mlp.c_fc`` / ``mlp.c_proj`` for ``fc1`` / ``fc2`` and ``text_projection`` a matrix used as
  ``x @ P`` (diffusers' Linear weight is its transpose).

Without the checkpoint, the released SDXL base's shapes are assumed (:func:`released_linears`), and the report
says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainers.checkpoint_probe import ProbeError
from trainers.lora_check_flux import _shapes, paired_modules

UNET = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer."
TE2 = "conditioner.embedders.1.model."
PREFIXES = {"unet": "lora_unet_", "te1": "lora_te1_", "te2": "lora_te2_"}
_SDXL_LORA = re.compile(r"^lora_(unet_(down_blocks|mid_block|up_blocks)_|te1_|te2_)")
_TRANSFORMER = re.compile(r"^(proj_in|proj_out|transformer_blocks\.\d+\..+)$")
# The released SDXL base (stabilityai/stable-diffusion-xl-base-1.0): its UNet and the two CLIPs' configs.
RELEASED = {"channels": (320, 640, 1280), "attention": (False, True, True), "transformer_layers": (1, 2, 10),
            "layers_per_block": 2, "cross": 2048, "te1": (768, 3072, 12), "te2": (1280, 5120, 32, 1280)}


def _transformer_linears(prefix: str, c: int, layers: int, cross: int) -> dict[str, tuple[int, int]]:
    """Linears of one Transformer2DModel with linear projections (SDXL's), ``c`` channels wide."""
    out = {prefix + "proj_in": (c, c), prefix + "proj_out": (c, c)}
    for k in range(layers):
        block = f"{prefix}transformer_blocks.{k}."
        for attn, kv in (("attn1", c), ("attn2", cross)):
            out |= {f"{block}{attn}.to_q": (c, c), f"{block}{attn}.to_k": (c, kv), f"{block}{attn}.to_v": (c, kv),
                    f"{block}{attn}.to_out.0": (c, c)}
        out[block + "ff.net.0.proj"], out[block + "ff.net.2"] = (8 * c, c), (c, 4 * c)  # GEGLU: two 4c halves
    return out


def clip_linears(hidden: int, mlp: int, layers: int, projection: int | None = None) -> dict[str, tuple[int, int]]:
    """diffusers/transformers name -> (out, in) of a CLIP text encoder's Linears (``text_projection`` when it has
    one)."""
    out: dict[str, tuple[int, int]] = {}
    for n in range(layers):
        layer = f"text_model.encoder.layers.{n}."
        out |= {f"{layer}self_attn.{p}_proj": (hidden, hidden) for p in ("q", "k", "v", "out")}
        out[layer + "mlp.fc1"], out[layer + "mlp.fc2"] = (mlp, hidden), (hidden, mlp)
    if projection:
        out["text_projection"] = (projection, hidden)
    return out


def released_linears() -> dict[str, dict[str, tuple[int, int]]]:
    """component ("unet", "te1", "te2") -> diffusers name -> (out, in) of every Linear diffusion-pipe trains in the
    released SDXL base."""
    r = RELEASED
    temb, per, cross = 4 * r["channels"][0], r["layers_per_block"], r["cross"]
    unet: dict[str, tuple[int, int]] = {}
    blocks = list(zip(r["channels"], r["attention"], r["transformer_layers"], strict=True))
    for i, (c, attention, layers) in enumerate(blocks):
        for j in range(per):
            unet[f"down_blocks.{i}.resnets.{j}.time_emb_proj"] = (c, temb)
            if attention:
                unet |= _transformer_linears(f"down_blocks.{i}.attentions.{j}.", c, layers, cross)
    c, _, layers = blocks[-1]
    unet |= {f"mid_block.resnets.{j}.time_emb_proj": (c, temb) for j in range(2)}
    unet |= _transformer_linears("mid_block.attentions.0.", c, layers, cross)
    for i, (c, attention, layers) in enumerate(reversed(blocks)):
        for j in range(per + 1):
            unet[f"up_blocks.{i}.resnets.{j}.time_emb_proj"] = (c, temb)
            if attention:
                unet |= _transformer_linears(f"up_blocks.{i}.attentions.{j}.", c, layers, cross)
    return {"unet": unet, "te1": clip_linears(*r["te1"]), "te2": clip_linears(*r["te2"])}


def _unet_prefixes(shapes: dict[str, list[int]]) -> dict[str, str]:
    """Original layer prefix (``input_blocks.4.1.``) -> diffusers prefix (``down_blocks.1.attentions.0.``)."""
    def indices(kind: str) -> list[int]:
        return sorted({int(m[1]) for k in shapes if (m := re.match(rf"{kind}\.(\d+)\.", k))})

    out: dict[str, str] = {}
    block, layer, per_down = 0, 0, None
    for n in indices("input_blocks"):
        if n == 0:
            continue  # conv_in
        if f"input_blocks.{n}.0.op.weight" in shapes:  # the downsampler closing this block
            per_down = layer if per_down is None else per_down
            block, layer = block + 1, 0
            continue
        out[f"input_blocks.{n}.0."] = f"down_blocks.{block}.resnets.{layer}."
        out[f"input_blocks.{n}.1."] = f"down_blocks.{block}.attentions.{layer}."
        layer += 1
    per_up = (per_down if per_down is not None else layer) + 1
    for n in indices("output_blocks"):
        i, j = divmod(n, per_up)
        out[f"output_blocks.{n}.0."] = f"up_blocks.{i}.resnets.{j}."
        out[f"output_blocks.{n}.1."] = f"up_blocks.{i}.attentions.{j}."
    out |= {"middle_block.0.": "mid_block.resnets.0.", "middle_block.1.": "mid_block.attentions.0.",
            "middle_block.2.": "mid_block.resnets.1."}
    return out


def _unet_linears(shapes: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    prefixes = _unet_prefixes(shapes)
    out: dict[str, tuple[int, int]] = {}
    for key, shape in shapes.items():
        m = re.match(r"((?:input_blocks|output_blocks|middle_block)\.(?:\d+\.)?\d+\.)(.+)\.weight$", key)
        if not m or len(shape) != 2 or m[1] not in prefixes:
            continue
        target, rest = prefixes[m[1]], m[2]
        if ".resnets." in target and rest == "emb_layers.1":
            out[target + "time_emb_proj"] = (shape[0], shape[1])
        elif ".attentions." in target and _TRANSFORMER.match(rest):
            out[target + rest] = (shape[0], shape[1])
    return out


def _te2_linears(shapes: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    names = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for key, shape in shapes.items():
        if key == "text_projection" and len(shape) == 2:
            out["text_projection"] = (shape[1], shape[0])
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", key)
        if not m or len(shape) != 2:
            continue
        layer = f"text_model.encoder.layers.{m[1]}."
        if m[2] == "attn.in_proj_weight":
            out |= {f"{layer}self_attn.{p}_proj": (shape[0] // 3, shape[1]) for p in ("q", "k", "v")}
        elif m[2].removesuffix(".weight") in names and m[2].endswith(".weight"):
            out[layer + names[m[2].removesuffix(".weight")]] = (shape[0], shape[1])
    return out


def model_linears(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """component -> diffusers name -> (out, in) of the Linears diffusion-pipe trains, read from an original-layout
    SDXL checkpoint's header."""
    shapes = _shapes(path)

    def part(prefix: str) -> dict[str, list[int]]:
        return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}

    te1 = {k.removesuffix(".weight"): (v[0], v[1]) for k, v in part(TE1).items()
           if k.startswith("text_model.encoder.layers.") and k.endswith(".weight") and len(v) == 2}
    return {"unet": _unet_linears(part(UNET)), "te1": te1, "te2": _te2_linears(part(TE2))}


def is_sdxl_model(path: Path | None) -> bool:
    """Whether ``path`` is an original-layout SDXL checkpoint (the UNet's input blocks and the second CLIP)."""
    if path is None or not Path(path).is_file():
        return False
    try:
        keys = _shapes(Path(path))
    except (ProbeError, OSError):
        return False
    return any(k.startswith(UNET + "input_blocks.") for k in keys) and any(k.startswith(TE2) for k in keys)


def is_sdxl_lora(keys: list[str]) -> bool:
    """Whether a LoRA's keys are SDXL's kohya names (a Chroma kohya export's are ``lora_unet_double_blocks_...``)."""
    return any(_SDXL_LORA.match(k) for k in keys)


def check_sdxl_lora(lora: Path, shapes: dict[str, list[int]], model: Path | None, report_class, split_key):
    """The :class:`trainers.lora_check.LoraCheck` of an SDXL kohya LoRA with tensor ``shapes`` against the checkpoint
    ``model`` (None or missing: the released SDXL base's shapes). ``split_key`` is lora_check's key splitter."""
    if model is not None and Path(model).is_file():
        linears, source, exact = model_linears(Path(model)), Path(model).name, True
    else:
        linears, source, exact = released_linears(), "the released SDXL's shapes (the checkpoint was not found)", False
    kohya = {PREFIXES[part] + name.replace(".", "_"): (part, name) for part, names in linears.items() for name in names}
    report = report_class(lora, "kohya", source, exact, targets=len(kohya))
    ranks: set[int] = set()
    for module, parts in paired_modules(shapes, split_key, report, keep_alpha=True):  # kohya alphas are checked
        if module not in kohya:
            report.unmatched.append(module)
            continue
        part, name = kohya[module]
        (out, inp), a, b = linears[part][name], parts["A"], parts["B"]
        alpha = parts.get("alpha")
        if len(a) != 2 or len(b) != 2 or a[1] != inp or b[0] != out or a[0] != b[1] or alpha not in (None, []):
            why = f"; alpha has shape {alpha}, not a scalar" if alpha not in (None, []) else ""
            report.mismatched.append(f"{module}: A {a}, B {b}; {name} is {inp} → {out}{why}")
            continue
        report.covered += 1
        ranks.add(a[0])
    report.ranks = sorted(ranks)
    return report
