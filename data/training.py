"""Training data for learned priors: synthetic sets and image files. Nothing is downloaded.

Every dataset returns one image per item as a ``(1, H, W)`` float32 tensor (batch-first after a
``DataLoader`` collates them into ``(B, 1, H, W)``). Synthetic items are drawn from a random
stream seeded by ``(seed, index)`` alone, so item ``i`` is the same whatever was read before it,
in any worker process and after a resumed run. Patches, augmentation and noisy pairs built on
these datasets, and train/validation splits, live in :mod:`data.patches`.

File datasets list or check their input when constructed and read one item per ``__getitem__``
(HDF5 files are opened and closed per item, so the datasets pickle and fork cleanly into
``DataLoader`` workers). Errors name the argument or the file, what was expected and what was
found.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import draw
from torch.utils.data import Dataset

from data.dicom import read_series
from data.hdf5 import _check_read, open_hdf5
from data.phantoms import _check_n_ellipses, random_ellipses

__all__ = ["EllipsesDataset", "CouleLikeDataset", "HTCDiscDataset", "ImageFolderDataset", "HDF5ImageDataset",
           "DicomSeriesDataset"]

# random streams: one per use, so equal seeds in two places never give correlated draws
STREAM_ELLIPSES, STREAM_COULE, STREAM_SPLIT, STREAM_PATCHES, STREAM_NOISE, STREAM_DISCS = 1, 2, 3, 4, 5, 6
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")
_8BIT_MODES, _16BIT_MODES = ("1", "L", "LA", "P", "RGB", "RGBA"), ("I;16", "I;16B", "I;16L", "I")


# --------------------------------------------------------------------------
# argument checks and seeding
# --------------------------------------------------------------------------
def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int``, or an error naming ``name`` unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def item_seed(seed: int, stream: int, *keys: int) -> int:
    """A 64-bit seed for one draw, mixed from ``(seed, stream, *keys)`` by numpy's SeedSequence.

    Example:
        >>> item_seed(0, 1, 5) == item_seed(0, 1, 5) != item_seed(0, 1, 6)
        True
    """
    return int(np.random.SeedSequence([seed, stream, *keys]).generate_state(1, np.uint64)[0])


def check_index(index: object, n: int) -> int:
    """``index`` as a non-negative int below ``n`` (negative counts from the end), else IndexError."""
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise TypeError(f"index: expected an integer, got {type(index).__name__} {index!r}")
    if not -n <= index < n:
        raise IndexError(f"index: {index} is out of range for a dataset of {n} items")
    return int(index) % n


def check_size(name: str, size: object) -> tuple[int, int]:
    """``size`` (an int or an (H, W) pair of ints >= 1) as an (H, W) pair; errors name ``name``."""
    pair = (size, size) if isinstance(size, numbers.Integral) else size
    if (isinstance(pair, Sequence) and len(pair) == 2
            and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in pair)):
        return int(pair[0]), int(pair[1])
    raise ValueError(f"{name}: expected an integer >= 1 or a pair (H, W) of them, got {size!r}")


# --------------------------------------------------------------------------
# synthetic sets
# --------------------------------------------------------------------------
class EllipsesDataset(Dataset):
    """Random ellipse phantoms (:func:`data.phantoms.random_ellipses`), one seed per item.

    Item ``i`` is ``random_ellipses(size, n_ellipses, seed=item_seed(seed, STREAM_ELLIPSES, i))``:
    a body ellipse with interior ellipses, zero background, scaled to span ``[0, 1]``.

    Args:
        n: Number of items (>= 1).
        size: Image side length in pixels (>= 8).
        seed: Non-negative integer; the same seed gives the same images.
        n_ellipses: Interior ellipses per image, or an inclusive range ``(low, high)``.

    Shapes:
        item: ``(1, size, size)`` float32 in ``[0, 1]``.

    Example:
        >>> ds = EllipsesDataset(3, size=32, seed=7)
        >>> x = ds[1]
        >>> len(ds), tuple(x.shape), torch.equal(x, EllipsesDataset(3, size=32, seed=7)[1])
        (3, (1, 32, 32), True)
    """

    def __init__(self, n: int, size: int = 256, seed: int = 0,
                 n_ellipses: int | tuple[int, int] = (5, 15)) -> None:
        self.n, self.size = check_int("n", n, 1), check_int("size", size, 8)
        self.seed, self.n_ellipses = check_int("seed", seed, 0), _check_n_ellipses(n_ellipses)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        seed = item_seed(self.seed, STREAM_ELLIPSES, check_index(index, self.n))
        return random_ellipses(self.size, self.n_ellipses, seed=seed)[0]


def _paint_ellipse(image: np.ndarray, rng: np.random.Generator, radius: float) -> None:
    """One uniform ellipse inside the disc of ``radius`` pixels about the image centre."""
    centre = (image.shape[0] - 1) / 2
    a, b = rng.uniform(0.08, 0.4, size=2) * radius
    rho, phi = (radius - max(a, b)) * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
    rr, cc = draw.ellipse(centre + rho * math.sin(phi), centre + rho * math.cos(phi), a, b,
                          shape=image.shape, rotation=rng.uniform(0, math.pi))
    image[rr, cc] = rng.uniform(0.1, 1.0)


def _paint_line(image: np.ndarray, rng: np.random.Generator, radius: float) -> None:
    """One uniform thick segment (a rotated rectangle) inside the disc of ``radius`` pixels."""
    centre = (image.shape[0] - 1) / 2
    rho, phi = 0.45 * radius * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
    mid = np.array([centre + rho * math.sin(phi), centre + rho * math.cos(phi)])
    theta = rng.uniform(0, math.pi)
    along = rng.uniform(0.25, 0.5) * radius * np.array([math.sin(theta), math.cos(theta)])
    across = max(0.75, rng.uniform(0.005, 0.015) * image.shape[0]) * np.array([math.cos(theta), -math.sin(theta)])
    corners = np.stack([mid - along - across, mid + along - across, mid + along + across, mid - along + across])
    rr, cc = draw.polygon(corners[:, 0], corners[:, 1], shape=image.shape)
    image[rr, cc] = rng.uniform(0.1, 1.0)


class CouleLikeDataset(Dataset):
    """COULE-like images: overlapping uniform ellipses and thick line segments on a dark background.

    Modelled on COULE ("Contrasted Overlapping Uniform Lines and Ellipses", 256 x 256) without
    downloading it. Each image paints, in order, ``n_ellipses`` ellipses (semi-axes 8-40% of the
    radius) and then ``n_lines`` segments (length 50-100% of the radius, width 1-3% of the image
    side, at least 1.5 pixels), each with its own grey level drawn from ``[0.1, 1]``; later shapes
    cover earlier ones, so every pixel holds exactly one level (no antialiasing) and the background
    is 0. Every shape lies inside the disc inscribed in the image, so parallel-beam CT sees all of it
    from every angle. Item ``i`` depends only on ``(seed, i)``.

    Args:
        n: Number of items (>= 1).
        size: Image side length in pixels (>= 16).
        seed: Non-negative integer; the same seed gives the same images.
        n_ellipses: Inclusive range ``(low, high)`` of ellipses per image.
        n_lines: Inclusive range ``(low, high)`` of line segments per image.

    Shapes:
        item: ``(1, size, size)`` float32 in ``[0, 1]``.

    Example:
        >>> x = CouleLikeDataset(2, size=64, seed=3)[0]
        >>> tuple(x.shape), float(x.min()), 0.1 <= float(x.max()) <= 1.0, len(torch.unique(x)) > 4
        ((1, 64, 64), 0.0, True, True)
    """

    def __init__(self, n: int, size: int = 256, seed: int = 0, n_ellipses: tuple[int, int] = (5, 10),
                 n_lines: tuple[int, int] = (2, 5)) -> None:
        self.n, self.size = check_int("n", n, 1), check_int("size", size, 16)
        self.seed = check_int("seed", seed, 0)
        self.n_ellipses, self.n_lines = _check_range("n_ellipses", n_ellipses), _check_range("n_lines", n_lines)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng(item_seed(self.seed, STREAM_COULE, check_index(index, self.n)))
        image, radius = np.zeros((self.size, self.size)), 0.95 * self.size / 2
        for _ in range(rng.integers(self.n_ellipses[0], self.n_ellipses[1] + 1)):
            _paint_ellipse(image, rng, radius)
        for _ in range(rng.integers(self.n_lines[0], self.n_lines[1] + 1)):
            _paint_line(image, rng, radius)
        return torch.from_numpy(image).to(torch.float32)[None]


#: the HTC2022 phantoms in the organisers' field of view (512 pixels of 0.148 mm, 75.94 mm): a 70 mm acrylic disc
#: whose centre sits within about 1 mm of the rotation centre; holes keep a rim of at least 3 mm
HTC_FOV_MM, HTC_DISC_RADIUS_MM, HTC_CENTRE_MM, HTC_HOLE_RADIUS_MM = 75.94, 35.0, 1.0, 32.0
#: holes stay apart, as in the challenge's phantoms: the circles holding them at least HOLE_GAP_MM apart (a hole
#: that finds no room in HOLE_TRIES draws is left out)
HOLE_GAP_MM, HOLE_TRIES = 1.0, 50


class HTCDiscDataset(Dataset):
    """HTC2022-like phantoms: a uniform disc with holes, in the challenge's field of view.

    Modelled on the acrylic discs of the Helsinki Tomography Challenge 2022 (70 mm in diameter, holes of
    many shapes, more and more intricate at higher difficulty) without their files: each item is a disc
    of value 1 and radius 35 mm, centred within 1 mm of the image centre, on a ``size`` grid over the
    organisers' 75.94 mm field of view, with ``n_holes`` holes of value 0 drawn from four shapes:
    discs (radius 1.5-8 mm), ellipses, convex polygons of 3-6 vertices (radius 2-12 mm) and slots
    (1-3 mm wide, 5-25 mm long), each inside 32 mm of the disc's centre and apart from the others. Drawn at
    4x the resolution and averaged, so edges are antialiased. Item ``i`` depends only on ``(seed, i)``.
    For training limited-angle methods to be checked on the real scans (``data.htc2022``).

    Args:
        n: Number of items (>= 1).
        size: Image side length in pixels (>= 16).
        seed: Non-negative integer; the same seed gives the same images.
        n_holes: Inclusive range ``(low, high)`` of holes per image.
        shapes: ``"convex"`` (the four shapes above) or ``"all"``: also crosses and bends of two slots
            (1.5-3.5 mm wide, at 50-130 deg; ``_joined``), one in three holes.

    Shapes:
        item: ``(1, size, size)`` float32 in ``[0, 1]``.

    Example:
        >>> x = HTCDiscDataset(2, size=64, seed=1)[0]
        >>> tuple(x.shape), float(x.max()), 0.5 < float(x.mean()) < 0.67  # the disc covers 2/3 of the field
        ((1, 64, 64), 1.0, True)
    """

    def __init__(self, n: int, size: int = 256, seed: int = 0, n_holes: tuple[int, int] = (1, 20),
                 shapes: str = "convex") -> None:
        self.n, self.size = check_int("n", n, 1), check_int("size", size, 16)
        self.seed = check_int("seed", seed, 0)
        self.n_holes = _check_range("n_holes", n_holes)
        if shapes not in ("convex", "all"):
            raise ValueError(f"shapes: expected 'convex' or 'all', got {shapes!r}")
        self.shapes = shapes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng(item_seed(self.seed, STREAM_DISCS, check_index(index, self.n)))
        fine = 4 * self.size
        mm = fine / HTC_FOV_MM  # pixels of the fine grid per mm
        image = np.zeros((fine, fine))
        r, t = HTC_CENTRE_MM * mm * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        centre = (fine - 1) / 2 + r * np.array([math.sin(t), math.cos(t)])
        rr, cc = draw.disk(tuple(centre), HTC_DISC_RADIUS_MM * mm, shape=image.shape)
        image[rr, cc] = 1.0
        placed: list[tuple[np.ndarray, float]] = []
        for _ in range(rng.integers(self.n_holes[0], self.n_holes[1] + 1)):
            for _ in range(HOLE_TRIES):
                hole, mid, extent = _hole(rng, centre, mm, image.shape, 6 if self.shapes == "all" else 4)
                if all(np.hypot(*(mid - m)) >= (extent + e + HOLE_GAP_MM) * mm for m, e in placed):
                    image[hole] = 0.0
                    placed.append((mid, extent))
                    break
        coarse = image.reshape(self.size, 4, self.size, 4).mean(axis=(1, 3))
        return torch.from_numpy(coarse).to(torch.float32)[None]


def _slot(mid: np.ndarray, theta: float, length: float, width: float, mm: float, shape):
    """The pixels of a ``length`` x ``width`` mm rectangle centred on ``mid`` (pixels), its long side at ``theta``."""
    along = length / 2 * mm * np.array([math.sin(theta), math.cos(theta)])
    across = width / 2 * mm * np.array([math.cos(theta), -math.sin(theta)])
    corners = np.stack([mid - along - across, mid + along - across, mid + along + across, mid - along + across])
    return draw.polygon(corners[:, 0], corners[:, 1], shape=shape)


def _joined(rng: np.random.Generator, mid: np.ndarray, mm: float, shape, crossing: bool):
    """Two slots 1.5-3.5 mm wide at 50-130 deg to each other about ``mid``: crossing at their middles (a cross, 8-20
    mm long) or meeting at an end (a bend, 6-14 mm long)."""
    theta, turn = rng.uniform(0, math.pi), rng.uniform(math.radians(50), math.radians(130))
    rows, cols = [], []
    for t in (theta, theta + turn):
        length, width = rng.uniform(*((8, 20) if crossing else (6, 14))), rng.uniform(1.5, 3.5)
        offset = 0.0 if crossing else (length / 2 - width / 2) * mm
        rr, cc = _slot(mid + offset * np.array([math.sin(t), math.cos(t)]), t, length, width, mm, shape)
        rows.append(rr)
        cols.append(cc)
    return np.concatenate(rows), np.concatenate(cols)


def _hole(rng: np.random.Generator, centre: np.ndarray, mm: float, shape, kinds: int = 4):
    """``((rows, cols), centre, extent)``: the pixels of one random hole (disc, ellipse, convex polygon or slot;
    with ``kinds=6`` also a cross or a bend of two slots) within ``HTC_HOLE_RADIUS_MM`` of ``centre``, its own
    centre (pixels) and the radius in mm of a circle about it that holds it."""
    kind = rng.integers(kinds)
    extent = {0: rng.uniform(1.5, 8), 1: 0.0, 2: rng.uniform(2, 12), 3: 0.0, 4: 10.5, 5: 14.5}[kind]
    if kind == 1:
        a, b = rng.uniform(1.5, 10, size=2)
        extent = max(a, b)
    if kind == 3:
        length, width = rng.uniform(5, 25), rng.uniform(1, 3)
        extent = math.hypot(length, width) / 2
    rho = (HTC_HOLE_RADIUS_MM - extent) * math.sqrt(rng.uniform())
    phi = rng.uniform(0, 2 * math.pi)
    mid = centre + rho * mm * np.array([math.sin(phi), math.cos(phi)])
    if kind == 0:
        return draw.disk(tuple(mid), extent * mm, shape=shape), mid, extent
    if kind == 1:
        return draw.ellipse(mid[0], mid[1], a * mm, b * mm, shape=shape, rotation=rng.uniform(0, math.pi)), mid, extent
    if kind == 2:
        angles = np.sort(rng.uniform(0, 2 * math.pi, size=rng.integers(3, 7)))
        rows, cols = mid[0] + extent * mm * np.sin(angles), mid[1] + extent * mm * np.cos(angles)
        return draw.polygon(rows, cols, shape=shape), mid, extent
    if kind in (4, 5):
        return _joined(rng, mid, mm, shape, crossing=kind == 4), mid, extent
    return _slot(mid, rng.uniform(0, math.pi), length, width, mm, shape), mid, extent


def _check_range(name: str, value: object) -> tuple[int, int]:
    """An inclusive range ``(low, high)`` of integers with ``0 <= low <= high``."""
    if (isinstance(value, Sequence) and len(value) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
            and 0 <= value[0] <= value[1]):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name}: expected a pair (low, high) of integers with 0 <= low <= high, got {value!r}")


# --------------------------------------------------------------------------
# image files
# --------------------------------------------------------------------------
def _read_pillow(path: Path) -> np.ndarray:
    """An image file as grey values in ``[0, 1]``: 8-bit modes (colour via luma) / 255, 16-bit / 65535."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _16BIT_MODES:
                grey, peak = np.asarray(img, dtype=np.float64), 65535.0
            elif img.mode in _8BIT_MODES:
                grey, peak = np.asarray(img.convert("L"), dtype=np.float64), 255.0
            else:
                raise ValueError(f"{path}: image mode {img.mode!r} is not supported (expected 8-bit grey or "
                                 f"colour, or 16-bit grey)")
    except OSError as err:  # unidentified, truncated or unreadable
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    if grey.min() < 0 or grey.max() > peak:
        raise ValueError(f"{path}: 32-bit grey values must lie in [0, 65535], got [{grey.min()}, {grey.max()}]")
    return grey / peak


