"""reconstruct(): methods, parameters recorded, the default weight and the noise estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.phantoms import shepp_logan
from operators import FanBeam2D, ParallelBeam2D
from recon.metrics import psnr
from recon.reconstruct import default_tv_lambda, estimate_noise_std, reconstruct


@pytest.fixture
def setup():
    x = shepp_logan(64)
    A = ParallelBeam2D((64, 64), np.linspace(0, np.pi, 40, endpoint=False), 96)
    y0 = A(x)
    sigma = 0.01 * float(y0.pow(2).mean().sqrt())
    y = y0 + sigma * torch.randn(y0.shape, generator=torch.Generator().manual_seed(1))
    return A, x, y, sigma


@pytest.mark.parametrize("phantom", ["shepp-logan", "ellipses"])
def test_noise_estimate_is_close_to_the_truth(phantom):
    """Within 20% at 256^2 (measured 1.13 and 1.04); the object's edges bias it upwards on coarse
    sinograms (1.3x at 128^2, 1.8x at 64^2), which the default lam's constant absorbs."""
    from data.phantoms import random_ellipses

    x = shepp_logan(256) if phantom == "shepp-logan" else random_ellipses(256, seed=1)
    A = ParallelBeam2D((256, 256), np.linspace(0, np.pi, 60, endpoint=False), 384)
    y0 = A(x)
    sigma = 0.01 * float(y0.pow(2).mean().sqrt())
    y = y0 + sigma * torch.randn(y0.shape, generator=torch.Generator().manual_seed(1))
    assert 0.95 * sigma < float(estimate_noise_std(y)) < 1.2 * sigma
    assert float(estimate_noise_std(y0)) < 0.1 * sigma  # noise-free data: (almost) no noise found


def test_default_lambda_scales_with_units(setup):
    """Rescaling pixel size p scales A and y by p, and lam by p^2 (the objective by p^2)."""
    A, x, y, _ = setup
    A2 = ParallelBeam2D((64, 64), np.linspace(0, np.pi, 40, endpoint=False), 96, pixel_size=0.1, detector_spacing=0.1)
    assert default_tv_lambda(A2, 0.1 * y) == pytest.approx(0.01 * default_tv_lambda(A, y), rel=1e-4)
    with pytest.raises(ValueError, match="noise_std"):
        default_tv_lambda(A, A(x), noise_std=0.0)


@pytest.mark.parametrize("method", ["fbp", "sirt", "cgls", "tv"])
def test_every_method_improves_on_nothing_and_records_parameters(setup, method):
    A, x, y, _ = setup
    r = reconstruct(A, y, method, iterations=50)
    assert r.x.shape == x.shape and r.method == method and r.seconds >= 0
    assert float(psnr(r.x, x)) > 20
    if method == "tv":
        assert r.parameters["lam_rule"] == "cross-validation"  # TV's default on a CT operator
        assert r.parameters["lam"] == pytest.approx(r.parameters["cv_multiple"] * default_tv_lambda(A, y))
        rule = reconstruct(A, y, "tv", lam="rule", iterations=2).parameters
        assert rule["lam_rule"] == "rule" and rule["lam"] == pytest.approx(default_tv_lambda(A, y))
        assert reconstruct(A, y, "tv", lam=0.1, iterations=2).parameters["lam_rule"] == "given"


def test_zero_tv_weight_is_nonnegative_least_squares(setup):
    # lam = 0 is allowed (no regularisation): the fit to the data is closer than with any weight, not a crash
    A, x, y, _ = setup
    free, regularised = (reconstruct(A, y, "tv", lam=lam, iterations=50) for lam in (0.0, None))
    assert torch.isfinite(free.x).all() and float(free.x.min()) >= 0 and free.parameters["lam"] == 0.0
    assert float((A(free.x) - y).norm()) < float((A(regularised.x) - y).norm())


def test_tv_beats_fbp_on_fan_beam():
    x = shepp_logan(64)
    A = FanBeam2D((64, 64), np.linspace(0, 2 * np.pi, 40, endpoint=False), 128, 128.0, 64.0, detector_spacing=1.5)
    y0 = A(x)
    y = y0 + 0.01 * y0.pow(2).mean().sqrt() * torch.randn(y0.shape, generator=torch.Generator().manual_seed(2))
    assert float(psnr(reconstruct(A, y, "tv").x, x)) > float(psnr(reconstruct(A, y, "fbp").x, x)) + 5


