"""Export a saved Chroma LoRA (diffusion-pipe's ComfyUI layout) as ComfyUI, diffusers or kohya files.

Every export carries training metadata in the safetensors header (``dp_studio.*`` and kohya's ``ss_*``
names), never a secret. The diffusers export splits each fused Linear exactly: the saved A matrices are the
parts' A matrices stacked, and B is block-diagonal, so the parts come back unchanged.

Usage: ``python -m trainers.native.export SAVED_FOLDER --layout comfyui|diffusers|kohya --out FILE.safetensors``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trainers.native.families.chroma_keys import FUSED_PARTS, PREFIX
from trainers.native.lora_io import ADAPTER_FILE, CONFIG_FILE

LAYOUTS = ("comfyui", "diffusers", "kohya")
DOUBLE_SUFFIX = {"img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out", "img_mlp.0": "ff.net.0.proj",
                 "img_mlp.2": "ff.net.2", "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2"}
SINGLE_SUFFIX = {"linear2": "proj_out"}


class ExportError(ValueError):
    """The saved folder cannot be exported; the message says why."""


def read_saved(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The LoRA tensors and adapter_config of a saved ``epochN``/``stepN`` folder."""
    path = Path(folder) / ADAPTER_FILE
    if not path.is_file():
        raise ExportError(f"{folder} has no {ADAPTER_FILE}: pick a saved epoch or step folder")
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    config_path = Path(folder) / CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    return tensors, config


def _modules(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """original module name -> (A, B)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ExportError(f"unexpected key {key!r}: not a diffusion-pipe Chroma LoRA")
        module, which = key[len(PREFIX):].rsplit(".lora_", 1)
        out.setdefault(module, {})[which[0]] = value
    return {m: (ab["A"], ab["B"]) for m, ab in out.items()}


def _split(module: str, a: torch.Tensor, b: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """A fused module's LoRA as the diffusers parts' LoRAs (exact inverse of stacking + block-diagonal)."""
    block, index, fused = module.split(".", 2)
    kind = "transformer_blocks" if block == "double_blocks" else "single_transformer_blocks"
    parts = FUSED_PARTS[fused]
    if a.shape[0] % len(parts):
        raise ExportError(f"{module}: rank {a.shape[0]} does not split into {len(parts)} equal parts")
    rank, width = a.shape[0] // len(parts), a.shape[1]
    outs = [width] * len(parts)
    outs[-1] = b.shape[0] - width * (len(parts) - 1)  # the MLP input of linear1 is wider than q/k/v
    result, row = [], 0
    for i, suffix in enumerate(parts):
        cols = slice(i * rank, (i + 1) * rank)
        result.append((f"{kind}.{index}.{suffix}", a[cols], b[row:row + outs[i], cols]))
        row += outs[i]
    return result


def to_diffusers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys ``transformer.<diffusers module>.lora_A/.lora_B.weight`` as diffusers' load_lora_weights reads."""
    out = {}
    for module, (a, b) in _modules(tensors).items():
        block, index, rest = module.split(".", 2)
        if rest in FUSED_PARTS:
            pieces = _split(module, a, b)
        else:
            kind, table = (("transformer_blocks", DOUBLE_SUFFIX) if block == "double_blocks"
                           else ("single_transformer_blocks", SINGLE_SUFFIX))
            pieces = [(f"{kind}.{index}.{table[rest]}", a, b)]
        for name, pa, pb in pieces:
            out[f"transformer.{name}.lora_A.weight"] = pa.contiguous()
            out[f"transformer.{name}.lora_B.weight"] = pb.contiguous()
    return out


def to_kohya(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``lora_unet_<module with _>.lora_down/.lora_up.weight`` + ``.alpha`` (= rank: scale 1, as trained)."""
    out = {}
    for module, (a, b) in _modules(tensors).items():
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_down.weight"] = a.contiguous()
        out[f"{name}.lora_up.weight"] = b.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(a.shape[0]))
    return out


def metadata(folder: Path, config: dict, layout: str, extra: dict | None = None) -> dict[str, str]:
    """Training facts for the header: strings only, no secrets (the run config never holds the W&B key)."""
    rank = config.get("r")
    data = {"format": "pt", "dp_studio.layout": layout, "dp_studio.source": Path(folder).name,
            "dp_studio.base_model": "chroma", "ss_base_model_version": "chroma",
            "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank)}
    for key, value in (extra or {}).items():
        data[f"dp_studio.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return {k: v for k, v in data.items() if "api_key" not in k}


def export(folder: Path, layout: str, out: Path, extra: dict | None = None) -> Path:
    """Write the saved LoRA of ``folder`` as ``layout`` to ``out`` (atomically); returns ``out``."""
    if layout not in LAYOUTS:
        raise ExportError(f"layout {layout!r} unknown; pick one of {', '.join(LAYOUTS)}")
    tensors, config = read_saved(folder)
    converted = {"comfyui": dict, "diffusers": to_diffusers, "kohya": to_kohya}[layout](tensors)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(converted, str(tmp), metadata=metadata(folder, config, layout, extra))
    os.replace(tmp, out)
    return out


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
