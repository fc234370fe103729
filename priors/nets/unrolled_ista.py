"""Unrolled ISTA for images: per layer a learned gradient step on the data term and a learned proximal
step, a small residual CNN (Gregor & LeCun's LISTA idea with a convolutional prox; methods.md §8)."""

from __future__ import annotations

import torch
from torch import nn

from operators.base import LinearOperator
from priors.nets.lpd import normalised_data

__all__ = ["UnrolledISTANet"]


def _prox(hidden: int) -> nn.Sequential:
    """Three 3x3 convolutions with PReLU between them; the last starts at zero (the identity prox)."""
    last = nn.Conv2d(hidden, 1, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.PReLU(hidden),
                         nn.Conv2d(hidden, hidden, 3, padding=1), nn.PReLU(hidden), last)


class UnrolledISTANet(nn.Module):
    r"""``layers`` ISTA steps, each with its own step size and its own CNN proximal step.

    .. math:: z_t = x_t - \alpha_t \hat A^T(\hat A x_t - \hat y), \qquad x_{t+1} = z_t + C_t(z_t),
              \qquad x_0 = 0

    with ``A_hat = A / ||A||`` and ``y_hat = y / (||A|| s)`` (``s``: an intensity scale per item, the
    caller's, e.g. of the FBP; the output is multiplied back by it), ``alpha_t = exp(theta_t)``. At
    initialisation (``theta_t = 0``: the classical step ``1 / ||A_hat||^2``; each ``C_t``'s last
    convolution zero) the network is ``layers`` steps of gradient descent on ``||A_hat x - y_hat||^2 / 2``
    (Landweber), which the tests check. The weights depend on the geometry they were trained for.

    Args:
        layers: unrolled steps ``T``.
        hidden: channels inside each proximal CNN.

    Shapes:
        y: ``(B, 1, views, detectors)``; returns ``(B, 1, H, W)``.

    Example:
        >>> import numpy as np
        >>> from operators import ParallelBeam2D
        >>> A = ParallelBeam2D((16, 16), np.linspace(0, np.pi, 6, endpoint=False), 24)
        >>> net = UnrolledISTANet(layers=3, hidden=8)
        >>> net(A, A(torch.rand(2, 1, 16, 16)), torch.ones(2)).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(self, layers: int = 10, hidden: int = 32) -> None:
        super().__init__()
        for name, value in (("layers", layers), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        self.layers = layers
        self.log_steps = nn.Parameter(torch.zeros(layers))
        self.proxes = nn.ModuleList(_prox(hidden) for _ in range(layers))

    @property
    def iterations(self) -> int:
        """The unrolled steps (as ``LearnedPrimalDual.iterations``)."""
        return self.layers

    def forward(self, A: LinearOperator, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        norm, s, g = normalised_data(A, y, scale)
        x = y.new_zeros((y.shape[0], 1, *A.in_shape[-2:]))
        for log_step, prox in zip(self.log_steps, self.proxes):
            z = x - log_step.exp() * A.adjoint(A(x) / norm - g) / norm
            x = z + prox(z)
        return x * s
