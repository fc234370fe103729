"""Posterior summaries: batched draws arranged per item, mean and std as numpy computes them, seeded,
calibration figures against numpy, and the argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.phantoms import shepp_logan
from operators import CartesianMRI, ParallelBeam2D, random_mask
from recon.diffusion.posterior import Posterior, calibration, posterior
from recon.models import TrainedModel, build_network
from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)

ARCH = {"channels": [8, 16], "embedding": 16, "sigma_data": 0.5, "sigma_range": [0.002, 160.0]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TrainedModel("score", build_network("score", ARCH), {"trained_on": "images in [0, 1]"})


@pytest.fixture(scope="module")
def ct():
    A = ParallelBeam2D((16, 16), np.linspace(0, np.pi, 10, endpoint=False), 24)
    x = torch.cat([shepp_logan(16), 0.5 * shepp_logan(16)])
    return A, A(x)


@pytest.mark.parametrize("method", ["dps", "diffpir", "score-pc"])
def test_draws_are_arranged_per_item_and_summarised_as_numpy_does(ct, model, method):
    A, y = ct
    p = posterior(A, y, method, samples=4, model=model, iterations=6, noise_std=0.01)
    assert p.samples.shape == (4, 2, 1, 16, 16) and p.mean.shape == p.std.shape == (2, 1, 16, 16)
    s = p.samples.numpy()
    np.testing.assert_allclose(p.mean.numpy(), s.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.std.numpy(), s.std(0, ddof=1), rtol=1e-4, atol=1e-6)
    assert (p.samples[0] - p.samples[1]).abs().max() > 1e-3  # each chain draws its own noise
    again = posterior(A, y, method, samples=4, model=model, iterations=6, noise_std=0.01)
    torch.testing.assert_close(again.samples, p.samples)  # seeded
    assert p.parameters["samples"] == 4 and p.parameters["seconds_per_sample"] > 0


def test_mri_draws_are_complex_with_a_real_std(model):
    A = CartesianMRI(random_mask((16, 16), 4, 0.1, seed=0))
    y = A(shepp_logan(16).to(torch.complex64))
    p = posterior(A, y, "score-pc", samples=3, model=model, iterations=4, noise_std=0.01)
    assert p.mean.is_complex() and not p.std.is_complex() and bool((p.std >= 0).all())
    expected = np.sqrt((np.abs(p.samples.numpy() - p.mean.numpy()) ** 2).sum(0) / 2)
    np.testing.assert_allclose(p.std.numpy(), expected, rtol=1e-4, atol=1e-6)
    c = calibration(p, shepp_logan(16).to(torch.complex64))
    assert 0 <= c["coverage"][0] <= 1 and -1 <= c["pearson"][0] <= 1


def _draws(spread: float, seed: int = 0):
    """Truth 0; errors N(0, scale^2) per pixel; draws around the mean with ``spread`` times that scale."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.1, 1, 64).expand(1, 1, 64, 64)
    centre = scale * torch.randn(1, 1, 64, 64, generator=g)
    draws = centre + spread * scale * torch.randn(400, 1, 1, 64, 64, generator=g)
    return Posterior(draws.mean(0), draws.std(0), draws, "toy", 0.0), torch.zeros(1, 1, 64, 64)


def test_calibration_tells_calibrated_from_overconfident_draws_and_matches_numpy():
    good, truth = _draws(1.0)
    narrow, _ = _draws(0.25)
    c_good, c_narrow = calibration(good, truth), calibration(narrow, truth)
    assert 0.87 < c_good["coverage"][0] < 0.93 and c_narrow["coverage"][0] < 0.35
    s = good.samples.numpy()[:, 0].reshape(400, -1)
    lo, hi = np.quantile(s, 0.05, axis=0), np.quantile(s, 0.95, axis=0)
    assert c_good["coverage"][0] == pytest.approx(float(np.mean((lo <= 0) & (0 <= hi))), abs=1e-4)
    err, std = np.abs(good.mean.numpy().ravel()), good.std.numpy().ravel()
    assert c_good["pearson"][0] == pytest.approx(float(np.corrcoef(err, std)[0, 1]), abs=1e-4)
    assert c_good["pearson"][0] > 0.3


def test_bad_arguments_are_named(ct, model):
    A, y = ct
    for bad in (1, 0, -2, 2.5, "4"):
        with pytest.raises(ValueError, match="samples: expected an integer >= 2"):
            posterior(A, y, "dps", samples=bad, model=model)
    with pytest.raises(ValueError, match="method: posterior samples need a sampler, one of dps, diffpir, score-pc; "
                                         "got 'tv'"):
        posterior(A, y, "tv", samples=4)
    with pytest.raises(ValueError, match="model: expected a 'score' model, got a 'lpn' model"):
        posterior(A, y, "score-pc", samples=2, model=TrainedModel("lpn", build_network("lpn", {"hidden": 4,
                                                                                                "strides": [1]})))
    good, truth = _draws(1.0)
    with pytest.raises(ValueError, match=r"truth: expected shape \(1, 1, 64, 64\)"):
        calibration(good, truth[..., :32])
    with pytest.raises(ValueError, match="level: expected a number in"):
        calibration(good, truth, level=1.5)


def test_reconstruct_with_samples_is_the_posterior(ct, model):
    """``reconstruct(..., samples=N)`` and ``reconstruct_mri(..., samples=N)`` give the mean as ``x``
    with ``std`` and ``samples`` set: the same draws as ``posterior``; other methods refuse ``samples``."""
    from recon.mri import reconstruct_mri
    from recon.reconstruct import reconstruct

    A, y = ct
    r = reconstruct(A, y, "score-pc", model=model, iterations=4, samples=3)
    p = posterior(A, y, "score-pc", samples=3, model=model, iterations=4)
    torch.testing.assert_close(r.samples, p.samples, rtol=0, atol=0)
    torch.testing.assert_close(r.x, p.mean, rtol=0, atol=0)
    assert r.std.shape == r.x.shape == (2, 1, 16, 16) and r.parameters["samples"] == 3
    assert reconstruct(A, y, "score-pc", model=model, iterations=4).std is None
    with pytest.raises(ValueError, match="samples: only the samplers dps, diffpir, score-pc draw posterior samples, "
                                         "not 'tv'"):
        reconstruct(A, y, "tv", samples=3)
    with pytest.raises(ValueError, match="samples: expected an integer >= 2"):
        reconstruct(A, y, "dps", samples=1, model=model)
    with pytest.raises(TypeError, match=r"y: expected a batched tensor \(B, ...\), got \(2, 1, 10, 24\)"):
        reconstruct(A, y.numpy(), "dps", samples=2, model=model)
    B = CartesianMRI(random_mask((16, 16), 4, 0.1, seed=0))
    k = B(shepp_logan(16).to(torch.complex64))
    m = reconstruct_mri(B, k, "dps", model=model, iterations=3, samples=2)
    assert m.samples.shape == (2, 1, 1, 16, 16) and m.samples.is_complex() and not m.std.is_complex()
    with pytest.raises(ValueError, match="samples: only the samplers"):
        reconstruct_mri(B, k, "tv", samples=2)
