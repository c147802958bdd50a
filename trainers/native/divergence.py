"""Divergence guard: notice a run blowing up before its numbers turn NaN, and keep the last sane state.

Rules (docs/native-trainer.md, "Divergence"), checked at every optimizer step:
- before the update: the loss or the gradient norm is non-finite, or (after ``MIN_HISTORY`` sane steps) the loss is
  more than ``LOSS_JUMP`` times, or the gradient norm more than ``GRAD_JUMP`` times, the median of the last
  ``WINDOW`` sane steps. Such a step was computed on weights that are already suspect.
- after the update: a LoRA weight is non-finite or larger than ``WEIGHT_BOUND`` in magnitude.

A step that passes the first check confirms the weights it was computed on: the guard copies them (adapter
parameters, optimizer state, data position, RNG states) before the update, so when a later check fails the
trainer can put back the last weights a sane loss vouched for. The copy is the LoRA's size plus its optimizer
state, kept on the training device.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections import deque
from dataclasses import dataclass

import torch

LOSS_JUMP = 100.0
GRAD_JUMP = 1000.0
WEIGHT_BOUND = 1e3
WINDOW = 50
MIN_HISTORY = 3


@dataclass
class OptimizerCopy:
    """The optimizer's state as plain copies: its tensors (in ``slots`` order: (param index, key)), its other
    values, and each param group's settings. Taken and put back without ``state_dict()``'s repacking: after the
    first snapshot the copy is a single ``torch._foreach_copy_`` into the same buffers."""

    slots: list[tuple[int, str]]
    tensors: list[torch.Tensor]
    values: dict[tuple[int, str], object]
    groups: list[dict]


@dataclass
class Snapshot:
    """The last confirmed state: ``position`` (step, epoch, steps_into_epoch, examples) and what to restore."""

    position: tuple[int, int, int, int]
    params: list[torch.Tensor]
    optimizer: OptimizerCopy
    rng: dict


_IMMUTABLE = (int, float, bool, str, bytes, type(None))


def _copied(value):
    """``value`` itself when nothing can change it in place (numbers, strings, tuples of them), else a deep copy."""
    if isinstance(value, _IMMUTABLE) or (isinstance(value, tuple) and all(isinstance(v, _IMMUTABLE) for v in value)):
        return value
    return copy.deepcopy(value)


def _all_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _copy_into(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """``targets[i].copy_(sources[i])`` for all i, in one fused call where the tensors allow it."""
    if not targets:
        return
    try:
        torch._foreach_copy_(targets, sources)
    except (RuntimeError, TypeError):  # mixed devices or dtypes the fused kernel refuses
        for target, source in zip(targets, sources, strict=True):
            target.copy_(source)


def copy_optimizer(optimizer: torch.optim.Optimizer, into: OptimizerCopy | None = None) -> OptimizerCopy:
    """A copy of ``optimizer``'s per-parameter state and group settings, reusing ``into``'s buffers when the state
    has the same layout (the same slots, shapes and dtypes), as it has from one step to the next."""
    slots: list[tuple[int, str]] = []
    live: list[torch.Tensor] = []
    values: dict[tuple[int, str], object] = {}
    state = optimizer.state
    for index, param in enumerate(_all_params(optimizer)):
        for key, value in state.get(param, {}).items():
            if isinstance(value, torch.Tensor):
                slots.append((index, key))
                live.append(value.detach())
            else:
                values[(index, key)] = _copied(value)
    groups = [{k: _copied(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    if into is not None and into.slots == slots and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            for a, b in zip(into.tensors, live, strict=True)):
        with torch.no_grad():
            _copy_into(into.tensors, live)
        return OptimizerCopy(slots, into.tensors, values, groups)
    return OptimizerCopy(slots, [t.clone() for t in live], values, groups)


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: OptimizerCopy) -> None:
    """Put ``saved`` back: the same state entries (others dropped, as ``load_state_dict`` of the copy would), tensors
    copied into the live buffers where they still fit, and each group's settings."""
    params = _all_params(optimizer)
    wanted: dict[int, dict[str, object]] = {}
    for (index, key), value in saved.values.items():
        wanted.setdefault(index, {})[key] = _copied(value)
    targets, sources = [], []
    for (index, key), tensor in zip(saved.slots, saved.tensors, strict=True):
        live = optimizer.state.get(params[index], {}).get(key)
        if isinstance(live, torch.Tensor) and live.shape == tensor.shape and live.dtype == tensor.dtype \
                and live.device == tensor.device:
            targets.append(live)
            sources.append(tensor)
            wanted.setdefault(index, {})[key] = live
        else:
            wanted.setdefault(index, {})[key] = tensor.clone()
    with torch.no_grad():
        _copy_into(targets, sources)
    for index, param in enumerate(params):
        if index in wanted:
            optimizer.state[param] = wanted[index]
        else:
            optimizer.state.pop(param, None)
    for group, settings in zip(optimizer.param_groups, saved.groups, strict=True):
        for key in [k for k in group if k != "params" and k not in settings]:  # e.g. optimi's group "step"
            del group[key]
        group.update({k: _copied(v) for k, v in settings.items()})


