"""The CT raw-data and k-space layouts (single slices and stacks): round trip, every malformed piece
named, lazy slice reads, files closed."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from data.hdf5 import read_ct, write_ct, write_reconstructions
from data.mri import read_kspace, write_kspace

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


def test_write_reconstructions_without_provenance_is_unchanged(tmp_path):
    target = write_reconstructions(tmp_path / "out.h5", {"fbp": np.ones((4, 4))}, {"geometry": "parallel"},
                                   {"fbp": {"filter": "ramp", "tol": None}})
    with h5py.File(target) as f:
        assert "provenance" not in f.attrs and "provenance" not in f["fbp"].attrs
        assert f["fbp"].attrs["filter"] == "ramp" and f["fbp"].attrs["tol"] == "none"


def _reopen_for_writing(path):
    """Succeeds only if no handle on ``path`` is left open (HDF5 refuses to truncate an open file)."""
    with h5py.File(path, "w"):
        pass


class TestCTStacks:
    @pytest.fixture
    def stack(self, tmp_path):
        path = tmp_path / "stack.h5"
        sino = np.arange(3 * 10 * 20, dtype=np.float64).reshape(3, 10, 20)
        ref = np.arange(3 * 16 * 12, dtype=np.float64).reshape(3, 16, 12)
        write_ct(path, sino, np.linspace(0, np.pi, 10), PARALLEL, reference=ref, noise_std=0.1)
        return path, sino, ref

    def test_round_trip(self, stack):
        path, sino, ref = stack
        data = read_ct(path)
        np.testing.assert_array_equal(data.sinogram, sino)
        np.testing.assert_array_equal(data.reference, ref)
        assert data.sinogram.dtype == np.float32 and data.geometry == PARALLEL and data.noise_std == 0.1

    @pytest.mark.parametrize("slices, expected", [
        (1, 1), (-1, 2), ([2, 0], [2, 0]), (slice(1, None), [1, 2]), (slice(None, None, -2), [2, 0]),
        (np.array([0, 0, 2]), [0, 0, 2]), ((1,), [1])])
    def test_selected_slices(self, stack, slices, expected):
        path, sino, ref = stack
        data = read_ct(path, slices=slices)
        np.testing.assert_array_equal(data.sinogram, sino[expected])
        np.testing.assert_array_equal(data.reference, ref[expected])

    def test_an_int_gives_what_a_2d_file_gives(self, stack, tmp_path):
        path, sino, ref = stack
        write_ct(tmp_path / "one.h5", sino[1], np.linspace(0, np.pi, 10), PARALLEL, reference=ref[1])
        one, picked = read_ct(tmp_path / "one.h5"), read_ct(path, slices=1)
        assert one.sinogram.shape == picked.sinogram.shape == (10, 20)
        np.testing.assert_array_equal(one.sinogram, picked.sinogram)
        np.testing.assert_array_equal(one.reference, picked.reference)

    @pytest.mark.parametrize("slices, message", [
        (3, r"slices: index 3 is out of range for the file's 3 slices"),
        ([0, 5], r"slices: \[0, 5\] has indices out of range"),
        ([], r"slices: \[\] selects none of the file's 3 slices"),
        (slice(3, None), r"selects none"),
        (1.5, r"slices: expected None, an int, a slice or a list of ints, got 1.5"),
        (True, r"slices: expected None, an int"),
        ([[0, 1]], r"slices: expected None, an int"),
    ])
    def test_bad_slices_are_named(self, stack, slices, message):
        with pytest.raises(ValueError, match=message):
            read_ct(stack[0], slices=slices)

    def test_slices_on_a_2d_file(self, scan):
        with pytest.raises(ValueError, match=r"slices: the file holds one 2-D sinogram \(10, 20\)"):
            read_ct(scan, slices=0)

    @pytest.mark.parametrize("edit, message", [
        (lambda f: (f.__delitem__("reference"), f.create_dataset("reference", data=np.zeros((2, 16, 12)))),
         r"'reference' has shape \(2, 16, 12\), expected \(slices, H, W\) = \(3, 16, 12\)"),
        (lambda f: (f.__delitem__("reference"), f.create_dataset("reference", data=np.zeros((16, 12)))),
         r"dataset 'reference': expected a real 3-D array, got shape \(16, 12\)"),
        (lambda f: (f.__delitem__("angles"), f.create_dataset("angles", data=np.zeros(4))),
         "'angles' has 4 entries but 'sinogram' has 10 views"),
        (lambda f: (f.__delitem__("sinogram"), f.create_dataset("sinogram", data=np.zeros((1, 3, 10, 20)))),
         r"dataset 'sinogram': expected a real 2-D or 3-D array, got shape \(1, 3, 10, 20\)"),
        (lambda f: (f.__delitem__("sinogram"), f.create_dataset("sinogram", data=np.zeros((0, 10, 20)))),
         r"dataset 'sinogram' is empty"),
        (lambda f: (f.__delitem__("sinogram"), f.create_dataset("sinogram", data=np.zeros((3, 10, 20), np.complex64))),
         "expected a real 2-D or 3-D array"),
    ])
    def test_mismatched_shapes_are_named(self, stack, edit, message):
        _edit(stack[0], edit)
        with pytest.raises(ValueError, match=message) as err:
            read_ct(stack[0])
        assert str(stack[0]) in str(err.value)

    def test_only_the_requested_slices_are_read(self, stack):
        path = _edit(stack[0], lambda f: f["sinogram"].__setitem__((0, 0, 0), np.nan))
        assert read_ct(path, slices=[1, 2]).sinogram.shape == (2, 10, 20)  # slice 0 is never read
        with pytest.raises(ValueError, match="'sinogram' contains NaN"):
            read_ct(path)

    def test_file_is_closed_after_reading_and_after_an_error(self, stack):
        path = stack[0]
        read_ct(path, slices=0)
        _reopen_for_writing(path)  # now an empty file: read_ct fails inside the open file
        with pytest.raises(ValueError, match="missing dataset 'sinogram'"):
            read_ct(path)
        _reopen_for_writing(path)
        path.unlink()


class TestKSpaceStacks:
    @pytest.fixture
    def kspace(self, rng):
        shape = (3, 2, 6, 5)
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)

    def test_round_trip_with_per_slice_mask_and_reference(self, tmp_path, rng, kspace):
        mask, ref = rng.random((3, 6, 5)) < 0.5, rng.random((3, 6, 5))
        data = read_kspace(write_kspace(tmp_path / "k.h5", kspace, mask, ref))
        np.testing.assert_array_equal(data.mask, mask)
        np.testing.assert_array_equal(data.kspace, kspace * mask[:, None])
        np.testing.assert_allclose(data.reference, ref, rtol=1e-6)
        assert data.kspace.dtype == np.complex64 and not data.fully_sampled

    def test_a_shared_mask_is_repeated_per_slice(self, tmp_path, rng, kspace):
        mask = rng.random((6, 5)) < 0.5
        data = read_kspace(write_kspace(tmp_path / "k.h5", kspace, mask), slices=[2, 1])
        assert data.mask.shape == (2, 6, 5) and np.all(data.mask == mask)
        np.testing.assert_array_equal(data.kspace, kspace[[2, 1]] * mask)

    def test_inferred_mask_is_per_slice(self, tmp_path, kspace):
        kspace[1, :, :, ::2] = 0
        data = read_kspace(write_kspace(tmp_path / "k.h5", kspace))
        assert data.mask[0].all() and data.mask[1].sum() == 12 and data.mask.shape == (3, 6, 5)

    def test_an_int_gives_what_a_one_slice_file_gives(self, tmp_path, kspace):
        write_kspace(tmp_path / "one.h5", kspace[2], np.ones((6, 5)), np.ones((6, 5)))
        write_kspace(tmp_path / "stack.h5", kspace, np.ones((6, 5)), np.ones((3, 6, 5)))
        one, picked = read_kspace(tmp_path / "one.h5"), read_kspace(tmp_path / "stack.h5", slices=2)
        for name in ("kspace", "mask", "reference"):
            np.testing.assert_array_equal(getattr(one, name), getattr(picked, name))
        assert picked.kspace.shape == (2, 6, 5) and picked.mask.shape == (6, 5)

    def test_npy_stack(self, tmp_path, kspace):
        np.save(tmp_path / "k.npy", kspace)
        np.testing.assert_array_equal(read_kspace(tmp_path / "k.npy", slices=slice(0, 2)).kspace, kspace[:2])

    @pytest.mark.parametrize("mask, reference, slices, message", [
        (np.ones((2, 6, 5)), None, None, r"'mask' has shape \(2, 6, 5\), expected the k-space's \(H, W\) = "
                                         r"\(6, 5\) or \(slices, H, W\) = \(3, 6, 5\)"),
        (None, np.ones((6, 5)), None, r"'reference' has shape \(6, 5\), expected \(slices, H, W\) = \(3, 6, 5\)"),
        (np.stack([np.ones((6, 5)), np.zeros((6, 5)), np.ones((6, 5))]), None, None,
         r"the sampling mask is empty \(no k-space position is sampled\) in slice\(s\) \[1\]"),
        (None, None, 7, "slices: index 7 is out of range"),
    ])
    def test_mismatches_are_named(self, tmp_path, kspace, mask, reference, slices, message):
        path = tmp_path / "k.h5"
        with h5py.File(path, "w") as f:
            f["kspace"] = kspace
            for name, value in (("mask", mask), ("reference", reference)):
                if value is not None:
                    f[name] = value
        with pytest.raises(ValueError, match=message):
            read_kspace(path, slices=slices)
        _reopen_for_writing(path)

    def test_slices_on_a_one_slice_file(self, tmp_path, kspace):
        with pytest.raises(ValueError, match=r"slices: the file holds one slice \(2, 6, 5\), not a stack"):
            read_kspace(write_kspace(tmp_path / "k.h5", kspace[0]), slices=0)

    def test_bad_shapes_and_files(self, tmp_path):
        np.save(tmp_path / "k.npy", np.ones((1, 1, 2, 4, 4), np.complex64))
        with pytest.raises(ValueError, match=r"'kspace': expected shape .* got \(1, 1, 2, 4, 4\)"):
            read_kspace(tmp_path / "k.npy")
        (tmp_path / "bad.npy").write_text("not numpy")
        with pytest.raises(ValueError, match="bad.npy: not a readable .npy file"):
            read_kspace(tmp_path / "bad.npy")
        with pytest.raises(FileNotFoundError, match="input: no such file"):
            read_kspace(tmp_path / "nope.npy")

    def test_fastmri_files_are_pointed_to_their_reader(self, tmp_path, kspace):
        path = write_kspace(tmp_path / "file1000000.h5", kspace)
        with h5py.File(path, "a") as f:
            f["ismrmrd_header"] = b"<ismrmrdHeader/>"
        with pytest.raises(ValueError, match="this is a fastMRI file .* read it with data.fastmri.read_fastmri"):
            read_kspace(path)

    def test_only_the_requested_slices_are_read(self, tmp_path, kspace):
        kspace[0, 0, 0, 0] = np.nan
        path = write_kspace(tmp_path / "k.h5", kspace)
        assert read_kspace(path, slices=[1, 2]).kspace.shape == (2, 2, 6, 5)
        with pytest.raises(ValueError, match="'kspace' contains NaN"):
            read_kspace(path)
        _reopen_for_writing(path)
