"""Least-squares data terms.

``SquaredL2Distance(y)`` is the simple function ``z -> 1/2 ||z - y||_W^2`` with a
closed-form (conjugate) prox; ``L2Fidelity(A, y)`` is that function after a
forward operator, ``x -> 1/2 ||A x - y||_W^2``, which primal-dual solvers split
back into ``(A, SquaredL2Distance(y))``.
"""

from __future__ import annotations

import torch

from operators.base import LinearOperator, conjugate_gradient, inner
from priors.base import Functional

__all__ = ["L2Fidelity", "SquaredL2Distance"]


def _check_weight(weight, y: torch.Tensor) -> torch.Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=y.real.dtype, device=y.device)
    try:
        torch.broadcast_shapes(w.shape, y.shape)
    except RuntimeError as err:
        raise ValueError(f"weight: shape {tuple(w.shape)} does not broadcast to y's {tuple(y.shape)}") from err
    if not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise ValueError("weight: expected finite, strictly positive weights")
    return w


class SquaredL2Distance(Functional):
    r"""``f(z) = 1/2 ||z - y||_W^2`` (W a positive diagonal weight, default identity).

    .. math:: \operatorname{prox}_{\sigma f^*}(z) = \frac{z - \sigma y}{1 + \sigma / W}

    Example:
        >>> import torch
        >>> f = SquaredL2Distance(torch.ones(1, 3))
        >>> f.value(torch.zeros(1, 3))
        tensor([1.5000])
    """

    has_value = has_prox = has_grad = True

    def __init__(self, y: torch.Tensor, weight=None) -> None:
        super().__init__()
        self.register_buffer("y", y)
        w = _check_weight(weight, y)
        self.register_buffer("weight", w)

    def _w(self, z):
        return 1.0 if self.weight is None else self.weight

    def value(self, z):
        r = z - self.y
        return 0.5 * inner(r, self._w(z) * r)

    def grad(self, z):
        return self._w(z) * (z - self.y)

    def _prox(self, z, tau):
        w = self._w(z)
        return (z + tau * w * self.y) / (1 + tau * w)

    def conj_prox(self, z, sigma):
        return (z - sigma * self.y) / (1 + sigma / self._w(z))


class L2Fidelity(Functional):
    r"""Least-squares data term ``1/2 ||A x - y||_W^2``.

    .. math:: \nabla f(x) = A^H W (A x - y)

    Args:
        A: the forward operator.
        y: measured data, shape ``(B, *A.out_shape)``.
        weight: optional positive weights broadcastable to ``y`` (e.g. inverse variances).

    Example:
        >>> import torch
        >>> from operators import Identity
        >>> f = L2Fidelity(Identity((1, 2, 2)), torch.ones(1, 1, 2, 2))
        >>> f.grad(torch.zeros(1, 1, 2, 2)).flatten()
        tensor([-1., -1., -1., -1.])
    """

    has_value = has_grad = has_prox = True

    def __init__(self, A: LinearOperator, y: torch.Tensor, weight=None, cg_iterations: int = 50) -> None:
        super().__init__()
        if not isinstance(A, LinearOperator):
            raise TypeError(f"A: expected a LinearOperator, got {type(A).__name__}")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y: expected a torch.Tensor, got {type(y).__name__}")
        if tuple(y.shape[1:]) != tuple(A.out_shape):
            raise ValueError(f"y: expected shape (B, {', '.join(map(str, A.out_shape))}) to match the operator, "
                             f"got {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y: contains NaN or Inf values")
        self.A = A
        self.distance = SquaredL2Distance(y, weight)
        self.cg_iterations = cg_iterations

    @property
    def y(self) -> torch.Tensor:
        return self.distance.y

    def split(self, in_shape):
        return self.A, self.distance

    def value(self, x):
        return self.distance.value(self.A(x))

    def grad(self, x):
        return self.A.adjoint(self.distance.grad(self.A(x)))

    @property
    def has_fast_prox(self) -> bool:
        """True when the prox needs no inner iterations of ours: ``A`` solves ``I + tau A^H A`` itself."""
        return self.distance.weight is None and self.A.has_shifted_normal_solve

    def _prox(self, x, tau):
        r"""Solve ``(I + tau A^H W A) p = x + tau A^H W y``: by the operator's own solver when it has one
        (unweighted), else by conjugate gradients warm-started at ``x`` (scalar tau)."""
        w = self.distance._w(x)
        rhs = x + tau * self.A.adjoint(w * self.y)
        if self.has_fast_prox:
            return self.A.solve_shifted_normal(rhs, tau, x0=x)
        apply = lambda p: p + tau * self.A.adjoint(w * self.A(p))  # noqa: E731
        return conjugate_gradient(apply, rhs, x.clone(), self.cg_iterations)

