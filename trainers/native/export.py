"""Export a saved Chroma LoRA (diffusion-pipe's ComfyUI layout) as ComfyUI, diffusers or kohya files; a saved Flux
or SD3 LoRA (diffusers' layout) as ComfyUI or diffusers files (:func:`export_flux`); a saved Qwen-Image LoRA
(ComfyUI's layout with diffusers' module names) as ComfyUI or diffusers files (:func:`export_qwen`; a saved HiDream
LoRA, in the same layout, through it too); a saved SDXL LoRA (kohya's layout) as kohya, ComfyUI or diffusers files
(:func:`export_sdxl`).

Every export carries training metadata in the safetensors header (``dp_studio.*`` and kohya's ``ss_*``
names), never a secret. The diffusers export splits each fused Linear exactly: a LoRA trained on the fused Linear
(diffusion-pipe's and this trainer's) gives every part the shared A and its rows of B; the stacked files of earlier
studio versions (A matrices stacked, B block-diagonal) give the parts back unchanged.

diffusers' ``ChromaPipeline.load_lora_weights`` cannot read the saved ComfyUI layout itself (0.42's Flux/Chroma
loader converts only kohya, XLabs, BFL-control and fal layouts, and silently loads nothing from
``diffusion_model.`` keys): load the diffusers export, or ``to_diffusers(read_saved(folder)[0])``.

Usage: ``python -m trainers.native.export SAVED_FOLDER --layout comfyui|diffusers|kohya --out FILE.safetensors``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.checkpoints import ADAPTER_FILE
from trainers.chroma_names import PREFIX, fused_parts

if TYPE_CHECKING:
    import torch

# torch is imported where a layout needs it: the ComfyUI export copies the saved bytes and starts in a fraction
# of the time (the studio runs every export in a child process; bench/lora_export.py measures it).
CONFIG_FILE = "adapter_config.json"
FLUX_FILE = "pytorch_lora_weights.safetensors"  # a Flux or SD3 save (families/flux.py, sd3.py LORA_FILE)

LAYOUTS = ("comfyui", "diffusers", "kohya")


class ExportError(ValueError):
    """The saved folder cannot be exported; the message says why."""


def read_saved(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The LoRA tensors and adapter_config of a saved ``epochN``/``stepN`` folder."""
    path = Path(folder) / ADAPTER_FILE
    if not path.is_file():
        raise ExportError(f"{folder} has no {ADAPTER_FILE}: pick a saved epoch or step folder")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return tensors, _read_config(folder)


