"""Convolution (blur) with a shared or per-item kernel, and kernel generators.

The kernel's centre is the sample at index ``(kh // 2, kw // 2)``; a kernel
that is 1 there and 0 elsewhere is the identity. For odd and even sizes alike
this is the convention of ``scipy.ndimage.convolve`` with its default origin
(``scipy.signal.convolve2d(mode="same")`` agrees for odd sizes only: for even
sizes it puts the centre at ``(kh - 1) // 2``).

The generators return float64 numpy arrays normalised to sum 1. Angles follow
the project's image convention: x points right (columns), y points up (row 0
is the top), and angles are counter-clockwise from +x.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from operators.base import LinearOperator, per_item

__all__ = ["Blur", "gaussian_kernel", "box_kernel", "motion_kernel"]

BOUNDARIES = ("circular", "zero")
_SUPERSAMPLING = 16  # sub-pixels per pixel side when rasterising a motion segment


class Blur(LinearOperator):
    r"""2D convolution of ``(B, C, H, W)`` images with a real kernel, output the same size.

    .. math:: (A x)[i, j] = \sum_{m, n} k[m, n]\, x[i - m + c_h,\, j - n + c_w],
              \quad (c_h, c_w) = (k_h // 2, k_w // 2)

    ``boundary="circular"`` wraps indices around (periodic convolution by FFT, like
    ``scipy.ndimage.convolve(mode="wrap")``); ``"zero"`` treats pixels outside the
    image as 0 (like ``scipy.ndimage.convolve(mode="constant")``). The adjoint is the
    correlation with the same kernel (exact, edges included). All channels share
    the kernel of their batch item.

    Args:
        kernel: real array-like or tensor ``(kh, kw)`` (shared), or ``(K, kh, kw)`` with
            ``K = 1`` or ``K = B`` (one kernel per batch item). Centre at ``(kh//2, kw//2)``.
        image_shape: ``(H, W)``; the kernel may not be larger than the image.
        boundary: ``"circular"`` or ``"zero"``.
        channels: ``C``, the number of channels of each item.

    Shapes:
        ``(B, C, H, W) -> (B, C, H, W)``.

    Example:
        >>> import torch
        >>> A = Blur([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], (4, 4))
        >>> x = torch.zeros(1, 1, 4, 4); x[0, 0, 1, 1] = 1.0
        >>> A(x)[0, 0, 1]           # the impulse moved one pixel right
        tensor([0., 0., 1., 0.])
    """

    native_autograd = True

    def __init__(self, kernel, image_shape: Sequence[int], boundary: str = "circular",
                 channels: int = 1) -> None:
        image_shape = _check_image_shape(image_shape)
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary: expected 'circular' or 'zero', got {boundary!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels: expected a positive integer, got {channels!r}")
        super().__init__((channels, *image_shape), (channels, *image_shape))
        self.image_shape, self.boundary = image_shape, boundary
        self.register_buffer("kernel", _check_kernel(kernel, image_shape))

    def set_kernel(self, kernel) -> None:
        """Replace the kernel (same rules as the constructor); resets the cached norm."""
        self.kernel = _check_kernel(kernel, self.image_shape).to(self.kernel.device)
        self._norm = None

    @property
    def kernel_count(self) -> int:
        """``K``: 1 for a shared kernel, else the batch size the operator accepts."""
        return self.kernel.shape[0]

    # -- application ------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self._kernel_for(x, "x")
        if self.boundary == "circular":
            return self._fourier(x, self._transfer(k))
        return _conv_same(x, k, adjoint=False)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        k = self._kernel_for(y, "y")
        if self.boundary == "circular":
            return self._fourier(y, self._transfer(k).conj())
        return _conv_same(y, k, adjoint=True)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x``; one FFT pair with ``|K^|^2`` for the circular boundary."""
        if self.boundary != "circular":
            return super().normal(x)
        self._check(x, self.in_shape, "x")
        return self._fourier(x, self._transfer(self._kernel_for(x, "x")).abs().square())

    @property
    def has_shifted_normal_solve(self) -> bool:
        """Closed form for the circular boundary (the blur is diagonal in Fourier)."""
        return self.boundary == "circular"

    def solve_shifted_normal(self, b: torch.Tensor, tau, x0=None) -> torch.Tensor:
        r"""``(I + tau A^T A)^{-1} b = F^{-1} (F b / (1 + tau |K^|^2))``, circular boundary only
        (``x0``, a starting guess for iterative solvers, is unused)."""
        if self.boundary != "circular":
            raise NotImplementedError("Blur.solve_shifted_normal: no closed form for the zero boundary")
        tau = per_item(tau, b.ndim)
        power = self._transfer(self._kernel_for(b, "b")).abs().square()
        return torch.fft.irfft2(torch.fft.rfft2(b) / (1 + tau * power), s=self.image_shape)

    def transfer_function(self, like: torch.Tensor) -> torch.Tensor:
        r"""The circular kernel's ``rfft2``, shape ``(K, 1, H, W // 2 + 1)``, complex.

        ``like`` supplies dtype and device. It is ``A``'s exact eigenvalues for the
        circular boundary and the circular approximation for ``"zero"``.
        """
        return self._transfer(self.kernel.to(dtype=like.real.dtype, device=like.device))

    def _transfer(self, k: torch.Tensor) -> torch.Tensor:
        kh, kw = k.shape[-2:]
        padded = F.pad(k, (0, self.image_shape[1] - kw, 0, self.image_shape[0] - kh))
        centred = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
        return torch.fft.rfft2(centred)[:, None]

    def _fourier(self, x: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(transfer * torch.fft.rfft2(x), s=self.image_shape)

    def _kernel_for(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The kernel in ``x``'s dtype and device, after checking ``K`` against ``x``'s batch."""
        self.check_batch(x, name)
        return self.kernel.to(dtype=x.dtype, device=x.device)

    def check_batch(self, x: torch.Tensor, name: str) -> None:
        """Raise ValueError unless ``K`` is 1 or ``x``'s batch size."""
        if self.kernel_count not in (1, x.shape[0]):
            raise ValueError(f"{name}: batch size {x.shape[0]} does not match the {self.kernel_count} "
                             "kernels of this Blur (expected 1 kernel or one per batch item)")

    # -- preconditioning and norm -----------------------------------------------------
    def abs_row_sums(self, like: torch.Tensor) -> torch.Tensor:
        """``|A| 1``, shape ``(K, C, H, W)``: ``sum |k|`` everywhere for circular boundaries."""
        return self._abs_sums(like, adjoint=False)

    def abs_col_sums(self, like: torch.Tensor) -> torch.Tensor:
        """``|A|^T 1``, shape ``(K, C, H, W)``."""
        return self._abs_sums(like, adjoint=True)

    def _abs_sums(self, like: torch.Tensor, adjoint: bool) -> torch.Tensor:
        k = self.kernel.to(dtype=like.real.dtype, device=like.device).abs()
        ones = torch.ones((self.kernel_count, *self.in_shape), dtype=k.dtype, device=k.device)
        if self.boundary == "circular":
            return ones * k.sum(dim=(-2, -1)).reshape(-1, 1, 1, 1)
        return _conv_same(ones, k, adjoint=adjoint)

    def norm(self, iterations: int = 100, tol: float = 1e-5, seed: int = 0,
             device: torch.device | str | None = None) -> float:
        """``||A||_2``, cached: ``max |K^|`` (exact) for circular boundaries, else power
        iteration on one item per kernel (the largest of the ``K`` norms)."""
        if self._norm is None:
            device = self.kernel.device if device is None else device
            like = torch.zeros((), dtype=torch.float64, device=device)
            if self.boundary == "circular":
                self._norm = float(self.transfer_function(like).abs().max())
            else:
                self._norm = _batched_power_norm(self, iterations, tol, seed, like)
        return self._norm

    def extra_repr(self) -> str:
        return (f"kernels={self.kernel_count}, kernel_size={tuple(self.kernel.shape[-2:])}, "
                f"image_shape={self.image_shape}, boundary={self.boundary!r}, channels={self.in_shape[0]}")


def _conv_same(x: torch.Tensor, k: torch.Tensor, adjoint: bool) -> torch.Tensor:
    """Zero-boundary convolution of ``x (B, C, H, W)`` with ``k (K, kh, kw)`` cropped to
    ``(H, W)`` (``adjoint``: the correlation, its exact transpose). ``conv2d`` correlates,
    so the forward flips the kernel; the asymmetric padding places the centre for even sizes."""
    B, C, H, W = x.shape
    kh, kw = k.shape[-2:]
    ch, cw = kh // 2, kw // 2
    if adjoint:
        pad = (cw, kw - 1 - cw, ch, kh - 1 - ch)
    else:
        pad, k = (kw - 1 - cw, cw, kh - 1 - ch, ch), k.flip((-2, -1))
    if k.shape[0] == 1:
        out = F.conv2d(F.pad(x.reshape(B * C, 1, H, W), pad), k[:, None])
    else:
        weight = k.repeat_interleave(C, dim=0)[:, None]
        out = F.conv2d(F.pad(x.reshape(1, B * C, H, W), pad), weight, groups=B * C)
    return out.reshape(B, C, H, W)


def _batched_power_norm(op: Blur, iterations: int, tol: float, seed: int, like: torch.Tensor) -> float:
    """Largest singular value over the ``K`` kernels, by power iteration on ``A^T A``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((op.kernel_count, *op.in_shape), generator=gen, dtype=like.dtype).to(like.device)
    est = torch.zeros(op.kernel_count, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        for _ in range(iterations):
            z = op.normal(x / x.flatten(1).norm(dim=1).clamp_min(1e-300).reshape(-1, 1, 1, 1))
            new, x = z.flatten(1).norm(dim=1), z
            done = bool(((new - est).abs() <= tol * new).all())
            est = new
            if done or not bool((new > 0).any()):
                break
    return math.sqrt(float(est.max()))


def _check_image_shape(image_shape) -> tuple[int, int]:
    try:
        shape = tuple(image_shape)
    except TypeError:
        shape = ()
    if len(shape) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                              for s in shape):
        raise ValueError(f"image_shape: expected 2 positive integers (H, W), got {image_shape!r}")
    return int(shape[0]), int(shape[1])


def _check_kernel(kernel, image_shape: tuple[int, int]) -> torch.Tensor:
    """The kernel as a ``(K, kh, kw)`` real floating tensor (float64 unless given float32/64)."""
    k = kernel.detach() if isinstance(kernel, torch.Tensor) else torch.as_tensor(np.asarray(kernel))
    if k.is_complex():
        raise TypeError(f"kernel: expected a real kernel, got dtype {k.dtype}")
    if k.dtype not in (torch.float32, torch.float64):
        k = k.to(torch.float64)
    if k.ndim not in (2, 3):
        raise ValueError(f"kernel: expected shape (kh, kw) or (K, kh, kw), got {tuple(k.shape)}")
    if k.numel() == 0:
        raise ValueError(f"kernel: expected a non-empty kernel, got shape {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()):
        raise ValueError("kernel: contains NaN or Inf values")
    if k.shape[-2] > image_shape[0] or k.shape[-1] > image_shape[1]:
        raise ValueError(f"kernel: size {tuple(k.shape[-2:])} is larger than the image {image_shape}")
    return (k[None] if k.ndim == 2 else k).clone().contiguous()


# -- kernel generators --------------------------------------------------------------------
def _check_size(name: str, size, odd: bool) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or (odd and size % 2 == 0):
        what = "a positive odd integer" if odd else "a positive integer"
        raise ValueError(f"{name}: expected {what}, got {size!r}")
    return int(size)


def _check_number(name: str, value, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a float; raise unless it is a finite real number ``>= minimum`` (``>`` if strict)."""
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = real and math.isfinite(value) and (minimum is None or value > minimum or (value == minimum and not strict))
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    return float(value)


def gaussian_kernel(sigma: float, size: int | None = None) -> np.ndarray:
    r"""Isotropic sampled Gaussian, centred, normalised to sum 1.

    .. math:: k[m, n] \propto \exp\big(-((m - c)^2 + (n - c)^2) / (2\sigma^2)\big),\quad c = (s - 1) / 2

    Args:
        sigma: standard deviation in pixels, > 0.
        size: odd side length ``s``; default ``2 ceil(3 sigma) + 1``.

    Returns:
        float64 array ``(size, size)``.

    Example:
        >>> k = gaussian_kernel(1.0)
        >>> k.shape, round(float(k.sum()), 12)
        ((7, 7), 1.0)
    """
    sigma = _check_number("sigma", sigma, minimum=0.0, strict=True)
    size = 2 * math.ceil(3 * sigma) + 1 if size is None else _check_size("size", size, odd=True)
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (t / sigma) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def box_kernel(size: int) -> np.ndarray:
    r"""Uniform ``size x size`` kernel (moving average), normalised to sum 1.

    .. math:: k[m, n] = 1 / s^2

    Even sizes are allowed; with the centre at ``size // 2`` the average then
    reaches one pixel further up and left than down and right.

    Example:
        >>> box_kernel(2).tolist()
        [[0.25, 0.25], [0.25, 0.25]]
    """
    size = _check_size("size", size, odd=False)
    return np.full((size, size), 1.0 / size**2)


def motion_kernel(length: float, angle: float = 0.0, size: int | None = None) -> np.ndarray:
    r"""Linear motion blur: a ``length x 1`` pixel bar through the centre, normalised to sum 1.

    .. math:: k[m, n] \propto \big|\{\text{sub-pixels of } (m, n)\} \cap
              \{p : |p\cdot u| \le L/2,\ |p\cdot u^\perp| < 1/2\}\big|,\quad u = (\cos\theta, \sin\theta)

    The bar is rasterised with 16 x 16 sub-pixels per pixel (anti-aliasing), so a
    bar of non-integer length or at an oblique angle is not a staircase.

    Args:
        length: length ``L`` of the motion in pixels, >= 1.
        angle: direction in degrees, counter-clockwise from +x (0: horizontal, 90: vertical).
        size: odd side length; default (and minimum) the smallest that holds the bar.

    Returns:
        float64 array ``(size, size)``.

    Example:
        >>> (motion_kernel(3) * 3).round(6).tolist()   # a horizontal bar of 3 pixels
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """
    length = _check_number("length", length, minimum=1.0)
    theta = math.radians(_check_number("angle", angle))
    u = np.array([math.cos(theta), math.sin(theta)])
    half = max(length / 2 * abs(u[0]) + 0.5 * abs(u[1]), length / 2 * abs(u[1]) + 0.5 * abs(u[0]))
    needed = 2 * max(0, math.ceil(half - 0.5 - 1e-9)) + 1
    size = needed if size is None else _check_size("size", size, odd=True)
    if size < needed:
        raise ValueError(f"size: expected an odd integer >= {needed} to hold a bar of length {length:g} "
                         f"at {angle:g} degrees, got {size}")
    sub = (np.arange(size * _SUPERSAMPLING) + 0.5) / _SUPERSAMPLING - size / 2  # sub-pixel centres
    px, py = np.meshgrid(sub, -sub)  # x right, y up (row 0 at the top)
    along, across = px * u[0] + py * u[1], -px * u[1] + py * u[0]
    inside = (np.abs(along) <= length / 2) & (np.abs(across) < 0.5)
    k = inside.reshape(size, _SUPERSAMPLING, size, _SUPERSAMPLING).sum(axis=(1, 3)).astype(np.float64)
    return k / k.sum()
