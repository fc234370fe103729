r"""Plug-and-play solvers: ADMM and proximal gradient with any prior that has a prox.

The prior is anything with ``prox(x, tau)``: a convex prior (``L1Norm``, ``TV``), a
``DenoiserPrior`` (``prox`` = denoiser at ``sigma = sqrt(lam * tau)``), its fixed-noise form
``prior.at(sigma)`` or a learned proximal network whose prox ignores ``tau``. With a convex
prior whose prox is exact both solvers converge to the minimiser of
``data(x) + prior(x) + constraint(x)``; with a denoiser they are the usual PnP fixed-point
iterations, without that guarantee.

The data scale ``s`` of the LPN paper (``f = s/2 ||A x - y||^2``) is written in the problem,
``Problem(s * L2Fidelity(A, y), prior)``, so that ``Problem.objective`` agrees with what is
solved. A ``Problem.constraint`` (``NonNegativity``, ``Box``) is applied after the prior's prox
(the clipping of PnP codes). That composition is the prox of the sum when both are separable
(``L1Norm`` with a box: clamp after soft thresholding); for other priors it is a projection
heuristic. ``Problem.K`` must be None: the prior's prox acts on the image itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators.base import conjugate_gradient
from priors.base import Functional, ScaledFunctional, Zero
from priors.data import L2Fidelity
from recon.base import Solver, relative_change
from recon.problem import Problem

__all__ = ["PnPADMM", "PnPADMMState", "PnPProximalGradient", "PnPProximalGradientState"]


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _least_squares(data: Functional) -> tuple[L2Fidelity, float] | None:
    """``(fidelity, s)`` when the data term is ``s * L2Fidelity`` (``s = 1`` unscaled), else None."""
    if isinstance(data, L2Fidelity):
        return data, 1.0
    if isinstance(data, ScaledFunctional) and isinstance(data.f, L2Fidelity):
        return data.f, data.lam
    return None


def _prior(problem: Problem) -> Functional:
    """The prior (``Zero`` if none), after checking PnP can use it."""
    if problem.K is not None:
        raise ValueError("problem.K: PnP solvers apply the prior's prox to the image itself; expected K=None, "
                         f"got {type(problem.K).__name__}")
    prior = problem.prior if problem.prior is not None else Zero()
    if not prior.has_prox:
        raise TypeError(f"problem.prior: PnP needs a prior with a prox (has_prox), got {type(prior).__name__}")
    return prior


def _project(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    return x if problem.constraint is None else problem.constraint.prox(x, 1.0)


def _check_x0(problem: Problem, x0: torch.Tensor) -> None:
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0: expected a torch.Tensor, got {type(x0).__name__}")
    ls = _least_squares(problem.data)
    if ls is not None:
        fid = ls[0]
        expected = (fid.y.shape[0], *fid.A.in_shape)
        if tuple(x0.shape) != expected:
            raise ValueError(f"x0: expected shape {expected} (the data's batch and the operator's input), "
                             f"got {tuple(x0.shape)}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0: contains NaN or Inf values")


def _unknown_change(x0: torch.Tensor) -> torch.Tensor:
    """The relative change before the first step: infinity per item."""
    return torch.full((x0.shape[0],), math.inf, device=x0.device)


def _weighted_normal(fid: L2Fidelity, p: torch.Tensor) -> torch.Tensor:
    """``A^H W A p``."""
    w = fid.distance.weight
    return fid.A.normal(p) if w is None else fid.A.adjoint(w * fid.A(p))


def _admm_change(x: torch.Tensor, x_old: torch.Tensor, u: torch.Tensor, u_old: torch.Tensor) -> torch.Tensor:
    """``max(||x - x_old||, ||u - u_old||) / ||x_old||`` per item: the estimate's change and the primal
    residual ``w - x`` (the dual step). The estimate alone can stall while the dual still moves
    (measured on L1 denoising: a step with exactly zero change of ``x`` at 1e-5 from the minimiser)."""
    norm = lambda t: torch.linalg.vector_norm(t.flatten(1), dim=1)  # noqa: E731
    return torch.maximum(norm(x - x_old), norm(u - u_old)) / norm(x_old).clamp_min(1e-30)


@dataclass
class PnPADMMState:
    """ADMM variables: the estimate ``x`` (prior step, the paper's ``z``), the data step ``w`` (the
    paper's ``x``), the scaled dual ``u``, the last relative change (of ``x`` and ``u``, relative to
    ``||x||``), and ``A^H W y`` for the conjugate-gradient data step (None when the data term's own
    prox is used)."""

    x: torch.Tensor
    w: torch.Tensor
    u: torch.Tensor
    relative_change: torch.Tensor
    data_rhs: torch.Tensor | None = None


class PnPADMM(Solver):
    r"""Plug-and-play ADMM (scaled form) for ``s/2 ||A w - y||^2 + g(x)`` subject to ``w = x``.

    .. math:: w^{k+1} = \arg\min_w \tfrac{s}{2}\|A w - y\|^2 + \tfrac{\rho}{2}\|w - x^k + u^k\|^2,\quad
              u^{k+1} = u^k + w^{k+1} - x^k,\quad
              x^{k+1} = P_C\big(\operatorname{prox}_{g/\rho}(w^{k+1} + u^{k+1})\big)

    The update order data -> dual -> prior is the LPN paper's (its ``x -> u -> z``); with
    ``v = x - u`` it is Douglas-Rachford splitting ``v <- v + prox_g(2 prox_f(v) - v) - prox_f(v)``,
    which for convex ``f, g`` converges to a minimiser of ``f + g`` for every ``rho > 0``. The
    estimate returned is ``x`` (the prior step, so it satisfies the constraint); ``w`` is the
    data-consistent iterate (``state.w``). They coincide at convergence.

    The data step solves ``(s A^H W A + rho I) w = s A^H W y + rho (x - u)``: in closed form when
    ``L2Fidelity.has_fast_prox`` (circular blur, Cartesian MRI), else by conjugate gradients
    warm-started at the previous ``w``. Any other data term uses its own ``prox(., 1 / rho)``.

    Args:
        rho: penalty ``> 0``, in the units of ``s ||A||^2``; with a ``DenoiserPrior`` it sets the
            noise level ``sigma = sqrt(lam / rho)``.
        max_iter: iteration cap.
        tol: stop when, for every item, the changes of ``x`` and of ``u`` (the primal residual
            ``w - x``) are below ``tol * ||x||`` (0 disables).
        cg_iterations: conjugate-gradient steps per data step (the LPN paper uses 30).
        cg_tol: CG stops once every item's residual is below ``cg_tol`` times its right-hand side.
            Warm-started CG then does no step once the iterates move less than that, so the
            attainable accuracy is about ``cg_tol`` (relative): lower it for tight solutions.
        objective_every: record ``problem.objective`` every this many iterations (0: never; the
            prior needs a value).
        progress: show a progress bar.

    Example:
        >>> import torch
        >>> from operators import Blur, gaussian_kernel
        >>> from priors import L1Norm, L2Fidelity
        >>> A = Blur(gaussian_kernel(0.7), (16, 16))
        >>> x_true = torch.zeros(1, 1, 16, 16); x_true[..., 4, 4] = x_true[..., 10, 12] = 1.0
        >>> problem = Problem(L2Fidelity(A, A(x_true)), 1e-3 * L1Norm())
        >>> x = PnPADMM(rho=0.1, max_iter=100).run(problem, A.H(A(x_true))).x
        >>> bool((x - x_true).norm() < 0.05 * x_true.norm())
        True
    """

    def __init__(self, rho: float = 1.0, max_iter: int = 100, tol: float = 1e-5, cg_iterations: int = 30,
                 cg_tol: float = 1e-5, objective_every: int = 0, progress: bool = False) -> None:
        super().__init__(max_iter, tol, objective_every, progress)
        self.rho = _positive("rho", rho)
        if isinstance(cg_iterations, bool) or not isinstance(cg_iterations, int) or cg_iterations < 1:
            raise ValueError(f"cg_iterations: expected a positive integer, got {cg_iterations!r}")
        if not 0 <= cg_tol < math.inf:
            raise ValueError(f"cg_tol: expected a finite number >= 0, got {cg_tol!r}")
        self.cg_iterations, self.cg_tol = cg_iterations, float(cg_tol)

    def init(self, problem: Problem, x0: torch.Tensor) -> PnPADMMState:
        _prior(problem)
        _check_x0(problem, x0)
        ls = _least_squares(problem.data)
        if ls is None and not problem.data.has_prox:
            raise TypeError(f"problem.data: PnPADMM needs an L2Fidelity or a data term with a prox, "
                            f"got {type(problem.data).__name__}")
        rhs = None
        if ls is not None and not ls[0].has_fast_prox:
            fid = ls[0]
            w = fid.distance.weight
            rhs = fid.A.adjoint(fid.y if w is None else w * fid.y).to(x0.dtype)
        x = _project(problem, x0.clone())
        return PnPADMMState(x, x0.clone(), torch.zeros_like(x0), _unknown_change(x0), rhs)

    def step(self, problem: Problem, state: PnPADMMState) -> PnPADMMState:
        w = self._data_step(problem, state)
        u = state.u + w - state.x
        x = _project(problem, _prior(problem).prox(w + u, 1.0 / self.rho))
        return PnPADMMState(x, w, u, _admm_change(x, state.x, u, state.u), state.data_rhs)

    def _data_step(self, problem: Problem, state: PnPADMMState) -> torch.Tensor:
        """``prox_{f / rho}(x - u)`` for the data term ``f``."""
        v = state.x - state.u
        ls = _least_squares(problem.data)
        if state.data_rhs is None:
            return ls[0].prox(v, ls[1] / self.rho) if ls is not None else problem.data.prox(v, 1.0 / self.rho)
        fid, tau = ls[0], ls[1] / self.rho
        apply = lambda p: p + tau * _weighted_normal(fid, p)  # noqa: E731
        return conjugate_gradient(apply, v + tau * state.data_rhs, state.w, self.cg_iterations, self.cg_tol)


@dataclass
class PnPProximalGradientState:
    """The iterate ``x``, its last relative change and the step ``eta`` of this run."""

    x: torch.Tensor
    relative_change: torch.Tensor
    eta: float


class PnPProximalGradient(Solver):
    r"""Plug-and-play proximal gradient (PnP-ISTA / PnP-PGD).

    .. math:: x^{k+1} = P_C\big(\operatorname{prox}_{\eta g}(x^k - \eta \nabla f(x^k))\big)

    With a convex prior whose prox is exact and ``eta < 2 / L`` (``L`` the Lipschitz constant of
    ``grad f``) it converges to a minimiser of ``f + g``. The LPN paper's PnP-PGD is this with a
    learned prox, ``eta = 2`` and a ``Box(0, 1)`` constraint.

    Args:
        eta: step size ``> 0``; None: ``1 / (s ||A||^2 max W)`` for ``s * L2Fidelity(A, y, W)``,
            from the operator's cached norm (other data terms need an explicit ``eta``).
        max_iter: iteration cap.
        tol: stop when every item's relative change is below ``tol`` (0 disables).
        objective_every: record ``problem.objective`` every this many iterations (0: never).
        progress: show a progress bar.

    Example:
        >>> import torch
        >>> from operators import Blur, gaussian_kernel
        >>> from priors import L1Norm, L2Fidelity
        >>> A = Blur(gaussian_kernel(0.7), (16, 16))
        >>> x_true = torch.zeros(1, 1, 16, 16); x_true[..., 4, 4] = x_true[..., 10, 12] = 1.0
        >>> problem = Problem(L2Fidelity(A, A(x_true)), 1e-3 * L1Norm())
        >>> x = PnPProximalGradient(max_iter=500).run(problem, torch.zeros_like(x_true)).x
        >>> bool((x - x_true).norm() < 0.05 * x_true.norm())
        True
    """

    def __init__(self, eta: float | None = None, max_iter: int = 100, tol: float = 1e-5,
                 objective_every: int = 0, progress: bool = False) -> None:
        super().__init__(max_iter, tol, objective_every, progress)
        self.eta = None if eta is None else _positive("eta", eta)

    def step_size(self, problem: Problem, x0: torch.Tensor) -> float:
        """``eta``, or ``1 / L`` with ``L = s ||A||^2 max W`` for a least-squares data term."""
        if self.eta is not None:
            return self.eta
        ls = _least_squares(problem.data)
        if ls is None:
            raise TypeError(f"eta: no default step for a {type(problem.data).__name__} data term (it needs "
                            "s * L2Fidelity to bound the gradient's Lipschitz constant); give eta")
        fid, s = ls
        w = fid.distance.weight
        lipschitz = s * fid.A.norm(device=x0.device) ** 2 * (1.0 if w is None else float(w.max()))
        if not lipschitz > 0:
            raise ValueError(f"eta: cannot derive a step, the data term's Lipschitz constant is {lipschitz}")
        return 1.0 / lipschitz

    def init(self, problem: Problem, x0: torch.Tensor) -> PnPProximalGradientState:
        _prior(problem)
        _check_x0(problem, x0)
        if not problem.data.has_grad:
            raise TypeError(f"problem.data: PnPProximalGradient needs a smooth data term (has_grad), "
                            f"got {type(problem.data).__name__}")
        eta = self.step_size(problem, x0)
        return PnPProximalGradientState(_project(problem, x0.clone()), _unknown_change(x0), eta)

    def step(self, problem: Problem, state: PnPProximalGradientState) -> PnPProximalGradientState:
        eta = state.eta
        x = _prior(problem).prox(state.x - eta * problem.data.grad(state.x), eta)
        x = _project(problem, x)
        return PnPProximalGradientState(x, relative_change(x, state.x), eta)