def _modules(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """original module name -> (A, B); raises on a key outside diffusion-pipe's Chroma layout."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ExportError(f"unexpected key {key!r}: not a diffusion-pipe Chroma LoRA")
        module, which = key[len(PREFIX):].rsplit(".lora_", 1)
        out.setdefault(module, {})[which[0]] = value
    return {m: (ab["A"], ab["B"]) for m, ab in out.items()}


def _part_outs(module: str, a: torch.Tensor, b: torch.Tensor) -> list[int]:
    """Output widths of a fused module's parts: q, k and v are as wide as the input, linear1's MLP takes the rest."""
    n, width = len(fused_parts(module) or ()), a.shape[1]
    return [width] * (n - 1) + [b.shape[0] - width * (n - 1)]


def lora_rank(modules: dict[str, tuple[torch.Tensor, torch.Tensor]], config: dict) -> int:
    """The LoRA's rank: adapter_config's ``r``, else the unfused modules' rank (else a fused module's part rank)."""
    if "r" in config:
        return int(config["r"])
    plain = {a.shape[0] for m, (a, _) in modules.items() if not fused_parts(m)}
    if len(plain) == 1:
        return plain.pop()
    if plain:
        raise ExportError(f"modules have different ranks {sorted(plain)} and there is no adapter_config.json")
    from trainers.native.families.chroma_keys import split_fused_lora
    module, (a, b) = next(iter(modules.items()))
    n = len(fused_parts(module) or ())
    try:
        split_fused_lora(module, a, b, _part_outs(module, a, b), a.shape[0] // n)
        return a.shape[0] // n
    except ValueError:
        return a.shape[0]


def to_diffusers(tensors: dict[str, torch.Tensor], config: dict | None = None) -> dict[str, torch.Tensor]:
    """Keys ``transformer.<diffusers module>.lora_A/.lora_B.weight`` as diffusers' load_lora_weights reads.

    Fused modules are split exactly (:func:`split_fused_lora`): our stacked parts come back unchanged, a LoRA
    trained on the fused Linear gives every part its A and its rows of B.
    """
    from trainers.native.families.chroma_keys import diffusers_name, split_fused_lora

    modules = _modules(tensors)
    rank = lora_rank(modules, config or {})
    out = {}
    for module, (a, b) in modules.items():
        parts = fused_parts(module)
        if parts:
            try:
                split = split_fused_lora(module, a, b, _part_outs(module, a, b), rank)
            except ValueError as exc:
                raise ExportError(str(exc)) from None
            pieces = [(name, *ab) for name, ab in zip(parts, split, strict=True) if ab is not None]
        else:
            try:
                pieces = [(diffusers_name(module), a, b)]
            except KeyError:
                raise ExportError(f"{module} is not a Linear of a Chroma transformer") from None
        shared: set[int] = set()
        for name, pa, pb in pieces:
            if pa.data_ptr() in shared:  # a fused Linear's parts share its A; safetensors refuses shared storage
                pa = pa.clone()
            shared.add(pa.data_ptr())
            out[f"transformer.{name}.lora_A.weight"] = pa.contiguous()
            out[f"transformer.{name}.lora_B.weight"] = pb.contiguous()
    return out


def metadata(folder: Path, config: dict, layout: str, extra: dict | None = None,
             base: str = "chroma") -> dict[str, str]:
    """Training facts for the header: strings only, no secrets (the run config never holds the W&B key)."""
    rank = config.get("r")
    data = {"format": "pt", "dp_studio.layout": layout, "dp_studio.source": Path(folder).name,
            "dp_studio.base_model": base, "ss_base_model_version": base,
            "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank)}
    for key, value in (extra or {}).items():
        data[f"dp_studio.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return {k: v for k, v in data.items() if "api_key" not in k}


def export(folder: Path, layout: str, out: Path, extra: dict | None = None) -> Path:
    """Write the saved LoRA of ``folder`` as ``layout`` to ``out`` (atomically); returns ``out``."""
    if layout not in LAYOUTS:
        raise ExportError(f"layout {layout!r} unknown; pick one of {', '.join(LAYOUTS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if (Path(folder) / FLUX_FILE).is_file():
        export_flux(Path(folder), layout, tmp, extra)
    elif is_qwen_save(Path(folder)):
        export_qwen(Path(folder), layout, tmp, extra)
    elif is_lumina_save(Path(folder)):
        export_lumina(Path(folder), layout, tmp, extra)
    elif is_hidream_save(Path(folder)):
        export_qwen(Path(folder), layout, tmp, extra, base="hidream", title="HiDream")
    elif is_sdxl_save(Path(folder)):
        export_sdxl(Path(folder), layout, tmp, extra)
    elif layout in ("comfyui", "kohya"):
        config = _read_config(folder)
        _copy_with_metadata(Path(folder) / ADAPTER_FILE, tmp, metadata(folder, config, layout, extra),
                            kohya=layout == "kohya")
    else:
        from safetensors.torch import save_file

        tensors, config = read_saved(folder)
        converted = to_diffusers(tensors, config)
        save_file(converted, str(tmp), metadata=metadata(folder, config, layout, extra))
    os.replace(tmp, out)
    return out


def _read_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _flux_modules(header: dict) -> dict[str, tuple[dict, dict]]:
    """diffusers module -> (A, B) header entries of a Flux LoRA; raises on a key outside that layout."""
    out: dict[str, dict[str, dict]] = {}
    for key, value in header.items():
        if not key.startswith("transformer.") or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ExportError(f"unexpected key {key!r}: not a diffusers-layout Flux or SD3 LoRA")
        module, which = key.removeprefix("transformer.").rsplit(".lora_", 1)
        out.setdefault(module, {})[which[0]] = value
    return {m: (ab["A"], ab["B"]) for m, ab in out.items()}


def export_flux(folder: Path, layout: str, dst: Path, extra: dict | None) -> None:
    """A saved Flux or SD3 LoRA (``pytorch_lora_weights.safetensors``, diffusers' layout as diffusion-pipe saves it
    for both) under a new header: diffusers loads it as it is and ComfyUI reads these LoRAs in diffusers names, so
    both exports are the saved bytes; the header's base model says which family (SD3: its keys,
    trainers/lora_check_sd3.py). kohya's layout is not written."""
    from trainers.lora_check_sd3 import is_sd3_lora

    src = folder / FLUX_FILE
    with open(src, "rb") as fin:
        (size,) = struct.unpack("<Q", fin.read(8))
        header = json.loads(fin.read(size))
    header.pop("__metadata__", None)
    base, label = ("sd3", "an SD3") if is_sd3_lora(list(header)) else ("flux", "a Flux")
    if layout == "kohya":
        raise ExportError(f"{label} LoRA exports as comfyui or diffusers (the saved diffusers file, which ComfyUI "
                          f"and diffusers load); the kohya layout is not available for {label[label.index(' ') + 1:]}")
    ranks = {a["shape"][0] for a, _ in _flux_modules(header).values()}
    config = {"r": ranks.pop()} if len(ranks) == 1 else {}
    _copy_with_metadata(src, dst, metadata(folder, config, layout, extra, base=base), check=_flux_modules)


