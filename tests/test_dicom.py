"""DICOM series: ordering along the normal, validation of messy folders, round trip, HU <-> mu."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, HTJ2KLossless, JPEGLosslessSV1, JPEGLSLossless,
                         JPEGLSNearLossless, RTStructureSetStorage, generate_uid)

from data.dicom import (MU_WATER, DicomVolume, DicomWarning, hu_to_mu, list_series, mu_to_hu, read_series,
                        stable_key)
from data.dicom_write import write_series

ROWS, COLS, PIXEL_SPACING = 6, 5, (0.7, 0.8)
# rotated 30 degrees about x, then 20 about z: an oblique slice normal with all components nonzero
_A, _B = np.deg2rad(30), np.deg2rad(20)
ROW_DIR = np.array([np.cos(_B), np.sin(_B), 0.0])
COL_DIR = np.array([-np.sin(_B) * np.cos(_A), np.cos(_B) * np.cos(_A), np.sin(_A)])
OBLIQUE = tuple(round(float(v), 8) for v in (*ROW_DIR, *COL_DIR))
NORMAL = np.cross(OBLIQUE[:3], OBLIQUE[3:])
ORIGIN = np.array([-50.0, 20.0, 100.0])
PATIENT = {"PatientID": "PAT-0042", "PatientName": "Doe^Jane", "PatientBirthDate": "19700101", "PatientSex": "F",
           "StudyID": "77", "StudyDate": "20240102", "StudyTime": "101500", "AccessionNumber": "ACC9"}


def ct_slice(position, *, series_uid: str, study_uid: str = "1.2.826.0.1.3680043.8.498.1", hu=None,
             orientation=OBLIQUE, instance: int = 1, slope: float = 1.0, intercept: float = -1024.0,
             shape=(ROWS, COLS), description: str = "CHEST", **tags) -> Dataset:
    """A CT Image Storage slice whose stored pixels are ``(hu - intercept) / slope`` as int16."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality = CTImageStorage, "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, "1.2.3.99"
    ds.SeriesDescription, ds.InstanceNumber = description, instance
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing, ds.SliceThickness = list(PIXEL_SPACING), 2.5
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    hu = np.zeros(shape) if hu is None else hu
    ds.PixelData = np.rint((hu - intercept) / slope).astype("<i2").tobytes()
    for keyword, value in {**PATIENT, **tags}.items():
        setattr(ds, keyword, value)
    return ds


def expected_hu(k: int) -> np.ndarray:
    """Slice k's HU values: distinct per slice so that the order can be checked."""
    return 100.0 * k + 2.0 * np.arange(ROWS * COLS, dtype=float).reshape(ROWS, COLS) - 500.0


def make_series(folder, depths=(0, 1, 2, 3, 4, 5), step=2.5, series_uid=None, names=None, **kw) -> str:
    """Write one slice per depth (in units of ``step`` along NORMAL); odd slices use slope 0.5.

    File names run opposite to position and InstanceNumber is shuffled, so neither gives the order."""
    series_uid = series_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(depths))
    instances = rng.permutation(len(depths)) + 1
    for i, k in enumerate(depths):
        ds = ct_slice(ORIGIN + k * step * NORMAL, series_uid=series_uid, hu=expected_hu(k),
                      instance=int(instances[i]), slope=0.5 if k % 2 else 1.0, **kw)
        name = names[i] if names else f"IM{len(depths) - i:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return series_uid


def test_order_follows_the_slice_normal(tmp_path):
    order = [3, 0, 5, 1, 4, 2]  # written in this order, file names unrelated to position
    make_series(tmp_path / "s", depths=order, names=[f"{n}.dcm" for n in "fbdeac"])
    vol = read_series(tmp_path / "s")
    assert vol.hu.shape == (6, ROWS, COLS) and vol.hu.dtype == np.float32
    np.testing.assert_array_equal(vol.hu, np.stack([expected_hu(k) for k in range(6)]))
    np.testing.assert_allclose(vol.spacing, (2.5, *PIXEL_SPACING), rtol=1e-6)
    np.testing.assert_allclose(vol.origin, ORIGIN, atol=1e-5)
    np.testing.assert_allclose(vol.orientation, OBLIQUE)
    np.testing.assert_allclose(vol.normal, NORMAL, atol=1e-7)
    np.testing.assert_allclose(vol.positions, ORIGIN + 2.5 * np.arange(6)[:, None] * NORMAL, atol=1e-5)
    assert [f.name for f in vol.files] == ["b.dcm", "e.dcm", "c.dcm", "f.dcm", "a.dcm", "d.dcm"]
    assert vol.tags["PatientID"] == "PAT-0042" and vol.tags["PatientName"] == "Doe^Jane"
    assert vol.study_uid == vol.tags["StudyInstanceUID"] and vol.series_uid == vol.tags["SeriesInstanceUID"]


