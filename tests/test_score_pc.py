"""Score-based sampling with projection (Song et al. 2022): the sampler against the closed-form posterior
of a linear-Gaussian toy, each projection against an independent (numpy) form of what it should do,
seeding, and the argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.phantoms import shepp_logan
from operators import CartesianMRI, MultiCoilMRI, ParallelBeam2D
from operators.base import LinearOperator
from operators.matrix import MatrixOperator
from priors import L2Fidelity
from priors.diffusion import DiffusionPrior
from recon.diffusion.diffpir import DiffPIR
from recon.diffusion.dps import DPS
from recon.diffusion.score_pc import ScorePC, projection_for
from recon.fbp import fbp
from recon.problem import Problem
from tests.test_dps import _gaussian_prior, _toy_module
from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)

CHAINS = 2000


def _monte_carlo_bounds(rng, mean, P, repeats=20):
    """The largest errors of ``CHAINS`` exact draws over ``repeats`` tries: what chance alone gives."""
    toy = _toy_module()
    rows = [toy.score(rng.multivariate_normal(mean, P, size=CHAINS), mean, P) for _ in range(repeats)]
    return {k: max(abs(r[k] - (1.0 if k == "trace_ratio" else 0.0)) for r in rows) for k in rows[0]}


def _sample_posterior(snr, steps=200):
    toy = _toy_module()
    rng, C, mu0, A, y = toy.setup()
    mean, P = toy.posterior(C, mu0, A, y)
    problem = Problem(L2Fidelity(MatrixOperator(torch.from_numpy(A)), torch.from_numpy(y).expand(CHAINS, -1)))
    sampler = ScorePC(_gaussian_prior(P, mean), steps=steps, lam=0.0, snr=snr, final_projection=False)
    xs = sampler.run(problem, torch.zeros(CHAINS, len(mu0), dtype=torch.float64)).x.numpy()
    return toy.score(xs, mean, P), _monte_carlo_bounds(rng, mean, P)


def test_the_predictor_with_the_exact_posterior_score_samples_the_closed_form_posterior():
    """16-d Gaussian prior, 8 noisy linear measurements: with the posterior's own denoiser (lam = 0: no
    projection), 2000 chains over 200 noise levels and the final Tweedie step match the closed-form mean
    and covariance as closely as 2000 exact draws do (1.5 x the worst of 20 tries; about 0.02 of the
    posterior std in the mean, 7% in the covariance). A wrong sign, factor or schedule would not."""
    got, bound = _sample_posterior(snr=0.0)
    assert got["mean_error_over_std"] < 1.5 * bound["mean_error_over_std"], (got, bound)
    assert got["cov_relative_error"] < 1.5 * bound["cov_relative_error"], (got, bound)
    assert abs(got["trace_ratio"] - 1) < 1.5 * bound["trace_ratio"], (got, bound)


def test_the_langevin_corrector_widens_the_samples_as_its_step_grows():
    """The corrector's unadjusted Langevin steps (the paper's snr 0.16 here) leave the mean right and
    inflate the covariance beyond Monte-Carlo error: the same check has the power to see it."""
    got, bound = _sample_posterior(snr=0.16)
    assert got["mean_error_over_std"] < 1.5 * bound["mean_error_over_std"], (got, bound)
    assert got["trace_ratio"] - 1 > 2 * bound["trace_ratio"], (got, bound)


def _sampler_for(A, y, **kwargs):
    """A ScorePC set up on ``A`` and ``y`` (its ``project`` ready to call)."""
    prior = _gaussian_prior(np.eye(4), np.zeros(4))
    sampler = ScorePC(prior, steps=2, **kwargs)
    sampler.init(Problem(L2Fidelity(A, y)), torch.zeros_like(A.adjoint(y)))
    return sampler


def test_cg_projection_approaches_the_data_consistent_image_nearest_x():
    """Enough CG steps give ``x + A^+ (y - A x)`` (numpy's pseudo-inverse); ``lam`` blends linearly."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 12))
    x, y = rng.normal(size=(2, 12)), rng.normal(size=(2, 5))
    sampler = _sampler_for(MatrixOperator(torch.from_numpy(A)), torch.from_numpy(y), cg_iterations=60)
    expected = x + (y - x @ A.T) @ np.linalg.pinv(A).T
    hard = sampler.project(torch.from_numpy(x), torch.from_numpy(y), 1.0).numpy()
    np.testing.assert_allclose(hard, expected, atol=1e-8)
    soft = sampler.project(torch.from_numpy(x), torch.from_numpy(y), 0.3).numpy()
    np.testing.assert_allclose(soft, x + 0.3 * (expected - x), atol=1e-8)


def _fft2c(a):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(a, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def test_fft_projection_is_the_papers_blend_in_each_coils_k_space():
    """Multi-coil, maps with sum |S_c|^2 = 1: numpy's blend of each coil's k-space on the mask, then
    the coil combination sum conj(S_c) F^H; single coil: measured k-space replaced, the rest kept."""
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(3, 8, 8)) + 1j * rng.normal(size=(3, 8, 8))
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    mask = (rng.random((8, 8)) < 0.4).astype(np.float32)
    x = rng.normal(size=(1, 1, 8, 8)) + 1j * rng.normal(size=(1, 1, 8, 8))
    y = mask * (rng.normal(size=(1, 3, 8, 8)) + 1j * rng.normal(size=(1, 3, 8, 8)))
    A = MultiCoilMRI(torch.from_numpy(mask), torch.from_numpy(maps))
    sampler = _sampler_for(A, torch.from_numpy(y).to(torch.complex128))
    got = sampler.project(torch.from_numpy(x), torch.from_numpy(y), 0.7).numpy()
    k = _fft2c(maps[None] * x)
    blended = np.where(mask > 0, 0.7 * y + 0.3 * k, k)
    np.testing.assert_allclose(got, (maps.conj()[None] * _ifft2c(blended)).sum(1, keepdims=True), atol=1e-5)

    single = _sampler_for(CartesianMRI(torch.from_numpy(mask)), torch.from_numpy(y[:, :1]).to(torch.complex128))
    hard = _fft2c(single.project(torch.from_numpy(x), torch.from_numpy(y[:, :1]), 1.0).numpy())
    np.testing.assert_allclose(hard, np.where(mask > 0, y[:, :1], _fft2c(x)), atol=1e-5)


def test_fbp_projection_fits_the_data_better_than_the_literal_full_view_blend():
    """60 of 240 views at 64^2, from a random image: the FBP step at lam = 1 leaves under 15% of the data
    residual; the literal recipe (full-view sinogram, measured views replaced, FBP of it all) leaves
    over half, and blurs the unmeasured part. lam scales the step."""
    n, full = 64, np.linspace(0, np.pi, 240, endpoint=False)
    A, A_full = ParallelBeam2D((n, n), full[::4], 95), ParallelBeam2D((n, n), full, 95)
    y = A(shepp_logan(n))
    x = 0.3 * torch.rand(1, 1, n, n, generator=torch.Generator().manual_seed(0))
    sampler = _sampler_for(A, y)
    assert sampler._kind == "fbp"
    start = float((A(x) - y).norm())
    ours = sampler.project(x, y, 1.0)
    sinogram = A_full(x)
    blended = sinogram.clone()
    blended[..., ::4, :] = y
    literal = x + fbp(A_full, blended) - fbp(A_full, sinogram)
    assert float((A(ours) - y).norm()) < 0.15 * start
    assert float((A(literal) - y).norm()) > 0.5 * start
    torch.testing.assert_close(sampler.project(x, y, 0.4) - x, 0.4 * (ours - x), atol=1e-5, rtol=1e-4)


def test_same_seed_same_samples_and_the_final_projection_fits_the_data():
    mask = torch.zeros(8, 8)
    mask[:, ::2] = 1
    A = CartesianMRI(mask)
    truth = torch.randn(3, 1, 8, 8, dtype=torch.complex64, generator=torch.Generator().manual_seed(2))
    problem = Problem(L2Fidelity(A, A(truth)))
    prior = _gaussian_prior(np.eye(8), np.zeros(8))
    runs = [ScorePC(prior, steps=20, lam=0.8, seed=s).run(problem, torch.zeros_like(truth)).x for s in (0, 0, 1)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.allclose(runs[0], runs[2])
    assert float((A(runs[0]) - A(truth)).abs().max()) < 1e-5


def test_projection_choice_and_argument_errors():
    n = 16
    assert projection_for(ParallelBeam2D((n, n), np.linspace(0, np.pi, 8, endpoint=False), 24)) == "fbp"
    assert projection_for(CartesianMRI(torch.ones(n, n))) == "fft"
    assert projection_for(MatrixOperator(torch.eye(3))) == "cg"
    prior = _gaussian_prior(np.eye(4), np.zeros(4))
    with pytest.raises(ValueError, match="lam: .*1"):
        ScorePC(prior, lam=1.5)
    with pytest.raises(ValueError, match="projection: expected one of auto, fft, fbp, cg, got 'exact'"):
        ScorePC(prior, projection="exact")
    with pytest.raises(ValueError, match="snr"):
        ScorePC(prior, snr=-1)
    A = MatrixOperator(torch.eye(4, dtype=torch.float64))
    y = torch.zeros(1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="projection: 'fft' needs an MRI operator .* got MatrixOperator"):
        ScorePC(prior, steps=2, projection="fft").run(Problem(L2Fidelity(A, y)), y)
    with pytest.raises(ValueError, match="projection: 'fbp' needs a 2D CT operator .* got MatrixOperator"):
        ScorePC(prior, steps=2, projection="fbp").run(Problem(L2Fidelity(A, y)), y)


class _NoAdjoint(LinearOperator):
    """An operator with a forward map and no adjoint."""

    def __init__(self):
        super().__init__((1, 8, 8), (1, 8, 8))

    def _forward(self, x):
        return 2 * x


@pytest.mark.parametrize("make", [lambda p: ScorePC(p, steps=3), lambda p: DPS(p, steps=3),
                                  lambda p: DiffPIR(p, 0.1, steps=3)], ids=["score-pc", "dps", "diffpir"])
def test_an_operator_without_an_adjoint_is_refused_before_any_step(make):
    prior = DiffusionPrior(lambda x, s: x / (1 + s ** 2), preconditioned=False)
    y = torch.ones(1, 1, 8, 8)
    solver = make(prior)
    with pytest.raises(TypeError, match=r"A: .* needs the operator's adjoint A\^H, and _NoAdjoint .*defines none"):
        solver.run(Problem(L2Fidelity(_NoAdjoint(), y)), y)
