"""Cross-check of operators.ct against ODL's RayTransform on the same *physical* geometry.

ODL (>= 1.0, ``odl.applications.tomo``; ``odl.tomo`` in older releases) builds its own
ASTRA geometries from a physical description (a discretised domain in mm, an angle partition,
a detector partition in mm), so agreement here checks our geometry conventions, the
pixel-size / detector-spacing scaling and the adjoint independently of how ct.py talks to ASTRA.
A few analytic line integrals of Gaussians (no ASTRA at all) pin down the absolute scale.

Mapping between ODL and our conventions (read from odl/applications/tomo/geometry/parallel.py,
geometry/conebeam.py and backends/astra_setup.py of ODL 1.0):

* Physical frame: both use x to the right, y up, angles counter-clockwise from the same
  origin. ODL rotates its initial configuration by ``R(phi) = [[cos, -sin], [sin, cos]]``:

  - Parallel2dGeometry: detector reference point ``R(phi) (0, 1) = (-sin phi, cos phi)``,
    detector axis ``R(phi) (1, 0) = (cos phi, sin phi)``, so a point ``(x, y)`` lands at
    ``s = x cos phi + y sin phi`` -- exactly our ``s`` at ``theta = phi``. The ray direction
    (source -> detector) is ``(-sin phi, cos phi)``, the opposite of ours, which does not change a
    line integral.
  - FanBeamGeometry (flat detector): source ``-src_radius R(phi) (0, 1) = src_radius (sin phi,
    -cos phi)``, detector centre ``det_radius (-sin phi, cos phi)``, detector axis
    ``(cos phi, sin phi)``: identical to ours with ``src_radius = source_origin``,
    ``det_radius = origin_detector``.

  Hence: **angle offset 0** (``phi = theta``, same radians, same order) and **no detector flip**
  (detector index d <-> ODL detector cell d; sinograms are ``(views, detectors)`` in both).
  Internally ODL passes ASTRA ``phi - pi/2`` and a volume window rotated by -90 degrees
  (``astra.create_vol_geom(nx, ny, ymin, ymax, -xmax, -xmin)``); that is ODL's private way of
  matching ASTRA and cancels out in the physical description.

* Image arrays: ODL indexes ``f[a, b]`` with axis 0 = x (increasing), axis 1 = y (increasing),
  cell centres ``x_a = min_x + (a + 1/2) p``. Ours: ``img[i, j]`` with rows = y *decreasing*
  (row 0 at the top), cols = x increasing. So ``f[a, b] = img[H - 1 - b, a]``, i.e.
  ``f = np.rot90(img, -1)`` (shape ``(W, H)``) and back ``img = np.rot90(f, 1)``; the ODL space is
  ``uniform_discr([-W p/2, -H p/2], [W p/2, H p/2], (W, H))``.

* Adjoint: ODL's adjoint is taken w.r.t. its *weighted* inner products,
  ``<R f, g>_range = <f, R^* g>_domain`` with constant weights ``w_dom`` (pixel area) and
  ``w_ran`` (mean angle-cell x detector-cell size), so ``R^* = (w_ran / w_dom) R^T``. Ours is the
  plain (Euclidean) transpose, so we compare against ``R^* g * w_dom / w_ran``.

Backend: ODL's 'astra_cpu'. ODL's other CPU backend, 'skimage', only handles square volumes in
parallel geometry, and ct.py cannot run without ASTRA anyway, so without ASTRA the module skips.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

odl = pytest.importorskip("odl")

try:  # ODL >= 1.0
    from odl.applications import tomo
except ImportError:  # pragma: no cover - older ODL
    tomo = getattr(odl, "tomo", None)
if tomo is None:  # pragma: no cover
    pytest.skip(f"ODL {odl.__version__} has no tomography module", allow_module_level=True)
if not getattr(tomo, "ASTRA_AVAILABLE", False):  # pragma: no cover
    pytest.skip("ODL cannot find ASTRA ('astra_cpu' backend), which operators.ct needs too",
                allow_module_level=True)

from operators.ct import FanBeam2D, ParallelBeam2D  # noqa: E402

pytestmark = pytest.mark.astra

# Geometry: non-square image, pixel size != 1, detector spacing != pixel size.
H, W, P = 40, 56, 0.3  # rows, cols, mm -> a 16.8 mm x 12 mm field of view (diagonal 20.6 mm)
# (cx, cy, sigma, amplitude) in mm: off-centre, different sizes -> no flip/rotation symmetry.
GAUSSIANS = ((2.5, 1.5, 1.2, 1.0), (-4.0, -1.5, 0.9, 0.7), (-1.0, 2.5, 0.8, 0.5))

PAR_DET, PAR_SPACING = 48, 0.45  # 21.6 mm of detector
PAR_ANGLES = np.linspace(0, np.pi, 37, endpoint=False) + 0.03 * np.sin(7 * np.arange(37))  # non-uniform

FAN_SO, FAN_OD = 60.0, 30.0  # magnification 1.5
FAN_DET, FAN_SPACING = 64, 0.6  # 38.4 mm of detector (on the detector)
FAN_ANGLES = np.linspace(0, 2 * np.pi, 41, endpoint=False) + 0.05 * np.cos(5 * np.arange(41))

TOL = 0.01  # ODL vs ours, relative L2
WRONG = 0.05  # a wrong mapping must disagree by more than this


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _grid():
    """Pixel-centre coordinates (mm) of our image: x to the right, y up, row 0 at the top."""
    x = (np.arange(W) - (W - 1) / 2) * P
    y = ((H - 1) / 2 - np.arange(H)) * P
    return np.meshgrid(x, y)  # (H, W) arrays


def _phantom() -> np.ndarray:
    X, Y = _grid()
    return sum(a * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * s * s)) for cx, cy, s, a in GAUSSIANS)


def _sino_weights(angles: np.ndarray, n: int) -> np.ndarray:
    """A smooth, asymmetric sinogram for the adjoint test."""
    d = np.arange(n)
    return (np.exp(-((d - 0.4 * n) / (0.2 * n)) ** 2)[None, :] * (1.0 + 0.5 * np.sin(angles + 0.3))[:, None]
            + 0.3 * np.exp(-((d - 0.75 * n) / (0.1 * n)) ** 2)[None, :] * np.cos(angles)[:, None] ** 2)


def to_odl(img: np.ndarray) -> np.ndarray:
    """Our (H, W) image (row 0 = top) -> ODL (W, H) array (axis 0 = x, axis 1 = y, both increasing)."""
    return np.ascontiguousarray(np.rot90(img, -1), dtype=np.float32)


def from_odl(f: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(f, 1))


def _odl_space():
    return odl.uniform_discr([-W * P / 2, -H * P / 2], [W * P / 2, H * P / 2], (W, H), dtype="float32")


def _odl_ray(space, geometry):
    return tomo.RayTransform(space, geometry, impl="astra_cpu")


def _odl_forward(R, img: np.ndarray) -> np.ndarray:
    return np.asarray(R(R.domain.element(to_odl(img))).asarray(), dtype=np.float64)


def _odl_transpose(R, sino: np.ndarray) -> np.ndarray:
    """ODL's adjoint, converted to the Euclidean transpose in our image layout."""
    back = np.asarray(R.adjoint(R.range.element(sino.astype(np.float32))).asarray(), dtype=np.float64)
    w_dom, w_ran = float(R.domain.weighting.const), float(R.range.weighting.const)
    return from_odl(back) * (w_dom / w_ran)


