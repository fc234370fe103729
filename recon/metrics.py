"""Batched image-quality metrics in torch: PSNR, SSIM and relative error; Otsu segmentation
and the Matthews correlation coefficient (the HTC2022 challenge's score).

All metrics take ``(B, C, H, W)`` tensors ``x`` (estimate) and ``ref``
(ground truth) of the same shape and return one value per batch item, shape
``(B,)``. They run on any device; SSIM and PSNR are accumulated in float64
(float32 on devices without float64 support) and returned in the floating
dtype of the inputs.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

__all__ = ["psnr", "relative_error", "ssim", "otsu_threshold", "mcc"]

_SSIM_WIN = 7
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _check_pair(x: object, ref: object, names: tuple[str, str] = ("x", "ref")) -> None:
    """Raise unless ``x`` and ``ref`` are 4-D tensors of the same shape (errors use ``names``)."""
    for name, t in zip(names, (x, ref)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name}: expected a 4-D tensor (B, C, H, W), got shape {tuple(t.shape)}"
            )
        if t.is_complex():
            raise TypeError(f"{name}: expected a real tensor, got dtype {t.dtype}")
    if x.shape != ref.shape:  # type: ignore[union-attr]
        raise ValueError(
            f"{names[0]}: expected the same shape as {names[1]} {tuple(ref.shape)}, "  # type: ignore[union-attr]
            f"got {tuple(x.shape)}"  # type: ignore[union-attr]
        )


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for accumulation, except on devices that lack it (MPS)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _out_dtype(x: torch.Tensor, ref: torch.Tensor) -> torch.dtype:
    """Floating result dtype of the inputs (float32 for integer inputs)."""
    dtype = torch.promote_types(x.dtype, ref.dtype)
    return dtype if dtype.is_floating_point else torch.float32


def _data_range(data_range: object, ref: torch.Tensor) -> torch.Tensor:
    """Per-item data range, shape ``(B,)``, in ``ref``'s dtype and device.

    ``None`` means ``ref.max() - ref.min()`` for each batch item.
    """
    batch = ref.shape[0]
    if data_range is None:
        flat = ref.reshape(batch, -1)
        return flat.amax(dim=1) - flat.amin(dim=1)
    if isinstance(data_range, numbers.Real) and not isinstance(data_range, bool):
        if not float(data_range) > 0.0:
            raise ValueError(f"data_range: expected a positive number, got {data_range!r}")
        return torch.full((batch,), float(data_range), dtype=ref.dtype, device=ref.device)
    if isinstance(data_range, torch.Tensor) and data_range.numel() in (1, batch):
        if not bool((data_range > 0).all()):
            raise ValueError("data_range: expected positive values, got a non-positive entry")
        return data_range.reshape(-1).to(ref).expand(batch)
    raise TypeError(
        f"data_range: expected None, a positive number or a tensor with 1 or {batch} "
        f"elements, got {type(data_range).__name__}"
    )


def psnr(
    x: torch.Tensor, ref: torch.Tensor, data_range: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per batch item.

    ``10 * log10(data_range**2 / mse)`` with the MSE taken over ``C, H, W``;
    matches :func:`skimage.metrics.peak_signal_noise_ratio`. Identical
    images give ``inf``.

    Args:
        x: Estimate, shape ``(B, C, H, W)``.
        ref: Reference, same shape as ``x``.
        data_range: Peak-to-peak range of the data: a number, a tensor of
            ``B`` values, or ``None`` for ``ref.max() - ref.min()`` per item.

    Returns:
        Tensor of shape ``(B,)``.

    Example:
        >>> ref = torch.zeros(1, 1, 8, 8); ref[..., 0, 0] = 1.0
        >>> round(float(psnr(ref + 0.1, ref)[0]), 3)
        20.0
    """
    _check_pair(x, ref)
    work = _work_dtype(x)
    xw, rw = x.to(work), ref.to(work)
    rng = _data_range(data_range, rw)
    mse = (xw - rw).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(rng.pow(2) / mse)).to(_out_dtype(x, ref))


def _ssim_map(xw: torch.Tensor, rw: torch.Tensor, rng: torch.Tensor) -> torch.Tensor:
    """Valid-region SSIM map, shape ``(B, C, H - 6, W - 6)``."""
    n_px = _SSIM_WIN**2
    cov_norm = n_px / (n_px - 1.0)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, _SSIM_WIN, stride=1)

    ux, uy = mean(xw), mean(rw)
    vx = cov_norm * (mean(xw * xw) - ux * ux)
    vy = cov_norm * (mean(rw * rw) - uy * uy)
    vxy = cov_norm * (mean(xw * rw) - ux * uy)
    c1 = (_SSIM_K1 * rng).pow(2).view(-1, 1, 1, 1)
    c2 = (_SSIM_K2 * rng).pow(2).view(-1, 1, 1, 1)
    num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return num / den


