"""fastMRI files: synthetic files in the public layout (no downloads), the k-space and reference
conventions against our centred FFT, lazy slice reads, files closed, every malformed piece named."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import data.fastmri as fastmri
from data.fastmri import center_crop, parse_ismrmrd_header, read_fastmri
from data.mri import remove_readout_oversampling
from operators.fourier import ifft2c

NS = "http://www.ismrm.org/ISMRMRD"


def header_xml(encoded=(16, 12, 1), recon=(8, 8, 1), namespace=True, drop=None) -> bytes:
    def triple(tag, values):
        return f"<{tag}>" + "".join(f"<{a}>{v}</{a}>" for a, v in zip("xyz", values)) + f"</{tag}>"

    spaces = {"encodedSpace": (encoded, (280.0, 161.0, 4.5)), "reconSpace": (recon, (140.0, 140.0, 4.5))}
    body = "".join(f"<{name}>{triple('matrixSize', m)}{triple('fieldOfView_mm', fov)}</{name}>"
                   for name, (m, fov) in spaces.items() if name != drop)
    xmlns = f' xmlns="{NS}"' if namespace else ""
    return (f'<?xml version="1.0" encoding="utf-8"?><ismrmrdHeader{xmlns}>'
            f"<studyInformation><studyTime>12:00:00</studyTime></studyInformation>"
            f"<encoding>{body}<trajectory>cartesian</trajectory></encoding></ismrmrdHeader>").encode()


def fft2c_numpy(x):
    """fastMRI's centred orthonormal FFT, written with numpy (independent of operators.fourier)."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def fastmri_file(path, rng, slices=3, coils=4, shape=(16, 12), recon=(8, 8), multicoil=True, **extra):
    """A small file in the fastMRI layout; the reference is the central ``recon`` of the coil RSS image."""
    images = rng.standard_normal((slices, coils, *shape)) + 1j * rng.standard_normal((slices, coils, *shape))
    if not multicoil:
        images = images[:, 0]
    kspace = fft2c_numpy(images).astype(np.complex64)
    rss = np.sqrt((np.abs(images) ** 2).sum(1)) if multicoil else np.abs(images)
    top, left = (shape[0] - recon[0]) // 2, (shape[1] - recon[1]) // 2
    reference = rss[:, top:top + recon[0], left:left + recon[1]].astype(np.float32)
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace
        f["ismrmrd_header"] = header_xml(encoded=(*shape, 1), recon=(*recon, 1))
        f["reconstruction_rss" if multicoil else "reconstruction_esc"] = reference
        f.attrs.update({"acquisition": "CORPD_FBK", "max": float(reference.max()),
                        "norm": float(np.linalg.norm(reference)), "patient_id": "abc123"})
        for name, value in extra.items():
            f[name] = value
    return path, kspace, reference


def rss_of(kspace: np.ndarray) -> np.ndarray:
    return ifft2c(torch.as_tensor(kspace)).abs().pow(2).sum(-3).sqrt().numpy()


def _reopen_for_writing(path):
    with h5py.File(path, "w"):  # HDF5 refuses to truncate a file that is still open
        pass


@pytest.fixture
def multicoil(tmp_path, rng):
    return fastmri_file(tmp_path / "file1000001.h5", rng)


class TestRead:
    def test_multicoil_volume(self, multicoil):
        path, kspace, reference = multicoil
        d = read_fastmri(path)
        np.testing.assert_array_equal(d.kspace, kspace)  # unshifted, unscaled
        np.testing.assert_array_equal(d.reference, reference)
        assert d.kspace.dtype == np.complex64 and d.mask.shape == (3, 16, 12) and d.fully_sampled
        assert d.reference_name == "reconstruction_rss" and d.num_slices == 3 and d.source == str(path)
        assert d.attrs == {"acquisition": "CORPD_FBK", "max": pytest.approx(float(reference.max())),
                           "norm": pytest.approx(float(np.linalg.norm(reference))), "patient_id": "abc123"}
        assert d.header.encoded_matrix == (16, 12, 1) and d.header.recon_shape == (8, 8)
        assert d.header.encoded_fov_mm == (280.0, 161.0, 4.5) and d.header.recon_fov_mm == (140.0, 140.0, 4.5)

    def test_reference_is_the_centre_crop_of_the_rss_image(self, multicoil):
        path, _, reference = multicoil
        d = read_fastmri(path)
        np.testing.assert_allclose(center_crop(rss_of(d.kspace), d.reference.shape[-2:]), reference, rtol=1e-5)
        oversampling_removed = remove_readout_oversampling(d.kspace, axis=-2)  # readout is H
        assert oversampling_removed.shape == (3, 4, 8, 12)
        np.testing.assert_allclose(center_crop(rss_of(oversampling_removed), d.header.recon_shape), reference,
                                   rtol=1e-4, atol=1e-5)

    def test_single_coil_gets_a_coil_axis_and_the_esc_reference(self, tmp_path, rng):
        path, kspace, reference = fastmri_file(tmp_path / "sc.h5", rng, multicoil=False,
                                               reconstruction_rss=np.zeros((3, 8, 8), np.float32))
        d = read_fastmri(path)
        assert d.kspace.shape == (3, 1, 16, 12) and d.reference_name == "reconstruction_esc"
        np.testing.assert_array_equal(d.kspace[:, 0], kspace)
        np.testing.assert_allclose(center_crop(rss_of(d.kspace), (8, 8)), reference, rtol=1e-5)

    @pytest.mark.parametrize("slices, expected", [
        (1, 1), (-3, 0), ([2, 0], [2, 0]), (slice(1, None), [1, 2]), (np.array([1, 1]), [1, 1])])
    def test_selected_slices(self, multicoil, slices, expected):
        path, kspace, reference = multicoil
        d = read_fastmri(path, slices=slices)
        np.testing.assert_array_equal(d.kspace, kspace[expected])
        np.testing.assert_array_equal(d.reference, reference[expected])
        assert d.mask.shape == d.kspace.shape[:-3] + (16, 12) and d.num_slices == 3

    def test_column_mask_of_test_files(self, tmp_path, rng):
        columns = np.zeros(12, bool)
        columns[[0, 4, 5, 6, 9]] = True
        path, kspace, _ = fastmri_file(tmp_path / "test.h5", rng, mask=columns)
        d = read_fastmri(path, slices=0)
        assert d.mask.shape == (16, 12) and np.all(d.mask == columns) and not d.fully_sampled
        np.testing.assert_array_equal(d.kspace, kspace[0] * columns)

    def test_without_mask_unsampled_columns_are_inferred(self, tmp_path, rng):
        path, kspace, _ = fastmri_file(tmp_path / "pad.h5", rng)
        with h5py.File(path, "a") as f:
            f["kspace"][:, :, :, :2] = 0  # zero-padded edge columns
            del f["ismrmrd_header"]
        d = read_fastmri(path)
        assert d.header is None and d.mask[..., :2].sum() == 0 and d.mask[..., 2:].all()