def _ours(op, arr: np.ndarray, adjoint: bool = False) -> np.ndarray:
    t = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float64)[None, None]
    out = op.adjoint(t) if adjoint else op(t)
    return out[0, 0].numpy()


def _parallel_geometry(angles):
    apart = odl.nonuniform_partition(np.asarray(angles, dtype=float))
    dpart = odl.uniform_partition(-PAR_DET * PAR_SPACING / 2, PAR_DET * PAR_SPACING / 2, PAR_DET)
    return tomo.Parallel2dGeometry(apart, dpart)


def _fan_geometry(angles):
    apart = odl.nonuniform_partition(np.asarray(angles, dtype=float))
    dpart = odl.uniform_partition(-FAN_DET * FAN_SPACING / 2, FAN_DET * FAN_SPACING / 2, FAN_DET)
    return tomo.FanBeamGeometry(apart, dpart, src_radius=FAN_SO, det_radius=FAN_OD)


def _gaussian_line_integrals(p0x, p0y, ex, ey) -> np.ndarray:
    """Exact integrals of the phantom's Gaussians along lines through (p0x, p0y) with unit direction e."""
    out = 0.0
    for cx, cy, s, a in GAUSSIANS:
        dist = (cx - p0x) * ey - (cy - p0y) * ex
        out = out + a * s * np.sqrt(2 * np.pi) * np.exp(-dist ** 2 / (2 * s * s))
    return out


def _negative_controls(op, R_odl, make_geometry, angles, img, y_odl, sino, bt_odl) -> dict[str, float]:
    """Relative differences for deliberately wrong mappings (each must exceed 5 %)."""
    space = R_odl.domain
    wrong = {
        # ours evaluated with a wrong image orientation, compared with the correct ODL result
        "image flipped up-down": _rel(_ours(op, np.flipud(img)), y_odl),
        "image flipped left-right": _rel(_ours(op, np.fliplr(img)), y_odl),
        # rot90(img, +1) instead of rot90(img, -1): ODL sees the image rotated by 180 degrees
        "ODL array rotated the wrong way": _rel(_odl_forward(R_odl, np.rot90(np.rot90(img))), _ours(op, img)),
        "detector reversed": _rel(_ours(op, img)[:, ::-1], y_odl),
        # ODL geometry with phi = theta + 90 degrees
        "angles + 90 deg": _rel(_odl_forward(_odl_ray(space, make_geometry(angles + np.pi / 2)), img),
                                _ours(op, img)),
        "adjoint image flipped up-down": _rel(np.flipud(_ours(op, sino, adjoint=True)), bt_odl),
        "adjoint, angles + 90 deg": _rel(
            _odl_transpose(_odl_ray(space, make_geometry(angles + np.pi / 2)), sino), _ours(op, sino, adjoint=True)),
    }
    return wrong


