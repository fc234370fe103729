"""k-space input and output: the layout ``recon mri --input`` reads.

k-space layout (one 2D slice, or a stack of 2D slices), HDF5::

    /kspace      complex (coils, H, W)   centred (DC at (H // 2, W // 2)), zeros where not sampled
                 or (slices, coils, H, W)  a stack (the coil axis is then required)
    /mask        bool or 0/1 (H, W), optional   the sampling pattern, shared by every slice of a
                 or (slices, H, W) for a stack  stack or one per slice; if absent, a position
                                                counts as sampled where any coil is nonzero
    /reference   float (H, W), optional  a magnitude image on the same scale as the
                 or (slices, H, W)       root-sum-of-squares of the coil images (enables metrics)

A ``.npy`` file holding the complex ``(coils, H, W)`` array (or ``(H, W)`` for one
coil, or ``(slices, coils, H, W)``) is read the same way, without the optional
datasets. HDF5 files are opened, only the requested slices read, and closed before
returning (also when the reader raises). The public fastMRI files have a layout of
their own: see data/fastmri.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from data.hdf5 import Slices, _check_read, _fail, _selection, _take, atomic_path, open_hdf5
from data.limits import array_bytes, check_memory

__all__ = ["KSpaceData", "read_kspace", "write_kspace", "remove_readout_oversampling"]


@dataclass
class KSpaceData:
    """Complex k-space with its sampling mask.

    Attributes:
        kspace: ``(coils, H, W)`` complex64 for one slice, ``(slices, coils, H, W)`` for a stack.
        mask: ``(H, W)`` bool, ``(slices, H, W)`` for a stack (a mask the file shares between
            slices is repeated for each).
        reference: optional ``(H, W)`` float32 magnitude image, ``(slices, H, W)`` for a stack.
        source: where it came from.
    """

    kspace: np.ndarray
    mask: np.ndarray
    reference: np.ndarray | None = None
    source: str = field(default="")

    @property
    def fully_sampled(self) -> bool:
        return bool(self.mask.all())


def _check_kspace(dtype: np.dtype, shape: tuple, path) -> None:
    """Checks from the metadata, before any sample is read."""
    if dtype.kind != "c":
        raise _fail(path, f"'kspace': expected complex k-space (coils, H, W), got real {dtype} "
                          "(a magnitude image, or real and imaginary parts on a separate axis?)")
    if len(shape) not in (2, 3, 4) or min(shape) < 1:
        raise _fail(path, f"'kspace': expected shape (coils, H, W), (H, W) or (slices, coils, H, W), got {shape}")


def _read_kspace(array, path, slices: Slices) -> tuple[np.ndarray, int | list[int] | None]:
    """The requested slices of a k-space array or dataset, as ``(coils, H, W)`` or ``(slices, coils, H, W)``."""
    _check_kspace(array.dtype, array.shape, path)
    if slices is not None and len(array.shape) != 4:
        raise _fail(path, f"slices: the file holds one slice {array.shape}, not a stack "
                          "(slices, coils, H, W); leave slices=None")
    index = _selection(slices, array.shape[0], path) if len(array.shape) == 4 else None
    if isinstance(array, h5py.Dataset):  # complex64 copy, masked copy and magnitudes: 20 bytes per sample
        _check_read(array, "kspace", path, index, 20)
    k = _take(array, index)
    if not np.all(np.isfinite(k)):
        raise _fail(path, "'kspace' contains NaN or Inf values")
    return (k[None] if k.ndim == 2 else k).astype(np.complex64), index


def _load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array, its declared size checked against the memory limit before it is read."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(fh)
    except (OSError, ValueError) as err:
        raise _fail(path, f"not a readable .npy file ({err})") from err
    # the array, its complex64 copy, the masked copy and the magnitudes
    check_memory(array_bytes(shape, dtype.itemsize + 20), f"{path}: array {shape} {dtype}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise _fail(path, f"not a readable .npy file ({err})") from err


def _optional(f: h5py.File, name: str, kshape: tuple, index, path) -> np.ndarray | None:
    """``mask`` or ``reference``: ``(H, W)``, or ``(slices, H, W)`` beside a stack (a mask may be shared)."""
    if name not in f:
        return None
    ds = f[name]
    hw = tuple(kshape[-2:])
    if len(kshape) < 4:
        allowed = [hw]
    else:
        allowed = [hw, (kshape[0], *hw)] if name == "mask" else [(kshape[0], *hw)]
    if not isinstance(ds, h5py.Dataset) or ds.shape not in allowed:
        found = f"has shape {ds.shape}" if isinstance(ds, h5py.Dataset) else "is a group"
        expected = " or ".join(f"(slices, H, W) = {s}" if len(s) == 3 else f"the k-space's (H, W) = {s}"
                               for s in allowed)
        raise _fail(path, f"dataset '{name}' {found}, expected {expected}")
    if ds.dtype.kind not in "biuf":
        raise _fail(path, f"dataset '{name}': expected real values, got {ds.dtype}")
    index = index if len(ds.shape) == 3 else None
    _check_read(ds, name, path, index, 2 if name == "mask" else 4)
    arr = _take(ds, index)
    if not np.all(np.isfinite(arr)):
        raise _fail(path, f"dataset '{name}' contains NaN or Inf values")
    return arr


def _sampling_mask(k: np.ndarray, mask: np.ndarray | None, index, path) -> np.ndarray:
    """The file's mask (repeated per slice) or the positions where any coil is nonzero; none may be empty."""
    per_slice = k.shape[:-3] + k.shape[-2:]
    mask = np.abs(k).sum(-3) > 0 if mask is None else np.broadcast_to(mask != 0, per_slice).copy()
    empty = ~mask.reshape(-1, mask.shape[-2] * mask.shape[-1]).any(1)
    if empty.any():
        where = "" if mask.ndim == 2 else \
            f" in slice(s) {(np.flatnonzero(empty) if index is None else np.asarray(index)[empty]).tolist()}"
        raise _fail(path, f"the sampling mask is empty (no k-space position is sampled){where}")
    return mask


