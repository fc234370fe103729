"""Plug-and-play: DenoiserPrior's tau -> sigma rule, and PnP-ADMM / PnP-PGD against independent references.

References: closed forms (soft thresholding, ridge regression), a dense numpy least-squares /
linear solve of the operator's matrix, and ChambollePock run to a tight tolerance (a different
algorithm that dualises the prior instead of calling its prox).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.phantoms import shepp_logan
from operators import Blur, FiniteDifference, Identity, ParallelBeam2D, gaussian_kernel
from priors import TV, L1Norm, L2Fidelity, NonNegativity, SquaredL2Distance
from priors.denoiser import DenoiserPrior, FixedSigmaDenoiser, noise_level
from recon import ChambollePock, Problem
from recon.pnp import PnPADMM, PnPProximalGradient
from tests.contracts import randn, rel_diff

F64 = torch.float64


def soft(v: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0)


def shrinkage(c: float):
    """MAP (and MMSE) denoiser for the Gaussian prior N(0, c^2 I), i.e. phi(x) = ||x||^2 / (2 c^2)."""
    return lambda v, sigma: c ** 2 * v / (c ** 2 + sigma ** 2)


def smoothing(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A toy denoiser: Gaussian smoothing of width 2 sigma pixels (7 x 7 kernel, reflecting edges)."""
    k = torch.as_tensor(gaussian_kernel(2.0 * sigma, size=7), dtype=x.dtype)
    return F.conv2d(F.pad(x, (3, 3, 3, 3), mode="reflect"), k[None, None])


def dense(A, dtype=F64) -> np.ndarray:
    n = math.prod(A.in_shape)
    return A(torch.eye(n, dtype=dtype).reshape(n, *A.in_shape)).reshape(n, -1).T.numpy()


@pytest.fixture
def tiny_ct():
    """10 x 10 parallel-beam CT in float64 (exact sparse matrix on CPU), cond(A) ~ 71, two data items."""
    A = ParallelBeam2D((10, 10), np.linspace(0, np.pi, 24, endpoint=False), 15)
    return A, randn(A.out_shape, F64, batch=2, seed=3)


@pytest.fixture(scope="module")
def ct_tv():
    """TV-regularised 16 x 16 CT (2% noise) and its minimiser by ChambollePock: ~4700 iterations to
    tol 1e-10, measured 5e-8 from a run to tol 1e-13."""
    A = ParallelBeam2D((16, 16), np.linspace(0, np.pi, 16, endpoint=False), 24)
    x = shepp_logan(16).to(F64)
    y = A(x)
    y = y + 0.02 * y.pow(2).mean().sqrt() * torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    reference = ChambollePock(max_iter=20000, tol=1e-10).run(Problem(L2Fidelity(A, y), 0.5 * TV()), torch.zeros_like(x))
    assert reference.converged
    return A, y, reference.x


# -- DenoiserPrior ------------------------------------------------------------------------

def test_noise_level_rule():
    assert noise_level(0.5, lam=2.0) == 1.0
    assert noise_level(0.0) == 0.0
    tau = torch.tensor([0.5, 2.0], dtype=F64)
    assert torch.allclose(noise_level(tau, 2.0), torch.tensor([1.0, 2.0], dtype=F64))


@pytest.mark.parametrize("tau", [0.1, 1.0, 7.0])
def test_prox_of_a_map_denoiser_is_the_exact_prox(tau):
    """With the MAP denoiser of phi = ||x||^2 / (2 c^2), prox(x, tau) is the closed-form
    ``argmin_p tau lam phi(p) + 1/2 ||p - x||^2 = x / (1 + tau lam / c^2)``: the rule sigma^2 = lam tau."""
    c, lam = 0.8, 3.0
    x = randn((1, 5, 5), F64)
    p = DenoiserPrior(shrinkage(c), lam=lam).prox(x, tau)
    assert rel_diff(p, x / (1 + tau * lam / c ** 2)) < 1e-14
    taus = torch.tensor([tau, 2 * tau], dtype=F64).reshape(2, 1, 1, 1)  # per-item steps
    p = DenoiserPrior(shrinkage(c), lam=lam).prox(x, taus)
    assert rel_diff(p, x / (1 + taus * lam / c ** 2)) < 1e-14


