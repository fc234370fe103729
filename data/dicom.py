"""DICOM series input and output for CT: a series in as a volume, a reconstruction back out.

Conventions::

    hu[k, i, j]  float32 (slices, H = Rows, W = Columns), Hounsfield units (stored * RescaleSlope
                 + RescaleIntercept, per slice)
    orientation  ImageOrientationPatient: row direction r (along j), then column direction c (along i)
    normal       n = r x c; slices are ordered by ImagePositionPatient . n (never InstanceNumber or name)
    spacing      (slice, row, col) in mm (PixelSpacing is [row, col])
    origin       ImagePositionPatient of slice 0; voxel (k, i, j) lies at (mm, patient coordinates)
                 origin + k * spacing[0] * n + i * spacing[1] * c + j * spacing[2] * r

HU and attenuation (``hu_to_mu``, ``mu_to_hu``, ``MU_WATER``): ``data.hu``, re-exported here.

Reading warns (``DicomWarning``) and skips non-DICOM and corrupt files in a folder or list (a single
given file raises instead) and objects without pixel data by nature (SR, RT structure sets,
DICOMDIR), warns about uneven spacing, drops copies of one SOP instance, and raises ``ValueError``
for two slices at one position or slices differing in orientation, size or pixel spacing. A gap is
never closed silently: an image slice without pixel data or whose pixel data cannot give its image
(truncated, a wrong BitsAllocated), or a step over ``GAP_FACTOR`` times the median, is an error
naming the file and the position, unless ``allow_gaps=True``: then the slices present keep their
true positions (``DicomVolume.slice_positions``, written back as such) and each gap is a warning
and a line of ``DicomVolume.gaps``. Headers are checked before any pixel is decoded
(``data.dicom_checks``): the memory needed (``data.limits``), and RescaleSlope/Intercept (a finite
number, or an error naming the file and tag). Tag text is kept as found (NUL bytes, shell
metacharacters); it never becomes a path. Writing (``data.dicom_write.write_series``) makes a
derived series, ``slice_0001.dcm`` onwards, each file written atomically.
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

from data.dicom_checks import check_size, floats, image_like, pixel_problem, rescale, unit_normal
from data.hu import MU_WATER, hu_to_mu, mu_to_hu

__all__ = ["DicomVolume", "SeriesInfo", "DicomWarning", "read_series", "list_series", "stable_key", "hu_to_mu",
           "mu_to_hu", "MU_WATER"]

GAP_FACTOR = 1.5  # a step between slices larger than this times the median spacing is a missing slice
_GAPS_HINT = ("a gap is never closed silently: pass allow_gaps=True (recon batch: allow_gaps = true) to read the "
              "slices present at their true positions")
_SAME_POSITION_MM = 1e-3
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
           "StudyID", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "ReferringPhysicianName",
           "FrameOfReferenceUID", "PositionReferenceIndicator", "Modality", "BodyPartExamined", "PatientPosition")
_KEPT = _COPIED + ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime",
                   "Manufacturer", "KVP", "SliceThickness", "ConvolutionKernel")


class DicomWarning(UserWarning):
    """A recoverable problem in DICOM input: skipped files, an accepted gap, uneven spacing."""


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
        spacing: ``(slice_spacing, row_spacing, col_spacing)`` in mm (slice spacing: the median step).
        orientation: ImageOrientationPatient (row direction cosines, then column direction cosines).
        origin: ImagePositionPatient of the first slice (mm).
        tags: patient, study and series tags (DICOM keywords to plain str / number / list values).
        files: the slice files, in volume order.
        series_uid, study_uid: SeriesInstanceUID and StudyInstanceUID.
        slice_positions: ``(slices, 3)`` ImagePositionPatient of each slice as read (mm), or ``None``
            for a volume made otherwise (then slices lie on the regular grid).
        gaps: one line per gap accepted with ``allow_gaps=True`` (file names and positions only).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    orientation: tuple[float, ...]
    origin: tuple[float, float, float]
    tags: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    series_uid: str = ""
    study_uid: str = ""
    slice_positions: np.ndarray | None = None
    gaps: list[str] = field(default_factory=list)

    @property
    def normal(self) -> np.ndarray:
        """The slice normal, row direction x column direction."""
        return np.cross(self.orientation[:3], self.orientation[3:])

    @property
    def positions(self) -> np.ndarray:
        """``(slices, 3)`` ImagePositionPatient of each slice (mm): ``slice_positions`` moved to start at
        ``origin`` (so a gap stays a gap), or the regular grid ``origin + k * spacing[0] * normal``."""
        origin = np.asarray(self.origin, dtype=float)
        if self.slice_positions is not None and len(self.slice_positions) == len(self.hu):
            return origin + (np.asarray(self.slice_positions) - self.slice_positions[0])
        return origin + np.arange(len(self.hu))[:, None] * self.spacing[0] * self.normal

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
    position: np.ndarray | None  # None: a broken slice whose position cannot be read either
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    hu: np.ndarray | None  # None: a broken slice (``problem`` says why)
    problem: str = ""


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
        elif "PixelData" not in ds and not ("SeriesInstanceUID" in ds and image_like(ds)):
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


def _decode_failed(path: Path, ds: Dataset, err: Exception, strict: bool) -> str:
    """Raise for a missing decoder (always) or in strict mode; otherwise return why the slice is unreadable."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        decoder = get_decoder(syntax) if syntax else None
        missing = [] if decoder is None or decoder.is_available else decoder.missing_dependencies
    except NotImplementedError:
        missing = ["none: pydicom has no decoder plugin for it"]
    if missing:
        raise ValueError(f"{path}: pixel data is compressed with transfer syntax '{syntax.name}' ({syntax}) and no "
                         f"decoder for it is installed; options: {'; '.join(missing)}") from err
    problem = f"unreadable pixel data ({type(err).__name__}: {err})"
    if strict:
        raise ValueError(f"{path}: {problem}") from err
    return problem


