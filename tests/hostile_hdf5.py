"""Hostile and malformed HDF5 inputs for tests: each file is a valid raw CT study (data/hdf5.py)
except for one feature, so that feature alone must make the reader refuse it.

The three ways an HDF5 file can make its reader read another file of the host:

* ``external_raw``: a dataset whose raw storage lives in another file (``external=[(file, offset, size)]``),
* ``external_link``: a link to an object in another HDF5 file (``h5py.ExternalLink``),
* ``virtual``: a virtual dataset mapping a dataset of another file (``h5py.VirtualLayout``).

The files they point at (the "secrets") lie outside the study folder and contain ``MARKER``, which
must never appear in anything a command writes.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> cases = write_hostile_hdf5(root / "studies", root / "secret")
    >>> sorted(cases) == sorted(p.name for p in (root / "studies").iterdir())
    True
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from data.hdf5 import write_ct

MARKER = "RECON-HOSTILE-SECRET-5c1e9a"
FOREIGN_KINDS = ("external_raw", "external_link", "virtual")
GEOMETRY = {"geometry": "parallel", "detector_spacing": 1.0, "pixel_size": 1.0, "image_shape": (32, 32)}
VIEWS, DETECTORS = 20, 48
#: The part of the refusal each foreign kind's message must contain (``{name}`` is the dataset's HDF5 path).
FRAGMENTS = {"external_raw": "dataset '{name}' keeps its data in external raw file",
             "external_link": "'{name}' is an external link",
             "virtual": "dataset '{name}' is a virtual dataset"}


def disc_sinogram(views: int = VIEWS, detectors: int = DETECTORS, radius: float = 10.0,
                  mu: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """``(sinogram (views, detectors), angles)`` of a centred disc: chord length times ``mu``."""
    s = np.arange(detectors) - (detectors - 1) / 2
    row = 2 * mu * np.sqrt(np.clip(radius**2 - s**2, 0, None))
    return np.tile(row, (views, 1)).astype(np.float32), np.linspace(0, np.pi, views, endpoint=False)


def write_good_ct(path: str | Path) -> Path:
    """A small valid raw-layout study: a disc on a 32 x 32 grid, 20 views, 48 detectors."""
    sinogram, angles = disc_sinogram()
    yy, xx = np.mgrid[:32, :32] - 15.5
    reference = np.where(xx**2 + yy**2 <= 100, 0.02, 0.0).astype(np.float32)
    return write_ct(path, sinogram, angles, GEOMETRY, reference=reference)


def write_secrets(secret: str | Path, data: np.ndarray) -> tuple[Path, Path]:
    """In folder ``secret``: ``secret.bin`` (``MARKER`` then ``data``'s bytes, padded with ``MARKER``) and
    ``secret.h5`` (``/secret`` = ``data``, with ``MARKER`` as an attribute and a string dataset)."""
    secret = Path(secret)
    secret.mkdir(parents=True, exist_ok=True)
    raw, h5 = secret / "secret.bin", secret / "secret.h5"
    raw.write_bytes(MARKER.encode() + np.ascontiguousarray(data).tobytes() + MARKER.encode() * 8)
    with h5py.File(h5, "w") as f:
        f["secret"] = data
        f["marker"] = MARKER
        f.attrs["marker"] = MARKER
    return raw, h5


def add_foreign_dataset(f: h5py.File, name: str, kind: str, data: np.ndarray, secret: str | Path) -> None:
    """Create dataset ``name`` in ``f`` whose values are ``data``, stored in folder ``secret`` as ``kind``."""
    data = np.asarray(data)
    raw, h5 = write_secrets(secret, data)
    if kind == "external_raw":
        f.create_dataset(name, shape=data.shape, dtype=data.dtype,
                         external=[(str(raw), len(MARKER.encode()), data.nbytes)])
    elif kind == "external_link":
        f[name] = h5py.ExternalLink(str(h5), "/secret")
    elif kind == "virtual":
        layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
        layout[...] = h5py.VirtualSource(str(h5), "secret", shape=data.shape, dtype=data.dtype)
        f.create_virtual_dataset(name, layout)
    else:
        raise ValueError(f"kind: expected one of {FOREIGN_KINDS}, got {kind!r}")


def _replace_sinogram(path: Path, kind: str, secret: Path) -> None:
    with h5py.File(path, "a") as f:
        sinogram = f["sinogram"][()]
        del f["sinogram"]
        add_foreign_dataset(f, "sinogram", kind, sinogram, secret / kind)


def _write_huge(path: Path) -> None:
    """A (1000, 20000, 50000) float32 sinogram (3.6 TiB) of unwritten gzip chunks: a few hundred KB on disk."""
    write_good_ct(path)
    with h5py.File(path, "a") as f:
        del f["sinogram"], f["angles"], f["reference"]
        f.create_dataset("sinogram", shape=(1000, 20000, 50000), dtype=np.float32, chunks=(1, 100, 50000),
                         compression="gzip")
        f["angles"] = np.linspace(0, np.pi, 20000, endpoint=False)


def write_hostile_hdf5(folder: str | Path, secret: str | Path) -> dict[str, str]:
    """Write one hostile raw-layout study per case into ``folder``; secrets go to folder ``secret``.

    Args:
        folder: where the studies go (created).
        secret: a folder outside ``folder`` for the files the hostile studies point at (created).

    Returns:
        ``{file name: a fragment the reader's error message must contain}``.
    """
    folder, secret = Path(folder), Path(secret)
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}
    for kind in FOREIGN_KINDS:
        path = write_good_ct(folder / f"{kind}.h5")
        _replace_sinogram(path, kind, secret)
        cases[path.name] = FRAGMENTS[kind].format(name="/sinogram")
    _write_huge(folder / "huge_sinogram.h5")
    cases["huge_sinogram.h5"] = "dataset 'sinogram' (1000, 20000, 50000) float32: needs about"
    with h5py.File(write_good_ct(folder / "text_attribute.h5"), "a") as f:
        f.attrs["pixel_size"] = "abc"
    cases["text_attribute.h5"] = "attribute 'pixel_size': expected a positive number"
    return cases
