"""Reader for the Helsinki Tomography Challenge 2022 sinograms (measured fan-beam CT).

The challenge files (``htc2022_<name>_full.mat`` / ``_limited.mat``, CC BY 4.0, Zenodo
10.5281/zenodo.6984868) hold one struct with the sinogram ``(angles, 560 detectors)``
of -log-transformed measurements and the scanner geometry. ``read_htc2022`` turns one
into ``CTData`` with the geometry in millimetres, on a square grid covering the
organisers' field of view (512 pixels of 0.1483 mm = 75.9 mm; another ``image_size``
keeps the field of view and changes the pixel size).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from data.hdf5 import CTData

__all__ = ["read_htc2022", "sparse_views", "htc_geometry", "HTC_FOV_PIXELS", "HTC_VIEWS_FULL", "HTC_SCANNER"]

HTC_FOV_PIXELS = 512  # the organisers' grid: 512 pixels of effectivePixelSizePost
HTC_VIEWS_FULL = 721  # a full file: 0 to 360 deg in 0.5 deg steps, both ends included
#: the challenge scanner as every HTC2022 file records it (mm): distanceSourceOrigin, distanceSourceDetector,
#: pixelSizePost, effectivePixelSizePost (the organisers' pixel) and numDetectorsPost
HTC_SCANNER = {"source_origin": 410.66, "source_detector": 553.74, "detector_spacing": 0.2,
               "pixel": 0.1483223173330444, "detectors": 560}


def read_htc2022(path: str | os.PathLike, image_size: int = HTC_FOV_PIXELS) -> CTData:
    """Read an HTC2022 ``.mat`` sinogram with its fan-beam geometry.

    Args:
        path: a ``*_full.mat`` or ``*_limited.mat`` file.
        image_size: reconstruction grid (pixels per side) over the organisers' 75.9 mm field of view.

    Returns:
        ``CTData`` with ``sinogram (views, 560)`` float32, ``angles`` in radians, and a ``"fan"``
        geometry (flat detector, distances and spacings in mm).

    Example (needs the challenge data)::

        data = read_htc2022("htc2022_ta_full.mat", image_size=256)
        A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
    """
    from scipy import io as scipy_io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {path}")
    _check_image_size(image_size)
    try:
        mat = scipy_io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises several types for non-MAT input
        raise ValueError(f"{path}: not a readable MATLAB file ({err})") from err
    key = next((k for k in ("CtDataFull", "CtDataLimited") if k in mat), None)
    if key is None:
        raise ValueError(f"{path}: expected a struct 'CtDataFull' or 'CtDataLimited' (an HTC2022 sinogram file)")
    ct = mat[key]
    par = ct.parameters
    sino = np.asarray(ct.sinogram, dtype=np.float32)
    angles = np.deg2rad(np.atleast_1d(par.angles).astype(np.float64))
    if sino.ndim != 2 or sino.shape[0] != angles.shape[0]:
        raise ValueError(f"{path}: sinogram of shape {sino.shape} does not match {angles.shape[0]} angles")
    geometry = _fan_geometry(float(par.distanceSourceOrigin), float(par.distanceSourceDetector),
                             float(par.pixelSizePost), float(par.effectivePixelSizePost), image_size)
    return CTData(sino, angles, geometry, None, str(path))


def sparse_views(data: CTData, views: int) -> CTData:
    """``views`` evenly spaced views of a full file's 360 deg (the duplicated 360 deg view never kept):
    the sparse-view task of ``recon bench quality`` and ``recon bench htc``."""
    keep = np.floor(np.arange(views) * (HTC_VIEWS_FULL - 1) / views).astype(int)
    return replace(data, sinogram=data.sinogram[keep], angles=data.angles[keep])


def htc_geometry(image_size: int = HTC_FOV_PIXELS) -> dict:
    """The geometry ``read_htc2022`` gives the challenge files (``HTC_SCANNER``), without a file: for
    simulating scans like theirs (``recon train limited-angle``).

    Example:
        >>> g = htc_geometry(128)
        >>> g["geometry"], g["image_shape"], round(g["pixel_size"] * 128, 2)   # the 75.94 mm field of view
        ('fan', (128, 128), 75.94)
    """
    _check_image_size(image_size)
    s = HTC_SCANNER
    return _fan_geometry(s["source_origin"], s["source_detector"], s["detector_spacing"], s["pixel"], image_size)


def _check_image_size(image_size) -> None:
    if not (isinstance(image_size, (int, np.integer)) and image_size >= 16):
        raise ValueError(f"image_size: expected an integer of at least 16 pixels, got {image_size}")


def _fan_geometry(source_origin: float, source_detector: float, detector_spacing: float, pixel: float,
                  image_size: int) -> dict:
    """The ``CTData`` geometry of an HTC2022 scan (mm): the organisers' field of view of ``HTC_FOV_PIXELS`` pixels
    of ``pixel`` mm, on an ``image_size`` grid."""
    return {"geometry": "fan", "detector_spacing": detector_spacing, "pixel_size": pixel * HTC_FOV_PIXELS / image_size,
            "image_shape": (int(image_size), int(image_size)), "source_origin": source_origin,
            "origin_detector": source_detector - source_origin}
