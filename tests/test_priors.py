"""Functionals: contracts, closed forms, and brute-force checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from operators import Identity, ParallelBeam2D
from priors import TV, Box, L1Norm, L2Fidelity, L21Norm, NonNegativity, SquaredL2Distance
from priors.base import ScaledFunctional, SumFunctional
from tests.contracts import FunctionalContract, randn, rel_diff


class TestL1Norm(FunctionalContract):
    @pytest.fixture
    def make(self):
        return L1Norm()


class TestL21Norm(FunctionalContract):
    shape = (2, 1, 6, 6)

    @pytest.fixture
    def make(self):
        return L21Norm()


class TestTVIsotropic(FunctionalContract):
    @pytest.fixture
    def make(self):
        return TV(prox_iterations=2000)


class TestTVAnisotropic(FunctionalContract):
    @pytest.fixture
    def make(self):
        return TV(isotropic=False, prox_iterations=2000)


class TestScaledTV(FunctionalContract):
    @pytest.fixture
    def make(self):
        return 0.3 * TV(prox_iterations=2000)


class TestBox(FunctionalContract):
    @pytest.fixture
    def make(self):
        return Box(-0.5, 0.5)


class TestPixelBox(FunctionalContract):
    """A support (zeros) and per-pixel bounds, some infinite, shared by the batch."""

    @pytest.fixture
    def make(self):
        from priors.constraints import PixelBox

        upper = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        upper[..., :2, :] = 0.0
        upper[..., -1, :] = float("inf")
        return PixelBox(upper)


def test_pixel_box_projects_and_splits_by_item():
    from priors.constraints import PixelBox

    upper = torch.tensor([[[[0.0, 1.0]]], [[[2.0, float("inf")]]]])
    box = PixelBox(upper)
    x = torch.tensor([[[[0.5, 3.0]]], [[[-1.0, 5.0]]]])
    assert box.prox(x, 1.0).tolist() == [[[[0.0, 1.0]]], [[[0.0, 5.0]]]]
    assert box.value(box.prox(x, 1.0)).tolist() == [0.0, 0.0] and box.value(x).tolist() == [math.inf, math.inf]
    assert torch.equal(box.item(1).upper, upper[1:2])
    with pytest.raises(ValueError, match="upper: expected bounds >= 0"):
        PixelBox(torch.tensor([-1.0]))


class TestSquaredL2Distance(FunctionalContract):
    @pytest.fixture
    def make(self):
        return SquaredL2Distance(randn((1, 8, 8), torch.float64, batch=1, seed=5), weight=2.0)


class TestL2Fidelity(FunctionalContract):
    shape = (1, 8, 8)

    @pytest.fixture
    def make(self):
        A = ParallelBeam2D((8, 8), np.linspace(0, np.pi, 10, endpoint=False), 12)
        return L2Fidelity(A, randn(A.out_shape, torch.float64, batch=1, seed=6), cg_iterations=200)


def test_tv_values_match_numpy():
    x = randn((1, 5, 7), torch.float64, batch=2)
    a = x.numpy()
    dr = np.diff(a, axis=-2, append=a[..., -1:, :])
    dc = np.diff(a, axis=-1, append=a[..., -1:])
    iso = np.sqrt(dr**2 + dc**2).reshape(2, -1).sum(1)
    aniso = (np.abs(dr) + np.abs(dc)).reshape(2, -1).sum(1)
    np.testing.assert_allclose(TV().value(x).numpy(), iso, rtol=1e-12)
    np.testing.assert_allclose(TV(isotropic=False).value(x).numpy(), aniso, rtol=1e-12)


def test_tv_prox_brute_force_on_a_tiny_image():
    """prox by FGP equals a generic minimiser of tau TV(p) + 1/2 ||p - x||^2 (scipy, 3x3)."""
    from scipy.optimize import minimize

    x = randn((1, 3, 3), torch.float64, batch=1, seed=9)
    tau = 0.4
    tv = TV(prox_iterations=5000)

    def objective(p):
        t = torch.as_tensor(p).reshape(x.shape)
        return float(tau * tv.value(t) + 0.5 * ((t - x) ** 2).sum())

    best = minimize(objective, x.flatten().numpy(), method="Powell", options={"xtol": 1e-10, "ftol": 1e-14})
    p = tv.prox(x, tau)
    assert objective(p.flatten().numpy()) <= best.fun + 1e-8


def test_nonnegativity_value_and_prox():
    f = NonNegativity()
    x = torch.tensor([[[-1.0, 2.0]], [[0.0, 3.0]]])
    assert f.value(x).tolist() == [float("inf"), 0.0]
    assert torch.equal(f.prox(x, 1.0), torch.tensor([[[0.0, 2.0]], [[0.0, 3.0]]]))


def test_l2_fidelity_gradcheck():
    A = ParallelBeam2D((6, 6), np.linspace(0, np.pi, 7, endpoint=False), 9)
    f = L2Fidelity(A, randn(A.out_shape, torch.float64, batch=1))
    x = randn(A.in_shape, torch.float64, batch=1, seed=2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: f.value(t), (x,), eps=1e-3, atol=1e-3, rtol=1e-3)


def test_scaling_and_sums():
    x = randn((1, 6, 6), torch.float64)
    tv = TV()
    scaled = 0.25 * tv
    assert isinstance(scaled, ScaledFunctional)
    assert rel_diff(scaled.value(x)[:, None], 0.25 * tv.value(x)[:, None]) < 1e-14
    total = scaled + L1Norm()
    assert isinstance(total, SumFunctional) and not total.has_prox
    assert rel_diff(total.value(x)[:, None], (0.25 * tv.value(x) + x.abs().flatten(1).sum(1))[:, None]) < 1e-14
    with pytest.raises(ValueError, match="lam"):
        -1.0 * tv


def test_zero_weight_is_the_zero_functional():
    # 0 * f: value 0, prox the identity, and the conjugate the indicator of {0} (its prox is 0), which
    # Chambolle-Pock needs for a zero TV weight (it divided by the weight)
    x, z = randn((1, 6, 6), torch.float64), randn((1, 2, 6, 6), torch.float64, seed=3)
    zero = 0.0 * L21Norm()
    assert float(zero.value(z).abs().max()) == 0.0 and torch.equal((0.0 * TV()).prox(x, 2.0), x)
    assert torch.equal(zero.conj_prox(z, 0.7), torch.zeros_like(z))
    # Moreau: prox_{s f*}(z) = z - s prox_{f/s}(z/s)
    assert float((z - 0.7 * zero.prox(z / 0.7, 1 / 0.7)).abs().max()) < 1e-14


def test_split_of_scaled_tv():
    K, g = (0.5 * TV()).split((1, 4, 4))
    x = randn((1, 4, 4), torch.float64)
    assert rel_diff(g.value(K(x))[:, None], (0.5 * TV().value(x))[:, None]) < 1e-14


def test_l2_fidelity_bad_input():
    A = Identity((1, 4, 4))
    with pytest.raises(ValueError, match=r"y: expected shape \(B, 1, 4, 4\)"):
        L2Fidelity(A, torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="y: contains NaN"):
        L2Fidelity(A, torch.full((1, 1, 4, 4), float("nan")))
    with pytest.raises(TypeError, match="A: expected a LinearOperator"):
        L2Fidelity(np.eye(3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="weight"):
        L2Fidelity(A, torch.zeros(1, 1, 4, 4), weight=-1.0)


def test_box_bad_bounds():
    with pytest.raises(ValueError, match="lower, upper"):
        Box(1.0, 0.0)
