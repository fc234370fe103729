"""The diffusion prior's conversions and schedules against closed forms (a Gaussian prior, whose ideal
denoiser, score and noise prediction are known exactly), its preconditioning and its network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from priors.diffusion import (DiffusionPrior, VPSchedule, denoiser_from_eps, edm_scalings, eps_from_denoiser,
                              score_from_denoiser, ve_sigmas)
from priors.nets.noise_unet import NoiseUNet

M, S = 0.3, 0.2  # the analytic prior: x0 ~ N(M, S^2 I)


def gaussian_denoiser(x, sigma):
    """E[x0 | x0 + sigma eps = x] for x0 ~ N(M, S^2 I)."""
    return M + S ** 2 / (S ** 2 + sigma ** 2) * (x - M)


def gaussian_score(x, sigma):
    """grad log of N(M, (S^2 + sigma^2) I), the density of x0 + sigma eps."""
    return -(x - M) / (S ** 2 + sigma ** 2)


@pytest.fixture
def x():
    return torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sigma", [1e-3, 0.05, 1.0, 80.0])
def test_denoiser_score_and_eps_agree_with_the_gaussian_closed_form(x, sigma):
    prior = DiffusionPrior(gaussian_denoiser, preconditioned=False, sigma_range=(1e-3, 80.0))
    # (D - x) / sigma cancels: float64 keeps about 1e-16 (S^2 + sigma^2) / sigma^2 relative (4e-12 at 1e-3)
    close = dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(prior.score(x, sigma), gaussian_score(x, sigma), **close)
    eps = prior.eps(x, sigma)
    torch.testing.assert_close(eps, -sigma * gaussian_score(x, sigma), **close)
    torch.testing.assert_close(denoiser_from_eps(x, eps, sigma), prior.denoise(x, sigma), **close)
    d = prior.denoise(x, sigma)
    torch.testing.assert_close(score_from_denoiser(x, d, sigma) * sigma, -eps_from_denoiser(x, d, sigma), **close)


def test_per_item_noise_levels_equal_one_call_per_item(x):
    prior = DiffusionPrior(gaussian_denoiser, preconditioned=False)
    sigmas = torch.tensor([0.01, 0.5, 3.0], dtype=torch.float64)
    batched = prior.score(x, sigmas)
    for k in range(3):
        torch.testing.assert_close(batched[k:k + 1], prior.score(x[k:k + 1], float(sigmas[k])), rtol=1e-14, atol=0)


def test_vp_schedule_matches_the_ddpm_definition():
    s = VPSchedule()
    beta = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - beta)
    np.testing.assert_allclose(s.abar.numpy(), abar, rtol=1e-12)
    np.testing.assert_allclose(s.sigma(torch.arange(1000)).numpy(), np.sqrt((1 - abar) / abar), rtol=1e-12)
    assert s.timesteps(100)[:3] == [990, 980, 970] and s.timesteps(100)[-1] == 0 and len(s.timesteps(100)) == 100
    with pytest.raises(ValueError, match="count"):
        s.timesteps(0)


def test_the_vp_noise_prediction_is_the_ve_one_on_the_vp_scale(x):
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps: the ideal eps_theta(x_t, t) is E[eps | x_t], computed
    here directly from the joint Gaussian of (x0, eps) and x_t."""
    prior = DiffusionPrior(gaussian_denoiser, preconditioned=False, sigma_range=(1e-3, 200.0))
    s = VPSchedule()
    for t in (0, 250, 999):
        a, b = math.sqrt(float(s.abar[t])), math.sqrt(1 - float(s.abar[t]))
        expected = b / (a * a * S ** 2 + b * b) * (x - a * M)  # Cov(eps, x_t) / Var(x_t) * (x_t - E x_t)
        torch.testing.assert_close(prior.eps_vp(x, t, s), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(s.from_ve(s.to_ve(x, t), t), x, rtol=1e-14, atol=0)


def test_edm_preconditioning_reaches_the_ideal_denoiser_with_the_ideal_network(x):
    """With F* = (D* - c_skip x) / c_out evaluated at the unscaled input, the preconditioned prior is D*;
    and an untrained NoiseUNet (zero output layer) gives c_skip x."""
    sd = 0.5
    sigma = torch.tensor([0.02, 0.3, 5.0], dtype=torch.float64)

    def ideal(x_in, c_noise):
        s = (4 * c_noise).exp()
        c_skip, c_out, c_in, _ = (c[:, None, None, None] for c in edm_scalings(s, sd))
        x_orig = x_in / c_in
        return (gaussian_denoiser(x_orig, s[:, None, None, None]) - c_skip * x_orig) / c_out

    prior = DiffusionPrior(ideal, sigma_data=sd)
    torch.testing.assert_close(prior.denoise(x, sigma), gaussian_denoiser(x, sigma[:, None, None, None]),
                               rtol=1e-10, atol=1e-12)
    fresh = DiffusionPrior(NoiseUNet(channels=(8, 16), embedding=16).double(), sigma_data=sd)
    c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
    torch.testing.assert_close(fresh.denoise(x, sigma), c_skip[:, None, None, None] * x, rtol=1e-12, atol=0)


def test_edm_scalings_give_unit_variance_input_and_target():
    sd = 0.5
    sigma = torch.tensor([0.01, 0.5, 10.0], dtype=torch.float64)
    c_skip, c_out, c_in, _ = edm_scalings(sigma, sd)
    torch.testing.assert_close(c_in ** 2 * (sd ** 2 + sigma ** 2), torch.ones(3, dtype=torch.float64))
    # the target (x0 - c_skip (x0 + sigma n)) / c_out has variance one for x0 of std sd
    var = ((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sigma ** 2) / c_out ** 2
    torch.testing.assert_close(var, torch.ones(3, dtype=torch.float64))


def test_ve_sigmas_descend_between_the_bounds():
    s = ve_sigmas(10, 0.002, 80.0)
    assert s[0].item() == pytest.approx(80.0) and s[-1].item() == pytest.approx(0.002)
    assert bool((s[1:] < s[:-1]).all())
    with pytest.raises(ValueError, match="sigma_min"):
        ve_sigmas(10, 1.0, 0.5)


def test_noise_unet_is_fully_convolutional_batched_equals_looped_and_conditioned():
    torch.manual_seed(0)
    net = NoiseUNet(channels=(8, 16, 16), embedding=16).double()
    for p in net.head.parameters():
        torch.nn.init.normal_(p, std=0.1)  # a non-zero output layer, as after training
    x = torch.randn(3, 1, 21, 18, dtype=torch.float64)
    c = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    out = net(x, c)
    assert out.shape == x.shape
    for k in range(3):
        torch.testing.assert_close(out[k:k + 1], net(x[k:k + 1], c[k:k + 1]), rtol=1e-10, atol=1e-12)
    assert (net(x, torch.full((3,), 2.0, dtype=torch.float64)) - out).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, H, W\)"):
        net(torch.zeros(1, 2, 8, 8, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))


def test_bad_noise_levels_are_named_and_out_of_range_ones_warn(x):
    prior = DiffusionPrior(gaussian_denoiser, preconditioned=False, sigma_range=(0.01, 1.0))
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="sigma: expected finite noise levels > 0"):
            prior.denoise(x, bad)
    with pytest.raises(ValueError, match=r"sigma: expected a number or a \(3,\) tensor"):
        prior.denoise(x, torch.ones(2))
    with pytest.warns(UserWarning, match=r"outside the range the model was trained on, \[0.01, 1\]"):
        prior.denoise(x, 5.0)


