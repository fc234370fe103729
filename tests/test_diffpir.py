"""DiffPIR and its deterministic form (annealed PnP-HQS) against the closed form with a Gaussian prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from priors import L2Fidelity
from recon.diffusion.diffpir import DiffPIR
from recon.problem import Problem
from tests.test_red_diff import M0, S, _gaussian_prior, _problem

NOISE = 0.05


def _map(A, y, lam):
    """argmin 1/2 ||A x - y||^2 + lam NOISE^2 ||x - M0||^2 / (2 S^2), per item."""
    M = A.M.numpy()
    k = lam * NOISE ** 2 / S ** 2
    return np.stack([np.linalg.solve(M.T @ M + k * np.eye(M.shape[1]), M.T @ yi + k * M0) for yi in y.numpy()])


@pytest.mark.parametrize("lam, tol", [(1.0, 1e-3), (7.0, 6e-3)])
def test_annealed_hqs_reaches_the_gaussian_map(lam, tol):
    """1000 timesteps; the tolerance is a tenth of the distance to the MAP of twice the weight."""
    A, y = _problem()
    solver = DiffPIR(_gaussian_prior(), noise_std=NOISE, steps=1000, lam=lam, renoise=False)
    x = solver.run(Problem(L2Fidelity(A, y)), torch.zeros(2, 16, dtype=torch.float64)).x.numpy()
    expected = _map(A, y, lam)
    assert np.abs(x - expected).max() < tol, np.abs(x - expected).max()
    assert np.abs(_map(A, y, 2 * lam) - expected).max() > 10 * tol


def test_diffpir_is_seeded_and_checks_its_arguments():
    A, y = _problem()
    problem, x0 = Problem(L2Fidelity(A, y)), torch.zeros(2, 16, dtype=torch.float64)
    runs = [DiffPIR(_gaussian_prior(), noise_std=NOISE, steps=20, seed=s).run(problem, x0).x for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert DiffPIR(_gaussian_prior(), noise_std=NOISE, steps=10).timesteps == list(range(999, -1, -111))
    for kwargs, name in (({"zeta": 1.5}, "zeta"), ({"noise_std": 0.0}, "noise_std"), ({"lam": -1.0}, "lam"),
                         ({"timesteps": [3, 5]}, "timesteps"), ({"steps": 0}, "steps")):
        with pytest.raises(ValueError, match=f"^{name}: expected"):
            DiffPIR(_gaussian_prior(), **{"noise_std": NOISE, **kwargs})
