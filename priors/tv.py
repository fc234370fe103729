"""Total variation and the mixed norms it is built from.

``TV(x) = || grad x ||_{2,1}`` (isotropic) or ``|| grad x ||_1`` (anisotropic),
with forward differences (``operators.FiniteDifference``). Primal-dual solvers
use ``TV.split`` to work on the gradient with the norm's closed-form
conjugate prox; ``TV.prox`` itself (for proximal-gradient solvers) runs the
fast gradient projection of Beck & Teboulle (2009) on the dual.
"""

from __future__ import annotations

import torch

from operators.finite_diff import FiniteDifference
from priors.base import Functional

__all__ = ["L1Norm", "L21Norm", "TV", "dual_prox"]


def dual_prox(x: torch.Tensor, tau, K, g: Functional, iterations: int) -> torch.Tensor:
    r"""``argmin_p tau g(K p) + 1/2 ||p - x||^2`` by fast gradient projection on the dual.

    For ``g`` a norm (its conjugate the indicator of the dual ball, projected by
    ``g.conj_prox(., 1)``) the dual is ``min_{q in ball} 1/2 ||x - tau K^T q||^2``;
    accelerated projected gradient on it (Beck & Teboulle 2009) with step ``1/||K||^2``
    converges at rate ``O(1/k^2)``, and the primal is ``x - tau K^T q``.
    """
    step = 1.0 / K.norm(device=x.device) ** 2
    p = torch.zeros_like(K(x))
    q, t = p, 1.0
    for _ in range(iterations):
        p_new = g.conj_prox(q + step / tau * K(x - tau * K.adjoint(q)), 1.0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        q = p_new + (t - 1) / t_new * (p_new - p)
        p, t = p_new, t_new
    return x - tau * K.adjoint(p)


class L1Norm(Functional):
    r"""``||z||_1``, summed per batch item. Prox: soft thresholding.

    .. math:: \operatorname{prox}_{\tau\|\cdot\|_1}(z) = \operatorname{sign}(z)\max(|z|-\tau, 0)

    Example:
        >>> import torch
        >>> L1Norm().prox(torch.tensor([[-2.0, 0.5, 3.0]]), 1.0)
        tensor([[-1.,  0.,  2.]])
    """

    has_value = has_prox = True

    def value(self, z):
        return z.abs().flatten(1).sum(1)

    def prox(self, z, tau):
        return torch.sign(z) * torch.clamp(z.abs() - tau, min=0)

    def conj_prox(self, z, sigma):
        return torch.clamp(z, -1.0, 1.0)


class L21Norm(Functional):
    r"""Group norm ``sum_i ||z_i||_2`` over axis ``group_dim`` (the gradient components).

    .. math:: \|z\|_{2,1} = \sum_i \Big(\sum_k z_{k,i}^2\Big)^{1/2}

    The conjugate is the indicator of the unit-ball groups, whose prox is a
    projection, independent of ``sigma``.

    Example:
        >>> import torch
        >>> z = torch.tensor([[[3.0], [4.0]]])   # one pixel, gradient (3, 4)
        >>> L21Norm().value(z)
        tensor([5.])
    """

    has_value = has_prox = True

    def __init__(self, group_dim: int = 1) -> None:
        super().__init__()
        self.group_dim = group_dim

    def _magnitude(self, z):
        return torch.linalg.vector_norm(z, dim=self.group_dim, keepdim=True)

    def value(self, z):
        return self._magnitude(z).flatten(1).sum(1)

    def prox(self, z, tau):
        mag = self._magnitude(z)
        return z * torch.clamp(1 - tau / torch.clamp(mag, min=1e-30), min=0)

    def conj_prox(self, z, sigma):
        return z / torch.clamp(self._magnitude(z), min=1.0)


class TV(Functional):
    r"""Total variation of ``(B, C, H, W)`` images (or volumes with ``ndim=3``).

    .. math:: \mathrm{TV}(x) = \sum_i \|(\nabla x)_i\|_2 \quad\text{(isotropic)}

    Args:
        isotropic: Euclidean norm of the gradient per pixel (True) or the
            sum of absolute differences (False).
        ndim: number of trailing axes to differentiate.
        spacing: grid spacing passed to ``FiniteDifference`` (1 = per pixel).
        prox_iterations: inner iterations for ``prox`` (dual FGP).

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 4, 4); x[..., :, 2:] = 1.0   # one vertical edge, 4 pixels long
        >>> TV().value(x)
        tensor([4.])
    """

    has_value = has_prox = True

    def __init__(self, isotropic: bool = True, ndim: int = 2, spacing: float = 1.0,
                 prox_iterations: int = 100) -> None:
        super().__init__()
        self.isotropic, self.ndim, self.spacing = isotropic, ndim, spacing
        self.prox_iterations = prox_iterations
        self.norm = L21Norm(group_dim=1) if isotropic else L1Norm()

    def gradient(self, in_shape) -> FiniteDifference:
        return FiniteDifference(in_shape, ndim=self.ndim, spacing=self.spacing)

    def split(self, in_shape):
        return self.gradient(in_shape), self.norm

    def value(self, x):
        return self.norm.value(self.gradient(x.shape[1:])(x))

    def prox(self, x, tau):
        r"""``argmin_p tau TV(p) + 1/2 ||p - x||^2`` by FGP on the dual (Beck & Teboulle 2009)."""
        return dual_prox(x, tau, self.gradient(x.shape[1:]), self.norm, self.prox_iterations)

    def extra_repr(self) -> str:
        return f"isotropic={self.isotropic}, ndim={self.ndim}, spacing={self.spacing}"
