"""GraphLaplacian and GraphLaplacianPrior: contracts, a brute-force construction, the intensity
scale, Chambolle-Pock against an independent solver, and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch
from scipy.optimize import minimize

from operators import Identity
from priors import L1Norm, L2Fidelity, NonNegativity
from priors.base import ScaledFunctional
from priors.data import SquaredL2Distance
from priors.graph_laplacian import DEFAULT_RADIUS, DEFAULT_SIGMA, GraphLaplacian, GraphLaplacianPrior
from recon.chambolle_pock import ChambollePock
from recon.problem import Problem
from tests.contracts import DEVICES, FunctionalContract, LinearOperatorContract, randn, rel_diff


def estimate(shape, seed=0) -> torch.Tensor:
    """A seeded float64 pre-estimate: random 3x3-pixel blocks (values in [0, 1]) plus noise, so
    the weights span many magnitudes, from ~1 inside blocks to ~0 across their edges."""
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    blocks = torch.rand((b, c, -(-h // 3), -(-w // 3)), generator=gen, dtype=torch.float64)
    img = blocks.repeat_interleave(3, -2).repeat_interleave(3, -1)[..., :h, :w]
    return img + 0.03 * torch.randn(shape, generator=gen, dtype=torch.float64)


def brute_force(img: np.ndarray, radius: int, sigma: float, s: float) -> np.ndarray:
    """Dense ``L = D - W`` of one (H, W) image by a double loop over pixel pairs."""
    h, w = img.shape
    n = h * w
    W = np.zeros((n, n))
    for i in range(n):
        yi, xi = divmod(i, w)
        for j in range(n):
            yj, xj = divmod(j, w)
            if 0 < max(abs(yi - yj), abs(xi - xj)) <= radius:
                W[i, j] = math.exp(-((img[yi, xi] - img[yj, xj]) ** 2) / (sigma * s * s))
    W /= np.linalg.norm(W)  # Frobenius
    return np.diag(W.sum(1)) - W


def brute_force_blocks(x_hat: torch.Tensor, radius: int, sigma: float, scale=None) -> np.ndarray:
    """Block-diagonal brute-force Laplacian, one block per (item, channel), scale per item."""
    a = x_hat.numpy()
    blocks = []
    for b in range(a.shape[0]):
        s = np.quantile(np.abs(a[b]), 0.99) if scale is None else scale
        blocks += [brute_force(a[b, c], radius, sigma, s if s > 0 else 1.0) for c in range(a.shape[1])]
    return scipy.linalg.block_diag(*blocks)


def dense(L: GraphLaplacian) -> np.ndarray:
    """The operator's matrix, column by column through ``forward`` (block-diagonal over graphs)."""
    graphs, n = L.weights.shape[0], int(np.prod(L.in_shape))
    cols = []
    for e in range(n):
        x = torch.zeros(graphs, n, dtype=torch.float64)
        x[:, e] = 1.0
        cols.append(L(x.reshape(graphs, *L.in_shape)).reshape(graphs, n).numpy())
    per_graph = np.stack(cols, axis=2)  # (graphs, n, n)
    return scipy.linalg.block_diag(*per_graph)


# -- operator contracts -------------------------------------------------------------------
class TestSharedGraph(LinearOperatorContract):
    """One graph (B = 1) applied to every item of an input batch, two channels."""

    @pytest.fixture
    def make(self):
        return GraphLaplacian(estimate((1, 2, 12, 10)), radius=3, sigma=0.05)


class TestGraphPerItem(LinearOperatorContract):
    """Two distinct graphs (B = 2): inputs must have batch 2, so the looped and norm checks are
    redone on batches of 2."""

    @pytest.fixture
    def make(self):
        return GraphLaplacian(estimate((2, 1, 12, 10)), radius=2, sigma=0.05)

    def test_batched_equals_looped(self, make):
        x = randn(make.in_shape, torch.float64, batch=2, seed=10)
        x_hat = estimate((2, 1, 12, 10))
        for i in range(2):
            alone = GraphLaplacian(x_hat[i:i + 1], radius=2, sigma=0.05)
            assert rel_diff(make(x)[i:i + 1], alone(x[i:i + 1])) < 1e-14

    def test_norm_is_cached_and_positive(self, make):
        n1 = make.norm()
        assert n1 > 0 and make.norm() == n1
        x = randn(make.in_shape, torch.float64, batch=2, seed=13)
        assert bool((make(x).flatten(1).norm(dim=1) <= n1 * x.flatten(1).norm(dim=1)).all())


