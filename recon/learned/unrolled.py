r"""Unrolled solvers: a fixed number of an existing solver's steps, each layer with its own learnable parameters.

``Unrolled(solver, layers, learn=("eta",))`` runs ``solver.init`` once and then ``layers`` calls of
``solver.step``, scaling the named fields of the solver's state by a multiplier ``m(theta_t)`` in layer
``t`` (``exp(theta)``, or ``b sigmoid(theta - log(b - 1))`` below a bound ``b``; ``theta`` starts at 0,
where ``m = 1``); with ``learn_prior_weight`` the prior's weight ``lam`` is scaled by ``exp(phi_t)``.
Parameterised as multipliers of the classical values, the steps stay positive (and below the bound)
and start where the classical solver is: **at initialisation (or frozen) the network is the
classical solver**, bit for bit, which the tests check. Autograd runs through every step (operators, proxes), so
the parameters train by any loss on the output: ``supervised_loss`` (to the truth) or
``unsupervised_loss`` (the problem's own objective at the output, no ground truth needed).

``UnrolledISTA`` is the unrolled proximal gradient (``recon.pnp.PnPProximalGradient``): per layer a
step ``alpha_t`` (and optionally a threshold weight ``lam_t``), with the ``l1`` prox (soft threshold:
DU-ISTA) or the ``l0`` prox (hard threshold: DU-IHT), as in Nagahisa, Hayakawa & Iiguni
(arXiv 2509.01331).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from priors import L1Norm
from priors.base import ScaledFunctional
from priors.sparsity import L0Norm
from recon.base import Solver
from recon.pnp import PnPProximalGradient
from recon.problem import Problem

__all__ = ["Unrolled", "UnrolledISTA", "supervised_loss", "unsupervised_loss", "objective"]

PROXES = {"l1": L1Norm, "l0": L0Norm}


class Unrolled(nn.Module):
    r"""``layers`` steps of ``solver`` as a network with per-layer multipliers of its step parameters.

    Layer ``t`` runs ``solver.step`` on the state with each field ``f`` in ``learn`` replaced by
    ``f * m(theta_f[t])`` and, with ``learn_prior_weight``, on the problem with its prior
    ``lam * g`` replaced by ``lam * exp(phi[t]) * g``.

    Args:
        solver: a ``recon.base.Solver`` whose ``step`` is differentiable (its state a dataclass).
        layers: number of steps ``T``.
        learn: names of state fields to learn per layer (e.g. ``"eta"`` of ``PnPProximalGradient``).
        bounds: an upper bound ``b > 1`` on a field's multiplier, by name (e.g. ``{"eta": 2.0}``: a
            gradient step below ``2 / L``, where proximal gradient stays stable); unbounded otherwise.
            With ``b = 2`` the untrained multiplier is exactly 1.
        learn_prior_weight: also learn a per-layer multiplier of the prior's weight (the prior must be
            ``lam * g``).
        checkpoint: recompute each layer in the backward pass instead of storing it (memory for time).

    Example:
        >>> from operators.matrix import MatrixOperator
        >>> from priors import L1Norm, L2Fidelity
        >>> A = MatrixOperator(torch.randn(20, 40, generator=torch.Generator().manual_seed(0)))
        >>> y = A(torch.zeros(1, 40).index_fill_(1, torch.tensor([3, 17]), 1.0))
        >>> problem = Problem(L2Fidelity(A, y), 0.1 * L1Norm())
        >>> net = Unrolled(PnPProximalGradient(tol=0), layers=30, learn=("eta",))
        >>> classical = PnPProximalGradient(max_iter=30, tol=0).run(problem, torch.zeros(1, 40)).x
        >>> torch.equal(net(problem, torch.zeros(1, 40)), classical)
        True
    """

    def __init__(self, solver: Solver, layers: int, learn: Sequence[str] = (), learn_prior_weight: bool = False,
                 checkpoint: bool = False, bounds: dict[str, float] | None = None) -> None:
        super().__init__()
        if not isinstance(solver, Solver):
            raise TypeError(f"solver: expected a recon.base.Solver, got {type(solver).__name__}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers: expected a positive integer, got {layers!r}")
        if isinstance(learn, str):
            learn = (learn,)
        self.solver, self.layers, self.learn = solver, layers, tuple(learn)
        self.bounds = dict(bounds or {})
        for name, b in self.bounds.items():
            if name not in self.learn or isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 1:
                raise ValueError(f"bounds: expected a bound > 1 for a learned field, got {name!r}: {b!r}")
        self.thetas = nn.ParameterDict({name: nn.Parameter(torch.zeros(layers)) for name in self.learn})
        self.log_prior_weight = nn.Parameter(torch.zeros(layers)) if learn_prior_weight else None
        self.checkpoint = bool(checkpoint)

    def multipliers(self, name: str) -> torch.Tensor:
        """The per-layer multipliers ``exp(theta)`` of a learned field (``"prior_weight"`` for the prior's)."""
        if name == "prior_weight":
            if self.log_prior_weight is None:
                raise KeyError("name: the prior's weight is not learned (learn_prior_weight=False)")
            return self.log_prior_weight.detach().exp()
        return self._multiplier(name, self.thetas[name].detach())

    def _multiplier(self, name: str, theta: torch.Tensor) -> torch.Tensor:
        # in float64, as the classical solver's Python-float steps are: untrained, bit for bit
        theta = theta.double()
        b = self.bounds.get(name)
        return theta.exp() if b is None else b * torch.sigmoid(theta - math.log(b - 1.0))

    def forward(self, problem: Problem, x0: torch.Tensor, iterates: bool = False):
        """``x_T`` (and, with ``iterates``, the list ``[x_1, ..., x_T]``)."""
        with torch.no_grad():
            state = self.solver.init(problem, x0)
        names = {f.name for f in fields(state)}
        missing = [n for n in self.learn if n not in names]
        if missing:
            raise ValueError(f"learn: {type(self.solver).__name__}'s state has no field(s) {missing}; "
                             f"it has {sorted(names)}")
        base = {n: getattr(state, n) for n in self.learn}
        weighted = problem.prior
        if self.log_prior_weight is not None and not isinstance(weighted, ScaledFunctional):
            raise TypeError("problem.prior: learn_prior_weight needs a weighted prior lam * g, got "
                            f"{type(weighted).__name__}")
        xs = []
        for t in range(self.layers):
            state = replace(state, **{n: base[n] * self._multiplier(n, self.thetas[n][t]) for n in self.learn})
            layer_problem = problem
            if self.log_prior_weight is not None:
                layer_problem = replace(problem, prior=ScaledFunctional(weighted.f, weighted.lam
                                                                        * self.log_prior_weight[t].double().exp()))
            if self.checkpoint and torch.is_grad_enabled():
                state = checkpoint(self.solver.step, layer_problem, state, use_reentrant=False)
            else:
                state = self.solver.step(layer_problem, state)
            if iterates:
                xs.append(state.x)
        return (state.x, xs) if iterates else state.x


class UnrolledISTA(Unrolled):
    r"""Unrolled ISTA / IHT for ``min 1/2 ||A x - y||^2 + lam R(x)``, ``R`` the ``l1`` or ``l0`` norm.

    .. math:: x_{t+1} = \operatorname{prox}_{\alpha_t \lambda_t R}\big(x_t - \alpha_t A^H (A x_t - y)\big),
              \quad \alpha_t = 2\,\mathrm{sigmoid}(\theta_t) / \|A\|^2, \ \lambda_t = e^{\phi_t} \lambda

    By default each step stays in ``(0, 2 / ||A||^2)``, where the gradient step is non-expansive, so no
    training can make a layer amplify its input. ``||A||`` is the batch's largest norm for a matrix per
    item, so a larger step may suit most problems of a batch: ``step_bound=None`` allows it, at the
    risk of divergence.

    Args:
        layers: number of layers ``T``.
        lam: the weight ``lam``.
        prox: ``"l1"`` (soft threshold) or ``"l0"`` (hard threshold at ``sqrt(2 alpha_t lam_t)``).
        learn_threshold: also learn ``lam_t`` (else only the steps ``alpha_t``).
        checkpoint: gradient checkpointing per layer.
        step_bound: the largest multiple of the classical step a layer may take (default 2: below
            ``2 / ||A||^2``); None for ``alpha_t = exp(theta_t) / ||A||^2``, unbounded.

    ``problem(A, y)`` builds the problem the network solves (also the one ``unsupervised_loss``
    evaluates); ``forward(A, y, x0=None)`` starts from zeros. The classical step ``1 / ||A||^2`` is the
    solver's; with a matrix per item (``operators.matrix.MatrixOperator``) it is ``1 / max_b ||A_b||^2``,
    one step for the batch.

    Example:
        >>> from operators.matrix import MatrixOperator
        >>> A = MatrixOperator(torch.randn(20, 40, generator=torch.Generator().manual_seed(0)))
        >>> y = A(torch.zeros(1, 40).index_fill_(1, torch.tensor([3, 17]), 1.0))
        >>> net = UnrolledISTA(layers=10, lam=0.1)
        >>> x = net(A, y)
        >>> loss = unsupervised_loss(net.problem(A, y), x)
        >>> loss.backward()
        >>> tuple(net.thetas["eta"].grad.shape)
        (10,)
    """

    def __init__(self, layers: int, lam: float, prox: str = "l1", learn_threshold: bool = False,
                 checkpoint: bool = False, step_bound: float | None = 2.0) -> None:
        if prox not in PROXES:
            raise ValueError(f"prox: expected one of {', '.join(PROXES)}, got {prox!r}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam > 0:
            raise ValueError(f"lam: expected a number > 0, got {lam!r}")
        super().__init__(PnPProximalGradient(tol=0.0), layers, learn=("eta",), learn_prior_weight=learn_threshold,
                         checkpoint=checkpoint, bounds=None if step_bound is None else {"eta": step_bound})
        self.lam, self.prox_name = float(lam), prox

    def problem(self, A, y: torch.Tensor) -> Problem:
        from priors import L2Fidelity

        return Problem(L2Fidelity(A, y), self.lam * PROXES[self.prox_name]())

    def forward(self, A, y: torch.Tensor, x0: torch.Tensor | None = None, iterates: bool = False):
        if x0 is None:
            x0 = torch.zeros((y.shape[0], *A.in_shape), dtype=y.real.dtype if not y.is_complex() else y.dtype,
                             device=y.device)
        return super().forward(self.problem(A, y), x0, iterates)

    def extra_repr(self) -> str:
        return f"layers={self.layers}, lam={self.lam}, prox={self.prox_name!r}"


def objective(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """``problem.objective`` per item, differentiable (data term plus prior; the constraint is not added)."""
    value = problem.data.value(x)
    if problem.prior is not None:
        value = value + problem.prior.value(problem.K(x) if problem.K is not None else x)
    return value


def supervised_loss(x: torch.Tensor, x_true: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||x - x_true||^2``."""
    return (x - x_true).abs().pow(2).flatten(1).sum(1).mean()


def unsupervised_loss(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the problem's objective at ``x``: no ground truth needed."""
    return objective(problem, x).mean()
