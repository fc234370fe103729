"""Linear operators on batched torch tensors, their adjoints and their algebra.

Every operator maps ``(B, *in_shape) -> (B, *out_shape)``; the batch dimension
is always present and never part of ``in_shape``/``out_shape``. Device and
dtype follow the input: operators store no device.

Autograd goes through the adjoint: the gradient of ``<A x, v>`` with respect
to ``x`` is ``A.H(v)``, computed by the operator's own adjoint (so an external
projector such as ASTRA needs no torch implementation of its own).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Union

import torch
from torch import nn

Shape = tuple[int, ...]
Tensors = Union[torch.Tensor, tuple[torch.Tensor, ...]]

__all__ = ["LinearOperator", "Adjoint", "Composed", "Sum", "Scaled", "Stack", "Identity", "inner",
           "conjugate_gradient", "per_item", "trusted_values", "values_trusted"]

_TRUSTED = contextvars.ContextVar("recon_trusted_values", default=False)


@contextlib.contextmanager
def trusted_values() -> Iterator[None]:
    """Inside this block operators skip the checks that read tensor values (NaN/Inf), which on CUDA
    cost a device-to-host copy and a synchronisation per call. Solvers use it for the iterates they
    compute from inputs they checked once; shapes and dtypes are still checked.

    Example:
        >>> with trusted_values():
        ...     values_trusted()
        True
        >>> values_trusted()
        False
    """
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def values_trusted() -> bool:
    """True inside ``trusted_values()``."""
    return _TRUSTED.get()


def inner(a: Tensors, b: Tensors) -> torch.Tensor:
    """Real part of the batched inner product ``Re<a, b>``, summed over tuples.

    Returns a tensor of shape ``(B,)``.
    """
    if isinstance(a, tuple):
        return sum(inner(ai, bi) for ai, bi in zip(a, b))
    prod = torch.conj(a) * b if a.is_complex() else a * b
    return prod.real.flatten(1).sum(1) if prod.is_complex() else prod.flatten(1).sum(1)


class _Apply(torch.autograd.Function):
    """``y = A x`` whose backward is ``A.H``: ASTRA and friends need no torch graph."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, op: "LinearOperator") -> torch.Tensor:
        ctx.op = op
        return op._forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.op.adjoint(grad), None