def ssim(
    x: torch.Tensor, ref: torch.Tensor, data_range: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004), per batch item.

    Reproduces the defaults of :func:`skimage.metrics.structural_similarity`:
    a 7x7 uniform window, ``K1 = 0.01``, ``K2 = 0.03``, sample covariance,
    and the mean over the region not affected by the image border (3 pixels
    cropped on each side). Channels are averaged, like scikit-image with
    ``channel_axis``.

    Args:
        x: Estimate, shape ``(B, C, H, W)`` with ``H, W >= 7``.
        ref: Reference, same shape as ``x``.
        data_range: Peak-to-peak range of the data: a number, a tensor of
            ``B`` values, or ``None`` for ``ref.max() - ref.min()`` per item.

    Returns:
        Tensor of shape ``(B,)`` with values in ``[-1, 1]``.

    Example:
        >>> ref = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> ssim(ref, ref, data_range=1.0)
        tensor([1., 1.])
    """
    _check_pair(x, ref)
    if min(x.shape[-2:]) < _SSIM_WIN:
        raise ValueError(
            f"x: expected height and width >= {_SSIM_WIN} for the SSIM window, "
            f"got {tuple(x.shape[-2:])}"
        )
    work = _work_dtype(x)
    xw, rw = x.to(work), ref.to(work)
    smap = _ssim_map(xw, rw, _data_range(data_range, rw))
    return smap.flatten(1).mean(dim=1).to(_out_dtype(x, ref))


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Relative L2 error ``||x - ref|| / ||ref||``, per batch item.

    Norms are Euclidean over ``C, H, W``. A zero reference gives ``inf``
    (or ``nan`` if ``x`` equals it).

    Args:
        x: Estimate, shape ``(B, C, H, W)``.
        ref: Reference, same shape as ``x``.

    Returns:
        Tensor of shape ``(B,)``.

    Example:
        >>> ref = torch.ones(2, 1, 4, 4)
        >>> relative_error(1.5 * ref, ref)
        tensor([0.5000, 0.5000])
    """
    _check_pair(x, ref)
    work = _work_dtype(x)
    xw, rw = x.to(work), ref.to(work)
    err = torch.linalg.vector_norm((xw - rw).flatten(1), dim=1)
    return (err / torch.linalg.vector_norm(rw.flatten(1), dim=1)).to(_out_dtype(x, ref))


def otsu_threshold(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold per batch item: the histogram split that maximises the between-class variance.

    The histogram has ``bins`` equal bins over the item's ``[min, max]``; the threshold is the centre
    of the last bin of the lower class (as ``skimage.filters.threshold_otsu``), so ``x > t`` is the
    upper class. A constant item returns its value.

    Args:
        x: Images, shape ``(B, C, H, W)`` (real).
        bins: Histogram bins (>= 2).

    Returns:
        Tensor of shape ``(B,)``.

    Example:
        >>> x = torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0]).reshape(1, 1, 1, 5)
        >>> bool(0.2 <= float(otsu_threshold(x)[0]) < 0.9)
        True
    """
    if x.dim() != 4 or x.is_complex():
        raise ValueError(f"x: expected a real (B, C, H, W) tensor, got shape {tuple(x.shape)} and dtype {x.dtype}")
    if not (isinstance(bins, numbers.Integral) and bins >= 2):
        raise ValueError(f"bins: expected an integer >= 2, got {bins!r}")
    out = []
    for item in x.detach().flatten(1).double().cpu():
        lo, hi = float(item.min()), float(item.max())
        if hi <= lo:
            out.append(lo)
            continue
        counts = torch.histc(item, bins=bins, min=lo, max=hi)
        centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
        w0 = torch.cumsum(counts, 0)[:-1]
        w1 = counts.sum() - w0
        m0 = torch.cumsum(counts * centres, 0)[:-1] / w0.clamp_min(1)
        m1 = (torch.sum(counts * centres) - torch.cumsum(counts * centres, 0)[:-1]) / w1.clamp_min(1)
        between = w0 * w1 * (m0 - m1) ** 2
        out.append(float(centres[int(torch.argmax(between))]))
    return torch.tensor(out, dtype=x.dtype if x.is_floating_point() else torch.float64)


def mcc(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    r"""Matthews correlation coefficient of two binary segmentations, per batch item.

    .. math:: \frac{TP\,TN - FP\,FN}{\sqrt{(TP + FP)(TP + FN)(TN + FP)(TN + FN)}}

    1 for identical masks, 0 for no better than chance, -1 for complementary ones; 0 when a
    factor of the denominator is 0 (a mask that is all one class).

    Args:
        pred: Segmentation, ``(B, C, H, W)``, boolean or 0/1.
        ref: Reference segmentation, the same shape.

    Returns:
        float64 tensor of shape ``(B,)``.

    Example:
        >>> ref = torch.tensor([[1, 1, 0, 0]]).reshape(1, 1, 1, 4).bool()
        >>> mcc(ref, ref).tolist(), mcc(~ref, ref).tolist()
        ([1.0], [-1.0])
    """
    _check_pair(pred, ref, ("pred", "ref"))
    p, r = pred.flatten(1).bool(), ref.flatten(1).bool()
    tp, tn = (p & r).sum(1).double(), (~p & ~r).sum(1).double()
    fp, fn = (p & ~r).sum(1).double(), (~p & r).sum(1).double()
    den = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)).sqrt()
    return torch.where(den > 0, (tp * tn - fp * fn) / den.clamp_min(1e-300), torch.zeros_like(den))
