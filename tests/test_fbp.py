"""Tests for recon.fbp: FBP (parallel, flat fan beam) and FDK (cone beam) in physical units."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data.phantoms import disc
from operators.base import Identity
from operators.cone import ConeBeam3D
from operators.ct import FanBeam2D, ParallelBeam2D
from recon.fbp import FILTERS, angle_weights, fbp, ramp_filter

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
HTC = REAL / "htc2022" / "training"

N, PIXEL, RADIUS, MU = 128, 0.5, 20.0, 0.05  # 64 mm field of view, 40 mm disc of 0.05 / mm


def _coords(size: int, pixel: float) -> tuple[torch.Tensor, torch.Tensor]:
    """World (x, y) of the pixel centres: x right, y up, row 0 on top."""
    c = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) * pixel
    y, x = torch.meshgrid(-c, c, indexing="ij")
    return x, y


def _disc_errors(x_rec: torch.Tensor) -> tuple[float, float]:
    """Relative error of the mean and worst relative error on the inner 80% of the disc."""
    x, y = _coords(N, PIXEL)
    inner = x_rec[0, 0].double()[x**2 + y**2 < (0.8 * RADIUS) ** 2] / MU
    return float(inner.mean() - 1), float((inner - 1).abs().max())


def _assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> None:
    """torch.allclose with the largest difference in the message (cheaper to import than torch.testing)."""
    assert torch.allclose(a, b, rtol=rtol, atol=atol), float((a - b).abs().max())


def _parallel(angles, detectors: int = 184, spacing: float = 0.5, shape=(N, N), channels: int = 1) -> ParallelBeam2D:
    return ParallelBeam2D(shape, angles, detectors, PIXEL, spacing, channels)


def _fan(views: int = 720, shape=(N, N), channels: int = 1) -> FanBeam2D:
    # source 450 mm (10x the image half-diagonal) from the centre, detector 150 mm beyond, 0.6 mm cells (x1.33)
    return FanBeam2D(shape, np.linspace(0, 2 * np.pi, views, endpoint=False), 200, 450.0, 150.0, PIXEL, 0.6,
                     channels)


# --------------------------------------------------------------------------------- accuracy
def test_parallel_disc_attenuation() -> None:
    A = _parallel(np.linspace(0, np.pi, 360, endpoint=False))
    mean_err, max_err = _disc_errors(fbp(A, A(disc(N, RADIUS, MU, PIXEL))))
    assert abs(mean_err) < 0.005 and max_err < 0.02, (mean_err, max_err)  # measured 0.0000, 0.0039


def test_parallel_disc_nonuniform_angles() -> None:
    angles = np.random.default_rng(0).permutation(np.sort(np.random.default_rng(1).uniform(0, np.pi, 360)))
    A = _parallel(angles)
    mean_err, max_err = _disc_errors(fbp(A, A(disc(N, RADIUS, MU, PIXEL))))
    assert abs(mean_err) < 0.01 and max_err < 0.03, (mean_err, max_err)  # measured -0.0017, 0.0102


def test_fan_disc_attenuation() -> None:
    A = _fan()
    mean_err, max_err = _disc_errors(fbp(A, A(disc(N, RADIUS, MU, PIXEL))))
    assert abs(mean_err) < 0.005 and max_err < 0.02, (mean_err, max_err)  # measured 0.0001, 0.0064


@pytest.mark.parametrize("geometry", ["parallel", "fan"])
@pytest.mark.parametrize("start, arc", [(0, 90), (50, 60), (75, 30)])  # HTC2022's 01a, 04a, 07a arcs
def test_limited_arc_keeps_the_attenuation_at_the_centre(geometry: str, start: int, arc: int) -> None:
    """On an arc short of 180 deg the weights still sum to pi: the centre of a disc gets mu (it got arc/180 of it)."""
    angles = np.deg2rad(start + np.arange(0, arc, 0.5))
    A = _parallel(angles) if geometry == "parallel" else FanBeam2D((N, N), angles, 200, 450.0, 150.0, PIXEL, 0.6)
    x_rec = fbp(A, A(disc(N, RADIUS, MU, PIXEL)))[0, 0].double()
    x, y = _coords(N, PIXEL)
    centre = x_rec[x**2 + y**2 < (0.4 * RADIUS) ** 2] / MU
    assert abs(float(centre.mean()) - 1) < 0.05, float(centre.mean())  # measured within 1e-3


@pytest.mark.parametrize("extra_deg", [0.5, 60.0])
@pytest.mark.parametrize("centre, radius", [((0.0, 0.0), RADIUS), ((8.0, -5.0), 8.0)])
def test_fan_short_scan_with_parker_weights(extra_deg: float, centre, radius: float) -> None:
    """A divergent fan (half fan angle 36.7 deg) over 180 deg + fan angle (+ extra): Parker weights count each
    ray once. Measured max errors 0.020-0.025 (unweighted: 0.06-0.30, the short-scan shading)."""
    from recon.fbp import parker_weights

    D, O, spacing = 50.0, 30.0, 0.6
    delta = math.atan(99.5 * spacing * D / (D + O) / D)
    angles = np.arange(0, math.pi + 2 * delta + math.radians(extra_deg) + 1e-9, math.radians(0.5))
    A = FanBeam2D((N, N), angles, 200, D, O, PIXEL, spacing)
    shares, rays = parker_weights(A)
    assert rays.shape == (len(angles), 200) and rays.min() >= 0 and rays.max() <= 1
    assert rays[0].max() == pytest.approx(0, abs=1e-12) and shares.sum() == pytest.approx(angles[-1] + 0.5 * (
        angles[1] - angles[0]) * 2)
    x_rec = fbp(A, A(disc(N, radius, MU, PIXEL, center=centre)))[0, 0].double()
    x, y = _coords(N, PIXEL)
    inner = x_rec[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 < (0.8 * radius) ** 2] / MU
    assert abs(float(inner.mean()) - 1) < 0.005 and float((inner - 1).abs().max()) < 0.04


def test_parker_weights_only_for_open_fan_short_scans() -> None:
    from recon.fbp import parker_weights

    full = FanBeam2D((N, N), np.linspace(0, 2 * np.pi, 720, endpoint=False), 200, 450.0, 150.0, PIXEL, 0.6)
    arc = FanBeam2D((N, N), np.deg2rad(np.arange(0, 150, 0.5)), 200, 450.0, 150.0, PIXEL, 0.6)  # short of pi + 2 delta
    assert parker_weights(full) is None and parker_weights(arc) is None


def test_fan_divergent_off_centre_disc() -> None:
    """Source only 50 mm from the centre (fan half-angle ~28 deg): sensitive to the 1/U^2 and cosine weights."""
    A = FanBeam2D((N, N), np.linspace(0, 2 * np.pi, 720, endpoint=False), 200, 50.0, 30.0, PIXEL, 0.6)
    center, radius = (6.0, -5.0), 16.0
    x_rec = fbp(A, A(disc(N, radius, MU, PIXEL, center=center)))[0, 0].double()
    x, y = _coords(N, PIXEL)
    inner = x_rec[(x - center[0]) ** 2 + (y - center[1]) ** 2 < (0.8 * radius) ** 2] / MU - 1
    rms = float(inner.square().mean().sqrt())
    assert abs(float(inner.mean())) < 0.005 and rms < 0.015, (float(inner.mean()), rms)  # measured -0.0001, 0.0086


def test_parallel_backprojection_matches_astra_transpose() -> None:
    """Analytic calibration: A^T q = (pixel^2 / spacing) sum_v q_v(s(x)) for ASTRA's `linear` projector."""
    A = _parallel(np.linspace(0, np.pi, 360, endpoint=False))
    x = disc(N, RADIUS, MU, PIXEL) + disc(N, 5.0, 0.03, PIXEL, center=(-8.0, 10.0))
    y = A(x)
    n = A.detector_count
    H = ramp_filter(n, A.detector_spacing, dtype=torch.float32)
    L = 2 * (H.shape[0] - 1)
    q = torch.fft.irfft(torch.fft.rfft(y, n=L) * H, n=L)[..., :n]
    q = q * torch.as_tensor(angle_weights(A.angles.numpy()), dtype=q.dtype)[:, None]
    ref = A.adjoint(q) * (A.detector_spacing / A.pixel_size**2)
    out = fbp(A, y)
    assert float((out - ref).norm() / ref.norm()) < 0.02  # measured 0.0099
    assert abs(float((out * ref).sum() / (ref * ref).sum()) - 1) < 0.01  # measured 0.9995


