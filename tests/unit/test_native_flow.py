"""The flow-matching maths the native loop shares: timestep sampling, shifts, noisy input, loss."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.native.flow import (
    LossConfig,
    TimestepConfig,
    constant_shift,
    flow_loss,
    flux_mu,
    noisy_input,
    sample_timesteps,
    time_shift,
)


def test_flux_mu_is_linear_between_the_sd_scripts_anchors():
    assert flux_mu(256) == pytest.approx(0.5)
    assert flux_mu(4096) == pytest.approx(1.15)
    assert flux_mu(64) < 0.5 < flux_mu(1024) < 1.15


def test_time_shift_matches_the_closed_form_and_keeps_the_ends():
    t = torch.tensor([1e-6, 0.25, 0.5, 0.75, 1.0 - 1e-6])
    mu = 0.8
    expected = [math.exp(mu) / (math.exp(mu) + (1 / v - 1)) for v in t.tolist()]
    assert time_shift(mu, t).tolist() == pytest.approx(expected)
    assert time_shift(mu, torch.tensor([0.5])).item() == pytest.approx(math.exp(mu) / (math.exp(mu) + 1))


def test_constant_shift_pushes_towards_noise_and_is_identity_at_one():
    t = torch.linspace(0.01, 0.99, 9)
    assert torch.allclose(constant_shift(1.0, t), t)
    assert bool((constant_shift(3.0, t) > t).all())
    assert constant_shift(3.0, torch.tensor([0.5])).item() == pytest.approx(0.75)


def test_logit_normal_is_a_sigmoid_of_scaled_gaussians():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    t = sample_timesteps(TimestepConfig(sigmoid_scale=2.0), 1000, 64, g1)
    assert torch.allclose(t, torch.sigmoid(torch.randn(1000, generator=g2) * 2.0))
    assert 0 < float(t.min()) and float(t.max()) < 1


def test_uniform_and_shift_precedence():
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    uniform = sample_timesteps(TimestepConfig(method="uniform"), 500, 64, gen())
    assert torch.allclose(uniform, torch.rand(500, generator=gen()))
    both = TimestepConfig(method="uniform", shift=3.0, flux_shift=True)
    # diffusion-pipe: an explicit shift wins over flux_shift.
    assert torch.allclose(sample_timesteps(both, 500, 64, gen()), constant_shift(3.0, uniform))
    flux = TimestepConfig(method="uniform", flux_shift=True)
    assert torch.allclose(sample_timesteps(flux, 500, 1024, gen()), time_shift(flux_mu(1024), uniform))


def test_timestep_config_from_model_table():
    cfg = TimestepConfig.from_model_table({"timestep_sample_method": "uniform", "shift": 3, "flux_shift": True})
    assert cfg == TimestepConfig("uniform", 1.0, 3.0, True)
    with pytest.raises(ValueError, match="timestep_sample_method"):
        TimestepConfig.from_model_table({"timestep_sample_method": "cosmap"})


def test_noisy_input_interpolates_and_targets_the_velocity():
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.0, 0.5, 1.0])
    x_t, target = noisy_input(x0, noise, t)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[2], noise[2])
    assert torch.allclose(x_t[1], (x0[1] + noise[1]) / 2)
    assert torch.allclose(target, noise - x0)


def test_loss_kinds():
    pred, target = torch.zeros(4), torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert flow_loss(pred, target).item() == pytest.approx((0 + 1 + 4 + 9) / 4)
    huber = flow_loss(pred, target, LossConfig(huber_delta=1.0)).item()
    assert huber == pytest.approx((0 + 0.5 + 1.5 + 2.5) / 4)
    assert LossConfig.from_config({"smooth_l1_beta": 0.5}) == LossConfig(None, 0.5)
