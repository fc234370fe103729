"""Blur: contracts, scipy cross-checks, dense-matrix checks, kernel generators and Wiener."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndimage
import scipy.signal as signal
import torch

from data.phantoms import shepp_logan
from operators import Identity
from operators.blur import Blur, box_kernel, gaussian_kernel, motion_kernel
from priors import TV, L2Fidelity, NonNegativity
from recon import ChambollePock, Problem
from recon.metrics import psnr
from recon.reconstruct import default_tv_lambda, estimate_noise_std
from recon.wiener import estimate_nsr, wiener
from tests.contracts import LinearOperatorContract, randn, rel_diff

BOUNDARIES = ["circular", "zero"]
SCIPY_MODE = {"circular": "wrap", "zero": "constant"}


def one_sided_motion() -> np.ndarray:
    """Motion at 30 degrees that only trails to the right: neither symmetric nor point-symmetric."""
    k = motion_kernel(5, 30.0)
    k[:, : k.shape[1] // 2] = 0.0
    return k / k.sum()


def dense_matrix(op: Blur, item: int = 0) -> np.ndarray:
    """``op`` as a matrix, built by applying it to the identity basis (kernel ``item``)."""
    n = int(np.prod(op.in_shape))
    single = Blur(op.kernel[item], op.image_shape, op.boundary, op.in_shape[0])
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *op.in_shape)
    return single(eye).reshape(n, n).T.numpy()


def to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


# -- contracts ------------------------------------------------------------------------------
class TestCircularGaussian(LinearOperatorContract):
    @pytest.fixture
    def make(self):
        return Blur(gaussian_kernel(1.5), (12, 14), "circular", channels=2)


class TestZeroGaussian(LinearOperatorContract):
    @pytest.fixture
    def make(self):
        return Blur(gaussian_kernel(1.0), (9, 11), "zero")


class TestZeroOneSidedMotion(LinearOperatorContract):
    @pytest.fixture
    def make(self):
        return Blur(one_sided_motion(), (10, 12), "zero", channels=2)


class TestEvenKernel(LinearOperatorContract):
    @pytest.fixture(params=BOUNDARIES)
    def make(self, request, rng):
        return Blur(rng.standard_normal((4, 6)), (9, 10), request.param)


class TestBatchedKernels(LinearOperatorContract):
    """Two kernels, one per batch item (the contract's batch-2 tests use them item by item)."""

    @pytest.fixture(params=BOUNDARIES)
    def make(self, request, rng):
        kernels = np.stack([gaussian_kernel(1.0, size=5), rng.standard_normal((5, 5))])
        return Blur(kernels, (8, 9), request.param, channels=2)

    def test_batched_equals_looped(self, make):
        x = randn(make.in_shape, torch.float64, batch=2, seed=10)
        batched = make(x)
        for i in range(2):
            single = Blur(make.kernel[i], make.image_shape, make.boundary, channels=2)
            assert rel_diff(batched[i : i + 1], single(x[i : i + 1])) < 1e-12
            assert rel_diff(make.adjoint(x)[i : i + 1], single.adjoint(x[i : i + 1])) < 1e-12

    def test_norm_is_cached_and_positive(self, make):
        exact = max(np.linalg.norm(dense_matrix(make, i), 2) for i in range(2))
        assert make.norm() == pytest.approx(exact, rel=1e-6 if make.boundary == "circular" else 1e-3)
        assert make.norm() is make.norm()

    def test_one_item_is_rejected(self, make):
        with pytest.raises(ValueError, match="x: batch size 1 does not match the 2 kernels"):
            make(torch.zeros(1, *make.in_shape))


# -- scipy cross-checks -------------------------------------------------------------------
@pytest.mark.parametrize("ksize", [(3, 3), (5, 3), (4, 4), (2, 5), (1, 6), (7, 7)])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_forward_and_adjoint_match_scipy(rng, ksize, boundary):
    k, x = rng.standard_normal(ksize), rng.standard_normal((2, 3, 9, 11))
    A = Blur(k, (9, 11), boundary, channels=3)
    mode = SCIPY_MODE[boundary]
    expected = np.stack([[ndimage.convolve(c, k, mode=mode) for c in item] for item in x])
    transposed = np.stack([[ndimage.correlate(c, k, mode=mode) for c in item] for item in x])
    assert rel_diff(A(to_torch(x)), to_torch(expected)) < 1e-12
    assert rel_diff(A.adjoint(to_torch(x)), to_torch(transposed)) < 1e-12


@pytest.mark.parametrize("ksize", [(3, 5), (5, 1), (7, 3)])
def test_zero_boundary_matches_convolve2d_same_for_odd_kernels(rng, ksize):
    k, x = rng.standard_normal(ksize), rng.standard_normal((10, 8))
    got = Blur(k, (10, 8), "zero")(to_torch(x)[None, None])[0, 0]
    assert rel_diff(got[None], to_torch(signal.convolve2d(x, k, mode="same"))[None]) < 1e-12


def test_convolve2d_same_centres_even_kernels_one_pixel_earlier(rng):
    """Documented difference: for even sizes convolve2d(mode='same') uses centre (kh - 1) // 2."""
    k, x = rng.standard_normal((4, 4)), rng.standard_normal((10, 8))
    ours = Blur(k, (10, 8), "zero")(to_torch(x)[None, None])[0, 0].numpy()
    theirs = signal.convolve2d(x, k, mode="same")
    np.testing.assert_allclose(ours[:-1, :-1], theirs[1:, 1:], rtol=1e-12, atol=1e-12 * np.abs(theirs).max())
    assert np.abs(ours - theirs).max() > 1e-3 * np.abs(theirs).max()


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_per_item_kernels_match_scipy(rng, boundary):
    ks, x = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 2, 7, 8))
    A = Blur(ks, (7, 8), boundary, channels=2)
    expected = np.stack([[ndimage.convolve(c, k, mode=SCIPY_MODE[boundary]) for c in item]
                         for item, k in zip(x, ks)])
    assert rel_diff(A(to_torch(x)), to_torch(expected)) < 1e-12


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_float32_input_agrees_with_scipy(rng, boundary):
    k, x = one_sided_motion(), rng.standard_normal((1, 1, 16, 12))
    out = Blur(k, (16, 12), boundary)(to_torch(x).float())
    assert out.dtype == torch.float32
    expected = ndimage.convolve(x[0, 0], k, mode=SCIPY_MODE[boundary])
    assert rel_diff(out.double(), to_torch(expected)[None, None]) < 1e-5


