"""Hostile HDF5 inputs: files that point at other files of the host, declare sizes they cannot hold,
or hold text where a number belongs, refused by every reader with the file and the culprit named."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

import data.hdf5 as hdf5
from data.fastmri import read_fastmri
from data.hdf5 import read_ct, write_ct
from data.limits import ENV, MemoryLimitError
from data.mri import read_kspace, write_kspace
from data.training import HDF5ImageDataset
from tests.hostile_hdf5 import (FOREIGN_KINDS, FRAGMENTS, GEOMETRY, MARKER, add_foreign_dataset, disc_sinogram,
                                write_good_ct, write_hostile_hdf5)


def _open_files() -> int:
    return len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE))


def _kspace_file(path):
    return write_kspace(path, np.ones((2, 8, 8), np.complex64), mask=np.ones((8, 8)))


def _fastmri_file(path):
    with h5py.File(path, "w") as f:
        f["kspace"] = np.ones((3, 2, 8, 8), np.complex64)
        f["reconstruction_rss"] = np.ones((3, 4, 4), np.float32)
    return path


def _images_file(path):
    with h5py.File(path, "w") as f:
        f["images"] = np.ones((4, 8, 8), np.float32)
    return path


# reader name: (write a good file, the dataset the reader reads, read the file)
READERS = {
    "read_ct": (write_good_ct, "sinogram", read_ct),
    "read_kspace": (_kspace_file, "kspace", read_kspace),
    "read_fastmri": (_fastmri_file, "kspace", read_fastmri),
    "HDF5ImageDataset": (_images_file, "images", lambda p: HDF5ImageDataset(p)[0]),
}


def _make_foreign(path, name, kind, secret):
    """Replace dataset ``name`` of ``path`` by the same values stored in another file as ``kind``."""
    with h5py.File(path, "a") as f:
        data = f[name][()]
        del f[name]
        add_foreign_dataset(f, name, kind, data, secret)
    return path


def _refusal(path, name, kind) -> str:
    return re.escape(f"{path}: ") + ".*" + re.escape(FRAGMENTS[kind].format(name=f"/{name}"))


# ----------------------------------------------------------------- other files of the host
@pytest.mark.parametrize("kind", FOREIGN_KINDS)
@pytest.mark.parametrize("reader", READERS)
def test_every_reader_refuses_data_from_other_files(tmp_path, reader, kind):
    write, name, read = READERS[reader]
    path = _make_foreign(write(tmp_path / "study.h5"), name, kind, tmp_path / "secret")
    before = _open_files()
    with pytest.raises(ValueError, match=_refusal(path, name, kind)):
        read(path)
    assert _open_files() == before


@pytest.mark.parametrize("kind", FOREIGN_KINDS)
@pytest.mark.parametrize("reader", READERS)
def test_a_foreign_dataset_the_reader_does_not_need_is_refused_too(tmp_path, reader, kind):
    write, _, read = READERS[reader]
    path = write(tmp_path / "study.h5")
    with h5py.File(path, "a") as f:
        add_foreign_dataset(f.create_group("extras"), "leak", kind, np.zeros(4), tmp_path / "secret")
    with pytest.raises(ValueError, match=_refusal(path, "extras/leak", kind)):
        read(path)


@pytest.mark.parametrize("kind", FOREIGN_KINDS)
def test_hdf5_image_dataset_checks_the_file_again_per_item(tmp_path, kind):
    path = _images_file(tmp_path / "train.h5")
    ds = HDF5ImageDataset(path)
    _make_foreign(path, "images", kind, tmp_path / "secret")  # swapped after the dataset was made
    with pytest.raises(ValueError, match=_refusal(path, "images", kind)):
        ds[1]


@pytest.mark.parametrize("kind", FOREIGN_KINDS)
def test_open_hdf5_refuses_and_closes_the_file(tmp_path, kind):
    path = _make_foreign(write_good_ct(tmp_path / "scan.h5"), "sinogram", kind, tmp_path / "secret")
    before = _open_files()
    with pytest.raises(ValueError, match=_refusal(path, "sinogram", kind)) as err:
        hdf5.open_hdf5(path)
    assert _open_files() == before and MARKER not in str(err.value)


def test_soft_links_inside_the_file_are_followed_and_cycles_refused(tmp_path):
    path = write_good_ct(tmp_path / "scan.h5")
    with h5py.File(path, "a") as f:
        f.move("sinogram", "raw/sinogram")
        f["sinogram"] = h5py.SoftLink("/raw/sinogram")
        f["raw/parent"] = f["raw"]  # a hard-link cycle: visited once
    np.testing.assert_array_equal(read_ct(path).sinogram, disc_sinogram()[0])
    with h5py.File(path, "a") as f:
        del f["sinogram"]
        f["sinogram"], f["loop"] = h5py.SoftLink("/loop"), h5py.SoftLink("/sinogram")
    with pytest.raises(ValueError, match=re.escape(f"{path}: soft link '/loop' -> '/sinogram' does not resolve")):
        read_ct(path)


def test_write_hostile_hdf5_cases_are_all_refused_with_their_fragment(tmp_path):
    cases = write_hostile_hdf5(tmp_path / "studies", tmp_path / "secret")
    assert len(cases) == 5 and MARKER in (tmp_path / "secret" / "external_raw" / "secret.bin").read_text("latin-1")
    for name, fragment in cases.items():
        with pytest.raises(ValueError, match=re.escape(fragment)) as err:
            read_ct(tmp_path / "studies" / name)
        assert str(tmp_path / "studies" / name) in str(err.value) and MARKER not in str(err.value)
    assert read_ct(write_good_ct(tmp_path / "good.h5")).sinogram.shape == (20, 48)


# ----------------------------------------------------------------- declared sizes
def test_a_huge_declared_sinogram_is_refused_before_allocating(tmp_path):
    write_hostile_hdf5(tmp_path / "studies", tmp_path / "secret")
    path = tmp_path / "studies" / "huge_sinogram.h5"
    assert path.stat().st_size < 2**20
    with pytest.raises(MemoryLimitError, match=re.escape(f"{path}: dataset 'sinogram' (1000, 20000, 50000) float32")):
        read_ct(path)


def _chunked(f, name, shape, dtype):
    """A dataset of ``shape`` never written: gzip chunks of fill values, a few KB on disk."""
    f.create_dataset(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]) if len(shape) > 1 else True,
                     compression="gzip")


def _ct_reference(path):
    write_ct(path, np.ones((10, 20)), np.linspace(0, np.pi, 10), {**GEOMETRY, "image_shape": (1000, 1000)})
    with h5py.File(path, "a") as f:
        _chunked(f, "reference", (1000, 1000), np.float32)
    return read_ct, "reference"


def _ct_angles(path):
    write_ct(path, np.ones((10, 20)), np.linspace(0, np.pi, 10), GEOMETRY)
    with h5py.File(path, "a") as f:
        del f["angles"]
        _chunked(f, "angles", (1_000_000,), np.float64)
    return read_ct, "angles"


def _kspace(path):
    with h5py.File(path, "w") as f:
        _chunked(f, "kspace", (4, 2, 256, 256), np.complex64)
    return lambda p: read_kspace(p, slices=[0, 1]), "kspace"


def _fastmri_kspace(path):
    with h5py.File(path, "w") as f:
        _chunked(f, "kspace", (4, 2, 256, 256), np.complex64)
    return read_fastmri, "kspace"


def _fastmri_rss(path):
    _fastmri_file(path)
    with h5py.File(path, "a") as f:
        del f["reconstruction_rss"]
        _chunked(f, "reconstruction_rss", (3, 1000, 1000), np.float32)
    return lambda p: read_fastmri(p, slices=1), "reconstruction_rss"


def _fastmri_header(path):
    _fastmri_file(path)
    with h5py.File(path, "a") as f:
        _chunked(f, "ismrmrd_header", (1_000_000,), "S16")
    return read_fastmri, "ismrmrd_header"


def _images(path):
    with h5py.File(path, "w") as f:
        _chunked(f, "images", (3, 1000, 1000), np.float64)
    return lambda p: HDF5ImageDataset(p)[0], "images"


@pytest.mark.parametrize("make", [_ct_reference, _ct_angles, _kspace, _fastmri_kspace, _fastmri_rss,
                                  _fastmri_header, _images])
def test_every_dataset_read_is_checked_against_the_memory_limit(tmp_path, monkeypatch, make):
    path = tmp_path / "study.h5"
    read, name = make(path)
    monkeypatch.setenv(ENV, "1M")
    with pytest.raises(MemoryLimitError, match=re.escape(f"{path}: dataset '{name}' (")):
        read(path)


def test_hdf5_image_dataset_checks_memory_per_item(tmp_path, monkeypatch):
    with h5py.File(tmp_path / "train.h5", "w") as f:
        _chunked(f, "images", (3, 500, 500), np.float32)
    ds = HDF5ImageDataset(tmp_path / "train.h5")
    monkeypatch.setenv(ENV, "1M")
    with pytest.raises(MemoryLimitError, match=re.escape(f"{tmp_path / 'train.h5'}: dataset 'images' (3, 500, 500)")):
        ds[0]


def test_a_huge_declared_npy_kspace_is_refused_before_allocating(tmp_path):
    path = tmp_path / "k.npy"
    header = {"descr": "<c8", "fortran_order": False, "shape": (1000, 20000, 50000)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, header)
    with pytest.raises(MemoryLimitError, match=re.escape(f"{path}: array (1000, 20000, 50000) complex64")):
        read_kspace(path)


# ----------------------------------------------------------------- attributes
@pytest.mark.parametrize("key, value, expected", [
    ("pixel_size", "abc", "a positive number (mm)"),
    ("detector_spacing", b"x", "a positive number (mm)"),
    ("image_size", "abc", "a positive integer or [H, W]"),
    ("noise_std", "abc", "a positive number"),
    ("noise_std", [1.0, 2.0], "a positive number"),
    ("noise_std", np.nan, "a positive number"),
    ("pixel_size", np.inf, "a positive number (mm)"),
])
def test_attributes_of_the_wrong_kind_are_named(tmp_path, key, value, expected):
    path = write_good_ct(tmp_path / "scan.h5")
    with h5py.File(path, "a") as f:
        f.attrs[key] = value
    with pytest.raises(ValueError, match=re.escape(f"{path}: attribute '{key}': expected {expected}, got ")):
        read_ct(path)


def test_fan_geometry_attributes_of_the_wrong_kind_are_named(tmp_path):
    path = write_good_ct(tmp_path / "scan.h5")
    with h5py.File(path, "a") as f:
        f.attrs.update({"geometry": "fan", "source_origin": "far", "origin_detector": 50.0})
    with pytest.raises(ValueError, match=re.escape(f"{path}: attribute 'source_origin': expected a positive number")):
        read_ct(path)
