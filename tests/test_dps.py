"""DPS: against an independent (numpy, analytic-gradient) implementation of the same algorithm on a
linear-Gaussian toy, seeded, one network evaluation per step, no gradient into the network's weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from operators import Identity
from operators.matrix import MatrixOperator
from priors import L2Fidelity
from priors.diffusion import DiffusionPrior
from recon.diffusion.dps import DPS
from recon.problem import Problem
from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)


def _toy_module():
    path = Path(__file__).resolve().parents[1] / "docs" / "posterior_gaussian_toy.py"
    spec = importlib.util.spec_from_file_location("posterior_gaussian_toy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gaussian_prior(C, mu0):
    Ct, mut = torch.from_numpy(C), torch.from_numpy(mu0)

    def ideal(x, sigma):  # E[x0 | x0 + sigma n = x] for x0 ~ N(mu0, C); sigma (B, 1), one level per call
        s2 = float(sigma.flatten()[0]) ** 2
        K = Ct @ torch.linalg.inv(Ct + s2 * torch.eye(len(mu0), dtype=Ct.dtype))
        return mut + (x - mut) @ K.T

    return DiffusionPrior(ideal, preconditioned=False, sigma_range=(1e-3, 200.0))


def _dps(toy, C, mu0, A, y, zeta, chains, steps=1000):
    ys = torch.from_numpy(y).expand(chains, -1)
    problem = Problem(L2Fidelity(MatrixOperator(torch.from_numpy(A)), ys))
    x0 = torch.zeros(chains, len(mu0), dtype=torch.float64)
    return DPS(_gaussian_prior(C, mu0), steps=steps, zeta=zeta).run(problem, x0).x.numpy()


class _Zeros:
    """A numpy Generator stand-in whose normal draws are all 0."""

    @staticmethod
    def normal(size):
        return np.zeros(size)


def test_dps_without_noise_follows_an_independent_implementation_to_float_precision(monkeypatch):
    """Both started at x_T = 0 with every noise draw 0: the same deterministic path, drift and guidance
    (autograd here, the gradient written out by hand in docs/posterior_gaussian_toy.py). 100 steps: over
    1000 the noiseless path fits the data until the residual's direction, its gradient, is rounding."""
    import recon.diffusion.dps

    toy = _toy_module()
    _, C, mu0, A, y = toy.setup()
    monkeypatch.setattr(recon.diffusion.dps, "complex_noise", lambda like, generator=None: torch.zeros_like(like))
    monkeypatch.setattr(toy, "CHAINS", 2)
    for zeta in (0.3, 1.0):
        reference = toy.ancestral(_Zeros(), toy.dps(C, mu0, A, y, zeta), steps=100)
        np.testing.assert_allclose(_dps(toy, C, mu0, A, y, zeta, 2, steps=100), reference, rtol=1e-9, atol=1e-9)


def test_dps_agrees_with_an_independent_implementation_on_a_gaussian_toy():
    toy = _toy_module()
    rng, C, mu0, A, y = toy.setup()
    zeta = 0.3
    reference = toy.ancestral(rng, toy.dps(C, mu0, A, y, zeta))  # numpy, the gradient written out by hand
    ours = _dps(toy, C, mu0, A, y, zeta, reference.shape[0])
    mean, P = toy.posterior(C, mu0, A, y)
    spread = np.sqrt(np.trace(P))
    # two sets of 4000 chains: their means differ by ~0.02 posterior std, their covariances by a few %
    assert np.linalg.norm(ours.mean(0) - reference.mean(0)) / spread < 0.08
    assert np.linalg.norm(np.cov(ours.T) - np.cov(reference.T)) / np.linalg.norm(P) < 0.12
    # and both are off the exact posterior by far more (DPS is an approximation: docs/posterior_gaussian_toy.py)
    assert np.linalg.norm(ours.mean(0) - mean) / spread > 0.2


class Counting(torch.nn.Module):
    """x / (1 + sigma^2) * w, counting its calls; w a weight that must get no gradient."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x, sigma):
        self.calls += 1
        return self.w * x / (1 + sigma ** 2)


def _identity_problem(batch=3):
    y = torch.linspace(0, 1, batch * 16).reshape(batch, 1, 4, 4)
    return Problem(L2Fidelity(Identity((1, 4, 4)), y)), y


def test_one_network_evaluation_per_step_and_no_gradient_into_the_weights():
    net = Counting()
    prior = DiffusionPrior(net, preconditioned=False, sigma_range=(1e-3, 200.0))
    problem, y = _identity_problem()
    out = DPS(prior, steps=10, zeta=0.5).run(problem, y)
    assert net.calls == 10 and out.n_iter == 10 and net.w.grad is None


def test_dps_is_seeded_and_checks_its_arguments():
    prior = DiffusionPrior(lambda x, s: x / (1 + s ** 2), preconditioned=False, sigma_range=(1e-3, 200.0))
    problem, y = _identity_problem()
    run = lambda seed: DPS(prior, steps=20, zeta=0.5, seed=seed).run(problem, y).x  # noqa: E731
    torch.testing.assert_close(run(3), run(3))
    assert (run(3) - run(4)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="zeta"):
        DPS(prior, zeta=-1.0)
    with pytest.raises(ValueError, match="timesteps: expected a strictly descending sequence"):
        DPS(prior, timesteps=[10, 20])
    with pytest.raises(TypeError, match="prior: expected a DiffusionPrior"):
        DPS(lambda x, s: x)
