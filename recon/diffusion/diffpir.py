r"""DiffPIR (Zhu et al., CVPR 2023 workshops): annealed plug-and-play with a diffusion prior, for any
least-squares data term.

Over descending DDPM timesteps ``t`` (noise level ``sigma_t`` of the VE form, ``priors.diffusion``),
starting from ``x_T ~ N(0, I)`` on the VP scale::

    x0      = D(x_t / sqrt(abar_t), sigma_t)                             denoise
    x0_hat  = argmin_x 1/2 ||A x - y||^2 + rho_t / 2 ||x - x0||^2,       rho_t = lam * sigma_n^2 / sigma_t^2
    eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
    x_{t'}  = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') (sqrt(1 - zeta) eps_hat + sqrt(zeta) eps)

(``t'`` the next timestep; ``eps ~ N(0, I)``; the data step is the data term's prox: the
operator's own solve of ``I + tau A^H A`` where it has one, else conjugate gradients). The result
is the last ``x0_hat``. ``zeta = 0`` makes the re-noising deterministic (a DDIM-like path whose
end still depends on the start ``x_T``).

``renoise=False`` is annealed plug-and-play half-quadratic splitting (DPIR, Zhang et al. 2021):
the next denoiser input is ``x0_hat`` itself, so the iteration is ``x0 = D(x0_hat, sigma_t)``
then the data step, with ``rho_t sigma_t^2 = lam sigma_n^2`` held fixed while ``sigma_t`` falls;
for an MMSE denoiser of a Gaussian prior ``exp(-phi)`` (where it is also the MAP denoiser) it
ends at the MAP estimate ``argmin 1/2 ||A x - y||^2 + lam sigma_n^2 phi(x)``, up to the bias of
the last noise level (tested against the closed form). It starts from ``x0`` (e.g. FBP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from priors.diffusion import DiffusionPrior, VPSchedule, complex_noise, eps_from_denoiser
from recon.base import relative_change
from recon.diffusion.red_diff import DiffusionSolver
from recon.params import check_number
from recon.pnp import _least_squares
from recon.problem import Problem

__all__ = ["DiffPIR", "DiffPIRState"]


@dataclass
class DiffPIRState:
    """``x`` (the latest ``x0_hat``), ``x_t`` (the VP iterate), the index of the next timestep, the
    last relative change of ``x``."""

    x: torch.Tensor
    x_t: torch.Tensor
    k: int
    relative_change: torch.Tensor


class DiffPIR(DiffusionSolver):
    """DiffPIR on ``Problem(L2Fidelity(A, y))`` with a ``DiffusionPrior``.

    Args:
        prior: the diffusion prior.
        noise_std: ``sigma_n``, the measurement noise standard deviation (in ``y``'s units).
        steps: timesteps, evenly spaced from ``T - 1`` down to 0; ignored when ``timesteps`` is given.
        lam: the data step's weight ``lambda`` (the paper's 1 to 7 by task; 7 for deblurring).
        zeta: the share of fresh noise when re-noising, in ``[0, 1]`` (0: deterministic).
        renoise: DiffPIR (True, starting from noise) or annealed PnP-HQS (False, starting from ``x0``).
        timesteps: an explicit descending sequence of timesteps.
        schedule: the DDPM schedule (default: linear beta 1e-4 to 0.02, 1000 steps).
        seed: the seed of the start and of the noise draws.
        progress: a progress bar over the timesteps.

    Example:
        >>> import torch
        >>> from operators import Identity
        >>> from priors import L2Fidelity
        >>> prior = DiffusionPrior(lambda x, s: x / (1 + s ** 2), preconditioned=False,   # x0 ~ N(0, I)
        ...                        sigma_range=(0.001, 200.0))
        >>> y = torch.ones(1, 1, 4, 4)
        >>> hqs = DiffPIR(prior, noise_std=1.0, lam=1.0, steps=1000, renoise=False)
        >>> out = hqs.run(Problem(L2Fidelity(Identity((1, 4, 4)), y)), y)
        >>> round(float(out.x.mean()), 3)   # near the MAP of N(0, I) and y = x + N(0, I), y / 2 = 0.5
        0.506
    """

    label = "DiffPIR"

    def __init__(self, prior: DiffusionPrior, noise_std: float, steps: int = 100, lam: float = 7.0,
                 zeta: float = 0.3, renoise: bool = True, timesteps=None, schedule: VPSchedule | None = None,
                 seed: int = 0, progress: bool = False) -> None:
        super().__init__(prior, self.down_to_zero(steps) if timesteps is None else timesteps, schedule, seed,
                         progress, strictly_descending=True)
        self.noise_std = check_number("noise_std", noise_std)
        self.lam = check_number("lam", lam)
        self.zeta = check_number("zeta", zeta, strict=False)
        if self.zeta > 1:
            raise ValueError(f"zeta: expected a number in [0, 1], got {zeta}")
        self.renoise = bool(renoise)

    def init(self, problem: Problem, x0: torch.Tensor) -> DiffPIRState:
        self._start(problem, x0)
        t = self.timesteps[0]
        x_t = self._noise(x0) if self.renoise else self.schedule.from_ve(x0, t)
        return DiffPIRState(x0.clone(), x_t, 0, torch.zeros(x0.shape[0], device=x0.device))

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return complex_noise(like, self._generator)

    def step(self, problem: Problem, state: DiffPIRState) -> DiffPIRState:
        fidelity, scale = _least_squares(problem.data)
        t = self.timesteps[state.k]
        sigma = float(self.schedule.sigma(t))
        x_ve = self.schedule.to_ve(state.x_t, t)
        x0 = self.prior.denoise(x_ve, sigma)
        rho = self.lam * self.noise_std ** 2 / sigma ** 2
        x0_hat = fidelity.prox(x0, scale / rho)  # argmin s/2 ||A x - y||^2 + rho/2 ||x - x0||^2
        if state.k + 1 < len(self.timesteps) and not self.renoise:
            state.x_t = self.schedule.from_ve(x0_hat, self.timesteps[state.k + 1])
        elif state.k + 1 < len(self.timesteps):
            nxt = float(self.schedule.abar[self.timesteps[state.k + 1]])
            eps_hat = eps_from_denoiser(x_ve, x0_hat, sigma)  # = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar)
            if self.zeta > 0:
                eps_hat = math.sqrt(1 - self.zeta) * eps_hat + math.sqrt(self.zeta) * self._noise(eps_hat)
            state.x_t = math.sqrt(nxt) * x0_hat + math.sqrt(1 - nxt) * eps_hat
        state.relative_change = relative_change(x0_hat, state.x)
        state.x, state.k = x0_hat, state.k + 1
        return state
