"""MRI reconstructions from Cartesian k-space: zero-filled, CG-SENSE and TV.

``reconstruct_mri(A, y, method)`` mirrors ``recon.reconstruct.reconstruct`` for CT:
one call picks the solver, the start, the default TV weight and the iteration count.

* ``zero-filled``: the root-sum-of-squares of the zero-filled coil images (needs no
  coil maps; the usual baseline).
* ``cg-sense``: conjugate gradients on the SENSE normal equations ``A^H A x = A^H y``
  (Pruessmann et al. 2001), stopped early (``DEFAULT_MRI_ITERATIONS``), from zero.
* ``tv``: ``min_x 1/2 ||A x - y||^2 + lam TV(x)`` with Chambolle-Pock on the complex
  image. TV of a complex image is ``sum_i sqrt(sum_k |(D_k x)_i|^2)``: the gradient
  magnitude over real and imaginary parts together, so the phase is regularised
  with the magnitude and no phase model is assumed.

The TV weight defaults to ``c sigma_hat rms(A^H eps)`` as for CT (noise carried back
to the image), with ``sigma_hat`` estimated from the outer k-space samples
(``estimate_kspace_noise_std``) and ``c = MRI_TV_LAMBDA_FACTOR``.
"""

from __future__ import annotations

import math
import time

import torch

from operators.coils import rss
from operators.fourier import ifft2c
from operators.mri import CartesianMRI, MultiCoilMRI
from priors import TV, L2Fidelity
from recon.chambolle_pock import ChambollePock
from recon.diffusion.diffusion_recon import DIFFUSION, diffusion_names, diffusion_reconstruction, magnitude_p99
from recon.linear import CGLS
from recon.parameter_choice.lambda_rule import _backprojected_noise_rms
from recon.params import check_finite_result, check_integer, check_number
from recon.problem import Problem
from recon.reconstruct import _load
from recon.result import Reconstruction, draw_samples

__all__ = ["MRI_METHODS", "reconstruct_mri", "zero_filled", "estimate_kspace_noise_std",
           "default_mri_tv_lambda", "data_consistency"]

MRI_METHODS = ("zero-filled", "cg-sense", "tv", *DIFFUSION)
DEFAULT_MRI_ITERATIONS = {"cg-sense": 10, "tv": 200}
MRI_TV_LAMBDA_FACTOR = 0.11  # c in lam = c * sigma_hat * rms(A^H eps) (see default_mri_tv_lambda)
OUTER_FRACTION = 0.1  # share of the sampled positions, farthest from the k-space centre, used for the noise


def zero_filled(y: torch.Tensor) -> torch.Tensor:
    r"""Root-sum-of-squares of the zero-filled coil images: ``(B, coils, H, W) -> (B, 1, H, W)`` real.

    .. math:: x_{\rm zf} = \big(\textstyle\sum_c |\mathcal F^H y_c|^2\big)^{1/2}

    Example:
        >>> import torch
        >>> zero_filled(torch.ones(1, 2, 4, 4, dtype=torch.complex64)).shape
        torch.Size([1, 1, 4, 4])
    """
    return rss(ifft2c(y), dim=1, keepdim=True)


