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
class Snapshot:
    """The last confirmed state: ``position`` (step, epoch, steps_into_epoch, examples) and what to restore."""

    position: tuple[int, int, int, int]
    params: list[torch.Tensor]
    optimizer: dict
    rng: dict


def _copy_tree(value, into=None):
    """Deep copy of an optimizer state dict, reusing the tensors of ``into`` when shapes match."""
    if isinstance(value, torch.Tensor):
        if isinstance(into, torch.Tensor) and into.shape == value.shape and into.dtype == value.dtype:
            return into.copy_(value)
        return value.detach().clone()
    if isinstance(value, dict):
        old = into if isinstance(into, dict) else {}
        return {k: _copy_tree(v, old.get(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        old = into if isinstance(into, list) and len(into) == len(value) else [None] * len(value)
        return type(value)(_copy_tree(v, o) for v, o in zip(value, old, strict=True))
    return copy.deepcopy(value)


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
            params = [p.detach().clone() if old is None else old.params[i].copy_(p.detach())
                      for i, p in enumerate(self.params)]
        state = _copy_tree(optimizer.state_dict(), old.optimizer if old is not None else None)
        self.snapshot = Snapshot(position, params, state, rng)

    def restore(self, optimizer: torch.optim.Optimizer) -> Snapshot:
        """Put the confirmed weights and optimizer state back into the live ones; returns the snapshot."""
        snap = self.snapshot
        assert snap is not None, "take() runs before the first step"
        with torch.no_grad():
            for live, saved in zip(self.params, snap.params, strict=True):
                live.copy_(saved)
        optimizer.load_state_dict(_copy_tree(snap.optimizer))
        return snap
