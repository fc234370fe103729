"""3D circular cone-beam CT on ASTRA's CUDA projectors (ASTRA has no CPU 3D projector)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from operators.ct import _AstraCT, _astra, _positive, _shape, validate_angles

__all__ = ["ConeBeam3D"]


class ConeBeam3D(_AstraCT):
    r"""3D circular cone-beam ray transform with a flat detector (ASTRA ``cone``; CUDA only).

    Follows ASTRA's 3D ``cone`` conventions exactly: volume ``(D, H, W)`` indexed ``(z, y, x)``
    with every index increasing with its coordinate -- note that in ASTRA's 3D volumes the row
    index runs along +y, the opposite of its 2D images, so one slice of a cone-beam volume is
    the 2D image flipped vertically -- and projections ``(rows, views, cols)`` with rows along
    +z. ASTRA has no CPU 3D projector, so CPU tensors raise a clear error.

    Args:
        volume_shape: ``(D, H, W)`` voxels.
        angles: source angles in radians.
        detector_shape: ``(rows, cols)`` detector cells.
        source_origin: source to rotation-centre distance in mm.
        origin_detector: rotation-centre to detector distance in mm.
        voxel_size: isotropic voxel size in mm.
        detector_spacing: detector cell size in mm (one number, or ``(row, col)``).

    Shapes:
        ``(B, 1, D, H, W) -> (B, 1, rows, views, cols)``.

    Example:
        >>> import numpy as np
        >>> A = ConeBeam3D((32, 32, 32), np.linspace(0, 2 * np.pi, 20, endpoint=False), (48, 48), 200.0, 100.0)
        >>> A.out_shape
        (1, 48, 20, 48)
    """

    geometry = "cone"

    def __init__(self, volume_shape: Sequence[int], angles, detector_shape: Sequence[int], source_origin: float,
                 origin_detector: float, voxel_size: float = 1.0, detector_spacing=1.0) -> None:
        volume_shape = _shape("volume_shape", volume_shape, 3)
        detector_shape = _shape("detector_shape", detector_shape, 2)
        angles = validate_angles(angles)
        spacing = detector_spacing if isinstance(detector_spacing, (tuple, list)) else (detector_spacing,) * 2
        self.detector_spacing = tuple(_positive("detector_spacing", s) for s in _shape_any(spacing))
        self.source_origin = _positive("source_origin", source_origin)
        self.origin_detector = _positive("origin_detector", origin_detector)
        voxel_size = _positive("voxel_size", voxel_size)
        half_diag = 0.5 * math.hypot(volume_shape[1], volume_shape[2]) * voxel_size
        if self.source_origin <= half_diag:
            raise ValueError(f"source_origin: the source must lie outside the volume (> {half_diag:.3f} mm), "
                             f"got {self.source_origin}")
        rows, cols = detector_shape
        super().__init__((1, *volume_shape), (1, rows, len(angles), cols), angles, voxel_size)
        self.volume_shape, self.detector_shape = volume_shape, detector_shape

    def _geoms(self) -> tuple[dict, dict]:
        astra = _astra()
        D, H, W = self.volume_shape
        p = self.pixel_size
        rows, cols = self.detector_shape
        vol = astra.create_vol_geom(H, W, D)
        proj = astra.create_proj_geom("cone", self.detector_spacing[1] / p, self.detector_spacing[0] / p, rows, cols,
                                      self._np_angles, self.source_origin / p, self.origin_detector / p)
        return vol, proj

    def _run_cuda(self, src: torch.Tensor, backward: bool) -> torch.Tensor:
        astra = _astra()
        vol_geom, proj_geom = self._geoms()
        pid = self._handle("cone_3d", lambda: astra.create_projector("cuda3d", proj_geom, vol_geom))
        shape = self.in_shape if backward else self.out_shape
        flat = src.detach().to(torch.float32).contiguous().reshape(-1, *src.shape[2:])
        out = torch.empty((flat.shape[0], *shape[1:]), dtype=torch.float32, device=src.device)
        for k in range(flat.shape[0]):
            if backward:
                astra.experimental.direct_BP3D(pid, out[k], flat[k])
            else:
                astra.experimental.direct_FP3D(pid, flat[k], out[k])
        return (out * self.pixel_size).reshape(src.shape[0], *shape).to(src.dtype)

    def _forward(self, x):
        self._require_cuda(x, "x")
        return self._run_cuda(x, backward=False)

    def _adjoint(self, y):
        self._require_cuda(y, "y")
        return self._run_cuda(y, backward=True)

    def _require_cuda(self, t: torch.Tensor, name: str) -> None:
        if not t.is_cuda:
            raise RuntimeError(f"{name}: ConeBeam3D needs a CUDA tensor (ASTRA has no CPU 3D projector), "
                               f"got a tensor on {t.device}; move it with .cuda() on a machine with a GPU")

    def extra_repr(self) -> str:
        return (f"volume_shape={self.volume_shape}, views={len(self.angles)}, detector_shape={self.detector_shape}, "
                f"source_origin={self.source_origin}, origin_detector={self.origin_detector}, "
                f"voxel_size={self.pixel_size}")


def _shape_any(spacing) -> tuple:
    if len(spacing) != 2:
        raise ValueError(f"detector_spacing: expected one number or (row, col), got {spacing!r}")
    return tuple(spacing)
