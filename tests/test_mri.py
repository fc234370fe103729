"""MRI operators: contracts in complex arithmetic, numpy.fft cross-checks, per-item parameters, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.fourier import fft2c, ifft2c
from operators.mri import CartesianMRI, MultiCoilMRI
from tests.contracts import LinearOperatorContract, randn, rel_diff

COMPLEX = {"single": torch.complex64, "double": torch.complex128}


def numpy_fft2c(x: np.ndarray) -> np.ndarray:
    """The centred orthonormal FFT written with numpy, as an independent reference."""
    ax = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=ax), axes=ax, norm="ortho"), axes=ax)


def random_mask(rng, shape=(12, 10), fraction=0.4) -> torch.Tensor:
    return torch.as_tensor(rng.random(shape) < fraction)


def random_maps(rng, coils=3, shape=(12, 10)) -> torch.Tensor:
    maps = rng.standard_normal((coils, *shape)) + 1j * rng.standard_normal((coils, *shape))
    return torch.as_tensor(maps / np.sqrt((np.abs(maps) ** 2).sum(0)), dtype=torch.complex64)


class TestCartesianMRI(LinearOperatorContract):
    dtypes = COMPLEX

    @pytest.fixture
    def make(self, rng):
        return CartesianMRI(random_mask(rng))

    def test_matches_numpy_fft(self, make):
        x = randn(make.in_shape, torch.complex128, seed=3)
        expected = make.mask.numpy()[None] * numpy_fft2c(x.numpy())
        np.testing.assert_allclose(make(x).numpy(), expected, rtol=1e-12, atol=1e-12)

    def test_adjoint_matches_numpy_ifft(self, make):
        y = randn(make.out_shape, torch.complex128, seed=4)
        m = make.mask.numpy()[None]
        ax = (-2, -1)
        expected = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(m * y.numpy(), axes=ax), axes=ax, norm="ortho"), axes=ax)
        np.testing.assert_allclose(make.adjoint(y).numpy(), expected, rtol=1e-12, atol=1e-12)

    def test_fully_sampled_is_unitary(self):
        A = CartesianMRI(torch.ones(9, 7))
        x = randn(A.in_shape, torch.complex128, seed=5)
        assert rel_diff(A.adjoint(A(x)), x) < 1e-12
        assert rel_diff(inner_norm(A(x)), inner_norm(x)) < 1e-12

    def test_norm_matches_power_iteration(self, make):
        from operators.base import _power_norm

        assert _power_norm(make, 200, 1e-8, 0, "cpu") == pytest.approx(make.norm(), rel=1e-4)

    def test_real_image_is_promoted(self, make):
        x = randn(make.in_shape, torch.float64, seed=6)
        assert make(x).dtype == torch.complex128
        assert rel_diff(make(x), make(x.to(torch.complex128))) == 0.0

    def test_dc_at_centre(self):
        A = CartesianMRI(torch.ones(8, 6))
        k = A(torch.ones(1, 1, 8, 6, dtype=torch.complex64))
        assert torch.argmax(k.abs()).item() == 4 * 6 + 3
        assert k[0, 0, 4, 3].real.item() == pytest.approx(np.sqrt(48), rel=1e-6)


def inner_norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.flatten(1), dim=1)[:, None]


class TestMultiCoilMRI(LinearOperatorContract):
    dtypes = COMPLEX

    @pytest.fixture
    def make(self, rng):
        return MultiCoilMRI(random_mask(rng), random_maps(rng))

    def test_matches_numpy(self, make):
        x = randn(make.in_shape, torch.complex128, seed=3)
        maps = make.coil_maps.numpy()[0].astype(np.complex128)
        expected = make.mask.numpy()[None] * numpy_fft2c(maps[None] * x.numpy())
        np.testing.assert_allclose(make(x).numpy(), expected, rtol=1e-6, atol=1e-6)

    def test_normalised_maps_give_identity_normal_when_fully_sampled(self, rng):
        A = MultiCoilMRI(torch.ones(12, 10), random_maps(rng))
        x = randn(A.in_shape, torch.complex64, seed=4)
        assert rel_diff(A.normal(x), x) < 1e-5
        assert A.norm() == pytest.approx(1.0, rel=1e-3)

    def test_single_coil_with_unit_map_is_cartesian(self, rng):
        mask = random_mask(rng)
        A = MultiCoilMRI(mask, torch.ones(1, 12, 10, dtype=torch.complex64))
        x = randn(A.in_shape, torch.complex64, seed=5)
        assert rel_diff(A(x), CartesianMRI(mask)(x)) < 1e-6


@pytest.mark.parametrize("make_op", ["cartesian", "multicoil"])
def test_per_item_masks_and_maps_equal_looping(rng, make_op):
    masks = torch.stack([random_mask(rng), random_mask(rng)])
    maps = torch.stack([random_maps(rng), random_maps(rng)])

    def build(m, s):
        return CartesianMRI(m) if make_op == "cartesian" else MultiCoilMRI(m, s)

    A = build(masks, maps)
    x = randn(A.in_shape, torch.complex64, seed=1)
    y = randn(A.out_shape, torch.complex64, seed=2)
    for i in range(2):
        Ai = build(masks[i], maps[i])
        assert rel_diff(A(x)[i : i + 1], Ai(x[i : i + 1])) < 1e-6
        assert rel_diff(A.adjoint(y)[i : i + 1], Ai.adjoint(y[i : i + 1])) < 1e-6
    with pytest.raises(ValueError, match="x: batch of 3 items, but mask has 2 entries"):
        A(randn(A.in_shape, torch.complex64, batch=3))


def test_fft2c_roundtrip_and_numpy():
    x = randn((2, 6, 5), torch.complex128, seed=7)
    np.testing.assert_allclose(fft2c(x).numpy(), numpy_fft2c(x.numpy()), rtol=1e-12, atol=1e-12)
    assert rel_diff(ifft2c(fft2c(x)), x) < 1e-13


class TestBadInput:
    def test_real_kspace_is_rejected(self):
        A = CartesianMRI(torch.ones(8, 8))
        with pytest.raises(TypeError, match="y: CartesianMRI expects complex k-space"):
            A.adjoint(torch.ones(1, 1, 8, 8))

    def test_kspace_shape_must_match_mask(self):
        A = MultiCoilMRI(torch.ones(8, 8), torch.ones(2, 8, 8, dtype=torch.complex64))
        with pytest.raises(ValueError, match=r"y: MultiCoilMRI expects shape \(B, 2, 8, 8\), got \(1, 2, 8, 9\)"):
            A.adjoint(torch.ones(1, 2, 8, 9, dtype=torch.complex64))

    def test_coil_count_must_match_kspace(self):
        A = MultiCoilMRI(torch.ones(8, 8), torch.ones(2, 8, 8, dtype=torch.complex64))
        with pytest.raises(ValueError, match=r"expects shape \(B, 2, 8, 8\), got \(1, 4, 8, 8\)"):
            A.adjoint(torch.ones(1, 4, 8, 8, dtype=torch.complex64))

    def test_mask_must_match_maps(self):
        with pytest.raises(ValueError, match=r"mask: shape \(8, 9\) does not match the coil maps' image shape \(8, 8\)"):
            MultiCoilMRI(torch.ones(8, 9), torch.ones(2, 8, 8, dtype=torch.complex64))

    def test_real_coil_maps_are_rejected(self):
        with pytest.raises(TypeError, match="coil_maps: expected complex"):
            MultiCoilMRI(torch.ones(8, 8), torch.ones(2, 8, 8))

    @pytest.mark.parametrize("mask", [torch.ones(8), torch.ones(1, 1, 8, 8), torch.ones(0, 8)])
    def test_bad_mask_shape(self, mask):
        with pytest.raises(ValueError, match="mask: "):
            CartesianMRI(mask)

    def test_nan_maps(self):
        maps = torch.ones(2, 8, 8, dtype=torch.complex64)
        maps[0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="coil_maps: contains NaN"):
            MultiCoilMRI(torch.ones(8, 8), maps)


@pytest.mark.parametrize("make_op", ["cartesian", "multicoil"])
def test_solve_shifted_normal_solves_the_system(rng, make_op):
    mask, maps = random_mask(rng), random_maps(rng)
    A = CartesianMRI(mask) if make_op == "cartesian" else MultiCoilMRI(mask, maps)
    b = randn(A.in_shape, torch.complex128, seed=3)
    tau = torch.tensor([0.5, 7.0], dtype=torch.float64)

    def residual(p):
        return rel_diff(p + tau.reshape(-1, 1, 1, 1) * A.normal(p), b)

    if make_op == "cartesian":
        assert residual(A.solve_shifted_normal(b, tau)) < 1e-12
    else:  # CG: its default tolerance, then run to convergence
        assert residual(A.solve_shifted_normal(b, tau)) <= A.solve_tol
        A.solve_tol = 1e-12
        assert residual(A.solve_shifted_normal(b, tau)) < 1e-10
