r"""Score-based sampling with measurement-consistency projection (Song, Shen, Xing, Ermon, ICLR 2022):
predictor-corrector over the VE SDE, each step preceded by a projection onto a noisy copy of the data.

With ``A = Lambda T`` (``T`` invertible, ``Lambda`` the sampling), the paper's projection with weight
``lambda`` in ``[0, 1]`` replaces, on the measured part, ``T x`` by ``lambda y_t + (1 - lambda) T x``::

    x' = T^-1 [lambda Lambda y_t + (1 - lambda) Lambda T x + (I - Lambda) T x]
       = x + lambda T^-1 Lambda^T (y_t - A x),           y_t = y + sigma A z,  z ~ N(0, I)

(``y_t``: the data at the sampler's noise level ``sigma``). ``T^-1 Lambda^T`` is taken by the operator:

* ``"fft"`` (``CartesianMRI``, ``MultiCoilMRI``): ``T`` is the centred orthonormal FFT, so
  ``T^-1 Lambda^T = A^H``: exact for one coil; for several, ``x + lambda A^H (y_t - A x)`` is the
  blend in each coil's k-space followed by the SENSE coil combination (``sum_c conj(S_c) F^H``; maps
  normalised to ``sum_c |S_c|^2 = 1``, as ESPIRiT's are, make it the paper's step for every coil).
* ``"fbp"`` (``ParallelBeam2D``, ``FanBeam2D``): ``T^-1 Lambda^T`` is the FBP of the measured views,
  ``d = FBP(y_t - A x)`` (its own angular weights), taken with the step ``kappa = <A d, r> / ||A d||^2``
  that best fits the data along ``d`` (``r = y_t - A x``; ``kappa`` comes out near 1). methods.md's
  literal recipe (re-project ``x`` on a full set of views, blend on the measured ones, FBP back) both
  blurs ``x`` and, at ``lambda = 1``, leaves most of the residual (tests: 75% against 6% here, 60 of
  240 views); only the correction goes through FBP, so ``T^-1 T x = x`` holds exactly, as in the paper.
* ``"cg"`` (any other ``LinearOperator``, and any operator on request): ``T^-1`` is replaced by
  ``cg_iterations`` conjugate-gradient steps on ``||A z - y_t||^2`` from ``x`` (they approach the
  data-consistent image nearest ``x``, the hard projection), then ``x' = (1 - lambda) x + lambda z``.

Sampler (over the noise levels ``sigma_k``, descending, ``s(x, sigma) = (D(x, sigma) - x) / sigma^2``)::

    x ~ N(0, sigma_0^2 I)
    for each k:   x <- project(x, y_t(sigma_k));  Langevin corrector at sigma_k
                  x <- project(x, y_t(sigma_k));  reverse-diffusion predictor sigma_k -> sigma_{k+1} (0 at the end)
    x <- D(x, sigma_last);  x <- project(x, y, lambda = 1)       Tweedie, then hard data consistency

Langevin: ``eps = 2 (snr ||n|| / ||s||)^2``, ``x + eps s + sqrt(2 eps) n``, with the norms of each
item (the paper's code takes batch means; per item, no chain's step depends on the others in the batch).
Predictor: ``g^2 = sigma_k^2 - sigma_{k+1}^2``, ``x + g^2 s + g n``. Two network evaluations per
step (one with ``snr = 0``), one more at the end. The noise levels are the VE levels of
the DDPM timesteps (``priors.diffusion``: ``sigma_t`` from 157 at ``t = 999`` to 0.01 at ``t = 0``),
the one schedule every sampler here uses; the paper spaces 0.01 to 128 geometrically.

Like DPS this is an approximation of the posterior (the projection is not ``p(y | x_t)``). Given the
exact posterior score (``lambda = 0`` with the posterior's own denoiser, closed-form for a Gaussian)
the predictor alone (``snr = 0``) samples the posterior within Monte-Carlo error; the corrector's
finite Langevin steps widen the samples (tests/test_score_pc.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators import CartesianMRI, FanBeam2D, MultiCoilMRI, ParallelBeam2D
from operators.base import conjugate_gradient, inner, per_item
from priors.diffusion import DiffusionPrior, VPSchedule, complex_noise
from recon.base import relative_change
from recon.diffusion.red_diff import DiffusionSolver
from recon.fbp import fbp
from recon.params import check_integer, check_number
from recon.problem import Problem

__all__ = ["PROJECTIONS", "ScorePC", "ScorePCState", "projection_for"]

#: how ``T^-1`` is taken: by the operator (``"auto"``), or as named
PROJECTIONS = ("auto", "fft", "fbp", "cg")
#: the operators each special projection needs (``"cg"`` takes any), with their names for messages
_OPERATORS = {"fft": ((CartesianMRI, MultiCoilMRI), "an MRI operator (CartesianMRI, MultiCoilMRI)"),
              "fbp": ((ParallelBeam2D, FanBeam2D), "a 2D CT operator (ParallelBeam2D, FanBeam2D)")}


def projection_for(A) -> str:
    """The projection ``"auto"`` picks for ``A``: ``"fft"`` for MRI, ``"fbp"`` for 2D CT, else ``"cg"``."""
    return next((kind for kind, (types, _) in _OPERATORS.items() if isinstance(A, types)), "cg")


@dataclass
class ScorePCState:
    """``x`` (the latest Tweedie estimate ``D(x_k, sigma_k)``), ``x_k`` (the VE iterate), the index of
    the next noise level, the last relative change of ``x``."""

    x: torch.Tensor
    x_k: torch.Tensor
    k: int
    relative_change: torch.Tensor


class ScorePC(DiffusionSolver):
    """Song et al.'s projection sampler on ``Problem(L2Fidelity(A, y))`` (or ``s * L2Fidelity``).

    Args:
        prior: the diffusion prior.
        steps: noise levels: the VE levels of ``steps`` timesteps from ``T - 1`` down to 0.
        lam: the projection's weight ``lambda`` in ``[0, 1]`` (the paper's 0.84 for CT, 1 for MRI).
        snr: the Langevin corrector's signal-to-noise ratio (0: no corrector; the paper's 0.25 to 0.5).
        projection: one of ``PROJECTIONS`` (module docstring).
        cg_iterations: the conjugate-gradient steps of the ``"cg"`` projection.
        final_projection: end with the hard projection (``lambda = 1``) onto the data itself.
        timesteps: an explicit descending sequence of timesteps instead of ``steps``.
        schedule: the DDPM schedule whose VE levels are used (default: linear beta 1e-4 to 0.02).
        seed: the seed of the start and of every noise draw (the same seed gives the same samples).
        progress: a progress bar over the noise levels.

    Example:
        >>> import torch
        >>> from operators import CartesianMRI
        >>> from priors import L2Fidelity
        >>> prior = DiffusionPrior(lambda x, s: x / (1 + s ** 2), preconditioned=False,   # x0 ~ N(0, I)
        ...                        sigma_range=(0.001, 200.0))
        >>> mask = torch.zeros(4, 4); mask[:, :2] = 1                               # half of k-space
        >>> A = CartesianMRI(mask)
        >>> truth = torch.randn(1, 1, 4, 4, dtype=torch.complex64)
        >>> out = ScorePC(prior, steps=50).run(Problem(L2Fidelity(A, A(truth))), torch.zeros_like(truth))
        >>> float((A(out.x) - A(truth)).abs().max()) < 1e-5     # measured k-space kept exactly
        True
    """

    label = "score-PC"

    def __init__(self, prior: DiffusionPrior, steps: int = 1000, lam: float = 1.0, snr: float = 0.25,
                 projection: str = "auto", cg_iterations: int = 5, final_projection: bool = True, timesteps=None,
                 schedule: VPSchedule | None = None, seed: int = 0, progress: bool = False) -> None:
        super().__init__(prior, self.down_to_zero(steps) if timesteps is None else timesteps, schedule, seed,
                         progress, strictly_descending=True)
        self.lam = check_number("lam", lam, strict=False, below=1.0 + 1e-12)
        self.snr = check_number("snr", snr, strict=False)
        if projection not in PROJECTIONS:
            raise ValueError(f"projection: expected one of {', '.join(PROJECTIONS)}, got {projection!r}")
        self.projection = projection
        self.cg_iterations = check_integer("cg_iterations", cg_iterations, 1, 1000)
        self.final_projection = bool(final_projection)
        self.sigmas = [float(self.schedule.sigma(t)) for t in self.timesteps]

    def init(self, problem: Problem, x0: torch.Tensor) -> ScorePCState:
        """``x0`` gives the shape, dtype and device; the chains start from ``N(0, sigma_0^2 I)``."""
        self._start(problem, x0)
        self._A, self._y = self._fidelity.A, self._fidelity.y
        self._kind = projection_for(self._A) if self.projection == "auto" else self.projection
        if self._kind in _OPERATORS and not isinstance(self._A, _OPERATORS[self._kind][0]):
            raise ValueError(f"projection: {self._kind!r} needs {_OPERATORS[self._kind][1]}, got "
                             f"{type(self._A).__name__}")
        x_k = self.sigmas[0] * self._noise(x0)
        return ScorePCState(x0.detach().clone(), x_k, 0, torch.zeros(x0.shape[0], device=x0.device))

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return complex_noise(like, self._generator)

    def project(self, x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
        """``x`` moved by ``lam`` towards consistency with the data ``y`` (module docstring)."""
        if lam == 0:
            return x
        A = self._A
        r = y - A(x)
        if self._kind == "fft":
            return x + lam * A.adjoint(r)
        if self._kind == "fbp":
            d = fbp(A, r)
            Ad = A(d)
            kappa = inner(Ad, r).real / inner(Ad, Ad).real.clamp_min(1e-30)
            return x + lam * per_item(kappa, x.ndim).to(x.dtype) * d
        z = conjugate_gradient(A.normal, A.adjoint(y), x, self.cg_iterations)
        return (1 - lam) * x + lam * z

    def step(self, problem: Problem, state: ScorePCState) -> ScorePCState:
        k, x = state.k, state.x_k
        sigma = self.sigmas[k]
        y_t = self._y + sigma * self._A(self._noise(state.x))
        if self.snr > 0:
            x = self.project(x, y_t, self.lam)
            score = self.prior.score(x, sigma)
            n = self._noise(x)
            ratio = per_item(n.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1).clamp_min(1e-30), x.ndim)
            eps = 2 * (self.snr * ratio) ** 2
            x = x + eps * score + (2 * eps).sqrt() * n
        x = self.project(x, y_t, self.lam)
        denoised = self.prior.denoise(x, sigma)
        nxt = self.sigmas[k + 1] if k + 1 < len(self.sigmas) else 0.0
        g2 = sigma ** 2 - nxt ** 2
        x = x + (g2 / sigma ** 2) * (denoised - x) + math.sqrt(g2) * self._noise(x)
        if k + 1 == len(self.sigmas):  # Tweedie at the last level, then hard consistency with the data
            estimate = self.prior.denoise(x, sigma)
            if self.final_projection:
                estimate = self.project(estimate, self._y, 1.0)
        else:
            estimate = denoised
        state.relative_change = relative_change(estimate, state.x)
        state.x, state.x_k, state.k = estimate, x, k + 1
        return state
