"""Optimizer construction and the learning-rate schedule (diffusion-pipe's warmup + constant/linear/cosine)."""

from __future__ import annotations

import pytest
import torch

from trainers.native.optim import COSINE_ETA_MIN, build_optimizer, constructor_kwargs, lr_at


def test_warmup_is_linear_from_lr_over_warmup_steps():
    assert [lr_at(k, 1.0, 4, "constant", 100) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 2e-3, 0, "constant", 10) == 2e-3


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
    with pytest.raises(TypeError, match="does not take"):
        build_optimizer([("w", w)], {"type": "adamw", "lr": 1e-3, "betaz": [0.9, 0.9]})
    with pytest.raises(ValueError, match="not supported"):
        build_optimizer([("w", w)], {"type": "Prodigy", "lr": 1.0})
