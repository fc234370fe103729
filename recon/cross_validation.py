r"""Choosing the regularisation weight by cross-validation over views (``lam="cv"``).

The default rule (``recon.lambda_rule``) sees the sinogram's noise, the image size and the geometry,
not the object: at the same setting the best TV weight of a phantom with many edges (Shepp-Logan,
COULE-like bars) is about a quarter of that of a few smooth ellipses, so the rule lands between them
(docs/lam_rule_range_study.md). Cross-validation lets the data decide. The views are split into
``folds`` interleaved folds (view ``i`` in fold ``i mod folds``); for a multiple ``m`` of the rule,
each fold's views are predicted from a reconstruction of the others at ``m`` times the rule computed
on those others, and

.. math:: \mathrm{CV}(m) = \sum_f \|A_f x_m^{(-f)} - y_f\|^2 / \|y_f\|^2

is minimised over ``m`` on the grid ``2^{k/2}``: ``m = 1/2, 1, 2``, then doubling towards the lower
error until the minimum is bracketed (at most ``CV_MAX_DOUBLINGS`` times), then the two
``sqrt 2`` neighbours of the best. The image is reconstructed from all views at the chosen multiple
of the rule on all views, so the choice is unit-free and carries over from the fold problems (with
``(folds - 1) / folds`` of the views) through the rule's dependence on the views.

It costs about ``(folds - 1)`` full reconstructions per multiple tried (each fold's reconstruction
sees ``(folds - 1) / folds`` of the views; at least five multiples are tried) and one more at the
end: opt-in, for when the object is unlike the phantoms the rule was fitted on. It needs an operator whose views can
be split (``view_subset``: the 2D CT operators).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from recon.fbp import fbp
from recon.lambda_rule import default_lambda, noise_levels

__all__ = ["CV_FOLDS", "CV_MAX_DOUBLINGS", "grid_minimum", "view_folds", "cv_lambda"]

#: folds of the views (each reconstruction sees 3/4 of them) and how far the search may move from the rule
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


def grid_minimum(error: Callable[[float], float], max_doublings: int = CV_MAX_DOUBLINGS) -> tuple[float, dict]:
    r"""The multiple ``m = 2^(k/2)`` with the least ``error(m)`` by the module's grid search, and every
    ``{m: error}`` evaluated.

    Example:
        >>> import math
        >>> m, tried = grid_minimum(lambda m: (math.log2(m) - 1.4) ** 2)  # least at m = 2^1.4
        >>> round(m, 3), [round(v, 3) for v in tried]
        (2.828, [0.5, 1.0, 1.414, 2.0, 2.828, 4.0])
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
    at(best - 1), at(best + 1)
    best = min(values, key=at)
    return 2 ** (best / 2), {2 ** (k / 2): v for k, v in sorted(values.items())}


def cv_lambda(method: str, A, y: torch.Tensor, prior, x_fbp: torch.Tensor, noise_std, solve, progress: bool,
              constraint=None, folds: int = CV_FOLDS):
    """``reconstruct``'s ``lam="cv"``: per batch item the cross-validated multiple of the default rule.

    ``solve(weight, x0, y, prior, constraint, A)`` reconstructs one item with operator ``A``; each fold's
    reconstructions start from the FBP of its views, the final one from ``x_fbp`` (the caller's). Returns
    ``(x, [lam per item], [multiple per item], total iterations)``. The progress bar counts the
    reconstructions (the folds' and the final one)."""
    from tqdm.auto import tqdm

    from recon.discrepancy import item

    if not hasattr(A, "view_subset"):
        raise ValueError(f"lam: 'cv' splits the views of a 2D CT operator (ParallelBeam2D, FanBeam2D); got "
                         f"{type(A).__name__}")
    splits = view_folds(A.out_shape[-2], folds)
    operators = [(A.view_subset(kept), A.view_subset(held)) for kept, held in splits]
    sigmas = noise_levels(y, noise_std)
    xs, lams, multiples, iters = [], [], [], 0
    bar = tqdm(desc=f"{method}: lam by cross-validation", unit="recon", disable=not progress)
    for i in range(y.shape[0]):
        yi, pi, ci, s = y[i:i + 1], item(prior, i), item(constraint, i), float(sigmas[i])
        fold_problems = []
        for (kept, held), (A_kept, A_held) in zip(splits, operators):
            y_kept, y_held = yi[..., kept.to(y.device), :], yi[..., held.to(y.device), :]
            fold_problems.append((A_kept, A_held, y_kept, y_held, fbp(A_kept, y_kept),
                                  default_lambda(method, A_kept, y_kept, s, pi)))

        def error(m: float) -> float:
            nonlocal iters
            total = 0.0
            for A_kept, A_held, y_kept, y_held, x0, rule in fold_problems:
                r = solve(m * rule, x0, y_kept, pi, ci, A_kept)
                iters += r.n_iter
                total += float((A_held(r.x) - y_held).pow(2).sum() / y_held.pow(2).sum())
                bar.update(1)
            bar.set_postfix_str(f"x{m:.3g} of the rule: held-out error {total / len(fold_problems):.3g}")
            return total

        m, _ = grid_minimum(error)
        lam = m * default_lambda(method, A, yi, s, pi)
        r = solve(lam, x_fbp[i:i + 1], yi, pi, ci, A)
        bar.update(1)
        iters += r.n_iter
        xs.append(r.x)
        lams.append(lam)
        multiples.append(m)
    bar.close()
    return torch.cat(xs), lams, multiples, iters
