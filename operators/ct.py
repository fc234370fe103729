r"""CT ray transforms on the ASTRA toolbox, in physical units.

Conventions (identical to ASTRA's 2D conventions, so data prepared for ASTRA
reconstructs the same way):

* image pixel ``(row i, col j)`` of an ``H x W`` image sits at
  ``x = (j - (W-1)/2) * pixel_size``, ``y = ((H-1)/2 - i) * pixel_size``
  (x to the right, y up, row 0 at the top);
* at angle ``theta`` (radians, any 1-D array) parallel rays travel along
  ``(sin theta, -cos theta)`` and hit the detector at
  ``s = x cos theta + y sin theta``; detector index ``d`` sits at
  ``s = (d - (n-1)/2) * detector_spacing``;
* fan beam (flat detector): the source is at ``(sin theta, -cos theta) * source_origin``
  and the detector centre at ``(-sin theta, cos theta) * origin_detector``,
  detector direction ``(cos theta, sin theta)``; ``detector_spacing`` is measured
  on the detector (not at the isocentre).

Values are line integrals in millimetres x attenuation: a measured
``-log(I / I0)`` sinogram plugs in directly, and an image in 1/mm comes out of
FBP. On CPU the 2D projectors are ASTRA's (``linear`` for parallel beam,
``line_fanflat`` for fan beam) whose back-projection is the exact transpose,
so the normalised adjoint mismatch is ~3e-10 (256 x 256). CPU backends (``set_cpu_backend``), equal
to float32 rounding: ``"astra"``, the projector per slice over threads (float32); ``"sparse"``, its
exact system matrix cached as torch CSR (``operators.ct_matrix``), one product per batch, float64
inputs in float64, 5-25x faster on 2 cores (1 to 32 slices) but built on the operator's first
CPU call (~2 s at 256 x 256 with 60 views); ``"auto"`` (default): sparse whenever the matrix fits
``operators.ct_matrix.SPARSE_MEMORY_BUDGET`` (1 GiB; float64 inputs need twice the bytes), else
ASTRA -- a rule on the operator and dtype only, so results never depend on earlier calls.
For a single cheap call on a large operator, ``set_cpu_backend("astra")`` skips the build.
On CUDA, tensors stay on the device (DLPack): a batch of parallel-beam slices
is one ASTRA 3D call (split into chunks when ASTRA's texture copy of the chunk would not fit in
``CUDA_MEMORY_FRACTION`` of the free device memory, or beyond ``MAX_SLICES_PER_CALL`` slices; see
``cuda_chunks``); fan-beam slices use the 2D CUDA projector slice by slice.
ASTRA's GPU back-projector (pixel-driven) is not the exact adjoint of its ray-driven
projector: normalised dot-test mismatch 7e-4 to 4e-3 on random data (H100); the
solvers reach the CPU results with it (tests marked ``gpu``).
3D cone beam is in ``operators.cone``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from operators.base import LinearOperator, values_trusted
from operators.ct_matrix import BUILD_LOCK, SystemMatrix, check_backend, choose, estimate_nnz, matrix_from_projector

__all__ = ["ParallelBeam2D", "FanBeam2D", "ct_operator", "validate_angles", "cuda_chunks"]

_POOL: ThreadPoolExecutor | None = None

#: CUDA: at most this many slices per ASTRA 3D call (bounds ASTRA's texture depth and handle cache)
MAX_SLICES_PER_CALL = 1024
#: CUDA: fraction of the free device memory one 3D call may take for ASTRA's internal copies
CUDA_MEMORY_FRACTION = 0.5


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="astra")
    return _POOL


def _astra():
    try:
        import astra
        import astra.experimental  # noqa: F401  (direct_FP3D/BP3D for the CUDA path; not imported by astra)
    except ImportError as err:  # pragma: no cover - astra is a dependency
        raise ImportError("the CT operators need the ASTRA toolbox: pip install astra-toolbox") from err
    return astra


def validate_angles(angles) -> np.ndarray:
    """Angles as a float64 numpy array, checked: 1-D, non-empty, finite (radians)."""
    if isinstance(angles, torch.Tensor):
        angles = angles.detach().cpu().numpy()
    try:
        a = np.asarray(angles, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"angles: expected a 1-D array of angles in radians, got {type(angles).__name__}") from err
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"angles: expected a non-empty 1-D array of angles in radians, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("angles: expected finite values, found NaN or Inf")
    return a


def cuda_chunks(n: int, bytes_per_slice: int, free_bytes: int | None,
                max_slices: int = MAX_SLICES_PER_CALL, fraction: float = CUDA_MEMORY_FRACTION) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``n`` slices, each chunk at most ``max_slices`` long and at
    most ``fraction * free_bytes / bytes_per_slice`` (at least one slice; no memory bound when
    ``free_bytes`` is None); chunks are as even as possible.

    Example:
        >>> cuda_chunks(10, bytes_per_slice=100, free_bytes=800)  # at most 4 slices per call
        [(0, 3), (3, 7), (7, 10)]
    """
    per_call = max_slices if free_bytes is None else int(fraction * free_bytes // max(bytes_per_slice, 1))
    per_call = max(1, min(max_slices, per_call))
    count = -(-n // per_call)
    bounds = [round(k * n / count) for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device in bytes (None for other devices)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def _positive(name: str, value, integer: bool = False):
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.floating, np.integer))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive finite number (mm)"
        raise ValueError(f"{name}: expected {kind}, got {value!r}")
    return int(value) if integer else float(value)


def _shape(name: str, shape, n: int) -> tuple[int, ...]:
    try:
        shape = tuple(shape)
    except TypeError as err:
        raise TypeError(f"{name}: expected a tuple of {n} positive integers, got {shape!r}") from err
    if len(shape) != n:
        raise ValueError(f"{name}: expected a tuple of {n} positive integers, got {shape!r}")
    return tuple(_positive(name, s, integer=True) for s in shape)


class _AstraCT(LinearOperator):
    """Shared machinery: validation, ASTRA handles, CPU threads, CUDA dispatch."""

    #: Chambolle-Pock's "auto" steps use its balanced rule for ray transforms (recon/chambolle_pock.py)
    balanced_steps = True

    def __init__(self, in_shape, out_shape, angles: np.ndarray, pixel_size: float) -> None:
        super().__init__(in_shape, out_shape)
        self.register_buffer("angles", torch.as_tensor(angles, dtype=torch.float64))
        self._angles_np = np.asarray(angles, dtype=np.float64)  # read per call: never from a CUDA buffer
        self.pixel_size = pixel_size
        self._handles: dict[str, int] = {}

    # ASTRA handles are process-local: never pickle or deep-copy them.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __del__(self):
        handles = self.__dict__.get("_handles") or {}
        try:
            astra = _astra()
            for key, pid in handles.items():
                (astra.projector3d if key.endswith("3d") else astra.projector).delete(pid)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    @property
    def _np_angles(self) -> np.ndarray:
        return self._angles_np

    def _check(self, x, shape, name):
        super()._check(x, shape, name)
        if x.is_complex():
            raise TypeError(f"{name}: expected a real floating-point tensor, got {x.dtype}")
        if not values_trusted() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: contains NaN or Inf values")

    def _handle(self, key: str, make) -> int:
        if key not in self._handles:
            self._handles[key] = make()
        return self._handles[key]

    # -- ASTRA 2D projectors, one call per slice: threads on CPU, device tensors on CUDA --------
    def _run_2d(self, src: torch.Tensor, out_shape: Sequence[int], backward: bool) -> torch.Tensor:
        """Slice-by-slice 2D ASTRA calls; tensors go to ASTRA through DLPack (no copies, no host
        round trip on CUDA). CPU slices are spread over a thread pool (ASTRA releases the GIL)."""
        astra = _astra()
        lead = src.shape[: src.ndim - 2]
        flat = src.detach().to(torch.float32).contiguous().reshape(-1, *src.shape[-2:])
        out = torch.empty((flat.shape[0], *out_shape[-2:]), dtype=torch.float32, device=src.device)
        if src.is_cuda:
            pid = self._handle("cuda2d", lambda: astra.create_projector("cuda", self._proj_geom(), self._vol_geom()))
        else:
            pid = self._handle("cpu", self._make_cpu_projector)
        fn = astra.projector.direct_BP if backward else astra.projector.direct_FP
        run = lambda k: fn(pid, flat[k], out=out[k])  # noqa: E731
        if src.is_cuda or flat.shape[0] == 1:
            for k in range(flat.shape[0]):
                run(k)
        else:
            list(_pool().map(run, range(flat.shape[0])))
        out.mul_(self.pixel_size)
        return out.reshape(*lead, *out_shape[-2:]).to(src.dtype)

    # -- diagonal preconditioning: all entries are >= 0, so |A| 1 = A 1 ---------------
    def abs_row_sums(self, like: torch.Tensor) -> torch.Tensor:
        return self._forward(torch.ones((1, *self.in_shape), dtype=like.dtype, device=like.device))

    def abs_col_sums(self, like: torch.Tensor) -> torch.Tensor:
        return self._adjoint(torch.ones((1, *self.out_shape), dtype=like.dtype, device=like.device))

    # -- CUDA: slice by slice in 2D unless a subclass batches (ParallelBeam2D: one 3D call) ----
    def _forward_cuda(self, x):
        return self._run_2d(x, self.out_shape, backward=False)

    def _adjoint_cuda(self, y):
        return self._run_2d(y, self.in_shape, backward=True)


class _AstraCT2D(_AstraCT):
    def __init__(self, image_shape, angles, detector_count, pixel_size, detector_spacing, channels) -> None:
        image_shape = _shape("image_shape", image_shape, 2)
        angles = validate_angles(angles)
        self.detector_count = _positive("detector_count", detector_count, integer=True)
        channels = _positive("channels", channels, integer=True)
        pixel_size = _positive("pixel_size", pixel_size)
        self.detector_spacing = _positive("detector_spacing", detector_spacing)
        super().__init__((channels, *image_shape), (channels, len(angles), self.detector_count), angles, pixel_size)
        self.image_shape = image_shape
        self.cpu_backend = "auto"
        self._matrix: SystemMatrix | None = None
        self._nnz: int | None = None

    def __getstate__(self):
        return {**super().__getstate__(), "_matrix": None}

    def _vol_geom(self) -> dict:
        # unit pixels; outputs are rescaled by pixel_size (lengths below are in pixels)
        return _astra().create_vol_geom(*self.image_shape)

    def _make_cpu_projector(self, angles: np.ndarray | None = None) -> int:
        return _astra().create_projector(self._cpu_kind, self._proj_geom(angles), self._vol_geom())

    def view_subset(self, views) -> "_AstraCT2D":
        """The same geometry on some of its views: the operator of the sinogram rows ``y[..., views, :]``
        (``views`` integer indices into ``angles``), on the same device and CPU backend.

        Example:
            >>> import numpy as np, torch
            >>> A = ParallelBeam2D((16, 16), np.linspace(0, np.pi, 6, endpoint=False), 24)
            >>> x = torch.rand(1, 1, 16, 16)
            >>> torch.allclose(A.view_subset([1, 4])(x), A(x)[..., [1, 4], :])
            True
        """
        n = len(self._np_angles)
        idx = np.asarray(views)
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 \
                or idx.max() >= n:
            raise ValueError(f"views: expected a non-empty 1-D sequence of view indices in [0, {n}), got "
                             f"{np.array2string(idx, threshold=8)}")
        op = self._with_angles(self._np_angles[idx]).set_cpu_backend(self.cpu_backend)
        return op.to(self.angles.device)

    # -- CPU: ASTRA per slice, or its system matrix as torch CSR (see the module docstring) ----
    def set_cpu_backend(self, backend: str) -> "_AstraCT2D":
        """``"auto"``, ``"sparse"`` or ``"astra"`` for CPU tensors; returns the operator."""
        self.cpu_backend = check_backend(backend)
        return self

    def cpu_backend_for(self, dtype: torch.dtype = torch.float32) -> str:
        """``"sparse"`` or ``"astra"``: the backend of CPU calls on ``dtype`` tensors."""
        if self.cpu_backend == "auto" and self._nnz is None:
            self._nnz = self._matrix.nnz if self._matrix is not None else estimate_nnz(
                _astra(), self._make_cpu_projector, self._np_angles)
        return choose(self.cpu_backend, self._nnz or 0, dtype == torch.float64)

    def _system_matrix(self) -> SystemMatrix:
        with BUILD_LOCK:
            if self._matrix is None:
                pid = self._handle("cpu", self._make_cpu_projector)
                self._matrix = SystemMatrix(matrix_from_projector(_astra(), pid), self.pixel_size)
                self._nnz = self._matrix.nnz
        return self._matrix

    def _run_cpu(self, src: torch.Tensor, out_shape, backward: bool) -> torch.Tensor:
        if self.cpu_backend_for(src.dtype) == "astra":
            return self._run_2d(src, out_shape, backward)
        dtype = torch.float64 if src.dtype == torch.float64 else torch.float32
        flat = src.detach().to(dtype).reshape(src.numel() // (src.shape[-1] * src.shape[-2]), -1)
        out = self._system_matrix().apply(flat, backward)
        return out.reshape(*src.shape[:-2], *out_shape[-2:]).to(src.dtype)

    def _forward(self, x):
        return self._forward_cuda(x) if x.is_cuda else self._run_cpu(x, self.out_shape, backward=False)

    def _adjoint(self, y):
        return self._adjoint_cuda(y) if y.is_cuda else self._run_cpu(y, self.in_shape, backward=True)

    def extra_repr(self) -> str:
        return (f"image_shape={self.image_shape}, views={len(self.angles)}, detector_count={self.detector_count}, "
                f"pixel_size={self.pixel_size}, detector_spacing={self.detector_spacing}")


class ParallelBeam2D(_AstraCT2D):
    r"""2D parallel-beam ray transform (ASTRA), line integrals in mm x attenuation.

    .. math:: (A x)(\theta, s) = \int x(s\,\theta + t\,\theta^\perp)\,dt,\quad \theta = (\cos\theta, \sin\theta)

    Args:
        image_shape: ``(H, W)`` pixels.
        angles: projection angles in radians (any 1-D array, not only uniform).
        detector_count: number of detector cells.
        pixel_size: image pixel size in mm.
        detector_spacing: detector cell width in mm.
        channels: ``C`` in the ``(B, C, H, W)`` images.

    Shapes:
        ``(B, C, H, W) -> (B, C, views, detector_count)``.

    Example:
        >>> import numpy as np, torch
        >>> A = ParallelBeam2D((64, 64), np.linspace(0, np.pi, 30, endpoint=False), 92, pixel_size=0.5)
        >>> y = A(torch.ones(2, 1, 64, 64))     # a 32 mm square of attenuation 1/mm
        >>> y.shape, round(float(y[0, 0, 0, 46]), 3)  # central ray at angle 0 crosses 32 mm
        (torch.Size([2, 1, 30, 92]), 32.0)
    """

    geometry = "parallel"
    _cpu_kind = "linear"

    def __init__(self, image_shape: Sequence[int], angles, detector_count: int, pixel_size: float = 1.0,
                 detector_spacing: float = 1.0, channels: int = 1) -> None:
        super().__init__(image_shape, angles, detector_count, pixel_size, detector_spacing, channels)

    def _with_angles(self, angles: np.ndarray) -> "ParallelBeam2D":
        return ParallelBeam2D(self.image_shape, angles, self.detector_count, self.pixel_size, self.detector_spacing,
                              self.in_shape[0])

    def _proj_geom(self, angles: np.ndarray | None = None) -> dict:
        return _astra().create_proj_geom("parallel", self.detector_spacing / self.pixel_size, self.detector_count,
                                         self._np_angles if angles is None else angles)

    # CUDA: the whole batch of slices as one parallel-beam 3D call.
    def _geom3d(self, n_slices: int) -> tuple[dict, dict]:
        astra = _astra()
        H, W = self.image_shape
        d = self.detector_spacing / self.pixel_size
        th = self._np_angles
        # ASTRA 3D volumes index rows with increasing y, 2D with decreasing y: negate y to keep
        # the 2D convention. Columns: ray (3), detector centre (3), u (3), v (3).
        vec = np.zeros((len(th), 12))
        vec[:, 0], vec[:, 1] = np.sin(th), np.cos(th)
        vec[:, 6], vec[:, 7] = np.cos(th) * d, -np.sin(th) * d
        vec[:, 11] = 1.0
        proj = astra.create_proj_geom("parallel3d_vec", n_slices, self.detector_count, vec)
        vol = astra.create_vol_geom(H, W, n_slices)
        return vol, proj

    def _cuda_3d(self, src: torch.Tensor, backward: bool) -> torch.Tensor:
        """Slices (batch x channels) through ASTRA's 3D CUDA kernels, in memory-bounded chunks."""
        astra = _astra()
        C, H, W = self.in_shape
        B = src.shape[0]
        n = B * C
        views, det = len(self.angles), self.detector_count
        src_shape, out_shape = ((views, det), (H, W)) if backward else ((H, W), (views, det))
        flat = src.detach().to(torch.float32).contiguous().reshape(n, *src_shape)
        out = torch.empty((n, *out_shape), dtype=torch.float32, device=src.device)
        # ASTRA copies the chunk's input into a texture: 4 bytes per input value
        chunks = cuda_chunks(n, 4 * src_shape[0] * src_shape[1], _free_device_bytes(src.device))
        for a, b in chunks:
            vol_proj = lambda m=b - a: self._geom3d(m)  # noqa: E731  (built once per chunk size)
            pid = self._handle(f"cuda3d_{b - a}_3d", lambda: astra.create_projector("cuda3d", *vol_proj()[::-1]))
            if backward:
                astra.experimental.direct_BP3D(pid, out[a:b], flat[a:b])
            else:
                astra.experimental.direct_FP3D(pid, flat[a:b], out[a:b])
        out.mul_(self.pixel_size)
        return out.reshape(B, C, *out_shape).to(src.dtype)

    def _forward_cuda(self, x):
        return self._cuda_3d(x, backward=False)

    def _adjoint_cuda(self, y):
        return self._cuda_3d(y, backward=True)


class FanBeam2D(_AstraCT2D):
    r"""2D fan-beam ray transform with a flat detector (ASTRA ``fanflat``).

    .. math:: (A x)(\theta, u) = \int_{\text{ray from source to detector cell } u} x\,d\ell

    Args:
        image_shape: ``(H, W)`` pixels.
        angles: source angles in radians (any 1-D array).
        detector_count: number of detector cells.
        source_origin: source to rotation-centre distance in mm.
        origin_detector: rotation-centre to detector distance in mm.
        pixel_size: image pixel size in mm.
        detector_spacing: detector cell width in mm, on the detector.
        channels: ``C`` in the ``(B, C, H, W)`` images.

    Shapes:
        ``(B, C, H, W) -> (B, C, views, detector_count)``.

    Example:
        >>> import numpy as np, torch
        >>> A = FanBeam2D((64, 64), np.linspace(0, 2 * np.pi, 40, endpoint=False), 128,
        ...               source_origin=400.0, origin_detector=200.0, pixel_size=0.5, detector_spacing=0.5)
        >>> A(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 1, 40, 128])
    """

    geometry = "fan"
    _cpu_kind = "line_fanflat"

    def __init__(self, image_shape: Sequence[int], angles, detector_count: int, source_origin: float,
                 origin_detector: float, pixel_size: float = 1.0, detector_spacing: float = 1.0,
                 channels: int = 1) -> None:
        super().__init__(image_shape, angles, detector_count, pixel_size, detector_spacing, channels)
        self.source_origin = _positive("source_origin", source_origin)
        if not (isinstance(origin_detector, (int, float)) and math.isfinite(origin_detector) and origin_detector >= 0):
            raise ValueError(f"origin_detector: expected a finite number >= 0 (mm), got {origin_detector!r}")
        self.origin_detector = float(origin_detector)
        half_diag = 0.5 * math.hypot(*self.image_shape) * self.pixel_size
        if self.source_origin <= half_diag:
            raise ValueError(f"source_origin: the source must lie outside the image (> {half_diag:.3f} mm, "
                             f"half the image diagonal), got {self.source_origin}")

    def _with_angles(self, angles: np.ndarray) -> "FanBeam2D":
        return FanBeam2D(self.image_shape, angles, self.detector_count, self.source_origin, self.origin_detector,
                         self.pixel_size, self.detector_spacing, self.in_shape[0])

    def _proj_geom(self, angles: np.ndarray | None = None) -> dict:
        p = self.pixel_size
        return _astra().create_proj_geom("fanflat", self.detector_spacing / p, self.detector_count,
                                         self._np_angles if angles is None else angles, self.source_origin / p,
                                         self.origin_detector / p)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", source_origin={self.source_origin}, origin_detector={self.origin_detector}"


def ct_operator(geometry: dict, angles, detector_count: int) -> _AstraCT2D:
    """Build a 2D CT operator from a geometry dict (the keys of ``data.hdf5.CTData.geometry``).

    Example:
        >>> A = ct_operator({"geometry": "parallel", "image_shape": (32, 32), "pixel_size": 0.5,
        ...                  "detector_spacing": 0.5}, [0.0, 1.0], 48)
        >>> type(A).__name__, A.out_shape
        ('ParallelBeam2D', (1, 2, 48))
    """
    kind = geometry.get("geometry")
    common = dict(pixel_size=geometry.get("pixel_size", 1.0), detector_spacing=geometry.get("detector_spacing", 1.0))
    if kind == "parallel":
        return ParallelBeam2D(geometry["image_shape"], angles, detector_count, **common)
    if kind == "fan":
        return FanBeam2D(geometry["image_shape"], angles, detector_count, geometry["source_origin"],
                         geometry["origin_detector"], **common)
    raise ValueError(f"geometry: expected 'parallel' or 'fan', got {kind!r}")
