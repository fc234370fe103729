"""A hostile DICOM set: one small CT series per defect, plus good series and a junk file.

Plain functions for tests (no pytest here). ``write_hostile_dicom(folder)`` writes every case under
``folder/<case>/`` (``junk.dcm`` at the top) and returns, for the cases that must fail, a fragment
of the error that ``data.dicom.read_series`` (and so a ``recon batch`` study) reports. Each case is a
valid series apart from its one defect, with its own StudyInstanceUID and SeriesInstanceUID
(derived from the case name, so they are the same on every run).

Example (as a test would use it)::

    expected = write_hostile_dicom(tmp_path)
    with pytest.raises(ValueError, match=re.escape(expected["nan_slope"])):
        read_series(tmp_path / "nan_slope")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from tests.test_dicom import ct_slice

SIZE, SLICES, STEP = 32, 4, 2.5
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
HOSTILE_TAGS = {  # NUL bytes, path traversal and shell metacharacters, as raw tag text
    "PatientID": "../../etc/passwd\x00$(rm -rf /)",
    "PatientName": "Doe^Jane\x00`x` | y; rm -rf ~",
    "StudyDescription": "$(rm -rf /); `x` | y > /dev/null",
    "SeriesDescription": "../../../tmp/evil\x00name && echo pwned",
    "AccessionNumber": "..\x00/..;|&",
}
#: the file names of the ``hostile_tags`` series: shell metacharacters that would create PWNED if run
HOSTILE_NAME = "$(touch PWNED); `touch PWNED` | {k} & ..slice.dcm"
GOOD_CASES = ("good", "hostile_tags")
EXPECTED_ERRORS = {
    "bad_orientation": "ImageOrientationPatient must be two orthogonal unit vectors",
    "duplicate_positions": "two different slices at the same position",
    "missing_pixel_data": "no pixel data",
    "wrong_bits_allocated": "BitsAllocated",
    "nan_slope": "RescaleSlope must be a finite nonzero number, found 'NaN'",
    "garbage_slope": "RescaleSlope must be a finite nonzero number, found 'abc'",
    "huge_rows_columns": "Rows x Columns 65535 x 65535",
    "truncated_slice": "missing or unreadable slice",
}


def phantom_hu(k: int, size: int = SIZE) -> np.ndarray:
    """Slice ``k`` of a phantom in HU: air (-1000), a water disc (0) and a bone insert (700 + 20 k)."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    hu = np.full((size, size), -1000.0)
    hu[x ** 2 + y ** 2 < (0.4 * size) ** 2] = 0.0
    hu[(x - 0.15 * size) ** 2 + (y + 0.1 * size) ** 2 < (0.1 * size) ** 2] = 700.0 + 20.0 * k
    return hu


def set_raw(ds: Dataset, keyword: str, text: str | bytes) -> None:
    """Store ``text`` as the tag's bytes, unchecked (NUL bytes, 'abc' in a DS), padded to even length."""
    raw = text.encode("latin-1") if isinstance(text, str) else text
    raw += b" " * (len(raw) % 2)
    tag = Tag(tag_for_keyword(keyword))
    ds[tag] = RawDataElement(tag, dictionary_VR(keyword), len(raw), raw, 0, False, True)


def _uid(case: str, what: str) -> str:
    return generate_uid(entropy_srcs=["recon hostile dicom", case, what])


def write_good_dicom_series(folder: Path, slices: int = SLICES, size: int = SIZE, case: str = "good",
                            edit: Callable[[int, Dataset], Dataset | None] | None = None,
                            raw_tags: dict[str, str] | None = None) -> str:
    """A valid axial CT series in ``folder``: ``slices`` slices of ``size`` x ``size`` 1 mm pixels of
    ``phantom_hu``, 2.5 mm apart from z = 0, files ``slice_01.dcm`` onwards; returns its SeriesInstanceUID.

    ``raw_tags`` are stored as raw bytes (unchecked); ``edit(k, ds)`` may change slice ``k`` before it
    is saved (return ``None`` to leave slice ``k`` out)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = _uid(case, "series"), _uid(case, "study")
    for k in range(slices):
        ds = ct_slice((0.0, 0.0, STEP * k), series_uid=series_uid, study_uid=study_uid, hu=phantom_hu(k, size),
                      orientation=AXIAL, instance=k + 1, shape=(size, size), description=case,
                      PixelSpacing=[1.0, 1.0])
        for keyword, text in (raw_tags or {}).items():
            set_raw(ds, keyword, text)
        ds = edit(k, ds) if edit else ds
        if ds is not None:
            ds.save_as(folder / f"slice_{k + 1:02d}.dcm", enforce_file_format=True)
    return series_uid


def _bad_orientation(k: int, ds: Dataset) -> Dataset:
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # parallel: no slice normal
    return ds


def _duplicate_position(k: int, ds: Dataset) -> Dataset:
    if k == 2:
        ds.ImagePositionPatient = [0.0, 0.0, STEP]  # where slice 1 already is, other pixels
    return ds


def _no_pixel_data(k: int, ds: Dataset) -> Dataset:
    if k == 2:
        del ds.PixelData  # still a CT image with Rows, Columns and ImagePositionPatient
    return ds


def _bits_allocated(k: int, ds: Dataset) -> Dataset:
    if k == 1:
        ds.BitsAllocated = 12  # not a whole number of bytes; PixelData still holds 16-bit values
    return ds


def _slope(text: str) -> Callable[[int, Dataset], Dataset]:
    def edit(k: int, ds: Dataset) -> Dataset:
        if k == 1:
            set_raw(ds, "RescaleSlope", text)
        return ds
    return edit


def _huge(k: int, ds: Dataset) -> Dataset:
    ds.Rows = ds.Columns = 65535  # declared: 65535^2 pixels per slice; the file keeps 32 x 32 of data
    return ds


def write_hostile_dicom(folder: Path) -> dict[str, str]:
    """Write every case under ``folder/<case>/`` and ``folder/junk.dcm`` (random bytes, to be skipped
    with a note); return ``{case: fragment of its error}`` for the cases that must fail.

    The cases that must succeed are ``GOOD_CASES``: ``good`` and ``hostile_tags`` (a good series whose
    patient, study and series tags hold ``HOSTILE_TAGS`` and whose file names ``HOSTILE_NAME``)."""
    folder.mkdir(parents=True, exist_ok=True)
    edits = {"bad_orientation": _bad_orientation, "duplicate_positions": _duplicate_position,
             "missing_pixel_data": _no_pixel_data, "wrong_bits_allocated": _bits_allocated,
             "nan_slope": _slope("NaN"), "garbage_slope": _slope("abc"), "huge_rows_columns": _huge}
    for case, edit in edits.items():
        write_good_dicom_series(folder / case, case=case, edit=edit)
    write_good_dicom_series(folder / "truncated_slice", case="truncated_slice")
    third = folder / "truncated_slice" / "slice_03.dcm"
    third.write_bytes(third.read_bytes()[:-700])  # cut inside the pixel data, as an interrupted copy would
    write_good_dicom_series(folder / "good", case="good")
    write_good_dicom_series(folder / "hostile_tags", case="hostile_tags", raw_tags=HOSTILE_TAGS)
    for k, path in enumerate(sorted((folder / "hostile_tags").iterdir())):
        path.rename(path.with_name(HOSTILE_NAME.format(k=k)))
    (folder / "junk.dcm").write_bytes(np.random.default_rng(7).bytes(3000))
    return dict(EXPECTED_ERRORS)