def test_bad_method_and_iterations(setup):
    A, x, y, _ = setup
    with pytest.raises(ValueError, match="method: expected one of fbp, sirt, cgls, tikhonov, tv"):
        reconstruct(A, y, "art")
    with pytest.raises(ValueError, match="iterations"):
        reconstruct(A, y, "tv", iterations=0)


@pytest.mark.parametrize("method", ["svtv", "graphla-fbp", "graphla-tik", "graphla-tv"])
def test_adaptive_methods_beat_fbp_and_record_their_estimate(setup, method):
    A, x, y, sigma = setup
    r = reconstruct(A, y, method, iterations=100)
    f = reconstruct(A, y, "fbp")
    assert float(psnr(r.x, x)) > float(psnr(f.x, x)) + 3
    assert r.parameters["estimate"] == {"graphla-fbp": "fbp", "graphla-tik": "tikhonov"}.get(method, "tv")


def test_tikhonov_method_and_estimate(setup):
    """Tikhonov alone beats FBP on sparse views; as SV-TV's pre-estimate it is recorded and used."""
    A, x, y, _ = setup
    tik, f = reconstruct(A, y, "tikhonov"), reconstruct(A, y, "fbp")
    assert float(psnr(tik.x, x)) > float(psnr(f.x, x)) + 1
    assert tik.iterations == 20 and tik.parameters["max_iterations"] == 20
    r = reconstruct(A, y, "svtv", estimate="tikhonov", iterations=50)
    assert r.parameters["estimate"] == "tikhonov" and float(psnr(r.x, x)) > float(psnr(tik.x, x))
    assert r.parameters["lam_rule"] == "rule" and r.parameters["lam"] > 0  # the rule: cv is TV's default only


def test_callable_estimate_is_used_and_checked(setup):
    """Psi can be any callable y -> x_hat (here the true image: an oracle pre-estimate)."""
    A, x, y, _ = setup
    seen = []

    def oracle(yy):
        seen.append(yy.shape)
        return x

    r = reconstruct(A, y, "svtv", estimate=oracle, iterations=100)
    assert seen == [y.shape] and r.parameters["estimate"] == "oracle"
    plain = reconstruct(A, y, "svtv", estimate="fbp", iterations=100)
    assert float(psnr(r.x, x)) > float(psnr(plain.x, x))  # better weights, better image
    with pytest.raises(ValueError, match=r"estimate: the pre-estimate Psi\(y\) must be a tensor of shape \(1, 1, 64, 64\)"):
        reconstruct(A, y, "svtv", estimate=lambda yy: x[..., :32, :])
    with pytest.raises(ValueError, match="estimate: the pre-estimate"):
        reconstruct(A, y, "graphla-tv", estimate=lambda yy: x.numpy())
    with pytest.raises(ValueError, match="estimate: expected one of fbp, tikhonov, tv or a callable"):
        reconstruct(A, y, "svtv", estimate="unet")
    with pytest.raises(ValueError, match="estimate: only svtv and graphla"):
        reconstruct(A, y, "tv", estimate="fbp")


def test_default_lambda_of_graphla_needs_its_graph(setup):
    from recon.reconstruct import default_lambda

    A, x, y, _ = setup
    with pytest.raises(TypeError, match="prior: graphla-tv scales its weight by the graph's degree"):
        default_lambda("graphla-tv", A, y)
    with pytest.raises(ValueError, match="method: expected one of"):
        default_lambda("fbp", A, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["fbp", "tv", "svtv", "graphla-tv"])
def test_cuda_reconstruction_matches_cpu(method):
    """On CUDA, with ASTRA's inexact GPU adjoint, each method stays on the GPU and reaches the CPU quality."""
    x = shepp_logan(96)
    A = ParallelBeam2D((96, 96), np.linspace(0, np.pi, 40, endpoint=False), 140)
    y0 = A(x)
    y = y0 + 0.01 * y0.pow(2).mean().sqrt() * torch.randn(y0.shape, generator=torch.Generator().manual_seed(0))
    cpu, gpu = reconstruct(A, y, method), reconstruct(A, y.cuda(), method)
    assert gpu.x.is_cuda
    q_cpu, q_gpu = float(psnr(cpu.x, x, data_range=1.0)), float(psnr(gpu.x.cpu(), x, data_range=1.0))
    assert abs(q_gpu - q_cpu) < 0.5, f"{method}: PSNR cuda {q_gpu:.2f} dB vs cpu {q_cpu:.2f} dB"
