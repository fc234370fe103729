"""Cartesian MRI forward models: single-coil and multi-coil (SENSE) k-space sampling.

Images are ``(B, 1, H, W)`` complex; k-space is ``(B, coils, H, W)`` complex,
centred (DC at ``(H // 2, W // 2)``, see ``operators.fourier``), with zeros at
unsampled positions. The Fourier transform is orthonormal, so a fully sampled
single-coil operator is unitary and ``A^H`` of the measured data is the
zero-filled reconstruction.

Masks are ``(H, W)`` (shared) or ``(K, H, W)`` with ``K`` = 1 or the batch size
(one mask per item); any nonzero entry counts as sampled. Coil maps are
``(coils, H, W)`` or ``(K, coils, H, W)``, likewise shared or per item.

Real images are accepted by ``forward`` (promoted to complex); k-space given to
``adjoint`` must be complex, since a real array there is almost always a
magnitude image or a lost imaginary part.
"""

from __future__ import annotations

import torch

from operators.base import LinearOperator, conjugate_gradient, per_item
from operators.fourier import fft2c, ifft2c

__all__ = ["CartesianMRI", "MultiCoilMRI"]


def _as_mask(mask) -> torch.Tensor:
    m = torch.as_tensor(mask)
    if m.is_complex():
        raise TypeError("mask: expected a real or boolean sampling mask, got a complex tensor")
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"mask: expected shape (H, W) or (K, H, W), got {tuple(m.shape)}")
    if m.numel() == 0:
        raise ValueError("mask: is empty")
    if m.dtype != torch.bool and not bool(torch.isfinite(m).all()):
        raise ValueError("mask: contains NaN or Inf values")
    return (m != 0).to(torch.float32)


