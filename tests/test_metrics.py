"""Tests for recon.metrics against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from data.phantoms import random_ellipses, shepp_logan
from recon.metrics import psnr, relative_error, ssim


def _pairs(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch of (noisy, clean) pairs: random images and phantoms."""
    gen = torch.Generator().manual_seed(0)
    clean = torch.cat(
        [
            torch.rand(1, 1, 40, 40, generator=gen, dtype=torch.float64),
            shepp_logan(40, dtype=torch.float64),
            random_ellipses(40, seed=2, dtype=torch.float64),
            3.0 * torch.rand(1, 1, 40, 40, generator=gen, dtype=torch.float64) - 1.0,
        ]
    )
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    return noisy.to(dtype), clean.to(dtype)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


# ----------------------------------------------------------------------- psnr
def test_psnr_matches_skimage_default_range() -> None:
    x, ref = _pairs()
    out = psnr(x, ref)
    assert out.shape == (4,)
    for b in range(4):
        rng = float(ref[b].max() - ref[b].min())
        expected = peak_signal_noise_ratio(_np(ref[b]), _np(x[b]), data_range=rng)
        assert float(out[b]) == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("data_range", [1.0, 4.0])
def test_psnr_matches_skimage_given_range(data_range: float) -> None:
    x, ref = _pairs(torch.float32)
    out = psnr(x, ref, data_range=data_range)
    assert out.dtype == torch.float32
    for b in range(4):
        expected = peak_signal_noise_ratio(_np(ref[b]), _np(x[b]), data_range=data_range)
        assert float(out[b]) == pytest.approx(expected, abs=1e-4)


def test_psnr_tensor_range_and_identical_images() -> None:
    x, ref = _pairs()
    per_item = psnr(x, ref, data_range=torch.tensor([1.0, 2.0, 1.0, 2.0]))
    assert float(per_item[1] - per_item[0]) != pytest.approx(0.0)
    same = psnr(ref, ref)
    assert torch.isinf(same).all()


# ----------------------------------------------------------------------- ssim
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_matches_skimage(dtype: torch.dtype) -> None:
    x, ref = _pairs(dtype)
    out = ssim(x, ref, data_range=2.0)
    assert out.shape == (4,)
    assert out.dtype == dtype
    for b in range(4):
        expected = structural_similarity(_np(x[b, 0]), _np(ref[b, 0]), data_range=2.0)
        assert float(out[b]) == pytest.approx(expected, abs=1e-4)


def test_ssim_default_range_matches_skimage_per_item() -> None:
    x, ref = _pairs()
    out = ssim(x, ref)
    for b in range(4):
        rng = float(ref[b].max() - ref[b].min())
        expected = structural_similarity(_np(x[b, 0]), _np(ref[b, 0]), data_range=rng)
        assert float(out[b]) == pytest.approx(expected, abs=1e-4)


def test_ssim_multichannel_non_square_matches_skimage() -> None:
    gen = torch.Generator().manual_seed(1)
    ref = torch.rand(2, 3, 23, 31, generator=gen, dtype=torch.float64)
    x = ref + 0.2 * torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    out = ssim(x, ref, data_range=1.0)
    for b in range(2):
        expected = structural_similarity(
            _np(x[b]), _np(ref[b]), data_range=1.0, channel_axis=0
        )
        assert float(out[b]) == pytest.approx(expected, abs=1e-4)


