r"""RED-Diff (Mardani, Song, Kautz, Vahdat, ICLR 2024): a diffusion prior as a regulariser of a
variational problem, for any ``LinearOperator``.

The posterior is approximated by ``N(mu, 0)`` and ``mu`` minimised by Adam over a descending
sequence of DDPM timesteps; at timestep ``t``, with ``eps ~ N(0, I)``,

.. math:: x_t = \sqrt{\bar\alpha_t}\,\mu + \sqrt{1-\bar\alpha_t}\,\varepsilon,\qquad
          \nabla_\mu = \lambda\,\frac{\sigma_t}{\alpha_t}\,\frac{\hat\varepsilon(x_t, t) - \varepsilon}{n}
                       + v\,s\,\frac{A^H (A\mu - y)}{m}

(``n`` pixels and ``m`` measurements per item: both terms are means, as in the reference code;
``sigma_t / alpha_t`` is the "linear" weighting, the VE noise level of ``t``; ``s`` the scale of a
``s * L2Fidelity`` data term, ``v`` the observation weight). The network is evaluated without
gradients: no back-propagation through it. ``eps_theta(x_t, t)`` is evaluated on the VE scale,
``DiffusionPrior.eps(mu + sigma_t eps, sigma_t)`` with ``sigma_t = VPSchedule.sigma(t)`` (the same
value as ``DiffusionPrior.eps_vp(x_t, t)``, without scaling ``x_t`` there and back).

What it converges to: for a prior ``N(m0, S^2 I)`` the expected regulariser gradient is
``lambda sigma_t^2 / (S^2 + sigma_t^2) (mu - m0) / n``, so at timesteps where ``sigma_t >> S`` the
fixed point is the minimiser of ``lambda / (2n) ||mu - m0||^2 + v s / (2m) ||A mu - y||^2``
(tested against that closed form). At small ``sigma_t`` the regulariser fades and the data term
takes over: the descending order ends on data consistency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from priors.diffusion import DiffusionPrior, VPSchedule, complex_noise
from recon.base import Solver, relative_change
from recon.params import check_integer, check_number
from recon.pnp import _least_squares
from recon.problem import Problem

__all__ = ["DiffusionSolver", "REDDiff", "REDDiffState"]


class DiffusionSolver(Solver):
    """What RED-Diff and DiffPIR share: a ``DiffusionPrior``, the DDPM schedule, the timesteps in the
    order they are used (one per iteration), the seed of the noise draws, and the problem they solve
    (a least-squares data term alone). Complex images (MRI) are welcome: the prior denoises their
    real and imaginary parts, and the noise is ``complex_noise``."""

    label = "a diffusion solver"

    def __init__(self, prior: DiffusionPrior, timesteps, schedule: VPSchedule | None, seed: int,
                 progress: bool, strictly_descending: bool = False) -> None:
        """``timesteps``: a sequence, or a function of the schedule giving the default ones (e.g.
        ``down_to_zero(steps)``); ``strictly_descending``: refuse any other order."""
        if not isinstance(prior, DiffusionPrior):
            raise TypeError(f"prior: expected a DiffusionPrior, got {type(prior).__name__}")
        self.schedule = schedule if schedule is not None else VPSchedule()
        chosen = timesteps(self.schedule) if callable(timesteps) else timesteps
        self.timesteps = [check_integer("timesteps", t, 0, self.schedule.steps - 1) for t in chosen]
        if not self.timesteps:
            raise ValueError("timesteps: expected at least one timestep, got none")
        if strictly_descending and any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise ValueError(f"timesteps: expected a strictly descending sequence, got {self.timesteps[:8]}")
        super().__init__(max_iter=len(self.timesteps), tol=0.0, progress=progress)
        self.prior, self.seed = prior, check_integer("seed", seed, 0)

    @staticmethod
    def down_to_zero(steps: int):
        """The samplers' default timesteps: ``steps`` of them evenly spaced from ``T - 1`` down to 0."""
        return lambda schedule: schedule.descending(check_integer("steps", steps, 1, schedule.steps))

    def _start(self, problem: Problem, x0: torch.Tensor) -> None:
        """Check the problem, keep its least-squares term (``self._fidelity``) and seed the noise draws
        (``self._generator``)."""
        found = _least_squares(problem.data)
        if found is None:
            raise TypeError(f"problem.data: {self.label} needs a least-squares data term L2Fidelity(A, y) (or "
                            f"s * it), got {type(problem.data).__name__}")
        if problem.prior is not None or problem.K is not None:
            raise ValueError(f"problem.prior: {self.label}'s regulariser is its DiffusionPrior; expected a problem "
                             "with a data term only")
        self._fidelity = found[0]
        try:  # every step needs A^H (a gradient, a data step or a projection): refuse before any work
            self._fidelity.A.adjoint(self._fidelity.y)
        except NotImplementedError:
            raise TypeError(f"A: {self.label} needs the operator's adjoint A^H, and "
                            f"{type(self._fidelity.A).__name__} (or an operator inside it) defines none "
                            "(implement _adjoint)") from None
        self._generator = torch.Generator(device=x0.device).manual_seed(self.seed)


