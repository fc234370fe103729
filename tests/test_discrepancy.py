"""The discrepancy principle: the root search, and lam="auto" in reconstruct()."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from data.phantoms import shepp_logan
from operators import ParallelBeam2D
from recon.parameter_choice.discrepancy import AUTO_FLOOR, AUTO_TRIALS, DISCREPANCY_TAU, discrepancy_search
from recon.reconstruct import reconstruct


@pytest.mark.parametrize("target, lam0", [(1.0, 1.0), (0.2, 50.0), (3.0, 1e-4)])
def test_search_finds_the_analytic_weight(target, lam0):
    """Ridge denoising x = y / (1 + lam): residual lam / (1 + lam) ||y||, so lam* = t / (||y|| - t)."""
    y = torch.tensor([3.0, -2.0, 0.5, 1.0], dtype=torch.float64)
    calls = []

    def solve(lam, x0):
        calls.append(lam)
        return y / (1 + lam)

    res = discrepancy_search(solve, lambda x: float((x - y).norm()), target, lam0, tau=1.0, rtol=1e-3,
                             max_evaluations=20)
    exact = target / (float(y.norm()) - target)
    assert res.lam == pytest.approx(exact, rel=5e-3)
    assert abs(res.ratio - 1) < 1e-3 and len(res.evaluations) == len(calls) <= 12


def test_search_returns_the_best_evaluation_when_it_runs_out():
    y = torch.tensor([1.0, 1.0], dtype=torch.float64)
    res = discrepancy_search(lambda lam, x0: y / (1 + lam), lambda x: float((x - y).norm()), 0.5, 1e-6,
                             rtol=1e-9, max_evaluations=2)
    assert len(res.evaluations) == 2
    assert abs(math.log(res.ratio)) == min(abs(math.log(r)) for _, r in res.evaluations)


def test_search_bad_input():
    with pytest.raises(ValueError, match="noise_std"):
        discrepancy_search(lambda lam, x0: None, lambda x: 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="lam0"):
        discrepancy_search(lambda lam, x0: None, lambda x: 0.0, 1.0, 0.0)


@pytest.fixture(scope="module")
def ct():
    x = shepp_logan(64).double()
    A = ParallelBeam2D((64, 64), np.linspace(0, np.pi, 30, endpoint=False), 92)
    y0 = A(x)
    sigmas = [0.01, 0.03]
    noise = torch.randn((2, *y0.shape[1:]), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.cat([y0 + s * float(y0.pow(2).mean().sqrt()) * noise[i:i + 1] for i, s in enumerate(sigmas)])
    return A, x, y, [s * float(y0.pow(2).mean().sqrt()) for s in sigmas]


@pytest.mark.parametrize("method", ["tv", "svtv"])
def test_auto_lambda_meets_the_discrepancy_per_item(ct, method):
    """Each item's residual lands on tau * sigma * sqrt(m), and the noisier item gets the larger weight."""
    A, x, y, sigmas = ct
    m = y[0].numel()
    runs = [reconstruct(A, y[i:i + 1], method, lam="auto", noise_std=s, iterations=150) for i, s in enumerate(sigmas)]
    lams = [r.parameters["lam"] for r in runs]
    assert lams[1] > 2 * lams[0]
    for r, yi, s in zip(runs, y, sigmas):
        ratio = float((A(r.x) - yi[None]).norm()) / (DISCREPANCY_TAU * s * math.sqrt(m))
        assert abs(ratio - 1) < 0.011, ratio
        assert r.parameters["lam_rule"] == "discrepancy"
        assert r.iterations <= 150 < r.parameters["auto_search_iterations"]  # the kept trial's; all trials'


def test_auto_lambda_batched_equals_looped(ct):
    A, x, y, sigmas = ct
    one = [reconstruct(A, y[i:i + 1], "tv", lam="auto", iterations=100) for i in range(2)]
    both = reconstruct(A, y, "tv", lam="auto", iterations=100)
    assert both.parameters["lam"] == pytest.approx([r.parameters["lam"] for r in one], rel=1e-6)
    assert torch.allclose(both.x, torch.cat([r.x for r in one]), rtol=0, atol=1e-6 * float(x.max()))


def test_auto_lambda_progress_counts_the_trials(ct, capsys):
    # the bar advances once per reconstruction the search tries (not once per batch item) and ends
    # full, with the last weight and residual ratio shown
    A, x, y, sigmas = ct
    reconstruct(A, y[:1], "tv", lam="auto", noise_std=sigmas[0], iterations=40, progress=True)
    frames = [f for f in capsys.readouterr().err.replace("\r", "\n").splitlines() if "lam by discrepancy" in f]
    counts = [tuple(map(int, re.search(r"(\d+)/(\d+) \[", f).groups())) for f in frames]
    done, total = counts[-1]
    assert done == total >= 2 and counts[0][1] == AUTO_TRIALS and "trial" in frames[-1]
    assert re.search(r"lam [0-9.e-]+, residual / noise 0\.9\d\d", frames[-1]), frames[-1]


def test_auto_lambda_warns_where_the_principle_under_regularises():
    # many measurements per pixel (120 views of 32^2): the residual at the best weight is above 0.93 sigma
    # sqrt(m), so the principle's weight is far below it (measured 0.004 against the rule's 0.49, 5 dB lower)
    from apps.ct import simulate
    from recon.reconstruct import default_tv_lambda

    data = simulate("shepp-logan", 32, 120, "parallel", 0.05, 0)
    A = ParallelBeam2D((32, 32), data.angles, data.sinogram.shape[1])
    y = torch.from_numpy(data.sinogram)[None, None]
    with pytest.warns(UserWarning, match=r"lam='auto' chose .* below 0.25x the default rule's"):
        r = reconstruct(A, y, "tv", lam="auto", noise_std=data.noise_std)
    assert r.parameters["lam"] < AUTO_FLOOR * default_tv_lambda(A, y, data.noise_std)


def test_auto_lambda_bad_input(ct):
    A, x, y, _ = ct
    with pytest.raises(ValueError, match="lam: expected a number, None .*, 'auto' or 'cv'"):
        reconstruct(A, y, "tv", lam="discrepancy")
    with pytest.raises(ValueError, match="noise_std: expected a positive"):
        reconstruct(A, y, "tv", lam="auto", noise_std=0.0)
    with pytest.raises(ValueError, match="lam: expected a non-negative"):
        reconstruct(A, y, "tv", lam=-1.0)