class _ApplyAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, op: "LinearOperator") -> torch.Tensor:
        ctx.op = op
        return op._adjoint(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.op.forward(grad), None


class LinearOperator(nn.Module):
    """Base class: a linear map between batched tensors.

    Subclasses implement ``_forward`` and ``_adjoint`` on tensors whose shapes
    have been checked. If those are written in differentiable torch, set the
    class attribute ``native_autograd = True``; otherwise autograd is routed
    through the adjoint.

    Args:
        in_shape: shape of one input item (batch excluded).
        out_shape: shape of one output item (batch excluded); a tuple of shapes
            for operators with tuple output (``Stack``).

    Example:
        >>> import torch
        >>> from operators import Identity
        >>> A = 2.0 * Identity((1, 4, 4))
        >>> A(torch.ones(3, 1, 4, 4)).shape
        torch.Size([3, 1, 4, 4])
        >>> round(A.norm(), 4)
        2.0
    """

    native_autograd = False
    clinear = True
    __array_ufunc__ = None  # make numpy defer, so `A @ ndarray` raises TypeError instead of broadcasting

    def __init__(self, in_shape: Sequence[int], out_shape) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = out_shape if _is_shape_tuple(out_shape) else tuple(out_shape)
        self._norm: float | None = None
        self._adjoint_view: Adjoint | None = None

    # -- application ------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Tensors:
        self._check(x, self.in_shape, "x")
        return self._forward(x) if self.native_autograd else _Apply.apply(x, self)

    def adjoint(self, y: Tensors) -> torch.Tensor:
        self._check(y, self.out_shape, "y")
        return self._adjoint(y) if self.native_autograd else _ApplyAdjoint.apply(y, self)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x``; overridden where a cheaper form exists."""
        return self.adjoint(self.forward(x))

    def _forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def _adjoint(self, y):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def H(self) -> "LinearOperator":
        if self._adjoint_view is None:
            object.__setattr__(self, "_adjoint_view", Adjoint(self))
        return self._adjoint_view

    # -- solver support ---------------------------------------------------------------
    #: True when ``solve_shifted_normal`` is implemented (closed form, or a solve the operator
    #: knows converges fast); Chambolle-Pock then keeps a least-squares data term in the primal.
    has_shifted_normal_solve = False

    def solve_shifted_normal(self, b: torch.Tensor, tau, x0: torch.Tensor | None = None) -> torch.Tensor:
        """``(I + tau A^H A)^{-1} b``; ``tau`` a number or a tensor broadcastable per item; ``x0`` an
        optional starting guess for iterative solves."""
        raise NotImplementedError(f"{type(self).__name__} has no shifted normal-equation solver")

    # -- diagonal preconditioning support ---------------------------------------------
    def abs_row_sums(self, like: torch.Tensor) -> torch.Tensor | None:
        """``|A| 1`` with shape ``(1, *out_shape)``, or None when unknown.

        ``like`` supplies device and dtype. Used by Chambolle-Pock's diagonal
        preconditioning (Pock & Chambolle 2011, alpha = 1).
        """
        return None

    def abs_col_sums(self, like: torch.Tensor) -> torch.Tensor | None:
        """``|A|^T 1`` with shape ``(1, *in_shape)``, or None when unknown."""
        return None

    # -- norm -------------------------------------------------------------------------
    def norm(self, iterations: int = 100, tol: float = 1e-5, seed: int = 0,
             device: torch.device | str | None = None) -> float:
        """Spectral norm ``||A||_2`` by power iteration on ``A^H A``, cached.

        Runs on ``device``, by default the device of the operator's buffers (CPU if none).
        """
        if self._norm is None:
            if device is None:
                device = next((b.device for b in self.buffers()), torch.device("cpu"))
            self._norm = _power_norm(self, iterations, tol, seed, device)
        return self._norm

    # -- algebra ----------------------------------------------------------------------
    def __matmul__(self, other: "LinearOperator") -> "LinearOperator":
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return Composed(self, other)

    def __add__(self, other: "LinearOperator") -> "LinearOperator":
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return Sum(self, other)

    def __sub__(self, other: "LinearOperator") -> "LinearOperator":
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return Sum(self, Scaled(other, -1.0))

    def __neg__(self) -> "LinearOperator":
        return Scaled(self, -1.0)

    def __rmul__(self, c) -> "LinearOperator":
        if isinstance(c, (int, float, complex)) and not isinstance(c, bool):
            return Scaled(self, c)
        return NotImplemented

    __mul__ = __rmul__

    # -- validation -------------------------------------------------------------------
    def _check(self, x: Tensors, shape, name: str) -> None:
        if _is_shape_tuple(shape):
            if not isinstance(x, tuple) or len(x) != len(shape):
                raise TypeError(f"{name}: expected a tuple of {len(shape)} tensors for "
                                f"{type(self).__name__}, got {type(x).__name__}")
            for i, (xi, si) in enumerate(zip(x, shape)):
                self._check(xi, si, f"{name}[{i}]")
            return
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != tuple(shape) or x.ndim != len(shape) + 1:
            raise ValueError(f"{name}: {type(self).__name__} expects shape (B, "
                             f"{', '.join(map(str, shape))}), got {tuple(x.shape)}")
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{name}: expected a floating-point or complex tensor, got {x.dtype}")

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"


def _is_shape_tuple(shape) -> bool:
    """True for a tuple of shapes (tuple-output operators), False for one shape."""
    return isinstance(shape, tuple) and len(shape) > 0 and isinstance(shape[0], tuple)


def _power_norm(op: LinearOperator, iterations: int, tol: float, seed: int, device) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1, *op.in_shape), generator=gen, dtype=torch.float32).to(device or "cpu")
    x = x / x.norm()
    est = 0.0
    with torch.no_grad():
        for _ in range(iterations):
            z = op.normal(x)
            new = float(z.norm())
            if new == 0.0:
                return 0.0
            x = z / new
            if abs(new - est) <= tol * new:
                est = new
                break
            est = new
    return math.sqrt(est)


class Adjoint(LinearOperator):
    """The adjoint ``A^H`` as an operator; ``A.H.H is A``."""

    native_autograd = True

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.out_shape, op.in_shape)
        self.op = op

    @property
    def H(self) -> LinearOperator:
        return self.op

    def _forward(self, x):
        return self.op.adjoint(x)

    def _adjoint(self, y):
        return self.op.forward(y)

    def abs_row_sums(self, like):
        return self.op.abs_col_sums(like)

    def abs_col_sums(self, like):
        return self.op.abs_row_sums(like)

    def norm(self, *args, **kwargs) -> float:
        return self.op.norm(*args, **kwargs)


class Composed(LinearOperator):
    """``A @ B``: apply ``B`` then ``A``."""

    native_autograd = True

    def __init__(self, A: LinearOperator, B: LinearOperator) -> None:
        if tuple(A.in_shape) != tuple(B.out_shape):
            raise ValueError(f"A @ B: A.in_shape {A.in_shape} does not match B.out_shape {B.out_shape}")
        super().__init__(B.in_shape, A.out_shape)
        self.A, self.B = A, B

    def _forward(self, x):
        return self.A(self.B(x))

    def _adjoint(self, y):
        return self.B.adjoint(self.A.adjoint(y))


class Sum(LinearOperator):
    """``A + B`` with equal input and output shapes."""

    native_autograd = True

    def __init__(self, A: LinearOperator, B: LinearOperator) -> None:
        if A.in_shape != B.in_shape or A.out_shape != B.out_shape:
            raise ValueError(f"A + B: shapes differ: {A.in_shape}->{A.out_shape} vs "
                             f"{B.in_shape}->{B.out_shape}")
        super().__init__(A.in_shape, A.out_shape)
        self.A, self.B = A, B

    def _forward(self, x):
        return self.A(x) + self.B(x)

    def _adjoint(self, y):
        return self.A.adjoint(y) + self.B.adjoint(y)


class Scaled(LinearOperator):
    """``c * A`` for a Python scalar ``c``."""

    native_autograd = True

    def __init__(self, op: LinearOperator, c: float | complex) -> None:
        super().__init__(op.in_shape, op.out_shape)
        self.op, self.c = op, c

    @property
    def balanced_steps(self) -> bool:
        """As the scaled operator (Chambolle-Pock's step rule; scaling does not change it)."""
        return getattr(self.op, "balanced_steps", False)

    def _forward(self, x):
        return self.c * self.op(x)

    def _adjoint(self, y):
        c = self.c.conjugate() if isinstance(self.c, complex) else self.c
        return c * self.op.adjoint(y)

    def abs_row_sums(self, like):
        s = self.op.abs_row_sums(like)
        return None if s is None else abs(self.c) * s

    def abs_col_sums(self, like):
        s = self.op.abs_col_sums(like)
        return None if s is None else abs(self.c) * s

    def norm(self, *args, **kwargs) -> float:
        return abs(self.c) * self.op.norm(*args, **kwargs)


class Stack(LinearOperator):
    """``x -> (A_1 x, ..., A_n x)``: operators sharing an input, tuple output."""

    native_autograd = True

    def __init__(self, ops: Sequence[LinearOperator]) -> None:
        ops = list(ops)
        if not ops or any(op.in_shape != ops[0].in_shape for op in ops):
            raise ValueError("Stack: expected a non-empty list of operators with equal in_shape, "
                             f"got in_shapes {[op.in_shape for op in ops]}")
        super().__init__(ops[0].in_shape, tuple(op.out_shape for op in ops))
        self.ops = nn.ModuleList(ops)

    def _forward(self, x):
        return tuple(op(x) for op in self.ops)

    def _adjoint(self, y):
        return sum(op.adjoint(yi) for op, yi in zip(self.ops, y))

    def __getitem__(self, i: int) -> LinearOperator:
        return self.ops[i]

    def __len__(self) -> int:
        return len(self.ops)


class Identity(LinearOperator):
    """The identity on items of ``shape``."""

    native_autograd = True

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__(shape, shape)

    def _forward(self, x):
        return x.clone()

    def _adjoint(self, y):
        return y.clone()

    def abs_row_sums(self, like):
        return torch.ones((1, *self.out_shape), dtype=like.dtype, device=like.device)

    abs_col_sums = abs_row_sums

    def norm(self, *args, **kwargs) -> float:
        return 1.0


def per_item(t, ndim: int):
    """A number, or a ``(B,)`` tensor reshaped to ``(B, 1, ...)`` to broadcast against ``ndim``-D
    batched tensors; other tensors pass unchanged (step sizes and weights given per batch item)."""
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        return t.reshape((-1,) + (1,) * (ndim - 1))
    return t


def conjugate_gradient(apply, b: torch.Tensor, x: torch.Tensor, iterations: int, tol: float = 1e-10) -> torch.Tensor:
    """Batched conjugate gradients for a Hermitian positive-definite ``apply``, from ``x``.

    Stops after ``iterations`` or when every item's residual is below ``tol * ||b||``.
    """
    r = b - apply(x)
    p = r.clone()
    rr = inner(r, r)
    shape = (-1,) + (1,) * (x.ndim - 1)
    for _ in range(iterations):
        if bool((rr <= tol * tol * inner(b, b)).all()):
            break
        Ap = apply(p)
        alpha = rr / inner(p, Ap).clamp_min(1e-300)
        x = x + alpha.reshape(shape) * p
        r = r - alpha.reshape(shape) * Ap
        rr_new = inner(r, r)
        p = r + (rr_new / rr.clamp_min(1e-300)).reshape(shape) * p
        rr = rr_new
    return x
