r"""Choosing the regularisation weight by cross-validation over views: TV's default on 2D CT, ``lam="cv"``.

The rule (``recon.parameter_choice.lambda_rule``) sees the sinogram's noise, the image size and the geometry, not the
object: at the same setting the best TV weight of a phantom with many edges (Shepp-Logan, COULE-like
bars) is about a quarter of that of a few smooth ellipses, so the rule lands between them
(docs/lam_rule_range_study.md). Cross-validation lets the data decide. Every ``CV_FOLDS``-th view,
from view 0, is held out; for a multiple ``m`` of the rule, the kept views are reconstructed at ``m``
times the rule computed on them, and

.. math:: \mathrm{CV}(m) = \|A_h x_m - y_h\|^2 / \|y_h\|^2

(``h`` the held-out views) is minimised over ``m`` on the grid ``2^{k/2}``: ``m = 1/2, 1, 2``, then
doubling towards the lower error until the minimum is bracketed (at most ``CV_MAX_DOUBLINGS`` times),
then the vertex of the parabola through the bracketing three (in ``log m``), rounded to the grid. The
image is reconstructed from all views at the chosen multiple of the rule on all views, so the choice
is unit-free and carries over from the kept views through the rule's dependence on the views.

It costs one reconstruction from ``(CV_FOLDS - 1) / CV_FOLDS`` of the views per multiple tried (three,
and one more per doubling) and the final one: about four TV runs in all. It needs an operator whose
views can be split (``view_subset``: the 2D CT operators) and at least ``2 CV_FOLDS`` views; elsewhere
``reconstruct``'s TV default is the rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from recon.fbp import fbp
from recon.parameter_choice.lambda_rule import default_lambda, noise_levels

__all__ = ["CV_FOLDS", "CV_MAX_DOUBLINGS", "grid_minimum", "view_folds", "can_cross_validate", "cv_lambda"]

#: every CV_FOLDS-th view is held out, and how far the search may move from the rule (doublings)
CV_FOLDS, CV_MAX_DOUBLINGS = 4, 4


def view_folds(views: int, folds: int = CV_FOLDS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(kept, held_out)`` view indices of each fold; view ``i`` is held out in fold ``i mod folds``.

    Example:
        >>> [(k.tolist(), h.tolist()) for k, h in view_folds(6, 3)]
        [([1, 2, 4, 5], [0, 3]), ([0, 2, 3, 5], [1, 4]), ([0, 1, 3, 4], [2, 5])]
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}")
    if views < 2 * folds:
        raise ValueError(f"y: cross-validation over {folds} folds needs at least {2 * folds} views, got {views}")
    index = torch.arange(views)
    return [(index[index % folds != f], index[index % folds == f]) for f in range(folds)]


def can_cross_validate(A) -> bool:
    """Whether ``A``'s views can be split for ``cv_lambda`` (a 2D CT operator with ``2 CV_FOLDS`` views or more)."""
    return hasattr(A, "view_subset") and A.out_shape[-2] >= 2 * CV_FOLDS


def grid_minimum(error: Callable[[float], float], max_doublings: int = CV_MAX_DOUBLINGS) -> tuple[float, dict]:
    r"""The multiple ``m = 2^(k/2)`` that least ``error(m)`` by the module's search, and every ``{m: error}``
    evaluated.

    Example:
        >>> import math
        >>> m, tried = grid_minimum(lambda m: (math.log2(m) - 1.4) ** 2)  # least at m = 2^1.4
        >>> round(m, 3), [round(v, 3) for v in tried]
        (2.828, [0.5, 1.0, 2.0, 4.0])
    """
    values: dict[int, float] = {}

    def at(k: int) -> float:
        if k not in values:
            values[k] = float(error(2 ** (k / 2)))
        return values[k]

    for k in (0, -2, 2):
        at(k)
    while True:
        best = min(values, key=at)
        if best == min(values) and best > -2 * max_doublings:
            at(best - 2)
        elif best == max(values) and best < 2 * max_doublings:
            at(best + 2)
        else:
            break
    best = min(values, key=at)
    if best - 2 in values and best + 2 in values:  # bracketed: the parabola's vertex, in half steps, is within 1
        left, centre, right = values[best - 2], values[best], values[best + 2]
        curvature = left - 2 * centre + right
        best += max(-1, min(1, round((left - right) / curvature))) if curvature > 0 else 0
    return 2 ** (best / 2), {2 ** (k / 2): v for k, v in sorted(values.items())}


def cv_lambda(method: str, A, y: torch.Tensor, prior, x_fbp: torch.Tensor, noise_std, solve, progress: bool,
              constraint=None):
    """Per batch item the cross-validated multiple of the rule, and the reconstruction at it.

    ``solve(weight, x0, y, prior, constraint, A)`` reconstructs one item with operator ``A``; the kept
    views' reconstructions start from their FBP, the final one from ``x_fbp`` (the caller's). Returns
    ``(x, [lam per item], [multiple per item], iterations, search iterations)``: the final reconstructions'
    (the most of any item) and the kept views' (all of them). The progress bar counts the reconstructions."""
    from tqdm.auto import tqdm

    from recon.parameter_choice.discrepancy import item

    if not hasattr(A, "view_subset"):
        raise ValueError(f"lam: 'cv' splits the views of a 2D CT operator (ParallelBeam2D, FanBeam2D); got "
                         f"{type(A).__name__}")
    kept, held = view_folds(A.out_shape[-2], CV_FOLDS)[0]
    A_kept, A_held = A.view_subset(kept), A.view_subset(held)
    kept, held = kept.to(y.device), held.to(y.device)
    sigmas = noise_levels(y, noise_std)
    xs, lams, multiples, final, iters = [], [], [], 0, 0
    bar = tqdm(desc=f"{method}: lam by cross-validation", unit="recon", disable=not progress)
    for i in range(y.shape[0]):
        yi, pi, ci, s = y[i:i + 1], item(prior, i), item(constraint, i), float(sigmas[i])
        y_kept, y_held = yi[..., kept, :], yi[..., held, :]
        x0, rule = fbp(A_kept, y_kept), default_lambda(method, A_kept, y_kept, s, pi)

        def error(m: float) -> float:
            nonlocal iters
            r = solve(m * rule, x0, y_kept, pi, ci, A_kept)
            iters += r.n_iter
            bar.update(1)
            e = float((A_held(r.x) - y_held).pow(2).sum() / y_held.pow(2).sum())
            bar.set_postfix_str(f"x{m:.3g} of the rule: held-out error {e:.3g}")
            return e

        m, _ = grid_minimum(error)
        lam = m * default_lambda(method, A, yi, s, pi)
        r = solve(lam, x_fbp[i:i + 1], yi, pi, ci, A)
        bar.update(1)
        final = max(final, r.n_iter)
        xs.append(r.x)
        lams.append(lam)
        multiples.append(m)
    bar.close()
    return torch.cat(xs), lams, multiples, final, iters
