"""The divergence guard's copy of the confirmed state (trainers/native/divergence.py): restoring it gives back
exactly the optimizer ``load_state_dict`` of a deep copy of ``state_dict()`` would, for the optimizers the
trainer builds, whether the snapshot was taken before the first step (no state yet) or after many."""

from __future__ import annotations

import pytest
import torch

from trainers.native.divergence import DivergenceGuard


def _setup(kind: str):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    if kind == "adamw":
        opt = torch.optim.AdamW([{"params": params[:1], "lr": 1e-2}, {"params": params[1:], "lr": 3e-3}])
    else:
        import optimi

        opt = optimi.AdamW(params, lr=1e-2, kahan_sum=True)
    return params, opt


def _step(params, opt, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("kind", ["adamw", "optimi"])
@pytest.mark.parametrize("steps_before", [0, 1, 5])
def test_restore_gives_back_the_confirmed_state(kind, steps_before):
    params, opt = _setup(kind)
    guard = DivergenceGuard(params)
    for i in range(steps_before):
        guard.take((i, 0, 0, 0), opt, {})
        _step(params, opt, i)
    guard.take((steps_before, 0, 0, 0), opt, {})  # reuses the previous snapshot's buffers after the first
    expected_state = {k: v for k, v in opt.state_dict().items()}
    import copy

    expected_state = copy.deepcopy(expected_state)
    expected_params = [p.detach().clone() for p in params]
    for i in range(3):  # the run goes on, the groups' lr changes, then it diverges
        opt.param_groups[0]["lr"] = 0.5
        _step(params, opt, 100 + i)
    snap = guard.restore(opt)
    assert snap.position[0] == steps_before
    _same(opt.state_dict(), expected_state)
    for live, want in zip(params, expected_params, strict=True):
        assert torch.equal(live, want)
    # and the next step is the one the confirmed state would have taken
    twin_params, twin = _setup(kind)
    with torch.no_grad():
        for p, want in zip(twin_params, expected_params, strict=True):
            p.copy_(want)
    twin.load_state_dict(expected_state)
    _step(params, opt, 7)
    _step(twin_params, twin, 7)
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)


def test_the_snapshot_does_not_alias_the_live_state():
    params, opt = _setup("adamw")
    guard = DivergenceGuard(params)
    _step(params, opt, 0)
    guard.take((1, 0, 0, 0), opt, {})
    saved = [t.clone() for t in guard.snapshot.optimizer.tensors]
    _step(params, opt, 1)
    assert all(torch.equal(a, b) for a, b in zip(saved, guard.snapshot.optimizer.tensors, strict=True))
    live = {id(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
    assert not live & {id(t) for t in guard.snapshot.optimizer.tensors}


def test_the_cadence_keeps_the_guard_within_its_budget_and_checks_every_copy():
    from trainers.native import divergence

    params, opt = _setup("adamw")
    guard = DivergenceGuard(params)
    guard.take((0, 0, 0, 0), opt, {})
    assert guard.every == 1 and guard.copy_due()
    guard._cost = 3e-3  # a copy and a check cost 3 ms ...
    guard.tune(0.4)  # ... of a 400 ms step: 0.75 %, three times the budget
    assert guard.every == 3
    guard.tune(4.0)  # a GPU-sized step: every step
    assert guard.every == 1
    guard.tune(1e-4)  # never more than MAX_EVERY steps apart
    assert guard.every == divergence.MAX_EVERY
    guard._cost, guard.every = 3e-3, 3
    guard._measured = lambda seconds: None  # keep the cost as set: every stays 3
    copies, checks = [], []
    for step in range(1, 13):
        due = guard.copy_due()
        guard.confirm(0.1, 1.0, (step, 0, 0, 0), opt, {} if due else None)
        _step(params, opt, step)
        if guard.check_due():
            checks.append(step)
            assert guard.check_weights() is None
        if due:
            copies.append(step)
        guard.tune(0.4)
    assert copies == [1, 4, 7, 10]
    assert checks == [3, 6, 9, 12]  # the update right before each copy (the first one follows take())
    assert guard.snapshot.position[0] == 10
    # every changing after a check does not undo the copy that check was for
    guard.every = 5
    assert guard.copy_due()
    guard.confirm(0.1, 1.0, (13, 0, 0, 0), opt, {})
    assert guard.snapshot.position[0] == 13 and not guard.check_due()


def test_a_divergence_between_copies_goes_back_to_the_last_copy():
    params, opt = _setup("adamw")
    guard = DivergenceGuard(params)
    guard.take((0, 0, 0, 0), opt, {})
    guard.every = 4
    saved = None
    for step in range(1, 4):
        if guard.copy_due():
            saved = [p.detach().clone() for p in params]
        guard.confirm(0.1, 1.0, (step, 0, 0, 0), opt, {} if guard.copy_due() else None)
        _step(params, opt, step)
    snap = guard.restore(opt)
    assert snap.position[0] == 1
    for live, want in zip(params, saved, strict=True):
        assert torch.equal(live, want)
