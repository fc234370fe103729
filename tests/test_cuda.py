"""CUDA path: tensors stay on the device (torch profiler), chunked batches equal one call.

Skipped without a CUDA device (CI has none); run on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import operators.ct as ct
from data.phantoms import shepp_logan
from operators import ParallelBeam2D
from operators.base import trusted_values
from priors import L2Fidelity, NonNegativity, TV
from recon import ChambollePock, Problem
from tests.contracts import rel_diff

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def host_copies(fn) -> int:
    """Host<->device copies made by ``fn`` (the profiler's CUDA memcpy events)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(("Memcpy HtoD" in e.name or "Memcpy DtoH" in e.name) for e in prof.events())


@pytest.fixture
def problem():
    A = ParallelBeam2D((128, 128), np.linspace(0, np.pi, 60, endpoint=False), 182)
    x = shepp_logan(128).cuda()
    y = A(x)
    return Problem(L2Fidelity(A, y), 0.5 * TV(), constraint=NonNegativity()), x, y


def test_operators_make_no_host_copies(problem):
    problem, x, y = problem
    A = problem.data.A
    A(x), A.adjoint(y)  # projector handles
    with trusted_values():  # outside it, the NaN check reads one flag back per call
        assert host_copies(lambda: (A(x), A.adjoint(y), A(x.expand(8, -1, -1, -1)))) == 0


def test_chambolle_pock_iterations_make_no_host_copies(problem):
    """Copies do not grow with iterations: the set-up's scalars and the history at the end only."""
    problem, x, _ = problem
    x0 = torch.zeros_like(x)
    ChambollePock(max_iter=5, tol=0).run(problem, x0)  # caches ||A||
    counts = [host_copies(lambda n=n: ChambollePock(max_iter=n, tol=0).run(problem, x0)) for n in (20, 60)]
    assert counts[0] == counts[1], counts


def test_chunked_cuda_calls_equal_one_call(problem, monkeypatch):
    problem, x, y = problem
    A = problem.data.A
    xb, yb = x.expand(7, -1, -1, -1).contiguous() * torch.rand(7, 1, 1, 1, device="cuda"), y.expand(7, -1, -1, -1)
    one_fp, one_bp = A(xb), A.adjoint(yb)
    monkeypatch.setattr(ct, "_free_device_bytes", lambda device: 2 * 3 * 128 * 128 * 4)  # 3 images per call
    assert rel_diff(A(xb), one_fp) < 1e-6 and rel_diff(A.adjoint(yb), one_bp) < 1e-6
