"""Posterior summaries from a diffusion sampler: ``posterior(A, y, "dps", samples=N)`` draws ``N``
samples per measurement in one batched call and returns their mean, their pixel-wise standard
deviation and the samples; ``calibration`` says how far the standard deviation can be trusted as an
error bar, given the truth.

The samplers are the stochastic diffusion methods of ``recon.reconstruct`` / ``recon.mri``
(``SAMPLERS``), and ``posterior`` is their ``samples=N`` (``reconstruct(A, y, method, samples=N)``)
seen as a posterior: each chain starts from its own noise and draws its own noise, all from the
method's one seeded generator, so the same call gives the same samples. A complex image (MRI) has
the standard deviation of its complex samples, ``sqrt(sum |x - mean|^2 / (N - 1))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from operators import CartesianMRI, MultiCoilMRI
from recon.mri import reconstruct_mri
from recon.reconstruct import SAMPLERS, reconstruct
from recon.result import Reconstruction

__all__ = ["SAMPLERS", "Posterior", "posterior", "calibration"]


@dataclass
class Posterior:
    """``mean`` and ``std`` shaped like one reconstruction ``(B, *image)``; ``samples`` ``(N, B, *image)``;
    ``iterations`` the sampler's steps per draw."""

    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor
    method: str
    seconds: float
    parameters: dict = field(default_factory=dict)
    iterations: int = 0

    @classmethod
    def of(cls, r: Reconstruction) -> "Posterior":
        """A ``samples=N`` reconstruction (``std`` and ``samples`` set) as a posterior."""
        return cls(r.x, r.std, r.samples, r.method, r.seconds, r.parameters, r.iterations)


def posterior(A, y: torch.Tensor, method: str = "dps", samples: int = 16, **kwargs) -> Posterior:
    """``samples`` draws of ``method`` (one of ``SAMPLERS``) for each item of ``y``, in one batched run.

    Args:
        A: a CT operator (``recon.reconstruct``) or an MRI one (``CartesianMRI`` / ``MultiCoilMRI``,
            ``recon.mri.reconstruct_mri``).
        y: the data, ``(B, *A.out_shape)``.
        method: ``"dps"``, ``"diffpir"`` or ``"score-pc"``.
        samples: draws per item, at least 2 (a standard deviation needs two).
        **kwargs: passed to the reconstruction (``model``, ``lam``, ``iterations``, ``noise_std``, ...).

    Example:
        >>> import numpy as np
        >>> from data.phantoms import shepp_logan
        >>> from operators import ParallelBeam2D
        >>> A = ParallelBeam2D((16, 16), np.linspace(0, np.pi, 8, endpoint=False), 24)
        >>> p = posterior(A, A(shepp_logan(16)), "dps", samples=3, iterations=5)
        >>> p.samples.shape, p.mean.shape, bool((p.std > 0).all())
        (torch.Size([3, 1, 1, 16, 16]), torch.Size([1, 1, 16, 16]), True)
    """
    if method not in SAMPLERS:
        raise ValueError(f"method: posterior samples need a sampler, one of {', '.join(SAMPLERS)}; got {method!r}")
    solve = reconstruct_mri if isinstance(A, (CartesianMRI, MultiCoilMRI)) else reconstruct
    return Posterior.of(solve(A, y, method, samples=samples, **kwargs))


def calibration(p: Posterior, truth: torch.Tensor, level: float = 0.9) -> dict:
    """How well ``p.std`` tells the error ``|p.mean - truth|``, per item.

    Returns ``{"pearson": [...], "coverage": [...]}``: the Pearson correlation between the standard
    deviation and the absolute error over the pixels, and the share of pixels whose true value lies in
    the samples' central ``level`` interval (their ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles; complex images: their magnitudes).

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> truth = torch.zeros(1, 1, 32, 32)
        >>> scale = torch.linspace(0.1, 1, 32).expand(1, 1, 32, 32)
        >>> centre = scale * torch.randn(1, 1, 32, 32)                  # truth ~ N(centre, scale^2): calibrated
        >>> draws = centre + scale * torch.randn(200, 1, 1, 32, 32)
        >>> p = Posterior(draws.mean(0), draws.std(0), draws, "x", 0.0)
        >>> c = calibration(p, truth)
        >>> c["pearson"][0] > 0.3, 0.8 < c["coverage"][0] < 0.95
        (True, True)
    """
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    if tuple(truth.shape) != tuple(p.mean.shape):
        raise ValueError(f"truth: expected shape {tuple(p.mean.shape)} (the mean's), got {tuple(truth.shape)}")
    samples, mean, truth = (t.abs() if t.is_complex() else t for t in (p.samples, p.mean, truth))
    err = (mean - truth).abs().flatten(1)
    std = p.std.flatten(1)
    e, s = err - err.mean(1, keepdim=True), std - std.mean(1, keepdim=True)
    pearson = (e * s).sum(1) / ((e.pow(2).sum(1) * s.pow(2).sum(1)).sqrt().clamp_min(1e-30))
    flat = samples.flatten(2)
    low = torch.quantile(flat.float(), (1 - level) / 2, dim=0)
    high = torch.quantile(flat.float(), (1 + level) / 2, dim=0)
    t = truth.flatten(1).float()
    coverage = ((t >= low) & (t <= high)).float().mean(1)
    return {"pearson": [round(float(v), 4) for v in pearson], "coverage": [round(float(v), 4) for v in coverage]}