def _cone_rays(A: ConeBeam3D) -> tuple[np.ndarray, np.ndarray]:
    """Sources ``(views, 1, 1, 3)`` and unit ray directions ``(views, rows, cols, 3)`` in mm, from ASTRA's
    own conversion of the `cone` geometry that ConeBeam3D builds (detector cell centres, rows along v)."""
    import astra

    p = A.pixel_size
    rows, cols = A.detector_shape
    geom = astra.create_proj_geom("cone", A.detector_spacing[1] / p, A.detector_spacing[0] / p, rows, cols,
                                  A.angles.numpy(), A.source_origin / p, A.origin_detector / p)
    vec = astra.functions.geom_2vec(geom)["Vectors"] * p  # source, detector centre, u (col), v (row), in mm
    src, det, u, v = (vec[:, None, None, k:k + 3] for k in (0, 3, 6, 9))
    c = (np.arange(cols) - (cols - 1) / 2)[None, None, :, None]
    r = (np.arange(rows) - (rows - 1) / 2)[None, :, None, None]
    d = det + c * u + r * v - src
    return src, d / np.linalg.norm(d, axis=-1, keepdims=True)


def _ball_projections(A: ConeBeam3D, center, radius: float, mu: float) -> torch.Tensor:
    """Exact line integrals 2 mu sqrt(R^2 - d^2) through a ball, d = distance from its centre to the ray."""
    src, d = _cone_rays(A)
    w = np.asarray(center) - src
    dist2 = ((w - (w * d).sum(-1, keepdims=True) * d) ** 2).sum(-1)
    proj = 2 * mu * np.sqrt(np.clip(radius**2 - dist2, 0, None))
    return torch.as_tensor(proj.transpose(1, 0, 2)[None, None], dtype=torch.float32)  # (1, 1, rows, views, cols)


