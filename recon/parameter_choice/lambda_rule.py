"""The default regularisation weights: the sinogram's noise carried back to the image.

``default_tv_lambda`` is ``c sigma_hat rms(A^T eps)`` times a size and a noise term, with
``sigma_hat`` from ``estimate_noise_std`` when the noise is not given; ``default_lambda`` applies
the same rule with each variational method's constant (``LAMBDA_FACTORS``). ``recon.reconstruct`` uses
(and re-exports) them; ``recon.mri`` reuses ``_backprojected_noise_rms`` with its own k-space noise
estimate.
"""

from __future__ import annotations

import math

import torch

from operators.base import LinearOperator
from priors.base import Functional
from priors.graph_laplacian import GraphLaplacianPrior

__all__ = ["TV_LAMBDA_FACTOR", "LAMBDA_FACTORS", "REFERENCE_SIDE", "REFERENCE_NOISE", "estimate_noise_std",
           "noise_levels", "default_tv_lambda", "default_lambda"]

TV_LAMBDA_FACTOR = 0.9  # c in the rule of default_tv_lambda; fitted on phantoms (docs/lam_rule_range_study.py)
#: the rule's constant for each variational method. The adaptive priors' constants were calibrated at the
#: rule's reference point (256^2, 1% noise, where the size and noise terms are 1) with the balanced
#: Chambolle-Pock steps: SV-TV by docs/lambda_factor_study.py (tuning phantoms ellipses 100/101, 60 views;
#: flat between 0.7x and 1.4x of this), the graphLa methods by docs/adaptive_256_study.py and
#: docs/graphla_tik_study.py (they gain nothing from a larger weight and lose 1-3 dB at 1/16 of it)
LAMBDA_FACTORS = {"tv": TV_LAMBDA_FACTOR, "svtv": 3.78, "graphla-tv": 36.0, "graphla-fbp": 72.0, "graphla-tik": 72.0}
#: the reference point of the rule's size and noise terms, and their exponents (fitted, rounded)
REFERENCE_SIDE, REFERENCE_NOISE, SIDE_EXPONENT, NOISE_EXPONENT = 256, 0.01, 1.0, 1.0 / 3.0


def estimate_noise_std(y: torch.Tensor) -> torch.Tensor:
    r"""Robust per-item noise level of a sinogram ``(B, C, views, detectors)``.

    Second differences along the detector cancel the smooth signal; for white noise
    of std ``s`` they have std ``s sqrt(6)``; the median absolute deviation makes the
    estimate insensitive to the edges of the object.

    .. math:: \hat\sigma = 1.4826\,\mathrm{MAD}(\Delta^2_{\rm det} y) / \sqrt 6

    Measured on Shepp-Logan with 1% noise and 60 views: 1.06x the true std at 512^2,
    1.13x at 256^2, 1.3x at 128^2, 1.8x at 64^2 -- on coarse sinograms the object's edges
    are a large share of the samples and bias it upwards.
    """
    d2 = (y[..., 2:] - 2 * y[..., 1:-1] + y[..., :-2]).flatten(1)
    med = d2.median(dim=1, keepdim=True).values
    return 1.4826 * (d2 - med).abs().median(dim=1).values / math.sqrt(6.0)


def noise_levels(y: torch.Tensor, noise_std: float | None) -> torch.Tensor:
    """The noise standard deviation of each item of ``y``: ``noise_std`` for all when given, else estimated."""
    return estimate_noise_std(y) if noise_std is None else torch.full((y.shape[0],), float(noise_std))


def _backprojected_noise_rms(A: LinearOperator, like: torch.Tensor) -> float:
    """RMS over pixels of ``A^T eps`` for unit white noise: ``sqrt(mean_j sum_i a_ij^2)``.

    The same noise for every item of ``like``'s batch, so operators with per-item parts (coil maps,
    masks) are averaged over their items and shared ones give the batch-of-one value exactly."""
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn((1, *A.out_shape), generator=gen, dtype=like.dtype).to(like.device)
    eps = eps.expand(like.shape[0], *eps.shape[1:])
    bp = A.adjoint(eps)
    return float(bp.abs().pow(2).mean().sqrt())


