"""Input-convex neural networks (ICNN): scalar potentials ``psi(x)`` convex in ``x``.

Amos, Xu & Kolter (2017); the layout follows the learned proximal networks of
Fang, Buchanan & Sulam (ICLR 2024), whose gradient ``grad psi`` is a proximal
operator. With ``s`` = Softplus(beta) (convex, non-decreasing):

    z_1     = s(W_0 x + b_0)                      W_0 unconstrained
    z_{k+1} = s(W_k z_k + H_k x_k + b_k)          W_k >= 0, H_k unconstrained
    psi(x)  = sum(w_out * z_L) + sum(h_out * x_L) + alpha ||x||^2     w_out >= 0

``x_k`` is the input linearly resampled to the size of ``z_{k+1}``; a linear
map of ``x`` keeps every ``z_k`` convex, and non-negative combinations of convex,
non-decreasingly activated terms stay convex. The constraint ``W_k, w_out >= 0``
is kept by ``clamp_weights()``, to be called after every optimiser step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ICNN", "ICNN1D", "init_nonnegative_"]

INIT_MEAN, INIT_STD = -10.0, 0.1  # non-negative weights start at exp(N(-10, 0.1)) (Fang et al.)


def init_nonnegative_(weights: Sequence[torch.Tensor], mean: float = INIT_MEAN, std: float = INIT_STD) -> None:
    """Fill each tensor in place with ``exp(N(mean, std))`` (tiny positive values by default)."""
    with torch.no_grad():
        for w in weights:
            w.normal_(mean, std).exp_()


def _clamp(weights: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for w in weights:
            w.clamp_(min=0)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


class _ConvexPath(nn.Module):
    """The constrained weights of an input-convex network: its z-path layers ``core`` and ``out``."""

    core: nn.ModuleList
    out: nn.Module

    def nonnegative_weights(self) -> list[torch.Tensor]:
        """The weights constrained to be >= 0: the z-path layers and the output reduction."""
        return [c.weight for c in self.core] + [self.out.weight]

    def clamp_weights(self) -> None:
        """Project the constrained weights onto ``>= 0`` (call after each optimiser step)."""
        _clamp(self.nonnegative_weights())


class ICNN(_ConvexPath):
    r"""Convolutional input-convex potential for images, ``(B, C, H, W) -> (B,)``.

    .. math:: \psi(x) = \textstyle\sum w_{out} \odot z_L(x) + \sum h_{out} \odot x_L + \alpha \|x\|_2^2

    A convolution lifts the input to ``hidden`` channels, then one non-negative
    convolution per entry of ``strides`` (each with a parallel unconstrained
    convolution of the bilinearly resampled input), and a non-negative 1x1
    reduction summed over channels and pixels. The sum (not a mean) keeps the
    scale of ``grad psi`` per pixel independent of the image size, and any size
    works (odd sizes too). The paper's 128-pixel model is ``hidden=256,
    strides=(2, 1, 2, 1, 2), beta=100, alpha=1e-6`` with a 16x16 convolution
    instead of the sum reduction (it fixes the input size); the defaults here are
    small, with the paper's MNIST ``beta=10, alpha=0.01``.

    Args:
        in_channels: image channels ``C``.
        hidden: channels of every hidden layer.
        strides: stride of each non-negative layer (its length sets the depth).
        beta: Softplus sharpness (larger is closer to ReLU).
        alpha: weight of the strong-convexity term ``alpha ||x||^2`` (>= 0).
        kernel_size: odd convolution size of the hidden layers.

    Shapes:
        x: ``(B, C, H, W)`` -> ``(B,)``.

    Example:
        >>> import torch
        >>> psi = ICNN(in_channels=1, hidden=8, strides=(2, 1))
        >>> psi(torch.randn(3, 1, 12, 10)).shape
        torch.Size([3])
    """

    def __init__(self, in_channels: int = 1, hidden: int = 32, strides: Sequence[int] = (1, 2, 1, 2),
                 beta: float = 10.0, alpha: float = 0.01, kernel_size: int = 3) -> None:
        super().__init__()
        _check_positive("beta", beta)
        if alpha < 0:
            raise ValueError(f"alpha: expected a number >= 0, got {alpha!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd positive integer, got {kernel_size!r}")
        if len(strides) == 0 or any(int(s) < 1 for s in strides):
            raise ValueError(f"strides: expected a non-empty sequence of positive integers, got {tuple(strides)}")
        self.in_channels, self.alpha, pad = int(in_channels), float(alpha), kernel_size // 2
        self.lift = nn.Conv2d(in_channels, hidden, kernel_size, padding=pad)
        self.core = nn.ModuleList(nn.Conv2d(hidden, hidden, kernel_size, stride=int(s), padding=pad, bias=False)
                                  for s in strides)
        self.skip = nn.ModuleList(nn.Conv2d(in_channels, hidden, kernel_size, padding=pad) for _ in strides)
        self.out = nn.Conv2d(hidden, 1, 1, bias=False)
        self.out_skip = nn.Conv2d(in_channels, 1, 1)
        self.act = nn.Softplus(beta=beta)
        init_nonnegative_(self.nonnegative_weights())

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        z = self.act(self.lift(x))
        for core, skip in zip(self.core, self.skip):
            z = core(z)
            z = self.act(z + skip(_resample(x, z.shape[-2:])))
        x_last = _resample(x, z.shape[-2:])
        total = self.out(z) + self.out_skip(x_last)
        return total.flatten(1).sum(1) + self.alpha * x.flatten(1).square().sum(1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def _resample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear resampling to ``size`` (linear in ``x``); the identity at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ICNN1D(_ConvexPath):
    r"""Fully connected input-convex potential for vectors, ``(B, D) -> (B,)``.

    .. math:: \psi(x) = w_{out}^\top z_L(x) + h_{out}^\top x + b + \alpha \|x\|_2^2

    The 1-D toy of Fang et al. uses ``hidden=50, layers=4, beta=10`` (and no
    strong-convexity term).

    Args:
        in_dim: input dimension ``D``.
        hidden: units of every hidden layer.
        layers: number of non-negative hidden-to-hidden layers (``layers + 1`` activations).
        beta: Softplus sharpness.
        alpha: weight of ``alpha ||x||^2`` (>= 0).

    Shapes:
        x: ``(B, D)`` -> ``(B,)``.

    Example:
        >>> import torch
        >>> psi = ICNN1D(in_dim=1)
        >>> psi(torch.linspace(-1, 1, 5)[:, None]).shape
        torch.Size([5])
    """

    def __init__(self, in_dim: int = 1, hidden: int = 50, layers: int = 4, beta: float = 10.0,
                 alpha: float = 0.0) -> None:
        super().__init__()
        _check_positive("beta", beta)
        if alpha < 0:
            raise ValueError(f"alpha: expected a number >= 0, got {alpha!r}")
        if int(layers) < 0:
            raise ValueError(f"layers: expected an integer >= 0, got {layers!r}")
        self.in_dim, self.alpha = int(in_dim), float(alpha)
        self.lift = nn.Linear(in_dim, hidden)
        self.core = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(int(layers)))
        self.skip = nn.ModuleList(nn.Linear(in_dim, hidden) for _ in range(int(layers)))
        self.out = nn.Linear(hidden, 1, bias=False)
        self.out_skip = nn.Linear(in_dim, 1)
        self.act = nn.Softplus(beta=beta)
        init_nonnegative_(self.nonnegative_weights())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"x: expected shape (B, {self.in_dim}), got {tuple(x.shape)}")
        z = self.act(self.lift(x))
        for core, skip in zip(self.core, self.skip):
            z = self.act(core(z) + skip(x))
        return (self.out(z) + self.out_skip(x))[:, 0] + self.alpha * x.square().sum(1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
