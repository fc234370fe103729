"""Analytic test phantoms rasterised on the project's pixel grid.

Coordinate convention (shared by the whole project): pixel ``(i, j)`` of an
``H x W`` image with pixel size ``p`` has world coordinates
``x = (j - (W - 1) / 2) * p`` and ``y = ((H - 1) / 2 - i) * p``, i.e. ``x``
points right and ``y`` points up, and row 0 is the top of the image.

The normalised phantoms (:func:`shepp_logan`, :func:`random_ellipses`) use
``p = 2 / size`` so that the image covers ``[-1, 1]^2`` edge to edge. All of
their ellipses lie inside the unit disc, so a parallel-beam detector as wide
as the image diagonal sees the whole object from every angle.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["MODIFIED_SHEPP_LOGAN", "disc", "random_ellipses", "shepp_logan"]

#: Modified (Toft) Shepp-Logan ellipses, as in MATLAB ``phantom`` and
#: scikit-image: ``(value, a, b, x0, y0, phi_degrees)`` with ``a`` the
#: semi-axis along x before rotation and ``phi`` counter-clockwise.
MODIFIED_SHEPP_LOGAN: tuple[tuple[float, float, float, float, float, float], ...] = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.8740, 0.0, -0.0184, 0.0),
    (-0.2, 0.1100, 0.3100, 0.22, 0.0, -18.0),
    (-0.2, 0.1600, 0.4100, -0.22, 0.0, 18.0),
    (0.1, 0.2100, 0.2500, 0.0, 0.35, 0.0),
    (0.1, 0.0460, 0.0460, 0.0, 0.1, 0.0),
    (0.1, 0.0460, 0.0460, 0.0, -0.1, 0.0),
    (0.1, 0.0460, 0.0230, -0.08, -0.605, 0.0),
    (0.1, 0.0230, 0.0230, 0.0, -0.606, 0.0),
    (0.1, 0.0230, 0.0460, 0.06, -0.605, 0.0),
)

_MIN_SIZE = 8


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------
def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as ``int`` or raise if it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name}: expected an integer >= {minimum}, got {type(value).__name__} {value!r}"
        )
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def _check_real(name: str, value: object, positive: bool = False) -> float:
    """Return ``value`` as ``float`` or raise if it is not a finite real."""
    what = "a finite real number > 0" if positive else "a finite real number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out) or (positive and out <= 0.0):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return out


def _check_dtype(dtype: object) -> torch.dtype:
    """Raise unless ``dtype`` is a floating-point torch dtype."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _check_n_ellipses(n_ellipses: object) -> tuple[int, int]:
    """Normalise ``n_ellipses`` to an inclusive ``(low, high)`` range."""
    if isinstance(n_ellipses, numbers.Integral) and not isinstance(n_ellipses, bool):
        n = _check_int("n_ellipses", n_ellipses, 0)
        return n, n
    if isinstance(n_ellipses, Sequence) and not isinstance(n_ellipses, str):
        if len(n_ellipses) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in n_ellipses
        ):
            low, high = int(n_ellipses[0]), int(n_ellipses[1])
            if 0 <= low <= high:
                return low, high
    raise ValueError(
        "n_ellipses: expected an integer >= 0 or a pair (low, high) of integers "
        f"with 0 <= low <= high, got {n_ellipses!r}"
    )


def _check_seed(seed: object) -> int | None:
    """Raise unless ``seed`` is ``None`` or a non-negative integer."""
    if seed is None:
        return None
    return _check_int("seed", seed, 0)


# --------------------------------------------------------------------------
# rasterisation
# --------------------------------------------------------------------------
def _offsets(supersample: int) -> list[float]:
    """Sub-pixel sample offsets in units of one pixel, centred on 0."""
    return [(k + 0.5) / supersample - 0.5 for k in range(supersample)]


