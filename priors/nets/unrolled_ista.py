"""Unrolled ISTA for images: per layer a learned gradient step on the data term and a learned proximal
step, a small residual CNN (Gregor & LeCun's LISTA idea with a convolutional prox; methods.md §8)."""

from __future__ import annotations

import torch
from torch import nn

from operators.base import LinearOperator
from priors.nets.lpd import normalised_data, starting_image

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
              \qquad x_0 = 0 \text{ or an estimate}

    with ``A_hat = A / ||A||`` and ``y_hat = y / (||A|| s)`` (``s``: an intensity scale per item, the
    caller's, e.g. of the FBP; the output is multiplied back by it), ``alpha_t = exp(theta_t)``. At
    initialisation (``theta_t = 0``: the classical step ``1 / ||A_hat||^2``; each ``C_t``'s last
    convolution zero) the network is ``layers`` steps of gradient descent on ``||A_hat x - y_hat||^2 / 2``
    (Landweber), which the tests check. With ``start_iterations = k > 0`` it starts instead from an
    estimate ``x0`` the caller passes (``reconstruct`` gives TV after ``k`` Chambolle-Pock iterations).
    The weights depend on the geometry they were trained for.

    Args:
        layers: unrolled steps ``T``.
        hidden: channels inside each proximal CNN.
        start_iterations: 0 to start from zero, else the TV iterations of the estimate ``x0`` it starts from.

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

    def __init__(self, layers: int = 10, hidden: int = 32, start_iterations: int = 0) -> None:
        super().__init__()
        for name, value, least in (("layers", layers, 1), ("hidden", hidden, 1),
                                   ("start_iterations", start_iterations, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}: expected an integer >= {least}, got {value!r}")
        self.layers, self.start_iterations = layers, start_iterations
        self.log_steps = nn.Parameter(torch.zeros(layers))
        self.proxes = nn.ModuleList(_prox(hidden) for _ in range(layers))

    @property
    def iterations(self) -> int:
        """The unrolled steps (as ``LearnedPrimalDual.iterations``)."""
        return self.layers

    def forward(self, A: LinearOperator, y: torch.Tensor, scale: torch.Tensor,
                x0: torch.Tensor | None = None) -> torch.Tensor:
        """The image from sinogram ``y`` at intensity ``scale``, from ``x0`` when ``start_iterations > 0``."""
        norm, s, g = normalised_data(A, y, scale)
        x = starting_image(self.start_iterations, x0, A, y, s, 1)
        for log_step, prox in zip(self.log_steps, self.proxes):
            z = x - log_step.exp() * A.adjoint(A(x) / norm - g) / norm
            x = z + prox(z)
        return x * s
