"""Full training-state checkpoints of the native trainer, for resume that continues exactly.

``<run>/global_step<N>/`` holds ``training_state.pt`` (LoRA weights, optimizer state, every RNG state) and
``state.json`` (step, epoch, data position, time), written into a temp folder that is renamed into place, so a
checkpoint either exists whole or not at all; ``latest`` names the newest (diffusion-pipe's convention). The
``.pt`` file holds only tensors, numbers, strings and containers, and loads with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trainers.checkpoints import LATEST_FILE, STATE_FILE, STATE_META, STATE_PREFIX, room_for
from trainers.files import atomic_write_text


@dataclass(frozen=True)
class Position:
    """Where training goes on: ``epoch`` (1-based) and the optimizer steps of it already done."""

    step: int
    epoch: int
    steps_into_epoch: int
    examples: int


def _numpy_state() -> dict:
    state = np.random.get_state(legacy=False)
    inner = state["state"]
    return {"bit_generator": state["bit_generator"], "key": torch.from_numpy(inner["key"].astype(np.int64)),
            "pos": int(inner["pos"]), "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])}


def _set_numpy_state(saved: dict) -> None:
    np.random.set_state({"bit_generator": saved["bit_generator"],
                         "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]},
                         "has_gauss": saved["has_gauss"], "gauss": saved["gauss"]})


def rng_states(rng: random.Random, generator: torch.Generator) -> dict:
    """Every random state a step reads: the loop's own Random and Generator, and the global ones (dropout)."""
    version, internal, gauss = rng.getstate()
    states = {
        "loop_random": {"version": version, "internal": list(internal), "gauss": gauss},
        "loop_generator": generator.get_state(),
        "python": list(random.getstate()[1]), "python_gauss": random.getstate()[2],
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict, rng: random.Random, generator: torch.Generator) -> None:
    """Put back what :func:`rng_states` recorded."""
    loop = states["loop_random"]
    rng.setstate((loop["version"], tuple(loop["internal"]), loop["gauss"]))
    generator.set_state(states["loop_generator"])
    random.setstate((3, tuple(states["python"]), states["python_gauss"]))
    _set_numpy_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def tensor_bytes(tree) -> int:
    """Bytes of every tensor in a nested dict / list (a LoRA, an optimizer state dict)."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, list | tuple):
        return sum(tensor_bytes(v) for v in tree)
    return 0


def state_bytes(lora: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """About what ``save_state`` writes: the LoRA, the optimizer state, and room for RNG states and metadata."""
    return tensor_bytes(lora) + tensor_bytes(optimizer.state_dict()["state"]) + 256 * 1024


def _previous(run_dir: Path) -> str:
    try:
        name = (run_dir / LATEST_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return "no earlier training state was touched"
    return f"the previous state ({name}) is intact" if (run_dir / name).is_dir() else "nothing else was touched"


def save_state(run_dir: Path, position: Position, lora: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               rng: dict, extra: dict | None = None) -> Path:
    """Write ``global_step<N>/`` atomically and point ``latest`` at it; returns the folder. A save that cannot fit
    is refused before it writes, and one that runs out of room while writing leaves no trace
    (``DiskFullError`` says how much it needed and how much was free)."""
    name = f"{STATE_PREFIX}{position.step}"
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with room_for(run_dir, name, state_bytes(lora, optimizer), _previous(run_dir)):
        tmp.mkdir(parents=True)
        try:
            torch.save({"lora": {k: v.detach().cpu() for k, v in lora.items()},
                        "optimizer": optimizer.state_dict(), "rng": rng}, tmp / STATE_FILE)
            meta = {**asdict(position), "time": time.time(), **(extra or {})}
            (tmp / STATE_META).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
            if final.exists():  # the same step saved twice (e.g. Save now, then Stop): keep the newest
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(run_dir / LATEST_FILE, name + "\n")
    return final


@dataclass
class LoadedState:
    """A checkpoint read back."""

    position: Position
    lora: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict
    meta: dict


def load_state(folder: Path) -> LoadedState:
    """Read ``global_step<N>/``; errors name the folder and what is missing."""
    meta_path, state_path = folder / STATE_META, folder / STATE_FILE
    if not meta_path.is_file() or not state_path.is_file():
        raise FileNotFoundError(f"{folder} is not a complete training-state checkpoint (needs {STATE_META} and "
                                f"{STATE_FILE}); pick another one in the resume list")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    data = torch.load(state_path, map_location="cpu", weights_only=True)
    position = Position(step=int(meta["step"]), epoch=int(meta["epoch"]),
                        steps_into_epoch=int(meta["steps_into_epoch"]), examples=int(meta.get("examples", 0)))
    return LoadedState(position, data["lora"], data["optimizer"], data["rng"], meta)


def check_layout(name: str, meta: dict, layout: str, run_dir: Path) -> None:
    """Refuse a checkpoint whose LoRA has another parametrisation than this trainer's: its weights and optimizer
    state have other shapes and meanings. Checkpoints saved before the layout was recorded were ``split`` (a LoRA
    per diffusers Linear, from earlier studio versions)."""
    saved = meta.get("lora_layout", "split")
    if saved == layout:
        return
    loras = [(int(m[2]), p.name) for p in run_dir.iterdir()
             if (m := re.fullmatch(r"(epoch|step)(\d+)", p.name)) and (p / "adapter_model.safetensors").is_file()]
    epochs = [name for _, name in sorted(loras)]
    start = f"'{run_dir / epochs[-1]}'" if epochs else "one of this run's saved LoRAs"
    raise ValueError(f"{name} holds a LoRA of the '{saved}' layout (an earlier version trained a LoRA per q/k/v "
                     f"part) but this trainer trains diffusion-pipe's '{layout}' layout (one LoRA per fused Linear), so its "
                     f"optimizer state cannot continue. Start a new run from the saved weights instead: set "
                     f"[adapter] init_from_existing = {start}, or pick that saved LoRA as the resume point")