def read_kspace(path: str | os.PathLike, slices: Slices = None) -> KSpaceData:
    """Read k-space from the HDF5 layout above or a ``.npy`` array.

    Args:
        path: an HDF5 file in the layout above, or a ``.npy`` file.
        slices: for a stack, which slices to read (only those are read from an HDF5 file): None
            for all, an int for one (its axis dropped, so the result looks like a one-slice file),
            a slice or a list of ints (the axis kept, in the order given). None for one slice.

    Returns:
        ``KSpaceData`` with the k-space zeroed outside the mask; a one-slice file gives exactly
        what it gave before stacks existed.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "scan.h5")
        >>> _ = write_kspace(p, np.ones((2, 8, 8), np.complex64))
        >>> d = read_kspace(p); d.kspace.shape, d.fully_sampled
        ((2, 8, 8), True)
        >>> _ = write_kspace(p, np.ones((5, 2, 8, 8), np.complex64), mask=np.ones((8, 8)))
        >>> d = read_kspace(p, slices=[4, 0]); d.kspace.shape, d.mask.shape
        ((2, 2, 8, 8), (2, 8, 8))
    """
    path = Path(path)
    mask = reference = None
    if path.suffix == ".npy":
        if not path.is_file():
            raise (ValueError(f"input: {path} is a folder; expected a .npy file") if path.is_dir() else
                   FileNotFoundError(f"input: no such file {path}"))
        k, index = _read_kspace(_load_npy(path), path, slices)
    else:
        with open_hdf5(path, "HDF5 or .npy file") as f:
            if "kspace" not in f or not isinstance(f["kspace"], h5py.Dataset):
                raise _fail(path, "missing dataset 'kspace' (complex (coils, H, W) or (slices, coils, H, W); "
                                  "see data/mri.py for the layout)")
            if "ismrmrd_header" in f:
                raise _fail(path, "this is a fastMRI file (it has 'ismrmrd_header'), whose layout differs "
                                  "(single-coil (slices, H, W), a (W,) column mask): read it with "
                                  "data.fastmri.read_fastmri")
            shape = f["kspace"].shape
            k, index = _read_kspace(f["kspace"], path, slices)
            mask = _optional(f, "mask", shape, index, path)
            reference = _optional(f, "reference", shape, index, path)
    mask = _sampling_mask(k, mask, index, path)
    ref = None if reference is None else reference.astype(np.float32)
    return KSpaceData(k * mask[..., None, :, :], mask, ref, str(path))


def write_kspace(path, kspace: np.ndarray, mask: np.ndarray | None = None,
                 reference: np.ndarray | None = None) -> Path:
    """Write the HDF5 k-space layout (atomically): ``kspace`` ``(coils, H, W)`` or a stack
    ``(slices, coils, H, W)``, ``mask`` and ``reference`` shaped as in the layout.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = write_kspace(os.path.join(tempfile.mkdtemp(), "k.h5"), np.ones((3, 2, 4, 4), np.complex64))
        >>> read_kspace(p).kspace.shape
        (3, 2, 4, 4)
    """
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
