"""The operator algebra and finite differences, against dense numpy matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators import Composed, FiniteDifference, Identity, LinearOperator, Scaled, Stack, Sum
from tests.contracts import LinearOperatorContract, randn, rel_diff


class Dense(LinearOperator):
    """A dense matrix operator for tests: ``(B, n) -> (B, m)``."""

    native_autograd = False

    def __init__(self, M: np.ndarray) -> None:
        super().__init__((M.shape[1],), (M.shape[0],))
        self.register_buffer("M", torch.as_tensor(M))

    def _forward(self, x):
        return x @ self.M.to(x.dtype).T

    def _adjoint(self, y):
        return y @ self.M.to(y.dtype)


def dense_matrix(op: LinearOperator) -> np.ndarray:
    n = int(np.prod(op.in_shape))
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *op.in_shape)
    return op(eye).reshape(n, -1).T.numpy()


@pytest.fixture
def M1(rng):
    return rng.standard_normal((7, 5))


@pytest.fixture
def M2(rng):
    return rng.standard_normal((5, 5))


class TestDense(LinearOperatorContract):
    @pytest.fixture
    def make(self, M1):
        return Dense(M1)

    def test_norm_is_spectral_norm(self, make, M1):
        assert make.norm() == pytest.approx(np.linalg.norm(M1, 2), rel=1e-4)


class TestComposed(LinearOperatorContract):
    @pytest.fixture
    def make(self, M1, M2):
        return Dense(M1) @ Dense(M2)

    def test_matches_matrix_product(self, make, M1, M2):
        np.testing.assert_allclose(dense_matrix(make), M1 @ M2, rtol=1e-6)


class TestSumScaled(LinearOperatorContract):
    @pytest.fixture
    def make(self, M2):
        return 2.0 * Dense(M2) - Identity((5,))

    def test_matches_matrix(self, make, M2):
        np.testing.assert_allclose(dense_matrix(make), 2 * M2 - np.eye(5), rtol=1e-6)
        assert isinstance(make, Sum)


class TestStack(LinearOperatorContract):
    @pytest.fixture
    def make(self, M1, M2):
        return Stack([Dense(M1), Dense(M2)])

    def test_adjoint_sums_blocks(self, make, M1, M2):
        y = (torch.ones(1, 7, dtype=torch.float64), torch.ones(1, 5, dtype=torch.float64))
        np.testing.assert_allclose(make.adjoint(y)[0].numpy(), M1.sum(0) + M2.sum(0), rtol=1e-10)


class TestFiniteDifference(LinearOperatorContract):
    @pytest.fixture
    def make(self):
        return FiniteDifference((2, 6, 5), spacing=0.5)

    def test_matches_numpy_diff(self, make):
        x = randn((2, 6, 5), torch.float64, seed=3)
        g = make(x)
        np.testing.assert_allclose(g[:, 0, :, :-1].numpy(), np.diff(x.numpy(), axis=-2) / 0.5)
        np.testing.assert_allclose(g[:, 1, :, :, :-1].numpy(), np.diff(x.numpy(), axis=-1) / 0.5)
        assert float(g[:, 0, :, -1].abs().max()) == 0.0 and float(g[:, 1, ..., -1].abs().max()) == 0.0

    def test_abs_sums_match_dense(self, make):
        M = np.abs(dense_matrix(make))
        like = torch.zeros(1, dtype=torch.float64)
        np.testing.assert_allclose(make.abs_row_sums(like).flatten().numpy(), M.sum(1))
        np.testing.assert_allclose(make.abs_col_sums(like).flatten().numpy(), M.sum(0))

    def test_norm_bounds_spectral_norm(self, make):
        exact = np.linalg.norm(dense_matrix(make), 2)
        assert exact <= make.norm() <= 1.2 * exact


def test_volume_differences():
    D = FiniteDifference((1, 3, 4, 5), ndim=3)
    x = randn(D.in_shape, torch.float64)
    y = randn(D.out_shape, torch.float64)
    assert abs(float((D(x) * y).sum() - (x * D.adjoint(y)).sum())) < 1e-10 * float(x.norm() * y.norm())


def test_scaled_norm_and_adjoint_are_consistent(M2):
    A = Scaled(Dense(M2), -3.0)
    assert A.norm() == pytest.approx(3 * np.linalg.norm(M2, 2), rel=1e-4)
    x = randn((5,), torch.float64)
    assert rel_diff(A.H(A(x)), 9 * Dense(M2).normal(x)) < 1e-12


def test_algebra_rejects_non_operators(M2):
    A = Dense(M2)
    with pytest.raises(TypeError):
        A @ np.eye(5)
    with pytest.raises(TypeError):
        A + 1.0
    with pytest.raises(TypeError):
        A * A


def test_shape_mismatch_in_composition(M1):
    with pytest.raises(ValueError, match="A.in_shape"):
        Composed(Dense(M1), Dense(M1))


def test_bad_input_types(M2):
    A = Dense(M2)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        A(np.zeros((1, 5)))
    with pytest.raises(TypeError, match="x: expected a floating-point"):
        A(torch.zeros(1, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"x: Dense expects shape \(B, 5\)"):
        A(torch.zeros(5))


def test_finite_difference_bad_arguments():
    with pytest.raises(ValueError, match="ndim"):
        FiniteDifference((4, 4), ndim=3)
    with pytest.raises(ValueError, match="spacing"):
        FiniteDifference((4, 4), spacing=0)
