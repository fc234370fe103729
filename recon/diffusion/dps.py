r"""Diffusion posterior sampling (DPS; Chung, Kim, Mccann, Klasky, Ye, ICLR 2023) for any
least-squares data term.

Over descending DDPM timesteps ``t`` (then ``t'``), from ``x_T ~ N(0, I)`` on the VP scale::

    x0      = D(x_t / sqrt(abar_t), sigma_t)                      one network evaluation, with gradient
    r       = sqrt(2 f(x0)) = ||A x0 - y|| (times sqrt(s) for s * L2Fidelity)
    eps_hat = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)
    x_t'    = sqrt(abar_t') x0 + sqrt(1 - abar_t' - c^2) eps_hat + c n  -  zeta grad_{x_t} r

(``n ~ N(0, I)``; ``c^2 = (1 - abar_t') / (1 - abar_t) (1 - abar_t / abar_t')``, the DDPM posterior's
variance, so consecutive timesteps give DDPM's ancestral step and fewer timesteps its DDIM (eta = 1)
form). The gradient of the residual norm (not its square) with a constant ``zeta`` is the paper's
step ``zeta_i = zeta' / ||y - A x0||`` applied to the squared norm. The result is the last ``x0``.
The network is evaluated once per step, and differentiated once through (``torch.autograd.grad``
with respect to ``x_t`` only: the network's weights take no gradient).

DPS is an approximation: it treats ``p(y | x_t)`` as ``p(y | x0 = E[x0 | x_t])``. With an exact
Gaussian prior its samples are off the exact posterior by a fraction of its std in the mean and are
too narrow (``docs/posterior_gaussian_toy.py``); tests compare it with an independent
implementation of the same algorithm, not with the posterior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from priors.diffusion import DiffusionPrior, VPSchedule, complex_noise, eps_from_denoiser
from recon.base import relative_change
from recon.diffusion.red_diff import DiffusionSolver
from recon.params import check_number
from recon.problem import Problem

__all__ = ["DPS", "DPSState"]


@dataclass
class DPSState:
    """``x`` (the latest ``x0``), ``x_t`` (the VP iterate), the index of the next timestep, the last
    relative change of ``x``."""

    x: torch.Tensor
    x_t: torch.Tensor
    k: int
    relative_change: torch.Tensor


class DPS(DiffusionSolver):
    """DPS on ``Problem(L2Fidelity(A, y))`` (or ``s * L2Fidelity``) with a ``DiffusionPrior``.

    Args:
        prior: the diffusion prior.
        steps: timesteps, evenly spaced from ``T - 1`` down to 0; ignored when ``timesteps`` is given.
        zeta: the guidance step ``zeta'`` (the paper's 0.3 to 1 by task).
        timesteps: an explicit descending sequence of timesteps.
        schedule: the DDPM schedule (default: linear beta 1e-4 to 0.02, 1000 steps).
        seed: the seed of the start and of the noise draws (the same seed gives the same samples).
        progress: a progress bar over the timesteps.

    Example:
        >>> import torch
        >>> from operators import Identity
        >>> from priors import L2Fidelity
        >>> prior = DiffusionPrior(lambda x, s: x / (1 + s ** 2), preconditioned=False,   # x0 ~ N(0, I)
        ...                        sigma_range=(0.001, 200.0))
        >>> y = torch.ones(64, 1, 4, 4)                       # 64 chains, each y = x + noise
        >>> out = DPS(prior, steps=100, zeta=0.5).run(Problem(L2Fidelity(Identity((1, 4, 4)), y)), y)
        >>> out.x.shape, round(float(out.x.mean()), 2)      # from the prior's mean 0 to the data
        (torch.Size([64, 1, 4, 4]), 1.0)

    The guidance knows no noise level: here the exact posterior mean is 0.5, and DPS fits the
    data (the step ``zeta`` alone sets how hard).
    """

    label = "DPS"

    def __init__(self, prior: DiffusionPrior, steps: int = 1000, zeta: float = 1.0, timesteps=None,
                 schedule: VPSchedule | None = None, seed: int = 0, progress: bool = False) -> None:
        super().__init__(prior, self.down_to_zero(steps) if timesteps is None else timesteps, schedule, seed,
                         progress, strictly_descending=True)
        self.zeta = check_number("zeta", zeta, strict=False)

    def init(self, problem: Problem, x0: torch.Tensor) -> DPSState:
        """``x0`` gives the shape, dtype and device; the chains start from ``N(0, I)``."""
        self._start(problem, x0)
        x_t = complex_noise(x0, self._generator)
        return DPSState(x0.detach().clone(), x_t, 0, torch.zeros(x0.shape[0], device=x0.device))

    def step(self, problem: Problem, state: DPSState) -> DPSState:
        t = self.timesteps[state.k]
        abar, sigma = float(self.schedule.abar[t]), float(self.schedule.sigma(t))
        x_t = state.x_t.detach().requires_grad_(True)
        with torch.enable_grad():
            x_ve = self.schedule.to_ve(x_t, t)
            x0 = self.prior.denoise(x_ve, sigma)
            residual = (2 * problem.data.value(x0)).clamp_min(1e-30).sqrt()  # ||A x0 - y|| per item
            (grad,) = torch.autograd.grad(residual.sum(), x_t)
        x0 = x0.detach()
        if state.k + 1 < len(self.timesteps):
            nxt = float(self.schedule.abar[self.timesteps[state.k + 1]])
            eps_hat = eps_from_denoiser(x_ve.detach(), x0, sigma)  # = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
            c2 = (1 - nxt) / (1 - abar) * (1 - abar / nxt)
            state.x_t = (math.sqrt(nxt) * x0 + math.sqrt(max(1 - nxt - c2, 0.0)) * eps_hat
                         + math.sqrt(c2) * complex_noise(x0, self._generator) - self.zeta * grad)
        state.relative_change = relative_change(x0, state.x)
        state.x, state.k = x0, state.k + 1
        return state
