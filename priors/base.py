"""Functionals: priors, constraints and data terms share one interface.

``value(x) -> (B,)``, ``prox(x, tau)``, ``grad(x)``, and ``conj_prox(z, sigma)``
(the prox of the convex conjugate, derived once by Moreau's identity unless a
subclass has a closed form). ``tau``/``sigma`` may be Python numbers or tensors
broadcastable to ``x`` (diagonal step sizes); tensor steps are valid for
separable functionals, which is all that the solvers pass them to.

``prox`` checks the step once, here, for every functional (``check_step``: a finite
``tau >= 0``), then calls the subclass's ``_prox``; subclasses implement ``_prox``.

Functionals made of a linear map and a simple function (TV = norm of a
gradient, a data term = distance after a forward operator) expose
``split(in_shape) -> (K, g)`` so primal-dual solvers can dualise ``g``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Functional", "ScaledFunctional", "SumFunctional", "Zero", "check_step", "on_parts"]


def on_parts(fn, x: torch.Tensor) -> torch.Tensor:
    """A real-image map ``fn`` applied to the real and imaginary parts of a complex ``(B, ...)`` ``x``,
    as one real batch of ``2B`` (real parts first): how the learned priors treat MRI images.

    Example:
        >>> on_parts(torch.abs, torch.tensor([[1 - 2j]])).tolist()
        [[(1+2j)]]
    """
    return torch.complex(*fn(torch.cat([x.real, x.imag])).chunk(2))


def check_step(tau, name: str = "tau") -> None:
    """Raise ``ValueError`` unless ``tau`` is a finite step ``>= 0``: a real number, or a tensor of them.

    Tensors are checked on the CPU only: on an accelerator the check would wait for the device at
    every prox call, so there a solver's own (derived) steps are trusted.

    Example:
        >>> check_step(0.5)
        >>> check_step(float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: tau: expected a finite step >= 0, got nan
    """
    if isinstance(tau, torch.Tensor):
        if tau.device.type == "cpu" and not tau.is_complex():
            t = tau.detach()
            bad = ~((t >= 0) & (t < math.inf))
            if bool(bad.any()):
                raise ValueError(f"{name}: expected finite steps >= 0, got a tensor holding {float(t[bad][0])}")
        return
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 <= tau < math.inf:
        raise ValueError(f"{name}: expected a finite step >= 0, got {tau!r}")


class Functional(nn.Module):
    """Base class for a (convex) functional on batched tensors.

    Subclasses set the capability flags they implement and override ``value``, ``_prox``
    (called by ``prox`` after ``check_step``) and ``grad``; calling a missing capability raises
    ``NotImplementedError`` naming the class.

    Example:
        >>> import torch
        >>> from priors import NonNegativity, TV
        >>> f = 0.1 * TV() + NonNegativity()
        >>> f.value(torch.ones(2, 1, 8, 8))
        tensor([0., 0.])
    """

    has_value = False
    has_prox = False
    has_grad = False

    def value(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no value")

    def prox(self, x: torch.Tensor, tau) -> torch.Tensor:
        """``argmin_p tau f(p) + 1/2 ||p - x||^2``; a negative or non-finite ``tau`` is a ``ValueError``."""
        check_step(tau)
        return self._prox(x, tau)

    def _prox(self, x: torch.Tensor, tau) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no prox")

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no gradient (it is not smooth)")

    def conj_prox(self, z: torch.Tensor, sigma) -> torch.Tensor:
        """``prox_{sigma f*}(z) = z - sigma prox_{f / sigma}(z / sigma)`` (Moreau)."""
        return z - sigma * self.prox(z / sigma, 1.0 / sigma)

    def split(self, in_shape: Sequence[int]):
        """``(K, g)`` with ``self(x) = g(K x)``, or None when the functional is simple."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x)

    def __rmul__(self, lam) -> "Functional":
        if isinstance(lam, (int, float)) and not isinstance(lam, bool):
            if lam < 0:
                raise ValueError(f"lam: a convex functional needs a scale >= 0, got {lam}")
            return ScaledFunctional(self, float(lam))
        return NotImplemented

    __mul__ = __rmul__

    def __add__(self, other: "Functional") -> "Functional":
        if not isinstance(other, Functional):
            return NotImplemented
        return SumFunctional(self, other)


class ScaledFunctional(Functional):
    """``lam * f``: ``prox(x, tau) = f.prox(x, lam * tau)``."""

    def __init__(self, f: Functional, lam: float) -> None:
        super().__init__()
        self.f, self.lam = f, lam
        self.has_value, self.has_prox, self.has_grad = f.has_value, f.has_prox, f.has_grad

    def value(self, x):
        return self.lam * self.f.value(x)

    def _prox(self, x, tau):
        return self.f.prox(x, self.lam * tau) if self.lam > 0 else x.clone()

    def grad(self, x):
        return self.lam * self.f.grad(x)

    def conj_prox(self, z, sigma):
        # (lam f)*(z) = lam f*(z / lam)  =>  prox_{sigma (lam f)*}(z) = lam prox_{(sigma/lam) f*}(z / lam);
        # for lam = 0, (0 f)* is the indicator of {0}, whose prox is 0
        if self.lam == 0:
            return torch.zeros_like(z)
        return self.lam * self.f.conj_prox(z / self.lam, sigma / self.lam)

    def split(self, in_shape):
        parts = self.f.split(in_shape)
        return None if parts is None else (parts[0], self.lam * parts[1])

    def extra_repr(self) -> str:
        return f"lam={self.lam}"


class SumFunctional(Functional):
    """``f + g``: value and gradient only (a sum has no prox in general)."""

    def __init__(self, f: Functional, g: Functional) -> None:
        super().__init__()
        self.f, self.g = f, g
        self.has_value = f.has_value and g.has_value
        self.has_grad = f.has_grad and g.has_grad

    def value(self, x):
        return self.f.value(x) + self.g.value(x)

    def grad(self, x):
        return self.f.grad(x) + self.g.grad(x)

    def terms(self) -> list[Functional]:
        """The summands, flattened."""
        out = []
        for t in (self.f, self.g):
            out.extend(t.terms() if isinstance(t, SumFunctional) else [t])
        return out


class Zero(Functional):
    """The zero functional."""

    has_value = has_prox = has_grad = True

    def value(self, x):
        return x.new_zeros(x.shape[0]).real

    def _prox(self, x, tau):
        return x.clone()

    def grad(self, x):
        return torch.zeros_like(x)
