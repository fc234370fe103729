"""Coil sensitivities: ESPIRiT estimation and root-sum-of-squares combination.

k-space follows the project's convention (:mod:`operators.fourier`): ``(B, coils, H, W)``
complex, centred (DC at ``(H // 2, W // 2)``), with ``y_c = fft2c(S_c x)``. A centred block of
``n`` rows starts at ``H // 2 - n // 2``, the same rule as :mod:`operators.masks`.

ESPIRiT follows Uecker et al., "ESPIRiT -- an eigenvalue approach to autocalibrating parallel
MRI", MRM 71:990 (2014): the k-space kernels spanning the row space of the calibration matrix
define, at each pixel ``x``, a Hermitian ``C x C`` matrix ``G(x)`` whose eigenvector with
eigenvalue 1 is the vector of coil sensitivities.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from operators.fourier import ifft2c

__all__ = ["calibration_region", "espirit_maps", "map_coverage", "rss"]

#: Largest calibration side used when ``calib_size`` is not given (SigPy's and BART's default).
AUTO_CALIB_MAX = 24


def rss(x: torch.Tensor, dim: int = 1, keepdim: bool = False) -> torch.Tensor:
    r"""Root-sum-of-squares over the coil axis; the result is real.

    .. math:: \mathrm{rss}(x) = \Big(\sum_c |x_c|^2\Big)^{1/2}

    Args:
        x: Real or complex tensor, coils along ``dim`` (``(B, coils, H, W)`` by default).
        dim: The coil axis.
        keepdim: Keep the coil axis with size 1 (``(B, 1, H, W)``, an image batch) instead of
            dropping it (``(B, H, W)``).

    Returns:
        Real tensor (``float32`` for ``complex64`` input) without, or with a size-1, ``dim``.

    Example:
        >>> x = torch.tensor([[[[3 + 0j]], [[0 + 4j]]]])           # (1, 2, 1, 1)
        >>> rss(x), rss(x, keepdim=True).shape
        (tensor([[[5.]]]), torch.Size([1, 1, 1, 1]))
    """
    return torch.linalg.vector_norm(x, ord=2, dim=dim, keepdim=keepdim)


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------
def _check_kspace(kspace: object) -> torch.Tensor:
    """Return k-space as ``(B, coils, H, W)``."""
    if not isinstance(kspace, torch.Tensor):
        raise TypeError(f"kspace: expected a torch.Tensor, got {type(kspace).__name__}")
    if not kspace.is_complex():
        raise TypeError(
            f"kspace: expected complex k-space of shape (coils, H, W) or (B, coils, H, W), got {kspace.dtype}"
        )
    if kspace.ndim not in (3, 4):
        raise ValueError(
            f"kspace: expected shape (coils, H, W) or (B, coils, H, W), got {kspace.ndim} dims {tuple(kspace.shape)}"
        )
    return kspace if kspace.ndim == 4 else kspace[None]


def _check_pair(name: str, value: object, limit: tuple[int, int]) -> tuple[int, int]:
    ok = isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in value
    )
    if not ok:
        raise ValueError(f"{name}: expected a pair of positive integers (rows, cols), got {value!r}")
    if value[0] > limit[0] or value[1] > limit[1]:
        raise ValueError(f"{name}: expected at most the k-space size {limit}, got {tuple(value)}")
    return int(value[0]), int(value[1])


def _check_fraction(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
        raise ValueError(f"{name}: expected a real number in [{low}, {high}], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------
# calibration region
# --------------------------------------------------------------------------
def calibration_region(kspace: torch.Tensor) -> tuple[int, int]:
    r"""Size of the largest fully sampled centred rectangle of the k-space.

    A point counts as sampled when any coil is nonzero there; with a batch, it must be sampled in
    every item. Among the centred rectangles (``rows x cols`` starting at
    ``(H // 2 - rows // 2, W // 2 - cols // 2)``) that are fully sampled, the one with the largest
    area is returned (ties: more rows).

    .. math:: (h, w) = \arg\max \{h w : M[\mathrm{box}(h, w)] \equiv 1\}

    Args:
        kspace: Complex k-space ``(coils, H, W)`` or ``(B, coils, H, W)``.

    Returns:
        ``(rows, cols)`` of the calibration rectangle.

    Example:
        >>> k = torch.zeros(2, 32, 32, dtype=torch.complex64)
        >>> k[:, 10:22, 12:20] = 1.0                     # 12 x 8 block centred on (16, 16)
        >>> k[:, :, 16] = 1.0                            # plus one full line through the centre
        >>> calibration_region(k)
        (12, 8)
    """
    kspace = _check_kspace(kspace)
    H, W = kspace.shape[-2:]
    sampled = (kspace != 0).any(dim=1).all(dim=0).to(torch.int64)
    if not bool(sampled[H // 2, W // 2]):
        raise ValueError(
            f"kspace: expected a fully sampled centre, but the DC point ({H // 2}, {W // 2}) is not sampled"
        )
    table = torch.zeros(H + 1, W + 1, dtype=torch.int64, device=sampled.device)
    table[1:, 1:] = sampled.cumsum(0).cumsum(1)  # summed-area table
    h = torch.arange(1, H + 1, device=sampled.device)[:, None]
    w = torch.arange(1, W + 1, device=sampled.device)[None, :]
    top, left = H // 2 - h // 2, W // 2 - w // 2
    inside = table[top + h, left + w] - table[top, left + w] - table[top + h, left] + table[top, left]
    area = torch.where(inside == h * w, h * w, 0)
    best = int(torch.argmax(area.flip(0).flatten()))  # flip: ties go to more rows
    return H - best // W, best % W + 1


# --------------------------------------------------------------------------
# ESPIRiT
# --------------------------------------------------------------------------
def _kernel_projector(calib: torch.Tensor, kernel_size: int, threshold: float) -> torch.Tensor:
    """Projector ``P = sum_n r_n r_n^H`` onto the row space of the calibration matrix.

    ``calib`` is ``(C, h, w)``; each row of the calibration matrix is one ``k x k`` window of all
    coils, flattened as ``(C, k, k)``. The row space is spanned by the right singular vectors
    with ``sigma >= threshold * sigma_max``; they come from the eigen-decomposition of the
    Gram matrix ``A^H A`` (``Ck^2 x Ck^2``), which stays small however big the region is.
    """
    k = kernel_size
    windows = calib.to(torch.complex128).unfold(1, k, 1).unfold(2, k, 1)  # (C, h-k+1, w-k+1, k, k)
    A = windows.permute(1, 2, 0, 3, 4).reshape(-1, calib.shape[0] * k * k)
    evals, evecs = torch.linalg.eigh(A.mH @ A)  # ascending; evals = sigma^2
    keep = evals >= threshold**2 * evals[-1]
    V = evecs[:, keep]  # columns v_n; rows of A lie in span{conj(v_n)}
    return (V @ V.mH).conj()


def _image_space_matrices(P: torch.Tensor, C: int, k: int, shape: tuple[int, int]) -> torch.Tensor:
    r"""Per-pixel ESPIRiT matrices ``G(x)``, ``(H, W, C, C)``.

    With kernels ``r_n`` (``(C, k, k)``), ``G_{cc'}(x) = k^{-2} sum_n R_{nc}(x) conj(R_{nc'}(x))``
    and ``R_{nc}(x) = sum_d r_n[c, d] e^{+2 pi i d x / N}``. Summing over ``n`` first gives
    ``G_{cc'}(x) = k^{-2} sum_delta K_{cc'}[delta] e^{+2 pi i delta x / N}`` where
    ``K_{cc'}[delta] = sum_{d - d' = delta} P[(c, d), (c', d')]`` is a ``(2k - 1)^2`` correlation,
    so only ``C^2`` inverse FFTs of the image size are needed.
    """
    H, W = shape
    P6 = P.reshape(C, k, k, C, k, k).permute(0, 3, 1, 2, 4, 5)  # (c, c', dy, dx, dy', dx')
    K = P.new_zeros(C, C, 2 * k - 1, 2 * k - 1)
    for a in range(k):
        for b in range(k):
            K[:, :, k - 1 - a : 2 * k - 1 - a, k - 1 - b : 2 * k - 1 - b] += P6[:, :, :, :, a, b]
    grid = P.new_zeros(C, C, H, W, dtype=torch.complex64)
    grid[:, :, H // 2 - k + 1 : H // 2 + k, W // 2 - k + 1 : W // 2 + k] = K.to(torch.complex64)
    # sqrt(HW) undoes the orthonormal scaling of ifft2c; k^-2 makes the top eigenvalue 1
    G = ifft2c(grid) * ((H * W) ** 0.5 / k**2)
    return G.permute(2, 3, 0, 1)


def _top_eigenvectors(G: torch.Tensor, crop: float) -> torch.Tensor:
    """Top eigenvector per pixel, phase relative to coil 0, zero where the eigenvalue < crop."""
    G = 0.5 * (G + G.mH)  # exactly Hermitian for eigh
    evals, evecs = torch.linalg.eigh(G)
    maps, top = evecs[..., -1], evals[..., -1]  # (H, W, C), (H, W)
    ref = maps[..., :1]
    phase = torch.where(ref.abs() > 0, ref.conj() / ref.abs().clamp_min(1e-30), torch.ones_like(ref))
    maps = maps * phase * (top >= crop)[..., None]
    return maps.permute(2, 0, 1)


def espirit_maps(
    kspace: torch.Tensor,
    calib_size: tuple[int, int] | None = None,
    kernel_size: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
) -> torch.Tensor:
    r"""ESPIRiT coil sensitivity maps (Uecker et al. 2014), one set per batch item.

    Steps, per item: take the centred ``calib_size`` block of all coils; build the calibration
    matrix whose rows are all ``kernel_size x kernel_size`` windows (all coils); keep the right
    singular vectors with ``sigma >= threshold * sigma_max``; turn the projector onto their span
    into the per-pixel ``C x C`` matrices ``G(x)`` on the full image grid (centred, orthonormal
    FFT convention of :func:`operators.fourier.ifft2c`, rescaled so the top eigenvalue is 1 where
    the model holds); take the top eigenvector of each ``G(x)`` (batched ``torch.linalg.eigh``).
    Maps are zeroed where the top eigenvalue is below ``crop``; elsewhere ``sum_c |S_c|^2 = 1``.
    The per-pixel phase ambiguity is fixed by making coil 0 real and non-negative, which is smooth
    wherever coil 0 is not vanishing.

    .. math:: G(x)\, S(x) = S(x), \qquad \sum_c |S_c(x)|^2 = 1

    Args:
        kspace: Complex k-space ``(coils, H, W)`` or ``(B, coils, H, W)``; ``y_c = fft2c(S_c x)``.
        calib_size: ``(rows, cols)`` of the centred calibration block; ``None`` uses
            :func:`calibration_region`, capped at :data:`AUTO_CALIB_MAX` per side: beyond the
            low frequencies the windows are noise-dominated and, with a relative ``threshold``,
            add noise kernels (on fully sampled phantom data the whole k-space as calibration
            drops the map/coil-image agreement from 0.998 to 0.73).
        kernel_size: Side of the square k-space kernel.
        threshold: Relative singular-value threshold in ``[0, 1]``.
        crop: Eigenvalue threshold in ``[0, 1]`` below which maps are set to zero.

    Returns:
        ``(B, coils, H, W)`` complex64 maps on the input's device.

    Example:
        >>> from operators.fourier import fft2c
        >>> yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
        >>> S = torch.stack([1 + 0.5 * xx, (1 - 0.5 * xx) * torch.exp(1j * yy)]).to(torch.complex64)
        >>> S = S / rss(S, dim=0)                              # 2 smooth coils, sum |S|^2 = 1
        >>> maps = espirit_maps(fft2c(S * (xx**2 + yy**2 < 0.8)), calib_size=(16, 16))
        >>> inner = (maps[0].conj() * S).sum(0).abs()[8:24, 8:24]  # |<S_est, S>| inside the disc
        >>> maps.shape, bool(inner.min() > 0.99)
        (torch.Size([1, 2, 32, 32]), True)
    """
    kspace = _check_kspace(kspace)
    B, C, H, W = kspace.shape
    k = kernel_size
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"kernel_size: expected a positive integer, got {k!r}")
    if 2 * k - 1 > min(H, W):
        raise ValueError(
            f"kernel_size: expected 2 * kernel_size - 1 <= min(H, W) = {min(H, W)}, got kernel_size {k}"
        )
    threshold = _check_fraction("threshold", threshold, 0.0, 1.0)
    crop = _check_fraction("crop", crop, 0.0, 1.0)
    if calib_size is None:
        calib, origin = tuple(min(n, AUTO_CALIB_MAX) for n in calibration_region(kspace)), "detected"
    else:
        calib, origin = _check_pair("calib_size", calib_size, (H, W)), "given"
    if min(calib) < k:
        raise ValueError(
            f"calib_size: expected a calibration region of at least kernel_size = {k} per side, "
            f"got {calib} ({origin})"
        )
    top, left = H // 2 - calib[0] // 2, W // 2 - calib[1] // 2
    maps = []
    for item in kspace:
        P = _kernel_projector(item[:, top : top + calib[0], left : left + calib[1]], k, threshold)
        maps.append(_top_eigenvectors(_image_space_matrices(P, C, k, (H, W)), crop))
    return torch.stack(maps).to(torch.complex64)


def map_coverage(kspace: torch.Tensor, maps: torch.Tensor, level: float = 0.5) -> torch.Tensor:
    r"""The share of the object where the coil maps are nonzero, per item ``(B,)``.

    The object is where the root-sum-of-squares image of the calibration region alone (a low-pass,
    alias-free image; :func:`calibration_region`) exceeds ``level`` times its 99th percentile: a
    level of a half keeps to the inside of the object, where a narrow calibration region blurs its
    edges outwards (at 0.2 a simulated 64 x 5 region counted 9% of blur as uncovered object). ESPIRiT
    zeroes its maps where the calibration data do not support a sensitivity model (``crop``): a
    calibration region too small for the coils leaves holes inside the object, where a SENSE
    reconstruction is then blank. A coverage well below 1 says to sample a larger centre.

    Example:
        >>> from operators.fourier import fft2c
        >>> yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
        >>> disc = (xx ** 2 + yy ** 2 < 0.6).to(torch.complex64)
        >>> S = torch.stack([1 + 0.5 * xx, 1 - 0.5 * xx]).to(torch.complex64)
        >>> S = S / rss(S, dim=0)
        >>> k = fft2c(S * disc)
        >>> round(float(map_coverage(k, S[None])[0]), 2), round(float(map_coverage(k, S[None] * (xx > 0))[0]), 1)
        (1.0, 0.5)
    """
    kspace = _check_kspace(kspace)
    H, W = kspace.shape[-2:]
    rows, cols = calibration_region(kspace)
    box = torch.zeros_like(kspace)
    top, left = H // 2 - rows // 2, W // 2 - cols // 2
    box[..., top : top + rows, left : left + cols] = kspace[..., top : top + rows, left : left + cols]
    image = rss(ifft2c(box), dim=1)
    flat = image.flatten(1)
    obj = flat > level * torch.quantile(flat.float(), 0.99, dim=1, keepdim=True)
    covered = (rss(maps.to(kspace.device), dim=1).flatten(1) > 0) & obj
    return covered.sum(1) / obj.sum(1).clamp_min(1)

