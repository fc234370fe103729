"""Unrolled solvers (recon.learned.unrolled), the dense matrix operator and the l0 prox they use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.matrix import MatrixOperator
from priors import L1Norm, L2Fidelity
from priors.sparsity import L0Norm
from recon.learned.unrolled import Unrolled, UnrolledISTA, objective, supervised_loss, unsupervised_loss
from recon.pnp import PnPProximalGradient
from recon.problem import Problem
from tests.contracts import LinearOperatorContract, rel_diff


def gaussian_problems(batch: int, m: int = 20, n: int = 40, k: int = 4, seed: int = 0):
    """``(A, y, x)``: one Gaussian matrix per item, k-sparse Gaussian signals, 1% noise."""
    gen = torch.Generator().manual_seed(seed)
    A = MatrixOperator(torch.randn(batch, m, n, generator=gen, dtype=torch.float64))
    x = torch.zeros(batch, n, dtype=torch.float64)
    for b in range(batch):
        x[b, torch.randperm(n, generator=gen)[:k]] = torch.randn(k, generator=gen, dtype=torch.float64)
    y = A(x)
    return A, y + 0.01 * y.std() * torch.randn(y.shape, generator=gen, dtype=torch.float64), x


# ------------------------------------------------------------------------------------------ MatrixOperator
class TestMatrixOperator(LinearOperatorContract):
    @pytest.fixture
    def make(self):
        return MatrixOperator(torch.randn(7, 5, generator=torch.Generator().manual_seed(3)))


class TestComplexMatrixOperator(LinearOperatorContract):
    dtypes = {"single": torch.complex64, "double": torch.complex128}

    @pytest.fixture
    def make(self):
        return MatrixOperator(torch.randn(6, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(4)))


def test_matrix_operator_matches_numpy_and_its_norm_is_exact():
    rng = np.random.default_rng(0)
    M, x = rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 4))
    A = MatrixOperator(torch.from_numpy(M))
    assert np.allclose(A(torch.from_numpy(x)).numpy(), np.einsum("bmn,bn->bm", M, x), rtol=1e-12)
    assert A.norm() == pytest.approx(max(np.linalg.norm(Mi, 2) for Mi in M), rel=1e-12)
    shared = MatrixOperator(torch.from_numpy(M[0]))
    assert np.allclose(shared(torch.from_numpy(x)).numpy(), x @ M[0].T, rtol=1e-12)


def test_a_matrix_per_item_is_its_own_problem():
    """Per item: adjoint, and each item equal to the shared operator of its own matrix."""
    gen = torch.Generator().manual_seed(1)
    M = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64)
    A = MatrixOperator(M)
    x, y = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, 6, generator=gen, dtype=torch.float64)
    assert torch.allclose((A(x) * y).sum(1), (x * A.adjoint(y)).sum(1), rtol=1e-12)
    for b in range(3):
        single = MatrixOperator(M[b])
        assert torch.allclose(A(x)[b], single(x[b:b + 1])[0])
        assert torch.allclose(A.adjoint(y)[b], single.adjoint(y[b:b + 1])[0])


@pytest.mark.parametrize("matrix, match", [
    (torch.zeros(4), r"matrix: expected a non-empty \(m, n\) or \(B, m, n\) tensor, got shape \(4,\)"),
    (torch.zeros(2, 0), "matrix: expected a non-empty"),
    (torch.zeros(3, 3, dtype=torch.int64), "matrix: expected a floating-point"),
    (torch.tensor([[1.0, float("nan")]]), "matrix: contains NaN"),
])
def test_bad_matrices_are_named(matrix, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MatrixOperator(matrix)


def test_a_batch_other_than_the_matrices_is_named():
    A = MatrixOperator(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="x: the operator holds 3 matrices, one per item; got a batch of 2"):
        A(torch.zeros(2, 5))


# ------------------------------------------------------------------------------------------------ L0Norm
def test_l0_prox_is_the_entrywise_minimiser():
    """Against brute force: each entry is kept or zeroed, whichever costs less in tau [p != 0] + (p - x)^2 / 2."""
    x = torch.linspace(-3, 3, 121, dtype=torch.float64)[None]
    for tau in (0.1, 0.5, 2.0):
        p = L0Norm().prox(x, tau)
        keep, zero = tau + 0 * x, x.pow(2) / 2
        expected = torch.where(keep < zero, x, torch.zeros_like(x))
        assert torch.equal(p, expected)
    assert L0Norm().value(torch.tensor([[0.0, 1.0, -2.0], [0.0, 0.0, 0.0]])).tolist() == [2.0, 0.0]
    with pytest.raises(TypeError, match="z: L0Norm takes real tensors"):
        L0Norm().prox(torch.ones(1, 2, dtype=torch.complex64), 1.0)


# ------------------------------------------------------------------------------------------------ Unrolled
@pytest.mark.parametrize("prox, learn_threshold", [("l1", False), ("l0", False), ("l1", True)])
def test_untrained_unrolled_ista_is_classical_ista_bit_for_bit(prox, learn_threshold):
    A, y, _ = gaussian_problems(4)
    net = UnrolledISTA(layers=25, lam=0.05, prox=prox, learn_threshold=learn_threshold)
    x0 = torch.zeros(4, 40, dtype=torch.float64)
    classical = PnPProximalGradient(max_iter=25, tol=0.0).run(net.problem(A, y), x0).x
    assert torch.equal(net(A, y), classical)
    _, iterates = net(A, y, iterates=True)
    assert len(iterates) == 25 and torch.equal(iterates[-1], classical)


def test_unrolled_batched_equals_looped():
    """One operator, a batch of data: each item as if alone. (With a matrix per item the batch shares one step,
    1 / max ||A_b||^2, so there an item alone would take its own.)"""
    A, _, _ = gaussian_problems(1)
    A = MatrixOperator(A.matrix[0])
    y = A(gaussian_problems(3, seed=5)[2])
    net = UnrolledISTA(layers=15, lam=0.05, learn_threshold=True)
    with torch.no_grad():  # trained-looking parameters, not the classical ones
        net.thetas["eta"].copy_(torch.linspace(-0.5, 0.5, 15))
        net.log_prior_weight.copy_(torch.linspace(0.3, -0.3, 15))
    batched = net(A, y)
    for b in range(3):
        single = net(A, y[b:b + 1])
        assert torch.allclose(batched[b:b + 1], single, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", ["supervised", "unsupervised"])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_gradients_reach_every_layer_and_checkpointing_changes_none(loss, checkpoint):
    A, y, x_true = gaussian_problems(4)
    grads = []
    for ckpt in (False, checkpoint):
        net = UnrolledISTA(layers=8, lam=0.05, learn_threshold=True, checkpoint=ckpt)
        x = net(A, y)
        value = supervised_loss(x, x_true) if loss == "supervised" else unsupervised_loss(net.problem(A, y), x)
        value.backward()
        grads.append(torch.cat([net.thetas["eta"].grad, net.log_prior_weight.grad]))
    assert bool((grads[0] != 0).all()), grads[0]  # every step and every threshold gets a gradient
    assert torch.allclose(grads[0], grads[1], rtol=1e-10)


def test_unsupervised_training_reaches_a_lower_objective_than_ista_at_the_same_depth():
    """The paper's claim for the l1 case, small: 10 layers trained on the objective (fresh problems per batch)
    beat 10 ISTA iterations on held-out problems, and get closer to ISTA run to convergence."""
    torch.manual_seed(0)
    net = UnrolledISTA(layers=10, lam=0.05)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for step in range(60):
        A, y, _ = gaussian_problems(16, seed=100 + step)
        opt.zero_grad()
        unsupervised_loss(net.problem(A, y), net(A, y)).backward()
        opt.step()
    A, y, _ = gaussian_problems(64, seed=7)
    problem = net.problem(A, y)
    x0 = torch.zeros(64, 40, dtype=torch.float64)
    with torch.no_grad():
        learned = float(objective(problem, net(A, y)).mean())
    ista = float(problem.objective(PnPProximalGradient(max_iter=10, tol=0).run(problem, x0).x).mean())
    converged = float(problem.objective(PnPProximalGradient(max_iter=5000, tol=0).run(problem, x0).x).mean())
    assert converged < learned < ista
    assert learned - converged < 0.5 * (ista - converged)


def test_bounded_steps_stay_below_the_bound():
    """UnrolledISTA's steps: 2 sigmoid(theta) times the classical 1 / ||A||^2, 1 at theta = 0, below 2 for any theta."""
    net = UnrolledISTA(layers=3, lam=0.1)
    with torch.no_grad():
        net.thetas["eta"].copy_(torch.tensor([0.0, 50.0, -50.0]))
    m = net.multipliers("eta")
    assert m[0] == 1.0 and 1.999 < float(m[1]) <= 2.0 and 0 <= float(m[2]) < 1e-6
    free = UnrolledISTA(layers=2, lam=0.1, step_bound=None)  # exp(theta): unbounded, still 1 at theta = 0
    with torch.no_grad():
        free.thetas["eta"].copy_(torch.tensor([0.0, 2.0]))
    assert free.multipliers("eta").tolist() == pytest.approx([1.0, float(np.exp(2.0))])
    with pytest.raises(ValueError, match="bounds: expected a bound > 1 for a learned field, got 'eta': 1.0"):
        Unrolled(PnPProximalGradient(tol=0), layers=2, learn=("eta",), bounds={"eta": 1.0})


