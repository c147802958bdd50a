"""LoRAs a Chroma config starts from or fuses (``[adapter] init_from_existing``, ``fuse_adapters``) must fit the
model: checked before launch from safetensors headers alone (:mod:`trainers.lora_check`), so a LoRA for another
model, or with another rank, is an error at its key instead of a failure minutes into loading."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainers.checkpoint_probe import ProbeError
from trainers.checkpoints import saved_lora_file
from trainers.config.issues import Reporter
from trainers.config.paths_check import placeholder_text, resolve
from trainers.lora_check import LoraCheckError, check_lora


def _lora_file(path: Path) -> Path:
    return saved_lora_file(path) if path.is_dir() else path


def check_loras(data: dict[str, Any], bases: Sequence[Path], report: Reporter) -> None:
    """Errors for Chroma LoRAs named by the config that do not fit its transformer (or its LoRA rank)."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    adapter = data.get("adapter") if isinstance(data.get("adapter"), dict) else {}
    if model.get("type") != "chroma" or not adapter:
        return
    base_value = model.get("transformer_path")
    base = resolve(base_value, bases) if isinstance(base_value, str) and placeholder_text(base_value) is None \
        else None
    wanted: list[tuple[str, Any, bool]] = [("adapter.init_from_existing", adapter.get("init_from_existing"), True)]
    fuse = adapter.get("fuse_adapters")
    for index, entry in enumerate(fuse if isinstance(fuse, list) else []):
        if isinstance(entry, dict):
            wanted.append((f"adapter.fuse_adapters[{index}].path", entry.get("path"), False))
    for dotted, value, same_rank in wanted:
        if not isinstance(value, str) or not value or placeholder_text(value) is not None:
            continue
        path = resolve(value, bases)
        if not path.exists():
            continue  # the path check reports it
        file = _lora_file(path)
        try:
            found = check_lora(file, base)
        except (LoraCheckError, ProbeError, OSError) as exc:
            report.error(dotted, f"{file} is not a LoRA dp-studio can read: {exc}",
                         "point it at a saved epoch folder or a LoRA .safetensors file")
            continue
        if not found.ok:
            report.error(dotted, f"the LoRA does not fit the model: {found.summary()}; e.g. "
                                 f"{'; '.join(found.problems[:2])}",
                         f"pick a LoRA trained for this Chroma model (`dp-studio check-lora {file}` lists every key)")
            continue
        rank = adapter.get("rank")
        if same_rank and isinstance(rank, int) and found.ranks and rank not in found.ranks:
            saved = found.ranks[0]
            report.error("adapter.rank", f"[adapter] init_from_existing has rank {saved} but rank = {rank}",
                         f"set rank = {saved}, or start from a LoRA of rank {rank}")
