"""Drawing training examples from an image dataset: patches, augmentation, noisy pairs, splits.

The random draws for item ``k`` come from a ``torch.Generator`` seeded by ``(seed, epoch, k)``
alone (:func:`data.training.item_seed`), never by a shared stream, so item ``k`` is the same in
any order, in any ``DataLoader`` worker and after a training run resumes. ``set_epoch(e)`` moves
to fresh draws for a new epoch (and passes ``e`` on to a wrapped dataset that has ``set_epoch``);
call it before creating the epoch's ``DataLoader`` iterator (persistent workers keep the epoch
they started with).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from data.training import (STREAM_NOISE, STREAM_PATCHES, STREAM_SPLIT, check_index, check_int, check_size,
                           item_seed)

__all__ = ["Augment", "RandomPatches", "NoisyPairs", "split"]


def _check_chw(name: str, x: object) -> torch.Tensor:
    """Raise unless ``x`` is a ``(C, H, W)`` tensor."""
    if not torch.is_tensor(x) or x.ndim != 3:
        found = f"shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name}: expected a (C, H, W) tensor, got {found}")
    return x


class _PerItemDraws(Dataset):
    """A wrapped dataset plus a generator per ``(seed, epoch, index)`` in the subclass's stream."""

    stream: int

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, check_int("seed", seed, 0), 0

    def set_epoch(self, epoch: int) -> None:
        """Use the draws of ``epoch`` from now on (also in the wrapped dataset if it has ``set_epoch``)."""
        self.epoch = check_int("epoch", epoch, 0)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def generator(self, index: int) -> torch.Generator:
        """A fresh CPU generator for item ``index`` of the current epoch."""
        return torch.Generator().manual_seed(item_seed(self.seed, self.stream, self.epoch, index))


class Augment:
    """Random flips, 90-degree rotations and optional intensity scaling of a ``(C, H, W)`` image.

    Each call draws a horizontal and a vertical flip (each with probability 1/2, if ``flips``),
    a rotation by ``k * 90`` degrees with ``k`` uniform in 0..3 (if ``rotations``; for non-square
    images only 0 or 180 degrees, which keep the shape) and a factor uniform in ``scale`` that
    multiplies the intensities (if given). Flips and rotations together are uniform over the eight
    symmetries of the square. The draws use ``generator`` when given (reproducible per item, as
    :class:`RandomPatches` does), else the transform's own generator seeded by ``seed``.

    Args:
        flips: Draw random flips.
        rotations: Draw random rotations by multiples of 90 degrees.
        scale: ``(low, high)`` with ``0 < low <= high``: the range of the intensity factor;
            ``None`` leaves intensities unchanged.
        seed: Seed of the transform's own generator (``None``: fresh entropy).

    Example:
        >>> x = torch.arange(6.0).reshape(1, 2, 3)
        >>> y = Augment(seed=0)(x)
        >>> tuple(y.shape), sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())
        ((1, 2, 3), True)
    """

    def __init__(self, flips: bool = True, rotations: bool = True, scale: tuple[float, float] | None = None,
                 seed: int | None = None) -> None:
        self.flips, self.rotations, self.scale = bool(flips), bool(rotations), _check_scale(scale)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(check_int("seed", seed, 0))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = _check_chw("x", x)
        g = self.generator if generator is None else generator
        flip_w, flip_h = torch.randint(0, 2, (2,), generator=g).tolist()
        k = int(torch.randint(0, 4, (), generator=g))
        factor = float(torch.rand((), generator=g, dtype=torch.float64))
        dims = [d for d, flip in ((-1, flip_w), (-2, flip_h)) if self.flips and flip]
        out = x.flip(dims) if dims else x.clone()
        if self.rotations:
            out = torch.rot90(out, k if x.shape[-1] == x.shape[-2] else 2 * (k % 2), dims=(-2, -1))
        if self.scale is not None:
            out = out * (self.scale[0] + factor * (self.scale[1] - self.scale[0]))
        return out


def _check_scale(scale: object) -> tuple[float, float] | None:
    """``None``, or ``scale`` as a pair ``(low, high)`` of finite reals with ``0 < low <= high``."""
    if scale is None:
        return None
    ok = (isinstance(scale, (tuple, list)) and len(scale) == 2
          and all(isinstance(s, numbers.Real) and not isinstance(s, bool) and math.isfinite(s) for s in scale))
    if not ok or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale: expected None or (low, high) with 0 < low <= high, got {scale!r}")
    return float(scale[0]), float(scale[1])


