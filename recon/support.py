"""The support of a disc-shaped object, read off its sinogram: for reconstructions from short arcs.

Every view of a convex object has a shadow: the detector cells whose line integral is above a small
share of the view's peak. The two rays at the shadow's ends are tangent to the object, so for a disc
of centre ``c`` and radius ``R`` each such ray, with unit normal ``n`` pointing into the disc and
offset ``o = n . p`` (``p`` any point of the ray), satisfies ``n . c - o = R``: linear in
``(c_x, c_y, R)``, solved by least squares over all views (``fit_disc``). Arcs short of 180 deg
still see both sides of the disc in each view, so the fit needs no full scan (its accuracy on the
HTC2022 limited files is in ``docs/htc_limited.md``).

``disc_bounds`` turns the disc into per-pixel bounds for ``priors.PixelBox``: 0 outside the disc
(one pixel of margin), and inside it ``BOUND_MARGIN`` times the 99th percentile of line integral /
chord length over the rays through the disc's inner half (holes and noise only lower the ratio).
The margin leaves room for what the ratio of long chords does not see: on measured data the rim
reconstructs brighter than the middle (beam hardening); how it was set is in ``docs/htc_limited.md``.
The geometry follows ``operators.ct`` (x right, y up; fan-beam source at ``(D sin b, -D cos b)``,
detector coordinate ``u`` along ``(cos b, sin b)`` at the isocentre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from operators.ct import FanBeam2D, ParallelBeam2D
from recon.fbp import isocentre_detector

__all__ = ["Disc", "fit_disc", "chord_lengths", "disc_bounds"]

#: share of a view's peak above which a detector cell is in the object's shadow
SHADOW_THRESHOLD = 0.05
#: the attenuation bound over the largest line integral / chord ratio (module docstring)
BOUND_MARGIN = 1.15


@dataclass(frozen=True)
class Disc:
    """A disc in world coordinates (mm): centre ``(x, y)``, ``radius``."""

    x: float
    y: float
    radius: float


def _rays(A: ParallelBeam2D | FanBeam2D, angle: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points on and unit directions of the rays through isocentre-plane detector coordinates ``u``."""
    e = np.array([math.cos(angle), math.sin(angle)])
    on = u[:, None] * e[None, :]
    if isinstance(A, FanBeam2D):
        source = np.array([A.source_origin * math.sin(angle), -A.source_origin * math.cos(angle)])
        direction = on - source
        return on, direction / np.linalg.norm(direction, axis=1, keepdims=True)
    return on, np.broadcast_to(np.array([-math.sin(angle), math.cos(angle)]), on.shape)


def _edge(p: np.ndarray, u: np.ndarray, k: int, step: int, level: float) -> float:
    """Where ``p`` crosses ``level`` between cell ``k`` (above it) and its neighbour ``k + step``."""
    j = k + step
    if not 0 <= j < p.size or p[k] == p[j]:
        return float(u[k])
    return float(u[j] + (level - p[j]) / (p[k] - p[j]) * (u[k] - u[j]))