def test_ssim_phantom_large() -> None:
    ref = shepp_logan(128, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    x = ref + 0.05 * torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    expected = structural_similarity(_np(x[0, 0]), _np(ref[0, 0]), data_range=1.0)
    assert float(ssim(x, ref, data_range=1.0)[0]) == pytest.approx(expected, abs=1e-4)
    assert float(ssim(ref, ref, data_range=1.0)[0]) == pytest.approx(1.0, abs=1e-12)


# -------------------------------------------------------------- rel. error
def test_relative_error() -> None:
    x, ref = _pairs()
    out = relative_error(x, ref)
    assert out.shape == (4,)
    for b in range(4):
        expected = np.linalg.norm(_np(x[b] - ref[b])) / np.linalg.norm(_np(ref[b]))
        assert float(out[b]) == pytest.approx(expected, rel=1e-10)
    assert torch.equal(relative_error(ref, ref), torch.zeros(4, dtype=torch.float64))
    assert float(relative_error(2 * ref, ref)[0]) == pytest.approx(1.0)


def test_metrics_are_batched_independently() -> None:
    x, ref = _pairs()
    for metric in (psnr, ssim, relative_error):
        full = metric(x, ref)
        single = torch.cat([metric(x[b : b + 1], ref[b : b + 1]) for b in range(4)])
        assert torch.allclose(full, single, atol=1e-12), metric.__name__


def test_psnr_value_known() -> None:
    ref = torch.zeros(1, 1, 8, 8)
    ref[..., 0, 0] = 1.0
    assert float(psnr(ref + 0.1, ref)[0]) == pytest.approx(20.0, abs=1e-4)
    assert float(psnr(ref + 0.1, ref, data_range=10.0)[0]) == pytest.approx(
        20.0 + 20.0 * math.log10(10.0), abs=1e-4
    )


# ------------------------------------------------------------------ bad args
_GOOD = torch.zeros(1, 1, 8, 8)


@pytest.mark.parametrize("metric", [psnr, ssim, relative_error])
@pytest.mark.parametrize(
    ("x", "ref", "exc", "match"),
    [
        (np.zeros((1, 1, 8, 8)), _GOOD, TypeError, r"^x: expected a torch\.Tensor"),
        (_GOOD, [[0.0]], TypeError, r"^ref: expected a torch\.Tensor"),
        (torch.zeros(8, 8), _GOOD, ValueError, r"^x: expected a 4-D tensor"),
        (_GOOD, torch.zeros(1, 8, 8), ValueError, r"^ref: expected a 4-D tensor"),
        (torch.zeros(1, 1, 8, 9), _GOOD, ValueError, r"^x: expected the same shape as ref"),
    ],
)
def test_bad_inputs(metric, x, ref, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        metric(x, ref)


@pytest.mark.parametrize("metric", [psnr, ssim])
@pytest.mark.parametrize(
    ("data_range", "exc"),
    [(0.0, ValueError), (-1.0, ValueError), ("1", TypeError), (torch.ones(3), TypeError)],
)
def test_bad_data_range(metric, data_range: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=r"^data_range: expected"):
        metric(_GOOD, _GOOD, data_range=data_range)


def test_ssim_too_small() -> None:
    with pytest.raises(ValueError, match=r"^x: expected height and width >= 7"):
        ssim(torch.zeros(1, 1, 6, 20), torch.zeros(1, 1, 6, 20), data_range=1.0)


# ------------------------------------------------------------------------- segmentation scores
def test_otsu_matches_scikit_image():
    from skimage.filters import threshold_otsu

    from recon.metrics import otsu_threshold

    gen = torch.Generator().manual_seed(0)
    x = torch.cat([0.2 * torch.rand(3, 1, 32, 32, generator=gen),
                   0.5 + 0.3 * torch.rand(3, 1, 32, 32, generator=gen)], dim=-1).double()
    x[1] = x[1] ** 3  # skewed classes
    ours = otsu_threshold(x)
    for i in range(3):
        assert float(ours[i]) == pytest.approx(threshold_otsu(x[i, 0].numpy()), rel=1e-12)
    assert otsu_threshold(torch.full((1, 1, 4, 4), 0.3)).tolist() == pytest.approx([0.3])


def test_mcc_is_the_correlation_of_the_masks():
    from recon.metrics import mcc

    gen = torch.Generator().manual_seed(1)
    ref = torch.rand(4, 1, 16, 16, generator=gen) > 0.6
    pred = ref ^ (torch.rand(4, 1, 16, 16, generator=gen) > 0.85)  # flip about 15% of the pixels
    for i, value in enumerate(mcc(pred, ref).tolist()):
        expected = np.corrcoef(pred[i].flatten().double().numpy(), ref[i].flatten().double().numpy())[0, 1]
        assert value == pytest.approx(expected, rel=1e-12)
    assert mcc(ref, ref).tolist() == [1.0] * 4 and mcc(~ref, ref).tolist() == [-1.0] * 4
    assert mcc(torch.ones_like(ref), ref).tolist() == [0.0] * 4  # one class only: 0, not NaN
    with pytest.raises(ValueError, match=r"pred: expected the same shape as ref"):
        mcc(ref[:, :, :8], ref)
