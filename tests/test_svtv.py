"""Space-variant TV: contracts, equality with TV at unit weights, the weight map, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import minimum_filter

from operators import Identity, ParallelBeam2D
from priors import TV, L2Fidelity, NonNegativity
from priors.tv import SpaceVariantTV, WeightedNorm, adaptive_tv_weights
from recon import ChambollePock, Problem
from tests.contracts import FunctionalContract, randn, rel_diff


def _weights(shape, seed=1, batch=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *shape), generator=gen, dtype=torch.float64) * 1.5 + 0.05


class TestSpaceVariantTV(FunctionalContract):
    @pytest.fixture
    def make(self):
        return SpaceVariantTV(_weights((1, 8, 8)), prox_iterations=3000)


class TestSpaceVariantTVAnisotropic(FunctionalContract):
    @pytest.fixture
    def make(self):
        return SpaceVariantTV(_weights((1, 8, 8), seed=2), isotropic=False, prox_iterations=3000)


class TestScaledSpaceVariantTV(FunctionalContract):
    @pytest.fixture
    def make(self):
        return 0.4 * SpaceVariantTV(_weights((1, 8, 8), seed=3), prox_iterations=3000)


class TestWeightedNorm(FunctionalContract):
    shape = (2, 1, 8, 8)  # gradient of a (1, 8, 8) image

    @pytest.fixture
    def make(self):
        w = _weights((1, 8, 8), seed=4)
        w[0, 0, :2] = 0.0  # unpenalised pixels
        return WeightedNorm(w)


class TestWeightedNormAnisotropic(TestWeightedNorm):
    @pytest.fixture
    def make(self):
        return WeightedNorm(_weights((1, 8, 8), seed=5), isotropic=False)


# ------------------------------------------------------------------------- unit weights = TV
@pytest.mark.parametrize("isotropic", [True, False])
def test_unit_weights_equal_tv_exactly(isotropic):
    x = randn((1, 12, 10), torch.float64, batch=3, seed=7)
    tv, svtv = TV(isotropic), SpaceVariantTV(torch.ones(12, 10, dtype=torch.float64), isotropic)
    assert torch.equal(svtv.value(x), tv.value(x))
    assert torch.equal(svtv.prox(x, 0.3), tv.prox(x, 0.3))
    K, g = (0.2 * svtv).split(x.shape[1:])
    z = randn(K.out_shape, torch.float64, batch=3, seed=8)
    assert torch.equal(g.conj_prox(z, 0.5), (0.2 * tv).split(x.shape[1:])[1].conj_prox(z, 0.5))


def test_unit_weights_give_tv_iterates_in_chambolle_pock():
    A = ParallelBeam2D((24, 24), np.linspace(0, np.pi, 12, endpoint=False), 36)
    x_true = torch.zeros(2, 1, 24, 24, dtype=torch.float64)
    x_true[0, 0, 6:18, 6:18], x_true[1, 0, 4:12, 8:20] = 1.0, 2.0
    y = A(x_true) + 0.05 * randn(A.out_shape, torch.float64, batch=2, seed=9)
    solver = ChambollePock(max_iter=60, tol=0)
    runs = [solver.run(Problem(L2Fidelity(A, y), 0.5 * prior, constraint=NonNegativity()), torch.zeros_like(x_true)).x
            for prior in (TV(), SpaceVariantTV(torch.ones(24, 24, dtype=torch.float64)))]
    assert torch.equal(runs[0], runs[1])


def test_weighted_prox_matches_brute_force():
    """FGP prox of tau * sum_i w_i |grad p|_i equals a generic minimiser (scipy, 4x4)."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    x = randn((1, 4, 4), torch.float64, batch=1, seed=10)
    w = _weights((1, 4, 4), seed=11)
    w[0, 0, 1, 1] = 0.0
    svtv, tau = SpaceVariantTV(w, prox_iterations=20000), 0.6
    ours = svtv.prox(x, tau)

    def objective(v):
        p = torch.as_tensor(v).reshape(x.shape)
        return float(tau * svtv.value(p) + 0.5 * ((p - x) ** 2).sum())

    best = scipy_optimize.minimize(objective, x.flatten().numpy(), method="Powell",
                                   options={"xtol": 1e-10, "ftol": 1e-14, "maxfev": 200000})
    f_ours = objective(ours.flatten().numpy())
    assert f_ours <= best.fun + 1e-9
    # the objective is 1-strongly convex, so ||q - p*||^2 <= 2 (f(q) - f(p*)) for Powell's point q
    gap = float(((ours.flatten().numpy() - best.x) ** 2).sum())
    assert gap <= 2 * (best.fun - f_ours) + 1e-8


def test_per_item_weights_batched_equals_looped():
    A = Identity((1, 16, 16))
    y = randn((1, 16, 16), torch.float64, batch=2, seed=12)
    w = _weights((1, 16, 16), seed=13, batch=2)
    solver = ChambollePock(max_iter=40, tol=0)
    batched = solver.run(Problem(L2Fidelity(A, y), 0.3 * SpaceVariantTV(w)), torch.zeros_like(y)).x
    for i in range(2):
        one = solver.run(Problem(L2Fidelity(A, y[i:i + 1]), 0.3 * SpaceVariantTV(w[i:i + 1])),
                         torch.zeros_like(y[i:i + 1])).x
        assert rel_diff(batched[i:i + 1], one) < 1e-12


