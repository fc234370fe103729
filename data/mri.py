"""k-space input and output: the layout ``recon mri --input`` reads.

k-space layout (one 2D slice), HDF5::

    /kspace      complex (coils, H, W)   centred (DC at (H // 2, W // 2)), zeros where not sampled
    /mask        bool or 0/1 (H, W), optional   the sampling pattern; if absent, a position
                                                counts as sampled where any coil is nonzero
    /reference   float (H, W), optional  a magnitude image on the same scale as the
                                         root-sum-of-squares of the coil images (enables metrics)

A ``.npy`` file holding the complex ``(coils, H, W)`` array (or ``(H, W)`` for one
coil) is read the same way, without the optional datasets. Files are read
completely and closed before returning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from data.hdf5 import _fail, atomic_path

__all__ = ["KSpaceData", "read_kspace", "write_kspace", "remove_readout_oversampling"]


@dataclass
class KSpaceData:
    """Complex k-space with its sampling mask.

    Attributes:
        kspace: ``(coils, H, W)`` complex64.
        mask: ``(H, W)`` bool.
        reference: optional ``(H, W)`` float32 magnitude image.
        source: where it came from.
    """

    kspace: np.ndarray
    mask: np.ndarray
    reference: np.ndarray | None = None
    source: str = field(default="")

    @property
    def fully_sampled(self) -> bool:
        return bool(self.mask.all())


def _check_kspace(k: np.ndarray, path) -> np.ndarray:
    if not np.iscomplexobj(k):
        raise _fail(path, f"'kspace': expected complex k-space (coils, H, W), got real {k.dtype} "
                          "(a magnitude image, or real and imaginary parts on a separate axis?)")
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3 or min(k.shape) < 1:
        raise _fail(path, f"'kspace': expected shape (coils, H, W) or (H, W), got {k.shape}")
    if not np.all(np.isfinite(k)):
        raise _fail(path, "'kspace' contains NaN or Inf values")
    return k.astype(np.complex64)


def _optional(f: h5py.File, name: str, shape: tuple[int, int], path) -> np.ndarray | None:
    if name not in f:
        return None
    arr = np.asarray(f[name][()])
    if arr.shape != shape:
        raise _fail(path, f"dataset '{name}' has shape {arr.shape}, expected the k-space's (H, W) = {shape}")
    if np.iscomplexobj(arr):
        raise _fail(path, f"dataset '{name}': expected real values, got {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise _fail(path, f"dataset '{name}' contains NaN or Inf values")
    return arr


def read_kspace(path: str | os.PathLike) -> KSpaceData:
    """Read k-space from the HDF5 layout above or a ``.npy`` array.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "scan.h5")
        >>> _ = write_kspace(p, np.ones((2, 8, 8), np.complex64))
        >>> d = read_kspace(p); d.kspace.shape, d.fully_sampled
        ((2, 8, 8), True)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input: no such file {path}")
    mask = reference = None
    if path.suffix == ".npy":
        k = _check_kspace(np.load(path, allow_pickle=False), path)
    else:
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise _fail(path, f"not a readable HDF5 or .npy file ({err})") from err
        with f:
            if "kspace" not in f or not isinstance(f["kspace"], h5py.Dataset):
                raise _fail(path, "missing dataset 'kspace' (complex (coils, H, W); see data/mri.py for the layout)")
            k = _check_kspace(np.asarray(f["kspace"][()]), path)
            mask = _optional(f, "mask", k.shape[1:], path)
            reference = _optional(f, "reference", k.shape[1:], path)
    mask = np.abs(k).sum(0) > 0 if mask is None else mask != 0
    if not mask.any():
        raise _fail(path, "the sampling mask is empty (no k-space position is sampled)")
    ref = None if reference is None else reference.astype(np.float32)
    return KSpaceData(k * mask, mask, ref, str(path))


def write_kspace(path, kspace: np.ndarray, mask: np.ndarray | None = None,
                 reference: np.ndarray | None = None) -> Path:
    """Write the HDF5 k-space layout (atomically)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("kspace", data=np.asarray(kspace, dtype=np.complex64))
        if mask is not None:
            f.create_dataset("mask", data=np.asarray(mask, dtype=bool))
        if reference is not None:
            f.create_dataset("reference", data=np.asarray(reference, dtype=np.float32))
    return Path(path)


def remove_readout_oversampling(kspace: np.ndarray, axis: int = -1, factor: int = 2) -> np.ndarray:
    r"""Crop the central ``1/factor`` of the field of view along the readout ``axis``.

    Scanners sample the readout ``factor`` times finer than needed; the image is
    transformed along that axis, its central part kept, and transformed back
    (centred orthonormal FFTs, so values keep their scale per pixel).

    .. math:: k' = \mathcal F\big(\mathrm{crop}(\mathcal F^{-1} k)\big)

    Example:
        >>> import numpy as np
        >>> remove_readout_oversampling(np.ones((2, 8, 16), np.complex64)).shape
        (2, 8, 8)
    """
    n = kspace.shape[axis]
    if n % factor:
        raise ValueError(f"kspace: readout length {n} is not divisible by the oversampling factor {factor}")
    shift = lambda a, f: np.fft.fftshift(f(np.fft.ifftshift(a, axes=axis), axis=axis, norm="ortho"), axes=axis)  # noqa: E731
    image = shift(kspace, np.fft.ifft)
    keep = n // factor
    image = np.take(image, np.arange(n // 2 - keep // 2, n // 2 - keep // 2 + keep), axis=axis)
    return shift(image, np.fft.fft).astype(np.complex64)
