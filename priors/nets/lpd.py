"""Learned primal-dual (Adler & Öktem, IEEE TMI 37, 2018): unrolled primal-dual with CNN updates."""

from __future__ import annotations

import torch
from torch import nn

from operators.base import LinearOperator

__all__ = ["LearnedPrimalDual", "normalised_data", "starting_image"]


def normalised_data(A: LinearOperator, y: torch.Tensor, scale) -> tuple[float, torch.Tensor, torch.Tensor]:
    """``(||A||, s, y / (||A|| s))`` for a sinogram-to-image network: ``s`` the intensity scale per item
    ``(B, 1, 1, 1)`` (the output is multiplied back by it); checks that ``y`` is ``(B, 1, views, detectors)``."""
    if y.dim() != 4 or y.shape[1] != 1:
        raise ValueError(f"y: expected a sinogram of shape (B, 1, views, detectors), got {tuple(y.shape)}")
    norm = A.norm(device=y.device)
    s = torch.as_tensor(scale, dtype=y.dtype, device=y.device).reshape(-1, 1, 1, 1)
    return norm, s, y / (norm * s)


def starting_image(start_iterations: int, x0: torch.Tensor | None, A: LinearOperator, y: torch.Tensor,
                   s: torch.Tensor, channels: int) -> torch.Tensor:
    """The ``channels`` image channels a sinogram-to-image network starts from, on its intensity scale ``s``:
    zero, or the estimate ``x0 / s`` in each, which is required exactly when ``start_iterations > 0``."""
    shape = (y.shape[0], 1, *A.in_shape[-2:])
    if (x0 is None) != (start_iterations == 0):
        start = f"TV after {start_iterations} iterations (pass it as x0)" if start_iterations else "zero (pass no x0)"
        raise ValueError(f"x0: this network starts from {start}; got {'no estimate' if x0 is None else 'an estimate'}")
    if x0 is None:
        return y.new_zeros((shape[0], channels, *shape[2:]))
    if x0.shape != shape:
        raise ValueError(f"x0: expected shape {shape}, got {tuple(x0.shape)}")
    return (x0 / s).repeat(1, channels, 1, 1)


def _update(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """Three 3x3 convolutions with PReLU between them: one primal or dual update."""
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.PReLU(hidden),
                         nn.Conv2d(hidden, hidden, 3, padding=1), nn.PReLU(hidden),
                         nn.Conv2d(hidden, c_out, 3, padding=1))


class LearnedPrimalDual(nn.Module):
    r"""``iterations`` primal-dual steps, each a small CNN, with the forward operator and its adjoint inside.

    .. math:: h \leftarrow h + \Gamma_i\big(h,\ \hat A f^{(1)},\ \hat y\big), \qquad
              f \leftarrow f + \Lambda_i\big(f,\ \hat A^T h^{(0)}\big)

    ``h`` (``dual`` channels, sinogram-shaped) and ``f`` (``primal`` channels, image-shaped) start at
    zero, as in the paper; the output is ``f^{(0)}``. With ``start_iterations = k > 0`` every primal
    channel starts instead at an estimate ``x0`` the caller passes (``reconstruct`` gives TV after ``k``
    Chambolle-Pock iterations) and the last convolution of every primal update starts at zero, so the
    untrained network returns ``x0`` and training starts from it. The operator
    is normalised, ``A_hat = A / ||A||``, and the data divided by ``||A||`` and by an intensity
    ``scale`` per item (the caller's, e.g. of the FBP), the output multiplied back: the network sees
    the same numbers in 1/mm as in [0, 1]. The weights depend on the geometry they were trained for
    (views, detectors, image size).

    Args:
        iterations: unrolled steps ``K`` (10 in the paper).
        primal, dual: channels of the primal (at least 2) and dual memories (5 in the paper).
        hidden: channels inside each update (32 in the paper).
        start_iterations: 0 for the paper's zero start, else the TV iterations of the estimate ``x0``
            the network starts from (recorded in its card with the architecture).

    Shapes:
        y: ``(B, 1, views, detectors)``; returns ``(B, 1, H, W)``.

    Example:
        >>> import numpy as np
        >>> from operators import ParallelBeam2D
        >>> A = ParallelBeam2D((16, 16), np.linspace(0, np.pi, 6, endpoint=False), 24)
        >>> net = LearnedPrimalDual(iterations=2, hidden=8)
        >>> net(A, A(torch.rand(3, 1, 16, 16)), torch.ones(3)).shape
        torch.Size([3, 1, 16, 16])
        >>> warm = LearnedPrimalDual(iterations=2, hidden=8, start_iterations=30)
        >>> x0 = torch.rand(3, 1, 16, 16)
        >>> torch.equal(warm(A, A(x0), torch.ones(3), x0), x0)  # untrained: the estimate itself
        True
    """

    def __init__(self, iterations: int = 10, primal: int = 5, dual: int = 5, hidden: int = 32,
                 start_iterations: int = 0) -> None:
        super().__init__()
        for name, value, least in (("iterations", iterations, 1), ("primal", primal, 2), ("dual", dual, 1),
                                   ("hidden", hidden, 1), ("start_iterations", start_iterations, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}: expected an integer >= {least}, got {value!r}")
        self.iterations, self.primal, self.dual = iterations, primal, dual
        self.start_iterations = start_iterations
        self.dual_updates = nn.ModuleList(_update(dual + 2, hidden, dual) for _ in range(iterations))
        self.primal_updates = nn.ModuleList(_update(primal + 1, hidden, primal) for _ in range(iterations))
        if start_iterations:
            for update in self.primal_updates:
                nn.init.zeros_(update[-1].weight)
                nn.init.zeros_(update[-1].bias)

    def forward(self, A: LinearOperator, y: torch.Tensor, scale: torch.Tensor,
                x0: torch.Tensor | None = None) -> torch.Tensor:
        """The image from sinogram ``y`` at intensity ``scale``; ``x0`` is the estimate to start from,
        required exactly when ``start_iterations > 0``."""
        norm, s, g = normalised_data(A, y, scale)
        f = starting_image(self.start_iterations, x0, A, y, s, self.primal)
        h = y.new_zeros((y.shape[0], self.dual, *y.shape[-2:]))
        for gamma, lam in zip(self.dual_updates, self.primal_updates):
            h = h + gamma(torch.cat([h, A(f[:, 1:2].contiguous()) / norm, g], dim=1))
            f = f + lam(torch.cat([f, A.adjoint(h[:, :1].contiguous()) / norm], dim=1))
        return f[:, :1] * s
