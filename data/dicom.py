"""DICOM series input and output for CT: a series in as a volume, a reconstruction back out.

Conventions::

    hu[k, i, j]  float32 (slices, H = Rows, W = Columns), Hounsfield units (stored * RescaleSlope
                 + RescaleIntercept, per slice)
    orientation  ImageOrientationPatient: row direction r (along j), then column direction c (along i)
    normal       n = r x c; slices are ordered by ImagePositionPatient . n (never InstanceNumber or name)
    spacing      (slice, row, col) in mm (PixelSpacing is [row, col])
    origin       ImagePositionPatient of slice 0; voxel (k, i, j) lies at (mm, patient coordinates)
                 origin + k * spacing[0] * n + i * spacing[1] * c + j * spacing[2] * r

HU and attenuation: the CT operators work in 1/mm (FBP returns mu in 1/mm); ``hu_to_mu`` and
``mu_to_hu`` use HU = 1000 (mu - mu_water) / (mu_water - mu_air), with mu_air ~ 0 and mu_water a
parameter (default ``MU_WATER``).

Reading warns (``DicomWarning``) and skips non-DICOM and corrupt files in a folder or list (a single
given file raises instead), skips objects without pixel data (SR, RT structure sets, DICOMDIR),
warns about missing slices (not filled in) and uneven spacing, drops copies of one SOP instance,
and raises ``ValueError`` for two slices at one position or slices differing in orientation, size
or pixel spacing. Writing (``data.dicom_write.write_series``) makes a derived series, ``slice_0001.dcm`` onwards (names never come from
tag values), each file written atomically.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder

__all__ = ["DicomVolume", "SeriesInfo", "DicomWarning", "read_series", "list_series", "stable_key", "hu_to_mu",
           "mu_to_hu", "MU_WATER"]

MU_WATER = 0.0193
"""Linear attenuation of water in 1/mm at ~70 keV effective energy: mass attenuation 0.193 cm^2/g
(NIST XCOM / Hubbell-Seltzer tables for water, total with coherent scattering, interpolated at
70 keV) times 1 g/cm^3 = 0.193 /cm. Depends on the spectrum; pass ``mu_water`` for another."""

GAP_FACTOR = 1.5  # a step between slices larger than this times the median spacing is a missing slice
_SAME_POSITION_MM = 1e-3
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
           "StudyID", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "ReferringPhysicianName",
           "FrameOfReferenceUID", "PositionReferenceIndicator", "Modality", "BodyPartExamined", "PatientPosition")
_KEPT = _COPIED + ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime",
                   "Manufacturer", "KVP", "SliceThickness", "ConvolutionKernel")


class DicomWarning(UserWarning):
    """A recoverable problem in DICOM input: skipped files, a missing slice, uneven spacing."""


def stable_key(study_uid: str, series_uid: str) -> str:
    """A short hex name for a series (sha256 of the two UIDs, 16 hex digits): no patient data.

    Example:
        >>> stable_key("1.2.3", "1.2.3.4")
        '63290e01a5601695'
    """
    return hashlib.sha256(f"{study_uid}\n{series_uid}".encode()).hexdigest()[:16]


@dataclass
class DicomVolume:
    """A CT series as a volume, with what is needed to place it and to write a derived series.

    Attributes:
        hu: ``(slices, H, W)`` float32, Hounsfield units, ordered along ``normal``.
        spacing: ``(slice_spacing, row_spacing, col_spacing)`` in mm.
        orientation: ImageOrientationPatient (row direction cosines, then column direction cosines).
        origin: ImagePositionPatient of the first slice (mm).
        tags: patient, study and series tags (DICOM keywords to plain str / number / list values).
        files: the slice files, in volume order.
        series_uid, study_uid: SeriesInstanceUID and StudyInstanceUID.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    orientation: tuple[float, ...]
    origin: tuple[float, float, float]
    tags: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    series_uid: str = ""
    study_uid: str = ""

    @property
    def normal(self) -> np.ndarray:
        """The slice normal, row direction x column direction."""
        return np.cross(self.orientation[:3], self.orientation[3:])

    @property
    def positions(self) -> np.ndarray:
        """``(slices, 3)`` ImagePositionPatient of each slice on the regular grid (mm)."""
        return np.asarray(self.origin) + np.arange(len(self.hu))[:, None] * self.spacing[0] * self.normal

    @property
    def key(self) -> str:
        """``stable_key(study_uid, series_uid)``: a name for outputs that carries no patient data."""
        return stable_key(self.study_uid, self.series_uid)


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found by ``list_series``; ``files`` can be passed to ``read_series``."""

    series_uid: str
    study_uid: str
    description: str
    modality: str
    n_files: int
    files: tuple[Path, ...]

    @property
    def key(self) -> str:
        return stable_key(self.study_uid, self.series_uid)


@dataclass
class _Slice:
    path: Path
    ds: Dataset
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    hu: np.ndarray


def _inputs(path: str | os.PathLike | Iterable) -> tuple[list[Path], bool, str]:
    """The candidate files, whether they were one explicitly given file, and a name for errors."""
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if p.is_dir():
            return sorted(f for f in p.rglob("*") if f.is_file()), False, str(p)
        if p.is_file():
            return [p], True, str(p)
        raise FileNotFoundError(f"path: no such file or folder {p}")
    files = [Path(f) for f in path]
    if missing := [f for f in files if not f.is_file()]:
        raise FileNotFoundError(f"path: no such file {missing[0]}")
    return files, False, f"the {len(files)} given files"


def _scan(path) -> tuple[dict[str, list[tuple[Path, Dataset]]], str, bool]:
    """Read headers (pixel data deferred) and group image objects by SeriesInstanceUID."""
    files, strict, where = _inputs(path)
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    not_dicom, corrupt, non_image = [], [], 0
    for f in files:
        try:
            ds = pydicom.dcmread(f, defer_size="64 KB")
        except InvalidDicomError:
            not_dicom.append(f)
            continue
        except Exception as err:  # truncated or garbled: pydicom raises many kinds
            corrupt.append(f"{f} ({type(err).__name__}: {err})")
            continue
        if "SOPClassUID" not in ds or ("PixelData" in ds and "SeriesInstanceUID" not in ds):
            corrupt.append(f"{f} (no SOPClassUID or SeriesInstanceUID: truncated or garbled?)")
        elif "PixelData" not in ds:
            non_image += 1
        else:
            series.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
    if strict and (not_dicom or corrupt):
        raise ValueError(f"not a readable DICOM file: {corrupt[0] if corrupt else where}")
    if not_dicom:
        warnings.warn(f"{where}: skipped {len(not_dicom)} file(s) that are not DICOM, e.g. {not_dicom[0]}",
                      DicomWarning, stacklevel=3)
    for what in corrupt:
        warnings.warn(f"skipped corrupt DICOM file {what}", DicomWarning, stacklevel=3)
    if not series:
        raise ValueError(f"{where}: no DICOM image series found ({len(files)} files: {len(not_dicom)} not DICOM, "
                         f"{non_image} without pixel data, {len(corrupt)} corrupt)")
    return series, where, strict


def list_series(path: str | os.PathLike | Iterable) -> list[SeriesInfo]:
    """The image series in a folder (searched recursively), a file or a list of files.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> [(s.modality, s.n_files) for s in list_series(get_testdata_file("CT_small.dcm"))]
        [('CT', 1)]
    """
    series, _, _ = _scan(path)
    summary = ("StudyInstanceUID", "SeriesDescription", "Modality")
    infos = [SeriesInfo(uid, *(str(items[0][1].get(kw, "")) for kw in summary), len(items), tuple(f for f, _ in items))
             for uid, items in series.items()]
    return sorted(infos, key=lambda s: (s.study_uid, s.series_uid))


def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in (value if isinstance(value, MultiValue) else [value])])
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise ValueError(f"{path}: {keyword} must hold {n} numbers (to place the slice), got {value!r}")
    return out


def _decode_failed(path: Path, ds: Dataset, err: Exception, strict: bool) -> None:
    """Raise for a missing decoder (always) or in strict mode; otherwise warn that the slice is skipped."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        decoder = get_decoder(syntax) if syntax else None
        missing = [] if decoder is None or decoder.is_available else decoder.missing_dependencies
    except NotImplementedError:
        missing = ["none: pydicom has no decoder plugin for it"]
    if missing:
        raise ValueError(f"{path}: pixel data is compressed with transfer syntax '{syntax.name}' ({syntax}) and no "
                         f"decoder for it is installed; options: {'; '.join(missing)}") from err
    if strict:
        raise ValueError(f"{path}: unreadable pixel data ({type(err).__name__}: {err})") from err
    warnings.warn(f"skipped corrupt DICOM file {path}: unreadable pixel data ({err})", DicomWarning, stacklevel=2)


