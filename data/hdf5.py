"""HDF5 input and output for CT: the raw-data layout ``recon ct --input`` reads.

Raw-data layout (one 2D slice, or a stack of 2D slices sharing one geometry)::

    /sinogram    float (views, detectors)           line integrals, -log(I / I0)
                 or (slices, views, detectors)      a stack: one sinogram per slice
    /angles      float (views,)                     radians, shared by every slice
    /reference   float (H, W), optional             an image in the same units as the
                 or (slices, H, W) for a stack      reconstruction (1/mm), enables metrics
    attributes on the root group:
        geometry          "parallel" or "fan"
        detector_spacing  mm (on the detector)
        pixel_size        mm (reconstruction grid)
        image_size        int, or [H, W]
        source_origin     mm (fan only)
        origin_detector   mm (fan only)
        noise_std         optional: the sinogram's noise std (for lam = "auto")

Readers open the file, read only the requested slices and close it before
returning, also when they raise; writes go to a temporary file renamed into
place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import h5py
import numpy as np

from data.files import atomic_path
from data.limits import array_bytes, check_memory
from data.provenance import json_safe

__all__ = ["CTData", "open_hdf5", "read_ct", "write_ct", "write_reconstructions", "atomic_path"]

GEOMETRIES = ("parallel", "fan")
_OWN = "refused: the file must hold all its data itself"
_REQUIRED = {"parallel": ("detector_spacing", "pixel_size", "image_size"),
             "fan": ("detector_spacing", "pixel_size", "image_size", "source_origin", "origin_detector")}

#: What ``slices=`` accepts: None (all), an int (one slice, its axis dropped), a slice or a list of ints.
Slices = Union[None, int, slice, Sequence[int]]


@dataclass
class CTData:
    """A sinogram with its geometry, as read from the raw-data layout.

    Attributes:
        sinogram: ``(views, detectors)`` float32 for one slice, ``(slices, views, detectors)``
            for a stack.
        angles: ``(views,)`` float64, radians (shared by every slice).
        geometry: ``{"geometry": "parallel"|"fan", "detector_spacing": ..., "pixel_size": ...,
            "image_shape": (H, W), ["source_origin", "origin_detector"]}``.
        reference: optional ``(H, W)`` image, ``(slices, H, W)`` for a stack.
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


