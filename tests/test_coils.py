"""Tests for operators.coils: rss, calibration_region and ESPIRiT.

ESPIRiT is checked against known smooth coil maps on simulated k-space (the independent
cross-check), against the physics of fully sampled real data (coil images are parallel to the
sensitivity vector), and, when SigPy is installed, against ``sigpy.mri.app.EspiritCalib``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data.phantoms import shepp_logan
from operators.coils import calibration_region, espirit_maps, rss
from operators.fourier import fft2c, ifft2c
from operators.masks import poisson_disc_mask

N, COILS = 128, 8


# ----------------------------------------------------------------- simulated data
def _coil_maps(n: int = N, coils: int = COILS) -> torch.Tensor:
    """Gaussian coil profiles around the object with linear phase ramps, ``sum |S|^2 = 1``."""
    c = (torch.arange(n, dtype=torch.float64) - n // 2) / (n / 2)
    yy, xx = torch.meshgrid(-c, c, indexing="ij")
    maps = []
    for j in range(coils):
        a = 2 * math.pi * j / coils
        mag = torch.exp(-((xx - 1.3 * math.cos(a)) ** 2 + (yy - 1.3 * math.sin(a)) ** 2) / (2 * 0.9**2))
        phase = 0.9 * math.cos(a + 1) * xx + 0.9 * math.sin(2 * a) * yy + j
        maps.append(mag * torch.exp(1j * phase))
    S = torch.stack(maps)
    return (S / rss(S, dim=0)).to(torch.complex64)


def _object(n: int = N) -> torch.Tensor:
    c = (torch.arange(n) - n // 2) / (n / 2)
    yy, xx = torch.meshgrid(-c, c, indexing="ij")
    return shepp_logan(n)[0, 0] * torch.exp(1j * (0.8 * xx + 0.5 * yy**2))


@pytest.fixture(scope="module")
def sim() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(S_true (C, N, N), x (N, N), kspace (C, N, N))`` with ``kspace = fft2c(S x)``."""
    S, x = _coil_maps(), _object()
    return S, x, fft2c(S * x)