class TestLazyAndClosed:
    def test_only_the_requested_slices_are_read(self, multicoil):
        path = multicoil[0]
        with h5py.File(path, "a") as f:
            f["kspace"][0, 0, 0, 0] = np.nan
            f["reconstruction_rss"][2, 0, 0] = np.inf
        assert read_fastmri(path, slices=1).kspace.shape == (4, 16, 12)
        with pytest.raises(ValueError, match="dataset 'kspace' contains NaN"):
            read_fastmri(path, slices=[0, 1])
        with pytest.raises(ValueError, match="dataset 'reconstruction_rss' contains NaN or Inf"):
            read_fastmri(path, slices=2)

    def test_closed_after_a_read(self, multicoil):
        before = h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)
        read_fastmri(multicoil[0], slices=[0, 2])
        assert h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE) == before
        _reopen_for_writing(multicoil[0])
        multicoil[0].unlink()

    def test_closed_after_an_exception_in_the_middle(self, multicoil, monkeypatch):
        def broken(xml, source):
            raise RuntimeError("parser crashed")

        monkeypatch.setattr(fastmri, "parse_ismrmrd_header", broken)  # after k-space and reference are read
        with pytest.raises(RuntimeError, match="parser crashed"):
            read_fastmri(multicoil[0])
        _reopen_for_writing(multicoil[0])
        multicoil[0].unlink()


def _replace(name, value):
    def edit(f):
        del f[name]
        f[name] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.__delitem__("kspace"), r"missing dataset 'kspace' \(expected complex64 \(slices, coils, H, W\)"),
    (_replace("kspace", np.ones((3, 16, 12), np.float32)), r"dataset 'kspace': expected complex .* dtype float32"),
    (_replace("kspace", np.ones((16, 12), np.complex64)), r"dataset 'kspace': expected complex .* shape \(16, 12\)"),
    (_replace("reconstruction_rss", np.ones((2, 8, 8))),
     r"dataset 'reconstruction_rss' has shape \(2, 8, 8\) dtype float64, "
     r"expected real \(slices, h, w\) with slices = 3"),
    (lambda f: f.__setitem__("mask", np.ones(16)), r"dataset 'mask': expected a real \(W,\) = \(12,\) column mask"),
    (lambda f: f.__setitem__("mask", np.zeros(12)), r"the sampling mask is empty .* in slice\(s\) \[0, 1, 2\]"),
    (_replace("ismrmrd_header", b"<ismrmrdHeader><encoding>"), r"dataset 'ismrmrd_header': not valid XML"),
    (_replace("ismrmrd_header", header_xml(drop="reconSpace")),
     r"dataset 'ismrmrd_header': missing element <encoding/reconSpace/matrixSize/x>"),
    (_replace("ismrmrd_header", np.arange(3)), r"dataset 'ismrmrd_header': expected XML text"),
])
def test_malformed_files_are_named(multicoil, edit, message):
    path = multicoil[0]
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(ValueError, match=message) as err:
        read_fastmri(path)
    assert str(err.value).startswith(str(path))
    _reopen_for_writing(path)


