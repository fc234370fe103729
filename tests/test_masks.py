"""Tests for operators.masks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from operators.masks import (
    MASK_TYPES, acceleration_of, equispaced_mask, make_mask, poisson_disc_mask, random_mask,
)

MaskBuilder = Callable[..., torch.Tensor]
SHAPES = [(64, 80), (128, 128), (230, 180), (256, 256)]


def _rho(shape: tuple[int, int]) -> np.ndarray:
    H, W = shape
    ky, kx = np.ogrid[:H, :W]
    return np.hypot((ky - H // 2) / (H / 2), (kx - W // 2) / (W / 2))


def _centre_slice(n: int, size: int) -> slice:
    return slice(n // 2 - size // 2, n // 2 - size // 2 + size)


# ----------------------------------------------------------------- all kinds
@pytest.mark.parametrize("kind", MASK_TYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_shape_dtype(kind: str, shape: tuple[int, int]) -> None:
    m = make_mask(kind, shape, 4, 0.08, seed=3)
    assert m.shape == shape
    assert m.dtype == torch.bool


@pytest.mark.parametrize("kind", MASK_TYPES)
def test_same_seed_same_mask_different_seed_different_mask(kind: str) -> None:
    masks = [make_mask(kind, (128, 128), 4, 0.08, seed=s) for s in range(6)]
    assert torch.equal(masks[0], make_mask(kind, (128, 128), 4, 0.08, seed=0))
    # equispaced only draws an offset, so two seeds may coincide; six must not all
    assert len({m.numpy().tobytes() for m in masks}) >= (3 if kind == "equispaced" else 6)


@pytest.mark.parametrize("kind", MASK_TYPES)
@pytest.mark.parametrize("R", [2, 4, 8])
def test_acceleration_close_to_target(kind: str, R: int) -> None:
    for shape in [(128, 128), (230, 180), (256, 256)]:
        acc = acceleration_of(make_mask(kind, shape, R, 0.08, seed=1))
        # the 1D kinds round to whole lines (180 / 8 = 22.5 lines); Poisson is tuned within 2 %
        assert acc == pytest.approx(R, rel=0.035), (shape, acc)


# ----------------------------------------------------------------- 1D masks
@pytest.mark.parametrize("build", [random_mask, equispaced_mask])
@pytest.mark.parametrize("axis", [-1, -2, 0, 1])
def test_line_masks_constant_along_readout(build: MaskBuilder, axis: int) -> None:
    m = build((96, 160), 4, 0.1, seed=2, axis=axis).numpy()
    lines = m[0] if axis % 2 == 1 else m[:, 0]
    expected = np.broadcast_to(lines[None, :] if axis % 2 == 1 else lines[:, None], m.shape)
    np.testing.assert_array_equal(m, expected)
    assert 1 < lines.sum() < lines.size


@pytest.mark.parametrize("build", [random_mask, equispaced_mask])
def test_axis_rows_is_transpose_of_axis_cols(build: MaskBuilder) -> None:
    rows = build((100, 64), 4, 0.08, seed=5, axis=0)
    cols = build((64, 100), 4, 0.08, seed=5, axis=-1)
    assert torch.equal(rows, cols.T)


@pytest.mark.parametrize("build", [random_mask, equispaced_mask])
@pytest.mark.parametrize(("n", "R", "cf"), [(64, 4, 0.08), (101, 3, 0.1), (256, 8, 0.04), (320, 2, 0.2)])
def test_line_masks_centre_fully_sampled(build: MaskBuilder, n: int, R: int, cf: float) -> None:
    lines = build((8, n), R, cf, seed=0)[0].numpy()
    n_center = round(n * cf)
    assert lines[_centre_slice(n, n_center)].all()
    assert lines[n // 2]  # the DC line


@pytest.mark.parametrize("n", [64, 100, 128, 180, 256, 320])
@pytest.mark.parametrize("R", [2, 4, 8])
def test_random_mask_exact_line_count(n: int, R: int) -> None:
    for seed in range(3):
        assert int(random_mask((4, n), R, 0.04, seed=seed)[0].sum()) == round(n / R)


@pytest.mark.parametrize("n", [64, 100, 128, 180, 256, 320])
@pytest.mark.parametrize("R", [2, 4, 8])
def test_equispaced_mask_line_count_and_spacing(n: int, R: int) -> None:
    n_center = round(n * 0.04)
    for seed in range(5):
        lines = equispaced_mask((4, n), R, 0.04, seed=seed)[0].numpy()
        assert abs(int(lines.sum()) - round(n / R)) <= 1
        centre = np.zeros(n, dtype=bool)
        centre[_centre_slice(n, n_center)] = True
        for side in (np.flatnonzero(lines & ~centre & (np.arange(n) < n // 2)),
                     np.flatnonzero(lines & ~centre & (np.arange(n) > n // 2))):
            gaps = np.unique(np.diff(side))
            assert gaps.size <= 1 or (gaps.size == 2 and gaps[1] - gaps[0] == 1)  # equispaced, rounded


def test_random_mask_picks_spread_lines() -> None:
    # over many seeds every non-centre line is picked about equally often (uniform draw)
    counts = sum(random_mask((2, 64), 4, 0.0625, seed=s)[0].numpy().astype(int) for s in range(400))
    outer = np.delete(counts, np.arange(30, 34))
    expected = 400 * (16 - 4) / 60
    assert np.all(np.abs(outer - expected) < 5 * np.sqrt(expected))


# ----------------------------------------------------------------- Poisson disc
@pytest.mark.parametrize("shape", [(128, 128), (230, 180), (256, 256), (320, 256)])
@pytest.mark.parametrize("R", [2, 4, 6, 8])
@pytest.mark.parametrize("elliptical", [True, False])
def test_poisson_acceleration(shape: tuple[int, int], R: int, elliptical: bool) -> None:
    m = poisson_disc_mask(shape, R, (24, 24), seed=4, elliptical=elliptical)
    assert acceleration_of(m) == pytest.approx(R, rel=0.025)


@pytest.mark.parametrize("calibration", [(24, 24), (20, 31), 0.1])
def test_poisson_calibration_fully_sampled(calibration: tuple[int, int] | float) -> None:
    shape = (230, 180)
    m = poisson_disc_mask(shape, 8, calibration, seed=0).numpy()
    rows, cols = calibration if isinstance(calibration, tuple) else (23, 18)
    assert m[_centre_slice(230, rows), _centre_slice(180, cols)].all()


def test_poisson_variable_density() -> None:
    shape = (256, 256)
    m = poisson_disc_mask(shape, 6, (16, 16), seed=0).numpy()
    rho = _rho(shape)
    fractions = [m[(rho >= a) & (rho < a + 0.2)].mean() for a in (0.1, 0.3, 0.5, 0.7)]
    assert all(f0 > 1.2 * f1 for f0, f1 in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] > 0.02


@pytest.mark.parametrize("R", [4, 8])
def test_poisson_outer_samples_are_separated(R: int) -> None:
    shape = (230, 180)
    m = poisson_disc_mask(shape, R, (24, 24), seed=1).numpy()
    points = np.argwhere(m)
    outer = _rho(shape)[m] > 0.5
    distance, _ = cKDTree(points).query(points[outer], k=2)
    assert distance[:, 1].min() > 1.0  # no two outer samples are grid neighbours


def test_poisson_elliptical_support() -> None:
    shape = (128, 160)
    outside = _rho(shape) > 1.0
    assert not poisson_disc_mask(shape, 4, (24, 24), seed=0).numpy()[outside].any()
    assert poisson_disc_mask(shape, 4, (24, 24), seed=0, elliptical=False).numpy()[outside].any()


# ----------------------------------------------------------------- acceleration_of
def test_acceleration_of() -> None:
    m = torch.zeros(10, 20, dtype=torch.bool)
    m[:, :5] = True
    assert acceleration_of(m) == 4.0
    assert acceleration_of(m[None, None].float()) == 4.0
    with pytest.raises(ValueError, match="mask: expected at least one sampled point"):
        acceleration_of(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask: expected a torch.Tensor, got ndarray"):
        acceleration_of(np.ones((4, 4)))  # type: ignore[arg-type]


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize("kind", MASK_TYPES)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"acceleration": 0.5}, ValueError, r"acceleration: expected a real number in \[1.0, inf\), got 0.5"),
        ({"acceleration": "4"}, TypeError, "acceleration: expected a real number"),
        ({"center_fraction": 1.0}, ValueError, r"center_fraction: expected a real number in \[0.0, 1.0\), got 1.0"),
        ({"center_fraction": -0.1}, ValueError, "center_fraction: expected"),
        ({"shape": (0, 64)}, ValueError, r"shape: expected 2 positive integers \(H, W\), got \(0, 64\)"),
        ({"shape": (64,)}, ValueError, "shape: expected 2 positive integers"),
        ({"shape": (64.0, 64)}, ValueError, "shape: expected 2 positive integers"),
        ({"seed": -1}, ValueError, "seed: expected a non-negative integer, got -1"),
    ],
)
def test_bad_arguments(kind: str, kwargs: dict, error: type, match: str) -> None:
    args = {"shape": (64, 64), "acceleration": 4, "center_fraction": 0.08, "seed": 0} | kwargs
    with pytest.raises(error, match=match):
        make_mask(kind, **args)


@pytest.mark.parametrize("build", [random_mask, equispaced_mask])
def test_centre_larger_than_acceleration_allows(build: MaskBuilder) -> None:
    with pytest.raises(ValueError, match=r"center_fraction: 0.5 asks for 50 .* more than the 25 lines"):
        build((100, 100), 4, 0.5)
    with pytest.raises(ValueError, match="acceleration: 300 leaves no line to sample among 100"):
        build((100, 100), 300, 0.0)
    with pytest.raises(ValueError, match="axis: expected one of -2, -1, 0, 1"):
        build((100, 100), 4, 0.08, axis=2)


def test_poisson_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"acceleration: 8 asks for 512 samples, but between 576 \(calibration"):
        poisson_disc_mask((64, 64), 8, (24, 24))
    with pytest.raises(ValueError, match=r"acceleration: 1.1 asks for .* and 3207 \(elliptical=True\)"):
        poisson_disc_mask((64, 64), 1.1, (8, 8))
    with pytest.raises(ValueError, match=r"calibration: expected a pair of integers \(rows, cols\) within shape"):
        poisson_disc_mask((64, 64), 4, (80, 8))
    with pytest.raises(ValueError, match=r"calibration: expected a real number in \[0.0, 1.0\)"):
        poisson_disc_mask((64, 64), 4, 1.5)


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"kind: expected one of \('random', 'equispaced', 'poisson'\), got 'radial'"):
        make_mask("radial", (64, 64), 4, 0.08)
