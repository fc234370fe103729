r"""Choosing the regularisation weight by Morozov's discrepancy principle.

For a known noise level ``sigma`` on ``m`` measurements the principle picks the weight
whose reconstruction explains the data down to the noise and no further:

.. math:: \|A x_\lambda - y\| = \tau\,\sigma\sqrt m

The residual grows monotonically with ``lambda`` (for the convex problems here), so a
one-dimensional root search in ``log lambda`` finds it; every evaluation is a full
reconstruction (``solve`` receives the previous one, to warm-start from if it converges
fully; ``recon.reconstruct`` starts each from FBP instead, so that the result is the
reconstruction at the chosen weight).

The classical ``tau >= 1`` over-regularises sparse-view CT: with fewer measurements than
pixels the reconstruction explains part of the noise, and the residual at the best weight
is below ``sigma sqrt(m)``. Measured for TV (60 parallel views, 1% noise, weights on a grid,
residual / (sigma sqrt m) at the best PSNR): Shepp-Logan 0.88 at 128^2 (``tau = 1`` lost 2.1 dB
there) and 0.90-0.93 at 256^2; random ellipses (seeds 100, 101) at 256^2 0.93-0.96, flat
around the optimum. ``DISCREPANCY_TAU = 0.93`` sits between them: a single tau cannot match
both object classes exactly, and each 0.02 in tau moves lam by about 1.4x.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from recon.parameter_choice.lambda_rule import default_lambda, noise_levels

__all__ = ["DISCREPANCY_TAU", "AUTO_TRIALS", "AUTO_FLOOR", "DiscrepancyResult", "discrepancy_search", "auto_lambda"]

#: tau in ||A x - y|| = tau sigma sqrt(m). Below 1 because a regularised fit absorbs part of the noise
#: (its effective degrees of freedom); calibrated on TV's best-PSNR weights (see the module docstring).
DISCREPANCY_TAU = 0.93
#: ``lam="auto"``: reconstructions its search may try per item, and the share of the default rule's weight
#: below which it warns (there the principle fails: docs/lam_rule_range_study.md), not a better weight
AUTO_TRIALS, AUTO_FLOOR = 8, 0.25


@dataclass
class DiscrepancyResult:
    """The chosen weight, its reconstruction, and every ``(lam, residual ratio)`` tried."""

    lam: float
    x: torch.Tensor
    ratio: float
    evaluations: list[tuple[float, float]] = field(default_factory=list)


def discrepancy_search(solve: Callable[[float, torch.Tensor | None], torch.Tensor],
                       residual: Callable[[torch.Tensor], float], noise_norm: float, lam0: float,
                       tau: float = DISCREPANCY_TAU, rtol: float = 0.01, max_evaluations: int = 8,
                       slope: float = 0.5) -> DiscrepancyResult:
    r"""Find ``lam`` with ``residual(solve(lam)) = tau * noise_norm`` (one batch item).

    Secant steps on ``f(t) = log(residual / (tau noise_norm))`` over ``t = log lam``, started
    at ``lam0`` with a guessed slope ``df/dt`` (0.5), each step limited to a factor 8, and
    bisection (in ``t``) once the root is bracketed. Stops when ``|residual / target - 1| < rtol``
    or after ``max_evaluations`` reconstructions; the best evaluation is returned.

    Args:
        solve: ``solve(lam, x0) -> x`` (``x0`` None on the first call, else the previous ``x``).
        residual: ``||A x - y||`` for a reconstruction.
        noise_norm: ``sigma * sqrt(m)``, the expected norm of the noise.
        lam0: starting weight (e.g. the method's default rule).
        tau: safety factor of the principle.

    Example:
        >>> import torch
        >>> y = torch.tensor([3.0, -2.0, 0.5])            # denoising y with ridge: x = y / (1 + lam)
        >>> res = discrepancy_search(lambda lam, x0: y / (1 + lam), lambda x: float((x - y).norm()),
        ...                          noise_norm=1.0, lam0=1.0, tau=1.0)
        >>> round(float((res.x - y).norm()), 2)
        1.0
    """
    if not (math.isfinite(noise_norm) and noise_norm > 0):
        raise ValueError(f"noise_std: the discrepancy principle needs a positive noise level, got norm {noise_norm}")
    if not lam0 > 0:
        raise ValueError(f"lam0: expected a positive starting weight, got {lam0}")
    target = tau * noise_norm
    evaluations: list[tuple[float, float, torch.Tensor]] = []
    lo: tuple[float, float] | None = None  # (t, f) with f < 0
    hi: tuple[float, float] | None = None  # (t, f) with f > 0
    t, x = math.log(lam0), None
    for _ in range(max_evaluations):
        x = solve(math.exp(t), x)
        ratio = residual(x) / target
        evaluations.append((math.exp(t), ratio, x))
        f = math.log(max(ratio, 1e-300))
        if abs(ratio - 1) < rtol:
            break
        if f < 0:
            lo = (t, f) if lo is None or t > lo[0] else lo
        else:
            hi = (t, f) if hi is None or t < hi[0] else hi
        if lo is not None and hi is not None:
            # regula falsi in the bracket, kept away from its ends (Illinois-free safeguard)
            t_new = lo[0] - lo[1] * (hi[0] - lo[0]) / (hi[1] - lo[1])
            width = hi[0] - lo[0]
            t = min(max(t_new, lo[0] + 0.1 * width), hi[0] - 0.1 * width)
        else:
            prev = evaluations[-2] if len(evaluations) > 1 else None
            s = slope
            if prev is not None and prev[0] != evaluations[-1][0]:
                s = (f - math.log(max(prev[1], 1e-300))) / (t - math.log(prev[0]))
                s = s if s > 1e-3 else slope
            t = t - max(min(f / s, math.log(8.0)), -math.log(8.0))
    lam, ratio, x = min(evaluations, key=lambda e: abs(math.log(max(e[1], 1e-300))))
    return DiscrepancyResult(lam, x, ratio, [(e[0], e[1]) for e in evaluations])


def auto_lambda(method, A, y, prior, x_fbp, noise_std, solve, progress, constraint=None):
    """``reconstruct``'s ``lam="auto"``: the discrepancy-principle weight per batch item.

    ``solve(weight, x0, y, prior, constraint)`` reconstructs one item; returns ``(x, [lam per item],
    iterations, search iterations)``: those of the trials kept (the most of any item) and of all trials. The progress bar counts the search's trials (a full reconstruction each, up to
    ``AUTO_TRIALS`` per item) and shows the last weight tried and its residual ratio."""
    from tqdm.auto import tqdm

    sigmas = noise_levels(y, noise_std)
    m = y[0].numel()
    xs, lams, final, iters = [], [], 0, 0
    bar = tqdm(total=y.shape[0] * AUTO_TRIALS, desc=f"{method}: lam by discrepancy", unit="trial",
               disable=not progress)
    for i in range(y.shape[0]):
        yi, pi, ci = y[i:i + 1], item(prior, i), item(constraint, i)
        s = float(sigmas[i])
        count, runs = [0], {}

        def solve_i(weight, _previous):
            # every trial starts from FBP, as a reconstruction at a given weight does: warm starts from
            # the previous trial left 300 iterations short of it (measured: up to 1.6 dB lower on ellipses)
            r = solve(weight, x_fbp[i:i + 1], yi, pi, ci)
            count[0] += r.n_iter
            runs[weight] = r.n_iter
            bar.set_postfix_str(f"lam {weight:.3g}", refresh=False)
            return r.x

        def residual(x):
            value = float((A(x) - yi).norm())
            bar.set_postfix_str(f"{bar.postfix}, residual / noise {value / (s * math.sqrt(m)):.3f}", refresh=False)
            bar.update(1)
            return value

        lam0 = default_lambda(method, A, yi, s, pi)
        found = discrepancy_search(solve_i, residual, s * math.sqrt(m), lam0, max_evaluations=AUTO_TRIALS)
        bar.total -= AUTO_TRIALS - len(found.evaluations)  # the search met its tolerance early
        bar.refresh()
        if found.lam < AUTO_FLOOR * lam0:
            warnings.warn(f"lam='auto' chose {found.lam:.3g} for item {i}, below {AUTO_FLOOR:g}x the default rule's "
                          f"{lam0:.3g}: with many measurements per pixel the discrepancy principle under-regularises "
                          "(docs/lam_rule_range_study.md); the default weight (lam=None) is safer here", stacklevel=3)
        xs.append(found.x)
        lams.append(found.lam)
        final = max(final, runs[found.lam])
        iters += count[0]
    bar.close()
    return torch.cat(xs), lams, final, iters


def item(prior, i: int):
    """The prior (or constraint) of batch item ``i``: those built from a batch hold one map per item."""
    return prior.item(i) if hasattr(prior, "item") else prior