def test_file_list_and_single_file(tmp_path):
    make_series(tmp_path, depths=(2, 0, 1))
    files = sorted(tmp_path.glob("*.dcm"))
    np.testing.assert_array_equal(read_series(files).hu[0], expected_hu(0))
    assert read_series(files[0]).hu.shape == (1, ROWS, COLS)


def test_several_series_need_series_uid(tmp_path):
    first = make_series(tmp_path, depths=range(5), description="CHEST 1mm")
    second = make_series(tmp_path / "sub", depths=range(3), description="SCOUT")
    with pytest.raises(ValueError, match="pass series_uid=") as err:
        read_series(tmp_path)
    assert f"{first}: 5 slices, 'CHEST 1mm'" in str(err.value) and f"{second}: 3 slices, 'SCOUT'" in str(err.value)
    assert read_series(tmp_path, series_uid=second).hu.shape[0] == 3
    with pytest.raises(ValueError, match="series_uid: '9.9' not found"):
        read_series(tmp_path, series_uid="9.9")
    infos = {s.series_uid: s for s in list_series(tmp_path)}
    assert infos.keys() == {first, second}
    assert (infos[first].n_files, infos[first].description, infos[first].modality) == (5, "CHEST 1mm", "CT")
    assert read_series(infos[second].files).key == infos[second].key != infos[first].key


def test_missing_slice_raises_or_warns_with_its_position(tmp_path):
    make_series(tmp_path, depths=(0, 1, 2, 4, 5))
    start = float(ORIGIN @ NORMAL)
    where = (rf"missing slice.*between {start + 5:.3f} and {start + 10:.3f} mm.*after "
             r"slice 2 at ImagePositionPatient \[.*\] \(IM0003.dcm, then IM0002.dcm\)")
    with pytest.raises(ValueError, match=where + ".*allow_gaps=True"):
        read_series(tmp_path)
    with pytest.warns(DicomWarning, match=where):
        vol = read_series(tmp_path, allow_gaps=True)
    assert vol.hu.shape[0] == 5 and vol.spacing[0] == pytest.approx(2.5) and len(vol.gaps) == 1
    np.testing.assert_allclose(vol.positions, ORIGIN + 2.5 * np.array([0, 1, 2, 4, 5])[:, None] * NORMAL, atol=1e-5)


def test_uneven_spacing_warns(tmp_path):
    make_series(tmp_path, depths=(0, 1, 2.1, 3, 4))
    with pytest.warns(DicomWarning, match="uneven slice spacing"):
        read_series(tmp_path)


def test_duplicates(tmp_path):
    make_series(tmp_path, depths=range(4))
    shutil.copy(tmp_path / "IM0002.dcm", tmp_path / "copy.dcm")
    with pytest.warns(DicomWarning, match="same SOPInstanceUID"):
        assert read_series(tmp_path).hu.shape[0] == 4
    uid = pydicom.dcmread(tmp_path / "IM0001.dcm").SeriesInstanceUID
    ct_slice(ORIGIN, series_uid=uid).save_as(tmp_path / "other.dcm", enforce_file_format=True)
    with pytest.raises(ValueError, match="two different slices at the same position"):
        read_series(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"orientation": (1, 0, 0, 0, 1, 0)}, "ImageOrientationPatient .* differs"),
    ({"shape": (ROWS, COLS + 1)}, r"Rows x Columns \(6, 6\) differ"),
    ({"PixelSpacing": [0.7, 0.9]}, r"PixelSpacing \(0.7, 0.9\) differs"),
    ({"ImagePositionPatient": None}, "ImagePositionPatient must hold 3 numbers"),
    ({"orientation": (1, 0, 0, 1, 0, 0)}, "ImageOrientationPatient .* differs"),
])
def test_inconsistent_slices_name_the_file(tmp_path, change, message):
    uid = make_series(tmp_path, depths=range(3))
    ct_slice(ORIGIN + 20 * NORMAL, series_uid=uid, hu=np.zeros(change.get("shape", (ROWS, COLS))),
             **change).save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    with pytest.raises(ValueError, match=f"odd.dcm: {message}"):
        read_series(tmp_path)