def _rasterise_ellipses(
    ellipses: Sequence[Sequence[float]], size: int, pixel: float, supersample: int
) -> torch.Tensor:
    """Average over sub-pixel samples of the sum of ellipse indicator functions.

    Each ellipse is evaluated on its bounding box only, first at the pixel
    centres: ``sqrt(q)``, with ``q`` the ellipse's quadratic form, moves by at
    most ``1 / min(a, b)`` per unit distance, so a pixel whose centre is
    further than that bound times the half-diagonal from the boundary has all
    its samples on one side (plus a 1e-9 margin for rounding). Only the
    remaining pixels, along the boundary, are sampled ``supersample**2`` times.
    The result equals sampling every pixel up to rounding.

    Args:
        ellipses: Rows ``(value, a, b, x0, y0, phi_degrees)``.
        size: Image side length in pixels.
        pixel: Pixel size in world units.
        supersample: Samples per pixel along each axis.

    Returns:
        A float64 tensor of shape ``(size, size)``.
    """
    centred = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0) * pixel
    offsets = torch.tensor(_offsets(supersample), dtype=torch.float64) * pixel
    counts = torch.zeros(size, size, dtype=torch.float64)  # sum of value * samples inside
    full = float(supersample**2)
    for value, a, b, cx, cy, phi in ellipses:
        c, s = math.cos(math.radians(phi)), math.sin(math.radians(phi))
        cols = _pixel_span(cx, math.hypot(a * c, b * s), size, pixel, 1.0)
        rows = _pixel_span(cy, math.hypot(a * s, b * c), size, pixel, -1.0)
        if cols is None or rows is None:
            continue
        margin = pixel * math.sqrt(0.5) / min(a, b) + 1e-9
        u = centred[cols[0]:cols[1]] - cx
        radius = (((u * c + (-centred[rows[0]:rows[1], None] - cy) * s) / a) ** 2
                  + (((-centred[rows[0]:rows[1], None] - cy) * c - u * s) / b) ** 2).sqrt()
        box = counts[rows[0]:rows[1], cols[0]:cols[1]]
        box.add_((radius < 1.0 - margin).to(torch.float64), alpha=value * full)
        i, j = torch.nonzero((radius >= 1.0 - margin) & (radius <= 1.0 + margin), as_tuple=True)
        us = (centred[j + cols[0], None] + offsets - cx)[:, None, :]
        vs = (-centred[i + rows[0], None] - offsets - cy)[:, :, None]
        inside = ((us * c + vs * s) / a) ** 2 + ((vs * c - us * s) / b) ** 2 <= 1.0
        box.index_put_((i, j), value * inside.sum((1, 2)).to(torch.float64), accumulate=True)
    return counts / supersample**2


def _pixel_span(centre: float, half: float, size: int, pixel: float, sign: float) -> tuple[int, int] | None:
    """Half-open index range of the pixels whose samples can lie within ``half`` of ``centre``.

    ``sign`` is +1 for columns (x grows with the index) and -1 for rows (y falls with it); one
    pixel of margin on each side covers the sub-pixel offsets. None when the range is empty.
    """
    mid = (size - 1) / 2.0
    ends = sorted((mid + sign * (centre - half) / pixel, mid + sign * (centre + half) / pixel))
    low, high = max(0, math.floor(ends[0]) - 1), min(size, math.ceil(ends[1]) + 2)
    return (low, high) if low < high else None


# --------------------------------------------------------------------------
# public phantoms
# --------------------------------------------------------------------------
def shepp_logan(
    size: int = 256, dtype: torch.dtype = torch.float32, *, supersample: int = 4
) -> torch.Tensor:
    """Modified (Toft, high-contrast) Shepp-Logan phantom.

    The ellipses of :data:`MODIFIED_SHEPP_LOGAN` are rasterised analytically
    on a grid covering ``[-1, 1]^2`` (pixel size ``2 / size``), averaging
    ``supersample x supersample`` point samples per pixel for antialiasing.

    Args:
        size: Image side length in pixels (>= 8).
        dtype: Floating-point dtype of the result.
        supersample: Samples per pixel along each axis (1 = pixel centres).

    Returns:
        Tensor of shape ``(1, 1, size, size)`` with values in ``[0, 1]``.

    Example:
        >>> img = shepp_logan(64)
        >>> tuple(img.shape), float(img.min()) >= 0.0, float(img.max()) <= 1.0
        ((1, 1, 64, 64), True, True)
    """
    size = _check_int("size", size, _MIN_SIZE)
    dtype = _check_dtype(dtype)
    supersample = _check_int("supersample", supersample, 1)
    image = _rasterise_ellipses(MODIFIED_SHEPP_LOGAN, size, 2.0 / size, supersample)
    return image.clamp(0.0, 1.0).to(dtype)[None, None]


def _random_ellipse_params(rng: np.random.Generator, n_inner: int) -> list[tuple[float, ...]]:
    """Draw one body ellipse plus ``n_inner`` interior ellipses.

    Every ellipse satisfies ``|centre| + max(a, b) <= 0.95`` and therefore
    lies inside the unit disc.
    """
    body_a, body_b = rng.uniform(0.65, 0.92, size=2)
    body_phi = rng.uniform(0.0, 180.0)
    params: list[tuple[float, ...]] = [(1.0, body_a, body_b, 0.0, 0.0, body_phi)]
    c, s = math.cos(math.radians(body_phi)), math.sin(math.radians(body_phi))
    for _ in range(n_inner):
        radius, angle = 0.85 * math.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * math.pi)
        u, v = radius * body_a * math.cos(angle), radius * body_b * math.sin(angle)
        cx, cy = u * c - v * s, u * s + v * c
        a, b = rng.uniform(0.03, 0.3, size=2)
        shrink = min(1.0, (0.95 - math.hypot(cx, cy)) / max(a, b))
        value = rng.uniform(0.1, 0.6) * rng.choice((-1.0, 1.0))
        phi = rng.uniform(0.0, 180.0)
        params.append((value, a * shrink, b * shrink, cx, cy, phi))
    return params