def _load_slice(path: Path, ds: Dataset, strict: bool) -> _Slice | None:
    if int(ds.get("NumberOfFrames") or 1) > 1:
        raise ValueError(f"{path}: multi-frame image ({ds.NumberOfFrames} frames); one slice per file is supported")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises RuntimeError, ValueError, NotImplementedError, ...
        _decode_failed(path, ds, err, strict)
        return None
    if pixels.shape != (ds.Rows, ds.Columns):
        raise ValueError(f"{path}: pixel data has shape {pixels.shape}, expected (Rows, Columns) = "
                         f"({ds.Rows}, {ds.Columns}) (a colour image?)")
    slope = float(ds.get("RescaleSlope") or 1.0)
    intercept = float(ds.get("RescaleIntercept") or 0.0)
    hu = (pixels.astype(np.float64) * slope + intercept).astype(np.float32)
    spacing = _floats(ds, "PixelSpacing", 2, path)
    if np.any(spacing <= 0):
        raise ValueError(f"{path}: PixelSpacing must be positive, got {list(spacing)}")
    return _Slice(path, ds, _floats(ds, "ImagePositionPatient", 3, path),
                  _floats(ds, "ImageOrientationPatient", 6, path), (float(spacing[0]), float(spacing[1])), hu)


def _normal(orientation: np.ndarray, where) -> np.ndarray:
    """row x column direction, after checking that they are orthogonal unit vectors."""
    normal = np.cross(orientation[:3], orientation[3:]) if orientation.shape == (6,) else np.zeros(3)
    if abs(np.linalg.norm(normal) - 1) > 1e-3:
        raise ValueError(f"{where}: ImageOrientationPatient must be two orthogonal unit vectors, "
                         f"got {orientation.tolist()}")
    return normal


