"""The CT raw-data layout: round trip and every malformed piece named."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from data.hdf5 import read_ct, write_ct, write_reconstructions

PARALLEL = {"geometry": "parallel", "detector_spacing": 0.5, "pixel_size": 0.25, "image_shape": (16, 12)}
FAN = {"geometry": "fan", "detector_spacing": 0.5, "pixel_size": 0.25, "image_shape": (16, 16),
       "source_origin": 100.0, "origin_detector": 50.0}


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "scan.h5"
    write_ct(path, np.ones((10, 20)), np.linspace(0, np.pi, 10), PARALLEL, reference=np.zeros((16, 12)))
    return path


def test_round_trip(tmp_path):
    for geom in (PARALLEL, FAN):
        path = tmp_path / f"{geom['geometry']}.h5"
        write_ct(path, np.arange(200.0).reshape(10, 20), np.linspace(0, 1, 10), geom)
        data = read_ct(path)
        assert data.geometry == geom and data.reference is None
        np.testing.assert_array_equal(data.sinogram, np.arange(200.0).reshape(10, 20))
        assert data.sinogram.dtype == np.float32 and data.angles.dtype == np.float64


def _edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.__delitem__("sinogram"), "missing dataset 'sinogram'"),
    (lambda f: f.__delitem__("angles"), "missing dataset 'angles'"),
    (lambda f: f.attrs.__delitem__("geometry"), "missing attribute 'geometry'"),
    (lambda f: f.attrs.__delitem__("pixel_size"), "missing attribute 'pixel_size'"),
    (lambda f: f.attrs.__setitem__("geometry", "helical"), "attribute 'geometry': expected one of"),
    (lambda f: f.attrs.__setitem__("geometry", "fan"), "missing attribute 'source_origin'"),
    (lambda f: f.attrs.__setitem__("detector_spacing", -1.0), "attribute 'detector_spacing': expected a positive"),
    (lambda f: f.attrs.__setitem__("image_size", 2.5), "attribute 'image_size'"),
    (lambda f: (f.__delitem__("angles"), f.create_dataset("angles", data=np.zeros(3))), "'angles' has 3 entries"),
    (lambda f: (f.__delitem__("sinogram"), f.create_dataset("sinogram", data=np.zeros(5))), "dataset 'sinogram': expected a real 2-D"),
    (lambda f: (f.__delitem__("reference"), f.create_dataset("reference", data=np.zeros((3, 3)))), "'reference' has shape"),
    (lambda f: f["sinogram"].__setitem__((0, 0), np.nan), "'sinogram' contains NaN"),
])
def test_malformed_files_are_named(scan, edit, message):
    _edit(scan, edit)
    with pytest.raises(ValueError, match=message):
        read_ct(scan)


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="input: no such file"):
        read_ct(tmp_path / "nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        read_ct(bad)


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(TypeError):
        write_reconstructions(target, {"fbp": np.zeros((4, 4))}, {"geometry": "parallel"}, {"fbp": {"bad": object()}})
    assert not target.exists() and not list(tmp_path.glob(".out.h5*"))