def random_ellipses(
    size: int = 256,
    n_ellipses: int | tuple[int, int] = (5, 15),
    seed: int | None = None,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Seeded random ellipse phantoms.

    Each image is an outer body ellipse plus ``n_ellipses`` interior ellipses
    with random centres, semi-axes, rotations and (positive or negative)
    additive intensities. The sum is clipped at 0 and divided by its maximum,
    so every image spans exactly ``[0, 1]`` with a zero background. All
    ellipses lie inside the unit disc; images are rasterised like
    :func:`shepp_logan` (pixel size ``2 / size``, 4x4 supersampling).

    Args:
        size: Image side length in pixels (>= 8).
        n_ellipses: Number of interior ellipses, or an inclusive range
            ``(low, high)`` drawn independently for each image.
        seed: Seed for :func:`numpy.random.default_rng`; ``None`` for fresh
            entropy. The same seed gives the same batch.
        batch: Number of images (>= 1).
        dtype: Floating-point dtype of the result.

    Returns:
        Tensor of shape ``(batch, 1, size, size)`` with values in ``[0, 1]``.

    Example:
        >>> imgs = random_ellipses(32, n_ellipses=3, seed=0, batch=2)
        >>> tuple(imgs.shape), torch.equal(imgs, random_ellipses(32, 3, seed=0, batch=2))
        ((2, 1, 32, 32), True)
    """
    size = _check_int("size", size, _MIN_SIZE)
    low, high = _check_n_ellipses(n_ellipses)
    rng = np.random.default_rng(_check_seed(seed))
    batch = _check_int("batch", batch, 1)
    dtype = _check_dtype(dtype)
    images = []
    for _ in range(batch):
        params = _random_ellipse_params(rng, int(rng.integers(low, high + 1)))
        image = _rasterise_ellipses(params, size, 2.0 / size, 4).clamp_min(0.0)
        peak = float(image.max())
        images.append(image / peak if peak > 0.0 else image)
    return torch.stack(images)[:, None].to(dtype)


def _check_center(center: object) -> tuple[float, float]:
    """Return ``center`` as a pair of finite floats or raise."""
    if (
        isinstance(center, (str, bytes))
        or not isinstance(center, Sequence)
        or len(center) != 2
        or not all(isinstance(c, numbers.Real) and not isinstance(c, bool) for c in center)
        or not all(math.isfinite(float(c)) for c in center)
    ):
        raise ValueError(f"center: expected a pair (x, y) of finite real numbers, got {center!r}")
    return float(center[0]), float(center[1])


def disc(
    size: int,
    radius: float,
    value: float = 1.0,
    pixel_size: float = 1.0,
    center: tuple[float, float] = (0.0, 0.0),
    supersample: int = 8,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform antialiased disc.

    Each pixel holds ``value`` times the fraction of its area inside the disc,
    estimated with ``supersample x supersample`` point samples. Its parallel
    line integrals are ``2 * value * sqrt(radius**2 - s**2)`` at distance
    ``s`` from the centre.

    Args:
        size: Image side length in pixels (>= 8).
        radius: Disc radius in world units (same units as ``pixel_size``).
        value: Attenuation / intensity inside the disc.
        pixel_size: Pixel side length in world units.
        center: Disc centre ``(x, y)`` in world units (x right, y up).
        supersample: Samples per pixel along each axis (>= 1).
        dtype: Floating-point dtype of the result.

    Returns:
        Tensor of shape ``(1, 1, size, size)``.

    Example:
        >>> d = disc(64, radius=20.0, pixel_size=1.0)
        >>> abs(float(d.sum()) / (math.pi * 20.0**2) - 1.0) < 0.005
        True
    """
    size = _check_int("size", size, _MIN_SIZE)
    radius = _check_real("radius", radius, positive=True)
    value = _check_real("value", value)
    pixel_size = _check_real("pixel_size", pixel_size, positive=True)
    cx, cy = _check_center(center)
    supersample = _check_int("supersample", supersample, 1)
    dtype = _check_dtype(dtype)
    ellipse = [(value, radius, radius, cx, cy, 0.0)]
    return _rasterise_ellipses(ellipse, size, pixel_size, supersample).to(dtype)[None, None]