def _check_consistent(slices: list[_Slice]) -> np.ndarray:
    """Raise for a slice whose orientation, size or pixel spacing differs from the first; return the normal."""
    first = slices[0]
    normal = _normal(first.orientation, first.path)
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise ValueError(f"{s.path}: ImageOrientationPatient {list(s.orientation)} differs from "
                             f"{list(first.orientation)} in {first.path}; a volume needs one orientation")
        if s.hu.shape != first.hu.shape:
            raise ValueError(f"{s.path}: Rows x Columns {s.hu.shape} differ from {first.hu.shape} in {first.path}")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise ValueError(f"{s.path}: PixelSpacing {s.pixel_spacing} differs from {first.pixel_spacing} "
                             f"in {first.path}")
    return normal


def _drop_duplicates(slices: list[_Slice], depth: np.ndarray) -> tuple[list[_Slice], np.ndarray]:
    keep = [0]
    for i in range(1, len(slices)):
        last = slices[keep[-1]]
        if depth[i] - depth[keep[-1]] > _SAME_POSITION_MM:
            keep.append(i)
        elif slices[i].ds.get("SOPInstanceUID") == last.ds.get("SOPInstanceUID"):
            warnings.warn(f"{slices[i].path}: a copy of {last.path} (same SOPInstanceUID); dropped",
                          DicomWarning, stacklevel=3)
        else:
            raise ValueError(f"{slices[i].path} and {last.path}: two different slices at the same position "
                             f"({depth[i]:.3f} mm along the slice normal); a repeated or multi-phase acquisition "
                             "in one series? pass the files of one acquisition as a list")
    return [slices[i] for i in keep], depth[keep]


def _slice_spacing(slices: list[_Slice], depth: np.ndarray) -> float:
    """The median step along the normal, warning about missing slices and uneven steps."""
    if len(slices) == 1:
        ds = slices[0].ds
        return float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    steps = np.diff(depth)
    dz = float(np.median(steps))
    for k in np.flatnonzero(steps > GAP_FACTOR * dz):
        warnings.warn(f"missing slice(s): a gap of {steps[k]:.4g} mm (median spacing {dz:.4g} mm) between "
                      f"{depth[k]:.3f} and {depth[k + 1]:.3f} mm along the slice normal, after slice {k} at "
                      f"ImagePositionPatient {np.round(slices[k].position, 3).tolist()} ({slices[k].path.name}, "
                      f"then {slices[k + 1].path.name})", DicomWarning, stacklevel=3)
    uneven = (np.abs(steps - dz) > max(1e-3, 0.01 * dz)) & (steps <= GAP_FACTOR * dz)
    if uneven.any():
        warnings.warn(f"uneven slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm; the volume "
                      f"uses the median {dz:.4g} mm", DicomWarning, stacklevel=3)
    return dz