def is_qwen_save(folder: Path) -> bool:
    """Whether a saved folder holds a Qwen-Image LoRA (its keys name Linears only Qwen-Image's blocks have)."""
    from trainers.checkpoint_probe import ProbeError, read_header
    from trainers.lora_check_qwen import is_qwen_lora

    try:
        return is_qwen_lora(list(read_header(Path(folder) / ADAPTER_FILE)))
    except (ProbeError, OSError):
        return False


def is_hidream_save(folder: Path) -> bool:
    """Whether a saved folder holds a HiDream LoRA (its keys name Linears only HiDream's blocks have)."""
    from trainers.checkpoint_probe import ProbeError, read_header
    from trainers.lora_check_hidream import is_hidream_lora

    try:
        return is_hidream_lora(list(read_header(Path(folder) / ADAPTER_FILE)))
    except (ProbeError, OSError):
        return False


def _qwen_modules(header: dict, title: str = "Qwen-Image") -> dict[str, tuple[dict, dict]]:
    """diffusers module -> (A, B) header entries of a saved ``title`` LoRA (``diffusion_model.`` + diffusers
    names); raises on any other key."""
    out: dict[str, dict[str, dict]] = {}
    for key, entry in header.items():
        if not key.startswith(PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ExportError(f"unexpected key {key!r}: not a diffusion-pipe {title} LoRA")
        module, which = key[len(PREFIX):].rsplit(".lora_", 1)
        out.setdefault(module, {})[which[0]] = entry
    return {m: (ab["A"], ab["B"]) for m, ab in out.items()}


def export_qwen(folder: Path, layout: str, dst: Path, extra: dict | None, base: str = "qwen_image",
                title: str = "Qwen-Image") -> None:
    """A saved Qwen-Image (or HiDream: ``base``, ``title``) LoRA (``diffusion_model.`` + diffusers module names, as
    diffusion-pipe saves it) under a new header (comfyui: the saved file, which ComfyUI and the diffusers pipeline
    load as it is) or with diffusers' ``transformer.`` keys (diffusers)."""
    if layout == "kohya":
        raise ExportError(f"a {title} LoRA exports as comfyui or diffusers (both load in ComfyUI and diffusers); "
                          f"the kohya layout is not available for {title}")
    config = _read_config(folder)
    meta = metadata(folder, config, layout, extra, base=base)
    check = partial(_qwen_modules, title=title)
    if layout == "comfyui":
        _copy_with_metadata(folder / ADAPTER_FILE, dst, meta, check=check)
        return
    from safetensors.torch import save_file

    tensors, _ = read_saved(folder)
    check({k: {} for k in tensors})
    save_file({"transformer." + k[len(PREFIX):]: v.contiguous() for k, v in tensors.items()}, str(dst), metadata=meta)


def is_lumina_save(folder: Path) -> bool:
    """Whether a saved folder holds a Lumina 2 LoRA (original NextDiT names, caption refiner included)."""
    from trainers.checkpoint_probe import ProbeError, read_header
    from trainers.lora_check_lumina import is_lumina_lora

    try:
        return is_lumina_lora(list(read_header(Path(folder) / ADAPTER_FILE)))
    except (ProbeError, OSError):
        return False


def export_lumina(folder: Path, layout: str, dst: Path, extra: dict | None) -> None:
    """A saved Lumina 2 LoRA (``diffusion_model.`` + original NextDiT names, as diffusion-pipe saves it) under a new
    header (comfyui: the saved file, which ComfyUI and diffusers' Lumina2Pipeline load as it is) or in diffusers'
    ``transformer.`` names with ``attention.qkv`` split into to_q / to_k / to_v (diffusers)."""
    if layout == "kohya":
        raise ExportError("a Lumina 2 LoRA exports as comfyui or diffusers (both load in ComfyUI and diffusers); "
                          "the kohya layout is not available for Lumina 2")
    config = _read_config(folder)
    meta = metadata(folder, config, layout, extra, base="lumina_2")
    if layout == "comfyui":
        _copy_with_metadata(folder / ADAPTER_FILE, dst, meta, check=_qwen_modules)
        return
    from safetensors.torch import save_file

    from trainers.native.families.lumina_2_keys import to_diffusers_lora

    tensors, _ = read_saved(folder)
    _qwen_modules({k: {} for k in tensors})
    converted = to_diffusers_lora({k[len(PREFIX):]: v for k, v in tensors.items()})
    save_file({"transformer." + k: v.contiguous() for k, v in converted.items()}, str(dst), metadata=meta)


SDXL_FILE = "lora.safetensors"  # an SDXL save, kohya's layout (families/sdxl.py LORA_FILE)
SDXL_PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_")


def is_sdxl_save(folder: Path) -> bool:
    """Whether a saved folder holds an SDXL LoRA in kohya's layout (diffusion-pipe's SDXL save)."""
    from trainers.checkpoint_probe import ProbeError, read_header

    try:
        keys = [k for k in read_header(Path(folder) / SDXL_FILE) if k != "__metadata__"]
    except (ProbeError, OSError):
        return False
    return bool(keys) and all(k.startswith(SDXL_PREFIXES) for k in keys)


def export_sdxl(folder: Path, layout: str, dst: Path, extra: dict | None) -> None:
    """kohya and comfyui: the saved kohya file under the export's header (ComfyUI reads kohya SDXL LoRAs as
    they are); diffusers: peft-style ``unet.`` / ``text_encoder.`` / ``text_encoder_2.`` keys."""
    from safetensors import safe_open

    src = Path(folder) / SDXL_FILE
    with safe_open(str(src), framework="pt") as f:
        keys = list(f.keys())
        ranks = {k.rsplit(".lora_down.", 1)[0]: f.get_slice(k).get_shape()[0] for k in keys if ".lora_down." in k}
        alphas = {k[:-len(".alpha")]: float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    meta = metadata(folder, {"r": max(ranks.values(), default=0)}, layout, extra, base="sdxl")
    if layout in ("kohya", "comfyui"):
        _copy_with_metadata(src, dst, meta, check=dict)
        return
    scaled = sorted(m for m, rank in ranks.items() if alphas.get(m, rank) != rank)
    if scaled:
        raise ExportError(f"{src.name}: {len(scaled)} module(s) have an alpha other than their rank (e.g. "
                          f"{scaled[0]}); diffusers' layout has no alpha: export it as kohya instead")
    from safetensors.torch import save_file

    from trainers.native.families.sdxl_lora import kohya_to_diffusers

    try:
        tensors = kohya_to_diffusers(src)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    save_file(tensors, str(dst), metadata=meta)


def _copy_with_metadata(src: Path, dst: Path, meta: dict[str, str], kohya: bool = False, check=None) -> None:
    """The saved safetensors file under a new header: the tensor bytes are copied unchanged.

    safetensors' layout: an 8-byte little-endian header length, the JSON header, then the tensor data (offsets
    in the header are relative to the data, so a new header length moves nothing). ``kohya`` renames the keys
    (:func:`kohya_name`) and appends each module's ``.alpha`` (float32 = its rank: scale 1, as trained).
    """
    if not src.is_file():
        raise ExportError(f"{src.parent} has no {ADAPTER_FILE}: pick a saved epoch or step folder")
    with open(src, "rb") as fin:
        (size,) = struct.unpack("<Q", fin.read(8))
        try:
            header = json.loads(fin.read(size))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ExportError(f"{src} is not a safetensors file ({exc})") from None
        header.pop("__metadata__", None)
        modules = (check or _modules)(header)  # the same key check as the other layouts
        tail = b""
        if kohya:
            end = src.stat().st_size - 8 - size
            header = {kohya_name(k): v for k, v in header.items()}
            for i, (module, (a, _)) in enumerate(modules.items()):
                span = [end + 4 * i, end + 4 * (i + 1)]
                header[f"lora_unet_{module.replace('.', '_')}.alpha"] = {"dtype": "F32", "shape": [],
                                                                          "data_offsets": span}
                tail += struct.pack("<f", float(a["shape"][0]))
        text = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes
        with open(dst, "wb") as fout:
            fout.write(struct.pack("<Q", len(text)) + text)
            shutil.copyfileobj(fin, fout, 16 * 2**20)
            fout.write(tail)


def kohya_name(key: str) -> str:
    """``diffusion_model.<module>.lora_A/B.weight`` -> ``lora_unet_<module with _>.lora_down/up.weight``."""
    module, which = key[len(PREFIX):].rsplit(".lora_", 1)
    return f"lora_unet_{module.replace('.', '_')}.lora_{'down' if which[0] == 'A' else 'up'}.weight"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.native.export", description=__doc__)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--layout", choices=LAYOUTS, default="comfyui")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--meta", default="{}", help="JSON object of extra metadata (run id, steps, ...)")
    args = ap.parse_args(argv)
    try:
        print(export(args.folder, args.layout, args.out, json.loads(args.meta)))
    except (ExportError, ValueError, OSError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
