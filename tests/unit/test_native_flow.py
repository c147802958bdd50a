"""The flow-matching maths the native loop shares: timestep sampling, shifts, noisy input, loss."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.native.flow import (
    EVAL_QUANTILES,
    LossConfig,
    TimestepConfig,
    constant_shift,
    flow_loss,
    flux_mu,
    latent_mask,
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
    # diffusion-pipe models/chroma.py:263-265: `if shift := ...` -> shift = 0 is no shift, flux_shift then applies
    assert TimestepConfig.from_model_table({"shift": 0, "flux_shift": True}) == TimestepConfig(shift=None,
                                                                                            flux_shift=True)
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


# ----- distributions of the drawn timesteps ---------------------------------------------------------------
DRAWS = 200_000
# Kolmogorov-Smirnov: at 200k draws the 99.9 % critical distance is 1.95 / sqrt(n) = 0.0044.
KS_TOLERANCE = 0.005
GRID = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)


def _logit_normal_quantiles(scale: float) -> torch.Tensor:
    return torch.sigmoid(torch.special.ndtri(GRID) * scale)


def _ks_distance(samples: torch.Tensor, quantiles: torch.Tensor) -> float:
    """max |empirical CDF - p| at the analytic p-quantiles (p on GRID)."""
    ordered = torch.sort(samples.double()).values
    ecdf = torch.searchsorted(ordered, quantiles, right=True).double() / len(ordered)
    return float((ecdf - GRID).abs().max())


def _draw(cfg: TimestepConfig, seq_len: int = 1024, seed: int = 0) -> torch.Tensor:
    return sample_timesteps(cfg, DRAWS, seq_len, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [1.0, 0.7, 1.6])
def test_logit_normal_draws_follow_the_scaled_logit_normal_cdf(scale: float):
    samples = _draw(TimestepConfig(sigmoid_scale=scale))
    assert _ks_distance(samples, _logit_normal_quantiles(scale)) < KS_TOLERANCE
    # the comparison can tell a 10 % different scale apart
    assert _ks_distance(samples, _logit_normal_quantiles(scale * 1.1)) > 4 * KS_TOLERANCE


def test_uniform_draws_follow_the_uniform_cdf():
    samples = _draw(TimestepConfig(method="uniform"))
    assert _ks_distance(samples, GRID) < KS_TOLERANCE
    assert _ks_distance(samples, GRID ** 1.1) > 4 * KS_TOLERANCE


def test_shifted_draws_follow_the_shifted_cdf():
    # a monotone shift g maps the p-quantile q of the base distribution to g(q)
    samples = _draw(TimestepConfig(shift=3.0))
    assert _ks_distance(samples, constant_shift(3.0, _logit_normal_quantiles(1.0))) < KS_TOLERANCE
    assert _ks_distance(samples, _logit_normal_quantiles(1.0)) > 4 * KS_TOLERANCE
    samples = _draw(TimestepConfig(method="uniform", shift=2.0))
    assert _ks_distance(samples, constant_shift(2.0, GRID)) < KS_TOLERANCE


@pytest.mark.parametrize(("seq_len", "mu"), [(256, 0.5), (4096, 1.15)])
def test_flux_shift_draws_use_mu_from_the_token_count(seq_len: int, mu: float):
    samples = _draw(TimestepConfig(flux_shift=True), seq_len)
    assert _ks_distance(samples, time_shift(mu, _logit_normal_quantiles(1.0))) < KS_TOLERANCE
    other = 1.15 if mu == 0.5 else 0.5
    assert _ks_distance(samples, time_shift(other, _logit_normal_quantiles(1.0))) > 4 * KS_TOLERANCE


# ----- eval quantiles ---------------------------------------------------------------------------------------
def test_quantile_timesteps_are_the_inverse_cdf_then_the_shift():
    assert EVAL_QUANTILES == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    t = sample_timesteps(TimestepConfig(), 3, 64, gen, quantile=0.5)
    assert t.tolist() == [0.5, 0.5, 0.5] and torch.equal(gen.get_state(), state)  # no random numbers used
    z90 = 1.2815515655446004  # the standard normal's 0.9 quantile
    t = sample_timesteps(TimestepConfig(sigmoid_scale=2.0), 1, 64, quantile=0.9)
    assert t.item() == pytest.approx(1 / (1 + math.exp(-2 * z90)), rel=1e-6)
    assert sample_timesteps(TimestepConfig(method="uniform"), 2, 64, quantile=0.1).tolist() == pytest.approx([0.1] * 2)
    shifted = sample_timesteps(TimestepConfig(method="uniform", shift=3.0), 1, 64, quantile=0.1).item()
    assert shifted == pytest.approx(3 * 0.1 / (1 + 2 * 0.1))
    flux = sample_timesteps(TimestepConfig(method="uniform", flux_shift=True), 1, 4096, quantile=0.1).item()
    assert flux == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1 / 0.1 - 1), rel=1e-6)
    with pytest.raises(ValueError, match="quantile"):
        sample_timesteps(TimestepConfig(), 1, 64, quantile=1.0)


# ----- masked loss ------------------------------------------------------------------------------------------
def test_latent_mask_uses_nearest_exact_pixel_centres():
    mask = torch.arange(64, dtype=torch.float32).view(1, 8, 8)
    # nearest-exact source index: floor((d + 0.5) * 8 / 2) = 2, 6
    assert latent_mask(mask, (2, 2)).tolist() == [[[18.0, 22.0], [50.0, 54.0]]]
    # 10 -> 4: floor((d + 0.5) * 2.5) = 1, 3, 6, 8
    wide = torch.arange(10, dtype=torch.float32).view(1, 1, 10).expand(1, 2, 10)
    assert latent_mask(wide, torch.Size([1, 4]))[0, 0].tolist() == [1.0, 3.0, 6.0, 8.0]


def test_masked_loss_weights_elements_and_averages_over_all_of_them():
    pred, target = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])
    # per element loss 1; kept weight 1 + 0.5 per channel, 2 channels -> 3 / 8 elements (diffusion-pipe: mean)
    assert flow_loss(pred, target, mask=mask).item() == pytest.approx(3 / 8)
    assert flow_loss(pred, target, mask=torch.ones(1, 2, 2)).item() == flow_loss(pred, target).item()
    target2 = torch.full((1, 2, 2, 2), 3.0)  # huber(delta 1) of an error of 3 is 2.5
    assert flow_loss(pred, target2, LossConfig(huber_delta=1.0), mask).item() == pytest.approx(2.5 * 3 / 8)
    with pytest.raises(ValueError, match="latent_mask"):
        flow_loss(pred, target, mask=torch.ones(1, 4, 4))