def _outer_samples(y_item: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The k-space samples (all coils) at the ``OUTER_FRACTION`` largest normalised radii."""
    H, W = mask.shape
    ky = (torch.arange(H, device=mask.device) - H // 2) / (H / 2)
    kx = (torch.arange(W, device=mask.device) - W // 2) / (W / 2)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    sampled = radius[mask]
    threshold = torch.quantile(sampled.double(), 1 - OUTER_FRACTION)
    return y_item[:, mask & (radius >= threshold)]


def estimate_kspace_noise_std(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Per-item noise level of k-space ``(B, coils, H, W)``: std of complex noise, ``E|n|^2 = sigma^2``.

    The outermost sampled positions (``OUTER_FRACTION`` of them) hold little signal; for
    complex Gaussian noise ``|n|^2`` is exponential with median ``sigma^2 ln 2``, and the
    median ignores the few samples that still carry signal.

    .. math:: \hat\sigma = \big(\mathrm{median}_{\rm outer} |y|^2 / \ln 2\big)^{1/2}

    Example:
        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> y = 0.5 * torch.randn(1, 4, 64, 64, dtype=torch.complex64, generator=gen)
        >>> round(float(estimate_kspace_noise_std(y, torch.ones(64, 64, dtype=torch.bool))), 1)
        0.5
    """
    masks = (mask if mask.ndim == 3 else mask[None]).to(device=y.device, dtype=torch.bool)
    out = []
    for b in range(y.shape[0]):
        samples = _outer_samples(y[b], masks[min(b, masks.shape[0] - 1)])
        out.append(torch.sqrt(samples.abs().square().median() / math.log(2.0)))
    return torch.stack(out).to(y.real.dtype)


def default_mri_tv_lambda(A: CartesianMRI | MultiCoilMRI, y: torch.Tensor,
                          noise_std: float | None = None) -> float:
    r"""The default TV weight for MRI, the CT rule with a k-space noise estimate.

    .. math:: \lambda = c\,\hat\sigma\,\mathrm{rms}(A^H\varepsilon),\quad \varepsilon \text{ unit complex white noise}

    ``c = MRI_TV_LAMBDA_FACTOR = 0.11`` comes from ``docs/mri_lam_study.py`` (simulated 8-coil
    Shepp-Logan, 128^2, 4x random lines and 6x Poisson disc, 1% and 3% noise): with CT's
    ``c = 0.9`` the best weight of a grid was 1/32 to 1/4 of the rule's, so ``c`` became
    ``0.9 / 8``, which is within 0.5 dB of the grid's best for random lines and 2.1 dB for
    6x Poisson disc at 1% noise, where SENSE is well posed and wants less TV. A single
    constant cannot follow the conditioning; pass ``lam`` when it matters.
    """
    sigma = float(estimate_kspace_noise_std(y, A.mask).mean()) if noise_std is None else float(noise_std)
    if not sigma > 0:
        raise ValueError(f"noise_std: expected a positive noise level, got {sigma} (noise-free data: pass lam)")
    return MRI_TV_LAMBDA_FACTOR * sigma * _backprojected_noise_rms(A, y)


def data_consistency(A, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Relative residual ``||A x - y|| / ||y||`` per item, shape ``(B,)``."""
    num = torch.linalg.vector_norm((A(x) - y).flatten(1), dim=1)
    return num / torch.linalg.vector_norm(y.flatten(1), dim=1).clamp_min(1e-30)


def reconstruct_mri(A: CartesianMRI | MultiCoilMRI, y: torch.Tensor, method: str = "tv",
                    lam: float | None = None, iterations: int | None = None,
                    noise_std: float | None = None, progress: bool = False, model=None,
                    isotropic: bool = True, samples: int | None = None) -> Reconstruction:
    """Reconstruct k-space ``y`` with one of ``MRI_METHODS``.

    Args:
        A: ``CartesianMRI`` (single coil) or ``MultiCoilMRI`` (coil maps, e.g. from ``espirit_maps``).
        y: k-space ``(B, coils, H, W)`` complex, zero where not sampled.
        method: ``"zero-filled"``, ``"cg-sense"``, ``"tv"``, or ``"red-diff"`` / ``"diffpir"`` / ``"dpir"`` /
            ``"dps"`` / ``"score-pc"`` (a diffusion prior on the real and imaginary parts,
            ``recon.diffusion.diffusion_recon``).
        lam: TV weight (None uses ``default_mri_tv_lambda``); the diffusion methods' weight.
        iterations: iteration cap (defaults in ``DEFAULT_MRI_ITERATIONS``).
        noise_std: k-space noise std for the default ``lam`` (None: estimated).
        progress: progress bar for iterative methods.
        model: the diffusion methods' score model (``recon train score``; a file or a loaded model).
        isotropic: TV's norm of the complex gradient: per pixel over both directions (True), or the
            sum of the moduli of each difference (False, anisotropic: SigPy's and BART's TV).
        samples: ``N >= 2`` draws per item of a sampler, as in ``recon.reconstruct.reconstruct``.

    Returns:
        A ``Reconstruction`` whose ``x`` is complex ``(B, 1, H, W)`` (real RSS for zero-filled).

    Raises:
        ValueError: a bad argument, named (``iterations`` an integer >= 1, ``lam`` finite >= 0,
        ``noise_std`` finite > 0). RuntimeError: a reconstruction holding NaN or Inf, naming the method.

    Example:
        >>> import torch
        >>> from operators import CartesianMRI, random_mask
        >>> from data.phantoms import shepp_logan
        >>> A = CartesianMRI(random_mask((64, 64), 4, 0.08))
        >>> r = reconstruct_mri(A, A(shepp_logan(64)), "tv", lam=1e-3)
        >>> r.x.shape, r.x.dtype, r.method
        (torch.Size([1, 1, 64, 64]), torch.complex64, 'tv')
    """
    if method not in MRI_METHODS:
        raise ValueError(f"method: expected one of {', '.join(MRI_METHODS)}, got {method!r}")
    if not isinstance(A, (CartesianMRI, MultiCoilMRI)):
        raise TypeError(f"A: expected CartesianMRI or MultiCoilMRI, got {type(A).__name__}")
    if iterations is not None:
        check_integer("iterations", iterations)
    if lam is not None:
        check_number("lam", lam, strict=False)
    if noise_std is not None:
        check_number("noise_std", noise_std)
    if not (isinstance(y, torch.Tensor) and y.is_complex()):
        raise TypeError(f"y: {type(A).__name__} expects complex k-space (complex64), got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if model is not None and method not in DIFFUSION:
        raise ValueError(f"model: only {diffusion_names()} use a trained model, not {method!r}")
    if not isinstance(isotropic, bool):
        raise TypeError(f"isotropic: expected True or False, got {isotropic!r}")
    if not isotropic and method != "tv":
        raise ValueError(f"isotropic: only method 'tv' has an anisotropic form, not {method!r}")
    if samples is not None:
        return draw_samples(lambda ys: reconstruct_mri(A, ys, method, lam, iterations, noise_std, progress, model,
                                                       isotropic), y, method, samples)
    r = _reconstruct_mri(A, y, method, lam, iterations, noise_std, progress, model, isotropic)
    check_finite_result(r.x, method)
    return r


def _reconstruct_mri(A, y, method, lam, iterations, noise_std, progress, model=None,
                     isotropic: bool = True) -> Reconstruction:
    """``reconstruct_mri`` once its arguments are checked."""
    data = L2Fidelity(A, y)  # validates y's shape and values against the operator
    start = time.perf_counter()
    if method == "zero-filled":
        return Reconstruction(zero_filled(y), method, 0, time.perf_counter() - start, {})
    if method in DIFFUSION:
        return _diffusion(A, y, method, lam, iterations, noise_std, progress, model, start)
    n_iter = int(iterations or DEFAULT_MRI_ITERATIONS[method])
    params: dict = {"max_iterations": n_iter}
    x0 = torch.zeros((y.shape[0], *A.in_shape), dtype=y.dtype, device=y.device)
    if method == "cg-sense":
        result = CGLS(max_iter=n_iter, progress=progress).run(Problem(data), x0)
    else:
        rule = "rule" if lam is None else "given"
        lam = default_mri_tv_lambda(A, y, noise_std) if lam is None else float(lam)
        params.update(lam=lam, lam_rule=rule, isotropic=isotropic)
        solver = ChambollePock(max_iter=n_iter, tol=1e-5, progress=progress)
        result = solver.run(Problem(data, lam * TV(isotropic=isotropic)), A.adjoint(y))
    return Reconstruction(result.x, method, result.n_iter, time.perf_counter() - start, params, result.history)


def _diffusion(A, y, method, lam, iterations, noise_std, progress, model, start) -> Reconstruction:
    """A diffusion method from the adjoint, data and image scaled so that the adjoint's magnitude has
    its 99th percentile at 1 (the range of a model trained on images in [0, 1]), then scaled back."""
    x0 = A.adjoint(y)
    scale = magnitude_p99(x0) or 1.0

    def noise() -> float:  # per real component of the scaled k-space: E|n|^2 = sigma^2, sigma^2 / 2 per part
        sigma = float(noise_std) if noise_std is not None else float(estimate_kspace_noise_std(y, A.mask).mean())
        return sigma / scale / 2 ** 0.5

    score_model = _load(model, "score", y.device, method)
    def pre_estimate(init: str) -> torch.Tensor:  # the adjoint, or TV at its default weight (a card's init)
        x = _reconstruct_mri(A, y, "tv", None, None, noise_std, False).x if init == "tv" else x0
        return x / scale

    x, n, params, history = diffusion_reconstruction(method, A, y / scale, pre_estimate, score_model, lam, iterations,
                                                     noise, progress, start)
    return Reconstruction(x * scale, method, n, time.perf_counter() - start, {**params, "scale": scale}, history)