def open_hdf5(path: str | os.PathLike, kind: str = "HDF5 file") -> h5py.File:
    """Open ``path`` read-only, refusing a file whose data would come from other files of the host.

    Before returning, every link of the file is visited without following any into another file:
    an external link, a dataset with external raw storage or a virtual dataset anywhere in the file
    is refused, as is a soft link that does not resolve inside the file (a missing target, or a
    cycle, which HDF5 stops after 16 hops). The file is closed when it is refused.

    Args:
        path: the HDF5 file.
        kind: what the file should be, for the error message (e.g. ``"HDF5 file (fastMRI layout)"``).

    Returns:
        The open ``h5py.File``; use it as ``with open_hdf5(p) as f``.

    Raises:
        FileNotFoundError: no such file. ValueError: not HDF5, or it points into other files.

    Example:
        >>> import h5py, numpy as np, tempfile, os
        >>> a, b = (os.path.join(tempfile.mkdtemp(), name) for name in ("a.h5", "b.h5"))
        >>> with h5py.File(a, "w") as f: f["x"] = np.arange(3.0)
        >>> with open_hdf5(a) as f: f["x"][()].tolist()
        [0.0, 1.0, 2.0]
        >>> with h5py.File(b, "w") as f: f["y"] = h5py.ExternalLink(a, "/x")
        >>> open_hdf5(b)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: .../b.h5: '/y' is an external link to '/x' in .../a.h5: ...
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"input: {path} is a folder; expected an {kind}")
    if not path.is_file():
        raise FileNotFoundError(f"input: no such file {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise _fail(path, f"not a readable {kind} ({err})") from err
    try:
        _refuse_foreign(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _refuse_foreign(f: h5py.File, path) -> None:
    """Raise unless every link of ``f`` stays inside it (external links are checked before any soft
    link is resolved, so resolving one never opens another file)."""
    links: list = []
    f.visititems_links(lambda name, link: links.append(("/" + name, link)))
    for name, link in links:
        if isinstance(link, h5py.ExternalLink):
            raise _fail(path, f"'{name}' is an external link to '{link.path}' in {link.filename}: {_OWN}")
        if not isinstance(link, (h5py.HardLink, h5py.SoftLink)):
            raise _fail(path, f"'{name}' is a user-defined link ({type(link).__name__}): {_OWN}")
    for name, link in links:
        try:
            obj = f[name]
        except (KeyError, RuntimeError, OSError) as err:
            raise _fail(path, f"soft link '{name}' -> '{getattr(link, 'path', '?')}' does not resolve inside the "
                              f"file (a missing target or a cycle of links: {err})") from None
        if isinstance(obj, h5py.Dataset) and obj.external:
            files = sorted({str(entry[0]) for entry in obj.external})
            raise _fail(path, f"dataset '{name}' keeps its data in external raw file(s) {files}: {_OWN}")
        if isinstance(obj, h5py.Dataset) and obj.is_virtual:
            files = sorted({m.file_name for m in obj.virtual_sources()})
            raise _fail(path, f"dataset '{name}' is a virtual dataset mapping data from {files}: {_OWN}")


def _check_read(ds: h5py.Dataset, name: str, path, index: int | list[int] | None = None,
                out_itemsize: int = 0) -> None:
    """Refuse (``MemoryLimitError``) before ``_take(ds, index)`` when the entries read, their copy into
    ``out_itemsize`` bytes per element and one decompressed chunk would not fit in memory."""
    rows = 1 if isinstance(index, int) else len(index) if index is not None else None
    shape = ds.shape if rows is None else (rows, *ds.shape[1:])
    chunk = array_bytes(ds.chunks, ds.dtype.itemsize) if ds.chunks else 0
    check_memory(array_bytes(shape, ds.dtype.itemsize + out_itemsize) + chunk,
                 f"{path}: dataset '{name}' {ds.shape} {ds.dtype}")


def _number(attrs: Mapping, key: str, path, expected: str) -> np.ndarray:
    """Attribute ``key`` as finite float64 values; anything else (text, NaN, Inf) names file and attribute."""
    try:
        value = attrs[key]
    except (OSError, TypeError, ValueError) as err:
        raise _fail(path, f"attribute '{key}': expected {expected}, got an unreadable value ({err})") from None
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" or array.size == 0 or not np.all(np.isfinite(array)):
        raise _fail(path, f"attribute '{key}': expected {expected}, got {value!r}")
    return array.astype(np.float64)


def _selection(slices: Slices, n: int, path) -> int | list[int] | None:
    """``slices`` as None (all), one index, or a list of indices into ``n`` slices; errors name ``slices``."""
    if slices is None:
        return None
    if isinstance(slices, (int, np.integer)) and not isinstance(slices, (bool, np.bool_)):
        if not -n <= slices < n:
            raise _fail(path, f"slices: index {slices} is out of range for the file's {n} slices")
        return int(slices) % n
    index = np.arange(n)[slices] if isinstance(slices, slice) else np.asarray(slices)
    if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
        raise _fail(path, f"slices: expected None, an int, a slice or a list of ints, got {slices!r}")
    if np.any((index < -n) | (index >= n)):
        raise _fail(path, f"slices: {slices!r} has indices out of range for the file's {n} slices")
    if index.size == 0:
        raise _fail(path, f"slices: {slices!r} selects none of the file's {n} slices")
    return (index % n).tolist()


def _take(array, index: int | list[int] | None) -> np.ndarray:
    """``array[index]`` along the first axis, reading only those slices of an h5py dataset
    (which wants increasing indices: read them sorted, then restore the requested order)."""
    if index is None:
        return np.asarray(array[()])
    if isinstance(index, int):
        return np.asarray(array[index])
    unique, inverse = np.unique(index, return_inverse=True)
    first, last = int(unique[0]), int(unique[-1])
    block = array[first:last + 1] if last - first + 1 == unique.size else array[unique.tolist()]
    return np.asarray(block)[inverse]


def _dataset(f: h5py.File, name: str, path, ndims: tuple[int, ...]) -> h5py.Dataset:
    """The real-valued dataset ``name``, checked from its metadata (nothing is read yet)."""
    dims = " or ".join(f"{n}-D" for n in ndims)
    if name not in f:
        raise _fail(path, f"missing dataset '{name}' (expected a {dims} float array; see data/hdf5.py for the layout)")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise _fail(path, f"'{name}' is a group, expected a dataset")
    if ds.ndim not in ndims or not np.issubdtype(ds.dtype, np.number) or ds.dtype.kind == "c":
        raise _fail(path, f"dataset '{name}': expected a real {dims} array, got shape {ds.shape} dtype {ds.dtype}")
    if 0 in ds.shape:
        raise _fail(path, f"dataset '{name}' is empty (shape {ds.shape})")
    return ds


def _finite(arr: np.ndarray, name: str, path) -> np.ndarray:
    if not np.all(np.isfinite(arr)):
        raise _fail(path, f"dataset '{name}' contains NaN or Inf values")
    return arr


def _positive(attrs: Mapping, key: str, path, expected: str, zero: bool = False) -> float:
    """Attribute ``key`` as one finite number > 0 (>= 0 when ``zero``); errors name file and attribute."""
    value = _number(attrs, key, path, expected)
    if value.size != 1 or value.item() < 0 or (value.item() == 0 and not zero):
        raise _fail(path, f"attribute '{key}': expected {expected}, got {attrs[key]!r}")
    return value.item()


def _geometry(attrs: Mapping, path) -> dict:
    if "geometry" not in attrs:
        raise _fail(path, f"missing attribute 'geometry' (expected one of {GEOMETRIES})")
    kind = attrs["geometry"]
    kind = kind.decode(errors="replace") if isinstance(kind, bytes) else str(kind)
    if kind not in GEOMETRIES:
        raise _fail(path, f"attribute 'geometry': expected one of {GEOMETRIES}, got {kind!r}")
    geom: dict = {"geometry": kind}
    for key in _REQUIRED[kind]:
        if key not in attrs:
            raise _fail(path, f"missing attribute '{key}' (required for {kind} geometry)")
        if key != "image_size":
            geom[key] = _positive(attrs, key, path, "a positive number (mm)", zero=key == "origin_detector")
            continue
        expected = "a positive integer or [H, W]"
        value = _number(attrs, key, path, expected).ravel()
        size = value.astype(np.int64)
        if size.size not in (1, 2) or np.any(size < 1) or not np.all(size == value):
            raise _fail(path, f"attribute 'image_size': expected {expected}, got {attrs[key]!r}")
        geom["image_shape"] = (int(size[0]), int(size[-1]))
    return geom


def _reference(f: h5py.File, path, sinogram_shape: tuple, image_shape: tuple, index) -> np.ndarray | None:
    """The optional reference: ``(H, W)``, or ``(slices, H, W)`` beside a stack of sinograms."""
    if "reference" not in f:
        return None
    stack = len(sinogram_shape) == 3
    ds = _dataset(f, "reference", path, (3,) if stack else (2,))
    expected = (sinogram_shape[0], *image_shape) if stack else tuple(image_shape)
    if ds.shape != expected:
        what = f"(slices, H, W) = {expected}: one image_size image per sinogram slice" if stack else \
            f"image_size {expected}"
        raise _fail(path, f"dataset 'reference' has shape {ds.shape}, expected {what}")
    _check_read(ds, "reference", path, index, 4)
    return _finite(_take(ds, index), "reference", path).astype(np.float32)


def read_ct(path: str | os.PathLike, slices: Slices = None) -> CTData:
    """Read the raw-data layout; every missing or malformed piece is named in the error.

    Args:
        path: an HDF5 file in the layout above.
        slices: for a stack, which slices to read (only those are read from disk): None for all,
            an int for one (its axis dropped, so the result looks like a 2D file), a slice or a
            list of ints (the axis kept, in the order given). Must be None for a 2D file.

    Returns:
        ``CTData``; a 2D file gives ``sinogram (views, detectors)`` and ``reference (H, W)`` exactly
        as before stacks existed, a stack ``(slices, views, detectors)`` and ``(slices, H, W)``.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "scan.h5")
        >>> geom = {"geometry": "parallel", "detector_spacing": 1.0, "pixel_size": 1.0, "image_shape": (16, 16)}
        >>> _ = write_ct(p, np.zeros((3, 10, 20)), np.linspace(0, np.pi, 10, endpoint=False), geom)
        >>> read_ct(p).sinogram.shape, read_ct(p, slices=1).sinogram.shape, read_ct(p).geometry["image_shape"]
        ((3, 10, 20), (10, 20), (16, 16))
    """
    path = Path(path)
    with open_hdf5(path) as f:
        sino_ds = _dataset(f, "sinogram", path, (2, 3))
        if slices is not None and sino_ds.ndim == 2:
            raise _fail(path, f"slices: the file holds one 2-D sinogram {sino_ds.shape} (views, detectors), "
                              f"not a stack of slices; leave slices=None")
        index = _selection(slices, sino_ds.shape[0], path)
        _check_read(sino_ds, "sinogram", path, index, 4)
        sino = _finite(_take(sino_ds, index), "sinogram", path).astype(np.float32)
        angles_ds = _dataset(f, "angles", path, (1,))
        _check_read(angles_ds, "angles", path, None, 8)
        angles = _finite(_take(angles_ds, None), "angles", path).astype(np.float64)
        geom = _geometry(f.attrs, path)
        ref = _reference(f, path, sino_ds.shape, geom["image_shape"], index)
        noise_std = _positive(f.attrs, "noise_std", path, "a positive number") if "noise_std" in f.attrs else None
    if angles.shape[0] != sino.shape[-2]:
        raise _fail(path, f"dataset 'angles' has {angles.shape[0]} entries but 'sinogram' has {sino.shape[-2]} views")
    return CTData(sino, angles, geom, ref, str(path), noise_std)


def write_ct(path, sinogram: np.ndarray, angles: np.ndarray, geometry: Mapping,
             reference: np.ndarray | None = None, noise_std: float | None = None) -> Path:
    """Write the raw-data layout (atomically). ``geometry`` as in ``CTData.geometry``; ``sinogram``
    ``(views, detectors)`` or a stack ``(slices, views, detectors)``, ``reference`` to match.

    Example:
        >>> import numpy as np, tempfile, os, h5py
        >>> p = write_ct(os.path.join(tempfile.mkdtemp(), "scan.h5"), np.ones((4, 6)), np.arange(4.0),
        ...              {"geometry": "parallel", "detector_spacing": 1.0, "pixel_size": 1.0, "image_shape": (8, 8)})
        >>> with h5py.File(p) as f: f["sinogram"].shape, f.attrs["geometry"]
        ((4, 6), 'parallel')
    """
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
                          extra: Mapping[str, np.ndarray] | None = None,
                          provenance: Mapping | None = None) -> Path:
    """One dataset per method with the geometry (or acquisition) and that method's parameters
    as attributes; ``extra`` arrays (e.g. the sampling mask) are stored as datasets of their own.

    ``provenance`` (a record from ``data.provenance.provenance``, made JSON-safe here) is stored
    as the JSON string attribute ``provenance`` of the root group, and of each method's dataset
    with ``"method"`` and ``"parameters"`` replaced by that method's name and parameters.

    Example:
        >>> import json, numpy as np, tempfile, os, h5py
        >>> from data.provenance import provenance
        >>> p = os.path.join(tempfile.mkdtemp(), "out.h5")
        >>> _ = write_reconstructions(p, {"fbp": np.zeros((4, 4))}, {"geometry": "parallel"},
        ...                           {"fbp": {"filter": "ramp"}}, provenance=provenance("recon ct", {"views": 60}))
        >>> with h5py.File(p) as f: json.loads(f["fbp"].attrs["provenance"])["parameters"]
        {'filter': 'ramp'}
    """
    if provenance is not None and not isinstance(provenance, Mapping):
        raise TypeError(f"provenance: expected a mapping (see data.provenance.provenance), "
                        f"got {type(provenance).__name__}")
    record = None if provenance is None else json_safe(provenance)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in geometry.items():
            f.attrs[key] = value
        if record is not None:
            f.attrs["provenance"] = json.dumps(record, allow_nan=False)
        for name, array in (extra or {}).items():
            f.create_dataset(name, data=np.asarray(array), compression="gzip")
        for name, image in images.items():
            ds = f.create_dataset(name, data=np.asarray(image, dtype=np.float32), compression="gzip")
            ds.attrs["units"] = units
            for key, value in parameters.get(name, {}).items():
                ds.attrs[key] = "none" if value is None else value
            if record is not None:
                own = {**record, "method": name, "parameters": json_safe(parameters.get(name, {}))}
                ds.attrs["provenance"] = json.dumps(own, allow_nan=False)
    return Path(path)
