"""Attach a LoRA the way diffusion-pipe does, save it in its layout (every file written atomically), read LoRAs.

diffusion-pipe forces alpha = rank (scale 1, no alpha tensors) and saves ``adapter_model.safetensors``
(keys ``diffusion_model.<module>.lora_A/.lora_B.weight``), ``adapter_config.json`` (a PEFT LoraConfig) and a
copy of the main config into ``epoch<N>/`` or ``step<N>/``. Reading (:func:`read_adapter`, :func:`lora_pairs`)
accepts that layout and the other common ones (diffusers, a saved PeftModel, kohya), alpha included; the
family maps the module names.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from trainers.chroma_names import kept_targets
from trainers.files import atomic_write_bytes

log = logging.getLogger(__name__)

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
                exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
    """Add a trainable LoRA (alpha = rank) to ``targets`` of a diffusers model; returns its parameters.

    ``exclude`` (``[adapter] exclude_modules``) names modules of the original Chroma layout, as diffusion-pipe
    passes it to peft on that model: a fused Linear it names loses the LoRA on all its diffusers parts.
    """
    targets, unused = kept_targets(targets, exclude)
    if unused:
        log.warning("[adapter] exclude_modules: %s name no LoRA target (give original-layout names such as "
                    "'img_attn.qkv', 'single_blocks.3.linear1' or 'txt_mlp.0')", ", ".join(map(repr, unused)))
    if not targets:
        raise ValueError(f"[adapter] exclude_modules = {exclude!r} excludes every LoRA target; exclude fewer modules")
    from peft import LoraConfig  # here, not at the top: the export child process reads LoRAs without peft

    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, target_modules=targets,
                        init_lora_weights=True)
    model.add_adapter(config)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for _, param in named:
        param.data = param.data.to(dtype)
    if not named:
        raise RuntimeError("the LoRA has no trainable parameters (check [adapter] exclude_modules)")
    return named


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights with PEFT names, adapter name stripped (``...lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def adapter_config(rank: int, dropout: float, extra: dict) -> dict:
    """A PEFT LoraConfig as JSON-able dict (what ``save_pretrained`` would write)."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, **extra).to_dict()
    return json.loads(json.dumps(config, default=_jsonable))


def _jsonable(value):
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value.value) if hasattr(value, "value") else str(value)


write_atomic = atomic_write_bytes  # the name sampling and the loop import


def save_lora(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None, main_config: Path,
              save_dtype: torch.dtype | None = None, file_name: str = ADAPTER_FILE) -> None:
    """Write the LoRA (``file_name``: the family's, ``adapter_model.safetensors`` by default), its
    ``adapter_config.json`` (unless ``config`` is None: formats without one) and the main config copy."""
    folder.mkdir(parents=True, exist_ok=True)
    # save_dtype converts weights only (kohya's integer .alpha tensors stay as they are, as in diffusion-pipe,
    # which converts before the kohya conversion adds them)
    tensors = {k: (v.to(save_dtype) if save_dtype and v.is_floating_point() else v).contiguous()
               for k, v in tensors.items()}
    tmp = folder / f".{file_name}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / file_name)
    if config is not None:
        write_atomic(folder / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    tmp_copy = folder / f".{main_config.name}.tmp"
    shutil.copyfile(main_config, tmp_copy)
    os.replace(tmp_copy, folder / main_config.name)


# ----- reading LoRA files (ours, ComfyUI, diffusers/peft, kohya) -------------------------------------------------
# Prefixes in front of the module name: ComfyUI/diffusion-pipe, ComfyUI full checkpoints, diffusers, a saved
# PeftModel, kohya/sd-scripts (whose module names use "_" for ".").
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.", "lora_unet_")
_SUFFIX = re.compile(r"^(.+?)\.(lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")


@dataclass
class LoraPair:
    """One module's LoRA: ``delta = scale * B @ A`` with ``scale = alpha / rank`` (alpha = rank when absent)."""

    a: torch.Tensor
    b: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        """The number of rows of A."""
        return int(self.a.shape[0])

    def scale(self) -> float:
        """``alpha / rank`` (1 without an alpha: diffusion-pipe's and ComfyUI's convention)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank


def adapter_file(path: Path, what: str) -> Path:
    """The LoRA file of ``path``: the file itself, or in a folder ``adapter_model.safetensors`` or its only
    ``.safetensors`` (diffusion-pipe requires exactly one)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{what} = {str(path)!r} is not a .safetensors file")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{what} = {str(path)!r} does not exist")
    if (path / ADAPTER_FILE).is_file():
        return path / ADAPTER_FILE
    found = sorted(path.glob("*.safetensors"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ValueError(f"{what} = {str(path)!r} must hold {ADAPTER_FILE} or exactly one .safetensors file "
                         f"(found: {names}); or name the file itself")
    return found[0]


def read_adapter(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict | None, Path]:
    """(tensors, adapter_config.json beside the file or None, the file) of a saved LoRA folder or file."""
    file = adapter_file(path, what)
    try:
        with safe_open(str(file), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{what}: {file} is not a readable .safetensors file ({exc})") from None
    config_path = file.parent / CONFIG_FILE
    config = None
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{what}: {config_path} is not valid JSON ({exc})") from None
    return tensors, config, file


def _strip_prefix(key: str) -> str:
    for prefix in KEY_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _config_alpha(module: str, config: dict | None) -> float | None:
    """alpha from a PEFT adapter_config (``alpha_pattern`` entries match a module-name suffix)."""
    if not config or "lora_alpha" not in config:
        return None
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            return float(alpha)
    return float(config["lora_alpha"])


def lora_pairs(tensors: dict[str, torch.Tensor], config: dict | None, file: Path) -> dict[str, LoraPair]:
    """module name (prefix removed, as written in the file) -> its LoRA; every key must be a LoRA key.

    Accepts ``lora_A``/``lora_B`` (peft, diffusers, ComfyUI) and ``lora_down``/``lora_up`` (kohya) weights and
    ``<module>.alpha`` tensors; without an alpha tensor the PEFT config's alpha counts, else alpha = rank.
    """
    for flag, what in (("use_dora", "DoRA"), ("use_rslora", "rank-stabilised (rsLoRA) scaling")):
        if config and config.get(flag):
            raise ValueError(f"{file}: its adapter_config.json sets {flag}; {what} LoRAs cannot be read")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    for key, tensor in tensors.items():
        name = _strip_prefix(key)
        if name.endswith(".alpha"):
            alphas[name[:-len(".alpha")]] = float(tensor.item())
            continue
        match = _SUFFIX.match(name)
        if not match:
            raise ValueError(f"{file}: {key!r} is not a LoRA weight (expected lora_A/lora_B or lora_down/lora_up "
                             f"keys); DoRA, LoKr and full-weight diffs cannot be read")
        parts.setdefault(match[1], {})["A" if match[2] in ("lora_A", "lora_down") else "B"] = tensor
    pairs = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{file}: {module} has only a LoRA {'A' if 'A' in ab else 'B'} matrix")
        if ab["A"].ndim != 2 or ab["B"].ndim != 2 or ab["B"].shape[1] != ab["A"].shape[0]:
            raise ValueError(f"{file}: {module} has LoRA shapes A {list(ab['A'].shape)}, B {list(ab['B'].shape)} "
                             "that do not multiply")
        pairs[module] = LoraPair(ab["A"], ab["B"], alphas.get(module, _config_alpha(module, config)))
    stray = sorted(set(alphas) - set(pairs))
    if stray:
        raise ValueError(f"{file}: alpha without LoRA weights for {', '.join(stray[:5])}")
    return pairs