def test_fdk_ball_attenuation_and_position_cpu() -> None:
    n, p, mu, radius, center = 48, 0.5, 0.04, 8.0, (1.5, -1.0, 1.0)  # ball centre (x, y, z) in mm
    A = ConeBeam3D((n, n, n), np.linspace(0, 2 * np.pi, 360, endpoint=False), (48, 64), 150.0, 75.0, p, (0.7, 0.6))
    x_rec = fbp(A, _ball_projections(A, center, radius, mu))
    assert x_rec.shape == (1, 1, n, n, n) and x_rec.device.type == "cpu"
    vol = x_rec[0, 0].double().numpy()
    ax = (np.arange(n) - (n - 1) / 2) * p
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")  # ASTRA 3D: (z, y, x), all increasing with the index
    r = np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2)
    central = vol[(r < 0.8 * radius) & (np.abs(z - center[2]) <= 2.0)] / mu
    assert abs(central.mean() - 1) < 0.03 and np.abs(central - 1).max() < 0.03  # measured 0.0001, 0.0052
    mass = vol.clip(0)
    centroid = [float((mass * g).sum() / mass.sum()) for g in (x, y, z)]
    assert np.allclose(centroid, center, atol=0.1), centroid


def _cylinder_projections(A: ConeBeam3D, center_xy, radius: float, mu: float) -> torch.Tensor:
    """Exact line integrals through an infinite cylinder along z: the 2D chord over the ray's xy length."""
    src, d = _cone_rays(A)
    d_xy = np.linalg.norm(d[..., :2], axis=-1)
    e = d[..., :2] / d_xy[..., None]
    w = np.asarray(center_xy) - src[..., :2]
    dist2 = ((w - (w * e).sum(-1, keepdims=True) * e) ** 2).sum(-1)
    proj = 2 * mu * np.sqrt(np.clip(radius**2 - dist2, 0, None)) / d_xy
    return torch.as_tensor(proj.transpose(1, 0, 2)[None, None], dtype=torch.float32)


