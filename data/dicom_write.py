"""Writing a reconstruction back as a derived DICOM CT series (conventions: ``data.dicom``).

A new series in the template's study and frame of reference: new Series/SOP Instance UIDs,
patient and study tags copied, ImageType DERIVED/SECONDARY, int16 pixels with a rescale slope and
intercept that keep HU to half a slope step, one file per slice written atomically and named
``slice_0001.dcm`` onwards (never from tag values). Copied text loses its NUL bytes; a value still
invalid for its VR (e.g. a date that is not one) is left out with a ``DicomWarning``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom import config
from pydicom.valuerep import MAX_VALUE_LEN, validate_value

from data.dicom import _COPIED, DicomVolume, DicomWarning
from data.dicom_checks import unit_normal
from data.hdf5 import atomic_path

__all__ = ["write_series"]


def _ds(x: float) -> str:
    """A decimal string that fits DICOM's 16-character DS."""
    return f"{x:.10g}"


def _rescale(hu: np.ndarray) -> tuple[float, float]:
    """A 1/2/5 x 10^e slope and an intercept (both exact as DS) mapping ``hu`` into int16."""
    lo, hi = float(hu.min()), float(hu.max())
    need = max((hi - lo) / 60000.0, 1e-3)
    e = math.floor(math.log10(need))
    slope = float(_ds(next(m * 10.0 ** e for m in (1, 2, 5, 10) if m * 10.0 ** e >= need)))
    return slope, float(_ds(round((lo + hi) / 2 / slope) * slope))


def _set(ds: Dataset, keyword: str, value) -> None:
    """Set a tag: text without NUL bytes, cut to its VR's maximum length in bytes of the UTF-8
    encoding written (64 for names), never inside a character; a value still invalid for the VR is
    left out with a warning."""
    vr = dictionary_VR(keyword)
    if isinstance(value, str):
        value = value.replace("\x00", "").encode("utf-8")[:MAX_VALUE_LEN.get(vr, 64)].decode("utf-8", errors="ignore")
        try:
            validate_value(vr, value, config.RAISE)
        except ValueError as err:
            warnings.warn(f"{keyword}: {value!r} is not a valid {vr} ({err}); left out of the derived series",
                          DicomWarning, stacklevel=4)
            return
    setattr(ds, keyword, value)