# -- construction against brute force -----------------------------------------------------
@pytest.mark.parametrize("radius, shape, scale", [(1, (1, 1, 7, 9), None), (2, (2, 1, 8, 8), None),
                                                  (3, (1, 2, 9, 7), None), (2, (1, 1, 6, 11), 0.5)])
def test_matches_brute_force(radius, shape, scale):
    x_hat = estimate(shape, seed=radius)
    L = GraphLaplacian(x_hat, radius=radius, sigma=0.05, scale=scale)
    expected = brute_force_blocks(x_hat, radius, 0.05, scale)
    tol = 1e-12 * np.abs(expected).max()
    np.testing.assert_allclose(L.to_scipy().toarray(), expected, rtol=0, atol=tol)
    np.testing.assert_allclose(dense(L), expected, rtol=0, atol=tol)


def test_apply_equals_scipy_product():
    L = GraphLaplacian(estimate((2, 3, 10, 9)), radius=2, sigma=0.02)
    x = randn(L.in_shape, torch.float64, batch=2, seed=3)
    expected = (L.to_scipy() @ x.numpy().ravel()).reshape(x.shape)
    assert rel_diff(L(x), torch.from_numpy(expected)) < 1e-12


def test_symmetric_psd_with_constants_in_the_null_space():
    x_hat = estimate((2, 1, 9, 8), seed=4)
    L = GraphLaplacian(x_hat, radius=2, sigma=0.05)
    M = L.to_scipy()
    assert abs(M - M.T).max() == 0.0
    ones = torch.ones_like(x_hat)
    assert float(L(ones).abs().max()) < 1e-14 * float(L.degree.max())
    eig = np.linalg.eigvalsh(M.toarray())
    assert eig.min() >= -1e-10
    assert L.norm() >= eig.max() * (1 - 1e-12)  # Gershgorin: an upper bound
    assert L.norm() <= 2 * eig.max()  # ... within a factor 2, since ||L|| >= max degree


def test_abs_sums_and_degree():
    L = GraphLaplacian(estimate((2, 1, 8, 9), seed=5), radius=2, sigma=0.05)
    M = L.to_scipy()
    like = torch.zeros(1, dtype=torch.float32)
    rows = np.asarray(abs(M).sum(1)).reshape(2, 1, 8, 9)
    assert L.abs_row_sums(like).dtype == torch.float32
    np.testing.assert_allclose(L.abs_row_sums(like.double()).numpy(), rows, rtol=1e-12)
    np.testing.assert_allclose(L.abs_col_sums(like.double()).numpy(), rows, rtol=1e-12)
    np.testing.assert_allclose(L.degree.numpy().ravel(), M.diagonal(), rtol=1e-12)


def test_radius_is_the_infinity_norm_radius():
    """radius=3 links each interior pixel to its 48 neighbours in a 7x7 window (the default)."""
    L = GraphLaplacian(torch.ones(1, 1, 9, 9, dtype=torch.float64))
    assert (L.radius, L.sigma, len(L.offsets)) == (DEFAULT_RADIUS, DEFAULT_SIGMA, 24) == (3, 1e-3, 24)
    row = L.to_scipy()[4 * 9 + 4]
    assert row.nnz == 49 and row.toarray().reshape(9, 9)[1:8, 1:8].min() < 0


