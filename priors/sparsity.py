"""Sparsity penalties beyond the l1 norm (``priors.tv.L1Norm``): the l0 "norm" and its hard threshold."""

from __future__ import annotations

import torch

from priors.base import Functional

__all__ = ["L0Norm"]


class L0Norm(Functional):
    r"""``||z||_0``, the number of nonzero entries per batch item. Not convex; its prox is hard thresholding.

    .. math:: \operatorname{prox}_{\tau\|\cdot\|_0}(z)_i = z_i \text{ if } |z_i| > \sqrt{2\tau} \text{ else } 0

    (keeping ``z_i`` costs ``tau``, zeroing it costs ``z_i^2 / 2``; at a tie the entry is zeroed). The
    prox is exact, so iterative hard thresholding (``ProximalGradient`` with this prior) is the
    proximal-gradient method for ``1/2 ||A x - y||^2 + lam ||x||_0``; with a non-convex prior it finds
    a stationary point, not necessarily the minimum. Real tensors only.

    Example:
        >>> import torch
        >>> L0Norm().prox(torch.tensor([[-2.0, 0.5, 1.5]]), 1.0)  # threshold sqrt(2) = 1.41
        tensor([[-2.0000,  0.0000,  1.5000]])
        >>> L0Norm().value(torch.tensor([[0.0, 3.0, -1.0]]))
        tensor([2.])
    """

    has_value = has_prox = True

    def value(self, z):
        self._check_real(z)
        return (z != 0).flatten(1).sum(1).to(z.dtype)

    def _prox(self, z, tau):
        self._check_real(z)
        return z * (z.pow(2) > 2 * tau)

    @staticmethod
    def _check_real(z: torch.Tensor) -> None:
        if z.is_complex():
            raise TypeError(f"z: L0Norm takes real tensors, got {z.dtype}")

    def conj_prox(self, z, sigma):
        raise NotImplementedError("L0Norm is not convex: it has no useful convex conjugate (use a "
                                  "proximal-gradient solver, not a primal-dual one)")