def _load_slice(path: Path, ds: Dataset, strict: bool) -> _Slice:
    """The slice in HU, or (unless ``strict``) a broken ``_Slice`` saying why its image cannot be read."""
    if int(ds.get("NumberOfFrames") or 1) > 1:
        raise ValueError(f"{path}: multi-frame image ({ds.NumberOfFrames} frames); one slice per file is supported")
    orientation = floats(ds, "ImageOrientationPatient", 6, path)
    problem = "no pixel data" if "PixelData" not in ds else pixel_problem(ds)
    if problem is None:
        slope, intercept = rescale(ds, path)
        try:
            pixels = ds.pixel_array
        except Exception as err:  # pydicom raises RuntimeError, ValueError, NotImplementedError, ...
            problem = _decode_failed(path, ds, err, strict)
    if problem is not None:
        if strict:
            raise ValueError(f"{path}: {problem}")
        try:
            position = floats(ds, "ImagePositionPatient", 3, path)
        except ValueError:
            position = None
        return _Slice(path, ds, position, orientation, (0.0, 0.0), None, problem)
    if pixels.shape != (ds.Rows, ds.Columns):
        raise ValueError(f"{path}: pixel data has shape {pixels.shape}, expected (Rows, Columns) = "
                         f"({ds.Rows}, {ds.Columns}) (a colour image?)")
    hu = (pixels.astype(np.float64) * slope + intercept).astype(np.float32)
    spacing = floats(ds, "PixelSpacing", 2, path)
    if np.any(spacing <= 0):
        raise ValueError(f"{path}: PixelSpacing must be positive, got {list(spacing)}")
    return _Slice(path, ds, floats(ds, "ImagePositionPatient", 3, path), orientation,
                  (float(spacing[0]), float(spacing[1])), hu)


def _check_consistent(slices: list[_Slice]) -> np.ndarray:
    """Raise for a slice whose orientation, size or pixel spacing differs from the first; return the normal."""
    first = slices[0]
    normal = unit_normal(first.orientation, first.path)
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


def _where(depth: float, present: np.ndarray) -> str:
    """A position along the normal, with the present slices on either side of it."""
    below, above = present[present < depth], present[present > depth]
    around = f" (between {below.max():.3f} and {above.min():.3f} mm)" if len(below) and len(above) else ""
    return f"at {depth:.3f} mm along the slice normal{around}"