def _per_item(t: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Check that a per-item parameter with leading size K fits a batch of ``batch`` items."""
    if t.shape[0] not in (1, batch):
        raise ValueError(f"x: batch of {batch} items, but {name} has {t.shape[0]} entries "
                         f"(expected 1 or {batch})")
    return t


class _KSpaceOperator(LinearOperator):
    """Shared validation: complex k-space in, per-item masks."""

    native_autograd = True

    def __init__(self, mask, coils: int) -> None:
        m = _as_mask(mask)
        super().__init__((1, *m.shape[-2:]), (coils, *m.shape[-2:]))
        self.register_buffer("mask", m)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.in_shape[-2:])

    def _check(self, x, shape, name):
        super()._check(x, shape, name)
        if name == "y" and not x.is_complex():
            raise TypeError(f"y: {type(self).__name__} expects complex k-space (complex64), got {x.dtype}; "
                            "store k-space as complex numbers, not magnitudes or a real/imaginary axis")

    def _mask_for(self, x: torch.Tensor) -> torch.Tensor:
        m = _per_item(self.mask, x.shape[0], "mask")
        return m[:, None].to(dtype=x.real.dtype, device=x.device)

    @property
    def acceleration(self) -> float:
        """Total over sampled k-space positions (mean over masks)."""
        return float(self.mask[0].numel() / self.mask.sum(dim=(-2, -1)).clamp_min(1).mean())

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, coils={self.out_shape[0]}, acceleration={self.acceleration:.2f}"


class CartesianMRI(_KSpaceOperator):
    r"""Single-coil Cartesian MRI: centred orthonormal 2D FFT, then the sampling mask.

    .. math:: A x = M \odot \mathcal F x, \qquad A^H A = \mathcal F^H M \mathcal F

    Args:
        mask: ``(H, W)`` or ``(K, H, W)`` sampling mask (bool or 0/1), K = 1 or the batch size.

    Shapes:
        ``(B, 1, H, W)`` complex image ``->`` ``(B, 1, H, W)`` complex k-space.

    Example:
        >>> import torch
        >>> mask = torch.zeros(8, 8, dtype=torch.bool); mask[:, ::2] = True
        >>> A = CartesianMRI(mask)
        >>> x = torch.randn(2, 1, 8, 8, dtype=torch.complex64)
        >>> A(x).shape, round(A.norm(), 4), A.acceleration
        (torch.Size([2, 1, 8, 8]), 1.0, 2.0)
    """

    def __init__(self, mask) -> None:
        super().__init__(mask, coils=1)

    def _forward(self, x):
        return self._mask_for(x) * fft2c(x)

    def _adjoint(self, y):
        return ifft2c(self._mask_for(y) * y)

    def normal(self, x):
        self._check(x, self.in_shape, "x")
        return ifft2c(self._mask_for(x) * fft2c(x))

    has_shifted_normal_solve = True

    def solve_shifted_normal(self, b, tau, x0=None):
        r"""``(I + tau A^H A)^{-1} b = F^H (1 + tau M)^{-1} F b`` in closed form (``x0`` unused)."""
        return ifft2c(fft2c(b) / (1 + per_item(tau, b.ndim) * self._mask_for(b)))

    def norm(self, *args, **kwargs) -> float:
        """1 when any position is sampled (a unitary transform followed by a 0/1 mask)."""
        return 1.0 if bool(self.mask.any()) else 0.0


class MultiCoilMRI(_KSpaceOperator):
    r"""Multi-coil Cartesian MRI (SENSE): coil sensitivities, FFT per coil, sampling mask.

    .. math:: (A x)_c = M \odot \mathcal F (S_c x), \qquad A^H y = \sum_c \bar S_c\, \mathcal F^H (M \odot y_c)

    With maps normalised so that ``sum_c |S_c|^2 = 1`` (ESPIRiT), ``A^H A`` is the
    identity for full sampling where the maps are nonzero, and ``||A|| <= 1``.

    Args:
        mask: ``(H, W)`` or ``(K, H, W)`` sampling mask, K = 1 or the batch size.
        coil_maps: ``(coils, H, W)`` or ``(K, coils, H, W)`` complex sensitivities.

    Shapes:
        ``(B, 1, H, W)`` complex image ``->`` ``(B, coils, H, W)`` complex k-space.

    Example:
        >>> import torch
        >>> maps = torch.ones(4, 8, 8, dtype=torch.complex64) / 2     # sum_c |S_c|^2 = 1
        >>> A = MultiCoilMRI(torch.ones(8, 8), maps)
        >>> x = torch.randn(1, 1, 8, 8, dtype=torch.complex64)
        >>> A(x).shape, bool(torch.allclose(A.normal(x), x, atol=1e-6))
        (torch.Size([1, 4, 8, 8]), True)
    """

    def __init__(self, mask, coil_maps) -> None:
        maps = torch.as_tensor(coil_maps)
        if not maps.is_complex():
            raise TypeError(f"coil_maps: expected complex sensitivities, got {maps.dtype}")
        if maps.ndim == 3:
            maps = maps[None]
        if maps.ndim != 4:
            raise ValueError(f"coil_maps: expected shape (coils, H, W) or (K, coils, H, W), got {tuple(maps.shape)}")
        m = _as_mask(mask)
        if tuple(maps.shape[-2:]) != tuple(m.shape[-2:]):
            raise ValueError(f"mask: shape {tuple(m.shape[-2:])} does not match the coil maps' image shape "
                             f"{tuple(maps.shape[-2:])}")
        if not bool(torch.isfinite(maps).all()):
            raise ValueError("coil_maps: contains NaN or Inf values")
        super().__init__(m, coils=maps.shape[1])
        self.register_buffer("coil_maps", maps.to(torch.complex64))

    @property
    def coils(self) -> int:
        return self.out_shape[0]

    def _maps_for(self, x: torch.Tensor) -> torch.Tensor:
        s = _per_item(self.coil_maps, x.shape[0], "coil_maps")
        dtype = torch.complex128 if x.dtype in (torch.float64, torch.complex128) else torch.complex64
        return s.to(dtype=dtype, device=x.device)

    def _forward(self, x):
        return self._mask_for(x) * fft2c(self._maps_for(x) * x)

    def _adjoint(self, y):
        coil_images = ifft2c(self._mask_for(y) * y)
        return (self._maps_for(y).conj() * coil_images).sum(dim=1, keepdim=True)

    #: CG cap and relative tolerance for ``solve_shifted_normal``. ``I + tau A^H A`` has condition
    #: number at most ``1 + tau ||A||^2`` (``||A|| <= 1`` for normalised maps); the solve must be
    #: accurate, since Chambolle-Pock with an inexact prox stops converging (measured: 8 fixed CG
    #: steps made the objective rise on the twix phantom at small lam)
    solve_iterations = 100
    solve_tol = 1e-4
    has_shifted_normal_solve = True

    def solve_shifted_normal(self, b, tau, x0=None):
        """``(I + tau A^H A)^{-1} b`` by conjugate gradients, warm-started at ``x0`` (default ``b``)."""
        t = per_item(tau, b.ndim)
        start = b.clone() if x0 is None else x0.clone()
        return conjugate_gradient(lambda p: p + t * self.normal(p), b, start, self.solve_iterations, self.solve_tol)