def fit_disc(A: ParallelBeam2D | FanBeam2D, y: torch.Tensor, threshold: float = SHADOW_THRESHOLD) -> Disc:
    """The disc whose shadow edges best match the sinogram's (least squares over the tangent rays).

    Args:
        A: a 2D parallel- or fan-beam operator.
        y: its sinogram ``(1, 1, views, detectors)`` (one item).
        threshold: share of each view's peak that marks the shadow.

    Returns:
        The fitted ``Disc`` (mm).

    Example:
        >>> import numpy as np
        >>> from operators.ct import FanBeam2D
        >>> from data.phantoms import disc
        >>> A = FanBeam2D((96, 96), np.deg2rad(np.arange(20, 80, 1.0)), 160, 300.0, 100.0, 0.5, 0.5)
        >>> d = fit_disc(A, A(disc(96, 15.0, 0.02, 0.5, center=(3.0, -2.0))))
        >>> [round(v) for v in (d.x, d.y, d.radius)]   # within a pixel (0.5 mm)
        [3, -2, 15]
    """
    if not isinstance(A, (ParallelBeam2D, FanBeam2D)):
        raise TypeError(f"A: expected a ParallelBeam2D or FanBeam2D, got {type(A).__name__}")
    if y.shape[0] != 1:
        raise ValueError(f"y: expected one sinogram (1, 1, views, detectors), got shape {tuple(y.shape)}")
    u = isocentre_detector(A)
    sino = y.detach().double().cpu().numpy().reshape(-1, u.size)
    rows, offsets = [], []
    for angle, p in zip(A.angles.detach().cpu().numpy(), sino):
        level = threshold * p.max()
        inside = np.nonzero(p > level)[0]
        if p.max() <= 0 or inside.size < 2:
            continue
        centre_u = float((np.clip(p, 0, None) * u).sum() / np.clip(p, 0, None).sum())
        edges = np.array([_edge(p, u, inside[0], -1, level), _edge(p, u, inside[-1], 1, level)])
        on, direction = _rays(A, float(angle), edges)
        centre_on, centre_dir = _rays(A, float(angle), np.array([centre_u]))
        for point, d in zip(on, direction):
            normal = np.array([-d[1], d[0]])
            offset = float(normal @ point)
            if normal @ centre_on[0] - offset < 0:  # point the normal into the disc
                normal, offset = -normal, -offset
            rows.append([normal[0], normal[1], -1.0])
            offsets.append(offset)
    if len(rows) < 3:
        raise ValueError("y: fewer than two views with an object's shadow; no disc to fit")
    (x, yc, radius), *_ = np.linalg.lstsq(np.asarray(rows), np.asarray(offsets), rcond=None)
    if not radius > 0:
        raise ValueError(f"y: the shadow edges fit no disc (radius {radius:.3g})")
    return Disc(float(x), float(yc), float(radius))


def chord_lengths(A: ParallelBeam2D | FanBeam2D, disc: Disc) -> np.ndarray:
    """The length (mm) of every ray's chord through ``disc``, ``(views, detectors)``: 0 where the ray misses it."""
    u = isocentre_detector(A)
    chords = []
    for angle in A.angles.detach().cpu().numpy():
        on, direction = _rays(A, float(angle), u)
        to_centre = np.array([disc.x, disc.y]) - on
        dist = np.abs(to_centre[:, 0] * direction[:, 1] - to_centre[:, 1] * direction[:, 0])
        chords.append(2 * np.sqrt(np.clip(disc.radius**2 - dist**2, 0, None)))
    return np.stack(chords)


def disc_bounds(A: ParallelBeam2D | FanBeam2D, y: torch.Tensor, disc: Disc | None = None,
                margin: float = 1.0) -> torch.Tensor:
    """Per-pixel upper bounds ``(1, 1, H, W)``: 0 outside ``disc`` (grown by ``margin`` pixels), and the
    largest attenuation the rays through it allow inside (module docstring); for ``priors.PixelBox``."""
    disc = fit_disc(A, y) if disc is None else disc
    chord = chord_lengths(A, disc)
    sino = y.detach().double().cpu().numpy().reshape(chord.shape)
    through = chord > disc.radius  # the inner half: long chords, small edge errors
    ratios = sino[through] / chord[through]
    top = BOUND_MARGIN * float(np.percentile(ratios, 99)) if ratios.size else math.inf
    H, W = A.image_shape
    xs = (np.arange(W) - 0.5 * (W - 1)) * A.pixel_size
    ys = -(np.arange(H) - 0.5 * (H - 1)) * A.pixel_size
    inside = (xs[None, :] - disc.x) ** 2 + (ys[:, None] - disc.y) ** 2 <= (disc.radius + margin * A.pixel_size) ** 2
    return torch.as_tensor(np.where(inside, top, 0.0), dtype=y.dtype, device=y.device)[None, None]
