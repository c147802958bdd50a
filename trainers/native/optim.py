"""``[optimizer]`` -> a torch optimizer, and the learning-rate schedule, as diffusion-pipe builds them.

Every ``[optimizer]`` key except ``type`` and ``gradient_release`` is passed to the constructor, so a typo
fails at startup. Weight decay is 0 for 1-D parameters (biases, norms). The schedule is a linear warmup from
lr / warmup_steps, then constant, linear (to 0) or cosine (to 1e-6) over epochs x steps_per_epoch.
"""

from __future__ import annotations

import math

import torch

COSINE_ETA_MIN = 1e-6
NOT_CONSTRUCTOR_KEYS = ("type", "gradient_release")


def _optimizer_class(name: str):
    kind = name.lower()
    if kind == "adamw":
        return torch.optim.AdamW
    if kind == "sgd":
        return torch.optim.SGD
    if kind in ("adamw_optimi", "stableadamw"):
        import optimi

        return optimi.AdamW if kind == "adamw_optimi" else optimi.StableAdamW
    raise ValueError(f"[optimizer] type = {name!r} is not supported by the native trainer; "
                     "use adamw, adamw_optimi, stableadamw or sgd (or the diffusion-pipe backend)")


def constructor_kwargs(table: dict) -> dict:
    """The keyword arguments the optimizer gets: the table minus ``type``; lists become tuples."""
    kwargs = {k: v for k, v in table.items() if k not in NOT_CONSTRUCTOR_KEYS}
    if "lr" not in kwargs:
        raise KeyError("[optimizer] lr is required")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def build_optimizer(named_params: list[tuple[str, torch.nn.Parameter]], table: dict) -> torch.optim.Optimizer:
    """The optimizer for the trainable parameters, decay off for 1-D ones."""
    if "type" not in table:
        raise KeyError("[optimizer] type is required")
    if table.get("gradient_release"):
        raise ValueError("[optimizer] gradient_release is not supported by the native trainer")
    kwargs = constructor_kwargs(table)
    decay = [p for _, p in named_params if p.ndim > 1]
    no_decay = [p for _, p in named_params if p.ndim <= 1]
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    try:
        return _optimizer_class(str(table["type"]))(groups, **kwargs)
    except TypeError as exc:
        raise TypeError(f"[optimizer] has a key the {table['type']} optimizer does not take: {exc}") from None


def lr_at(completed: int, base_lr: float, warmup_steps: int, scheduler: str, total_steps: int) -> float:
    """Learning rate of the step after ``completed`` optimizer steps.

    ``total_steps`` is epochs x steps_per_epoch (diffusion-pipe ignores max_steps for the decay length).
    """
    if warmup_steps > 0 and completed < warmup_steps:
        return base_lr * (completed + 1) / warmup_steps
    k = completed - max(warmup_steps, 0)
    if scheduler == "constant":
        return base_lr
    if scheduler == "linear":
        return base_lr * max(0.0, 1.0 - k / max(1, total_steps))
    if scheduler == "cosine":
        k = min(k, total_steps)
        return COSINE_ETA_MIN + (base_lr - COSINE_ETA_MIN) * (1 + math.cos(math.pi * k / max(1, total_steps))) / 2
    raise ValueError(f"lr_scheduler = {scheduler!r} is not supported; use 'constant', 'linear' or 'cosine'")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
