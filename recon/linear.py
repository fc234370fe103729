"""Classical iterative least-squares solvers: CGLS, SIRT and Krylov Tikhonov.

CGLS and SIRT minimise ``1/2 ||A x - y||^2`` for a ``Problem`` whose data term is an
``L2Fidelity``; early stopping (``max_iter``) is the regularisation. Priors are
ignored (use ``ChambollePock`` for those); a ``NonNegativity``/``Box``
constraint is applied by SIRT after every step and rejected by CGLS, whose
Krylov recursion a projection would break. ``tikhonov`` adds a quadratic gradient
penalty (the fast pre-estimate ``Psi`` of graphLa+Tik).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from operators.base import LinearOperator, inner
from operators.finite_diff import FiniteDifference
from priors.data import L2Fidelity
from recon.base import Solver, relative_change
from recon.problem import Problem

__all__ = ["CGLS", "SIRT", "tikhonov", "TIKHONOV_ALPHA", "TIKHONOV_ITERATIONS"]

#: Tikhonov weight relative to ``||A||^2 / ||D||^2`` (unit-free), and the CG steps; from
#: docs/graphla_tik_study.py (256^2, 60 views, 1% noise)
TIKHONOV_ALPHA = 1e-2
TIKHONOV_ITERATIONS = 20


def _fidelity(problem: Problem, solver: str) -> L2Fidelity:
    if not isinstance(problem.data, L2Fidelity):
        raise TypeError(f"problem.data: {solver} needs an L2Fidelity data term, got {type(problem.data).__name__}")
    if problem.prior is not None:
        raise ValueError(f"problem.prior: {solver} solves plain least squares; use ChambollePock for priors")
    return problem.data


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


@dataclass
class CGLSState:
    x: torch.Tensor
    r: torch.Tensor
    p: torch.Tensor
    gamma: torch.Tensor
    gamma0: torch.Tensor
    relative_change: torch.Tensor


class CGLS(Solver):
    r"""Conjugate gradients on the normal equations ``A^H A x = A^H y`` (batched).

    .. math:: \min_x \tfrac12 \|A x - y\|_2^2

    Example:
        >>> import numpy as np, torch
        >>> from operators import ParallelBeam2D
        >>> from priors import L2Fidelity
        >>> A = ParallelBeam2D((32, 32), np.linspace(0, np.pi, 40, endpoint=False), 48)
        >>> x_true = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> r = CGLS(max_iter=200, tol=1e-6).run(Problem(L2Fidelity(A, A(x_true))), torch.zeros_like(x_true))
        >>> bool((r.x - x_true).norm() < 0.05 * x_true.norm())
        True
    """

    #: an item stops once ||A^T r||^2 <= FREEZE * ||A^T r_0||^2: below that, float32 projectors
    #: (ASTRA) return round-off and further steps would make the iterate drift
    FREEZE = 1e-12

    def __init__(self, max_iter: int = 30, tol: float = 0.0, objective_every: int = 0, progress: bool = False):
        super().__init__(max_iter, tol, objective_every, progress)

    def converged(self, state: CGLSState) -> bool:
        return bool((state.gamma <= self.FREEZE * state.gamma0).all()) or super().converged(state)

    def init(self, problem: Problem, x0: torch.Tensor) -> CGLSState:
        if problem.constraint is not None:
            raise ValueError("problem.constraint: CGLS cannot apply constraints; use SIRT or ChambollePock")
        f = _fidelity(problem, "CGLS")
        r = f.y - f.A(x0)
        p = f.A.adjoint(r)
        gamma = inner(p, p)
        return CGLSState(x0.clone(), r, p, gamma, gamma.clone(), torch.full((x0.shape[0],), float("inf")))

    def step(self, problem: Problem, s: CGLSState) -> CGLSState:
        A = problem.data.A
        q = A(s.p)
        active = s.gamma > self.FREEZE * s.gamma0
        alpha = torch.where(active, s.gamma / inner(q, q).clamp_min(1e-300), torch.zeros_like(s.gamma))
        x = s.x + _bcast(alpha, s.x) * s.p
        r = s.r - _bcast(alpha, s.r) * q
        g = A.adjoint(r)
        gamma = torch.where(active, inner(g, g), s.gamma)
        p = torch.where(_bcast(active, g), g + _bcast(gamma / s.gamma.clamp_min(1e-300), g) * s.p, s.p)
        return CGLSState(x, r, p, gamma, s.gamma0, relative_change(x, s.x))


@dataclass
class SIRTState:
    x: torch.Tensor
    relative_change: torch.Tensor
    R: torch.Tensor  # 1 / (A 1), 0 where a ray touches nothing
    C: torch.Tensor  # 1 / (A^T 1), 0 where a pixel is seen by no ray


class SIRT(Solver):
    r"""Simultaneous iterative reconstruction technique (Gilbert 1972), as in ASTRA.

    .. math:: x^{k+1} = P_G\big(x^k + C A^T R (y - A x^k)\big),\quad R = 1/(A 1),\; C = 1/(A^T 1)

    Example:
        >>> import numpy as np, torch
        >>> from operators import ParallelBeam2D
        >>> from priors import L2Fidelity, NonNegativity
        >>> A = ParallelBeam2D((32, 32), np.linspace(0, np.pi, 40, endpoint=False), 48)
        >>> x_true = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> p = Problem(L2Fidelity(A, A(x_true)), constraint=NonNegativity())
        >>> r = SIRT(max_iter=300).run(p, torch.zeros_like(x_true))
        >>> bool((r.x - x_true).norm() < 0.2 * x_true.norm())
        True
    """

    def __init__(self, max_iter: int = 100, tol: float = 0.0, objective_every: int = 0, progress: bool = False):
        super().__init__(max_iter, tol, objective_every, progress)

    def init(self, problem: Problem, x0: torch.Tensor) -> SIRTState:
        A = _fidelity(problem, "SIRT").A
        rows, cols = A.abs_row_sums(x0), A.abs_col_sums(x0)
        if rows is None or cols is None:
            raise TypeError(f"problem.data.A: SIRT needs abs_row_sums/abs_col_sums, which "
                            f"{type(A).__name__} does not provide")
        R = torch.where(rows > 0, 1.0 / rows.clamp_min(1e-30), torch.zeros_like(rows))
        C = torch.where(cols > 0, 1.0 / cols.clamp_min(1e-30), torch.zeros_like(cols))
        x = problem.constraint.prox(x0, 1.0) if problem.constraint is not None else x0.clone()
        return SIRTState(x, torch.full((x0.shape[0],), float("inf")), R, C)

    def step(self, problem: Problem, s: SIRTState) -> SIRTState:
        f = problem.data
        x = s.x + s.C * f.A.adjoint(s.R * (f.y - f.A(s.x)))
        if problem.constraint is not None:
            x = problem.constraint.prox(x, 1.0)
        return SIRTState(x, relative_change(x, s.x), s.R, s.C)


def tikhonov(A: LinearOperator, y: torch.Tensor, alpha: float | None = None,
             iterations: int = TIKHONOV_ITERATIONS, tol: float = 1e-6) -> torch.Tensor:
    r"""Krylov Tikhonov with a gradient penalty: conjugate gradients on the normal equations, from 0.

    .. math:: \min_x \tfrac12\|A x - y\|_2^2 + \tfrac{\alpha}{2}\|\nabla x\|_2^2
              \iff (A^H A + \alpha \nabla^T \nabla)\, x = A^H y

    Few steps (20 by default) and the penalty together regularise, as in the graphLa+Tik
    pre-estimate of Bianchi et al. Batched: every item runs its own CG recursion.

    Args:
        A: the forward operator (images ``(C, H, W)`` or volumes ``(C, D, H, W)``).
        y: data ``(B, *A.out_shape)``.
        alpha: the penalty weight; None: ``TIKHONOV_ALPHA * ||A||^2 / ||D||^2`` with
            ``||D||^2 = 4 d`` the bound for ``d`` image axes, so pixel size and units drop out.
        iterations: CG steps (a positive integer).
        tol: an item stops once its residual is below ``tol`` times the right-hand side.

    Example:
        >>> import numpy as np
        >>> from operators import ParallelBeam2D
        >>> from data.phantoms import shepp_logan
        >>> A = ParallelBeam2D((64, 64), np.linspace(0, np.pi, 30, endpoint=False), 92)
        >>> x = shepp_logan(64)
        >>> x_tik = tikhonov(A, A(x))
        >>> x_tik.shape, bool((x_tik - x).norm() < 0.5 * x.norm())
        (torch.Size([1, 1, 64, 64]), True)
    """
    if not isinstance(A, LinearOperator):
        raise TypeError(f"A: expected a LinearOperator, got {type(A).__name__}")
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations: expected a positive integer, got {iterations}")
    D = FiniteDifference(A.in_shape, ndim=len(A.in_shape) - 1)
    if alpha is None:
        alpha = TIKHONOV_ALPHA * A.norm(device=y.device) ** 2 / (4 * (len(A.in_shape) - 1))
    if not float(alpha) >= 0:
        raise ValueError(f"alpha: expected a non-negative weight, got {alpha}")

    def normal(v):
        return A.adjoint(A(v)) + alpha * D.adjoint(D(v))

    b = A.adjoint(y)
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rs = inner(r, r)
    stop = (tol ** 2) * rs
    for _ in range(int(iterations)):
        active = rs > stop
        if not bool(active.any()):
            break
        q = normal(p)
        step = torch.where(active, rs / inner(p, q).clamp_min(1e-300), torch.zeros_like(rs))
        x = x + _bcast(step, x) * p
        r = r - _bcast(step, r) * q
        rs_new = inner(r, r)
        p = torch.where(_bcast(active, p), r + _bcast(rs_new / rs.clamp_min(1e-300), p) * p, p)
        rs = torch.where(active, rs_new, rs)
    return x
