"""Limited-angle CT with a learned prior (``reconstruct(A, y, "limited-angle")``): TV, then a network for the wedge.

A short arc leaves a wedge of directions unmeasured; TV bounded by the object's disc (``support="disc"``)
recovers what the arc saw, and its errors lie along the missing directions. The ``limited-angle`` model is
a residual U-Net (``priors.nets.RisingNet``) trained by ``recon train limited-angle`` to map that TV image
to the object, on simulated disc phantoms (``data.training.HTCDiscDataset``) scanned over arcs centred on
angle 0. Any arc is brought to that frame first: the data of an arc centred on ``c`` are the data of the
object turned by ``c`` seen from an arc centred on 0, so the TV runs with the angles ``theta - c``, the
network sees its missing wedge always in the same place, and its output is turned back by ``c``
(``rotate``). The network works on the card's grid (``limited_angle.grid`` pixels over the card's field of
view); the result is resampled (bilinear) onto ``A``'s grid.

The card records the scanner the model was trained for (``limited_angle.scanner``: the operator class,
detector count and spacing, distances) and the arcs (``limited_angle.arc_degrees``); data of another
scanner, field of view or an arc outside that range are refused, naming both.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from operators.ct import FanBeam2D, ParallelBeam2D
from priors.nets.unet import eval_output
from recon.result import Reconstruction

__all__ = ["arc_of", "rotate", "scanner_of", "canonical_operator", "check_limited_angle", "limited_angle"]

#: how far (degrees) an arc may lie outside the range the model was trained on
ARC_TOLERANCE = 1.0


def arc_of(angles) -> tuple[float, float]:
    """``(centre, span)`` in radians of the shortest arc that holds all ``angles``: the complement of the
    largest gap between neighbouring angles on the circle.

    Example:
        >>> c, s = arc_of(np.deg2rad([350.0, 0.0, 10.0, 20.0]))
        >>> round(math.degrees(c), 6), round(math.degrees(s), 6)
        (5.0, 30.0)
    """
    a = np.sort(np.mod(np.asarray(angles, dtype=np.float64).ravel(), 2 * math.pi))
    if a.size < 2:
        raise ValueError(f"angles: an arc needs at least 2 views, got {a.size}")
    gaps = np.diff(np.append(a, a[0] + 2 * math.pi))
    k = int(np.argmax(gaps))
    start = a[(k + 1) % a.size]
    span = 2 * math.pi - float(gaps[k])
    return math.remainder(start + span / 2, 2 * math.pi), span


def rotate(x: torch.Tensor, radians: float) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` turned by ``radians`` about the image centre in ``operators.ct``'s frame (x right,
    y up: counter-clockwise as displayed), bilinear, zero outside. Turning by ``c`` undoes a reconstruction
    with the angles ``theta - c`` (``canonical_operator``; tested against the direct reconstruction)."""
    if x.dim() != 4:
        raise ValueError(f"x: expected (B, C, H, W), got {tuple(x.shape)}")
    cos, sin = math.cos(radians), math.sin(radians)
    h, w = x.shape[-2:]
    # affine_grid maps output to input coordinates, normalised to [-1, 1] with rows pointing down
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def scanner_of(A) -> dict:
    """What a limited-angle model depends on besides the angles: the operator class, detectors, distances
    and the field of view (mm) of its square grid."""
    if not isinstance(A, (FanBeam2D, ParallelBeam2D)):
        raise ValueError(f"A: limited-angle reconstructs 2D fan- or parallel-beam CT, got {type(A).__name__}")
    h, w = A.image_shape
    if h != w:
        raise ValueError(f"A: limited-angle needs a square image grid, got {h}x{w}")
    scanner = {"operator": type(A).__name__, "detectors": int(A.detector_count),
               "detector_spacing": float(A.detector_spacing), "field_of_view": float(A.pixel_size * w)}
    if isinstance(A, FanBeam2D):
        scanner.update(source_origin=float(A.source_origin), origin_detector=float(A.origin_detector))
    return scanner


def canonical_operator(A, grid: int) -> FanBeam2D | ParallelBeam2D:
    """``A`` on a ``grid`` x ``grid`` image over the same field of view, with its angles turned so that its arc is
    centred on angle 0."""
    centre, _ = arc_of(A._np_angles)
    s = scanner_of(A)
    angles = A._np_angles - centre
    pixel = s["field_of_view"] / grid
    if isinstance(A, FanBeam2D):
        return FanBeam2D((grid, grid), angles, s["detectors"], s["source_origin"], s["origin_detector"], pixel,
                         s["detector_spacing"])
    return ParallelBeam2D((grid, grid), angles, s["detectors"], pixel, s["detector_spacing"])


def check_limited_angle(card: dict, A, path) -> tuple[int, tuple[float, float]]:
    """``(grid, arc range in degrees)`` of a limited-angle model's card; a ``ValueError`` naming both when ``A``'s
    scanner, field of view or arc is not what the model was trained for."""
    entry = card.get("limited_angle")
    if not isinstance(entry, dict) or not {"grid", "arc_degrees", "scanner"} <= set(entry):
        raise ValueError(f"model: the card of {path} lacks limited_angle.grid, .arc_degrees and .scanner")
    trained, here = entry["scanner"], scanner_of(A)
    diff = [k for k, v in trained.items() if (here.get(k) != v if isinstance(v, str)
                                               else not (k in here and math.isclose(here[k], v, rel_tol=1e-3)))]
    if diff:
        raise ValueError(f"model: {path} was trained for the scanner {trained}; these data are {here} "
                         f"(differs in {', '.join(diff)})")
    lo, hi = (float(v) for v in entry["arc_degrees"])
    span = math.degrees(arc_of(A._np_angles)[1])
    if not lo - ARC_TOLERANCE <= span <= hi + ARC_TOLERANCE:
        raise ValueError(f"model: {path} was trained for arcs of {lo:g}-{hi:g} degrees; these data span {span:.1f} "
                         "degrees")
    return int(entry["grid"]), (lo, hi)


def limited_angle(A, y: torch.Tensor, model, progress: bool = False):
    """TV with the disc bounds in the arc's canonical frame on the model's grid, the network, turned back and
    resampled onto ``A``'s grid: a ``Reconstruction``. ``model`` is a loaded ``limited-angle`` model."""
    from recon.reconstruct import reconstruct  # here: reconstruct dispatches to this module

    start = time.perf_counter()
    grid, _ = check_limited_angle(model.card, A, model.path)
    centre, span = arc_of(A._np_angles)
    canonical = canonical_operator(A, grid)
    tv = reconstruct(canonical, y, "tv", lam="rule", support="disc", progress=progress)
    dtype = next(model.network.parameters()).dtype
    x = rotate(eval_output(model.network, tv.x.to(dtype)).to(tv.x.dtype), centre)  # eval_output: no gradients
    if tuple(x.shape[-2:]) != tuple(A.image_shape):
        x = F.interpolate(x, size=tuple(A.image_shape), mode="bilinear", align_corners=False)
    params = {"model": str(model.path), "grid": grid, "arc_centre_degrees": round(math.degrees(centre), 4),
              "arc_degrees": round(math.degrees(span), 4), "lam": tv.parameters.get("lam"),
              "lam_rule": tv.parameters.get("lam_rule"), "support": "disc"}
    return Reconstruction(x.clamp_min(0), "limited-angle", tv.iterations, time.perf_counter() - start, params)