def _assert_detected(wrong: dict[str, float]) -> None:
    missed = {k: v for k, v in wrong.items() if not v > WRONG}
    assert not missed, f"wrong mappings not detected (relative difference <= {WRONG}): {missed}"


def test_parallel_beam_matches_odl():
    img = _phantom()
    op = ParallelBeam2D((H, W), PAR_ANGLES, PAR_DET, pixel_size=P, detector_spacing=PAR_SPACING)
    geometry = _parallel_geometry(PAR_ANGLES)
    np.testing.assert_allclose(geometry.angles, PAR_ANGLES, rtol=0, atol=1e-12)
    R = _odl_ray(_odl_space(), geometry)

    y_ours, y_odl = _ours(op, img), _odl_forward(R, img)
    assert y_ours.shape == y_odl.shape == (len(PAR_ANGLES), PAR_DET)
    fwd = _rel(y_ours, y_odl)

    sino = _sino_weights(PAR_ANGLES, PAR_DET)
    bt_ours, bt_odl = _ours(op, sino, adjoint=True), _odl_transpose(R, sino)
    assert bt_ours.shape == bt_odl.shape == (H, W)
    adj = _rel(bt_ours, bt_odl)

    # absolute scale without ASTRA: exact line integrals at the detector-cell centres
    s = (np.arange(PAR_DET) - (PAR_DET - 1) / 2) * PAR_SPACING
    th = PAR_ANGLES[:, None]
    exact = _gaussian_line_integrals(s * np.cos(th), s * np.sin(th), np.sin(th), -np.cos(th))
    ana = _rel(y_ours, exact)

    wrong = _negative_controls(op, R, _parallel_geometry, PAR_ANGLES, img, y_odl, sino, bt_odl)
    _check_agreement("parallel", fwd, adj, ana, 0.02, wrong)


def test_fan_beam_matches_odl():
    img = _phantom()
    op = FanBeam2D((H, W), FAN_ANGLES, FAN_DET, FAN_SO, FAN_OD, pixel_size=P, detector_spacing=FAN_SPACING)
    try:
        geometry = _fan_geometry(FAN_ANGLES)
        R = _odl_ray(_odl_space(), geometry)
        y_odl = _odl_forward(R, img)
    except (NotImplementedError, ValueError, TypeError, AttributeError) as err:
        pytest.skip(f"ODL {odl.__version__} cannot run a flat-detector fan beam with 'astra_cpu': {err!r}")
    np.testing.assert_allclose(geometry.angles, FAN_ANGLES, rtol=0, atol=1e-12)

    y_ours = _ours(op, img)
    assert y_ours.shape == y_odl.shape == (len(FAN_ANGLES), FAN_DET)
    fwd = _rel(y_ours, y_odl)

    sino = _sino_weights(FAN_ANGLES, FAN_DET)
    bt_ours, bt_odl = _ours(op, sino, adjoint=True), _odl_transpose(R, sino)
    adj = _rel(bt_ours, bt_odl)

    # exact line integrals from the source to each detector-cell centre (documented geometry)
    t = FAN_ANGLES[:, None]
    u = (np.arange(FAN_DET) - (FAN_DET - 1) / 2) * FAN_SPACING
    sx, sy = FAN_SO * np.sin(t), -FAN_SO * np.cos(t)
    dx, dy = -FAN_OD * np.sin(t) + u * np.cos(t), FAN_OD * np.cos(t) + u * np.sin(t)
    length = np.hypot(dx - sx, dy - sy)
    exact = _gaussian_line_integrals(sx, sy, (dx - sx) / length, (dy - sy) / length)
    ana = _rel(y_ours, exact)  # ~1.3 %: the 'line' kernel's O(pixel) error, it halves with the pixel

    wrong = _negative_controls(op, R, _fan_geometry, FAN_ANGLES, img, y_odl, sino, bt_odl)
    _check_agreement("fan", fwd, adj, ana, 0.03, wrong)


def _check_agreement(name: str, fwd: float, adj: float, ana: float, ana_tol: float, wrong: dict) -> None:
    """Forward and adjoint agree with ODL, the forward with exact line integrals, and every
    deliberately wrong mapping is detected."""
    print(f"{name}:", {k: round(v, 7) for k, v in {"forward": fwd, "adjoint": adj, "analytic": ana, **wrong}.items()})
    assert fwd < TOL, f"forward differs from ODL by {fwd:.3%}"
    assert adj < TOL, f"adjoint differs from ODL by {adj:.3%}"
    assert ana < ana_tol, f"forward differs from exact line integrals by {ana:.3%}"
    _assert_detected(wrong)
