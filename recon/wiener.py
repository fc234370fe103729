"""Wiener deconvolution: the closed-form linear deblurring baseline."""

from __future__ import annotations

import torch

from operators.blur import Blur
from recon.reconstruct import estimate_noise_std

__all__ = ["wiener", "estimate_nsr"]


def estimate_nsr(y: torch.Tensor, noise_std: float | torch.Tensor | None = None) -> torch.Tensor:
    r"""Per-item noise-to-signal power ratio of a blurred image ``(B, C, H, W)``, shape ``(B,)``.

    .. math:: \mathrm{nsr} = \sigma^2 / \max(\overline{y^2} - \sigma^2,\ \epsilon)

    ``sigma`` is ``noise_std`` (a number or ``B`` values) or, when None,
    ``recon.reconstruct.estimate_noise_std(y)`` (robust second differences along rows);
    ``mean(y^2)`` is the power of the data (DC included) and ``epsilon`` the dtype's
    smallest normal number. This treats signal and noise as white, so it is a
    rule of thumb, not an optimal choice (see docs/deblur_study.py).

    Example:
        >>> import torch
        >>> estimate_nsr(torch.ones(1, 1, 8, 8), noise_std=0.5)
        tensor([0.3333])
    """
    _check_image(y, "y")
    sigma = estimate_noise_std(y) if noise_std is None else noise_std
    sigma = torch.as_tensor(sigma, dtype=y.dtype, device=y.device).reshape(-1)
    if sigma.numel() not in (1, y.shape[0]) or not bool((sigma >= 0).all()):
        raise ValueError(f"noise_std: expected a number >= 0 or {y.shape[0]} of them, got {noise_std!r}")
    power = y.square().flatten(1).mean(1)
    return sigma.square() / (power - sigma.square()).clamp_min(torch.finfo(y.dtype).tiny)


def wiener(A: Blur, y: torch.Tensor, nsr: float | torch.Tensor | None = None,
           noise_std: float | torch.Tensor | None = None) -> torch.Tensor:
    r"""Wiener deconvolution of ``y = A x + noise`` with a constant noise-to-signal ratio.

    .. math:: \hat X = \overline{\hat K}\, \hat Y / (|\hat K|^2 + \mathrm{nsr})

    Computed with ``rfft2`` on the circular kernel (``A.transfer_function``). For
    ``boundary="circular"`` this is the exact minimiser of
    ``||A x - y||^2 + nsr ||x||^2``; for ``boundary="zero"`` it uses the circular
    approximation of ``A`` (edges are treated as periodic). Frequencies where the
    denominator is 0 (``nsr = 0`` and ``K^ = 0``) are set to 0 (pseudo-inverse).

    Args:
        A: the ``Blur`` operator (shared or per-item kernels).
        y: blurred, noisy images ``(B, *A.out_shape)``.
        nsr: noise-to-signal power ratio, ``>= 0``: a number or ``B`` values. None:
            ``estimate_nsr(y, noise_std)``.
        noise_std: the noise level used to estimate ``nsr`` when it is None (None:
            estimated from ``y``).

    Returns:
        The deblurred images, same shape and dtype as ``y``.

    Example:
        >>> import torch
        >>> from operators.blur import Blur, gaussian_kernel
        >>> A = Blur(gaussian_kernel(1.0), (16, 16))
        >>> x = torch.rand(1, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> bool((wiener(A, A(x), nsr=1e-12) - x).abs().max() < 1e-6)
        True
    """
    if not isinstance(A, Blur):
        raise TypeError(f"A: expected a Blur operator, got {type(A).__name__}")
    _check_image(y, "y")
    if tuple(y.shape[1:]) != tuple(A.out_shape):
        raise ValueError(f"y: expected shape (B, {', '.join(map(str, A.out_shape))}) to match A, "
                         f"got {tuple(y.shape)}")
    A.check_batch(y, "y")
    ratio = estimate_nsr(y, noise_std) if nsr is None else _check_nsr(nsr, y)
    transfer = A.transfer_function(y)
    denominator = transfer.abs().square() + ratio.reshape(-1, 1, 1, 1)
    gain = torch.where(denominator > 0, transfer.conj() / denominator.clamp_min(torch.finfo(y.dtype).tiny),
                       torch.zeros_like(transfer))
    return torch.fft.irfft2(gain * torch.fft.rfft2(y), s=A.image_shape)


def _check_image(y, name: str) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 4 or not y.is_floating_point():
        raise ValueError(f"{name}: expected a real floating tensor (B, C, H, W), got shape "
                         f"{tuple(y.shape)} and dtype {y.dtype}")


def _check_nsr(nsr, y: torch.Tensor) -> torch.Tensor:
    ratio = torch.as_tensor(nsr, dtype=y.dtype, device=y.device).reshape(-1)
    if ratio.numel() not in (1, y.shape[0]):
        raise ValueError(f"nsr: expected a number or {y.shape[0]} values (one per item), got {ratio.numel()}")
    if not bool(torch.isfinite(ratio).all()) or not bool((ratio >= 0).all()):
        raise ValueError(f"nsr: expected finite values >= 0, got {nsr!r}")
    return ratio
