"""Attach a LoRA the way diffusion-pipe does, and save it in its layout, every file written atomically.

diffusion-pipe forces alpha = rank (scale 1, no alpha tensors) and saves ``adapter_model.safetensors``
(keys ``diffusion_model.<module>.lora_A/.lora_B.weight``), ``adapter_config.json`` (a PEFT LoraConfig) and a
copy of the main config into ``epoch<N>/`` or ``step<N>/``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save_file

from trainers.files import atomic_write_bytes

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


def adapter_settings(table: dict) -> tuple[int, float]:
    """(rank, dropout) from ``[adapter]``; only LoRA, and no ``alpha`` (diffusion-pipe rejects it)."""
    kind = table.get("type")
    if kind != "lora":
        raise ValueError(f"[adapter] type = {kind!r} is not supported by the native trainer; use 'lora'")
    if "alpha" in table:
        raise ValueError("[adapter] alpha is not allowed: alpha is always equal to rank (as in diffusion-pipe)")
    if "rank" not in table:
        raise KeyError("[adapter] rank is required")
    return int(table["rank"]), float(table.get("dropout", 0.0))


def attach_lora(model: torch.nn.Module, targets: list[str], rank: int, dropout: float, dtype: torch.dtype,
                exclude: list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
    """Add a trainable LoRA (alpha = rank) to ``targets`` of a diffusers model; returns its parameters."""
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, target_modules=targets,
                        exclude_modules=exclude, init_lora_weights=True)
    model.add_adapter(config)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for _, param in named:
        param.data = param.data.to(dtype)
    if not named:
        raise RuntimeError("the LoRA has no trainable parameters (check [adapter] exclude_modules)")
    return named


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights with PEFT names, adapter name stripped (``...lora_A.weight``)."""
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def adapter_config(rank: int, dropout: float, extra: dict) -> dict:
    """A PEFT LoraConfig as JSON-able dict (what ``save_pretrained`` would write)."""
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, **extra).to_dict()
    return json.loads(json.dumps(config, default=_jsonable))


def _jsonable(value):
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value.value) if hasattr(value, "value") else str(value)


write_atomic = atomic_write_bytes  # the name sampling and the loop import


def save_lora(folder: Path, tensors: dict[str, torch.Tensor], config: dict, main_config: Path,
              save_dtype: torch.dtype | None = None) -> None:
    """Write ``adapter_model.safetensors``, ``adapter_config.json`` and the main config copy into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(save_dtype) if save_dtype else v).contiguous() for k, v in tensors.items()}
    tmp = folder / f".{ADAPTER_FILE}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / ADAPTER_FILE)
    write_atomic(folder / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    tmp_copy = folder / f".{main_config.name}.tmp"
    shutil.copyfile(main_config, tmp_copy)
    os.replace(tmp_copy, folder / main_config.name)