def max_abs(params: list[torch.Tensor]) -> float:
    """Largest |weight| over the LoRA (NaN when any weight is NaN); one device sync."""
    with torch.no_grad():
        return float(torch.stack([p.detach().abs().amax().float() for p in params]).amax())


class DivergenceGuard:
    """Watches losses, gradient norms and LoRA weights; holds the last confirmed state."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.losses: deque[float] = deque(maxlen=WINDOW)
        self.grads: deque[float] = deque(maxlen=WINDOW)
        self.snapshot: Snapshot | None = None

    def check_signals(self, loss: float, grad_norm: float) -> str | None:
        """Why the step's loss or gradient says the weights diverged, or None when they look sane."""
        if not math.isfinite(loss):
            return f"non-finite loss {loss}"
        if not math.isfinite(grad_norm):
            return f"non-finite gradient norm {grad_norm}"
        if len(self.losses) >= MIN_HISTORY:
            ref_loss, ref_grad = statistics.median(self.losses), statistics.median(self.grads)
            if loss > LOSS_JUMP * ref_loss:
                return (f"loss {loss:.4g} is {loss / ref_loss:.3g}x the median of the last {len(self.losses)} "
                        f"steps ({ref_loss:.4g}; the limit is {LOSS_JUMP:g}x)")
            if ref_grad > 0 and grad_norm > GRAD_JUMP * ref_grad:
                return (f"gradient norm {grad_norm:.4g} is {grad_norm / ref_grad:.3g}x the median of the last "
                        f"{len(self.grads)} steps ({ref_grad:.4g}; the limit is {GRAD_JUMP:g}x)")
        return None

    def check_weights(self) -> str | None:
        """Why the LoRA weights after an update are not sane, or None."""
        largest = max_abs(self.params)
        if not math.isfinite(largest):
            return "a LoRA weight became non-finite after the update"
        if largest > WEIGHT_BOUND:
            return f"a LoRA weight reached |w| = {largest:.4g} after the update (the bound is {WEIGHT_BOUND:g})"
        return None

    def confirm(self, loss: float, grad_norm: float, position: tuple[int, int, int, int],
                optimizer: torch.optim.Optimizer, rng: dict) -> None:
        """The step's signals were sane: its input weights become the state to fall back to."""
        self.losses.append(loss)
        self.grads.append(grad_norm)
        self.take(position, optimizer, rng)

    def take(self, position: tuple[int, int, int, int], optimizer: torch.optim.Optimizer, rng: dict) -> None:
        old = self.snapshot
        with torch.no_grad():
            if old is None:
                params = [p.detach().clone() for p in self.params]
            else:
                params = old.params
                _copy_into(params, [p.detach() for p in self.params])
        state = copy_optimizer(optimizer, old.optimizer if old is not None else None)
        self.snapshot = Snapshot(position, params, state, rng)

    def restore(self, optimizer: torch.optim.Optimizer) -> Snapshot:
        """Put the confirmed weights and optimizer state back into the live ones; returns the snapshot."""
        snap = self.snapshot
        assert snap is not None, "take() runs before the first step"
        with torch.no_grad():
            _copy_into([p.detach() for p in self.params], snap.params)
        restore_optimizer(optimizer, snap.optimizer)
        return snap