def test_small_weights_keep_edges_that_tv_smooths():
    """Denoising a step: with weights from the clean step, SV-TV keeps the edge height; TV shrinks it."""
    x = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    x[..., 16:] = 1.0
    y = x + 0.05 * randn((1, 32, 32), torch.float64, batch=1, seed=14)
    svtv = SpaceVariantTV.from_estimate(x, eta=0.05, p=0.0)
    p_tv, p_sv = TV(prox_iterations=500).prox(y, 2.0), svtv.prox(y, 2.0)
    jump = lambda p: float(p[..., 17:].mean() - p[..., :15].mean())  # noqa: E731
    assert jump(p_sv) > 0.95 and jump(p_tv) < 0.9 * jump(p_sv)


# ----------------------------------------------------------------------------- weight map
def test_adaptive_weights_formula_and_range():
    x = randn((1, 16, 16), torch.float64, batch=2, seed=15)
    w = adaptive_tv_weights(x, eta=0.2, p=0.3, scale=1.0, spread=0)
    g = torch.zeros(2, 1, 16, 16, dtype=torch.float64)  # forward differences by hand
    dv = torch.zeros_like(g)
    dv[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    dh = torch.zeros_like(g)
    dh[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    g = torch.sqrt(dv ** 2 + dh ** 2)
    expected = (0.2 / torch.sqrt(0.04 + g ** 2)) ** 0.7
    assert rel_diff(w, expected) < 1e-14
    assert bool((w > 0).all()) and bool((w <= 1).all())


@pytest.mark.parametrize("spread, ndim", [(1, 2), (2, 2), (1, 3)])
def test_spread_weights_are_the_windowed_minimum(spread, ndim):
    """spread=r is the minimum of the pointwise weights over a (2r+1)-wide window (scipy, borders clipped)."""
    shape = (2, 6, 9, 11) if ndim == 3 else (2, 9, 11)
    x = randn(shape, torch.float64, batch=2, seed=17)
    pointwise = adaptive_tv_weights(x, spread=0, ndim=ndim).numpy()
    expected = np.stack([[minimum_filter(c, size=2 * spread + 1, mode="nearest") for c in item] for item in pointwise])
    np.testing.assert_allclose(adaptive_tv_weights(x, spread=spread, ndim=ndim).numpy(), expected, rtol=1e-14)


def test_adaptive_weights_are_unit_free():
    x = randn((1, 16, 16), torch.float64, batch=1, seed=16).abs()
    assert rel_diff(adaptive_tv_weights(1000.0 * x), adaptive_tv_weights(x)) < 1e-12
    assert rel_diff(adaptive_tv_weights(1000.0 * x, scale=1.0), adaptive_tv_weights(x, scale=1.0)) > 0.1


def test_adaptive_weights_flat_image_is_plain_tv():
    assert torch.equal(adaptive_tv_weights(torch.full((1, 1, 8, 8), 3.0)), torch.ones(1, 1, 8, 8))


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("weights, match", [
    (torch.ones(8, 9), "weights: shape"),
    (-torch.ones(8, 8), "weights: expected finite, non-negative"),
    (torch.full((8, 8), float("nan")), "weights: expected finite"),
    (torch.ones(2, 8, 8), "weights: expected a real tensor of 2"),
    (torch.ones(8, 8, dtype=torch.complex64), "weights: expected a real tensor"),
])
def test_bad_weights(weights, match):
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match=match):
        SpaceVariantTV(weights).value(x)


def test_bad_weights_type_and_batch():
    with pytest.raises(TypeError, match="weights: expected a torch.Tensor"):
        SpaceVariantTV(np.ones((8, 8)))
    prior = SpaceVariantTV(torch.ones(3, 1, 8, 8))
    with pytest.raises(ValueError, match="weights: shape"):
        prior.value(torch.zeros(2, 1, 8, 8))
    y = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="weights: shape"):
        ChambollePock(max_iter=2).run(Problem(L2Fidelity(Identity((1, 8, 8)), y), prior), y)


@pytest.mark.parametrize("kwargs, match", [
    ({"eta": 0.0}, "eta: expected a positive"), ({"eta": float("nan")}, "eta"),
    ({"p": 1.0}, r"p: expected an exponent in \[0, 1\)"), ({"p": -0.1}, "p: expected"),
    ({"scale": 0.0}, "scale: expected a positive"),
    ({"spread": -1}, "spread: expected a non-negative number of pixels, got -1"), ({"spread": 1.5}, "spread"),
])
def test_bad_weight_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        adaptive_tv_weights(torch.ones(1, 1, 8, 8), **kwargs)


@pytest.mark.parametrize("x_hat, match", [
    (torch.ones(8, 8), r"x_hat: expected a real \(B, C, H, W\)"),
    (torch.ones(1, 1, 8, 8, dtype=torch.complex64), "x_hat: expected a real"),
    (torch.full((1, 1, 8, 8), float("inf")), "x_hat: contains NaN or Inf"),
])
def test_bad_estimate(x_hat, match):
    with pytest.raises(ValueError, match=match):
        adaptive_tv_weights(x_hat)