def test_at_gives_a_pnp_prior_at_a_fixed_noise_level(x):
    prior = DiffusionPrior(gaussian_denoiser, preconditioned=False)
    torch.testing.assert_close(prior.at(0.1).prox(x, 123.0), gaussian_denoiser(x, 0.1))
    torch.testing.assert_close(prior.as_prior(lam=2.0).prox(x, 0.5), gaussian_denoiser(x, 1.0))


def _corner_shift(x, sigma):
    """A denoiser that is not flip-equivariant: adds each image's top-left value times sigma."""
    return x + sigma * x[..., :1, :1]


@pytest.mark.parametrize("count", [4, 8])
def test_the_geometric_ensemble_is_the_mean_over_flips_and_transposes(x, count):
    prior = DiffusionPrior(_corner_shift, preconditioned=False, ensemble=count)
    a = x.numpy()
    views = [a, a[..., ::-1], a[..., ::-1, :], a[..., ::-1, ::-1]]
    views += [np.swapaxes(v, -1, -2) for v in views] if count == 8 else []
    # for this denoiser each copy adds sigma times one of the corners (with transposes: the same four, twice)
    corners = np.stack([v[..., :1, :1] for v in views]).mean(0)
    torch.testing.assert_close(prior.denoise(x, 0.5), torch.from_numpy(a + 0.5 * corners))
    # an equivariant (pixel-wise) denoiser is unchanged by the ensemble
    exact = DiffusionPrior(gaussian_denoiser, preconditioned=False, ensemble=count)
    torch.testing.assert_close(exact.denoise(x, 0.3), gaussian_denoiser(x, 0.3))
    z = torch.complex(x, -x)  # complex images: real and imaginary parts, each ensembled
    torch.testing.assert_close(prior.denoise(z, 0.5), torch.complex(prior.denoise(x, 0.5), prior.denoise(-x, 0.5)))


def test_with_ensemble_shares_the_network_and_leaves_the_prior_unchanged(x):
    prior = DiffusionPrior(NoiseUNet(channels=(8, 16, 16), embedding=16).double())
    other = prior.with_ensemble(4)
    assert (prior.ensemble, other.ensemble) == (1, 4) and other.network is prior.network
    assert "ensemble=4" in repr(other)
    for bad in (2, 0, True, "4"):
        with pytest.raises(ValueError, match=r"ensemble: expected one of \(1, 4, 8\)"):
            prior.with_ensemble(bad)
    with pytest.raises(ValueError, match=r"ensemble: 8 \(with transposes\) needs square images, got \(8, 6\)"):
        prior.with_ensemble(8).denoise(x[..., :6], 0.1)