def test_identity_kernel_and_shift_direction():
    x = randn((1, 6, 7), torch.float64, batch=1)
    delta = np.zeros((3, 3))
    delta[1, 1] = 1.0
    assert torch.equal(Blur(delta, (6, 7), "zero")(x), x)
    delta_even = np.zeros((4, 4))
    delta_even[2, 2] = 1.0  # the centre of an even kernel is at kh // 2
    assert rel_diff(Blur(delta_even, (6, 7))(x), x) < 1e-12
    right = np.zeros((1, 3))
    right[0, 2] = 1.0  # weight right of the centre moves content right
    assert rel_diff(Blur(right, (6, 7))(x), torch.roll(x, 1, dims=-1)) < 1e-12


# -- dense-matrix checks ------------------------------------------------------------------
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("ksize", [(3, 3), (4, 5)])
def test_abs_sums_match_dense(rng, boundary, ksize):
    A = Blur(rng.standard_normal((2, *ksize)), (6, 7), boundary)
    like = torch.zeros(1, dtype=torch.float64)
    rows, cols = A.abs_row_sums(like), A.abs_col_sums(like)
    assert rows.shape == cols.shape == (2, 1, 6, 7)
    for i in range(2):
        M = np.abs(dense_matrix(A, i))
        np.testing.assert_allclose(rows[i].flatten().numpy(), M.sum(1), rtol=1e-12)
        np.testing.assert_allclose(cols[i].flatten().numpy(), M.sum(0), rtol=1e-12)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_norm_matches_dense_spectral_norm(rng, boundary):
    A = Blur(one_sided_motion() + 0.1 * rng.standard_normal((5, 5)), (8, 9), boundary)
    exact = np.linalg.norm(dense_matrix(A), 2)
    assert A.norm() == pytest.approx(exact, rel=1e-6 if boundary == "circular" else 1e-3)


