"""HDF5 input and output for CT: the raw-data layout ``recon ct --input`` reads.

Raw-data layout (one 2D slice)::

    /sinogram    float (views, detectors)  line integrals, -log(I / I0)
    /angles      float (views,)            radians
    /reference   float (H, W), optional    an image in the same units as the
                                           reconstruction (1/mm), enables metrics
    attributes on the root group:
        geometry          "parallel" or "fan"
        detector_spacing  mm (on the detector)
        pixel_size        mm (reconstruction grid)
        image_size        int, or [H, W]
        source_origin     mm (fan only)
        origin_detector   mm (fan only)
        noise_std         optional: the sinogram's noise std (for lam = "auto")

Files are opened, read completely and closed before returning; writes go to a
temporary file renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

__all__ = ["CTData", "read_ct", "write_ct", "write_reconstructions", "atomic_path"]

GEOMETRIES = ("parallel", "fan")
_REQUIRED = {"parallel": ("detector_spacing", "pixel_size", "image_size"),
             "fan": ("detector_spacing", "pixel_size", "image_size", "source_origin", "origin_detector")}


@dataclass
class CTData:
    """A sinogram with its geometry, as read from the raw-data layout.

    Attributes:
        sinogram: ``(views, detectors)`` float32.
        angles: ``(views,)`` float64, radians.
        geometry: ``{"geometry": "parallel"|"fan", "detector_spacing": ..., "pixel_size": ...,
            "image_shape": (H, W), ["source_origin", "origin_detector"]}``.
        reference: optional ``(H, W)`` image.
        source: where the data came from (a path or a description).
        noise_std: the sinogram's noise standard deviation when known (simulations; the
            optional root attribute ``noise_std`` of the file).
    """

    sinogram: np.ndarray
    angles: np.ndarray
    geometry: dict
    reference: np.ndarray | None = None
    source: str = field(default="")
    noise_std: float | None = None


def _fail(path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}")


def _dataset(f: h5py.File, name: str, path, ndim: int) -> np.ndarray:
    if name not in f:
        raise _fail(path, f"missing dataset '{name}' (expected a {ndim}-D float array; see data/hdf5.py for the layout)")
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise _fail(path, f"'{name}' is a group, expected a dataset")
    arr = np.asarray(obj[()])
    if arr.ndim != ndim or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise _fail(path, f"dataset '{name}': expected a real {ndim}-D array, got shape {arr.shape} dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise _fail(path, f"dataset '{name}' contains NaN or Inf values")
    return arr


def _geometry(attrs: Mapping, path) -> dict:
    if "geometry" not in attrs:
        raise _fail(path, f"missing attribute 'geometry' (expected one of {GEOMETRIES})")
    kind = attrs["geometry"]
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind not in GEOMETRIES:
        raise _fail(path, f"attribute 'geometry': expected one of {GEOMETRIES}, got {kind!r}")
    geom: dict = {"geometry": kind}
    for key in _REQUIRED[kind]:
        if key not in attrs:
            raise _fail(path, f"missing attribute '{key}' (required for {kind} geometry)")
        value = np.asarray(attrs[key], dtype=np.float64)
        if key == "image_size":
            size = value.astype(int).ravel()
            if size.size not in (1, 2) or np.any(size < 1) or not np.all(size == value.ravel()):
                raise _fail(path, f"attribute 'image_size': expected a positive integer or [H, W], got {attrs[key]!r}")
            geom["image_shape"] = (int(size[0]), int(size[-1]))
        elif value.size != 1 or not np.isfinite(value) or (value <= 0 and key != "origin_detector") or value < 0:
            raise _fail(path, f"attribute '{key}': expected a positive number (mm), got {attrs[key]!r}")
        else:
            geom[key] = float(value)
    return geom


def read_ct(path: str | os.PathLike) -> CTData:
    """Read the raw-data layout; every missing or malformed piece is named in the error.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "scan.h5")
        >>> _ = write_ct(p, np.zeros((10, 20)), np.linspace(0, np.pi, 10, endpoint=False),
        ...              {"geometry": "parallel", "detector_spacing": 1.0, "pixel_size": 1.0, "image_shape": (16, 16)})
        >>> read_ct(p).geometry["image_shape"]
        (16, 16)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input: no such file {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise _fail(path, f"not a readable HDF5 file ({err})") from err
    with f:
        sino = _dataset(f, "sinogram", path, 2).astype(np.float32)
        angles = _dataset(f, "angles", path, 1).astype(np.float64)
        geom = _geometry(f.attrs, path)
        ref = _dataset(f, "reference", path, 2).astype(np.float32) if "reference" in f else None
        noise_std = float(f.attrs["noise_std"]) if "noise_std" in f.attrs else None
    if angles.shape[0] != sino.shape[0]:
        raise _fail(path, f"dataset 'angles' has {angles.shape[0]} entries but 'sinogram' has {sino.shape[0]} views")
    if ref is not None and ref.shape != geom["image_shape"]:
        raise _fail(path, f"dataset 'reference' has shape {ref.shape}, expected image_size {geom['image_shape']}")
    if noise_std is not None and not (np.isfinite(noise_std) and noise_std > 0):
        raise _fail(path, f"attribute 'noise_std' must be a positive number, got {noise_std}")
    return CTData(sino, angles, geom, ref, str(path), noise_std)


def write_ct(path, sinogram: np.ndarray, angles: np.ndarray, geometry: Mapping,
             reference: np.ndarray | None = None, noise_std: float | None = None) -> Path:
    """Write the raw-data layout (atomically). ``geometry`` as in ``CTData.geometry``."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        if noise_std is not None:
            f.attrs["noise_std"] = float(noise_std)
        f.create_dataset("sinogram", data=np.asarray(sinogram, dtype=np.float32))
        f.create_dataset("angles", data=np.asarray(angles, dtype=np.float64))
        if reference is not None:
            f.create_dataset("reference", data=np.asarray(reference, dtype=np.float32))
        for key, value in geometry.items():
            f.attrs["image_size" if key == "image_shape" else key] = value
    return Path(path)


def write_reconstructions(path, images: Mapping[str, np.ndarray], geometry: Mapping,
                          parameters: Mapping[str, Mapping], units: str = "1/mm",
                          extra: Mapping[str, np.ndarray] | None = None) -> Path:
    """One dataset per method with the geometry (or acquisition) and that method's parameters
    as attributes; ``extra`` arrays (e.g. the sampling mask) are stored as datasets of their own."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in geometry.items():
            f.attrs[key] = value
        for name, array in (extra or {}).items():
            f.create_dataset(name, data=np.asarray(array), compression="gzip")
        for name, image in images.items():
            ds = f.create_dataset(name, data=np.asarray(image, dtype=np.float32), compression="gzip")
            ds.attrs["units"] = units
            for key, value in parameters.get(name, {}).items():
                ds.attrs[key] = "none" if value is None else value
    return Path(path)


class atomic_path:
    """Context manager yielding a temporary path in the target's folder, renamed on success."""

    def __init__(self, path) -> None:
        self.path = Path(path)

    def __enter__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.unlink(self.tmp)
