"""Tests for data.phantoms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

from data.phantoms import disc, random_ellipses, shepp_logan


# --------------------------------------------------------------------- shapes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shepp_logan_shape_dtype_range(dtype: torch.dtype) -> None:
    img = shepp_logan(64, dtype=dtype)
    assert img.shape == (1, 1, 64, 64)
    assert img.dtype == dtype
    assert float(img.min()) == 0.0
    assert float(img.max()) == pytest.approx(1.0)
    assert float(img.max()) <= 1.0


@pytest.mark.parametrize("size", [64, 128, 256])
def test_shepp_logan_matches_skimage(size: int) -> None:
    ref = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    img = shepp_logan(size, dtype=torch.float64)[0, 0].numpy()
    corr = np.corrcoef(img.ravel(), ref.ravel())[0, 1]
    assert corr > 0.95
    # Upside-down or mirrored versions must correlate clearly worse.
    assert np.corrcoef(img[::-1].ravel(), ref.ravel())[0, 1] < corr - 0.1


def test_shepp_logan_pixel_centres_match_skimage_exactly() -> None:
    img = shepp_logan(400, dtype=torch.float64, supersample=1)[0, 0].numpy()
    ref = shepp_logan_phantom()
    assert np.mean(np.abs(img - ref) < 0.01) > 0.99


def test_shepp_logan_orientation() -> None:
    img = shepp_logan(128)[0, 0]
    # Body ellipse: semi-axis 0.92 along y (rows), 0.69 along x (cols).
    rows = torch.nonzero(img.amax(dim=1) > 0.5).flatten()
    cols = torch.nonzero(img.amax(dim=0) > 0.5).flatten()
    assert int(rows[-1] - rows[0]) + 1 == pytest.approx(0.92 * 128, abs=2)
    assert int(cols[-1] - cols[0]) + 1 == pytest.approx(0.69 * 128, abs=2)
    # Ellipse at y = +0.35 (value 0.3 inside) is in the upper half (row ~41).
    assert float(img[41, 64]) == pytest.approx(0.3, abs=1e-6)
    assert float(img[128 - 1 - 41, 64]) == pytest.approx(0.2, abs=1e-6)


def test_random_ellipses_shape_dtype_range() -> None:
    imgs = random_ellipses(48, seed=0, batch=3, dtype=torch.float64)
    assert imgs.shape == (3, 1, 48, 48)
    assert imgs.dtype == torch.float64
    for img in imgs:
        assert float(img.min()) == 0.0
        assert float(img.max()) == pytest.approx(1.0)


def test_random_ellipses_seeding() -> None:
    a = random_ellipses(32, seed=7, batch=2)
    b = random_ellipses(32, seed=7, batch=2)
    c = random_ellipses(32, seed=8, batch=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])


def test_random_ellipses_inside_unit_disc() -> None:
    size = 64
    imgs = random_ellipses(size, n_ellipses=(10, 20), seed=3, batch=8)
    coords = (torch.arange(size) - (size - 1) / 2) * (2.0 / size)
    yy, xx = torch.meshgrid(-coords, coords, indexing="ij")
    outside = (xx**2 + yy**2).sqrt() > 1.0 + 2.0 / size
    assert float(imgs[..., outside].abs().max()) == 0.0
    assert float(imgs[..., ~outside].max()) == pytest.approx(1.0)


def test_random_ellipses_fixed_count_zero_is_body_only() -> None:
    img = random_ellipses(64, n_ellipses=0, seed=1)[0, 0]
    # Only the body ellipse: values are 0, 1 and antialiased edge pixels.
    interior = img[(img > 0) & (img < 1)]
    assert interior.numel() < 0.15 * img.numel()
    assert float((img == 1).float().mean()) > 0.3


def _sampled_everywhere(ellipses, size: int, supersample: int) -> np.ndarray:
    """Reference rasteriser: every ellipse tested at every sub-pixel sample of the image."""
    pixel = 2.0 / size
    offsets = ((np.arange(supersample) + 0.5) / supersample - 0.5) * pixel
    centred = (np.arange(size) - (size - 1) / 2.0) * pixel
    x = (centred[:, None] + offsets).reshape(1, -1)
    y = (-centred[:, None] - offsets).reshape(-1, 1)
    image = np.zeros((size * supersample, size * supersample))
    for value, a, b, cx, cy, phi in ellipses:
        c, s = math.cos(math.radians(phi)), math.sin(math.radians(phi))
        u, v = x - cx, y - cy
        image += value * (((u * c + v * s) / a) ** 2 + ((v * c - u * s) / b) ** 2 <= 1.0)
    return image.reshape(size, supersample, size, supersample).mean((1, 3))


@pytest.mark.parametrize(("size", "supersample"), [(16, 1), (33, 3), (64, 4), (129, 2)])
def test_rasteriser_equals_sampling_every_pixel(size: int, supersample: int) -> None:
    # The rasteriser samples only boundary pixels of each ellipse's bounding box; the result must
    # be the same as sampling all of them, including for thin, tiny, rotated and off-image ellipses.
    from data.phantoms import MODIFIED_SHEPP_LOGAN, _random_ellipse_params, _rasterise_ellipses

    rng = np.random.default_rng(size)
    awkward = [(0.5, 0.001, 0.3, 0.2, 0.1, 33.0), (0.3, 0.01, 0.01, -0.3, 0.4, 0.0),
               (0.3, 0.2, 0.1, 1.5, 0.0, 10.0), (0.2, 0.5, 0.5, -1.2, -1.1, 0.0), (0.7, 3.0, 0.05, 0.0, 0.0, 45.0)]
    for ellipses in (MODIFIED_SHEPP_LOGAN, list(_random_ellipse_params(rng, 15)) + awkward):
        got = _rasterise_ellipses(ellipses, size, 2.0 / size, supersample).numpy()
        np.testing.assert_allclose(got, _sampled_everywhere(ellipses, size, supersample), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------- disc
@pytest.mark.parametrize(
    ("radius", "pixel_size", "center"),
    [(20.0, 1.0, (0.0, 0.0)), (5.3, 0.25, (1.1, -0.7)), (0.2, 0.01, (0.05, 0.1))],
)
def test_disc_area(radius: float, pixel_size: float, center: tuple[float, float]) -> None:
    img = disc(64, radius, value=2.5, pixel_size=pixel_size, center=center)
    assert img.shape == (1, 1, 64, 64)
    area_px = float(img.sum()) / 2.5
    expected = math.pi * radius**2 / pixel_size**2
    assert area_px == pytest.approx(expected, rel=0.005)
    assert float(img.max()) == pytest.approx(2.5)


def test_disc_center_convention() -> None:
    # Centre at x = +10, y = +10 world units: right and up, i.e. upper right.
    img = disc(64, 4.0, center=(10.0, 10.0), dtype=torch.float64)[0, 0]
    idx = torch.arange(64, dtype=torch.float64)
    row_mean = float((img.sum(dim=1) * idx).sum() / img.sum())
    col_mean = float((img.sum(dim=0) * idx).sum() / img.sum())
    assert row_mean == pytest.approx(31.5 - 10.0, abs=1e-3)
    assert col_mean == pytest.approx(31.5 + 10.0, abs=1e-3)


def test_disc_antialiased_edges() -> None:
    img = disc(32, 7.3, supersample=8)
    frac = img[(img > 0) & (img < 1)]
    assert frac.numel() > 0
    assert torch.equal(disc(32, 7.3, supersample=1).unique(), torch.tensor([0.0, 1.0]))


# ------------------------------------------------------------------ bad args
@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: shepp_logan(3), ValueError, "size: expected an integer >= 8, got 3"),
        (lambda: shepp_logan(64.0), TypeError, "size"),
        (lambda: shepp_logan(64, dtype=torch.int64), TypeError, "dtype"),
        (lambda: shepp_logan(64, supersample=0), ValueError, "supersample"),
        (lambda: random_ellipses(4), ValueError, "size"),
        (lambda: random_ellipses(32, n_ellipses=(5, 2)), ValueError, "n_ellipses"),
        (lambda: random_ellipses(32, n_ellipses=-1), ValueError, "n_ellipses"),
        (lambda: random_ellipses(32, seed=-3), ValueError, "seed"),
        (lambda: random_ellipses(32, seed=1.5), TypeError, "seed"),
        (lambda: random_ellipses(32, batch=0), ValueError, "batch"),
        (lambda: disc(32, -1.0), ValueError, "radius"),
        (lambda: disc(32, 1.0, pixel_size=0.0), ValueError, "pixel_size"),
        (lambda: disc(32, 1.0, center=(0.0,)), ValueError, "center"),
        (lambda: disc(32, 1.0, value=float("nan")), ValueError, "value"),
        (lambda: disc(32, 1.0, supersample=True), TypeError, "supersample"),
    ],
)
def test_bad_arguments(call, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()
