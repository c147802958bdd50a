"""Optimizer construction and the learning-rate schedule (diffusion-pipe's warmup + constant/linear/cosine)."""

from __future__ import annotations

import pytest
import torch

from trainers.native.optim import (
    COSINE_ETA_MIN,
    build_optimizer,
    constructor_kwargs,
    lr_at,
    optimizer_class,
    set_optimizer_mode,
)


def test_warmup_is_linear_from_lr_over_warmup_steps():
    # diffusion-pipe train.py:860: LinearLR(start_factor=1/w, total_iters=w) -> lr * (1/w + (1 - 1/w) * k/w)
    assert [lr_at(k, 1.0, 4, "constant", 100) for k in range(6)] == pytest.approx(
        [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0]
    )
    assert lr_at(0, 2e-3, 0, "constant", 10) == 2e-3


def _torch_schedule(scheduler: str, warmup: int, total: int, steps: int) -> list[float]:
    """diffusion-pipe train.py:849-861, built with torch's own schedulers, stepped once per optimizer step."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    if scheduler == "constant":
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    elif scheduler == "linear":
        sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=total)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=1e-6)
    if warmup > 0:
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warmup, total_iters=warmup)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, schedulers=[warm, sched], milestones=[warmup])
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("scheduler", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 3, 7])
def test_schedule_equals_diffusion_pipes_step_by_step(scheduler, warmup):
    # torch's cosine is periodic past T_max; diffusion-pipe's run ends before that (epochs x steps_per_epoch steps)
    steps = warmup + 13
    expected = _torch_schedule(scheduler, warmup, 12, steps)
    ours = [lr_at(k, 1.0, warmup, scheduler, 12) for k in range(steps)]
    assert ours == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_linear_and_cosine_decay_after_warmup():
    assert lr_at(2, 1.0, 2, "linear", 10) == pytest.approx(1.0)
    assert lr_at(7, 1.0, 2, "linear", 10) == pytest.approx(0.5)
    assert lr_at(50, 1.0, 2, "linear", 10) == 0.0
    assert lr_at(0, 1.0, 0, "cosine", 10) == pytest.approx(1.0)
    assert lr_at(5, 1.0, 0, "cosine", 10) == pytest.approx((1 + COSINE_ETA_MIN) / 2)
    assert lr_at(10, 1.0, 0, "cosine", 10) == pytest.approx(COSINE_ETA_MIN)
    with pytest.raises(ValueError, match="lr_scheduler"):
        lr_at(0, 1.0, 0, "step", 10)


def test_kwargs_pass_through_and_decay_groups():
    assert constructor_kwargs({"type": "adamw", "lr": 1e-3, "betas": [0.9, 0.99]}) == {"lr": 1e-3,
                                                                                    "betas": (0.9, 0.99)}
    w, b = torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer([("w", w), ("b", b)], {"type": "AdamW", "lr": 1e-3, "weight_decay": 0.1})
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_optimi_and_errors():
    import optimi

    w = torch.nn.Parameter(torch.zeros(2, 2))
    assert isinstance(build_optimizer([("w", w)], {"type": "adamw_optimi", "lr": 1e-3}), optimi.AdamW)
    with pytest.raises(TypeError, match=r"\[optimizer\] betaz is not an option of the adamw optimizer; did you mean "
                                        r"betas"):
        build_optimizer([("w", w)], {"type": "adamw", "lr": 1e-3, "betaz": [0.9, 0.9]})


def _step(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter) -> None:
    param.grad = torch.ones_like(param)
    optimizer.step()


@pytest.mark.parametrize("name", ["Prodigy", "prodigy", "CAME", "ScheduleFreeAdamW"])
def test_pytorch_optimizer_classes_by_name_build_and_step(name):
    import pytorch_optimizer

    w = torch.nn.Parameter(torch.ones(4, 4))
    optimizer = build_optimizer([("w", w)], {"type": name, "lr": 0.1, "weight_decay": 0.0})
    assert type(optimizer).__name__.lower() == name.lower()
    assert optimizer_class(name) is pytorch_optimizer.load_optimizer(name)
    set_optimizer_mode(optimizer, training=True)  # schedule-free optimizers need it; the others ignore it
    _step(optimizer, w)
    set_optimizer_mode(optimizer, training=False)
    assert not torch.equal(w.detach(), torch.ones(4, 4))


def test_unknown_names_and_option_typos_are_explained():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="'Prodigi' is not a known optimizer; did you mean prodigy"):
        build_optimizer([("w", w)], {"type": "Prodigi", "lr": 1.0})
    with pytest.raises(TypeError, match="d_coeff is not an option of the Prodigy optimizer; did you mean d_coef"):
        build_optimizer([("w", w)], {"type": "Prodigy", "lr": 1.0, "d_coeff": 0.5})
    with pytest.raises(ValueError, match="diffusion-pipe's own optimizer"):
        build_optimizer([("w", w)], {"type": "AdamW8bitKahan", "lr": 1e-4})


def test_adamw8bit_needs_bitsandbytes_and_cuda(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable
    with pytest.raises(ValueError, match="needs the bitsandbytes package.*adamw_optimi"):
        optimizer_class("adamw8bit")
    fake = types.SimpleNamespace(optim=types.SimpleNamespace(AdamW8bit=torch.optim.AdamW))
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        optimizer_class("AdamW8bit")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert optimizer_class("adamw8bit") is torch.optim.AdamW