def test_prox_and_at_follow_the_documented_rule():
    """A denoiser whose smoothing width grows with sigma: prox(x, tau) = D(x, sqrt(lam tau)) and
    at(sigma).prox(x, tau) = D(x, sigma) for every tau."""
    seen = []

    def denoiser(x, sigma):
        seen.append(sigma)
        return smoothing(x, sigma)

    prior, x = DenoiserPrior(denoiser, lam=0.5), randn((1, 12, 12), F64)
    assert torch.equal(prior.prox(x, 2.0), smoothing(x, 1.0)) and seen == [1.0]
    assert torch.equal(prior.prox(x, 4.5), smoothing(x, 1.5))
    fixed = prior.at(0.7)
    assert isinstance(fixed, FixedSigmaDenoiser) and fixed.has_prox
    for tau in (1e-3, 1.0, 50.0):
        assert torch.equal(fixed.prox(x, tau), smoothing(x, 0.7))
    assert rel_diff(fixed.grad(x), (x - smoothing(x, 0.7)) / 0.49) < 1e-14
    assert not torch.equal(prior.prox(x, 2.0), prior.prox(x, 4.5))  # the step matters
    assert torch.equal(prior.prox(x, 0.0), x)  # tau = 0: the identity, the denoiser is not called
    assert seen == [1.0, 1.5, 0.7, 0.7, 0.7, 0.7, 1.0, 1.5]  # sqrt(0.5 tau), then the fixed sigma


def test_at_grad_is_the_gaussian_score_and_per_item_sigma():
    """Tweedie: for N(0, c^2) data the MMSE denoiser's residual / sigma^2 is x / (c^2 + sigma^2)."""
    c, x = 1.3, randn((1, 4, 4), F64)
    prior = DenoiserPrior(shrinkage(c))
    assert rel_diff(prior.at(0.5).grad(x), x / (c ** 2 + 0.25)) < 1e-14
    sigma = torch.tensor([0.5, 2.0], dtype=F64)
    expected = x / (c ** 2 + sigma.reshape(2, 1, 1, 1) ** 2)
    assert rel_diff(prior.at(sigma).grad(x), expected) < 1e-14


def test_blind_denoiser_ignores_the_step():
    prior, x = DenoiserPrior(lambda v: 0.5 * v, blind=True), randn((1, 3, 3))
    assert torch.equal(prior.prox(x, 0.1), 0.5 * x) and torch.equal(prior.prox(x, 9.0), 0.5 * x)