@dataclass
class REDDiffState:
    """``mu`` (the leaf Adam updates), the optimiser, the index of the next timestep, the last relative
    change; ``x`` is ``mu`` without its gradient."""

    mu: torch.Tensor
    optimizer: torch.optim.Adam
    k: int
    relative_change: torch.Tensor

    @property
    def x(self) -> torch.Tensor:
        return self.mu.detach()


class REDDiff(DiffusionSolver):
    """RED-Diff on ``Problem(L2Fidelity(A, y))`` (or ``s * L2Fidelity``) with a ``DiffusionPrior``.

    Args:
        prior: the diffusion prior (its ``eps`` gives the DDPM noise prediction).
        steps: timesteps, ``schedule.timesteps(steps)`` (descending); ignored when ``timesteps`` is given.
        lam: the regulariser's weight (the reference code's ``grad_term_weight``).
        lr: Adam's learning rate (betas 0.9, 0.99, as in the reference code).
        obs_weight: the data term's weight ``v``.
        timesteps: an explicit sequence of timesteps, in the order they are used.
        schedule: the DDPM schedule (default: linear beta 1e-4 to 0.02, 1000 steps).
        seed: the noise draws' seed (the same seed gives the same result).
        progress: a progress bar over the timesteps.

    Defaults are the reference configuration (``_configs/algo/reddiff.yaml``: lambda 0.25, lr 0.1,
    50 steps from t = 1000).

    Example:
        >>> import torch
        >>> from operators import Identity
        >>> from priors import L2Fidelity
        >>> prior = DiffusionPrior(lambda x, s: x / (1 + s ** 2), preconditioned=False,   # x0 ~ N(0, I)
        ...                        sigma_range=(0.001, 200.0))
        >>> y = torch.ones(1, 1, 4, 4)
        >>> out = REDDiff(prior, steps=20).run(Problem(L2Fidelity(Identity((1, 4, 4)), y)), y)
        >>> out.n_iter, out.x.shape
        (20, torch.Size([1, 1, 4, 4]))
    """

    label = "RED-Diff"

    def __init__(self, prior: DiffusionPrior, steps: int = 50, lam: float = 0.25, lr: float = 0.1,
                 obs_weight: float = 1.0, timesteps=None, schedule: VPSchedule | None = None, seed: int = 0,
                 progress: bool = False) -> None:
        if timesteps is None:
            def timesteps(schedule):
                return schedule.timesteps(check_integer("steps", steps, 1, schedule.steps))
        super().__init__(prior, timesteps, schedule, seed, progress)
        self.lam = check_number("lam", lam, strict=False)
        self.lr = check_number("lr", lr)
        self.obs_weight = check_number("obs_weight", obs_weight, strict=False)

    def init(self, problem: Problem, x0: torch.Tensor) -> REDDiffState:
        self._start(problem, x0)
        mu = x0.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([mu], lr=self.lr, betas=(0.9, 0.99))
        return REDDiffState(mu, optimizer, 0, torch.zeros(x0.shape[0], device=x0.device))

    def gradient(self, problem: Problem, mu: torch.Tensor, t: int) -> torch.Tensor:
        """The update's gradient at timestep ``t`` (one noise draw)."""
        fidelity, scale = _least_squares(problem.data)
        sigma = float(self.schedule.sigma(t))  # sigma_t / alpha_t: x_t / alpha_t = mu + sigma eps
        eps = complex_noise(mu, self._generator)
        with torch.no_grad():
            eps_hat = self.prior.eps(mu + sigma * eps, sigma)  # = eps_theta(x_t, t), priors.diffusion
        n, m = mu[0].numel(), fidelity.y[0].numel()
        return self.lam * sigma * (eps_hat - eps) / n + (self.obs_weight * scale / m) * fidelity.grad(mu)

    def step(self, problem: Problem, state: REDDiffState) -> REDDiffState:
        t = self.timesteps[state.k]
        before = state.x.clone()
        state.mu.grad = self.gradient(problem, state.x, t)
        state.optimizer.step()
        state.relative_change = relative_change(state.x, before)
        state.k += 1
        return state