class RandomPatches(_PerItemDraws):
    """Random crops of a dataset's images: ``patches_per_image`` patches for each image.

    Item ``k`` is a ``patch_size`` crop of image ``k // patches_per_image`` at a corner drawn
    uniformly from all positions that fit, then passed through ``transform`` (with the item's
    generator). An image is read once per patch, so wrap costly datasets in a cache if needed.

    Args:
        dataset: Items ``(C, H, W)`` tensors at least as large as the patches.
        patch_size: ``h`` for square patches, or ``(h, w)``.
        patches_per_image: Patches drawn from each image (>= 1).
        seed: Non-negative integer; with the epoch and the item index it fixes corner and transform.
        transform: Optional :class:`Augment` (or any callable ``transform(x, generator=g)``).

    Shapes:
        item: ``(C, h, w)``.

    Example:
        >>> from data.training import EllipsesDataset
        >>> patches = RandomPatches(EllipsesDataset(2, size=32), 8, patches_per_image=3, seed=1)
        >>> len(patches), tuple(patches[5].shape), torch.equal(patches[5], patches[5])
        (6, (1, 8, 8), True)
    """

    stream = STREAM_PATCHES

    def __init__(self, dataset: Dataset, patch_size: int | tuple[int, int], patches_per_image: int = 1,
                 seed: int = 0, transform: Augment | None = None) -> None:
        super().__init__(dataset, seed)
        self.patch_size = check_size("patch_size", patch_size)
        self.patches_per_image = check_int("patches_per_image", patches_per_image, 1)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset) * self.patches_per_image

    def __getitem__(self, index: int) -> torch.Tensor:
        index = check_index(index, len(self))
        image = _check_chw(f"dataset: item {index // self.patches_per_image}",
                           self.dataset[index // self.patches_per_image])
        (h, w), (height, width) = self.patch_size, image.shape[-2:]
        if h > height or w > width:
            raise ValueError(f"patch_size: {(h, w)} does not fit in image {index // self.patches_per_image} "
                             f"of shape {tuple(image.shape)}")
        g = self.generator(index)
        top = int(torch.randint(0, height - h + 1, (), generator=g))
        left = int(torch.randint(0, width - w + 1, (), generator=g))
        patch = image[:, top:top + h, left:left + w].clone()
        return patch if self.transform is None else self.transform(patch, generator=g)


class NoisyPairs(_PerItemDraws):
    r"""``(clean + sigma * noise, clean)`` pairs with Gaussian noise drawn per ``(seed, epoch, index)``.

    .. math:: \tilde x = x + \sigma \xi, \quad \xi \sim \mathcal N(0, I)

    Args:
        dataset: Items are floating-point tensors (the clean images).
        sigma: Noise standard deviation (>= 0), in the images' units.
        seed: Non-negative integer; the same seed, epoch and index give the same noise.

    Shapes:
        item: ``(noisy, clean)``, both of the clean item's shape and dtype.

    Example:
        >>> from data.training import EllipsesDataset
        >>> pairs = NoisyPairs(EllipsesDataset(4, size=16), sigma=0.1, seed=0)
        >>> noisy, clean = pairs[2]
        >>> tuple(noisy.shape), torch.equal(noisy, pairs[2][0]), torch.equal(clean, pairs.dataset[2])
        ((1, 16, 16), True, True)
    """

    stream = STREAM_NOISE

    def __init__(self, dataset: Dataset, sigma: float, seed: int = 0) -> None:
        super().__init__(dataset, seed)
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not 0 <= sigma < math.inf:
            raise ValueError(f"sigma: expected a finite number >= 0, got {sigma!r}")
        self.sigma = float(sigma)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = check_index(index, len(self))
        clean = self.dataset[index]
        if not torch.is_tensor(clean) or not clean.is_floating_point():
            found = clean.dtype if torch.is_tensor(clean) else type(clean).__name__
            raise ValueError(f"dataset: item {index} must be a floating-point tensor, got {found}")
        noise = torch.randn(clean.shape, generator=self.generator(index), dtype=clean.dtype)
        return clean + self.sigma * noise.to(clean.device), clean


def split(dataset: Dataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[Subset, Subset]:
    """Split a dataset into disjoint training and validation subsets that together cover it.

    A permutation drawn from ``(seed, len(dataset))`` picks ``round(val_fraction * len(dataset))``
    validation items (at least one when ``val_fraction > 0``, and at least one training item);
    each subset keeps its indices in increasing order.

    Args:
        dataset: A dataset with ``len``.
        val_fraction: Fraction of items for validation, in ``[0, 1)``.
        seed: Non-negative integer; the same seed and length give the same split.

    Returns:
        ``(train, val)`` as :class:`torch.utils.data.Subset` views of ``dataset``.

    Example:
        >>> from data.training import EllipsesDataset
        >>> train, val = split(EllipsesDataset(10, size=16), val_fraction=0.3, seed=1)
        >>> len(train), len(val), sorted(train.indices + val.indices) == list(range(10))
        (7, 3, True)
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in [0, 1), got {val_fraction!r}")
    n, needed = len(dataset), 2 if val_fraction > 0 else 1
    if n < needed:
        raise ValueError(f"dataset: expected at least {needed} item(s) to split with val_fraction={val_fraction}, "
                         f"got {n}")
    n_val = min(max(round(val_fraction * n), 1 if val_fraction > 0 else 0), n - 1)
    order = np.random.default_rng(item_seed(check_int("seed", seed, 0), STREAM_SPLIT, n)).permutation(n)
    return Subset(dataset, sorted(order[n_val:].tolist())), Subset(dataset, sorted(order[:n_val].tolist()))
