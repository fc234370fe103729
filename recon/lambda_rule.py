"""The default regularisation weights: the sinogram's noise carried back to the image.

``default_tv_lambda`` is ``c sigma_hat rms(A^T eps)``, with ``sigma_hat`` from ``estimate_noise_std``
when the noise is not given; ``default_lambda`` applies the same rule with each variational method's
constant (``LAMBDA_FACTORS``). ``recon.reconstruct`` uses (and re-exports) them; ``recon.mri`` reuses
``_backprojected_noise_rms`` with its own k-space noise estimate.
"""

from __future__ import annotations

import math

import torch

from operators.base import LinearOperator
from priors.base import Functional
from priors.graph_laplacian import GraphLaplacianPrior

__all__ = ["TV_LAMBDA_FACTOR", "LAMBDA_FACTORS", "estimate_noise_std", "default_tv_lambda", "default_lambda"]

TV_LAMBDA_FACTOR = 1.8  # c in lam = c * sigma_hat * rms(A^T eps); fitted on phantoms (see default_tv_lambda)
#: the same rule's constant for the adaptive priors, relative to TV's, refitted with the balanced
#: Chambolle-Pock steps by docs/lambda_factor_study.py (256^2, 60 views, tuning phantoms ellipses 100/101):
#: SV-TV flat between 0.7x and 1.4x of this (2.1x TV's, the middle); the graphLa methods gain nothing from a
#: larger weight and lose 1-3 dB at 1/16 of it (their l1 term's dual ball is not reached within 300
#: iterations above it), so they keep the weights of the earlier calibrations (docs/adaptive_256_study.py,
#: docs/graphla_tik_study.py) in absolute terms
LAMBDA_FACTORS = {"tv": TV_LAMBDA_FACTOR, "svtv": 2.1 * TV_LAMBDA_FACTOR, "graphla-tv": 20.0 * TV_LAMBDA_FACTOR,
                  "graphla-fbp": 40.0 * TV_LAMBDA_FACTOR, "graphla-tik": 40.0 * TV_LAMBDA_FACTOR}


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
    r"""The default TV weight: noise in the data, carried back to the image by ``A^T``.

    .. math:: \lambda = c\,\hat\sigma\,\mathrm{rms}(A^T\varepsilon),\quad \varepsilon\sim\mathcal N(0, I)

    At the TV solution ``A^T(A x - y) \in -\lambda\,\partial TV(x)`` and the residual is
    mostly noise, whose back-projection has per-pixel RMS ``sigma * rms(A^T eps)``; TV's
    subgradient is O(1) per pixel, so ``lambda`` scales with that product. It adapts to
    image size, pixel size, view count and geometry without tuning. ``sigma`` is the
    given ``noise_std`` or the sinogram's robust estimate; ``c = TV_LAMBDA_FACTOR`` was
    fitted on Shepp-Logan and random-ellipse phantoms (sizes 128-256, 30-120 views,
    pixels 0.3-1 mm, parallel and fan beam, 1% noise; ``docs/lam_rule_study.py``) as 0.9 for
    300 iterations of the diagonal step rule, then doubled when the balanced steps made those
    300 iterations converge: the best weight on the tuning phantoms (256^2, 60 views) moved to
    about 2x (``docs/lambda_factor_study.py``: +0.5 dB there). It is not retuned per problem.
    """
    sigma = float(estimate_noise_std(y).mean()) if noise_std is None else float(noise_std)
    if not sigma > 0:
        raise ValueError(f"noise_std: expected a positive noise level, got {sigma} "
                         "(noise-free data: pass lam explicitly)")
    return TV_LAMBDA_FACTOR * sigma * _backprojected_noise_rms(A, y)


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