def test_one_graph_per_item_and_channel():
    x_hat = estimate((2, 2, 9, 10), seed=6)
    both = GraphLaplacian(x_hat, radius=2, sigma=0.05)
    x = randn(both.in_shape, torch.float64, batch=2, seed=7)
    for b in range(2):
        alone = GraphLaplacian(x_hat[b:b + 1], radius=2, sigma=0.05)
        assert rel_diff(both.weights[b:b + 1], alone.weights) < 1e-14
        assert rel_diff(both(x)[b:b + 1], alone(x[b:b + 1])) < 1e-14
        for c in range(2):
            single = GraphLaplacian(x_hat[b:b + 1, c:c + 1], radius=2, sigma=0.05,
                                    scale=float(np.quantile(x_hat[b].abs().numpy(), 0.99)))
            assert rel_diff(both.weights[b:b + 1, c:c + 1], single.weights) < 1e-12


# -- the intensity scale ------------------------------------------------------------------
def test_default_scale_is_unit_free():
    x_hat = estimate((2, 1, 10, 10), seed=8)
    L, L1000 = GraphLaplacian(x_hat, sigma=0.01), GraphLaplacian(1000.0 * x_hat, sigma=0.01)
    assert rel_diff(L1000.weights, L.weights) < 1e-10
    assert rel_diff(L1000.degree, L.degree) < 1e-10
    # scale=1.0 is the authors' absolute sigma: rescaling x_hat by c needs sigma * c^2 (or scale=c)
    absolute = GraphLaplacian(x_hat, sigma=0.01, scale=1.0)
    assert rel_diff(GraphLaplacian(1000.0 * x_hat, sigma=0.01 * 1e6, scale=1.0).weights, absolute.weights) < 1e-10
    assert rel_diff(GraphLaplacian(1000.0 * x_hat, sigma=0.01, scale=1000.0).weights, absolute.weights) < 1e-10
    assert rel_diff(absolute.weights, L.weights) > 1e-3  # the quantile of this x_hat is not 1


def test_default_scale_is_the_099_quantile():
    x_hat = estimate((1, 1, 10, 12), seed=9) - 0.5  # signed: the quantile is of |x_hat|
    s = float(np.quantile(np.abs(x_hat.numpy()), 0.99))
    expected = GraphLaplacian(x_hat, sigma=0.01, scale=s).weights
    assert rel_diff(GraphLaplacian(x_hat, sigma=0.01).weights, expected) < 1e-12


@pytest.mark.parametrize("scale, sigma, ratio", [(1.0, 0.01, math.exp(-0.3 ** 2 / 0.01)),
                                                 (2.0, 0.01, math.exp(-0.3 ** 2 / (0.01 * 4))),
                                                 (None, 1.0, math.exp(-1.0))])
def test_two_level_image_weights(scale, sigma, ratio):
    """Across the step of a 0 / 0.3 image the weight is exp(-0.3^2 / (sigma s^2)) times the weight
    inside a flat region; with scale=None, s = 0.99-quantile of |x_hat| = 0.3."""
    x_hat = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    x_hat[..., 4:] = 0.3
    M = GraphLaplacian(x_hat, radius=1, sigma=sigma, scale=scale).to_scipy()
    across, inside = M[2 * 8 + 3, 2 * 8 + 4], M[2 * 8 + 1, 2 * 8 + 2]
    assert across / inside == pytest.approx(ratio, rel=1e-12)
    off = M - scipy.sparse.diags(M.diagonal())
    assert scipy.sparse.linalg.norm(off) == pytest.approx(1.0, rel=1e-12)  # W / ||W||_F


def test_zero_estimate_uses_unit_scale():
    L = GraphLaplacian(torch.zeros(1, 1, 5, 5), radius=1)
    assert bool(torch.isfinite(L.weights).all()) and float(L.weights.max()) > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device(device, dtype):
    x_hat = estimate((1, 1, 8, 8)).to(dtype=dtype, device=device)
    L = GraphLaplacian(x_hat, radius=2, sigma=0.05)
    assert L.weights.dtype == dtype and L.weights.device == x_hat.device
    reference = GraphLaplacian(estimate((1, 1, 8, 8)), radius=2, sigma=0.05)
    assert rel_diff(L.weights.double().cpu(), reference.weights) < (1e-5 if dtype == torch.float32 else 1e-14)
    x = randn(L.in_shape, torch.float64, batch=3, seed=2)
    moved = L.to(torch.float64).to("cpu")
    assert moved.weights.dtype == torch.float64
    assert rel_diff(moved(x), reference(x)) < (1e-5 if dtype == torch.float32 else 1e-14)