def _gaps(slices: list[_Slice], depth: np.ndarray, broken: list[_Slice], normal: np.ndarray) -> tuple[float, list[str]]:
    """The slice spacing (median step along the normal, over steps that span no broken slice) and one
    line per gap: each broken slice (one where a readable slice is, a broken copy, is skipped with a
    warning), then each step larger than ``GAP_FACTOR`` times the median that
    no broken slice explains. Warns about uneven steps."""
    at = [s.position @ normal if s.position is not None else None for s in broken]
    copy = [d is not None and np.min(np.abs(depth - d)) <= _SAME_POSITION_MM for d in at]
    for s in (s for s, c in zip(broken, copy) if c):
        warnings.warn(f"skipped corrupt DICOM file {s.path}: {s.problem}; a readable slice is at its position",
                      DicomWarning, stacklevel=3)
    lost = [(s, d) for s, d, c in zip(broken, at, copy) if not c]
    gaps = [f"missing or unreadable slice: {s.path}: {s.problem}, "
            + (_where(d, depth) if d is not None else "position unknown (ImagePositionPatient unreadable)")
            for s, d in lost]
    if len(slices) == 1:
        ds = slices[0].ds
        return float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0), gaps
    all_steps = np.diff(depth)
    spans_lost = np.array([any(d is not None and a < d < b for _, d in lost) for a, b in zip(depth[:-1], depth[1:])])
    steps = all_steps[~spans_lost] if not spans_lost.all() else all_steps
    dz = float(np.median(steps))
    for k in np.flatnonzero((all_steps > GAP_FACTOR * dz) & ~spans_lost):
        gaps.append(f"missing slice(s): a gap of {all_steps[k]:.4g} mm (median spacing {dz:.4g} mm) between "
                    f"{depth[k]:.3f} and {depth[k + 1]:.3f} mm along the slice normal, after slice {k} at "
                    f"ImagePositionPatient {np.round(slices[k].position, 3).tolist()} ({slices[k].path.name}, "
                    f"then {slices[k + 1].path.name})")
    uneven = (np.abs(steps - dz) > max(1e-3, 0.01 * dz)) & (steps <= GAP_FACTOR * dz)
    if uneven.any():
        warnings.warn(f"uneven slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm; the volume "
                      f"uses the median {dz:.4g} mm", DicomWarning, stacklevel=3)
    return dz, gaps


def _plain(value):
    if isinstance(value, (list, MultiValue)):
        return [_plain(v) for v in value]
    return int(value) if isinstance(value, int) else float(value) if isinstance(value, float) else str(value)


def read_series(path: str | os.PathLike | Iterable, series_uid: str | None = None,
                allow_gaps: bool = False) -> DicomVolume:
    """Read one CT series from a folder (searched recursively), a single file or a list of files.

    Args:
        path: a folder, a file, or an iterable of files.
        series_uid: the SeriesInstanceUID to read; required when ``path`` holds several image series
            (see ``list_series``).
        allow_gaps: read a series with missing or unreadable slices: the slices present, at their
            true positions, each gap a ``DicomWarning`` and a line of ``DicomVolume.gaps``. By
            default a gap is a ``ValueError`` naming the file and the position.

    Returns:
        The volume in HU, ordered along the slice normal, with spacing, geometry and tags.

    Raises:
        ValueError: a gap (unless ``allow_gaps``), inconsistent slices, a tag that is not a number
            where one is needed (naming the file and the tag); ``MemoryLimitError`` (a ValueError)
            when the declared sizes need more memory than is available, before any pixel is decoded.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> vol = read_series(get_testdata_file("CT_small.dcm"))
        >>> vol.hu.shape, vol.spacing, vol.gaps
        ((1, 128, 128), (5.0, 0.661468, 0.661468), [])
    """
    series, where, strict = _scan(path)
    if series_uid is None and len(series) > 1:
        listing = "\n".join(f"  {uid}: {len(items)} slices, {str(items[0][1].get('SeriesDescription', ''))!r}"
                            for uid, items in sorted(series.items()))
        raise ValueError(f"{where}: holds {len(series)} image series; pass series_uid= to pick one:\n{listing}")
    if series_uid is not None and series_uid not in series:
        raise ValueError(f"series_uid: {series_uid!r} not found in {where}; found {sorted(series)}")
    uid = series_uid if series_uid is not None else next(iter(series))
    check_size(series[uid], uid)
    loaded = [_load_slice(f, ds, strict) for f, ds in series[uid]]
    slices = [s for s in loaded if s.hu is not None]
    broken = [s for s in loaded if s.hu is None]
    if not slices:
        raise ValueError(f"{where}: series {uid}: no slice has readable pixel data, e.g. {broken[0].path}: "
                         f"{broken[0].problem}")
    normal = _check_consistent(slices)
    depth = np.array([s.position @ normal for s in slices])
    order = np.argsort(depth, kind="stable")
    slices, depth = _drop_duplicates([slices[i] for i in order], depth[order])
    dz, gaps = _gaps(slices, depth, broken, normal)
    if gaps and not allow_gaps:
        more = f" (and {len(gaps) - 1} more gap(s))" if len(gaps) > 1 else ""
        raise ValueError(f"{where}: series {uid}: {gaps[0]}{more}; {_GAPS_HINT}")
    for gap in gaps:
        warnings.warn(gap, DicomWarning, stacklevel=2)
    first = slices[0]
    tags = {kw: _plain(first.ds[kw].value) for kw in _KEPT if first.ds.get(kw) not in (None, "")}
    return DicomVolume(np.stack([s.hu for s in slices]), (dz, *first.pixel_spacing),
                       tuple(float(v) for v in first.orientation), tuple(float(v) for v in first.position),
                       tags, [s.path for s in slices], uid, str(first.ds.get("StudyInstanceUID", "")),
                       np.stack([s.position for s in slices]), gaps)
