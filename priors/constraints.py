"""Convex constraints as indicator functionals (value 0 inside, +inf outside)."""

from __future__ import annotations

import math

import torch

from priors.base import Functional

__all__ = ["Box", "NonNegativity"]


class Box(Functional):
    r"""Indicator of ``lower <= x <= upper``; its prox is the projection (clamp).

    .. math:: \iota_{[l, u]}(x) = 0 \text{ if } l \le x \le u \text{ else } +\infty

    Args:
        lower: lower bound (``None`` or ``-inf`` for none).
        upper: upper bound (``None`` or ``inf`` for none).

    Example:
        >>> import torch
        >>> Box(0.0, 1.0).prox(torch.tensor([[-1.0, 0.5, 2.0]]), 1.0)
        tensor([[0.0000, 0.5000, 1.0000]])
    """

    has_value = has_prox = True

    def __init__(self, lower: float | None = None, upper: float | None = None) -> None:
        super().__init__()
        lo = -math.inf if lower is None else float(lower)
        hi = math.inf if upper is None else float(upper)
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ValueError(f"lower, upper: expected lower <= upper, got lower={lower}, upper={upper}")
        self.lower, self.upper = lo, hi

    def _check_real(self, x: torch.Tensor) -> None:
        if x.is_complex():
            raise TypeError(f"x: {type(self).__name__} bounds real values; got a {x.dtype} tensor (complex numbers "
                            "have no order: constrain a real image, or drop the constraint for complex ones)")

    def value(self, x):
        self._check_real(x)
        tol = 1e-6 * max(1.0, float(x.detach().abs().max()) if x.numel() else 1.0)
        inside = ((x >= self.lower - tol) & (x <= self.upper + tol)).flatten(1).all(1)
        return torch.where(inside, 0.0, math.inf).to(x.real.dtype)

    def _prox(self, x, tau):
        self._check_real(x)
        return torch.clamp(x, min=None if math.isinf(self.lower) else self.lower,
                           max=None if math.isinf(self.upper) else self.upper)

    def extra_repr(self) -> str:
        return f"lower={self.lower}, upper={self.upper}"


class NonNegativity(Box):
    """Indicator of ``x >= 0``.

    Example:
        >>> import torch
        >>> NonNegativity().prox(torch.tensor([[-1.0, 2.0]]), 0.5)
        tensor([[0., 2.]])
    """

    def __init__(self) -> None:
        super().__init__(0.0, None)
