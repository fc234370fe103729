r"""Filtered back-projection (parallel and flat-detector fan beam) and FDK (cone beam), in physical units.

The reconstruction follows Kak & Slaney, *Principles of Computerized Tomographic Imaging*, ch. 3
(parallel beam; fan beam with equally spaced collinear detectors) and Feldkamp, Davis & Kress (1984)
for the cone beam. Lengths are in mm, so line integrals in mm x (1/mm) give an image in 1/mm.

Steps:

1. **Pre-weighting** (fan, cone): each detector value is multiplied by
   ``D / sqrt(D^2 + s^2 [+ zeta^2])``, the cosine of the ray's angle with the central ray, with ``D`` the
   source-origin distance and ``(s, zeta)`` the cell's coordinates on a virtual detector through the
   rotation centre (spacing ``detector_spacing * D / (D + origin_detector)``).
2. **Ramp filter** along the detector rows: Kak & Slaney's spatial-domain ramp
   ``h[0] = 1/(4 d^2)``, ``h[n] = -1/(n pi d)^2`` (odd ``n``), ``0`` (even ``n``), transformed with an FFT
   over a zero-padded power-of-two length ``>= 2 * detectors`` (no DC bias, no wrap-around),
   multiplied by a window (``FILTERS``) and zeroed above ``cutoff`` x Nyquist.
3. **Angular weights** (:func:`angle_weights`): each view's share of the angular coverage (midpoint
   rule on the sorted angles), scaled by ``pi / C`` with ``C`` the total coverage, so they always sum
   to ``pi``: a parallel scan over 180 deg is unchanged; a full fan scan over 360 deg gets the factor
   1/2 of the fan-beam formula. A duplicated end view (0 deg and 360 deg) closes the circle and the
   two share one weight. A fan-beam scan over an open arc of at least 180 deg plus the fan angle (a
   short scan) gets **Parker weights** instead (:func:`parker_weights`): each ray is counted once,
   smoothly, and the views keep their plain angular steps. A parallel scan between 180 and 360 deg
   is only rescaled on average. Limited-angle scans (coverage below 180 deg, or below the short scan
   for fan beam) cannot be made exact by any weighting (a wedge of directions is missing); scaled
   to ``pi`` the kept directions stand in for the missing ones, which makes the value at the centre
   of an object isotropic about that point exact.
4. **Back-projection**, pixel-driven, in torch (any device, differentiable): linear interpolation
   along the detector (bilinear for cone beam), zero outside it, with the distance weight ``1/U^2``,
   ``U = (D + r) / D``, for fan and cone beam (``r`` = the pixel's distance from the isocentre along the
   central ray, towards the detector). Coordinates follow ``operators/ct.py`` exactly (ASTRA 2D:
   ``y`` up, row 0 at the top) and, for :class:`~operators.ct.ConeBeam3D`, ASTRA 3D: voxel
   ``(z, y, x)`` index with ``x, y, z`` all *increasing* with the index, detector rows along ``+z``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from operators.cone import ConeBeam3D
from operators.ct import FanBeam2D, ParallelBeam2D

__all__ = ["FILTERS", "angle_weights", "fbp", "parker_weights", "ramp_filter"]

_WINDOWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ram-lak": torch.ones_like,
    "shepp-logan": lambda nu: torch.sinc(nu / 2),  # sin(pi nu / 2) / (pi nu / 2)
    "cosine": lambda nu: torch.cos(0.5 * math.pi * nu),
    "hann": lambda nu: 0.5 + 0.5 * torch.cos(math.pi * nu),
    "hamming": lambda nu: 0.54 + 0.46 * torch.cos(math.pi * nu),
}
#: Valid ``filter`` names: windows of ``nu``, the frequency over ``cutoff x Nyquist`` (stretched to the cutoff).
FILTERS: tuple[str, ...] = tuple(_WINDOWS)
_BLOCK = 1 << 24  # interpolated values per back-projection block: ~64 MB of float32 temporaries
Trig = tuple[torch.Tensor, torch.Tensor]  # cos and sin of the view angles
Options = tuple[str, float, bool]  # filter, cutoff, padding


def fbp(A: ParallelBeam2D | FanBeam2D | ConeBeam3D, y: torch.Tensor, filter: str = "ram-lak",
        cutoff: float = 1.0, padding: bool = True) -> torch.Tensor:
    r"""Filtered back-projection (FDK for cone beam) of line integrals ``y`` measured by ``A``.

    .. math:: x(\mathbf{p}) = \sum_v w_v\, U_v(\mathbf{p})^{-2}\, \big(h * (c \cdot y_v)\big)(s_v(\mathbf{p}))

    with ``w_v`` the angular weights, ``c`` the cosine pre-weighting and ``U_v`` the distance weight
    (both 1 for parallel beam), ``h`` the windowed ramp and ``s_v(p)`` where pixel ``p`` projects.
    Fan-beam short scans get Parker weights; see the module docstring for short and limited scans.

    Args:
        A: a :class:`~operators.ct.ParallelBeam2D`, :class:`~operators.ct.FanBeam2D` (flat
            detector) or :class:`~operators.ct.ConeBeam3D`; only its geometry is used, so cone beam
            runs on CPU tensors too.
        y: line integrals in mm x attenuation (e.g. ``-log(I / I0)``), real floating point.
        filter: one of ``FILTERS``: ``"ram-lak"``, ``"shepp-logan"``, ``"cosine"``, ``"hann"``,
            ``"hamming"``.
        cutoff: in ``(0, 1]``, the highest frequency kept as a fraction of the Nyquist frequency.
        padding: zero-pad the detector to a power of two ``>= 2 * detectors`` before the FFT (keep
            True; False filters circularly over the detector length, with wrap-around).

    Returns:
        The image in 1/mm, on ``y``'s device and in its dtype.

    Shapes:
        ``y``: ``(B, *A.out_shape)``, i.e. ``(B, C, views, detectors)`` or ``(B, 1, rows, views, cols)``;
        output ``(B, *A.in_shape)``, i.e. ``(B, C, H, W)`` or ``(B, 1, D, H, W)``.

    Example:
        >>> import numpy as np, torch
        >>> from operators.ct import ParallelBeam2D
        >>> A = ParallelBeam2D((64, 64), np.linspace(0, np.pi, 180, endpoint=False), 92, pixel_size=0.5)
        >>> x = torch.zeros(1, 1, 64, 64); x[..., 16:48, 16:48] = 0.02   # 16 mm square, 0.02 / mm
        >>> xr = fbp(A, A(x))
        >>> xr.shape, round(float(xr[0, 0, 24:40, 24:40].mean()), 4)
        (torch.Size([1, 1, 64, 64]), 0.02)
    """
    _check_args(A, y)
    window = _check_filter(filter, cutoff)
    angles = A.angles.detach().cpu().numpy()
    short = parker_weights(A) if isinstance(A, FanBeam2D) else None
    if short is not None:  # each ray counted once by the Parker weights: the raw angular steps, not scaled to pi
        shares, rays = short
        y = y * torch.as_tensor(rays, dtype=y.dtype, device=y.device)
    w = torch.as_tensor(shares if short is not None else angle_weights(angles), dtype=y.dtype, device=y.device)
    theta = A.angles.detach().to(y.device, torch.float64)
    trig = (torch.cos(theta).to(y.dtype), torch.sin(theta).to(y.dtype))
    if isinstance(A, ConeBeam3D):
        return _fdk(A, y, w, trig, (window, float(cutoff), bool(padding)))
    return _fbp_2d(A, y, w, trig, (window, float(cutoff), bool(padding)))


# ----------------------------------------------------------------------------------- validation
def _check_args(A: object, y: object) -> None:
    if not isinstance(A, (ParallelBeam2D, FanBeam2D, ConeBeam3D)):
        raise TypeError(f"A: fbp supports ParallelBeam2D, FanBeam2D and ConeBeam3D, got {type(A).__name__}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y: expected a torch.Tensor, got {type(y).__name__}")
    shape = tuple(A.out_shape)
    if y.ndim != len(shape) + 1 or tuple(y.shape[1:]) != shape:
        raise ValueError(f"y: {type(A).__name__} sinograms have shape (B, {', '.join(map(str, shape))}), "
                         f"got {tuple(y.shape)}")
    if not y.is_floating_point():
        raise TypeError(f"y: expected a real floating-point tensor, got {y.dtype}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y: contains NaN or Inf values")


def _check_filter(filter: object, cutoff: object) -> str:
    """The lower-cased filter name, after checking it and the cutoff."""
    if not isinstance(filter, str) or filter.lower() not in _WINDOWS:
        raise ValueError(f"filter: expected one of {', '.join(FILTERS)}, got {filter!r}")
    ok = isinstance(cutoff, numbers.Real) and not isinstance(cutoff, bool) and math.isfinite(cutoff)
    if not ok or not 0.0 < cutoff <= 1.0:
        raise ValueError(f"cutoff: expected a number in (0, 1] (fraction of Nyquist), got {cutoff!r}")
    return filter.lower()


# ------------------------------------------------------------------------------- angular weights
def parker_weights(A: FanBeam2D) -> tuple[np.ndarray, np.ndarray] | None:
    """Parker's short-scan weights of a fan-beam scan over an open arc of ``pi + 2 delta`` or more.

    A ray at fan angle ``gamma`` from view ``beta`` (both from the arc's start) is measured again at
    ``beta + pi + 2 gamma`` with ``-gamma``; the weights (Parker 1982, with ``delta`` the half fan
    angle, or ``(C - pi) / 2`` for a longer arc ``C`` short of a full circle, as in Silver's
    generalisation) sum to 1 over each such pair and fall smoothly to 0 at the arc's ends:
    ``sin^2(pi/4 beta / (delta - gamma))`` up to ``2 delta - 2 gamma``, 1 up to ``pi - 2 gamma``,
    ``sin^2(pi/4 (pi + 2 delta - beta) / (delta + gamma))`` after. Here ``gamma = -atan(u / D)``
    for detector coordinate ``u`` at the isocentre, the ray direction being ``beta + gamma + pi/2``
    in ``operators.ct``'s geometry.

    Returns:
        ``(shares, rays)``: each view's share of the arc (midpoint rule, radians, not rescaled) and
        the weights ``(views, detectors)``; None for a full circle or an arc shorter than
        ``pi + 2 delta`` (module docstring, step 3).
    """
    angles = A.angles.detach().cpu().numpy().astype(np.float64).ravel()
    if angles.size < 2:
        return None
    shares, circle = _midpoint_shares(angles)
    beta = angles - angles.min()
    span = float(beta.max())
    gamma = -np.arctan(isocentre_detector(A) / float(A.source_origin))
    delta = float(np.abs(gamma).max())
    if circle or span < math.pi + 2 * delta - 1e-9:
        return None
    delta = max(delta, 0.5 * (span - math.pi))
    b, g = beta[:, None], gamma[None, :]
    rays = np.ones((beta.size, gamma.size))
    rise, fall = b < 2 * delta - 2 * g, b > math.pi - 2 * g
    rays = np.where(rise, np.sin(0.25 * math.pi * b / (delta - g)) ** 2, rays)
    rays = np.where(fall, np.sin(0.25 * math.pi * np.clip(math.pi + 2 * delta - b, 0, None) / (delta + g)) ** 2, rays)
    return shares, rays


def isocentre_detector(A: ParallelBeam2D | FanBeam2D) -> np.ndarray:
    """The detector cells' centres (mm), for fan beam on the virtual detector through the isocentre."""
    d = A.detector_spacing
    if isinstance(A, FanBeam2D):
        d = d * A.source_origin / (A.source_origin + A.origin_detector)
    return (np.arange(A.detector_count) - 0.5 * (A.detector_count - 1)) * d


def angle_weights(angles: np.ndarray) -> np.ndarray:
    """Each view's share of the angular coverage, normalised for FBP (radians).

    Midpoint rule on the sorted angles: a view owns half the gap to each neighbour. If the gap that
    closes the circle (``2 pi - span``) is no larger than the largest gap between views, the scan is a
    full circle and that gap is shared like the others (so 0 and 360 deg share one view's weight);
    otherwise the two end views get half their inner gap on the open side. The weights, whose sum
    is the coverage ``C``, are then scaled by ``pi / C`` (limited arcs included: module docstring,
    step 3). Only the 2 pi periodicity is
    detected: a parallel scan over 0..180 deg *inclusive* counts that direction twice (a faint extra
    back-projection of one view); drop the duplicate if it matters.

    Args:
        angles: view angles in radians, any order, any spacing.

    Returns:
        float64 weights, in the order of ``angles``.

    Shapes:
        ``(views,) -> (views,)``.

    Example:
        >>> w = angle_weights(np.linspace(0, 2 * np.pi, 721))   # 0:0.5:360 deg, ends duplicated
        >>> round(float(w.sum()), 6), bool(np.allclose(w[1:-1], np.pi / 720))
        (3.141593, True)
    """
    a = np.asarray(angles, dtype=np.float64).ravel()
    if a.size == 1:
        return np.array([math.pi])
    w, _ = _midpoint_shares(a)
    total = w.sum()
    if total <= 0.0:  # all views at the same angle: no coverage to share
        return np.full_like(a, math.pi / a.size)
    return w * (math.pi / total)


def _midpoint_shares(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """Each view's share of the coverage by the midpoint rule (radians, not rescaled), in the order of
    ``a`` (two or more views), and whether the views go round the circle: the gap that closes it,
    ``2 pi - span``, is no larger than the largest gap between views (a negative one: more than a
    circle). A closed circle (that gap from -1e-9 up) shares it like the others (``angle_weights``)."""
    order = np.argsort(a, kind="stable")
    gaps = np.diff(a[order])
    wrap = 2.0 * math.pi - (a[order[-1]] - a[order[0]])
    circle = wrap <= gaps.max() * (1.0 + 1e-6) + 1e-12
    closed = circle and wrap >= -1e-9
    before = np.concatenate([[max(wrap, 0.0) if closed else gaps[0]], gaps])
    after = np.concatenate([gaps, [max(wrap, 0.0) if closed else gaps[-1]]])
    w = np.empty_like(a)
    w[order] = 0.5 * (before + after)
    return w, bool(circle)


# ------------------------------------------------------------------------------------ filtering
def ramp_filter(n: int, spacing: float, filter: str = "ram-lak", cutoff: float = 1.0, padding: bool = True,
                dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    r"""Frequency response of the windowed, band-limited ramp for ``n`` detector cells of ``spacing`` mm.

    .. math:: H = d\,\mathrm{DFT}(h)\,W(\nu),\ h[0] = \tfrac{1}{4d^2},\ h[k_{odd}] = -(\pi k d)^{-2},\ h[k_{even}] = 0

    Args:
        n: detector cells.
        spacing: their spacing ``d`` in mm (at the isocentre for fan and cone beam).
        filter: window name, one of ``FILTERS``.
        cutoff: fraction of the Nyquist frequency above which ``H = 0``.
        padding: FFT length a power of two ``>= 2 n`` (True) or ``n`` (False).
        dtype: real dtype of the result.
        device: device of the result.

    Returns:
        The ``rfft`` half-spectrum, real; ``torch.fft.irfft(torch.fft.rfft(p, L) * H, L)`` filters ``p``.

    Shapes:
        ``(L // 2 + 1,)`` with ``L`` the FFT length.

    Example:
        >>> H = ramp_filter(100, 0.5)
        >>> H.shape, float(H[0]) > 0.0, round(float(H[-1]), 2)   # no DC hole; ~1/(2 d) at Nyquist
        (torch.Size([129]), True, 1.0)
    """
    filter = _check_filter(filter, cutoff)
    L = 1 << (2 * n - 1).bit_length() if padding else n
    k = torch.arange(L, dtype=torch.float64)
    k = torch.where(k > L // 2, k - L, k)
    h = torch.where(k % 2 == 1, -1.0 / (math.pi * k * spacing) ** 2, torch.zeros_like(k))
    h[0] = 1.0 / (4.0 * spacing**2)
    H = torch.fft.rfft(h).real * spacing
    nu = torch.fft.rfftfreq(L, dtype=torch.float64) / (0.5 * cutoff)
    H = H * _WINDOWS[filter](nu.clamp(max=1.0)) * (nu <= 1.0 + 1e-12)
    return H.to(dtype=dtype, device=device)


def _filter(p: torch.Tensor, spacing: float, options: Options) -> torch.Tensor:
    """Ramp-filter the last axis of ``p`` (cells ``spacing`` mm apart)."""
    n = p.shape[-1]
    H = ramp_filter(n, spacing, *options, dtype=p.dtype, device=p.device)
    L = 2 * (H.shape[0] - 1) if options[2] else n
    return torch.fft.irfft(torch.fft.rfft(p, n=L, dim=-1) * H, n=L, dim=-1)[..., :n]


# ------------------------------------------------------------------------------- geometries
# Each geometry yields, per block of views, the grid_sample coordinates of every pixel's projection on
# the detector (-1 and +1 at the centres of the first and last cells) and its weight 1 / U^2, computed
# separably from the x and y axes (far fewer memory passes than per-pixel coordinates).
GridFn = Callable[[slice], "tuple[torch.Tensor, torch.Tensor | None]"]


def _axis(n: int, spacing: float, like: torch.Tensor) -> torch.Tensor:
    """Centred coordinates ``(k - (n-1)/2) * spacing`` of ``n`` cells."""
    return (torch.arange(n, dtype=like.dtype, device=like.device) - 0.5 * (n - 1)) * spacing


def _fan_grid(X: torch.Tensor, Y: torch.Tensor, trig: Trig, sl: slice, D: float | None, half: float,
              out: torch.Tensor) -> torch.Tensor | None:
    """Write the detector coordinate ``t / (U half)`` of pixels ``(Y[i], X[j])`` into ``out``; return ``1 / U``.

    ``t = x cos + y sin`` runs along the detector, ``r = y cos - x sin`` towards it, ``U = (D + r) / D``;
    ``D = None`` is parallel beam (``U = 1``, returned as None). Shapes ``(views, H, W)``.
    """
    cos, sin = trig[0][sl, None, None], trig[1][sl, None, None]
    torch.add(X * (cos / half), Y[:, None] * (sin / half), out=out)
    if D is None:  # parallel beam
        return None
    inv_u = torch.add(X * (-sin / D), Y[:, None] * (cos / D) + 1.0).reciprocal_()
    out.mul_(inv_u)
    return inv_u


def _fbp_2d(A: ParallelBeam2D | FanBeam2D, y: torch.Tensor, w: torch.Tensor, trig: Trig,
            options: Options) -> torch.Tensor:
    B, C, V, n = y.shape
    D = A.source_origin if isinstance(A, FanBeam2D) else None
    d = A.detector_spacing if D is None else A.detector_spacing * D / (D + A.origin_detector)  # at isocentre
    if D is not None:  # cosine pre-weighting
        y = y * (D / torch.sqrt(D**2 + _axis(n, d, y) ** 2))
    q = _filter(y, d, options) * w[:, None]
    H, W = A.image_shape
    X, Y = _axis(W, A.pixel_size, y), -_axis(H, A.pixel_size, y)  # ASTRA 2D: x right, y up, row 0 on top
    half = d * max(n - 1, 1) / 2

    def grid(sl: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = y.new_empty(len(range(V)[sl]), H, W, 2)
        inv_u = _fan_grid(X, Y, trig, sl, D, half, out=g[..., 0])
        g[..., 1].zero_()  # one detector row
        return g, (None if inv_u is None else inv_u.square_()[:, None])

    return _backproject(q.reshape(B * C, 1, V, n), grid, (H, W)).reshape(B, C, H, W)


def _fdk(A: ConeBeam3D, y: torch.Tensor, w: torch.Tensor, trig: Trig, options: Options) -> torch.Tensor:
    B, _, R, V, n = y.shape
    D = A.source_origin
    mag = D / (D + A.origin_detector)
    dr, dc = A.detector_spacing[0] * mag, A.detector_spacing[1] * mag  # at the isocentre
    cosine = D / torch.sqrt(D**2 + _axis(n, dc, y) ** 2 + _axis(R, dr, y)[:, None, None] ** 2)  # (R, 1, n)
    q = _filter(y * cosine, dc, options) * w[:, None]
    Dz, H, W = A.volume_shape
    X, Y, Z = (_axis(k, A.pixel_size, y) for k in (W, H, Dz))  # ASTRA 3D: x, y, z increase with the index
    half_c, half_r = dc * max(n - 1, 1) / 2, dr * max(R - 1, 1) / 2

    def grid(sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        g = y.new_empty(len(range(V)[sl]), Dz, H, W, 2)
        inv_u = _fan_grid(X, Y, trig, sl, D, half_c, out=g[:, 0, ..., 0])
        g[:, 1:, ..., 0] = g[:, :1, ..., 0]  # the column does not depend on z
        torch.mul((Z / half_r)[:, None, None], inv_u[:, None], out=g[..., 1])  # detector rows along +z
        return g.reshape(-1, Dz, H * W, 2), inv_u.square_().reshape(-1, 1, 1, H * W)

    return _backproject(q.reshape(B, R, V, n), grid, (Dz, H * W)).reshape(B, 1, Dz, H, W)


# ------------------------------------------------------------------------------ back-projection
def _backproject(q: torch.Tensor, grid: GridFn, shape: tuple[int, int]) -> torch.Tensor:
    """Pixel-driven back-projection ``sum_v weight_v * q_v(grid_v)``, in blocks of views to bound memory.

    ``q`` is ``(M, rows, views, cols)``; ``grid(views)`` returns the coordinates ``(views, *shape, 2)`` and
    the weights (broadcastable to ``(views, M, *shape)``, or None). Each view is one ``grid_sample``
    image (bilinear, zero outside the detector) shared by the ``M`` sinograms.
    """
    M, R, V, n = q.shape
    views = q.permute(2, 0, 1, 3).contiguous()  # (V, M, R, n)
    out = q.new_zeros(M, *shape)
    step = max(1, _BLOCK // (shape[0] * shape[1] * (M + 4)))
    for v0 in range(0, V, step):
        g, weight = grid(slice(v0, v0 + step))
        val = F.grid_sample(views[v0:v0 + step], g, mode="bilinear", padding_mode="zeros", align_corners=True)
        out += (val if weight is None else val * weight).sum(0)
    return out