def test_fdk_exact_for_z_invariant_object() -> None:
    """FDK (with the full 3D cosine weight) is exact for objects that do not vary along z (Feldkamp 1984)."""
    p, mu, radius, center = 0.5, 0.04, 8.0, (3.0, -2.0)
    A = ConeBeam3D((40, 48, 48), np.linspace(0, 2 * np.pi, 240, endpoint=False), (100, 80), 60.0, 40.0, p,
                   (0.7, 0.6))  # cone half-angle ~ 11 deg at the top slice
    vol = fbp(A, _cylinder_projections(A, center, radius, mu))[0, 0].double().numpy()
    x, y = np.meshgrid((np.arange(48) - 23.5) * p, (np.arange(48) - 23.5) * p)  # ASTRA 3D: y increases with the row
    inside = (x - center[0]) ** 2 + (y - center[1]) ** 2 < (0.8 * radius) ** 2
    err = vol[:, inside] / mu - 1  # every slice
    assert np.abs(err).max() < 0.01, np.abs(err).max()  # measured 0.0025


def test_fdk_small_off_axis_ball_position() -> None:
    """A small ball far from the axis and the mid-plane lands where ASTRA 3D puts it (rows scale with 1/U)."""
    n, p, mu, radius, center = 32, 0.5, 0.04, 2.0, (5.0, -4.0, 4.5)
    A = ConeBeam3D((n, n, n), np.linspace(0, 2 * np.pi, 180, endpoint=False), (64, 64), 40.0, 30.0, p, (0.7, 0.6))
    vol = fbp(A, _ball_projections(A, center, radius, mu))[0, 0].double().numpy()
    ax = (np.arange(n) - (n - 1) / 2) * p
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    r = np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2)
    core = vol[r < 0.5 * radius] / mu - 1
    assert np.abs(core).max() < 0.03, np.abs(core).max()  # measured 0.0135
    mass = vol.clip(0) * (r < radius + 1.5)
    centroid = [float((mass * g).sum() / mass.sum()) for g in (x, y, z)]
    assert np.allclose(centroid, center, atol=0.1), centroid  # measured (4.996, -4.000, 4.509)


