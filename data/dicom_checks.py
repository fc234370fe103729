"""Header checks for ``data.dicom``, made before any pixel is decoded (conventions: ``data.dicom``).

Each check reads tags only and names the file, the tag, what was expected and what was found:
whether an object without pixel data is an image slice that lost them, why a slice's pixel data
cannot give a ``(Rows, Columns)`` image, the memory a series will need (``data.limits``), the
rescale to HU, and the numbers that place a slice.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from data.limits import check_memory

__all__ = ["image_like", "pixel_problem", "check_size", "rescale", "floats", "unit_normal"]

BITS_ALLOCATED = (8, 16, 32, 64)
_DECODE_BYTES = 24  # per pixel of the slice being decoded: raw and decoded pixels, then float64 and float32 HU


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword))
    except (TypeError, ValueError):
        return None


def image_like(ds: Dataset) -> bool:
    """Whether an object is an image slice (so that missing pixel data is a missing slice).

    An image storage SOP class (CT Image Storage, ...) is one; a known class that is not (SR, RT
    structure set, presentation state, DICOMDIR) is not; an unknown (private) class is one when it
    has Rows, Columns or ImagePositionPatient.

    Example:
        >>> from pydicom.uid import CTImageStorage, RTStructureSetStorage
        >>> ct, rt = Dataset(), Dataset()
        >>> ct.SOPClassUID, rt.SOPClassUID = CTImageStorage, RTStructureSetStorage
        >>> image_like(ct), image_like(rt)
        (True, False)
    """
    meta = getattr(ds, "file_meta", None) or Dataset()
    sop = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")
    name = UID(sop).name if sop else ""
    if "Image Storage" in name:
        return True
    if name != sop:
        return False
    return any(keyword in ds for keyword in ("Rows", "Columns", "ImagePositionPatient"))


def pixel_problem(ds: Dataset) -> str | None:
    """Why the pixel data cannot give a ``(Rows, Columns)`` image, from the header; ``None`` if it may.

    Checks Rows, Columns, BitsAllocated (8, 16, 32 or 64), BitsStored, and for uncompressed data
    that PixelData holds the bytes they declare (fewer: a truncated file or a wrong tag).

    Example:
        >>> ds = Dataset()
        >>> ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.PixelData = 2, 2, 16, 16, bytes(6)
        >>> pixel_problem(ds)
        'PixelData holds 6 bytes, fewer than Rows x Columns 2 x 2 at BitsAllocated 16 need (8 bytes): a truncated file, or a wrong Rows, Columns or BitsAllocated'
    """
    rows, cols, bits = _int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "BitsAllocated")
    if not (rows and cols and rows > 0 and cols > 0):
        return f"Rows x Columns must be positive, found {ds.get('Rows')!r} x {ds.get('Columns')!r}"
    if bits not in BITS_ALLOCATED:
        return f"BitsAllocated must be one of {', '.join(map(str, BITS_ALLOCATED))}, found {ds.get('BitsAllocated')!r}"
    stored = _int(ds, "BitsStored") or bits
    if not 1 <= stored <= bits:
        return f"BitsStored must be 1 to BitsAllocated ({bits}), found {ds.get('BitsStored')!r}"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_encapsulated:
        return None  # compressed: the decoder checks it
    need = rows * cols * (_int(ds, "SamplesPerPixel") or 1) * bits // 8
    try:
        found = len(ds.PixelData)
    except Exception as err:  # a deferred read of a damaged file: pydicom raises many kinds
        return f"unreadable PixelData ({type(err).__name__}: {err})"
    if found < need:
        return (f"PixelData holds {found} bytes, fewer than Rows x Columns {rows} x {cols} at BitsAllocated {bits} "
                f"need ({need} bytes): a truncated file, or a wrong Rows, Columns or BitsAllocated")
    return None


def check_size(items: list[tuple[Path, Dataset]], series_uid: str) -> None:
    """Raise ``MemoryLimitError`` (a ValueError) when the declared sizes of a series cannot be read.

    The estimate is what ``read_series`` builds: the float32 slices and their stack (8 bytes a
    voxel) plus one slice being decoded (raw and decoded pixels, float64 and float32 HU). The
    message names the file with the largest Rows x Columns.

    Example:
        >>> ds = Dataset()
        >>> ds.Rows, ds.Columns = 512, 512
        >>> check_size([(Path("a.dcm"), ds)], "1.2.3")  # 2 MiB: fine
    """
    sizes = [((_int(ds, "Rows") or 0) * (_int(ds, "Columns") or 0), path, ds) for path, ds in items]
    if not sizes:
        return
    largest, path, ds = max(sizes, key=lambda s: s[0])
    nbytes = 8 * sum(s[0] for s in sizes) + _DECODE_BYTES * largest
    check_memory(nbytes, f"{path}: Rows x Columns {ds.get('Rows')} x {ds.get('Columns')}, {len(sizes)} slice(s) "
                         f"of series {series_uid} (float32 volume and one slice decoded in float64)")


def rescale(ds: Dataset, path: Path) -> tuple[float, float]:
    """``(RescaleSlope, RescaleIntercept)``, default ``(1, 0)``: finite, the slope nonzero.

    Example:
        >>> ds = Dataset()
        >>> ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024"
        >>> rescale(ds, Path("a.dcm"))
        (0.5, -1024.0)
    """
    return _number(ds, "RescaleSlope", 1.0, path, nonzero=True), _number(ds, "RescaleIntercept", 0.0, path)


def _number(ds: Dataset, keyword: str, default: float, path: Path, nonzero: bool = False) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (nonzero and number == 0):
        raise ValueError(f"{path}: {keyword} must be a finite {'nonzero ' * nonzero}number, found {str(value)!r} "
                         "(HU = stored value x RescaleSlope + RescaleIntercept)")
    return number


def floats(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    """The ``n`` finite numbers of a tag (ImagePositionPatient, PixelSpacing, ...), or a ValueError.

    Example:
        >>> ds = Dataset()
        >>> ds.PixelSpacing = [0.5, 0.5]
        >>> floats(ds, "PixelSpacing", 2, Path("a.dcm")).tolist()
        [0.5, 0.5]
    """
    value = ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in (value if isinstance(value, MultiValue) else [value])])
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise ValueError(f"{path}: {keyword} must hold {n} numbers (to place the slice), got {value!r}")
    return out


def unit_normal(orientation: np.ndarray, where) -> np.ndarray:
    """Row x column direction, after checking that they are orthogonal unit vectors.

    Example:
        >>> unit_normal(np.array([1.0, 0, 0, 0, 1, 0]), "a.dcm").tolist()
        [0.0, 0.0, 1.0]
    """
    normal = np.cross(orientation[:3], orientation[3:]) if orientation.shape == (6,) else np.zeros(3)
    if abs(np.linalg.norm(normal) - 1) > 1e-3:
        raise ValueError(f"{where}: ImageOrientationPatient must be two orthogonal unit vectors, "
                         f"got {orientation.tolist()}")
    return normal
