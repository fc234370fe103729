"""Convex constraints as indicator functionals (value 0 inside, +inf outside)."""

from __future__ import annotations

import math

import torch

from priors.base import Functional

__all__ = ["Box", "NonNegativity", "PixelBox"]


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


class PixelBox(Functional):
    r"""Indicator of ``0 <= x <= upper`` with a bound per pixel: a support (``upper = 0`` outside it)
    and, where known, an upper value (``inf`` for none).

    Args:
        upper: nonnegative bounds, a tensor broadcastable to the images (e.g. ``(1, 1, H, W)``), may
            hold ``inf``.

    Example:
        >>> import torch
        >>> PixelBox(torch.tensor([[0.0, 1.0, float("inf")]])).prox(torch.tensor([[0.5, 2.0, -1.0]]), 1.0)
        tensor([[0., 1., 0.]])
    """

    has_value = has_prox = True

    def __init__(self, upper: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(upper, torch.Tensor) or upper.is_complex():
            raise TypeError(f"upper: expected a real tensor, got {type(upper).__name__}")
        if torch.isnan(upper).any() or (upper < 0).any():
            raise ValueError("upper: expected bounds >= 0 (inf for none), found NaN or negative values")
        self.register_buffer("upper", upper.detach().clone())

    def value(self, x):
        if x.is_complex():
            raise TypeError(f"x: PixelBox bounds real values; got a {x.dtype} tensor")
        tol = 1e-6 * max(1.0, float(x.detach().abs().max()) if x.numel() else 1.0)
        inside = ((x >= -tol) & (x <= self.upper.to(x) + tol)).flatten(1).all(1)
        return torch.where(inside, 0.0, math.inf).to(x.dtype)

    def _prox(self, x, tau):
        if x.is_complex():
            raise TypeError(f"x: PixelBox bounds real values; got a {x.dtype} tensor")
        return torch.minimum(x.clamp_min(0.0), self.upper.to(x))

    def item(self, i: int) -> "PixelBox":
        """The bounds of batch item ``i`` (all of them when they are shared)."""
        return PixelBox(self.upper[i:i + 1]) if self.upper.shape[0] > 1 else self