def test_fdk_single_row_equals_fan_beam_flipped() -> None:
    """One detector row, one slice: FDK is the fan-beam FBP, with ASTRA 3D's y axis (rows increase with y)."""
    angles = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    fan = FanBeam2D((40, 40), angles, 80, 200.0, 60.0, PIXEL, 0.4)
    cone = ConeBeam3D((1, 40, 40), angles, (1, 80), 200.0, 60.0, PIXEL, 0.4)
    y = torch.rand(2, 1, 180, 80, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out_fan, out_cone = fbp(fan, y), fbp(cone, y[:, :, None])
    _assert_close(out_cone[:, :, 0], out_fan.flip(-2), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("geometry", ["parallel", "fan"])
def test_orientation_non_square(geometry: str) -> None:
    shape = (48, 64)
    x = torch.zeros(1, 1, *shape)
    x[..., 6:10, 8:12] = 0.05  # small square near the top-left corner
    if geometry == "parallel":
        A = _parallel(np.linspace(0, np.pi, 180, endpoint=False), detectors=170, shape=shape)
    else:
        A = _fan(views=360, shape=shape)
    x_rec = fbp(A, A(x))[0, 0]
    row, col = divmod(int(x_rec.argmax()), shape[1])
    assert 6 <= row < 10 and 8 <= col < 12, (row, col)


# ----------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("geometry", ["parallel", "fan"])
def test_batch_equals_loop(geometry: str) -> None:
    shape = (32, 40)
    if geometry == "parallel":
        A = _parallel(np.linspace(0, np.pi, 60, endpoint=False), detectors=80, shape=shape, channels=2)
    else:
        A = _fan(views=90, shape=shape, channels=2)
    y = A(torch.rand(3, 2, *shape, generator=torch.Generator().manual_seed(0)))
    out = fbp(A, y)
    loop = torch.cat([fbp(A, y[b:b + 1]) for b in range(3)])
    assert out.shape == (3, 2, *shape) and out.dtype == y.dtype
    _assert_close(out, loop, rtol=1e-5, atol=1e-6 * float(out.abs().max()))
    assert not torch.allclose(out[0], out[1])  # the items really differ


def test_float64_kept() -> None:
    A = _parallel(np.linspace(0, np.pi, 30, endpoint=False), detectors=40, shape=(16, 16))
    y = torch.rand(1, 1, 30, 40, dtype=torch.float64)
    assert fbp(A, y).dtype == torch.float64


# ------------------------------------------------------------------------- filters and weights
@pytest.mark.parametrize("name", FILTERS)
def test_every_filter_keeps_the_attenuation(name: str) -> None:
    A = _parallel(np.linspace(0, np.pi, 180, endpoint=False))
    mean_err, _ = _disc_errors(fbp(A, A(disc(N, RADIUS, MU, PIXEL)), filter=name.upper()))
    assert abs(mean_err) < 0.02, mean_err


def _high_frequency_energy(img: torch.Tensor) -> float:
    spec = torch.fft.fftshift(torch.fft.fft2(img[0, 0].double())).abs() ** 2
    f = torch.fft.fftshift(torch.fft.fftfreq(img.shape[-1]))
    fy, fx = torch.meshgrid(f, f, indexing="ij")
    return float(spec[fx**2 + fy**2 > 0.25**2].sum())  # above half the Nyquist frequency


def test_cutoff_and_windows_smooth() -> None:
    A = _parallel(np.linspace(0, np.pi, 180, endpoint=False))
    y = A(disc(N, RADIUS, MU, PIXEL))
    e = {(f, c): _high_frequency_energy(fbp(A, y, filter=f, cutoff=c)) for f in ("ram-lak", "hann") for c in (1.0, 0.5)}
    assert e[("ram-lak", 0.5)] < 0.5 * e[("ram-lak", 1.0)]
    assert e[("hann", 1.0)] < 0.5 * e[("ram-lak", 1.0)]
    assert e[("hann", 0.5)] < e[("hann", 1.0)]


def test_ramp_filter_is_the_ramp_below_nyquist() -> None:
    d = 0.4
    H = ramp_filter(100, d)
    f = torch.fft.rfftfreq(256, d=d, dtype=torch.float64)  # cycles / mm
    band = (f > 0.05 / d) & (f < 0.45 / d)
    _assert_close(H[band], f[band], rtol=0.02, atol=0.0)
    assert 0 < float(H[0]) < 0.01 / d  # no DC hole, no large DC bias
    assert float(ramp_filter(100, d, cutoff=0.5)[f > 0.251 / d].abs().max()) == 0.0


def test_padding_avoids_wraparound() -> None:
    A = _parallel(np.linspace(0, np.pi, 180, endpoint=False), detectors=92)  # detector barely wider than the disc
    y = A(disc(N, RADIUS, MU, PIXEL))
    padded, _ = _disc_errors(fbp(A, y))
    circular, _ = _disc_errors(fbp(A, y, padding=False))
    assert abs(padded) < 0.005 < abs(circular), (padded, circular)  # measured 0.0000, -0.018


def test_angle_weights() -> None:
    half = angle_weights(np.linspace(0, np.pi, 180, endpoint=False))
    np.testing.assert_allclose(half, np.pi / 180)
    full = angle_weights(np.linspace(0, 2 * np.pi, 240, endpoint=False))  # fan full scan: factor 1/2
    np.testing.assert_allclose(full, np.pi / 240)
    dup = angle_weights(np.deg2rad(np.arange(0, 360.5, 0.5)))  # 0 and 360 deg: one view, shared
    np.testing.assert_allclose(dup[1:-1], np.pi / 720)
    np.testing.assert_allclose(dup[[0, -1]], np.pi / 1440)
    limited = angle_weights(np.deg2rad(np.arange(0, 90.5, 0.5)))  # limited angle: scaled to pi as well
    np.testing.assert_allclose(limited[1:-1], np.pi / 181)
    a = np.array([0.3, 0.0, 0.1, 0.7])  # any order: weights follow their views (coverage 0.95 rad)
    np.testing.assert_allclose(angle_weights(a), np.array([0.3, 0.1, 0.15, 0.4]) * np.pi / 0.95)


# ---------------------------------------------------------------------------- bad arguments
def test_bad_arguments_name_the_argument() -> None:
    A = _parallel(np.linspace(0, np.pi, 10, endpoint=False), detectors=20, shape=(8, 8))
    y = torch.zeros(1, 1, 10, 20)
    with pytest.raises(ValueError, match="filter.*ram-lak.*shepp-logan.*cosine.*hann"):
        fbp(A, y, filter="butterworth")
    for cutoff in (0.0, 1.5, -0.2, float("nan"), True):
        with pytest.raises(ValueError, match="cutoff"):
            fbp(A, y, cutoff=cutoff)
    with pytest.raises(ValueError, match="y"):
        fbp(A, torch.zeros(1, 1, 20, 10))
    with pytest.raises(ValueError, match="y"):
        fbp(A, torch.zeros(10, 20))
    with pytest.raises(TypeError, match="y"):
        fbp(A, np.zeros((1, 1, 10, 20)))
    with pytest.raises(TypeError, match="A"):
        fbp(Identity((1, 10, 20)), y)


# ---------------------------------------------------------------------------------- real data
def _load_htc(name: str):
    scipy_io = pytest.importorskip("scipy.io")
    return scipy_io.loadmat(HTC / name, squeeze_me=True, struct_as_record=False)


@pytest.mark.real_data
@pytest.mark.skipif(not HTC.is_dir(), reason=f"real data folder {HTC} is absent")
def test_htc2022_matches_reference_fbp() -> None:
    """Measured fan-beam data (HTC2022 phantom `ta`) against the organisers' FBP, upright."""
    ct = _load_htc("htc2022_ta_full.mat")["CtDataFull"]
    par = ct.parameters
    angles = np.deg2rad(np.atleast_1d(par.angles).astype(float))  # 0:0.5:360, both ends (angle weights share them)
    pixel = float(par.effectivePixelSizePost)
    A = FanBeam2D((512, 512), angles, int(par.numDetectorsPost), float(par.distanceSourceOrigin),
                  float(par.distanceSourceDetector) - float(par.distanceSourceOrigin), pixel, float(par.pixelSizePost))
    ours = fbp(A, torch.as_tensor(ct.sinogram, dtype=torch.float32)[None, None])[0, 0].double().numpy()
    ref = _load_htc("htc2022_ta_full_recon_fbp.mat")["reconFullFbp"] / pixel  # attenuation x pixel -> 1/mm
    corr = np.corrcoef(ours.ravel(), ref.ravel())[0, 1]
    scale = float((ours * ref).sum() / (ref * ref).sum())  # ours ~ scale * ref
    assert corr > 0.98 and abs(scale - 1) < 0.05, (corr, scale)  # measured 0.99998, 0.99997
    others = [ours[::-1], ours[:, ::-1], ours[::-1, ::-1], ours.T, ours.T[::-1], ours.T[:, ::-1], ours.T[::-1, ::-1]]
    assert all(np.corrcoef(o.ravel(), ref.ravel())[0, 1] < corr - 0.1 for o in others)


def test_non_finite_sinogram_is_rejected():
    A = ParallelBeam2D((16, 16), np.linspace(0, np.pi, 8, endpoint=False), 24)
    y = torch.zeros(1, 1, 8, 24)
    y[0, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="y: contains NaN or Inf"):
        fbp(A, y)