def default_tv_lambda(A: LinearOperator, y: torch.Tensor, noise_std: float | None = None) -> float:
    r"""The default TV weight: noise in the data carried back to the image, scaled by size and noise.

    .. math:: \lambda = c\,\hat\sigma\,\mathrm{rms}(A^T\varepsilon)\,\frac{N}{256}
              \Big(\frac{\hat\sigma / \mathrm{rms}(y)}{0.01}\Big)^{1/3},\quad \varepsilon\sim\mathcal N(0, I)

    At the TV solution ``A^T(A x - y) \in -\lambda\,\partial TV(x)`` and the residual is mostly
    noise, whose back-projection has per-pixel RMS ``sigma * rms(A^T eps)``; TV's subgradient is
    O(1) per pixel, so ``lambda`` scales with that product, which carries the pixel size, the
    detector and the number of views. The best weight also grows with the image side ``N`` in
    pixels (``sqrt`` of the in-plane pixel count; an object's edges grow like ``N``, its area like
    ``N^2``) and, slightly, with the relative noise ``sigma / rms(y)``: these two unit-free terms
    were fitted on Shepp-Logan and random-ellipse phantoms over sizes 64-256, 30-180 views,
    parallel and fan beam and 0.5-5% noise, and checked on held-out cases up to 512^2
    (``docs/lam_rule_range_study.py``, table in ``docs/lam_rule_range_study.md``). ``sigma`` is
    the given ``noise_std`` or the sinogram's robust estimate (the fit used the estimate, which
    reads high on small, low-noise sinograms); ``c = TV_LAMBDA_FACTOR``.

    Example:
        >>> import numpy as np
        >>> from operators import ParallelBeam2D
        >>> from data.phantoms import shepp_logan
        >>> A = ParallelBeam2D((64, 64), np.linspace(0, np.pi, 30, endpoint=False), 96)
        >>> y = A(shepp_logan(64))
        >>> y = y + 0.01 * y.pow(2).mean().sqrt() * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
        >>> 0 < default_tv_lambda(A, y) < default_tv_lambda(A, y, noise_std=0.2)
        True
    """
    sigma = float(estimate_noise_std(y).mean()) if noise_std is None else float(noise_std)
    if not sigma > 0:
        raise ValueError(f"noise_std: expected a positive noise level, got {sigma} "
                         "(noise-free data: pass lam explicitly)")
    return TV_LAMBDA_FACTOR * sigma * _backprojected_noise_rms(A, y) * _size_and_noise(A, y, sigma)


def _size_and_noise(A: LinearOperator, y: torch.Tensor, sigma: float) -> float:
    """The rule's unit-free terms: ``(N / 256) * (sigma / rms(y) / 0.01)^(1/3)``, N the in-plane side."""
    side = math.sqrt(math.prod(A.in_shape[-2:]))
    relative = sigma / max(float(y.abs().pow(2).mean().sqrt()), 1e-30)
    return (side / REFERENCE_SIDE) ** SIDE_EXPONENT * (relative / REFERENCE_NOISE) ** NOISE_EXPONENT


def default_lambda(method: str, A: LinearOperator, y: torch.Tensor, noise_std: float | None = None,
                   prior: Functional | None = None) -> float:
    r"""The default weight of a variational method: ``default_tv_lambda`` with the method's constant.

    For the graph-Laplacian prior ``||L x||_1`` the subgradient ``L^T s`` has per-pixel size up
    to ``2 d_i`` (``d`` the degree), not 1 as for TV, so the weight is divided by the mean
    degree of ``prior``'s graph.
    """
    if method not in LAMBDA_FACTORS:
        raise ValueError(f"method: expected one of {', '.join(LAMBDA_FACTORS)}, got {method!r}")
    lam = default_tv_lambda(A, y, noise_std) * LAMBDA_FACTORS[method] / TV_LAMBDA_FACTOR
    if method.startswith("graphla"):
        if not isinstance(prior, GraphLaplacianPrior):
            raise TypeError(f"prior: {method} scales its weight by the graph's degree; pass the GraphLaplacianPrior, "
                            f"got {type(prior).__name__}")
        lam /= float(prior.laplacian.degree.mean())
    return lam