def test_bad_slices_missing_and_foreign_files(multicoil, tmp_path):
    with pytest.raises(ValueError, match=r"slices: index 3 is out of range for the file's 3 slices"):
        read_fastmri(multicoil[0], slices=3)
    with pytest.raises(ValueError, match=r"slices: expected None, an int, a slice or a list of ints, got 'all'"):
        read_fastmri(multicoil[0], slices="all")
    with pytest.raises(FileNotFoundError, match="input: no such file"):
        read_fastmri(tmp_path / "nope.h5")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"bad.h5: not a readable HDF5 file \(fastMRI layout\)"):
        read_fastmri(tmp_path / "bad.h5")


class TestHeader:
    def test_with_and_without_namespace(self):
        for namespace in (True, False):
            h = parse_ismrmrd_header(header_xml(encoded=(640, 368, 1), recon=(320, 320, 1), namespace=namespace))
            assert h.encoded_matrix == (640, 368, 1) and h.recon_matrix == (320, 320, 1)
            assert h.recon_shape == (320, 320) and h.recon_fov_mm == (140.0, 140.0, 4.5)
        assert parse_ismrmrd_header(header_xml().decode()) == parse_ismrmrd_header(header_xml())

    @pytest.mark.parametrize("xml, message", [
        (header_xml(drop="encodedSpace"), "hdr: missing element <encoding/encodedSpace/matrixSize/x>"),
        (header_xml().replace(b"<x>16</x>", b"<x>16.5</x>"),
         r"hdr: element <encoding/encodedSpace/matrixSize/x>: expected an integer, got '16.5'"),
        (header_xml().replace(b"<x>280.0</x>", b"<x></x>"),
         r"element <encoding/encodedSpace/fieldOfView_mm/x>: expected a number, got None"),
        (b"<header/>", r"hdr: expected the root element <ismrmrdHeader>, got <header>"),
        (b"not xml", "hdr: not valid XML"),
    ])
    def test_malformed_headers_are_named(self, xml, message):
        with pytest.raises(ValueError, match=message):
            parse_ismrmrd_header(xml, source="hdr")


class TestCenterCrop:
    @pytest.mark.parametrize("shape, crop", [((6, 5), (4, 3)), ((7, 8), (3, 4)), ((8, 8), (3, 5)), ((4, 4), (4, 4))])
    def test_the_centre_stays_the_centre(self, shape, crop):
        x = np.zeros((2, *shape))
        x[:, shape[0] // 2, shape[1] // 2] = 1.0
        y = center_crop(x, crop)
        assert y.shape == (2, *crop) and y[:, crop[0] // 2, crop[1] // 2].all() and y.sum() == 2

    def test_fastmri_sizes_and_tensors(self):
        x = torch.arange(640 * 368.0).reshape(1, 640, 368)
        y = center_crop(x, (320, 320))
        assert isinstance(y, torch.Tensor) and torch.equal(y, x[:, 160:480, 24:344])  # fastMRI's (H - h) // 2

    @pytest.mark.parametrize("image, crop, message", [
        (np.zeros((4, 4)), (5, 4), r"shape: the crop \(5, 4\) does not fit in the image's last two axes \(4, 4\)"),
        (np.zeros(4), (2, 2), "does not fit"),
        (np.zeros((4, 4)), (2,), r"shape: expected two positive integers \(h, w\), got \(2,\)"),
        (np.zeros((4, 4)), (0, 2), "expected two positive integers"),
        (np.zeros((4, 4)), (2.0, 2), "expected two positive integers"),
    ])
    def test_bad_crops(self, image, crop, message):
        with pytest.raises(ValueError, match=message):
            center_crop(image, crop)


@pytest.mark.real_data
def test_real_twix_scan_in_the_fastmri_layout(real_data, tmp_path):
    """The measured 2-coil GRE (readout 2x oversampled, fully sampled), written in the fastMRI layout
    with its README's reference recipe; the reader and the documented crop reproduce that reference."""
    k = np.load(real_data / "mri_twix_phantom" / "gre_kspace_lin_cha_col.npy")  # (line, coil, column)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(0, 2)), axes=(0, 2)), axes=(0, 2))
    reference = np.sqrt((np.abs(img) ** 2).sum(1))[:, 80:240].T  # (160 readout, 160 lines)
    path = tmp_path / "gre.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = k.transpose(1, 2, 0)[None]  # (1, coils, readout 320, lines 160), readout on H
        f["ismrmrd_header"] = header_xml(encoded=(320, 160, 1), recon=(160, 160, 1))
        f["reconstruction_rss"] = reference[None].astype(np.float32)
    d = read_fastmri(path, slices=0)
    assert d.kspace.shape == (2, 320, 160) and d.fully_sampled and d.header.recon_shape == (160, 160)
    # numpy's unnormalised ifft2 vs the orthonormal one: a factor sqrt(H W)
    scale = np.sqrt(320 * 160)
    np.testing.assert_allclose(center_crop(rss_of(d.kspace), d.header.recon_shape) / scale, d.reference, rtol=1e-4,
                               atol=1e-4 * float(d.reference.max()))
    cropped = rss_of(remove_readout_oversampling(d.kspace, axis=-2))
    np.testing.assert_allclose(cropped / scale, d.reference, rtol=1e-3, atol=1e-4 * float(d.reference.max()))
