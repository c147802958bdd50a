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

Cadence: the copy and the weight check run every ``every`` steps, 1 while they cost under ``BUDGET`` of a step
(a GPU step), else as many steps apart as keeps them under it (a CPU step of a small model, where the copy is
memory traffic on the scale of the step's own), at most ``MAX_EVERY``. The weight check runs on the update just
before a copy, so every copy holds weights that passed it; a divergence between copies goes back to the last
one, at most ``every`` steps old (the log names its step). The loss and gradient checks run on every step.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field

import torch

BUDGET = 0.0025  # the guard's copy and weight check may cost this share of a step
MAX_EVERY = 10  # at most this many steps between copies
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
    # the live tensors copied (the optimizer updates them in place: the same objects next step, whose shapes then
    # need no comparing); ``tensors`` are the copies
    sources: list[torch.Tensor] = field(default_factory=list)


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
                live.append(value)  # not detached: a new object each time, which the identity check needs
            else:
                values[(index, key)] = _copied(value)
    groups = [{k: _copied(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    if into is not None and into.slots == slots and (
            (len(into.sources) == len(live) and all(a is b for a, b in zip(into.sources, live, strict=True)))
            or all(a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
                   for a, b in zip(into.tensors, live, strict=True))):
        with torch.no_grad():
            _copy_into(into.tensors, live)
        return OptimizerCopy(slots, into.tensors, values, groups, live)
    return OptimizerCopy(slots, [t.clone() for t in live], values, groups, live)


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


MAX_ABS_CHUNK = 64  # tensors per fused |w| pass: bounds the temporary copy to a slice of the LoRA


def max_abs(params: list[torch.Tensor]) -> float:
    """Largest |weight| over the LoRA (NaN when any weight is NaN); one device sync. Fused (_foreach) passes over
    chunks of the tensors: one op per tensor costs more than the rest of the step's bookkeeping on small LoRAs."""
    with torch.no_grad():
        tensors = [p.detach() for p in params]
        if not hasattr(torch, "_foreach_max"):
            return float(torch.stack([t.abs().amax().float() for t in tensors]).amax())
        peaks = []
        for start in range(0, len(tensors), MAX_ABS_CHUNK):
            chunk = tensors[start:start + MAX_ABS_CHUNK]
            peaks += [m.float() for m in torch._foreach_max(torch._foreach_abs(chunk))]
        return float(torch.stack(peaks).amax())


class DivergenceGuard:
    """Watches losses, gradient norms and LoRA weights; holds the last confirmed state."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.losses: deque[float] = deque(maxlen=WINDOW)
        self.grads: deque[float] = deque(maxlen=WINDOW)
        self.snapshot: Snapshot | None = None
        self.every = 1  # steps between copies (see the module's "Cadence")
        self.confirmed = 0  # steps confirmed so far
        self._copy_next = True  # decided when the update before it is (or is not) checked
        self._cost: float | None = None  # seconds of one copy plus one weight check (moving average)
        self._spent = 0.0  # the current copy's seconds, until its weight check adds to it

    def copy_due(self) -> bool:
        """Whether the next confirmed step is copied (the loop then gathers the RNG states for it)."""
        return self.snapshot is None or self._copy_next

    def check_due(self) -> bool:
        """Whether the update just made is checked: exactly when its weights are the next copy's."""
        return self._copy_next

    def tune(self, step_seconds: float) -> None:
        """Set ``every`` from the guard's measured cost and the loop's step time (called once per step)."""
        if self._cost is None or step_seconds <= 0:
            return
        self.every = max(1, min(MAX_EVERY, math.ceil(self._cost / (BUDGET * step_seconds))))

    def _measured(self, seconds: float) -> None:
        self._cost = seconds if self._cost is None else 0.8 * self._cost + 0.2 * seconds

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
        started = time.perf_counter()
        largest = max_abs(self.params)
        self._measured(self._spent + time.perf_counter() - started)
        if not math.isfinite(largest):
            return "a LoRA weight became non-finite after the update"
        if largest > WEIGHT_BOUND:
            return f"a LoRA weight reached |w| = {largest:.4g} after the update (the bound is {WEIGHT_BOUND:g})"
        return None

    def confirm(self, loss: float, grad_norm: float, position: tuple[int, int, int, int],
                optimizer: torch.optim.Optimizer, rng: dict | None) -> None:
        """The step's signals were sane: its input weights become the state to fall back to when a copy is due
        (``rng``: the step's starting RNG states, gathered when :meth:`copy_due` said so)."""
        self.losses.append(loss)
        self.grads.append(grad_norm)
        if self.copy_due():
            started = time.perf_counter()
            self.take(position, optimizer, rng if rng is not None else {})
            self._spent = time.perf_counter() - started
        self.confirmed += 1
        self._copy_next = self.confirmed % self.every == 0

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