class _Recorder(nn.Module):
    """A float32 network that records its mode, autograd state and input dtype."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, x, sigma):
        self.calls.append((self.training, torch.is_grad_enabled(), x.dtype))
        return self.weight * x / (1 + sigma)


def test_module_denoiser_runs_frozen_in_its_dtype_and_keeps_the_input_dtype():
    net = _Recorder()
    net.train()
    x = randn((1, 4, 4), F64)
    out = DenoiserPrior(net).prox(x, 1.0)
    assert net.calls[-1] == (False, False, torch.float32)  # eval, no grad, network dtype
    assert net.training  # the module's own mode is restored
    assert out.dtype == F64 and not out.requires_grad and rel_diff(out, 0.25 * x) < 1e-7
    out = DenoiserPrior(net, frozen=False).prox(x, 1.0)
    assert net.calls[-1] == (True, True, torch.float32) and out.requires_grad
    assert DenoiserPrior(net).prox(randn((1, 4, 4)), 1.0).dtype == torch.float32


def test_denoiser_prior_bad_arguments():
    x = randn((1, 4, 4))
    with pytest.raises(TypeError, match="denoiser: expected a callable D\\(x, sigma\\) or D\\(x\\).*got int"):
        DenoiserPrior(3)
    with pytest.raises(ValueError, match="lam: expected a finite number > 0, got 0"):
        DenoiserPrior(smoothing, lam=0)
    with pytest.raises(ValueError, match="sigma: expected a finite number > 0, got -1"):
        DenoiserPrior(smoothing).at(-1.0)
    with pytest.raises(ValueError, match="sigma: expected a \\(B,\\) tensor"):
        DenoiserPrior(smoothing).at(torch.zeros(2))
    with pytest.raises(ValueError, match="tau: expected a finite step >= 0, got -1"):
        DenoiserPrior(smoothing).prox(x, -1.0)
    with pytest.raises(ValueError, match="x: expected a batched tensor \\(B, C, ...\\), got shape \\(4,\\)"):
        DenoiserPrior(smoothing).prox(torch.ones(4), 1.0)
    with pytest.raises(ValueError, match=r"denoiser: expected an output of shape \(2, 1, 4, 4\).*got \(2, 4, 4\)"):
        DenoiserPrior(lambda v, s: v[:, 0]).prox(x, 1.0)


# -- PnP solvers against convex references --------------------------------------------------

def test_l1_denoising_reaches_soft_thresholding():
    """``min s/2 ||x - y||^2 + lam ||x||_1`` is ``soft(y, lam / s)``; with ``x >= 0`` it is its clamp.
    Two data terms: s * L2Fidelity(I) (CG step) and s * SquaredL2Distance (its own prox)."""
    y, lam, s = randn((1, 8, 8), F64, seed=4), 0.3, 2.0
    expected = soft(y, lam / s)
    for data in (s * L2Fidelity(Identity((1, 8, 8)), y), s * SquaredL2Distance(y)):
        solver = PnPADMM(rho=4.0, max_iter=500, tol=1e-14, cg_tol=1e-14)
        res = solver.run(Problem(data, lam * L1Norm()), torch.zeros_like(y))
        assert res.converged and rel_diff(res.x, expected) < 1e-12  # measured 2e-14 (76 iterations)
        res = solver.run(Problem(data, lam * L1Norm(), constraint=NonNegativity()), torch.zeros_like(y))
        assert res.converged and rel_diff(res.x, expected.clamp_min(0)) < 1e-12
    pgd = PnPProximalGradient(max_iter=5).run(Problem(s * L2Fidelity(Identity((1, 8, 8)), y), lam * L1Norm()), y)
    assert pgd.state.eta == 1 / s and rel_diff(pgd.x, expected) < 1e-14  # exact after one step


def test_l1_deblurring_matches_chambolle_pock():
    """Sparse spikes under a circular Gaussian blur: ADMM (closed-form data step), PnP-PGD and
    ChambollePock (tol 1e-13, itself checked against its all-dual form) reach one minimiser."""
    A = Blur(gaussian_kernel(0.7), (32, 32))
    gen = torch.Generator().manual_seed(0)
    x_true = (torch.rand(2, 1, 32, 32, generator=gen, dtype=F64) > 0.9).to(F64)
    y = A(x_true) + 0.02 * torch.randn(x_true.shape, generator=gen, dtype=F64)
    problem = Problem(L2Fidelity(A, y), 0.02 * L1Norm())
    reference = ChambollePock(max_iter=5000, tol=1e-13).run(problem, torch.zeros_like(y))
    assert reference.converged
    admm = PnPADMM(rho=0.3, max_iter=3000, tol=1e-13).run(problem, A.H(y))
    pgd = PnPProximalGradient(max_iter=5000, tol=1e-13).run(problem, A.H(y))
    assert admm.converged and pgd.converged
    assert rel_diff(admm.x, reference.x) < 1e-9  # measured 2.4e-12 (565 iterations)
    assert rel_diff(pgd.x, reference.x) < 1e-9  # measured 7.2e-12 (1761 iterations)


def test_tv_ct_admm_matches_chambolle_pock(ct_tv):
    """TV on 16 x 16 CT, ADMM with a CG data step. The agreement is limited by the inexact TV prox
    (200 FGP iterations per call; measured 8.5e-6 with rho = 30 after 60 iterations)."""
    A, y, reference = ct_tv
    problem = Problem(L2Fidelity(A, y), 0.5 * TV(prox_iterations=200))
    x = PnPADMM(rho=30.0, max_iter=60, tol=0, cg_iterations=50, cg_tol=1e-10).run(problem, A.H(y) / A.norm() ** 2).x
    assert rel_diff(x, reference) < 5e-5


def test_tv_ct_proximal_gradient_matches_chambolle_pock(ct_tv):
    """The same problem by PnP-PGD with eta = 1 / ||A||^2 (measured 8.6e-5 after 300 iterations with
    30 FGP iterations per prox; 5.4e-5 with 50; 1.7e-7 after 1000 iterations with 300)."""
    A, y, reference = ct_tv
    problem = Problem(L2Fidelity(A, y), 0.5 * TV(prox_iterations=30))
    x = PnPProximalGradient(max_iter=300, tol=0).run(problem, A.H(y) / A.norm() ** 2).x
    assert rel_diff(x, reference) < 3e-4


def test_admm_without_prior_is_least_squares(tiny_ct):
    """Zero prior: ADMM is the proximal point method on 1/2 ||Ax - y||_W^2 and reaches numpy's lstsq
    (unweighted, and weighted by W through sqrt(W) M)."""
    A, y = tiny_ct
    M = dense(A)
    expected = np.stack([np.linalg.lstsq(M, yi.flatten(), rcond=None)[0] for yi in y.numpy()])
    res = PnPADMM(rho=0.01, max_iter=200, tol=1e-13, cg_iterations=200, cg_tol=1e-13).run(
        Problem(L2Fidelity(A, y)), torch.zeros(2, *A.in_shape, dtype=F64))
    assert res.converged
    assert rel_diff(res.x.reshape(2, -1), torch.as_tensor(expected)) < 1e-9  # measured 4.3e-12 (17 iterations)
    w = 0.5 + torch.rand(y.shape, generator=torch.Generator().manual_seed(1), dtype=F64)  # weighted: sqrt(W) M
    sw = w.sqrt().reshape(2, -1).numpy()
    expected = np.stack([np.linalg.lstsq(swi[:, None] * M, swi * yi.flatten(), rcond=None)[0]
                         for swi, yi in zip(sw, y.numpy())])
    res = PnPADMM(rho=0.01, max_iter=200, tol=1e-13, cg_iterations=200, cg_tol=1e-13).run(
        Problem(L2Fidelity(A, y, weight=w)), torch.zeros(2, *A.in_shape, dtype=F64))
    assert res.converged and rel_diff(res.x.reshape(2, -1), torch.as_tensor(expected)) < 1e-9


def test_gaussian_denoiser_prior_gives_ridge_regression(tiny_ct):
    """The MAP denoiser of N(0, c^2 I) with the rule sigma^2 = lam tau makes PnP solve
    ``min s/2 ||Ax - y||^2 + lam / (2 c^2) ||x||^2``: ``(s M^T M + lam / c^2 I) x = s M^T y``."""
    A, y = tiny_ct
    c, lam, s = 0.5, 2.0, 3.0
    M = dense(A)
    expected = np.linalg.solve(s * M.T @ M + lam / c ** 2 * np.eye(100), s * M.T @ y.reshape(2, -1).numpy().T).T
    problem = Problem(s * L2Fidelity(A, y), DenoiserPrior(shrinkage(c), lam=lam))
    x0 = torch.zeros(2, *A.in_shape, dtype=F64)
    admm = PnPADMM(rho=20.0, max_iter=500, tol=1e-13, cg_iterations=100, cg_tol=1e-13).run(problem, x0)
    pgd = PnPProximalGradient(max_iter=5000, tol=1e-13).run(problem, x0)
    assert admm.converged and pgd.converged
    assert rel_diff(admm.x.reshape(2, -1), torch.as_tensor(expected)) < 1e-9  # measured 4.8e-13 (79 iterations)
    assert rel_diff(pgd.x.reshape(2, -1), torch.as_tensor(expected)) < 1e-9  # measured 8.2e-12 (1980 iterations)


# -- solver mechanics -------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: PnPADMM(rho=5.0, max_iter=15, tol=0, cg_tol=0.0),
    lambda: PnPProximalGradient(max_iter=15, tol=0),
])
def test_batched_equals_looped(tiny_ct, make):
    """Fixed CG iterations (cg_tol=0): with a tolerance the batch runs CG until its slowest item converges."""
    A, y = tiny_ct
    prior = DenoiserPrior(smoothing, lam=0.3)
    x0 = A.H(y) / A.norm() ** 2
    batched = make().run(Problem(L2Fidelity(A, y), prior), x0).x
    for i in range(2):
        single = make().run(Problem(L2Fidelity(A, y[i:i + 1]), prior), x0[i:i + 1]).x
        assert rel_diff(batched[i:i + 1], single) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("make", [lambda: PnPADMM(max_iter=3), lambda: PnPProximalGradient(max_iter=3)])
def test_dtype_is_kept(tiny_ct, make, dtype):
    A, y = tiny_ct
    x0 = torch.zeros(2, 1, 10, 10, dtype=dtype)
    res = make().run(Problem(L2Fidelity(A, y.to(dtype)), 0.1 * TV(prox_iterations=5)), x0)
    tensors = [v for v in vars(res.state).values() if isinstance(v, torch.Tensor) and v.ndim == 4]
    assert res.x.dtype == dtype and tensors and all(t.dtype == dtype for t in tensors)


def test_history_callbacks_and_tolerance(tiny_ct):
    A, y = tiny_ct
    problem = Problem(L2Fidelity(A, y), 0.1 * L1Norm())
    res = PnPADMM(max_iter=50, objective_every=2).run(problem, torch.zeros(2, 1, 10, 10, dtype=F64),
                                                      callbacks=[lambda n, state: n == 6])
    assert res.n_iter == 6 and not res.converged
    assert len(res.history["relative_change"]) == 6 and len(res.history["objective"]) == 4
    res = PnPProximalGradient(max_iter=5000, tol=1e-4).run(problem, torch.zeros(2, 1, 10, 10, dtype=F64))
    assert res.converged and res.n_iter < 5000 and res.history["relative_change"][-1] < 1e-4


def test_step_size_lives_in_the_state(tiny_ct):
    """One PnP-PGD object runs two problems interleaved, each with its own default step 1 / (s ||A||^2)."""
    A, y = tiny_ct
    p1, p2 = Problem(L2Fidelity(A, y), L1Norm()), Problem(4.0 * L2Fidelity(A, y), L1Norm())
    solver, x0 = PnPProximalGradient(max_iter=8, tol=0), torch.zeros(2, 1, 10, 10, dtype=F64)
    it1, it2 = solver.iterate(p1, x0), solver.iterate(p2, x0)
    for _ in range(8):
        s1, s2 = next(it1), next(it2)
    assert math.isclose(s1.eta, 1 / A.norm() ** 2) and math.isclose(s2.eta, s1.eta / 4)
    assert torch.equal(s1.x, solver.run(p1, x0).x) and torch.equal(s2.x, solver.run(p2, x0).x)


def test_pnp_bad_arguments(tiny_ct):
    A, y = tiny_ct
    x0, problem = torch.zeros(2, 1, 10, 10, dtype=F64), Problem(L2Fidelity(A, y), L1Norm())
    for rho in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rho: expected a finite number > 0"):
            PnPADMM(rho=rho)
    with pytest.raises(ValueError, match="cg_iterations: expected a positive integer, got 0"):
        PnPADMM(cg_iterations=0)
    with pytest.raises(ValueError, match="cg_tol: expected a finite number >= 0, got -1"):
        PnPADMM(cg_tol=-1.0)
    with pytest.raises(ValueError, match="eta: expected a finite number > 0, got 0"):
        PnPProximalGradient(eta=0.0)
    for solver in (PnPADMM(), PnPProximalGradient()):
        with pytest.raises(ValueError, match=r"x0: expected shape \(2, 1, 10, 10\).*got \(2, 1, 10, 9\)"):
            solver.run(problem, torch.zeros(2, 1, 10, 9, dtype=F64))
        with pytest.raises(ValueError, match=r"x0: expected shape \(2, 1, 10, 10\).*got \(1, 1, 10, 10\)"):
            solver.run(problem, x0[:1])
        with pytest.raises(ValueError, match="x0: contains NaN"):
            solver.run(problem, torch.full_like(x0, float("nan")))
        with pytest.raises(ValueError, match="problem.K: PnP solvers apply the prior's prox to the image itself"):
            solver.run(Problem(L2Fidelity(A, y), L1Norm(), K=FiniteDifference(A.in_shape)), x0)
        with pytest.raises(TypeError, match="problem.prior: PnP needs a prior with a prox.*got SumFunctional"):
            solver.run(Problem(L2Fidelity(A, y), TV() + L1Norm()), x0)
    with pytest.raises(TypeError, match="eta: no default step for a SquaredL2Distance data term"):
        PnPProximalGradient().run(Problem(SquaredL2Distance(x0), L1Norm()), x0)
    with pytest.raises(TypeError, match="problem.data: PnPProximalGradient needs a smooth data term"):
        PnPProximalGradient(eta=1.0).run(Problem(L1Norm(), L1Norm()), x0)
    with pytest.raises(TypeError, match="problem.data: PnPADMM needs an L2Fidelity or a data term with a prox"):
        PnPADMM().run(Problem(SquaredL2Distance(x0) + L1Norm(), L1Norm()), x0)