def test_unrolled_errors_name_the_argument():
    with pytest.raises(ValueError, match="layers: expected a positive integer, got 0"):
        UnrolledISTA(layers=0, lam=0.1)
    with pytest.raises(ValueError, match="prox: expected one of l1, l0, got 'tv'"):
        UnrolledISTA(layers=3, lam=0.1, prox="tv")
    with pytest.raises(ValueError, match="lam: expected a number > 0"):
        UnrolledISTA(layers=3, lam=0.0)
    with pytest.raises(TypeError, match="solver: expected a recon.base.Solver"):
        Unrolled("ista", layers=3)
    A, y, _ = gaussian_problems(2)
    problem = Problem(L2Fidelity(A, y), 0.1 * L1Norm())
    with pytest.raises(ValueError, match=r"learn: PnPProximalGradient's state has no field\(s\) \['sigma'\]"):
        Unrolled(PnPProximalGradient(tol=0), layers=3, learn=("sigma",))(problem,
                                                                            torch.zeros(2, 40, dtype=torch.float64))
    with pytest.raises(TypeError, match="problem.prior: learn_prior_weight needs a weighted prior"):
        Unrolled(PnPProximalGradient(tol=0), layers=3, learn_prior_weight=True)(
            Problem(L2Fidelity(A, y), L1Norm()), torch.zeros(2, 40, dtype=torch.float64))


def test_unrolling_works_on_images_too():
    """The mechanism is the solver's, so it unrolls on any operator: proximal gradient with an l1 prior on a small
    CT problem keeps the image shape, and untrained equals the classical solver."""
    from operators import ParallelBeam2D

    A = ParallelBeam2D((16, 16), np.linspace(0, np.pi, 8, endpoint=False), 24)
    x_true = torch.zeros(2, 1, 16, 16)
    x_true[:, :, 5:9, 6:11] = 1.0
    y = A(x_true)
    problem = Problem(L2Fidelity(A, y), 0.01 * L1Norm())
    net = Unrolled(PnPProximalGradient(tol=0), layers=5, learn=("eta",))
    x = net(problem, torch.zeros_like(x_true))
    assert x.shape == x_true.shape
    assert rel_diff(x.detach(), PnPProximalGradient(max_iter=5, tol=0).run(problem, torch.zeros_like(x_true)).x) == 0.0