def test_corrupt_files_are_skipped_in_a_folder_but_not_alone(tmp_path):
    make_series(tmp_path, depths=range(4))
    raw = (tmp_path / "IM0001.dcm").read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(raw[:len(raw) - 20])
    (tmp_path / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(400))
    with pytest.warns(DicomWarning) as record:
        assert read_series(tmp_path).hu.shape[0] == 4
    messages = " ".join(str(w.message) for w in record)
    assert "corrupt DICOM file" in messages and "truncated.dcm" in messages and "garbage.dcm" in messages
    for name in ("truncated.dcm", "garbage.dcm"):
        with pytest.raises(ValueError, match=name):
            read_series(tmp_path / name)


def test_non_image_and_non_dicom_files_are_skipped(tmp_path):
    make_series(tmp_path, depths=range(3))
    rt = Dataset()  # an RT structure set: another series, no pixel data
    rt.file_meta = FileMetaDataset()
    rt.file_meta.MediaStorageSOPClassUID = rt.SOPClassUID = RTStructureSetStorage
    rt.file_meta.MediaStorageSOPInstanceUID = rt.SOPInstanceUID = generate_uid()
    rt.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rt.SeriesInstanceUID, rt.Modality = generate_uid(), "RTSTRUCT"
    rt.save_as(tmp_path / "rtstruct.dcm", enforce_file_format=True)
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.warns(DicomWarning, match="skipped 1 file.* not DICOM"):
        assert read_series(tmp_path).hu.shape[0] == 3
    with pytest.warns(DicomWarning):
        assert len(list_series(tmp_path)) == 1
    with pytest.raises(ValueError, match="no DICOM image series.*1 without pixel data"):
        read_series(tmp_path / "rtstruct.dcm")
    with pytest.raises(ValueError, match="not a readable DICOM file: .*notes.txt"):
        read_series(tmp_path / "notes.txt")


def test_empty_and_missing_paths(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*no DICOM image series"):
        read_series(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_series(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="gone.dcm"):
        list_series([tmp_path / "gone.dcm"])


def test_compressed_without_decoder_names_syntax_file_and_packages(tmp_path):
    syntax = next((s for s in (JPEGLSLossless, JPEGLSNearLossless, JPEGLosslessSV1, HTJ2KLossless)
                   if not get_decoder(s).is_available), None)
    if syntax is None:
        pytest.skip("every candidate compressed transfer syntax has a decoder here")
    ds = ct_slice(ORIGIN, series_uid=generate_uid())
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8 not really compressed \xff\xd9"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(tmp_path / "compressed.dcm", enforce_file_format=True)
    with pytest.raises(ValueError, match=f"compressed.dcm: .*'{re.escape(syntax.name)}'.*pylibjpeg"):
        read_series(tmp_path)


def test_round_trip_keeps_values_geometry_and_tags(tmp_path, rng):
    make_series(tmp_path / "in", depths=range(5))
    vol = read_series(tmp_path / "in")
    recon = vol.hu + rng.uniform(-300, 300, vol.hu.shape).astype(np.float32)
    files = write_series(recon, tmp_path / "out", vol, description="TV recon", window=(40, 400))
    assert [f.name for f in files] == [f"slice_{k:04d}.dcm" for k in range(1, 6)]
    back = read_series(tmp_path / "out")
    first = pydicom.dcmread(files[0])
    half_step = float(first.RescaleSlope) / 2
    np.testing.assert_allclose(back.hu, recon, rtol=0, atol=half_step * 1.001 + 1e-4)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.orientation, vol.orientation, atol=1e-9)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-6)
    positions = [pydicom.dcmread(f).ImagePositionPatient for f in files]
    np.testing.assert_allclose(np.array(positions, float), vol.positions, atol=1e-6)
    for keyword in (*PATIENT, "StudyInstanceUID", "FrameOfReferenceUID", "Modality"):
        assert back.tags[keyword] == vol.tags[keyword], keyword
    assert back.series_uid != vol.series_uid and back.study_uid == vol.study_uid and back.key != vol.key
    assert list(first.ImageType) == ["DERIVED", "SECONDARY"] and first.SeriesDescription == "TV recon"
    assert first.SOPClassUID == CTImageStorage and first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (float(first.WindowCenter), float(first.WindowWidth)) == (40.0, 400.0)
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == 5