def _slice_dataset(tags: Mapping, common: Mapping, sop_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop_uid
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: copied names may be non-ASCII
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    for keyword in _COPIED:
        if keyword in tags:
            _set(ds, keyword, tags[keyword])
    for keyword, value in common.items():
        _set(ds, keyword, value)
    return ds


def write_series(volume_hu: np.ndarray, out_dir: str | os.PathLike, template: DicomVolume | Mapping,
                 spacing: tuple[float, float, float] | None = None, description: str = "recon",
                 window: tuple[float, float] | None = None, overwrite: bool = False) -> list[Path]:
    """Write a volume in HU as a derived CT series, ``out_dir/slice_0001.dcm`` onwards.

    New SeriesInstanceUID and SOPInstanceUIDs; patient, study and frame-of-reference tags from the
    template; ImageType DERIVED\\SECONDARY; CT Image Storage in explicit VR little endian. Pixels are
    int16 with a RescaleSlope (<= range / 60000, at least 0.001 HU) and RescaleIntercept such that
    values read back within half a slope step. With a template volume of as many slices (and no other
    ``spacing``), slices lie at ``template.positions`` (true positions: a gap stays a gap);
    otherwise slice k lies at ``origin + k * spacing[0] * normal``. To move the volume, pass
    ``dataclasses.replace(template, origin=...)``.

    Args:
        volume_hu: ``(slices, H, W)`` (or ``(H, W)``) in HU.
        out_dir: the series folder (created); existing ``slice_*.dcm`` files there raise
            ``FileExistsError`` unless ``overwrite`` (then stale ones are removed).
        template: a ``DicomVolume`` (tags and geometry), or a dict of tags (DICOM keywords) with
            optional ``ImageOrientationPatient`` (default axial) and ``ImagePositionPatient`` (default 0).
        spacing: ``(slice, row, col)`` in mm; default the template volume's (required for a dict).
        description: SeriesDescription (cut to 64 characters; a backslash, DICOM's value separator, becomes '/').
        window: ``(center, width)`` in HU; default the 1st to 99th percentile of the volume.
        overwrite: replace an existing series in ``out_dir``.

    Example:
        >>> import tempfile
        >>> from pydicom.data import get_testdata_file
        >>> from data.dicom import read_series
        >>> vol = read_series(get_testdata_file("CT_small.dcm"))
        >>> files = write_series(vol.hu + 0.25, tempfile.mkdtemp(), vol, description="FBP")
        >>> back = read_series(files[0].parent)
        >>> err = float(abs(back.hu - vol.hu - 0.25).max())
        >>> [f.name for f in files], back.series_uid != vol.series_uid, round(err, 3)
        (['slice_0001.dcm'], True, 0.0)
    """
    hu = np.asarray(volume_hu, dtype=np.float64)
    hu = hu[None] if hu.ndim == 2 else hu
    if hu.ndim != 3 or 0 in hu.shape:
        raise ValueError(f"volume_hu: expected shape (slices, H, W), got {hu.shape}")
    if not np.all(np.isfinite(hu)):
        raise ValueError("volume_hu contains NaN or Inf values")
    true = isinstance(template, DicomVolume) and len(template.hu) == len(hu) and spacing in (None, template.spacing)
    tags, orient, origin, spacing = _template(template, spacing)
    normal = np.cross(orient[:3], orient[3:])
    positions = template.positions if true else origin + np.arange(len(hu))[:, None] * spacing[0] * normal
    out_dir = Path(out_dir)
    existing = set(out_dir.glob("slice_*.dcm")) if out_dir.is_dir() else set()
    if existing and not overwrite:
        raise FileExistsError(f"out_dir: {out_dir} already holds a series (slice_*.dcm); "
                              "pass overwrite=True to replace it")
    common, stored = _series_tags(hu, tags, orient, spacing, description, window)
    digits = max(4, len(str(len(hu))))
    written = []
    for k, position in enumerate(positions):
        ds = _slice_dataset(tags, common, generate_uid())
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.PixelData = stored[k].tobytes()
        written.append(out_dir / f"slice_{k + 1:0{digits}d}.dcm")
        with atomic_path(written[-1]) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    for stale in existing - set(written):
        stale.unlink()
    return written


def _template(template: DicomVolume | Mapping, spacing) -> tuple[dict, np.ndarray, np.ndarray, tuple]:
    """Tags, orientation, origin and spacing (validated) from a template volume or tag dict."""
    if isinstance(template, DicomVolume):
        tags, orient, origin = dict(template.tags), template.orientation, template.origin
        spacing = template.spacing if spacing is None else spacing
    else:
        tags = dict(template)
        orient = tags.pop("ImageOrientationPatient", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
        origin = tags.pop("ImagePositionPatient", (0.0, 0.0, 0.0))
        if spacing is None:
            raise ValueError("spacing: required when template is a dict (a DicomVolume carries its own)")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing: expected 3 positive numbers (slice, row, col) in mm, got {spacing}")
    orient, origin = np.asarray(orient, float).ravel(), np.asarray(origin, float)
    unit_normal(orient, "template")
    if origin.shape != (3,):
        raise ValueError(f"template: ImagePositionPatient must hold 3 numbers, got {origin.tolist()}")
    return tags, orient, origin, spacing


def _series_tags(hu: np.ndarray, tags: Mapping, orient: np.ndarray, spacing: tuple, description: str,
                 window: tuple[float, float] | None) -> tuple[dict, np.ndarray]:
    """The tags shared by every slice of the derived series, and the stored int16 pixels."""
    slope, intercept = _rescale(hu)
    stored = np.clip(np.rint((hu - intercept) / slope), -32768, 32767).astype("<i2")
    if window is None:
        lo, hi = np.percentile(hu, [1, 99])
        window = ((lo + hi) / 2, max(hi - lo, 1.0))
    common = {"StudyInstanceUID": tags.get("StudyInstanceUID") or generate_uid(),
              "FrameOfReferenceUID": tags.get("FrameOfReferenceUID") or generate_uid(),
              "Modality": tags.get("Modality") or "CT", "SeriesInstanceUID": generate_uid(), "SeriesNumber": None,
              "SeriesDescription": description.replace("\\", "/"), "ImageType": ["DERIVED", "SECONDARY"],
              "DerivationDescription": f"reconstruction derived from series {tags.get('SeriesInstanceUID', 'unknown')}",
              "ImageOrientationPatient": [_ds(v) for v in orient], "PixelSpacing": [_ds(spacing[1]), _ds(spacing[2])],
              "SliceThickness": _ds(spacing[0]), "Rows": hu.shape[1], "Columns": hu.shape[2], "SamplesPerPixel": 1,
              "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15,
              "PixelRepresentation": 1, "RescaleSlope": _ds(slope), "RescaleIntercept": _ds(intercept),
              "RescaleType": "HU", "WindowCenter": _ds(window[0]), "WindowWidth": _ds(window[1])}
    return common, stored
