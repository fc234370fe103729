"""A dense matrix as a linear operator: shared by the batch, or one matrix per item.

The operator of compressed-sensing experiments (a Gaussian ``A`` redrawn for every problem) and of
small tests: ``x`` of shape ``(B, n)`` maps to ``(B, m)``. A matrix per item, ``(B, m, n)``, serves
a batch of problems with different operators in one call.
"""

from __future__ import annotations

import torch

from operators.base import LinearOperator

__all__ = ["MatrixOperator"]


class MatrixOperator(LinearOperator):
    r"""``x -> M x`` for a dense ``M`` of shape ``(m, n)``, or ``(B, m, n)`` with one matrix per item.

    .. math:: (A x)_b = M_b x_b, \qquad (A^H y)_b = M_b^H y_b

    Written in torch, so autograd runs through it (and through ``M`` when it requires grad). Computes in
    the input's precision (a complex matrix makes a real input complex).

    Args:
        matrix: a real or complex floating-point tensor ``(m, n)`` or ``(B, m, n)``.

    Shapes:
        x: ``(B, n)`` (``B`` equal to the matrix's batch when it has one); returns ``(B, m)``.

    Example:
        >>> M = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 0.0]])
        >>> A = MatrixOperator(M)
        >>> A(torch.tensor([[1.0, 1.0]])).tolist(), A.adjoint(torch.tensor([[1.0, 0.0, 0.0]])).tolist()
        ([[3.0, 1.0, 1.0]], [[1.0, 2.0]])
    """

    native_autograd = True

    def __init__(self, matrix: torch.Tensor) -> None:
        if not isinstance(matrix, torch.Tensor):
            raise TypeError(f"matrix: expected a torch.Tensor, got {type(matrix).__name__}")
        if matrix.ndim not in (2, 3) or 0 in matrix.shape:
            raise ValueError("matrix: expected a non-empty (m, n) or (B, m, n) tensor, got shape "
                             f"{tuple(matrix.shape)}")
        if not (matrix.is_floating_point() or matrix.is_complex()):
            raise TypeError(f"matrix: expected a floating-point or complex tensor, got {matrix.dtype}")
        if not bool(torch.isfinite(matrix).all()):
            raise ValueError("matrix: contains NaN or Inf values")
        super().__init__((matrix.shape[-1],), (matrix.shape[-2],))
        self.register_buffer("matrix", matrix)

    @property
    def per_item(self) -> bool:
        return self.matrix.ndim == 3

    def _check_batch(self, v: torch.Tensor, name: str) -> None:
        if self.per_item and v.shape[0] != self.matrix.shape[0]:
            raise ValueError(f"{name}: the operator holds {self.matrix.shape[0]} matrices, one per item; "
                             f"got a batch of {v.shape[0]}")

    def _as(self, v: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, M)`` in one dtype: the input's precision, complex when either is."""
        self._check_batch(v, name)
        m = self.matrix
        if m.is_complex() and not v.is_complex():
            v = v.to(torch.complex128 if v.dtype == torch.float64 else torch.complex64)
        return v, m.to(v.dtype)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x, m = self._as(x, "x")
        if self.per_item:
            return torch.bmm(m, x.unsqueeze(-1)).squeeze(-1)
        return x @ m.transpose(-2, -1)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        y, m = self._as(y, "y")
        if self.per_item:
            return torch.bmm(m.conj().transpose(-2, -1), y.unsqueeze(-1)).squeeze(-1)
        return y @ m.conj()

    def norm(self, iterations: int = 100, tol: float = 1e-5, seed: int = 0, device=None) -> float:
        """The spectral norm, exactly (the largest over the items for a matrix per item), cached."""
        if self._norm is None:
            self._norm = float(torch.linalg.matrix_norm(self.matrix.detach(), ord=2).max())
        return self._norm

    def abs_row_sums(self, like: torch.Tensor) -> torch.Tensor | None:
        return None if self.per_item else self.matrix.abs().sum(-1).to(like.real.dtype)[None]

    def abs_col_sums(self, like: torch.Tensor) -> torch.Tensor | None:
        return None if self.per_item else self.matrix.abs().sum(-2).to(like.real.dtype)[None]
