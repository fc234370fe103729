"""RED-Diff against the closed form it must reach with a Gaussian prior, and its contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from priors import L2Fidelity, TV
from priors.diffusion import DiffusionPrior, VPSchedule
from recon.diffusion.red_diff import REDDiff
from recon.problem import Problem
from tests.test_operators import Dense

M0, S = 0.3, 0.2  # the prior: x0 ~ N(M0, S^2 I)


def _gaussian_prior() -> DiffusionPrior:
    return DiffusionPrior(lambda x, sigma: M0 + S ** 2 / (S ** 2 + sigma ** 2) * (x - M0), preconditioned=False,
                          sigma_range=(1e-3, 200.0))


def _problem(batch: int = 2, n: int = 16, m: int = 8):
    rng = np.random.default_rng(0)
    A = Dense(rng.standard_normal((m, n)))
    x = torch.as_tensor(rng.standard_normal((batch, n)))
    return A, A(x) + 0.01 * torch.as_tensor(rng.standard_normal((batch, m)))


def _closed_form(A, y, lam):
    """argmin lam / (2n) ||mu - M0||^2 + 1 / (2m) ||A mu - y||^2, per item."""
    M = A.M.numpy()
    m, n = M.shape
    lhs = lam / n * np.eye(n) + M.T @ M / m
    return np.stack([np.linalg.solve(lhs, lam / n * M0 + M.T @ yi / m) for yi in y.numpy()])


@pytest.mark.parametrize("lam", [0.05, 1.0])
def test_at_high_noise_levels_red_diff_reaches_the_gaussian_map(lam):
    """With timesteps 900-999 (sigma_t 38 to 157 >> S) the expected update is the gradient of the
    closed-form objective; Adam at lr 1e-3 then jitters about 1e-3 around its minimiser."""
    A, y = _problem()
    timesteps = np.linspace(999, 900, 4000).round().astype(int)
    solver = REDDiff(_gaussian_prior(), lam=lam, lr=1e-3, timesteps=timesteps)
    mu = solver.run(Problem(L2Fidelity(A, y)), torch.zeros(2, 16, dtype=torch.float64)).x
    expected = _closed_form(A, y, lam)
    assert np.abs(mu.numpy() - expected).max() < 5e-3, np.abs(mu.numpy() - expected).max()
    # the prior matters here (underdetermined A): ten times the weight lands over 10x farther away
    assert np.abs(_closed_form(A, y, 10 * lam) - expected).max() > 0.05


def test_the_same_seed_gives_the_same_result_and_the_timesteps_descend():
    A, y = _problem()
    runs = [REDDiff(_gaussian_prior(), steps=30, seed=s).run(Problem(L2Fidelity(A, y)), A.adjoint(y)).x
            for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    solver = REDDiff(_gaussian_prior(), steps=50)
    assert solver.timesteps == VPSchedule().timesteps(50) and solver.timesteps[0] == 980
    assert solver.timesteps[-1] == 0 and solver.max_iter == 50


def test_bad_arguments_are_named():
    A, y = _problem()
    with pytest.raises(TypeError, match="prior: expected a DiffusionPrior"):
        REDDiff(TV())
    for kwargs, name in (({"lam": -1.0}, "lam"), ({"lr": 0.0}, "lr"), ({"steps": 0}, "steps"),
                         ({"timesteps": [1000]}, "timesteps"), ({"steps": 2.5}, "steps")):
        with pytest.raises(ValueError, match=f"^{name}: expected"):
            REDDiff(_gaussian_prior(), **kwargs)
    with pytest.raises(ValueError, match="problem.prior"):
        REDDiff(_gaussian_prior(), steps=2).run(Problem(L2Fidelity(A, y), TV()), A.adjoint(y))


@pytest.mark.parametrize("solver", ["red-diff", "diffpir"])
def test_both_diffusion_solvers_name_a_problem_they_cannot_solve(solver):
    from recon.diffusion.diffpir import DiffPIR

    A, y = _problem()
    make = (lambda: REDDiff(_gaussian_prior(), steps=2)) if solver == "red-diff" else (
        lambda: DiffPIR(_gaussian_prior(), noise_std=0.1, steps=2))
    with pytest.raises(TypeError, match="problem.data: .* needs a least-squares data term"):
        make().run(Problem(TV()), A.adjoint(y))
    with pytest.raises(ValueError, match="problem.prior"):
        make().run(Problem(L2Fidelity(A, y), TV()), A.adjoint(y))


def test_complex_images_are_their_real_and_imaginary_parts():
    """A real A and complex data: RED-Diff reaches the closed form of each part, DiffPIR's deterministic
    form equals the two real runs combined (MRI images are complex; the prior is real)."""
    from recon.diffusion.diffpir import DiffPIR

    A, y_re = _problem()
    _, y_im = _problem(m=8, n=16)
    y_im = y_im.flip(0)
    y = torch.complex(y_re, y_im)
    zeros = torch.zeros(2, 16, dtype=torch.complex128)
    timesteps = np.linspace(999, 900, 4000).round().astype(int)
    mu = REDDiff(_gaussian_prior(), lam=1.0, lr=1e-3, timesteps=timesteps).run(Problem(L2Fidelity(A, y)), zeros).x
    assert mu.is_complex()
    assert np.abs(mu.real.numpy() - _closed_form(A, y_re, 1.0)).max() < 5e-3
    assert np.abs(mu.imag.numpy() - _closed_form(A, y_im, 1.0)).max() < 5e-3

    def hqs(data, x0):
        return DiffPIR(_gaussian_prior(), noise_std=0.05, steps=200, lam=1.0, renoise=False).run(
            Problem(L2Fidelity(A, data)), x0).x

    both = hqs(y, zeros)
    torch.testing.assert_close(both, torch.complex(hqs(y_re, zeros.real), hqs(y_im, zeros.real)), rtol=1e-10, atol=1e-12)
