"""Cross-validated weights (``reconstruct(..., lam="cv")``, recon.parameter_choice.cross_validation) and the view
subsets they use."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from apps.cli import main
from apps.ct import simulate
from operators import FanBeam2D, ParallelBeam2D
from operators.ct import ct_operator
from recon.metrics import psnr
from recon.parameter_choice.cross_validation import grid_minimum, view_folds
from recon.reconstruct import reconstruct
from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)


def case(phantom: str, size: int, views: int, noise: float, seed: int):
    data = simulate(phantom, size, views, "parallel", noise, seed)
    A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
    return A, torch.as_tensor(data.sinogram)[None, None], torch.as_tensor(data.reference)[None, None]


@pytest.mark.parametrize("A", [
    ParallelBeam2D((24, 24), np.linspace(0, np.pi, 10, endpoint=False), 36, pixel_size=0.5),
    FanBeam2D((24, 24), np.linspace(0, 2 * np.pi, 10, endpoint=False), 40, 60.0, 30.0, detector_spacing=1.5)])
def test_a_view_subset_is_the_operator_of_those_sinogram_rows(A):
    views = [7, 0, 3]
    sub = A.view_subset(views)
    x, r = torch.rand(2, 1, 24, 24, dtype=torch.float64), torch.rand(2, 1, 3, A.detector_count, dtype=torch.float64)
    assert type(sub) is type(A) and sub.out_shape == (1, 3, A.detector_count)
    assert torch.allclose(sub(x), A(x)[..., views, :])
    full = torch.zeros(2, 1, 10, A.detector_count, dtype=torch.float64)
    full[..., views, :] = r
    assert torch.allclose(sub.adjoint(r), A.adjoint(full))  # the adjoint of the row selection
    for bad in ([], [10], [-1], [[1, 2]], [0.5]):
        with pytest.raises(ValueError, match=r"views: expected a non-empty 1-D sequence of view indices in \[0, 10\)"):
            A.view_subset(bad)


def test_folds_partition_the_views_and_the_grid_search_brackets_its_minimum():
    folds = view_folds(10, 4)
    held = torch.cat([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(10))
    assert all(set(k.tolist()) | set(h.tolist()) == set(range(10)) and not set(k.tolist()) & set(h.tolist())
               for k, h in folds)
    with pytest.raises(ValueError, match="folds: expected an integer >= 2, got 1"):
        view_folds(10, 1)
    with pytest.raises(ValueError, match="y: cross-validation over 4 folds needs at least 8 views, got 6"):
        view_folds(6, 4)
    for target in (-3.2, -0.6, 0.0, 0.9, 2.6):  # a parabola in log m: its vertex is found to the nearest sqrt(2)
        m, tried = grid_minimum(lambda m, t=target: (math.log2(m) - t) ** 2)
        assert abs(math.log2(m) - target) <= 0.25 + 1e-9
        assert len(tried) == 3 + round(abs(target))  # 1/2, 1, 2, then doublings until the least is inside
    m, tried = grid_minimum(lambda m: -m, max_doublings=3)  # monotone: stops at the search's edge
    assert m == 2 ** 3 and max(tried) == m


def test_cv_finds_the_weight_the_rule_misses():
    """Random ellipses at 64^2, 60 views, 5% noise (seed 11): the rule's weight is a fifth of the best
    (docs/lam_rule_range_study.md: 3.2 dB lost); cross-validation over the views, TV's default on CT, comes
    within 0.5 dB of the best multiple of the rule on the sqrt(2) grid around its choice."""
    A, y, x = case("ellipses", 64, 60, 0.05, 11)
    rule = reconstruct(A, y, "tv", lam="rule")
    r = reconstruct(A, y, "tv")
    assert torch.equal(r.x, reconstruct(A, y, "tv", lam="cv").x)
    m = r.parameters["cv_multiple"]
    assert r.parameters["lam_rule"] == "cross-validation" and r.parameters["cv_held_out"] == "every 4th view"
    assert r.parameters["lam"] == pytest.approx(m * rule.parameters["lam"])
    near = [float(psnr(reconstruct(A, y, "tv", lam=f * m * rule.parameters["lam"]).x, x)) for f in (0.5, 2 ** -0.5,
                                                                                                      2 ** 0.5, 2)]
    chosen = float(psnr(r.x, x))
    assert chosen > float(psnr(rule.x, x)) + 2 and chosen > max(near) - 0.5


def test_cv_is_per_item_and_refuses_what_it_cannot_split(tmp_path):
    A, y0, _ = case("shepp-logan", 32, 24, 0.02, 0)
    _, y1, _ = case("ellipses", 32, 24, 0.02, 3)
    both = reconstruct(A, torch.cat([y0, y1]), "tv", lam="cv", iterations=50)
    one = reconstruct(A, y1, "tv", lam="cv", iterations=50)
    assert len(both.parameters["lam"]) == 2 and both.parameters["lam"][1] == pytest.approx(one.parameters["lam"])
    assert both.iterations <= 50 < both.parameters["cv_search_iterations"]  # the final reconstructions'; the search's
    assert torch.allclose(both.x[1:], one.x, atol=1e-5)
    six = A.view_subset(list(range(6))), y0[..., :6, :]
    with pytest.raises(ValueError, match="y: cross-validation over 4 folds needs at least 8 views, got 6"):
        reconstruct(*six, "tv", lam="cv")
    assert reconstruct(*six, "tv", iterations=5).parameters["lam_rule"] == "rule"  # the default where cv cannot
    from operators.blur import Blur, gaussian_kernel
    from priors import TV
    from recon.parameter_choice.cross_validation import cv_lambda

    B = Blur(gaussian_kernel(1.0), (32, 32))  # reconstruct's TV needs a CT operator's FBP; cv_lambda checks itself
    with pytest.raises(ValueError, match=r"lam: 'cv' splits the views of a 2D CT operator .* got Blur"):
        cv_lambda("tv", B, B(torch.rand(1, 1, 32, 32)), TV(), None, None, None, False)
    with pytest.raises(ValueError, match=r"lam: expected a number, None \(the default\), 'rule', 'auto' or 'cv', "
                                         "got 'CV'"):
        reconstruct(A, y0, "tv", lam="CV")
    out = tmp_path / "o"
    assert main(["ct", "--phantom", "shepp-logan", "--size", "32", "--views", "24", "--method", "tv", "--lam", "cv",
                 "--iterations", "50", "--output", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["tv"]
    assert metrics["lam_rule"] == "cross-validation" and metrics["lam"] > 0