def _plain(value):
    if isinstance(value, (list, MultiValue)):
        return [_plain(v) for v in value]
    return int(value) if isinstance(value, int) else float(value) if isinstance(value, float) else str(value)


def read_series(path: str | os.PathLike | Iterable, series_uid: str | None = None) -> DicomVolume:
    """Read one CT series from a folder (searched recursively), a single file or a list of files.

    Args:
        path: a folder, a file, or an iterable of files.
        series_uid: the SeriesInstanceUID to read; required when ``path`` holds several image series
            (see ``list_series``).

    Returns:
        The volume in HU, ordered along the slice normal, with spacing, geometry and tags.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> vol = read_series(get_testdata_file("CT_small.dcm"))
        >>> vol.hu.shape, vol.spacing
        ((1, 128, 128), (5.0, 0.661468, 0.661468))
    """
    series, where, strict = _scan(path)
    if series_uid is None and len(series) > 1:
        listing = "\n".join(f"  {uid}: {len(items)} slices, {str(items[0][1].get('SeriesDescription', ''))!r}"
                            for uid, items in sorted(series.items()))
        raise ValueError(f"{where}: holds {len(series)} image series; pass series_uid= to pick one:\n{listing}")
    if series_uid is not None and series_uid not in series:
        raise ValueError(f"series_uid: {series_uid!r} not found in {where}; found {sorted(series)}")
    uid = series_uid if series_uid is not None else next(iter(series))
    slices = [s for s in (_load_slice(f, ds, strict) for f, ds in series[uid]) if s is not None]
    if not slices:
        raise ValueError(f"{where}: series {uid}: no slice has readable pixel data")
    normal = _check_consistent(slices)
    depth = np.array([s.position @ normal for s in slices])
    order = np.argsort(depth, kind="stable")
    slices, depth = _drop_duplicates([slices[i] for i in order], depth[order])
    dz = _slice_spacing(slices, depth)
    first = slices[0]
    tags = {kw: _plain(first.ds[kw].value) for kw in _KEPT if first.ds.get(kw) not in (None, "")}
    return DicomVolume(np.stack([s.hu for s in slices]), (dz, *first.pixel_spacing),
                       tuple(float(v) for v in first.orientation), tuple(float(v) for v in first.position),
                       tags, [s.path for s in slices], uid, str(first.ds.get("StudyInstanceUID", "")))


def _check_mu(mu_water: float, mu_air: float) -> None:
    if not mu_water > mu_air:
        raise ValueError(f"mu_water: must exceed mu_air ({mu_air}), got {mu_water}")


def hu_to_mu(hu, mu_water: float = MU_WATER, mu_air: float = 0.0):
    r"""Hounsfield units to linear attenuation in 1/mm (numpy arrays, torch tensors or floats).

    .. math:: \mu = \mu_{water} + \mathrm{HU}\,(\mu_{water} - \mu_{air}) / 1000

    Example:
        >>> round(hu_to_mu(0.0), 6), round(hu_to_mu(-1000.0), 6), round(hu_to_mu(1000.0, mu_water=0.02), 6)
        (0.0193, 0.0, 0.04)
    """
    _check_mu(mu_water, mu_air)
    return mu_water + hu * ((mu_water - mu_air) / 1000.0)


def mu_to_hu(mu, mu_water: float = MU_WATER, mu_air: float = 0.0):
    r"""Linear attenuation in 1/mm (e.g. an FBP reconstruction) to Hounsfield units.

    .. math:: \mathrm{HU} = 1000\,(\mu - \mu_{water}) / (\mu_{water} - \mu_{air})

    Example:
        >>> round(mu_to_hu(MU_WATER), 6), round(mu_to_hu(0.0), 6)
        (0.0, -1000.0)
    """
    _check_mu(mu_water, mu_air)
    return (mu - mu_water) * (1000.0 / (mu_water - mu_air))