def _agreement(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``|<est, ref>| / (||est|| ||ref||)`` over the coil axis 0."""
    return (est.conj() * ref).sum(0).abs() / (rss(est, 0) * rss(ref, 0)).clamp_min(1e-20)


def _inside(x: torch.Tensor) -> torch.Tensor:
    return x.abs() > 0.05  # pixels where the object carries signal


def _random_mask(calib: tuple[int, int], density: float, seed: int, n: int = N) -> torch.Tensor:
    """Uniform random samples plus a fully sampled centred ``calib`` box."""
    mask = np.random.default_rng(seed).random((n, n)) < density
    top, left = n // 2 - calib[0] // 2, n // 2 - calib[1] // 2
    mask[top : top + calib[0], left : left + calib[1]] = True
    return torch.from_numpy(mask)


# ----------------------------------------------------------------- rss
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float32])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_rss_matches_numpy(rng: np.random.Generator, dtype: torch.dtype, dim: int) -> None:
    a = rng.standard_normal((2, 5, 6, 7)) + (1j * rng.standard_normal((2, 5, 6, 7)) if dtype.is_complex else 0)
    x = torch.from_numpy(a).to(dtype)
    expected = np.sqrt((np.abs(a) ** 2).sum(axis=dim))
    out = rss(x, dim=dim)
    assert not out.is_complex()
    tol = 1e-10 if dtype == torch.complex128 else 1e-5
    np.testing.assert_allclose(out.numpy(), expected, rtol=tol)
    kept = rss(x, dim=dim, keepdim=True)
    assert kept.shape == tuple(1 if i == dim % 4 else s for i, s in enumerate(x.shape))
    np.testing.assert_allclose(kept.squeeze(dim).numpy(), expected, rtol=tol)


# ----------------------------------------------------------------- calibration region
def test_calibration_region_of_random_masks(sim: tuple) -> None:
    _, _, k = sim
    for seed, calib in enumerate([(24, 24), (20, 16), (17, 31), (8, 9)]):
        assert calibration_region(k * _random_mask(calib, 0.3, seed)) == calib


def test_calibration_region_of_poisson_mask(sim: tuple) -> None:
    # at R = 10 the Poisson radius exceeds one pixel everywhere: nothing extends the block
    _, _, k = sim
    assert calibration_region(k * poisson_disc_mask((N, N), 10, (20, 16), seed=3)) == (20, 16)


def test_calibration_region_fully_sampled_and_batch(sim: tuple) -> None:
    _, _, k = sim
    assert calibration_region(k) == (N, N)
    a = k * _random_mask((24, 24), 0.3, 0)
    b = k * _random_mask((20, 30), 0.3, 1)
    assert calibration_region(torch.stack([a, b])) == (20, 24)  # sampled in every item
    # one coil zero at a point does not unsample it: another coil is nonzero there
    a[3, N // 2, N // 2] = 0
    assert calibration_region(a) == (24, 24)


def test_calibration_region_errors() -> None:
    k = torch.ones(2, 16, 16, dtype=torch.complex64)
    k[:, 8, 8] = 0
    with pytest.raises(ValueError, match=r"kspace: expected a fully sampled centre, but the DC point \(8, 8\)"):
        calibration_region(k)
    with pytest.raises(TypeError, match="kspace: expected complex k-space .* got torch.float32"):
        calibration_region(k.real)


# ----------------------------------------------------------------- ESPIRiT, simulated
@pytest.mark.parametrize("kernel_size", [6, 5])
def test_espirit_recovers_known_maps(sim: tuple, kernel_size: int) -> None:
    S, x, k = sim
    maps = espirit_maps(k, calib_size=(24, 24), kernel_size=kernel_size)
    assert maps.shape == (1, COILS, N, N) and maps.dtype == torch.complex64
    agreement = _agreement(maps[0], S)[_inside(x)]
    assert float(agreement.min()) >= 0.99
    assert float(agreement.mean()) >= 0.999


def test_espirit_from_undersampled_kspace_with_detected_calibration(sim: tuple) -> None:
    S, x, k = sim
    mask = _random_mask((20, 22), 0.25, seed=7)
    maps = espirit_maps(k * mask)  # calib_size detected: (20, 22)
    assert float(_agreement(maps[0], S)[_inside(x)].min()) >= 0.99
    torch.testing.assert_close(maps, espirit_maps(k, calib_size=(20, 22)))  # only the block is used


def test_espirit_sense_combination_recovers_object(sim: tuple) -> None:
    S, x, k = sim
    maps = espirit_maps(k, calib_size=(24, 24))[0]
    combined = (maps.conj() * ifft2c(k)).sum(0)  # = <S_true, S_est> x
    inside = _inside(x)
    error = (combined.abs() - x.abs())[inside].norm() / x[inside].norm()
    assert float(error) < 1e-2


def test_espirit_phase_convention_and_norm(sim: tuple) -> None:
    S, x, k = sim
    maps = espirit_maps(k, calib_size=(24, 24))[0]
    support = rss(maps, 0) > 0
    assert bool(support[_inside(x)].all())
    torch.testing.assert_close(rss(maps, 0)[support], torch.ones(int(support.sum())), rtol=1e-5, atol=1e-5)
    assert float(maps[0][support].imag.abs().max()) < 1e-5 and float(maps[0][support].real.min()) >= 0
    # with the same phase rule applied to the truth the maps match directly, not only up to phase
    truth = S * (S[0].conj() / S[0].abs())
    inside = _inside(x)
    error = (maps - truth)[:, inside].norm() / truth[:, inside].norm()
    assert float(error) < 0.02


def test_espirit_batch_equals_loop_and_dtype(sim: tuple) -> None:
    S, x, k = sim
    k2 = fft2c(S * _object().flip(-1))
    batch = espirit_maps(torch.stack([k, k2]).to(torch.complex128), calib_size=(24, 24))
    assert batch.dtype == torch.complex64 and batch.shape == (2, COILS, N, N)
    for item, kk in zip(batch, (k, k2)):
        torch.testing.assert_close(item, espirit_maps(kk, calib_size=(24, 24))[0], rtol=1e-4, atol=1e-4)


def test_espirit_errors(sim: tuple) -> None:
    _, _, k = sim
    complex_needed = r"kspace: expected complex k-space of shape \(coils, H, W\) .* got torch.float32"
    with pytest.raises(TypeError, match=complex_needed):
        espirit_maps(k.abs())
    with pytest.raises(TypeError, match="kspace: expected a torch.Tensor, got ndarray"):
        espirit_maps(k.numpy())
    with pytest.raises(ValueError, match=r"kspace: expected shape .* got 2 dims \(128, 128\)"):
        espirit_maps(k[0])
    too_small = r"calib_size: expected a calibration region of at least kernel_size = 6 per side, got \(4, 24\) \(given"
    with pytest.raises(ValueError, match=too_small):
        espirit_maps(k, calib_size=(4, 24))
    small = k * _random_mask((4, 4), 0.2, seed=0)
    with pytest.raises(ValueError, match=r"got \(4, 4\) \(detected\)"):
        espirit_maps(small)
    too_large = r"calib_size: expected at most the k-space size \(128, 128\), got \(200, 24\)"
    with pytest.raises(ValueError, match=too_large):
        espirit_maps(k, calib_size=(200, 24))
    hole = k.clone()
    hole[:, N // 2, N // 2] = 0
    with pytest.raises(ValueError, match="kspace: expected a fully sampled centre"):
        espirit_maps(hole)
    with pytest.raises(ValueError, match=r"threshold: expected a real number in \[0.0, 1.0\], got 2"):
        espirit_maps(k, threshold=2)
    with pytest.raises(ValueError, match=r"crop: expected a real number in \[0.0, 1.0\], got -1"):
        espirit_maps(k, crop=-1)
    with pytest.raises(ValueError, match=r"kernel_size: expected 2 \* kernel_size - 1 <= min\(H, W\) = 16"):
        espirit_maps(k[:, :16, :16], kernel_size=9)


# ----------------------------------------------------------------- real data
def _brain(real_data: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(real_data / "mri_brain8ch_sigpy" / "cartesian_ksp.npy"))


@pytest.mark.real_data
def test_espirit_real_brain(real_data: Path) -> None:
    k = _brain(real_data)
    assert calibration_region(k) == (24, 24)  # rows 103-126, cols 78-101 (README section 3)
    maps = espirit_maps(k)[0]
    assert maps.shape == (8, 230, 180) and maps.dtype == torch.complex64
    norm = rss(maps, 0)
    support = norm > 0
    torch.testing.assert_close(norm[support], torch.ones(int(support.sum())), rtol=1e-5, atol=1e-5)
    image = rss(ifft2c(k), 0)
    head = image > 0.3 * image.max()
    assert float(support[head].float().mean()) >= 0.99  # the maps cover the head ...
    assert float(support.float().mean()) < 0.85  # ... and are cropped in the background
    assert not bool(support[:3, :3].any() or support[-3:, -3:].any())


@pytest.mark.real_data
def test_espirit_real_phantom_coil_images_parallel_to_maps(real_data: Path) -> None:
    # fully sampled 2-coil GRE: coil images are S(x) m(x) + noise, so at bright pixels the
    # coil vector must be parallel to the estimated sensitivity vector
    lin_cha_col = np.load(real_data / "mri_twix_phantom" / "gre_kspace_lin_cha_col.npy")
    k = torch.from_numpy(np.ascontiguousarray(lin_cha_col.transpose(1, 0, 2)))
    assert calibration_region(k) == (160, 320)
    maps = espirit_maps(k)[0]  # calibration capped at 24 x 24
    images = ifft2c(k)
    image = rss(images, 0)
    bright = image > 0.5 * image.max()
    agreement = _agreement(maps, images)[bright]
    assert float(agreement.median()) >= 0.995
    assert float(agreement.quantile(0.05)) >= 0.98


@pytest.mark.real_data
def test_espirit_matches_sigpy_on_real_brain(real_data: Path) -> None:
    sigpy_mri = pytest.importorskip("sigpy.mri")
    k = _brain(real_data)
    ref = sigpy_mri.app.EspiritCalib(
        k.numpy(), calib_width=24, thresh=0.02, kernel_width=6, crop=0.95, show_pbar=False
    ).run()
    ref = torch.from_numpy(np.asarray(ref))
    maps = espirit_maps(k, calib_size=(24, 24), kernel_size=6, threshold=0.02, crop=0.95)[0]
    ours, theirs = rss(maps, 0) > 0, rss(ref, 0) > 0
    assert float((ours == theirs).float().mean()) >= 0.99
    both = ours & theirs
    assert float(_agreement(maps, ref)[both].min()) >= 0.999


@pytest.mark.real_data
def test_map_coverage_flags_a_calibration_region_too_small_for_the_real_coils(real_data: Path) -> None:
    """The 2-coil GRE phantom at 8x with equispaced lines: 7 central lines leave ESPIRiT holes inside the
    object (coverage 0.85 measured), 13 lines cover it; the fully sampled scan covers it."""
    from data.mri import remove_readout_oversampling
    from operators.coils import map_coverage
    from operators.masks import make_mask

    lin_cha_col = np.load(real_data / "mri_twix_phantom" / "gre_kspace_lin_cha_col.npy")
    k = torch.from_numpy(remove_readout_oversampling(np.ascontiguousarray(lin_cha_col.transpose(1, 0, 2))))[None]
    coverage = []
    for centre in (0.04375, 0.08):
        y = k * make_mask("equispaced", (160, 160), 8.0, centre, seed=0, axis=-2)
        rows = calibration_region(y)[0]
        coverage.append(float(map_coverage(y, espirit_maps(y, kernel_size=min(6, rows - 2)))[0]))
    assert coverage[0] < 0.9 and coverage[1] > 0.99
    assert float(map_coverage(k, espirit_maps(k))[0]) > 0.99
