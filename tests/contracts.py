"""Contract tests every LinearOperator and Functional inherits.

A component's test subclasses a contract and supplies a ``make`` fixture that
returns the component. Tolerances are relative and dtype-aware. Operators that
compute in float32 internally (ASTRA) set ``internal_float32 = True`` on the
test class, so float64 inputs are held to float32 accuracy.
"""

from __future__ import annotations

import pytest
import torch

from operators.base import LinearOperator, inner
from priors.base import Functional

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.complex64: 1e-5, torch.complex128: 1e-10}


def randn(shape, dtype=torch.float32, device="cpu", batch=2, seed=0):
    """Seeded random tensor(s) of shape ``(batch, *shape)``; a tuple for tuple shapes."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple):
        return tuple(randn(s, dtype, device, batch, seed + 1 + i) for i, s in enumerate(shape))
    return torch.randn((batch, *shape), generator=gen, dtype=dtype).to(device)


def flat_norm(t) -> torch.Tensor:
    return inner(t, t).sqrt()


def rel_diff(a, b) -> float:
    """Relative L2 difference, max over the batch (tuples allowed)."""
    if isinstance(a, tuple):
        return max(rel_diff(ai, bi) for ai, bi in zip(a, b))
    num = torch.linalg.vector_norm((a - b).flatten(1), dim=1)
    den = torch.linalg.vector_norm(b.flatten(1), dim=1).clamp_min(1e-30)
    return float((num / den).max())


class LinearOperatorContract:
    """Inherited tests for a ``LinearOperator`` returned by the ``make`` fixture."""

    internal_float32 = False
    device = "cpu"  # "cuda" for operators that only run there (ConeBeam3D); skipped without CUDA
    #: normalised dot-test tolerance on CUDA, for operators whose GPU pair is not an exact adjoint (ASTRA's
    #: ray-driven projector with its pixel-driven back-projector); None: the same tolerance as on CPU
    cuda_adjoint_tol: float | None = None
    #: input dtypes in single and double precision; complex operators (MRI) use complex64/complex128
    dtypes = {"single": torch.float32, "double": torch.float64}

    @property
    def dtype(self) -> torch.dtype:
        return self.dtypes["single"]

    def tol(self, dtype) -> float:
        single = TOL[self.dtypes["single"]]
        return single if self.internal_float32 else TOL[dtype]

    def test_is_operator(self, make):
        assert isinstance(make, LinearOperator)

    @pytest.mark.parametrize("precision", ["single", "double"])
    @pytest.mark.parametrize("device", DEVICES)
    def test_adjoint(self, make, precision, device):
        dtype = self.dtypes[precision]
        device = self.device if self.device != "cpu" else device
        A = make.to(device)
        x, y = randn(A.in_shape, dtype, device, seed=1), randn(A.out_shape, dtype, device, seed=2)
        lhs, rhs = inner(A(x), y), inner(x, A.adjoint(y))
        scale = A.norm(device=device) * flat_norm(x) * flat_norm(y)
        err = float(((lhs - rhs).abs() / scale).max())
        fit = float((rhs / lhs).mean())  # scale fit: reports a mis-scaled adjoint
        tol = self.cuda_adjoint_tol if device == "cuda" and self.cuda_adjoint_tol is not None else self.tol(dtype)
        assert err < tol, f"adjoint mismatch {err:.2e} (adjoint/forward scale fit {fit:.6f})"

    def test_linearity(self, make):
        A = make
        x1, x2 = randn(A.in_shape, self.dtype, self.device, seed=3), randn(A.in_shape, self.dtype, self.device, seed=4)
        lhs = A(2.0 * x1 - 3.0 * x2)
        y1, y2 = A(x1), A(x2)
        rhs = tuple(2 * a - 3 * b for a, b in zip(y1, y2)) if isinstance(y1, tuple) else 2 * y1 - 3 * y2
        assert rel_diff(lhs, rhs) < 10 * self.tol(self.dtype)

    def test_adjoint_of_adjoint(self, make):
        A = make
        assert A.H.H is A
        x = randn(A.in_shape, self.dtype, self.device, seed=5)
        assert rel_diff(A.H.H(x), A(x)) == 0.0
        assert rel_diff(A.normal(x), A.adjoint(A(x))) < 10 * self.tol(self.dtype)

    def test_autograd_is_adjoint(self, make):
        A = make
        x = randn(A.in_shape, self.dtype, self.device, seed=6).requires_grad_(True)
        v = randn(A.out_shape, self.dtype, self.device, seed=7)
        inner(A(x), v).sum().backward()
        assert rel_diff(x.grad, A.adjoint(v)) < 10 * self.tol(self.dtype)

    def test_autograd_of_adjoint_is_forward(self, make):
        A = make
        y = randn(A.out_shape, self.dtype, self.device, seed=8)
        y = tuple(t.requires_grad_(True) for t in y) if isinstance(y, tuple) else y.requires_grad_(True)
        v = randn(A.in_shape, self.dtype, self.device, seed=9)
        inner(A.adjoint(y), v).sum().backward()
        grad = tuple(t.grad for t in y) if isinstance(y, tuple) else y.grad
        assert rel_diff(grad, A(v)) < 10 * self.tol(self.dtype)

    def test_batched_equals_looped(self, make):
        A = make
        x = randn(A.in_shape, self.dtype, self.device, batch=3, seed=10)
        batched = A(x)
        for i in range(3):
            single = A(x[i : i + 1])
            if isinstance(single, tuple):
                assert all(torch.allclose(b[i : i + 1], s, rtol=1e-5, atol=1e-6) for b, s in zip(batched, single))
            else:
                assert torch.allclose(batched[i : i + 1], single, rtol=1e-5, atol=1e-6 * float(single.abs().max()))

    def test_no_input_mutation(self, make):
        A = make
        x, y = randn(A.in_shape, self.dtype, self.device, seed=11), randn(A.out_shape, self.dtype, self.device, seed=12)
        x0 = x.clone()
        y0 = tuple(t.clone() for t in y) if isinstance(y, tuple) else y.clone()
        A(x)
        A.adjoint(y)
        assert torch.equal(x, x0)
        assert all(torch.equal(a, b) for a, b in zip(y, y0)) if isinstance(y, tuple) else torch.equal(y, y0)

    @pytest.mark.parametrize("precision", ["single", "double"])
    def test_dtype_kept(self, make, precision):
        A, dtype = make, self.dtypes[precision]
        out = A(randn(A.in_shape, dtype, device=self.device))
        outs = out if isinstance(out, tuple) else (out,)
        assert all(o.dtype == dtype for o in outs)
        assert A.adjoint(randn(A.out_shape, dtype, device=self.device)).dtype == dtype

    def test_wrong_shape_is_rejected(self, make):
        A = make
        bad = torch.zeros(2, *[s + 1 for s in A.in_shape], device=self.device)
        with pytest.raises(ValueError, match="x: .*expects shape"):
            A(bad)

    def test_norm_is_cached_and_positive(self, make):
        A = make
        n1 = A.norm()
        assert n1 > 0 and A.norm() == n1
        x = randn(A.in_shape, self.dtype, self.device, batch=1, seed=13)
        assert flat_norm(A(x)).item() <= 1.01 * n1 * flat_norm(x).item()


class FunctionalContract:
    """Inherited tests for a ``Functional`` from ``make`` on inputs of ``shape``."""

    shape = (1, 8, 8)

    def test_value_shape(self, make):
        if make.has_value:
            v = make.value(randn(self.shape, batch=3))
            assert v.shape == (3,)

    @pytest.mark.parametrize("tau", [0.1, 1.0])
    def test_prox_is_minimiser(self, make, tau):
        """``tau f(p) + 1/2 ||p - x||^2`` does not decrease under random perturbations of p."""
        if not (make.has_prox and make.has_value):
            pytest.skip("no prox/value")
        x = randn(self.shape, dtype=torch.float64, seed=21)
        p = make.prox(x, tau)
        obj = lambda q: tau * make.value(q) + 0.5 * ((q - x) ** 2).flatten(1).sum(1)  # noqa: E731
        base = obj(p)
        gen = torch.Generator().manual_seed(3)
        for _ in range(20):
            d = 1e-3 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
            assert bool((obj(p + d) >= base - 1e-9 * (1 + base.abs())).all())

    def test_moreau_identity(self, make):
        """``x = prox_{tau f}(x) + tau prox_{f*/tau}(x / tau)``."""
        if not make.has_prox or type(make).conj_prox is Functional.conj_prox:
            pytest.skip("conj_prox is derived from prox by this very identity")
        x, tau = randn(self.shape, dtype=torch.float64, seed=22), 0.7
        rhs = make.prox(x, tau) + tau * make.conj_prox(x / tau, 1.0 / tau)
        assert rel_diff(rhs, x) < 1e-6

    def test_grad_matches_autograd(self, make):
        if not (make.has_grad and make.has_value):
            pytest.skip("not smooth")
        x = randn(self.shape, dtype=torch.float64, seed=23).requires_grad_(True)
        make.value(x).sum().backward()
        assert rel_diff(make.grad(x.detach()), x.grad) < 1e-10