def test_write_refuses_to_overwrite_and_validates(tmp_path):
    template = {**PATIENT, "StudyInstanceUID": "1.2.3", "Modality": "CT"}
    write_series(np.zeros((3, 4, 4)), tmp_path, template, spacing=(1, 1, 1))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_series(np.zeros((2, 4, 4)), tmp_path, template, spacing=(1, 1, 1))
    write_series(np.full((2, 4, 4), 7.0), tmp_path, template, spacing=(1, 1, 1), overwrite=True)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["slice_0001.dcm", "slice_0002.dcm"]
    np.testing.assert_allclose(read_series(tmp_path).hu, 7.0, atol=1e-3)
    with pytest.raises(ValueError, match="spacing: required"):
        write_series(np.zeros((2, 4, 4)), tmp_path / "a", template)
    with pytest.raises(ValueError, match="volume_hu contains NaN"):
        write_series(np.full((2, 4, 4), np.nan), tmp_path / "b", template, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="template: ImageOrientationPatient must be two orthogonal unit vectors"):
        write_series(np.zeros((2, 4, 4)), tmp_path / "d", {"ImageOrientationPatient": (1, 0, 0, 1, 0, 0)},
                     spacing=(1, 1, 1))
    with pytest.raises(ValueError, match=r"volume_hu: expected shape \(slices, H, W\)"):
        write_series(np.zeros(4), tmp_path / "c", template, spacing=(1, 1, 1))


def _cut(text: str, limit: int = 64) -> str:
    """The first ``limit`` bytes of ``text`` in UTF-8, whole characters only (DICOM's LO limit)."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def test_hostile_tags_never_reach_a_path(tmp_path):
    hostile = "../../x/../évil/" + "ü" * 200
    uid = make_series(tmp_path / "in", depths=range(2), PatientID=_cut(hostile), SeriesDescription=_cut(hostile))
    vol = read_series(tmp_path / "in")
    vol.tags["PatientID"] = hostile  # longer than any DICOM field: cut, not trusted
    before = set(tmp_path.rglob("*"))
    out = tmp_path / "out"
    files = write_series(vol.hu, out, vol, description="..\\..\\" + hostile)
    assert set(tmp_path.rglob("*")) - before == {out, *files}
    assert [f.name for f in files] == ["slice_0001.dcm", "slice_0002.dcm"]
    back = read_series(out)
    assert back.tags["PatientID"] == _cut(hostile)
    assert back.tags["SeriesDescription"] == _cut("../../" + hostile)  # the value separator '\\' replaced
    assert re.fullmatch("[0-9a-f]{16}", vol.key) and vol.key == stable_key(vol.study_uid, uid)
    assert DicomVolume(vol.hu, vol.spacing, vol.orientation, vol.origin, {}, [], uid, vol.study_uid).key == vol.key


def test_pydicom_ct_small():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = read_series(path)
    reference = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.hu[0], reference)
    assert -1100 <= vol.hu.min() < vol.hu.max() <= 3100  # a plausible CT range in HU
    assert vol.spacing[1:] == tuple(float(v) for v in ds.PixelSpacing)
    assert vol.spacing[0] == float(ds.SliceThickness)
    np.testing.assert_allclose(vol.origin, [float(v) for v in ds.ImagePositionPatient])
    assert vol.tags["PatientName"] == str(ds.PatientName) and vol.tags["Modality"] == "CT"


def test_hu_mu_conversion(rng):
    hu = rng.uniform(-1000, 3000, 100)
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu)), hu, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu, mu_water=0.025), mu_water=0.025), hu, rtol=1e-12, atol=1e-9)
    assert hu_to_mu(0.0) == pytest.approx(MU_WATER) and mu_to_hu(MU_WATER) == pytest.approx(0.0)
    assert hu_to_mu(-1000.0) == pytest.approx(0.0, abs=1e-12) and mu_to_hu(0.0) == pytest.approx(-1000.0)
    assert mu_to_hu(np.zeros(3, np.float32)).dtype == np.float32  # keeps the input dtype
    with pytest.raises(ValueError, match="mu_water: must exceed mu_air"):
        hu_to_mu(0.0, mu_water=0.0)
