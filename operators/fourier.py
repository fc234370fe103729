"""Centred, orthonormal 2D Fourier transforms on the last two axes.

k-space is stored centred: the DC sample sits at index ``(H // 2, W // 2)``, as
scanners and fastMRI store it, and the image centre sits at the same index.
``fft2c`` is unitary (``norm="ortho"``), so ``ifft2c`` is its exact adjoint and
inverse, and ``||fft2c(x)|| = ||x||``.
"""

from __future__ import annotations

import torch

__all__ = ["fft2c", "ifft2c"]

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    r"""Centred orthonormal 2D FFT over the last two axes (real input is promoted to complex).

    .. math:: \hat x = \mathrm{fftshift}\big(\mathcal F_{\rm ortho}(\mathrm{ifftshift}(x))\big)

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 4, 4); x[0, 2, 2] = 1.0      # a point at the image centre
        >>> fft2c(x).abs().unique()                          # flat spectrum, energy kept
        tensor([0.2500])
    """
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse (and adjoint) of ``fft2c``."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_DIMS), norm="ortho"), dim=_DIMS)
