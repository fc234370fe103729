"""Hostile DICOM input: missing or unreadable slices, declared sizes, garbage numbers, hostile tag text."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (BasicTextSRStorage, ExplicitVRLittleEndian, GrayscaleSoftcopyPresentationStateStorage,
                         RTStructureSetStorage, generate_uid)

from data.dicom import DicomWarning, list_series, read_series
from data.dicom_write import write_series
from data.limits import MemoryLimitError
from tests.hostile_dicom import (GOOD_CASES, HOSTILE_TAGS, SIZE, STEP, phantom_hu, set_raw, write_good_dicom_series,
                                 write_hostile_dicom)


def _without(k_missing: int):
    """An edit for ``write_good_dicom_series`` that keeps slice ``k_missing`` but drops its PixelData."""
    def edit(k: int, ds: Dataset) -> Dataset:
        if k == k_missing:
            del ds.PixelData
        return ds
    return edit


def _z(positions) -> list[float]:
    return [round(float(p[2]), 3) for p in positions]


# A. a missing or unreadable slice is never closed silently

def test_slice_without_pixel_data_raises_naming_file_and_position(tmp_path):
    write_good_dicom_series(tmp_path, edit=_without(2))  # z = 0, 2.5, (5: no pixels), 7.5
    with pytest.raises(ValueError, match="allow_gaps=True") as err:
        read_series(tmp_path)
    message = str(err.value)
    assert "slice_03.dcm: no pixel data" in message and "5.000 mm along the slice normal" in message
    assert "between 2.500 and 7.500 mm" in message


def test_allow_gaps_reads_the_slices_present_and_records_the_gap(tmp_path):
    write_good_dicom_series(tmp_path, edit=_without(2))
    with pytest.warns(DicomWarning, match="slice_03.dcm: no pixel data"):
        vol = read_series(tmp_path, allow_gaps=True)
    assert vol.hu.shape == (3, SIZE, SIZE) and vol.spacing[0] == pytest.approx(STEP)
    np.testing.assert_array_equal(vol.hu[2], phantom_hu(3))
    assert _z(vol.slice_positions) == [0.0, 2.5, 7.5] and _z(vol.positions) == [0.0, 2.5, 7.5]
    assert any("slice_03.dcm" in g for g in vol.gaps) and any("between 2.500 and 7.500 mm" in g for g in vol.gaps)
    assert not any("PAT-0042" in g or "Doe" in g for g in vol.gaps)  # no patient data


def test_a_gap_stays_a_gap_when_written_back(tmp_path):
    write_good_dicom_series(tmp_path / "in", edit=_without(2))
    with pytest.warns(DicomWarning):
        vol = read_series(tmp_path / "in", allow_gaps=True)
    files = write_series(vol.hu, tmp_path / "out", vol)
    assert _z(pydicom.dcmread(f).ImagePositionPatient for f in files) == [0.0, 2.5, 7.5]
    assert [float(pydicom.dcmread(f).SliceLocation) for f in files] == [0.0, 2.5, 7.5]
    with pytest.warns(DicomWarning):  # 3 slices, steps 2.5 and 5: uneven around their median
        back = read_series(tmp_path / "out", allow_gaps=True)
    assert _z(back.slice_positions) == [0.0, 2.5, 7.5]
    moved = write_series(vol.hu, tmp_path / "moved", dataclasses.replace(vol, origin=(0.0, 0.0, 10.0)))
    assert _z(pydicom.dcmread(f).ImagePositionPatient for f in moved) == [10.0, 12.5, 17.5]
    regrid = write_series(vol.hu[:2], tmp_path / "two", vol)  # another slice count: the regular grid
    assert _z(pydicom.dcmread(f).ImagePositionPatient for f in regrid) == [0.0, 2.5]


def test_a_geometric_gap_raises_by_default(tmp_path):
    write_good_dicom_series(tmp_path, slices=5, edit=lambda k, ds: None if k == 3 else ds)  # the file is gone
    with pytest.raises(ValueError, match=r"missing slice.*between 5.000 and 10.000 mm.*slice_03.dcm, then slice_05"):
        read_series(tmp_path)


def test_a_truncated_slice_of_the_series_raises_naming_it(tmp_path):
    write_good_dicom_series(tmp_path)
    third = tmp_path / "slice_03.dcm"
    third.write_bytes(third.read_bytes()[:-700])
    with pytest.raises(ValueError, match=r"slice_03.dcm: PixelData holds \d+ bytes"):
        read_series(tmp_path)
    with pytest.warns(DicomWarning, match="slice_03.dcm"):
        assert len(read_series(tmp_path, allow_gaps=True).hu) == 3


def test_list_series_keeps_a_broken_last_slice_so_read_series_fails(tmp_path):
    write_good_dicom_series(tmp_path, edit=_without(3))  # the last slice: no gap between slices shows it
    (info,) = list_series(tmp_path)
    assert info.n_files == 4 and tmp_path / "slice_04.dcm" in info.files
    with pytest.raises(ValueError, match="slice_04.dcm: no pixel data"):
        read_series(info.files, series_uid=info.series_uid)


@pytest.mark.parametrize("sop_class", [RTStructureSetStorage, BasicTextSRStorage,
                                       GrayscaleSoftcopyPresentationStateStorage])
def test_objects_without_pixel_data_by_nature_are_not_gaps(tmp_path, sop_class):
    uid = write_good_dicom_series(tmp_path)
    other = Dataset()  # same series, no Rows, no ImagePositionPatient, a non-image SOP class
    other.file_meta = FileMetaDataset()
    other.file_meta.MediaStorageSOPClassUID = other.SOPClassUID = sop_class
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID = generate_uid()
    other.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    other.SeriesInstanceUID, other.Modality = uid, "OT"
    other.save_as(tmp_path / "other.dcm", enforce_file_format=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DicomWarning)
        assert read_series(tmp_path).gaps == []


# B. declared sizes are checked before pixels are decoded

def _no_decoding(monkeypatch):
    def refuse(self):
        raise AssertionError("pixel data decoded")
    monkeypatch.setattr(Dataset, "pixel_array", property(refuse))


def test_huge_rows_columns_are_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv("RECON_MEMORY_LIMIT", "1G")
    def huge(k, ds):
        ds.Rows = ds.Columns = 60000
        return ds
    write_good_dicom_series(tmp_path, edit=huge)
    _no_decoding(monkeypatch)
    with pytest.raises(MemoryLimitError, match=r"slice_0\d.dcm: Rows x Columns 60000 x 60000.*RECON_MEMORY_LIMIT"):
        read_series(tmp_path)


def test_many_slices_over_the_limit_are_refused(tmp_path, monkeypatch):
    write_good_dicom_series(tmp_path, slices=12)
    monkeypatch.setenv("RECON_MEMORY_LIMIT", "64K")  # 12 x 32 x 32 float32 slices and their stack: ~100 KB
    _no_decoding(monkeypatch)
    with pytest.raises(MemoryLimitError, match=r"Rows x Columns 32 x 32, 12 slice"):
        read_series(tmp_path)


# C. garbage numbers name the file and the tag

@pytest.mark.parametrize("keyword, text", [("RescaleSlope", "abc"), ("RescaleSlope", "NaN"), ("RescaleSlope", "Inf"),
                                           ("RescaleSlope", "0"), ("RescaleIntercept", "-inf"),
                                           ("RescaleIntercept", "12abc")])
def test_garbage_rescale_names_file_tag_and_value(tmp_path, keyword, text):
    def edit(k, ds):
        if k == 1:
            set_raw(ds, keyword, text)
        return ds
    write_good_dicom_series(tmp_path, edit=edit)
    with pytest.raises(ValueError, match=rf"slice_02.dcm: {keyword} must be a finite .*number, found '{text}'"):
        read_series(tmp_path)


@pytest.mark.parametrize("bits", [12, 64, 0])
def test_wrong_bits_allocated_is_a_named_unreadable_slice(tmp_path, bits):
    def edit(k, ds):
        if k == 1:
            ds.BitsAllocated = bits
        return ds
    write_good_dicom_series(tmp_path, edit=edit)
    with pytest.raises(ValueError, match=rf"slice_02.dcm: .*BitsAllocated.*{bits}"):
        read_series(tmp_path)
    with pytest.warns(DicomWarning, match=rf"slice_02.dcm: .*BitsAllocated.*{bits}"):
        assert _z(read_series(tmp_path, allow_gaps=True).slice_positions) == [0.0, 5.0, 7.5]
    with pytest.raises(ValueError, match=rf"slice_02.dcm: .*BitsAllocated.*{bits}"):
        read_series(tmp_path / "slice_02.dcm")  # alone: raises whatever allow_gaps says
    with pytest.raises(ValueError, match=rf"slice_02.dcm: .*BitsAllocated.*{bits}"):
        read_series(tmp_path / "slice_02.dcm", allow_gaps=True)


# D. hostile tag text is read as is and written back without NUL bytes

def test_hostile_tags_are_read_and_written_back_clean(tmp_path, monkeypatch):
    write_good_dicom_series(tmp_path / "in", case="hostile_tags", raw_tags={**HOSTILE_TAGS, "PatientBirthDate": "19\x007"})
    vol = read_series(tmp_path / "in")
    assert vol.tags["PatientID"] == HOSTILE_TAGS["PatientID"] and vol.tags["StudyDescription"] == HOSTILE_TAGS[
        "StudyDescription"]
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.RAISE)
    before = set(tmp_path.rglob("*"))
    with pytest.warns(DicomWarning, match="PatientBirthDate"):
        files = write_series(vol.hu, tmp_path / "out", vol, description=HOSTILE_TAGS["SeriesDescription"])
    assert set(tmp_path.rglob("*")) - before == {tmp_path / "out", *files}
    back = pydicom.dcmread(files[0])
    for keyword in ("PatientID", "PatientName", "StudyDescription", "AccessionNumber", "SeriesDescription"):
        value = str(back[keyword].value)
        assert "\x00" not in value and value == HOSTILE_TAGS[keyword].replace("\x00", ""), keyword
        pydicom.valuerep.validate_value(back[keyword].VR, value, config.RAISE)
    assert "PatientBirthDate" not in back  # invalid as a date even without the NUL: left out
    np.testing.assert_allclose(read_series(tmp_path / "out").hu, vol.hu, atol=0.05)


# the hostile set for end-to-end tests

def test_hostile_set_fails_each_case_with_its_message_and_reads_the_good_ones(tmp_path):
    expected = write_hostile_dicom(tmp_path)
    assert set(expected).isdisjoint(GOOD_CASES) and len(expected) == 8
    for case, fragment in expected.items():
        with pytest.raises(ValueError, match=re.escape(fragment)):
            read_series(tmp_path / case)
    for case in GOOD_CASES:
        assert read_series(tmp_path / case).hu.shape == (4, SIZE, SIZE)
    with pytest.warns(DicomWarning, match=r"not DICOM, e.g. .*junk.dcm"):
        infos = list_series(tmp_path)
    assert len({i.study_uid for i in infos}) == len({i.series_uid for i in infos}) == len(infos) == 10


def test_a_missing_file_after_an_unreadable_slice_reports_its_own_gap(tmp_path):
    """z = 0 .. 22.5 every 2.5 mm: slice 3 (z = 5) has no pixel data, slice 8 (z = 17.5) is gone."""
    write_good_dicom_series(tmp_path, slices=10, edit=lambda k, ds: None if k == 7 else _without(2)(k, ds))
    with pytest.warns(DicomWarning):
        vol = read_series(tmp_path, allow_gaps=True)
    assert len(vol.gaps) == 2 and "slice_03.dcm: no pixel data" in vol.gaps[0]
    assert "a gap of 5 mm (median spacing 2.5 mm) between 15.000 and 20.000 mm" in vol.gaps[1], vol.gaps