# -- the prior ----------------------------------------------------------------------------
def small_laplacian() -> GraphLaplacian:
    return GraphLaplacian(estimate((1, 1, 8, 8), seed=11), radius=2, sigma=0.05)


class TestPriorL1(FunctionalContract):
    @pytest.fixture
    def make(self):
        return GraphLaplacianPrior(small_laplacian(), "l1", prox_iterations=500)


class TestScaledPriorL1(FunctionalContract):
    @pytest.fixture
    def make(self):
        return 0.3 * GraphLaplacianPrior(small_laplacian(), "l1", prox_iterations=500)


class TestPriorL2(FunctionalContract):
    @pytest.fixture
    def make(self):
        return GraphLaplacianPrior(small_laplacian(), "l2")


class TestHalfSquaredL2Norm(FunctionalContract):
    """The l2 prior's 1/2 ||z||^2: SquaredL2Distance centred at a scalar zero."""

    @pytest.fixture
    def make(self):
        return GraphLaplacianPrior(small_laplacian(), "l2").g


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_split_matches_value(norm):
    prior = 0.4 * GraphLaplacianPrior(small_laplacian(), norm)
    K, g = prior.split((1, 8, 8))
    assert K is prior.f.laplacian and isinstance(g, ScaledFunctional)
    assert isinstance(g.f, L1Norm if norm == "l1" else SquaredL2Distance)
    x = randn((1, 8, 8), torch.float64, batch=3)
    Lx = torch.from_numpy((K.to_scipy() @ x.reshape(3, -1).numpy().T).T)
    expected = Lx.abs().sum(1) if norm == "l1" else 0.5 * (Lx ** 2).sum(1)
    assert rel_diff(g.value(K(x))[:, None], 0.4 * expected[:, None]) < 1e-12
    assert rel_diff(prior.value(x)[:, None], 0.4 * expected[:, None]) < 1e-12


def test_l2_prox_is_a_dense_solve():
    L = small_laplacian()
    M = L.to_scipy().toarray()
    x, tau = randn((1, 8, 8), torch.float64, batch=2, seed=12), 30.0
    expected = np.linalg.solve(np.eye(64) + tau * M @ M, x.reshape(2, -1).numpy().T).T
    p = GraphLaplacianPrior(L, "l2").prox(x, tau)
    assert rel_diff(p, torch.from_numpy(expected).reshape(x.shape)) < 1e-8
    per_item = GraphLaplacianPrior(L, "l2").prox(x, torch.tensor([tau, 0.0], dtype=torch.float64))  # (B,) steps
    assert rel_diff(per_item[:1], p[:1]) < 1e-8 and rel_diff(per_item[1:], x[1:]) < 1e-12


def test_l1_prox_matches_the_dual_solved_by_lbfgsb():
    """``p = x - tau L^T q*`` with ``q* = argmin_{|q| <= 1} 1/2 ||x - tau L^T q||^2``, the box-constrained
    dual solved by L-BFGS-B on the dense matrix; tau = 1 leaves a third of ``L p`` exactly 0."""
    L = small_laplacian()
    M = L.to_scipy().toarray()
    x, tau = randn((1, 8, 8), torch.float64, batch=1, seed=14), 1.0
    xv = x.numpy().ravel()

    def dual(q):
        r = xv - tau * M.T @ q
        return 0.5 * r @ r, -tau * M @ r

    q = minimize(dual, np.zeros(64), jac=True, method="L-BFGS-B", bounds=[(-1, 1)] * 64,
                 options={"ftol": 1e-16, "gtol": 1e-14, "maxiter": 10000}).x
    expected = torch.from_numpy(xv - tau * M.T @ q).reshape(x.shape)
    assert np.mean(np.abs(M @ expected.numpy().ravel()) < 1e-8) > 0.2
    assert rel_diff(GraphLaplacianPrior(L, "l1", prox_iterations=1000).prox(x, tau), expected) < 1e-6


