"""Solvers: agreement between independent algorithms, stopping, history, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.phantoms import shepp_logan
from operators import FiniteDifference, Identity, ParallelBeam2D
from priors import TV, L2Fidelity, L21Norm, NonNegativity
from recon import ChambollePock, Problem
from recon.linear import CGLS, SIRT, tikhonov
from recon.metrics import psnr
from recon.reconstruct import default_tv_lambda
from tests.contracts import randn, rel_diff


@pytest.fixture
def ct_problem():
    x = shepp_logan(48)
    A = ParallelBeam2D((48, 48), np.linspace(0, np.pi, 30, endpoint=False), 70)
    y = A(x)
    y = y + 0.01 * y.pow(2).mean().sqrt() * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    return A, x, y


@pytest.mark.slow
def test_cp_tv_denoising_equals_tv_prox():
    """CP on 1/2||x - y||^2 + lam TV(x) and TV.prox (dual FGP) are two algorithms, one answer."""
    y = shepp_logan(32) + 0.1 * randn((1, 32, 32), batch=1)
    lam = 0.15
    cp = ChambollePock(max_iter=20000, tol=1e-10).run(Problem(L2Fidelity(Identity((1, 32, 32)), y), lam * TV()), y)
    fgp = TV(prox_iterations=3000).prox(y, lam)
    assert rel_diff(cp.x, fgp) < 1e-3


@pytest.mark.slow
def test_cp_step_rules_reach_the_same_objective(ct_problem):
    """Balanced, diagonal and norm-based steps are different algorithms with one minimiser."""
    A, x, y = ct_problem
    # half the default weight: Shepp-Logan at 48^2 / 30 views is best below it (31.3 dB, default 27.3)
    problem = Problem(L2Fidelity(A, y), 0.5 * default_tv_lambda(A, y) * TV(), constraint=NonNegativity())
    runs = {p: ChambollePock(max_iter=n, tol=1e-8, preconditioning=p).run(problem, torch.zeros_like(x))
            for p, n in (("balanced", 2000), ("diagonal", 8000), ("norm", 8000))}
    f = {p: float(problem.objective(r.x)) for p, r in runs.items()}
    # measured 1.1e-4 after 8000 iterations: the norm-based steps converge more slowly
    assert abs(f["diagonal"] - f["norm"]) < 5e-4 * f["norm"]
    assert abs(f["balanced"] - f["diagonal"]) < 5e-4 * f["diagonal"]
    assert all(float(psnr(r.x, x)) > 30 for r in runs.values())


def test_cp_balanced_steps_beat_the_diagonal_rule(ct_problem):
    """The default (balanced) steps reach in 300 iterations what the diagonal rule has not in 1000."""
    A, x, y = ct_problem
    problem = Problem(L2Fidelity(A, y), default_tv_lambda(A, y) * TV(), constraint=NonNegativity())
    f = {(p, n): float(problem.objective(ChambollePock(max_iter=n, tol=0, preconditioning=p).run(
        problem, torch.zeros_like(x)).x)) for p, n in (("auto", 300), ("diagonal", 1000))}
    assert f["auto", 300] < f["diagonal", 1000]


@pytest.mark.parametrize("prior", ["tv", "graph", "identity"])
def test_cp_balanced_steps_satisfy_the_convergence_condition(ct_problem, prior):
    """``tau ||Sigma^(1/2) K||^2 < 1`` for the stacked blocks, by 300 power iterations (the solver's
    own estimate uses 10); an identity prior block makes the stack's norm^2 twice the blocks'."""
    from priors import GraphLaplacianPrior, L1Norm

    A, x, y = ct_problem
    prior_fn, K = {"tv": (TV(), None), "identity": (L1Norm(), Identity(A.in_shape)),
                   "graph": (GraphLaplacianPrior.from_estimate(x), None)}[prior]
    problem = Problem(L2Fidelity(A, y), 0.5 * prior_fn, constraint=NonNegativity(), K=K)
    setup = ChambollePock(preconditioning="balanced").setup(problem, torch.zeros_like(x))
    assert len(setup.ops) == 2
    v = randn(A.in_shape, seed=3)
    for _ in range(300):
        v = v / v.norm()
        v = setup.tau * sum(sig * op.adjoint(op(v)) for op, sig in zip(setup.ops, setup.sigmas))
    bound = float(v.norm())
    assert 0.8 < bound < 0.95, bound


def test_cp_explicit_K_equals_split(ct_problem):
    A, x, y = ct_problem
    explicit = Problem(L2Fidelity(A, y), 0.3 * L21Norm(), K=FiniteDifference(A.in_shape))
    implicit = Problem(L2Fidelity(A, y), 0.3 * TV())
    a = ChambollePock(max_iter=50, tol=0).run(explicit, torch.zeros_like(x)).x
    b = ChambollePock(max_iter=50, tol=0).run(implicit, torch.zeros_like(x)).x
    assert rel_diff(a, b) < 1e-6


def test_cp_is_robust_to_operator_scaling(ct_problem):
    """Scaling A by 1000 (and y with it) changes nothing for the automatic steps: no hand balancing."""
    A, x, y = ct_problem
    lam = default_tv_lambda(A, y)
    base = ChambollePock(max_iter=400, tol=0).run(Problem(L2Fidelity(A, y), lam * TV()), torch.zeros_like(x))
    big = ChambollePock(max_iter=400, tol=0).run(
        Problem(L2Fidelity(1000.0 * A, 1000.0 * y), 1e6 * lam * TV()), torch.zeros_like(x))
    assert rel_diff(big.x, base.x) < 1e-3


def test_cgls_matches_dense_least_squares():
    A = ParallelBeam2D((10, 10), np.linspace(0, np.pi, 24, endpoint=False), 15)
    y = randn(A.out_shape, torch.float64, batch=2, seed=3)
    n = 100
    M = A(torch.eye(n, dtype=torch.float64).reshape(n, 1, 10, 10)).reshape(n, -1).T.numpy()
    expected = np.stack([np.linalg.lstsq(M, yi.flatten(), rcond=None)[0] for yi in y.numpy()])
    res = CGLS(max_iter=500).run(Problem(L2Fidelity(A, y)), torch.zeros(2, 1, 10, 10, dtype=torch.float64))
    assert res.converged and res.n_iter < 500
    # ASTRA projects in float32 and cond(A) ~ 70: agreement to ~1e-4 relative is the attainable precision
    assert rel_diff(res.x.reshape(2, -1), torch.as_tensor(expected)) < 1e-4


def test_tikhonov_matches_a_dense_solve_and_loops():
    """CG to convergence equals (M^T M + alpha D^T D)^-1 M^T y from numpy; batched equals looped."""
    A = ParallelBeam2D((10, 12), np.linspace(0, np.pi, 16, endpoint=False), 18)
    D = FiniteDifference(A.in_shape)
    y = randn(A.out_shape, torch.float64, batch=3, seed=5)
    n, alpha = 120, 0.7
    M = A(torch.eye(n, dtype=torch.float64).reshape(n, 1, 10, 12)).reshape(n, -1).T.numpy()
    G = D(torch.eye(n, dtype=torch.float64).reshape(n, 1, 10, 12)).reshape(n, -1).T.numpy()
    expected = np.linalg.solve(M.T @ M + alpha * G.T @ G, M.T @ y.reshape(3, -1).numpy().T).T
    x = tikhonov(A, y, alpha=alpha, iterations=300, tol=1e-9)
    assert rel_diff(x.reshape(3, -1), torch.as_tensor(expected)) < 1e-4  # float32 projector
    looped = torch.cat([tikhonov(A, y[i:i + 1], alpha=alpha, iterations=7) for i in range(3)])
    assert rel_diff(tikhonov(A, y, alpha=alpha, iterations=7), looped) < 1e-5


def test_tikhonov_default_weight_is_unit_free(ct_problem):
    """The default alpha follows ||A||^2: a pixel size that rescales A (and y) gives the same image."""
    A, x, y = ct_problem
    B = ParallelBeam2D((48, 48), np.linspace(0, np.pi, 30, endpoint=False), 70, pixel_size=0.25,
                       detector_spacing=0.25)
    x1, x2 = tikhonov(A, y), tikhonov(B, 0.25 * y)
    assert rel_diff(x2, x1) < 1e-4
    assert float(psnr(x1, x)) > float(psnr(torch.zeros_like(x), x)) + 10


def test_tikhonov_bad_arguments(ct_problem):
    A, _, y = ct_problem
    with pytest.raises(ValueError, match="iterations: expected a positive integer, got 0"):
        tikhonov(A, y, iterations=0)
    with pytest.raises(ValueError, match="alpha: expected a non-negative weight, got -1"):
        tikhonov(A, y, alpha=-1.0)
    with pytest.raises(TypeError, match="A: expected a LinearOperator, got ndarray"):
        tikhonov(np.eye(3), y)


def test_sirt_reduces_the_weighted_residual(ct_problem):
    A, x, y = ct_problem
    problem = Problem(L2Fidelity(A, y), constraint=NonNegativity())
    short = SIRT(max_iter=5).run(problem, torch.zeros_like(x))
    long = SIRT(max_iter=100).run(problem, torch.zeros_like(x))
    assert float(problem.objective(long.x)) < 0.2 * float(problem.objective(short.x))
    assert float(long.x.min()) >= 0.0 and float(psnr(long.x, x)) > 20


def test_run_records_history_and_callbacks_stop(ct_problem):
    A, x, y = ct_problem
    seen = []

    def stop_at_7(n, state):
        seen.append(n)
        return n == 7

    res = ChambollePock(max_iter=100, objective_every=2).run(Problem(L2Fidelity(A, y), TV()), torch.zeros_like(x),
                                                           callbacks=[stop_at_7])
    assert res.n_iter == 7 and seen == list(range(1, 8)) and not res.converged
    assert len(res.history["relative_change"]) == 7 and len(res.history["objective"]) == 4
    assert res.history["objective"][-1] < res.history["objective"][0]


def test_tolerance_stops_early(ct_problem):
    A, x, y = ct_problem
    res = ChambollePock(max_iter=5000, tol=1e-3).run(Problem(L2Fidelity(A, y), TV()), torch.zeros_like(x))
    assert res.converged and res.n_iter < 5000 and res.history["relative_change"][-1] < 1e-3


def test_batched_solve_equals_looped(ct_problem):
    A, x, y = ct_problem
    y2 = torch.cat([y, 0.5 * y])
    solver = ChambollePock(max_iter=40, tol=0)
    both = solver.run(Problem(L2Fidelity(A, y2), TV()), torch.zeros(2, *A.in_shape)).x
    one = solver.run(Problem(L2Fidelity(A, 0.5 * y), TV()), torch.zeros_like(x)).x
    assert rel_diff(both[1:], one) < 1e-4


def test_solver_bad_arguments(ct_problem):
    A, x, y = ct_problem
    with pytest.raises(ValueError, match="max_iter"):
        ChambollePock(max_iter=0)
    with pytest.raises(ValueError, match="preconditioning"):
        ChambollePock(preconditioning="magic")
    with pytest.raises(ValueError, match="tau, sigma"):
        ChambollePock(tau=0.1)
    with pytest.raises(TypeError, match="data: expected a Functional"):
        Problem(data=A)
    with pytest.raises(ValueError, match="problem.prior: CGLS"):
        CGLS().run(Problem(L2Fidelity(A, y), TV()), torch.zeros_like(x))
    with pytest.raises(ValueError, match="x0: contains NaN"):
        ChambollePock().run(Problem(L2Fidelity(A, y), TV()), torch.full_like(x, float("nan")))


@pytest.mark.parametrize("make_solver", [lambda: ChambollePock(max_iter=10, tol=0), lambda: SIRT(max_iter=10)])
def test_one_solver_runs_two_problems_interleaved(ct_problem, make_solver):
    """Per-run data (steps, weights) lives in the state, not on the solver object."""
    A, x, y = ct_problem
    prior = 0.3 * TV() if isinstance(make_solver(), ChambollePock) else None
    A2 = ParallelBeam2D(A.image_shape, np.linspace(0, np.pi, 17, endpoint=False), 60)  # other steps/weights
    p1, p2 = Problem(L2Fidelity(A, y), prior), Problem(L2Fidelity(A2, 3.0 * A2(x)), prior)
    solver = make_solver()
    it1, it2 = solver.iterate(p1, torch.zeros_like(x)), solver.iterate(p2, torch.zeros_like(x))
    for _ in range(10):
        s1, s2 = next(it1), next(it2)
    assert rel_diff(s1.x, make_solver().run(p1, torch.zeros_like(x)).x) < 1e-6
    assert rel_diff(s2.x, make_solver().run(p2, torch.zeros_like(x)).x) < 1e-6


def test_iterate_leaves_autograd_on_in_the_caller():
    """A generator suspended inside ``no_grad`` would switch autograd off for the caller."""
    y = torch.ones(1, 1, 4, 4)
    states = SIRT().iterate(Problem(L2Fidelity(Identity((1, 4, 4)), y)), torch.zeros_like(y))
    next(states)
    assert torch.is_grad_enabled()


def _small_mri_problem(lam=0.01, batch=1):
    from operators.mri import CartesianMRI

    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(32, 32, generator=gen) < 0.4
    x = shepp_logan(32).to(torch.complex128).repeat(batch, 1, 1, 1)
    A = CartesianMRI(mask)
    y = A(x) + 0.02 * torch.randn((batch, 1, 32, 32), generator=gen, dtype=torch.complex128) * A.mask
    return Problem(L2Fidelity(A, y), lam * TV()), A.H(y)


def test_chambolle_pock_data_in_primal_matches_all_dual_form():
    """Two formulations of one convex problem reach the same minimum (complex TV, Cartesian MRI)."""
    problem, x0 = _small_mri_problem()
    primal = ChambollePock(max_iter=1000, tol=0).run(problem, x0)
    dual = ChambollePock(max_iter=8000, tol=0, data_in_primal=False).run(problem, x0)  # 8x the iterations
    assert primal.state.setup.G is problem.data  # auto picked the primal form (fast prox, no constraint)
    f_primal, f_dual = float(problem.objective(primal.x)), float(problem.objective(dual.x))
    assert abs(f_primal - f_dual) <= 1e-4 * f_dual
    assert rel_diff(primal.x, dual.x) < 1e-2


def test_chambolle_pock_data_in_primal_batched_equals_looped():
    problem, x0 = _small_mri_problem(batch=2)
    batched = ChambollePock(max_iter=50, tol=0).run(problem, x0).x
    single, x0_single = _small_mri_problem(batch=1)
    looped = ChambollePock(max_iter=50, tol=0).run(single, x0_single).x
    assert rel_diff(batched[:1], looped) < 1e-10


def test_chambolle_pock_data_in_primal_rejects_a_constraint():
    problem, x0 = _small_mri_problem()
    p = Problem(problem.data, problem.prior, constraint=NonNegativity())
    with pytest.raises(ValueError, match="data_in_primal: cannot keep the data term in the primal"):
        ChambollePock(data_in_primal=True).run(p, x0.real)