def test_set_kernel_changes_output_and_resets_norm():
    A = Blur(gaussian_kernel(1.0), (16, 16))
    x = randn(A.in_shape, torch.float64, batch=1)
    n_old = A.norm()
    A.set_kernel(2.0 * gaussian_kernel(2.0))
    assert A._norm is None and A.norm() == pytest.approx(2.0 * n_old, rel=1e-2)
    assert rel_diff(A(x), Blur(2.0 * gaussian_kernel(2.0), (16, 16))(x)) == 0.0
    with pytest.raises(ValueError, match="kernel: contains NaN"):
        A.set_kernel(np.full((3, 3), np.nan))


def test_chambolle_pock_runs_with_per_item_kernels():
    """The per-item abs sums broadcast in CP; a batched solve equals the item-by-item solves."""
    x = shepp_logan(32).double().repeat(2, 1, 1, 1)
    kernels = np.stack([gaussian_kernel(1.0, size=5), one_sided_motion()])
    A = Blur(kernels, (32, 32), "zero")
    y = A(x)
    solve = lambda op, data: ChambollePock(max_iter=30, tol=0.0).run(  # noqa: E731
        Problem(L2Fidelity(op, data), 1e-3 * TV(), constraint=NonNegativity()), data).x
    batched = solve(A, y)
    for i in range(2):
        assert rel_diff(batched[i : i + 1], solve(Blur(kernels[i], (32, 32), "zero"), y[i : i + 1])) < 1e-10


# -- kernel generators --------------------------------------------------------------------
@pytest.mark.parametrize("kernel", [gaussian_kernel(0.7), gaussian_kernel(2.0, size=9), box_kernel(4),
                                    motion_kernel(4.5, 20.0), motion_kernel(1)])
def test_kernels_sum_to_one(kernel):
    assert kernel.dtype == np.float64 and kernel.sum() == pytest.approx(1.0, rel=1e-12)
    assert (kernel >= 0).all()


def test_gaussian_kernel_shape_and_values():
    k = gaussian_kernel(2.0)
    assert k.shape == (13, 13) and gaussian_kernel(0.5).shape == (5, 5)
    np.testing.assert_array_equal(k, k.T)
    np.testing.assert_array_equal(k, k[::-1, ::-1])
    assert k[6, 7] / k[6, 6] == pytest.approx(np.exp(-1 / 8), rel=1e-12)
    assert k[7, 7] / k[6, 6] == pytest.approx(np.exp(-2 / 8), rel=1e-12)


def test_box_kernel_is_uniform():
    np.testing.assert_array_equal(box_kernel(3), np.full((3, 3), 1 / 9))


def test_motion_kernel_direction():
    k0, k90 = motion_kernel(5, 0.0), motion_kernel(5, 90.0)
    assert k0.shape == k90.shape == (5, 5)
    expected = np.zeros((5, 5))
    expected[2] = 0.2
    np.testing.assert_allclose(k0, expected, atol=1e-15)
    np.testing.assert_allclose(k90, expected.T, atol=1e-15)
    k45 = motion_kernel(5, 45.0)  # y points up: from bottom-left to top-right
    assert k45[0, 4] > 0 and k45[4, 0] > 0 and k45[0, 0] == 0 and k45[4, 4] == 0
    np.testing.assert_allclose(k45, k45.T[::-1, ::-1], atol=1e-15)  # symmetric about the anti-diagonal