def test_from_estimate_and_gradients():
    x_hat = estimate((1, 1, 8, 8), seed=11)
    prior = GraphLaplacianPrior.from_estimate(x_hat, radius=2, sigma=0.05, norm="l2")
    assert rel_diff(prior.laplacian.weights, small_laplacian().weights) == 0.0
    assert prior.has_grad and not GraphLaplacianPrior(small_laplacian()).has_grad
    with pytest.raises(NotImplementedError, match="not smooth"):
        GraphLaplacianPrior(small_laplacian()).grad(x_hat)


# -- graphLa solved by Chambolle-Pock, against L-BFGS-B on a smoothed objective ----------
@pytest.fixture(scope="module")
def graphla_problem():
    """``1/2||x - y||^2 + lam ||L x||_1 + i(x >= 0)`` on a 12x12 two-object image, noisy enough that
    both the prior and the constraint are active, with its reference solution: L-BFGS-B (bounds
    x >= 0) on the smoothed objective with ``sqrt((Lx)^2 + eps^2)`` for ``|Lx|``, on the brute-force
    dense matrix."""
    n, lam, eps = 12, 0.1, 1e-6
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    x_true = (1.0 * ((yy >= 2) & (yy < 6) & (xx >= 2) & (xx < 6))
              + 0.5 * (((yy - 8.4) ** 2 + (xx - 7.8) ** 2) < 5.8)).double().reshape(1, 1, n, n)
    gen = torch.Generator().manual_seed(0)
    y = x_true + 0.1 * torch.randn(x_true.shape, generator=gen, dtype=torch.float64)
    x_hat = x_true + 0.05 * torch.randn(x_true.shape, generator=gen, dtype=torch.float64)
    M, yv = brute_force_blocks(x_hat, 2, 0.01), y.numpy().ravel()

    def smoothed(v):
        r, u = v - yv, M @ v
        s = np.sqrt(u * u + eps * eps)
        return 0.5 * r @ r + lam * s.sum(), r + lam * M.T @ (u / s)

    ref = minimize(smoothed, np.clip(yv, 0, None), jac=True, method="L-BFGS-B", bounds=[(0, None)] * n * n,
                   options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 50})
    objective = lambda v: 0.5 * np.sum((v - yv) ** 2) + lam * np.abs(M @ v).sum()  # noqa: E731
    problem = Problem(L2Fidelity(Identity((1, n, n)), y), lam * GraphLaplacianPrior.from_estimate(x_hat, 2, 0.01),
                      constraint=NonNegativity())
    return problem, objective, ref.x, lam * n * n * eps


@pytest.mark.parametrize("preconditioning", ["auto", "norm"])
def test_chambolle_pock_matches_smoothed_lbfgs(graphla_problem, preconditioning):
    """The smoothing error ``sqrt(t^2 + eps^2) - |t|`` lies in [0, eps], so the reference's objective
    F(x_ref) lies in [F*, F* + delta] with delta = lam n eps (L-BFGS-B converged); a converged CP
    lands in [F*, F* + small], so |F(x_cp) - F(x_ref)| <= delta, checked with a factor 2 for the
    solvers' own tolerances (delta / F = 3e-5 here). F is 1-strongly convex (identity data term),
    so ||x - x*|| <= sqrt(2 (F(x) - F*)) for both, which bounds ||x_cp - x_ref||.
    ``balance=1``: the default 10 (tuned on CT with TV) needed several times more iterations here."""
    problem, F, x_ref, delta = graphla_problem
    cp = ChambollePock(max_iter=1000, tol=0, preconditioning=preconditioning, balance=1.0)
    x_cp = cp.run(problem, torch.zeros(1, 1, 12, 12, dtype=torch.float64)).x.numpy().ravel()
    assert x_cp.min() >= 0
    gap = F(x_cp) - F(x_ref)
    assert abs(gap) <= 2 * delta, f"F(x_cp) - F(x_ref) = {gap:.3e}, smoothing bound {delta:.3e}"
    bound = math.sqrt(2 * max(gap + delta, 0.0)) + math.sqrt(2 * delta)
    assert np.linalg.norm(x_cp - x_ref) <= 2 * bound
    assert np.mean(x_ref == 0) > 0.1 and F(x_ref) < F(np.clip(problem.data.y.numpy().ravel(), 0, None))


