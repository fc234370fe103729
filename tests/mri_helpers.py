"""Synthetic multi-coil MRI for the app tests (a head phantom seen by smooth coils, with noise) and an
independent numpy objective of anisotropic TV."""

from __future__ import annotations

import numpy as np
import torch

from data.phantoms import shepp_logan
from operators.fourier import fft2c


def coil_head(size: int, coils: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth, normalised coil sensitivities ``(coils, H, W)`` (at most 4) and a Shepp-Logan head
    ``(H, W)`` with no exactly-zero region inside (ESPIRiT crops those)."""
    yy, xx = np.mgrid[:size, :size] / size
    centres = [(0, 0), (0, 1), (1, 0), (1, 1)][:coils]
    maps = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5) * np.exp(2j * (yy + c * xx))
                     for c, (cy, cx) in enumerate(centres)])
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0))
    phantom = shepp_logan(size)[0, 0].numpy()
    return maps, phantom + 0.1 * (phantom > 0)


def noisy_kspace(coil_images: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Centred k-space of ``coil_images`` plus complex Gaussian noise of std ``noise``."""
    k = fft2c(torch.as_tensor(coil_images)).numpy()
    rng = np.random.default_rng(seed)
    return k + noise * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)) / np.sqrt(2)


def tv_objective(x: np.ndarray, y: np.ndarray, maps: np.ndarray, mask: np.ndarray, lam: float, wrap: bool) -> float:
    """Anisotropic TV's objective ``1/2 ||P F S x - y||^2 + lam sum |D x|`` for one image ``(H, W)`` with
    coil maps ``(C, H, W)``, in float64 numpy (independent of recon's operators); ``D`` forward
    differences with a zero last row (Neumann, recon's) or wrapping around (``wrap``, SigPy's)."""
    x, y, maps = x.astype(np.complex128), y.astype(np.complex128), maps.astype(np.complex128)
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(maps * x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    data = 0.5 * float(np.sum(np.abs(mask * k - y) ** 2))
    tv = 0.0
    for axis in (-2, -1):
        if wrap:
            d = x - np.roll(x, 1, axis=axis)
        else:
            d = np.diff(x, axis=axis)  # the zero last difference adds nothing
        tv += float(np.sum(np.abs(d)))
    return data + lam * tv
