"""The variational problem ``min_x data(x) + prior(K x) + constraint(x)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from operators.base import LinearOperator
from priors.base import Functional, Zero

__all__ = ["Problem"]


@dataclass(frozen=True, eq=False)
class Problem:
    r"""A data term, a prior seen through an optional linear map, and a constraint.

    .. math:: \min_x\; D(x) + R(K x) + G(x)

    The weight lives in the prior (``0.01 * TV()``). When ``K`` is None and the
    prior can ``split`` itself (TV = norm of a gradient), solvers use that split.
    Cheap to build: make one per batch.

    Args:
        data: the data term, e.g. ``L2Fidelity(A, y)``.
        prior: the regulariser (``None`` for none).
        K: linear map the prior acts through (``None``: identity or the prior's split).
        constraint: a functional with a prox on ``x`` (e.g. ``NonNegativity()``).

    Example:
        >>> import torch
        >>> from operators import Identity
        >>> from priors import L2Fidelity, TV
        >>> y = torch.zeros(1, 1, 8, 8)
        >>> p = Problem(L2Fidelity(Identity((1, 8, 8)), y), 0.1 * TV())
        >>> p.objective(torch.ones(1, 1, 8, 8))
        tensor([32.])
    """

    data: Functional
    prior: Functional | None = None
    K: LinearOperator | None = None
    constraint: Functional | None = None

    def __post_init__(self) -> None:
        for name in ("data", "prior", "constraint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Functional):
                raise TypeError(f"{name}: expected a Functional, got {type(value).__name__}")
        if self.K is not None and not isinstance(self.K, LinearOperator):
            raise TypeError(f"K: expected a LinearOperator or None, got {type(self.K).__name__}")

    def prior_split(self, in_shape) -> tuple[LinearOperator | None, Functional]:
        """``(K, g)`` such that the prior term is ``g(K x)`` (K None means identity)."""
        prior = self.prior if self.prior is not None else Zero()
        if self.K is not None:
            return self.K, prior
        parts = prior.split(in_shape)
        return (None, prior) if parts is None else parts

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        """Objective value per batch item, shape ``(B,)``."""
        with torch.no_grad():
            value = self.data.value(x)
            if self.prior is not None:
                value = value + self.prior.value(self.K(x) if self.K is not None else x)
            if self.constraint is not None:
                value = value + self.constraint.value(x)
        return value