# -- bad inputs ---------------------------------------------------------------------------
GOOD = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"radius": 0}, ValueError, r"radius: expected an integer >= 1, got 0"),
    ({"radius": -1}, ValueError, r"radius: expected an integer >= 1, got -1"),
    ({"radius": 1.5}, TypeError, r"radius: expected an integer >= 1, got 1.5"),
    ({"radius": True}, TypeError, r"radius: expected an integer"),
    ({"sigma": 0.0}, ValueError, r"sigma: expected a positive finite number, got 0.0"),
    ({"sigma": -1.0}, ValueError, r"sigma: expected a positive finite number, got -1.0"),
    ({"sigma": float("nan")}, ValueError, r"sigma: expected a positive finite number, got nan"),
    ({"sigma": "1e-3"}, TypeError, r"sigma: expected a positive number"),
    ({"scale": 0.0}, ValueError, r"scale: expected a positive finite number, got 0.0"),
    ({"scale": -2.0}, ValueError, r"scale: expected a positive finite number"),
    ({"radius": 4}, ValueError, r"x_hat: the image \(8 x 8\) is smaller than the 9 x 9 window of radius=4"),
    ({"sigma": 1e-300}, ValueError, r"sigma: every edge weight .* underflows"),
])
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        GraphLaplacian(GOOD, **kwargs)


@pytest.mark.parametrize("x_hat, error, match", [
    (GOOD[0], ValueError, r"x_hat: expected a 4-D tensor \(B, C, H, W\), got shape \(1, 8, 8\)"),
    (GOOD.to(torch.complex64), TypeError, r"x_hat: expected a real floating-point tensor, got torch.complex64"),
    (torch.ones(1, 1, 8, 8, dtype=torch.int64), TypeError, r"x_hat: expected a real floating-point"),
    (GOOD.numpy(), TypeError, r"x_hat: expected a torch.Tensor, got ndarray"),
    (torch.where(GOOD > 0.5, float("nan"), GOOD), ValueError, r"x_hat: contains NaN or Inf"),
    (torch.rand(1, 1, 5, 12), ValueError, r"x_hat: the image \(5 x 12\) is smaller than the 7 x 7 window"),
])
def test_bad_estimate(x_hat, error, match):
    with pytest.raises(error, match=match):
        GraphLaplacian(x_hat)


def test_bad_operator_inputs():
    L = GraphLaplacian(torch.rand(2, 1, 8, 8), radius=1)
    with pytest.raises(ValueError, match=r"x: this GraphLaplacian holds 2 graphs .* expects a batch of 2, got "
                                         r"a batch of 3"):
        L(torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match=r"y: this GraphLaplacian holds 2 graphs"):
        L.adjoint(torch.zeros(1, 1, 8, 8))
    with pytest.raises(TypeError, match=r"x: GraphLaplacian is a real operator.*complex64"):
        L(torch.zeros(2, 1, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"x: GraphLaplacian expects shape \(B, 1, 8, 8\)"):
        L(torch.zeros(2, 1, 8, 9))


def test_bad_prior_arguments():
    L = GraphLaplacian(GOOD, radius=1)
    with pytest.raises(ValueError, match=r"norm: expected one of \('l1', 'l2'\), got 'l3'"):
        GraphLaplacianPrior(L, norm="l3")
    with pytest.raises(ValueError, match=r"norm: expected one of \('l1', 'l2'\), got 'l3'"):
        GraphLaplacianPrior.from_estimate(GOOD, norm="l3")
    with pytest.raises(TypeError, match=r"laplacian: expected a GraphLaplacian, got Identity"):
        GraphLaplacianPrior(Identity((1, 8, 8)))
    with pytest.raises(ValueError, match=r"in_shape: the graph was built for items of shape \(1, 8, 8\), "
                                         r"got \(1, 8, 9\)"):
        GraphLaplacianPrior(L).split((1, 8, 9))