def test_motion_kernel_partial_end_pixels():
    k = motion_kernel(4, 0.0)  # ends at +-2 cover half of the outer pixels
    np.testing.assert_allclose(k[2], [0.125, 0.25, 0.25, 0.25, 0.125], rtol=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda: gaussian_kernel(0.0), "sigma: expected a finite number > 0"),
    (lambda: gaussian_kernel(1.0, size=4), "size: expected a positive odd integer"),
    (lambda: box_kernel(0), "size: expected a positive integer"),
    (lambda: motion_kernel(0.5), "length: expected a finite number >= 1"),
    (lambda: motion_kernel(3, angle=float("nan")), "angle: expected a finite number"),
    (lambda: motion_kernel(7, size=5), "size: expected an odd integer >= 7"),
])
def test_generator_arguments_are_validated(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("kernel, image_shape, boundary, error, match", [
    (np.ones((5, 3)), (4, 8), "circular", ValueError, r"kernel: size \(5, 3\) is larger than the image"),
    (np.full((3, 3), np.nan), (8, 8), "zero", ValueError, "kernel: contains NaN"),
    (np.ones(3), (8, 8), "zero", ValueError, r"kernel: expected shape \(kh, kw\) or \(K, kh, kw\), got \(3,\)"),
    (np.ones((1, 1, 3, 3)), (8, 8), "zero", ValueError, "kernel: expected shape"),
    (np.ones((0, 3)), (8, 8), "zero", ValueError, "kernel: expected a non-empty kernel"),
    (np.ones((3, 3), dtype=complex), (8, 8), "zero", TypeError, "kernel: expected a real kernel"),
    (np.ones((3, 3)), (8, 8), "reflect", ValueError, "boundary: expected 'circular' or 'zero', got 'reflect'"),
    (np.ones((3, 3)), (8, 8, 1), "zero", ValueError, "image_shape: expected 2 positive integers"),
    (np.ones((3, 3)), 8, "zero", ValueError, "image_shape: expected 2 positive integers"),
])
def test_bad_constructor_arguments(kernel, image_shape, boundary, error, match):
    with pytest.raises(error, match=match):
        Blur(kernel, image_shape, boundary)


def test_kernel_count_must_match_batch():
    A = Blur(np.ones((3, 3, 3)), (8, 8), "zero")
    with pytest.raises(ValueError, match="x: batch size 2 does not match the 3 kernels"):
        A(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="y: batch size 2 does not match the 3 kernels"):
        A.adjoint(torch.zeros(2, 1, 8, 8))


def test_wiener_rejects_bad_input():
    A = Blur(gaussian_kernel(1.0), (8, 8))
    y = torch.zeros(1, 1, 8, 8)
    with pytest.raises(TypeError, match="A: expected a Blur operator, got Identity"):
        wiener(Identity((1, 8, 8)), y, nsr=0.1)
    with pytest.raises(ValueError, match=r"y: expected shape \(B, 1, 8, 8\)"):
        wiener(A, torch.zeros(1, 1, 8, 9), nsr=0.1)
    with pytest.raises(ValueError, match="y: expected a real floating tensor"):
        wiener(A, torch.zeros(8, 8), nsr=0.1)
    with pytest.raises(ValueError, match="nsr: expected finite values >= 0"):
        wiener(A, y, nsr=-1e-3)
    with pytest.raises(ValueError, match="nsr: expected a number or 1 values"):
        wiener(A, y, nsr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="noise_std: expected a number >= 0"):
        wiener(A, y, noise_std=-1.0)


# -- Wiener -------------------------------------------------------------------------------
def test_wiener_inverts_noise_free_blur():
    A = Blur(gaussian_kernel(1.0), (16, 18))
    assert float(A.transfer_function(torch.zeros(1, dtype=torch.float64)).abs().min()) > 1e-4
    x = randn(A.in_shape, torch.float64, seed=3)
    assert rel_diff(wiener(A, A(x), nsr=0.0), x) < 1e-6
    assert rel_diff(wiener(A, A(x), nsr=1e-14), x) < 1e-6


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_wiener_matches_dense_solution(rng, boundary):
    """Per item: ``(M^T M + nsr I)^-1 M^T y`` with ``M`` the circular blur matrix of its kernel."""
    kernels = rng.standard_normal((2, 3, 4))
    A = Blur(kernels, (6, 8), boundary, channels=1)
    y, nsr = randn(A.out_shape, torch.float64, seed=4), torch.tensor([0.05, 0.3], dtype=torch.float64)
    got = wiener(A, y, nsr=nsr)
    for i in range(2):
        M = dense_matrix(Blur(kernels, (6, 8), "circular"), i)
        expected = np.linalg.solve(M.T @ M + float(nsr[i]) * np.eye(48), M.T @ y[i].flatten().numpy())
        np.testing.assert_allclose(got[i].flatten().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_wiener_estimates_nsr_by_the_documented_rule():
    A = Blur(gaussian_kernel(1.0), (32, 32))
    y = A(shepp_logan(32).double()) + 0.01 * randn((1, 32, 32), torch.float64, batch=1)
    sigma = float(estimate_noise_std(y))
    rule = sigma**2 / (float(y.square().mean()) - sigma**2)
    assert float(estimate_nsr(y)) == pytest.approx(rule, rel=1e-12)
    assert float(estimate_nsr(y, noise_std=0.02)) == pytest.approx(4e-4 / (float(y.square().mean()) - 4e-4))
    assert rel_diff(wiener(A, y), wiener(A, y, nsr=rule)) < 1e-12
    assert wiener(A, y.float(), nsr=0.01).dtype == torch.float32


# -- the deblurring result ----------------------------------------------------------------
@pytest.mark.slow
def test_tv_beats_best_wiener_on_shepp_logan():
    """256^2 Shepp-Logan, circular Gaussian blur sigma 2 px, noise 1% of the blurred rms.

    TV at default_tv_lambda (300 CP iterations from y) against Wiener at its oracle-best nsr.
    Measured: TV 38.1 dB, best Wiener 28.4 dB (docs/deblur_study.py).
    """
    x = shepp_logan(256)
    A = Blur(gaussian_kernel(2.0), (256, 256), "circular")
    blurred = A(x)
    std = 0.01 * float(blurred.square().mean().sqrt())
    y = blurred + std * torch.randn(blurred.shape, generator=torch.Generator().manual_seed(0))
    problem = Problem(L2Fidelity(A, y), default_tv_lambda(A, y) * TV(), constraint=NonNegativity())
    tv_psnr = float(psnr(ChambollePock(max_iter=300).run(problem, y.clone()).x, x, data_range=1.0))
    wiener_psnr = max(float(psnr(wiener(A, y, nsr=float(r)), x, data_range=1.0)) for r in np.logspace(-6, 0, 61))
    assert tv_psnr >= wiener_psnr + 1.0, f"TV {tv_psnr:.2f} dB vs best Wiener {wiener_psnr:.2f} dB"


def test_solve_shifted_normal_circular_solves_the_system():
    A = Blur(motion_kernel(5, angle=30.0), (12, 10))
    b = randn(A.in_shape, torch.float64, seed=3)
    tau = torch.tensor([0.5, 7.0], dtype=torch.float64)
    p = A.solve_shifted_normal(b, tau)
    assert A.has_shifted_normal_solve
    assert rel_diff(p + tau.reshape(-1, 1, 1, 1) * A.normal(p), b) < 1e-12


def test_zero_boundary_has_no_shifted_normal_solve():
    A = Blur(gaussian_kernel(1.0), (12, 10), boundary="zero")
    assert not A.has_shifted_normal_solve
    with pytest.raises(NotImplementedError, match="zero boundary"):
        A.solve_shifted_normal(torch.zeros(1, 1, 12, 10), 1.0)