def _read_npy(path: Path) -> np.ndarray:
    """A 2-D ``(H, W)`` or ``(1, H, W)`` real, finite array from an ``.npy`` file, values unchanged."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({type(err).__name__}: {err})") from err
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[0] == 1)) or 0 in array.shape:
        raise ValueError(f"{path}: expected an array of shape (H, W) or (1, H, W), got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a real numeric array, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{path}: array contains NaN or Inf values")
    return array.reshape(array.shape[-2:])


def _to_item(array: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    """``(1, H, W)`` float32, resized to ``size`` by antialiased bilinear interpolation if given."""
    image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if size is None or tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


class ImageFolderDataset(Dataset):
    """Grey images from the files in a folder matching a glob pattern, in sorted path order.

    Image files (PNG, JPEG, TIFF, BMP; read with Pillow) become grey values in ``[0, 1]``: 8-bit
    images (colour converted by Pillow's ITU-R 601-2 luma) are divided by 255, 16-bit grey ones by
    65535. ``.npy`` files hold ``(H, W)`` or ``(1, H, W)`` real arrays, returned as float32 with
    their values unchanged. Files with other suffixes are skipped. Files are read per item, so an
    unreadable file raises (naming it) when its item is requested.

    Args:
        root: The folder.
        pattern: Glob pattern relative to ``root`` (``"**/*.png"`` searches subfolders).
        size: Resize every image to ``(size, size)`` or ``size = (H, W)`` (antialiased bilinear);
            ``None`` keeps each file's shape (a ``DataLoader`` then needs equal shapes per batch).

    Shapes:
        item: ``(1, H, W)`` float32.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.full((4, 6), 51, np.uint8)).save(root / "a.png")
        >>> np.save(root / "b.npy", np.ones((1, 4, 6)))
        >>> ds = ImageFolderDataset(root)
        >>> len(ds), tuple(ds[0].shape), round(float(ds[0][0, 0, 0]), 6), float(ds[1].sum())
        (2, (1, 4, 6), 0.2, 24.0)
    """

    def __init__(self, root: str | os.PathLike, pattern: str = "*", size: int | tuple[int, int] | None = None) -> None:
        self.root, self.size = Path(root), None if size is None else check_size("size", size)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: no such folder {self.root}")
        self.files = sorted(p for p in self.root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"root: no image files matching {pattern!r} in {self.root} "
                             f"(expected suffixes {', '.join(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[check_index(index, len(self.files))]
        array = _read_npy(path) if path.suffix.lower() == ".npy" else _read_pillow(path)
        return _to_item(array, self.size)


class HDF5ImageDataset(Dataset):
    """Images from an ``(N, H, W)`` or ``(N, 1, H, W)`` dataset in an HDF5 file, read lazily.

    The constructor checks the dataset's shape and dtype from its metadata (reading no pixels);
    each item opens the file, reads that one image and closes the file again, so nothing stays
    open between items and the dataset pickles into ``DataLoader`` workers. Values are returned
    as float32, unchanged; an item holding NaN or Inf raises when it is requested.

    Args:
        path: The HDF5 file.
        dataset: Name of the image dataset inside the file.

    Shapes:
        item: ``(1, H, W)`` float32.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "train.h5"
        >>> with h5py.File(path, "w") as f: _ = f.create_dataset("images", data=np.zeros((5, 8, 8)))
        >>> ds = HDF5ImageDataset(path)
        >>> len(ds), tuple(ds[4].shape), ds[4].dtype
        (5, (1, 8, 8), torch.float32)
    """

    def __init__(self, path: str | os.PathLike, dataset: str = "images") -> None:
        self.path, self.dataset = Path(path), dataset
        if not self.path.is_file():
            raise FileNotFoundError(f"path: no such file {self.path}")
        if not h5py.is_hdf5(self.path):
            raise ValueError(f"path: {self.path} is not a readable HDF5 file")
        with open_hdf5(self.path) as f:
            self.shape = self._check(f).shape

    def _check(self, f: h5py.File) -> h5py.Dataset:
        """The image dataset, after checking that it is 3-D/4-D, real, and that one item fits in memory."""
        item = f.get(self.dataset)
        if not isinstance(item, h5py.Dataset):
            found = sorted(k for k in f if isinstance(f[k], h5py.Dataset))
            raise ValueError(f"dataset: no dataset {self.dataset!r} in {self.path}; found datasets {found}")
        shape = item.shape
        if not (len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)) or 0 in shape:
            raise ValueError(f"{self.path}:{self.dataset}: expected shape (N, H, W) or (N, 1, H, W), got {shape}")
        if item.dtype.kind not in "biuf":
            raise ValueError(f"{self.path}:{self.dataset}: expected real numbers, got dtype {item.dtype}")
        _check_read(item, self.dataset, self.path, 0, 4)  # one item and its float32 copy
        return item

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        index = check_index(index, self.shape[0])
        with open_hdf5(self.path) as f:  # checked again: the file may have changed since the constructor
            item = self._check(f)
            if item.shape != self.shape:
                raise ValueError(f"{self.path}:{self.dataset}: the shape changed from {self.shape} to {item.shape} "
                                 f"since the dataset was made")
            array = np.asarray(item[index], dtype=np.float32)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{self.path}:{self.dataset}: item {index} contains NaN or Inf values")
        return torch.from_numpy(array.reshape(1, *self.shape[-2:]))


class DicomSeriesDataset(Dataset):
    """The slices of one DICOM series (:func:`data.dicom.read_series`) as images in ``[0, 1]``.

    The series is read once, when the dataset is made (its slices ordered along the slice normal);
    item ``k`` is slice ``k`` mapped linearly from HU to ``[0, 1]``: the window's lower edge to 0
    and its upper edge to 1, clipped outside. Without a window the volume's minimum and maximum are
    the edges (a constant volume gives zeros).

    Args:
        folder: A series folder (searched recursively), a file or a list of files.
        window: ``(center, width)`` in HU, as in DICOM's WindowCenter/WindowWidth; ``None`` for the
            volume's min/max.
        series_uid: The series to read when the folder holds several.

    Shapes:
        item: ``(1, Rows, Columns)`` float32 in ``[0, 1]``.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> ds = DicomSeriesDataset(get_testdata_file("CT_small.dcm"), window=(40, 400))
        >>> len(ds), tuple(ds[0].shape), 0.0 <= float(ds[0].min()) <= float(ds[0].max()) <= 1.0
        (1, (1, 128, 128), True)
    """

    def __init__(self, folder: str | os.PathLike | Iterable, window: tuple[float, float] | None = None,
                 series_uid: str | None = None) -> None:
        self.volume = read_series(folder, series_uid=series_uid)
        hu = self.volume.hu
        self.low, self.high = _window_edges(window) if window is not None else (float(hu.min()), float(hu.max()))

    def __len__(self) -> int:
        return len(self.volume.hu)

    def __getitem__(self, index: int) -> torch.Tensor:
        hu = self.volume.hu[check_index(index, len(self.volume.hu))].astype(np.float64)
        width = self.high - self.low
        scaled = np.clip((hu - self.low) / width, 0.0, 1.0) if width > 0 else np.zeros_like(hu)
        return torch.from_numpy(scaled.astype(np.float32))[None]


def _window_edges(window: object) -> tuple[float, float]:
    """``(center - width / 2, center + width / 2)`` from a ``(center, width)`` pair with width > 0."""
    ok = (isinstance(window, Sequence) and len(window) == 2
          and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in window))
    if not ok or window[1] <= 0:
        raise ValueError(f"window: expected (center, width) in HU, finite, with width > 0, got {window!r}")
    return float(window[0]) - float(window[1]) / 2, float(window[0]) + float(window[1]) / 2
