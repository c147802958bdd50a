"""Which keywords each built-in optimizer takes (diffusion-pipe passes every ``[optimizer]`` key except ``type``,
``gradient_release`` and ``beta2_half_life`` straight to the constructor, so a typo is a TypeError at startup).

``type`` matches case-insensitively for the built-ins; anything else is looked up as a ``pytorch_optimizer``
class by exact name, whose keywords we cannot know without importing it (we only warn).
"""

from __future__ import annotations

HANDLED_BY_TRAINER = frozenset({"type", "gradient_release", "beta2_half_life"})

_ADAM = frozenset({"lr", "betas", "eps", "weight_decay"})
_TORCH_ADAMW = _ADAM | {"amsgrad", "foreach", "maximize", "capturable", "differentiable", "fused"}
_BNB_ADAMW = _ADAM | {"amsgrad", "optim_bits", "args", "min_8bit_size", "percentile_clipping", "block_wise",
                      "is_paged"}
_OPTIMI = _ADAM | {"decouple_lr", "max_lr", "kahan_sum", "foreach"}

BUILTIN_KWARGS: dict[str, frozenset[str]] = {
    "adamw": _TORCH_ADAMW,
    "adamw8bit": _BNB_ADAMW,
    "adamw_optimi": _OPTIMI,
    "stableadamw": _OPTIMI,
    "sgd": frozenset({"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach",
                      "differentiable", "fused"}),
    "adamw8bitkahan": _BNB_ADAMW | {"stabilize"},
    # train.py:687-690: torchao's CPUOffloadOptimizer(params, torch.optim.AdamW, **kwargs), which takes
    # offload_gradients itself and passes the rest to AdamW.
    "offload": _TORCH_ADAMW | {"offload_gradients"},
    "automagic": frozenset({"lr", "min_lr", "max_lr", "lr_bump", "eps", "clip_threshold", "beta2", "weight_decay",
                            "do_paramiter_swapping", "paramiter_swapping_factor"}),
    "genericoptim": _ADAM | {"correct_bias", "momentum_type", "second_moment_type", "correct_dim", "cpu_offload",
                             "kahan_buffer_offload", "muon", "adamuon", "normuon", "polar_express", "automagic",
                             "min_lr", "max_lr", "lr_bump", "lr_decrease_factor", "skip_invalid_grads", "rank",
                             "proj_type", "update_proj_gap"},
}

# Display spellings (diffusion-pipe's examples write AdamW8bitKahan); matching ignores case.
BUILTIN_NAMES = ("adamw_optimi", "adamw", "adamw8bit", "AdamW8bitKahan", "stableadamw", "sgd", "offload",
                 "automagic", "genericoptim")


def builtin(type_name: str) -> str | None:
    """The built-in's canonical (lower-case) name, or None when ``type`` names a pytorch_optimizer class."""
    lowered = type_name.lower()
    return lowered if lowered in BUILTIN_KWARGS else None


def accepted_keys(type_name: str) -> frozenset[str] | None:
    """Keys valid in ``[optimizer]`` for this type; None when unknown (pytorch_optimizer class)."""
    name = builtin(type_name)
    if name is None:
        return None
    return BUILTIN_KWARGS[name] | HANDLED_BY_TRAINER
