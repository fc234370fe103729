"""Training data: synthetic sets, image files, HDF5, DICOM, patches, augmentation, noisy pairs, splits."""

from __future__ import annotations

import itertools
import pickle

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from skimage.measure import label, regionprops
from torch.utils.data import DataLoader

from data.dicom_write import write_series
from data.patches import Augment, NoisyPairs, RandomPatches, split
from data.phantoms import random_ellipses
from data.training import (HTC_DISC_RADIUS_MM, HTC_FOV_MM, STREAM_ELLIPSES, CouleLikeDataset, DicomSeriesDataset,
                           EllipsesDataset, HDF5ImageDataset, HTCDiscDataset, ImageFolderDataset, item_seed)


def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The eight flips/rotations of the last two axes (for square x)."""
    return [torch.rot90(f, k, dims=(-2, -1)) for f in (x, x.flip(-1)) for k in range(4)]


def sorted_values(x: torch.Tensor) -> torch.Tensor:
    return x.flatten().sort().values


# --------------------------------------------------------------------- synthetic sets
def test_ellipses_are_random_ellipses_seeded_per_item():
    ds = EllipsesDataset(4, size=32, seed=5, n_ellipses=(2, 4))
    for i in (0, 3):
        expected = random_ellipses(32, (2, 4), seed=item_seed(5, STREAM_ELLIPSES, i))[0]
        assert torch.equal(ds[i], expected)
    x = ds[1]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)
    assert torch.equal(ds[-1], ds[3])


def test_synthetic_sets_are_deterministic_by_seed_and_index():
    for make in (lambda seed: EllipsesDataset(3, size=24, seed=seed),
                 lambda seed: CouleLikeDataset(3, size=48, seed=seed)):
        first, again, other = make(1), make(1), make(2)
        later = [again[2], again[0]]  # reading order does not matter
        assert torch.equal(first[0], later[1]) and torch.equal(first[2], later[0])
        assert not torch.equal(first[0], first[1])
        assert not any(torch.equal(first[i], other[i]) for i in range(3))


def _shape_counts(image: np.ndarray) -> tuple[int, int]:
    """Connected regions of one grey level: (line-like, ellipse-like) counts.

    Line-like: elongated (moment axes ratio >= 6). Ellipse-like: compact and convex (ratio <= 3,
    solidity >= 0.95, area >= 100 pixels)."""
    lines = blobs = 0
    for level in np.unique(image[image > 0]):
        for region in regionprops(label(image == level)):
            if region.area < 30:
                continue
            ratio = region.axis_major_length / max(region.axis_minor_length, 1e-9)
            lines += ratio >= 6
            blobs += ratio <= 3 and region.solidity >= 0.95 and region.area >= 100
    return lines, blobs


def test_coule_like_images_have_grey_levels_lines_and_ellipses():
    ds = CouleLikeDataset(12, size=128, seed=0)
    counts = []
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (1, 128, 128) and x.dtype == torch.float32
        levels = torch.unique(x)
        assert levels[0] == 0 and len(levels) >= 6  # background plus several uniform grey levels
        assert bool(((levels[1:] >= 0.1) & (levels[1:] <= 1.0)).all())
        counts.append(_shape_counts(x[0].numpy()))
    lines, blobs = np.array(counts).T
    assert (lines >= 1).all() and blobs.sum() >= len(ds)
    # the measure tells the two kinds apart: controls with only one kind of shape
    no_lines = [_shape_counts(CouleLikeDataset(12, 128, seed=0, n_lines=(0, 0))[i][0].numpy()) for i in range(12)]
    no_ellipses = [_shape_counts(CouleLikeDataset(12, 128, seed=0, n_ellipses=(0, 0))[i][0].numpy())
                   for i in range(12)]
    assert sum(c[0] for c in no_lines) <= 2 and sum(c[1] for c in no_ellipses) == 0


def test_coule_like_objects_stay_inside_the_inscribed_disc():
    size = 64
    i, j = np.mgrid[:size, :size] - (size - 1) / 2
    outside = torch.from_numpy(np.hypot(i, j) > size / 2)
    ds = CouleLikeDataset(20, size=size, seed=3)
    assert all(float(ds[k][0][outside].abs().max()) == 0.0 for k in range(len(ds)))


def test_htc_like_discs_have_the_challenge_s_disc_rim_and_holes():
    size = 128
    mm = HTC_FOV_MM / size  # mm per pixel
    solid = HTCDiscDataset(3, size=size, seed=0, n_holes=(0, 0))
    for k in range(3):  # the disc alone: 70 mm across, within 1 mm of the centre
        x = solid[k][0].double()
        assert float(x.sum()) * mm ** 2 == pytest.approx(np.pi * HTC_DISC_RADIUS_MM ** 2, rel=0.005)
        i, j = np.mgrid[:size, :size]
        ci, cj = float((x * torch.from_numpy(i)).sum() / x.sum()), float((x * torch.from_numpy(j)).sum() / x.sum())
        assert np.hypot(ci - (size - 1) / 2, cj - (size - 1) / 2) * mm <= 1.0 + 1e-6
    holed = HTCDiscDataset(8, size=size, seed=0, n_holes=(20, 20))
    for k in range(8):
        x, disc = holed[k][0], solid[0][0]
        assert 0 <= float(x.min()) and float(x.max()) == 1.0
        assert float(x.sum()) < 0.9 * float(disc.sum())  # twenty holes take at least a tenth of the disc
        labels = label(x.numpy() < 0.5)
        assert labels.max() >= 4  # background plus several separate holes
    assert torch.equal(holed[3], HTCDiscDataset(8, size=size, seed=0, n_holes=(20, 20))[3])
    assert not torch.equal(holed[3], HTCDiscDataset(8, size=size, seed=1, n_holes=(20, 20))[3])


def test_htc_discs_with_all_shapes_add_crosses_and_bends_and_leave_the_convex_set_unchanged():
    """shapes='convex' is the default set item for item; shapes='all' draws non-convex holes (crosses, bends):
    some hole fills well under its convex hull."""
    from skimage.measure import regionprops

    assert torch.equal(HTCDiscDataset(4, size=64, seed=2, shapes="convex")[3], HTCDiscDataset(4, size=64, seed=2)[3])

    def solidity(ds) -> list[float]:  # of each hole: area / convex hull area (the outside touches the border)
        return [p.solidity for k in range(len(ds)) for p in regionprops(label(ds[k][0].numpy() < 0.5))
                if p.area > 30 and p.bbox[0] > 0]
    every = solidity(HTCDiscDataset(6, size=256, seed=1, n_holes=(10, 10), shapes="all"))
    assert min(every) < 0.7 and np.median(every) > 0.85
    assert min(solidity(HTCDiscDataset(6, size=256, seed=1, n_holes=(10, 10)))) > 0.75


@pytest.mark.parametrize("make, message", [
    (lambda: HTCDiscDataset(2, n_holes=(3, 1)), r"n_holes: expected a pair \(low, high\)"),
    (lambda: HTCDiscDataset(2, shapes="stars"), "shapes: expected 'convex' or 'all', got 'stars'"),
    (lambda: EllipsesDataset(0), "n: expected an integer >= 1"),
    (lambda: EllipsesDataset(2, size=4), "size: expected an integer >= 8"),
    (lambda: EllipsesDataset(2, seed=-1), "seed: expected an integer >= 0"),
    (lambda: EllipsesDataset(2, n_ellipses=(3, 1)), "n_ellipses: expected"),
    (lambda: CouleLikeDataset(2, n_lines=(3, 1)), r"n_lines: expected a pair \(low, high\)"),
    (lambda: CouleLikeDataset(2, n_ellipses=5), "n_ellipses: expected a pair"),
])
def test_synthetic_bad_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_index_out_of_range():
    with pytest.raises(IndexError, match="index: 3 is out of range for a dataset of 3 items"):
        CouleLikeDataset(3, size=16)[3]


# --------------------------------------------------------------------- image files
def test_png_and_npy_round_trip(tmp_path, rng):
    grey8 = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    plain, single = rng.normal(size=(5, 7)), rng.integers(-3, 9, (1, 5, 7))
    Image.fromarray(grey8).save(tmp_path / "a_grey8.png")
    Image.fromarray(grey16).save(tmp_path / "b_grey16.png")
    Image.fromarray(rgb).save(tmp_path / "c_rgb.png")
    np.save(tmp_path / "d_plain.npy", plain)
    np.save(tmp_path / "e_single.npy", single)
    (tmp_path / "notes.txt").write_text("skipped: not an image suffix")
    ds = ImageFolderDataset(tmp_path)
    assert [f.name for f in ds.files] == ["a_grey8.png", "b_grey16.png", "c_rgb.png", "d_plain.npy", "e_single.npy"]
    assert all(ds[i].shape == (1, 5, 7) and ds[i].dtype == torch.float32 for i in range(len(ds)))
    np.testing.assert_array_equal(ds[0][0].numpy(), (grey8 / 255).astype(np.float32))
    np.testing.assert_array_equal(ds[1][0].numpy(), (grey16 / 65535).astype(np.float32))
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
    np.testing.assert_allclose(ds[2][0].numpy(), luma, atol=1.01 / 255)
    np.testing.assert_array_equal(ds[3][0].numpy(), plain.astype(np.float32))
    np.testing.assert_array_equal(ds[4].numpy(), single.astype(np.float32))
    assert len(ImageFolderDataset(tmp_path, pattern="*.npy")) == 2


def test_resize_keeps_constant_images_and_range(tmp_path, rng):
    np.save(tmp_path / "flat.npy", np.full((40, 30), 0.25))
    Image.fromarray(rng.integers(10, 200, (40, 30), dtype=np.uint8)).save(tmp_path / "noise.png")
    ds = ImageFolderDataset(tmp_path, size=(16, 12))
    flat, noise = ds[0], ds[1]
    assert flat.shape == noise.shape == (1, 16, 12)
    np.testing.assert_allclose(flat.numpy(), 0.25, rtol=1e-6)
    assert 10 / 255 - 1e-6 <= float(noise.min()) and float(noise.max()) <= 200 / 255 + 1e-6
    assert ImageFolderDataset(tmp_path, size=8)[1].shape == (1, 8, 8)


def test_image_folder_errors_name_the_file_or_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="root: no such folder"):
        ImageFolderDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=f"root: no image files matching '\\*' in {tmp_path}"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    np.save(tmp_path / "stack.npy", np.zeros((2, 4, 4)))
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    np.save(tmp_path / "objects.npy", np.array([[{}, {}]], dtype=object), allow_pickle=True)
    ds = ImageFolderDataset(tmp_path)  # listing reads nothing: errors come per item
    by_name = {f.name: i for i, f in enumerate(ds.files)}
    for name, message in [("broken.png", "not a readable image"),
                          ("stack.npy", r"expected an array of shape \(H, W\) or \(1, H, W\), got shape \(2, 4, 4\)"),
                          ("nan.npy", "NaN or Inf"), ("objects.npy", "not a readable .npy file")]:
        with pytest.raises(ValueError, match=f"{name}: .*{message}"):
            ds[by_name[name]]
    with pytest.raises(ValueError, match="size: expected an integer >= 1"):
        ImageFolderDataset(tmp_path, size=(0, 4))


# --------------------------------------------------------------------- HDF5
def _open_files() -> int:
    return len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE))


@pytest.mark.parametrize("shape", [(5, 6, 7), (5, 1, 6, 7)])
def test_hdf5_reads_items_lazily_and_closes_the_file(tmp_path, rng, shape):
    images = rng.uniform(size=shape)
    images[3].flat[4] = np.nan  # never requested below, so never seen
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images)
    before = _open_files()
    ds = HDF5ImageDataset(path)
    assert len(ds) == 5 and _open_files() == before
    for i in (0, 1, 2, 4):
        np.testing.assert_array_equal(ds[i].numpy(), images[i].reshape(1, 6, 7).astype(np.float32))
    assert _open_files() == before
    batch = next(iter(DataLoader(pickle.loads(pickle.dumps(ds)), batch_size=2, num_workers=0)))
    assert batch.shape == (2, 1, 6, 7) and torch.equal(batch[1], ds[1])
    with pytest.raises(ValueError, match=r"train.h5:images: item 3 contains NaN"):
        ds[3]
    assert _open_files() == before


def test_hdf5_errors_name_path_dataset_and_shape(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("pairs", data=np.zeros((3, 2, 4, 4)))
        f.create_dataset("names", data=np.array([b"a", b"b", b"c"]))
    with pytest.raises(ValueError, match=r"dataset: no dataset 'images' in .*bad.h5; found datasets \['names', "
                                         r"'pairs'\]"):
        HDF5ImageDataset(path)
    with pytest.raises(ValueError, match=r"bad.h5:pairs: expected shape \(N, H, W\) or \(N, 1, H, W\), got "
                                         r"\(3, 2, 4, 4\)"):
        HDF5ImageDataset(path, dataset="pairs")
    with pytest.raises(ValueError, match="bad.h5:names: expected"):
        HDF5ImageDataset(path, dataset="names")
    with pytest.raises(FileNotFoundError, match="path: no such file"):
        HDF5ImageDataset(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="path: .*text.h5 is not a readable HDF5 file"):
        HDF5ImageDataset(tmp_path / "text.h5")


# --------------------------------------------------------------------- DICOM
def test_dicom_series_scaled_by_min_max_or_window(tmp_path):
    hu = np.stack([np.linspace(-1000, 200 * k, 30).reshape(6, 5) for k in range(1, 4)])
    template = {"PatientID": "P1", "StudyInstanceUID": "1.2.3", "Modality": "CT"}
    write_series(hu, tmp_path, template, spacing=(2.0, 0.5, 0.5))
    ds = DicomSeriesDataset(tmp_path)
    assert len(ds) == 3 and ds[0].shape == (1, 6, 5) and ds[0].dtype == torch.float32
    step = 1 / 600  # written HU are within half a rescale step (<= range / 60000) of the input
    expected = (hu - hu.min()) / (hu.max() - hu.min())
    np.testing.assert_allclose(np.stack([ds[k][0].numpy() for k in range(3)]), expected, atol=step)
    windowed = DicomSeriesDataset(tmp_path, window=(0, 400))
    clipped = np.clip((hu[1] + 200) / 400, 0, 1)
    np.testing.assert_allclose(windowed[1][0].numpy(), clipped, atol=step)
    with pytest.raises(ValueError, match="window: expected \\(center, width\\)"):
        DicomSeriesDataset(tmp_path, window=(0, -5))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no DICOM image series"):
        DicomSeriesDataset(tmp_path / "empty")


# --------------------------------------------------------------------- patches and augmentation
def _offsets_of(patch: torch.Tensor, image: torch.Tensor) -> list[tuple[int, int]]:
    """Every (top, left) where ``patch`` equals a sub-array of ``image`` (brute force)."""
    h, w = patch.shape[-2:]
    return [(t, l) for t in range(image.shape[-2] - h + 1) for l in range(image.shape[-1] - w + 1)
            if torch.equal(image[..., t:t + h, l:l + w], patch)]


def test_patches_are_sub_arrays_with_varied_corners():
    images = [torch.arange(100.0).reshape(1, 10, 10) + 1000 * k for k in range(3)]
    patches = RandomPatches(images, 8, patches_per_image=60, seed=0)
    assert len(patches) == 180
    corners = set()
    for k in range(len(patches)):
        p = patches[k]
        assert p.shape == (1, 8, 8)
        found = _offsets_of(p, images[k // 60])
        assert len(found) == 1
        corners.add(found[0])
    assert corners == set(itertools.product(range(3), range(3)))  # all 9 positions reached
    wide = RandomPatches([torch.zeros(2, 9, 12)], (4, 11), seed=1)
    assert wide[0].shape == (2, 4, 11)


def test_patches_reproducible_per_seed_and_epoch():
    data = CouleLikeDataset(2, size=32, seed=4)
    a, b = RandomPatches(data, 12, 4, seed=7), RandomPatches(data, 12, 4, seed=7)
    assert all(torch.equal(a[k], b[k]) for k in reversed(range(8)))
    other = RandomPatches(data, 12, 4, seed=8)
    assert not all(torch.equal(a[k], other[k]) for k in range(8))
    first = [a[k] for k in range(8)]
    a.set_epoch(1)
    assert not all(torch.equal(a[k], first[k]) for k in range(8))
    a.set_epoch(0)
    assert all(torch.equal(a[k], first[k]) for k in range(8))


def test_patches_with_augment_are_transformed_sub_arrays():
    image = torch.arange(144.0).reshape(1, 12, 12)
    patches = RandomPatches([image], 5, patches_per_image=10, seed=2, transform=Augment(scale=None))
    for k in range(len(patches)):
        assert any(_offsets_of(candidate, image) for candidate in dihedral(patches[k]))


def test_patch_errors():
    with pytest.raises(ValueError, match=r"patch_size: \(8, 8\) does not fit in image 0 of shape \(1, 6, 6\)"):
        RandomPatches([torch.zeros(1, 6, 6)], 8)[0]
    with pytest.raises(ValueError, match="patch_size: expected an integer >= 1"):
        RandomPatches([torch.zeros(1, 6, 6)], 0)
    with pytest.raises(ValueError, match=r"dataset: item 0: expected a \(C, H, W\) tensor, got shape \(6, 6\)"):
        RandomPatches([torch.zeros(6, 6)], 2)[0]
    with pytest.raises(ValueError, match="patches_per_image: expected an integer >= 1"):
        RandomPatches([torch.zeros(1, 6, 6)], 2, patches_per_image=0)


def test_augment_permutes_pixels_and_reaches_all_symmetries():
    x = torch.arange(16.0).reshape(1, 4, 4)
    before = x.clone()
    augment = Augment(seed=0)
    counts = [0] * 8
    for _ in range(800):
        y = augment(x)
        assert torch.equal(sorted_values(y), sorted_values(x))
        counts[[torch.equal(y, c) for c in dihedral(x)].index(True)] += 1
    assert torch.equal(x, before)
    assert min(counts) >= 60  # uniform would give 100 each (sd ~ 9.5)


def test_augment_non_square_keeps_shape_and_values():
    x = torch.arange(24.0).reshape(2, 3, 4)
    augment = Augment(seed=1)
    for _ in range(20):
        y = augment(x)
        assert y.shape == x.shape and torch.equal(sorted_values(y), sorted_values(x))


def test_augment_reproducible_and_scaling():
    x = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0))
    a, b = Augment(scale=(0.5, 2.0), seed=3), Augment(scale=(0.5, 2.0), seed=3)
    assert all(torch.equal(a(x), b(x)) for _ in range(5))
    same_gen = [Augment(scale=(0.5, 2.0), seed=s)(x, generator=torch.Generator().manual_seed(9)) for s in (1, 2)]
    assert torch.equal(*same_gen)  # a given generator decides, not the transform's own seed
    factors = []
    for _ in range(50):
        y = Augment(flips=False, rotations=False, scale=(0.5, 2.0), seed=len(factors))(x)
        ratio = y / x
        assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-6)
        factors.append(float(ratio.flatten()[0]))
    assert 0.5 <= min(factors) < 0.8 and 1.7 < max(factors) <= 2.0
    assert torch.equal(Augment(flips=False, rotations=False)(x), x)


def test_augment_errors():
    with pytest.raises(ValueError, match=r"x: expected a \(C, H, W\) tensor, got shape \(4, 4\)"):
        Augment(seed=0)(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="scale: expected None or"):
        Augment(scale=(2.0, 1.0))


# --------------------------------------------------------------------- noisy pairs
def test_noisy_pairs_statistics_and_reproducibility():
    clean = [torch.zeros(1, 64, 64, dtype=torch.float64), torch.ones(1, 64, 64, dtype=torch.float64)]
    pairs = NoisyPairs(clean, sigma=0.2, seed=0)
    noisy1, clean1 = pairs[1]
    assert torch.equal(clean1, clean[1]) and noisy1.dtype == torch.float64 and noisy1.shape == (1, 64, 64)
    noise = (noisy1 - clean1).flatten().numpy()
    assert abs(noise.std() / 0.2 - 1) < 0.05 and abs(noise.mean()) < 4 * 0.2 / 64
    assert stats.kstest(noise / 0.2, "norm").pvalue > 1e-3
    noise0 = (pairs[0][0] - clean[0]).flatten().numpy()
    assert abs(np.corrcoef(noise, noise0)[0, 1]) < 0.1  # independent between items
    again = NoisyPairs(clean, sigma=0.2, seed=0)
    assert torch.equal(again[1][0], noisy1) and torch.equal(pairs[1][0], noisy1)
    assert not torch.equal(NoisyPairs(clean, sigma=0.2, seed=1)[1][0], noisy1)
    pairs.set_epoch(2)
    assert not torch.equal(pairs[1][0], noisy1) and torch.equal(pairs[1][1], clean[1])
    assert torch.equal(NoisyPairs(clean, sigma=0.0)[0][0], clean[0])


def test_training_pipeline_batches_and_epochs():
    patches = RandomPatches(CouleLikeDataset(3, size=32, seed=1), 16, 2, seed=0, transform=Augment())
    pairs = NoisyPairs(patches, sigma=0.1, seed=0)
    noisy, clean = next(iter(DataLoader(pairs, batch_size=4, shuffle=False)))
    assert noisy.shape == clean.shape == (4, 1, 16, 16)
    assert torch.equal(clean[3], patches[3])
    copy = pickle.loads(pickle.dumps(pairs))  # what a spawned DataLoader worker gets
    assert all(torch.equal(a, b) for a, b in zip(copy[5], pairs[5]))
    pairs.set_epoch(1)
    assert patches.epoch == 1 and not torch.equal(pairs[3][1], clean[3])


def test_noisy_pairs_errors():
    with pytest.raises(ValueError, match="sigma: expected a finite number >= 0, got -0.1"):
        NoisyPairs([torch.zeros(1, 2, 2)], sigma=-0.1)
    with pytest.raises(ValueError, match="dataset: item 0 must be a floating-point tensor, got torch.int64"):
        NoisyPairs([torch.zeros(1, 2, 2, dtype=torch.int64)], sigma=0.1)[0]
    with pytest.raises(ValueError, match="epoch: expected an integer >= 0"):
        NoisyPairs([torch.zeros(1, 2, 2)], sigma=0.1).set_epoch(-1)


# --------------------------------------------------------------------- splits
def test_split_disjoint_covering_deterministic():
    data = list(range(50))
    train, val = split(data, val_fraction=0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert set(train.indices).isdisjoint(val.indices) and set(train.indices) | set(val.indices) == set(range(50))
    assert train.indices == sorted(train.indices) and [val[i] for i in range(len(val))] == val.indices
    assert split(data, 0.2, seed=3)[1].indices == val.indices
    assert split(data, 0.2, seed=4)[1].indices != val.indices
    assert len(split(data, 0.0)[1]) == 0 and len(split(data[:3], 0.01)[1]) == 1


@pytest.mark.parametrize("data, kwargs, message", [
    (list(range(5)), {"val_fraction": 1.0}, r"val_fraction: expected a number in \[0, 1\), got 1.0"),
    (list(range(5)), {"val_fraction": -0.1}, "val_fraction: expected"),
    ([0], {"val_fraction": 0.5}, "dataset: expected at least 2 item"),
    (list(range(5)), {"seed": -2}, "seed: expected an integer >= 0"),
])
def test_split_errors(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        split(data, **kwargs)
