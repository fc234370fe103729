"""k-space sampling masks: 1D random and equispaced line masks, 2D variable-density Poisson disc.

Every mask is a ``torch.bool`` tensor of shape ``(H, W)`` on the project's centred k-space grid
(DC at ``(H // 2, W // 2)``, see :mod:`operators.fourier`); it broadcasts against
``(B, coils, H, W)`` k-space. Randomness comes from ``numpy.random.default_rng(seed)``, so a mask
is a pure function of its arguments. A centred block of ``n`` lines (or rows/cols) starts at
index ``c - n // 2`` where ``c`` is the centre index, the same rule as
:func:`operators.coils.calibration_region`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "MASK_TYPES", "acceleration_of", "equispaced_mask", "make_mask", "poisson_disc_mask",
    "random_mask",
]

#: Mask kinds understood by :func:`make_mask`.
MASK_TYPES = ("random", "equispaced", "poisson")

_POISSON_TOL = 0.02  # relative tolerance on the number of Poisson-disc samples
_POISSON_MAX_ITER = 12
_DENSITY_SLOPE = 3.0  # radius grows 4x from the centre to rho = 1 (close to SigPy's 8x brain mask)


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------
def _check_shape(shape: object) -> tuple[int, int]:
    ok = isinstance(shape, Sequence) and len(shape) == 2 and all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in shape
    )
    if not ok:
        raise ValueError(f"shape: expected 2 positive integers (H, W), got {shape!r}")
    return int(shape[0]), int(shape[1])


def _check_real(name: str, value: object, low: float, high: float, high_open: bool) -> float:
    bound = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number in {bound}, got {type(value).__name__}")
    value = float(value)
    if not (low <= value and (value < high if high_open else value <= high)):
        raise ValueError(f"{name}: expected a real number in {bound}, got {value}")
    return value


def _check_common(
    shape: object, acceleration: object, center_fraction: object, seed: object
) -> tuple[tuple[int, int], float, float, int]:
    shape = _check_shape(shape)
    acceleration = _check_real("acceleration", acceleration, 1.0, math.inf, True)
    center_fraction = _check_real("center_fraction", center_fraction, 0.0, 1.0, True)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    return shape, acceleration, center_fraction, int(seed)


def _check_axis(axis: object) -> int:
    if isinstance(axis, bool) or axis not in (-2, -1, 0, 1):
        raise ValueError(f"axis: expected one of -2, -1, 0, 1 (an axis of (H, W)), got {axis!r}")
    return int(axis) % 2


def _line_budget(n: int, acceleration: float, center_fraction: float) -> tuple[int, int]:
    """Return ``(n_center, n_total)``: fully sampled centre lines and all sampled lines."""
    n_center, n_total = round(n * center_fraction), round(n / acceleration)
    if n_total < 1:
        raise ValueError(
            f"acceleration: {acceleration:g} leaves no line to sample among {n} (round({n} / {acceleration:g}) = 0)"
        )
    if n_center > n_total:
        raise ValueError(
            f"center_fraction: {center_fraction:g} asks for {n_center} fully sampled centre lines, more than "
            f"the {n_total} lines (round({n} / {acceleration:g})) that acceleration {acceleration:g} allows"
        )
    return n_center, n_total


def _lines_to_mask(lines: np.ndarray, shape: tuple[int, int], axis: int) -> torch.Tensor:
    grid = np.broadcast_to(lines[None, :] if axis == 1 else lines[:, None], shape)
    return torch.from_numpy(np.ascontiguousarray(grid))


def _centre_lines(n: int, n_center: int) -> np.ndarray:
    lines = np.zeros(n, dtype=bool)
    start = n // 2 - n_center // 2
    lines[start : start + n_center] = True
    return lines


# --------------------------------------------------------------------------
# 1D line masks
# --------------------------------------------------------------------------
def random_mask(
    shape: Sequence[int], acceleration: float, center_fraction: float, seed: int = 0, axis: int = -1
) -> torch.Tensor:
    r"""fastMRI-style random line mask.

    Lines run across ``axis`` (the subsampled phase-encode axis; the mask is constant along the
    other axis). With ``n = shape[axis]``, exactly ``round(n * center_fraction)`` centre lines
    are fully sampled and further lines are drawn uniformly without replacement from the rest so
    that exactly ``round(n / acceleration)`` lines are sampled in total.

    .. math:: |\{\text{sampled lines}\}| = \mathrm{round}(n / R)

    Args:
        shape: ``(H, W)``.
        acceleration: Target acceleration ``R >= 1``.
        center_fraction: Fraction of lines in the fully sampled centre, in ``[0, 1)``.
        seed: Seed of ``numpy.random.default_rng``.
        axis: Axis of ``(H, W)`` that is subsampled (``-1``: columns, ``-2``: rows).

    Returns:
        ``torch.bool`` tensor of shape ``(H, W)``.

    Example:
        >>> m = random_mask((64, 64), acceleration=4, center_fraction=0.08)
        >>> int(m[0].sum()), bool(m[:, 30:35].all()), acceleration_of(m)   # 5 centre lines
        (16, True, 4.0)
    """
    shape, acceleration, center_fraction, seed = _check_common(shape, acceleration, center_fraction, seed)
    axis = _check_axis(axis)
    n = shape[axis]
    n_center, n_total = _line_budget(n, acceleration, center_fraction)
    lines = _centre_lines(n, n_center)
    rng = np.random.default_rng(seed)
    lines[rng.choice(np.flatnonzero(~lines), n_total - n_center, replace=False)] = True
    return _lines_to_mask(lines, shape, axis)


def equispaced_mask(
    shape: Sequence[int], acceleration: float, center_fraction: float, seed: int = 0, axis: int = -1
) -> torch.Tensor:
    r"""fastMRI-style equispaced line mask: the centre plus lines at a fixed spacing.

    The spacing is adjusted as in fastMRI's ``EquispacedMaskFractionFunc``: with ``c`` centre
    lines and ``m = round(n / R)`` lines wanted in total, lines sit at
    ``round(o + j * s)`` with ``s = (n - c) / (m - c)`` and a random offset ``o`` in ``[0, s)``,
    so that the *expected* total is ``m``. The spacing is the same on both sides of the centre,
    so the realised total can differ from ``m`` by about one line (rounding, and how many
    progression points fall inside the centre; never more than one for the sizes 64 to 320
    and R in 2, 4, 8 we checked); the acceleration is hit approximately, closer for larger ``n``.

    .. math:: s = \frac{n - c}{\mathrm{round}(n/R) - c}

    Args:
        shape: ``(H, W)``.
        acceleration: Target acceleration ``R >= 1``.
        center_fraction: Fraction of lines in the fully sampled centre, in ``[0, 1)``.
        seed: Seed of ``numpy.random.default_rng`` (draws the offset).
        axis: Axis of ``(H, W)`` that is subsampled (``-1``: columns, ``-2``: rows).

    Returns:
        ``torch.bool`` tensor of shape ``(H, W)``.

    Example:
        >>> m = equispaced_mask((256, 256), acceleration=4, center_fraction=0.08)
        >>> abs(acceleration_of(m) - 4) < 0.2, bool(m[:, 118:138].all())
        (True, True)
    """
    shape, acceleration, center_fraction, seed = _check_common(shape, acceleration, center_fraction, seed)
    axis = _check_axis(axis)
    n = shape[axis]
    n_center, n_total = _line_budget(n, acceleration, center_fraction)
    lines = _centre_lines(n, n_center)
    if n_total > n_center:
        spacing = (n - n_center) / (n_total - n_center)
        offset = np.random.default_rng(seed).uniform(0.0, spacing)
        positions = np.round(offset + spacing * np.arange(math.ceil(n / spacing) + 1)).astype(int)
        lines[positions[positions < n]] = True
    return _lines_to_mask(lines, shape, axis)


# --------------------------------------------------------------------------
# 2D variable-density Poisson disc
# --------------------------------------------------------------------------
def _check_calibration(calibration: object, shape: tuple[int, int]) -> tuple[int, int]:
    if isinstance(calibration, numbers.Real) and not isinstance(calibration, (bool, numbers.Integral)):
        fraction = _check_real("calibration", calibration, 0.0, 1.0, True)
        return round(shape[0] * fraction), round(shape[1] * fraction)
    ok = isinstance(calibration, Sequence) and len(calibration) == 2 and all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and 0 <= n <= s
        for n, s in zip(calibration, shape)
    )
    if not ok:
        raise ValueError(
            f"calibration: expected a pair of integers (rows, cols) within shape {shape} "
            f"or a centre fraction in [0, 1), got {calibration!r}"
        )
    return int(calibration[0]), int(calibration[1])


def _greedy_disc(radius: np.ndarray, support: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Maximal Poisson-disc set on the pixel grid, greedy in decreasing ``priority``.

    Pixels ``p != q`` conflict when ``|p - q| < max(radius[p], radius[q])``. The result equals
    sequential dart throwing (visit pixels by decreasing priority, keep a pixel when it conflicts
    with no kept one), computed in parallel rounds: an undecided pixel whose priority beats all of
    its undecided conflicting neighbours is kept, and its conflicting neighbours are dropped.
    """
    H, W = radius.shape
    reach = max(1, math.ceil(float(radius[support].max())) - 1)
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    dist = np.hypot(dy, dx).ravel()
    keep = (dist > 0) & (dist < radius[support].max())
    Wp = W + 2 * reach
    delta, dist = (dy.ravel() * Wp + dx.ravel())[keep], dist[keep]
    r = np.zeros((H + 2 * reach, Wp))
    r[reach : reach + H, reach : reach + W] = radius
    prio = np.full(r.shape, -1, dtype=np.int64)
    prio[reach : reach + H, reach : reach + W] = np.where(support, priority, -1)
    r, prio = r.ravel(), prio.ravel()
    undecided = np.flatnonzero(prio >= 0)
    kept = []

    def conflicts(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nb = idx[:, None] + delta
        return nb, dist < np.maximum(r[idx][:, None], r[nb])

    while undecided.size:
        nb, conflict = conflicts(undecided)
        beaten = (conflict & (prio[nb] > prio[undecided][:, None])).any(axis=1)
        winners = undecided[~beaten]
        kept.append(winners)
        nb, conflict = conflicts(winners)
        prio[nb[conflict]] = -1
        prio[winners] = -1
        undecided = undecided[prio[undecided] >= 0]
    mask = np.zeros(r.size, dtype=bool)
    mask[np.concatenate(kept)] = True
    return mask.reshape(H + 2 * reach, Wp)[reach : reach + H, reach : reach + W]


def poisson_disc_mask(
    shape: Sequence[int],
    acceleration: float,
    calibration: tuple[int, int] | float = (24, 24),
    seed: int = 0,
    elliptical: bool = True,
) -> torch.Tensor:
    r"""2D variable-density Poisson-disc mask with a fully sampled calibration rectangle.

    Samples are grid pixels; no two samples ``p, q`` are closer than ``max(r(p), r(q))``, with a
    radius growing linearly with the normalised distance ``rho`` from the k-space centre
    (``rho = 1`` on the ellipse inscribed in the grid), four-fold from the centre to ``rho = 1``.
    Where ``r <= 1`` every pixel is sampled, so at low ``R`` a centre disc wider than the
    calibration is fully sampled. The set is maximal: it is sequential dart throwing over all
    pixels in a seeded random order. The scale ``s`` is tuned (multiplicative steps assuming a
    density ``~ 1 / r^2``, safeguarded by bisection; at most 12 trials) until the number of
    sampled points, calibration included, is within 2 % of ``round(H W / R)``; otherwise the
    closest trial is returned. With ``elliptical=True`` only pixels with ``rho <= 1``
    (plus the calibration) are sampled, which caps the reachable rate at about ``pi / 4``.

    .. math:: r(k) = s\,(1 + 3\rho(k)), \quad \rho(k) = \big\|\big(\tfrac{k_y}{H/2}, \tfrac{k_x}{W/2}\big)\big\|_2

    Args:
        shape: ``(H, W)``.
        acceleration: Target acceleration ``R >= 1``.
        calibration: Fully sampled centred rectangle ``(rows, cols)``, or a centre fraction
            ``f`` in ``[0, 1)`` meaning ``(round(H f), round(W f))``.
        seed: Seed of ``numpy.random.default_rng`` (draws the visiting order).
        elliptical: Restrict samples outside the calibration to the inscribed ellipse.

    Returns:
        ``torch.bool`` tensor of shape ``(H, W)``.

    Example:
        >>> m = poisson_disc_mask((128, 128), acceleration=6, calibration=(20, 20))
        >>> abs(acceleration_of(m) / 6 - 1) < 0.03, bool(m[54:74, 54:74].all())
        (True, True)
    """
    shape, acceleration, _, seed = _check_common(shape, acceleration, 0.0, seed)
    calib = _check_calibration(calibration, shape)
    H, W = shape
    ky, kx = np.ogrid[:H, :W]
    rho = np.hypot((ky - H // 2) / (H / 2), (kx - W // 2) / (W / 2))
    calib_mask = np.zeros(shape, dtype=bool)
    top, left = H // 2 - calib[0] // 2, W // 2 - calib[1] // 2
    calib_mask[top : top + calib[0], left : left + calib[1]] = True
    support = (rho <= 1.0) if elliptical else np.ones(shape, dtype=bool)
    target = round(H * W / acceleration)
    available = int((support | calib_mask).sum())
    if target > available or target < calib_mask.sum() or target < 1:
        raise ValueError(
            f"acceleration: {acceleration:g} asks for {target} samples, but between "
            f"{int(calib_mask.sum())} (calibration {calib}) and {available} "
            f"(elliptical={elliptical}) are possible on shape {shape}"
        )
    priority = np.random.default_rng(seed).permutation(H * W).reshape(shape)
    profile = 1.0 + _DENSITY_SLOPE * rho
    lo, hi = 0.0, math.inf
    scale = _initial_scale(profile[support], target - int(calib_mask[~support].sum()))
    best, best_err = calib_mask, math.inf
    for _ in range(_POISSON_MAX_ITER):
        mask = _greedy_disc(scale * profile, support, priority) | calib_mask
        count = int(mask.sum())
        if abs(count - target) < best_err:
            best, best_err = mask, abs(count - target)
        if best_err <= _POISSON_TOL * target:
            break
        lo, hi = (scale, hi) if count > target else (lo, scale)
        step = scale * math.sqrt(count / target)  # density ~ 1 / r^2
        scale = step if lo < step < hi else 0.5 * (lo + hi)
    return torch.from_numpy(best)


def _initial_scale(profile: np.ndarray, target: int) -> float:
    """Scale at which a saturated packing (density ``min(1, 0.7 / r^2)``) gives ``target`` samples."""
    lo, hi = 0.0, float(profile.size)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.minimum(1.0, 0.7 / (mid * profile) ** 2).sum() > target else (lo, mid)
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------
# dispatch and measurement
# --------------------------------------------------------------------------
def make_mask(
    kind: str,
    shape: Sequence[int],
    acceleration: float,
    center_fraction: float,
    seed: int = 0,
    axis: int = -1,
) -> torch.Tensor:
    r"""Build a mask of one of :data:`MASK_TYPES`.

    ``"poisson"`` passes ``center_fraction`` as the calibration fraction of
    :func:`poisson_disc_mask` and ignores ``axis`` (the mask is 2D).

    .. math:: M = \mathrm{mask}_{\rm kind}(H, W; R, f)

    Args:
        kind: One of ``"random"``, ``"equispaced"``, ``"poisson"``.
        shape: ``(H, W)``.
        acceleration: Target acceleration ``R >= 1``.
        center_fraction: Fully sampled centre fraction in ``[0, 1)``.
        seed: Random seed.
        axis: Subsampled axis of the 1D kinds.

    Returns:
        ``torch.bool`` tensor of shape ``(H, W)``.

    Example:
        >>> make_mask("random", (32, 40), 4, 0.1).shape
        torch.Size([32, 40])
    """
    if kind not in MASK_TYPES:
        raise ValueError(f"kind: expected one of {MASK_TYPES}, got {kind!r}")
    if kind == "poisson":
        center_fraction = _check_real("center_fraction", center_fraction, 0.0, 1.0, True)
        return poisson_disc_mask(shape, acceleration, calibration=center_fraction, seed=seed)
    build = random_mask if kind == "random" else equispaced_mask
    return build(shape, acceleration, center_fraction, seed=seed, axis=axis)


def acceleration_of(mask: torch.Tensor) -> float:
    r"""Acceleration of a sampling mask: number of points over number of sampled points.

    .. math:: R = \frac{|M|}{\sum_k M_k}

    Args:
        mask: Tensor of any shape; nonzero entries count as sampled.

    Returns:
        The acceleration as a Python float.

    Example:
        >>> acceleration_of(torch.tensor([True, False, False, False]))
        4.0
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    sampled = int(torch.count_nonzero(mask))
    if sampled == 0:
        raise ValueError(f"mask: expected at least one sampled point, got none in shape {tuple(mask.shape)}")
    return mask.numel() / sampled
