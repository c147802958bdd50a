"""``[optimizer]`` -> a torch optimizer, and the learning-rate schedule, as diffusion-pipe builds them.

Every ``[optimizer]`` key except ``type`` and ``gradient_release`` is passed to the constructor, and a key the
constructor does not name is an error (most pytorch_optimizer classes would swallow a typo in ``**kwargs``).
Weight decay is 0 for 1-D parameters (biases, norms). The schedule is a linear warmup from lr / warmup_steps
(torch's ``LinearLR(start_factor=1/warmup_steps)``: lr x (1/w + (1 - 1/w) x k/w) after k steps), then constant,
linear (to 0) or cosine (to 1e-6) over epochs x steps_per_epoch.

Types, matched case-insensitively (diffusion-pipe's list): ``adamw``, ``adamw8bit`` (bitsandbytes, CUDA only),
``adamw_optimi``, ``stableadamw``, ``sgd``, and any optimizer of the ``pytorch_optimizer`` package by name
(``Prodigy``, ``CAME``, ``ScheduleFreeAdamW``...). diffusion-pipe's own optimizers (``adamw8bitkahan``,
``offload``, ``automagic``, ``genericoptim``) live in its repository and need the diffusion-pipe backend.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math

import torch

COSINE_ETA_MIN = 1e-6
NOT_CONSTRUCTOR_KEYS = ("type", "gradient_release")
BUILT_IN = ("adamw", "adamw8bit", "adamw_optimi", "stableadamw", "sgd")
DIFFUSION_PIPE_ONLY = ("adamw8bitkahan", "offload", "automagic", "genericoptim")


def _bitsandbytes_adamw8bit():
    """bitsandbytes' AdamW8bit, or a clear error saying why it cannot run here."""
    try:
        bnb = importlib.import_module("bitsandbytes")
    except ImportError:
        raise ValueError("[optimizer] type = 'adamw8bit' needs the bitsandbytes package, which is not installed "
                         "(pip install bitsandbytes on a CUDA machine); or use 'adamw_optimi'") from None
    if not torch.cuda.is_available():
        raise ValueError("[optimizer] type = 'adamw8bit' needs a CUDA GPU (bitsandbytes' 8-bit states live there); "
                         "use 'adamw_optimi' on this machine")
    return bnb.optim.AdamW8bit


def _pytorch_optimizer_class(name: str):
    import pytorch_optimizer

    try:
        return pytorch_optimizer.load_optimizer(name)
    except ImportError as exc:  # bnb_* / q_galore_* / torchao_* names need extra packages and CUDA
        raise ValueError(f"[optimizer] type = {name!r}: {exc}") from None
    except NotImplementedError:
        known = list(BUILT_IN) + list(pytorch_optimizer.get_supported_optimizers())
        close = difflib.get_close_matches(name.lower(), known, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"[optimizer] type = {name!r} is not a known optimizer; {hint}use adamw, adamw_optimi, "
                         "stableadamw, sgd, adamw8bit or a pytorch_optimizer class name (e.g. Prodigy, CAME)") from None


def optimizer_class(name: str):
    """The optimizer class for an ``[optimizer] type`` string (case-insensitive)."""
    kind = name.lower()
    if kind == "adamw":
        return torch.optim.AdamW
    if kind == "sgd":
        return torch.optim.SGD
    if kind in ("adamw_optimi", "stableadamw"):
        import optimi

        return optimi.AdamW if kind == "adamw_optimi" else optimi.StableAdamW
    if kind == "adamw8bit":
        return _bitsandbytes_adamw8bit()
    if kind in DIFFUSION_PIPE_ONLY:
        raise ValueError(f"[optimizer] type = {name!r} is diffusion-pipe's own optimizer: use the diffusion-pipe "
                         "backend for it, or pick adamw_optimi (or a pytorch_optimizer class such as Prodigy)")
    return _pytorch_optimizer_class(name)


def constructor_kwargs(table: dict) -> dict:
    """The keyword arguments the optimizer gets: the table minus ``type``; lists become tuples."""
    kwargs = {k: v for k, v in table.items() if k not in NOT_CONSTRUCTOR_KEYS}
    if "lr" not in kwargs:
        raise KeyError("[optimizer] lr is required")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def check_kwargs(cls, kwargs: dict, kind: str) -> None:
    """Every key must be a named parameter of the constructor; the error names the key and close matches."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return  # a constructor without a readable signature: the call itself will complain
    named = [n for n, p in params.items() if n not in ("self", "params")
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for key in kwargs:
        if key not in named:
            close = difflib.get_close_matches(key, named, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise TypeError(f"[optimizer] {key} is not an option of the {kind} optimizer; {hint}"
                            f"its options: {', '.join(named)}")


def build_optimizer(named_params: list[tuple[str, torch.nn.Parameter]], table: dict,
                    lr_groups: list[tuple[list, float | None]] | None = None) -> torch.optim.Optimizer:
    """The optimizer for the trainable parameters, decay off for 1-D ones. ``lr_groups``: (named parameters, own
    lr or None) per group with a learning rate of its own; ``set_lr`` keeps each at its ratio to ``lr``."""
    if "type" not in table:
        raise KeyError("[optimizer] type is required")
    if table.get("gradient_release"):
        raise ValueError("[optimizer] gradient_release is not supported by the native trainer")
    kwargs = constructor_kwargs(table)
    cls = optimizer_class(str(table["type"]))
    check_kwargs(cls, kwargs, str(table["type"]))
    groups = []
    for named, lr in lr_groups or [(named_params, None)]:
        extra = {} if lr is None else {"lr": lr, "lr_scale": lr / float(kwargs["lr"])}
        decay = [p for _, p in named if p.ndim > 1]
        no_decay = [p for _, p in named if p.ndim <= 1]
        if decay or not groups:
            groups.append({"params": decay, **extra})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    try:
        return cls(groups, **kwargs)
    except TypeError as exc:
        raise TypeError(f"[optimizer] has a key the {table['type']} optimizer does not take: {exc}") from None


def set_optimizer_mode(optimizer: torch.optim.Optimizer, training: bool) -> None:
    """Schedule-free optimizers keep two weight sequences: ``train()`` before steps, ``eval()`` before sampling,
    evaluating or saving. Other optimizers have no modes; nothing happens."""
    method = getattr(optimizer, "train" if training else "eval", None)
    if callable(method):
        method()


def lr_at(completed: int, base_lr: float, warmup_steps: int, scheduler: str, total_steps: int) -> float:
    """Learning rate of the step after ``completed`` optimizer steps.

    ``total_steps`` is epochs x steps_per_epoch (diffusion-pipe ignores max_steps for the decay length).
    """
    if warmup_steps > 0 and completed < warmup_steps:
        # diffusion-pipe train.py:860: LinearLR(start_factor=1/warmup_steps, total_iters=warmup_steps)
        start = 1.0 / warmup_steps
        return base_lr * (start + (1.0 - start) * completed / warmup_steps)
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
    """Set every param group's learning rate (groups with a learning rate of their own keep their ratio to the
    base one, as the per-group initial_lr of torch's schedulers does in diffusion-pipe)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
