"""priors/learned_prox.py: the LPN map, its regulariser, the prior, the losses and the schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from torch import nn

from priors.learned_prox import (GammaSchedule, LearnedProximalNetwork, LearnedProxPrior, ScheduleStep, l1_loss,
                                 l2_loss, patchwise, proximal_matching_loss)
from priors.nets import ICNN, ICNN1D
from tests.contracts import FunctionalContract, randn, rel_diff
from tests.test_nets import randomise_nonnegative


class Quadratic(nn.Module):
    """``psi(y) = a/2 ||y||^2``: ``f(y) = a y`` and ``R(x) = (1/a - 1)/2 ||x||^2``."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, y):
        return 0.5 * self.a * y.flatten(1).square().sum(1)


def quadratic_icnn(a: float) -> ICNN:
    """An ICNN with every parameter zero and ``alpha = a/2``: the same ``psi`` as ``Quadratic(a)``."""
    psi = ICNN(hidden=4, strides=(2,), alpha=a / 2).double()
    with torch.no_grad():
        for p in psi.parameters():
            p.zero_()
    return psi


def tiny_lpn(alpha: float = 0.1, dtype=torch.float64) -> LearnedProximalNetwork:
    psi = ICNN(hidden=6, strides=(2, 1), alpha=alpha).to(dtype)
    randomise_nonnegative(psi)
    return LearnedProximalNetwork(psi)


def sq_norm(x):
    return x.flatten(1).square().sum(1)


# --- the network, its inverse and its regulariser ----------------------------------------------------------------


@pytest.mark.parametrize("a", [0.5, 2.0])
@pytest.mark.parametrize("make", [Quadratic, quadratic_icnn])
def test_quadratic_potential_prox_and_regulariser(make, a):
    f = LearnedProximalNetwork(make(a))
    x = randn((1, 6, 6), torch.float64, batch=3, seed=1)
    assert rel_diff(f(x).detach(), a * x) < 1e-12
    r = f.regulariser(x, tol=1e-10)
    offset = r - (1 / a - 1) / 2 * sq_norm(x)  # R is defined up to a constant
    assert float(offset.max() - offset.min()) < 1e-8 * float(sq_norm(x).max())


def test_inverse_reaches_tolerance_float64():
    f = tiny_lpn()
    x = randn((1, 6, 6), torch.float64, batch=3, seed=2)
    y, residual = f.inverse(x, tol=1e-9)
    assert residual.shape == (3,) and float(residual.max()) <= 1e-9
    with torch.no_grad():
        assert float((f(y) - x).abs().max()) <= 1e-9
    assert not y.requires_grad and rel_diff(y, x) > 1e-2  # y* is not the starting point


def test_inverse_float32_default_tolerance():
    f = tiny_lpn(dtype=torch.float32)
    x = randn((1, 6, 6), torch.float32, batch=2, seed=3)
    _, residual = f.inverse(x)
    assert float(residual.max()) <= 1e-6 * 10  # float32: within a decade of the default tol (see inverse)


def test_inverse_warns_when_not_converged():
    with pytest.warns(RuntimeWarning, match=r"max \|f\(y\) - x\|"):
        tiny_lpn().inverse(randn((1, 6, 6), torch.float64, seed=4), max_iter=1, tol=1e-12)


def scalar_regulariser(f: LearnedProximalNetwork, x: float) -> float:
    """``R(x)`` by a bracketing root finder on ``f(y) = x`` (scipy brentq), independent of the L-BFGS inverse."""
    def fy(t):
        with torch.no_grad():
            return float(f(torch.tensor([[t]], dtype=torch.float64))) - x
    y = brentq(fy, -100.0, 100.0, xtol=1e-14)
    with torch.no_grad():
        return y * x - 0.5 * x * x - float(f.psi(torch.tensor([[y]], dtype=torch.float64)))


def scalar_lpn() -> LearnedProximalNetwork:
    # seeded: the unconstrained layers draw from the global generator, which depends on test order
    with torch.random.fork_rng():
        torch.manual_seed(0)
        psi = ICNN1D(hidden=8, layers=2, alpha=0.05).double()
    randomise_nonnegative(psi, scale=0.3)  # f: a steep rise near 0, plateaus near +-1.8, slope 0.1 beyond
    return LearnedProximalNetwork(psi)


def test_regulariser_matches_root_finding_1d():
    f = scalar_lpn()
    x = torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None]
    r = f.regulariser(x, tol=1e-10)
    ref = torch.tensor([scalar_regulariser(f, float(v)) for v in x[:, 0]], dtype=torch.float64)
    assert float((r - ref).abs().max()) < 1e-8 * (1 + float(ref.abs().max()))


def test_network_is_the_prox_of_its_regulariser_1d():
    """``f(v) = argmin_x R(x) + (x - v)^2 / 2``, checked by brute force on a grid (spacing 0.01).

    The points ``v`` are chosen with ``f(v) = p`` for ``p`` well inside the grid.
    """
    f = scalar_lpn()
    grid = torch.linspace(-3, 3, 601, dtype=torch.float64)[:, None]
    r = f.regulariser(grid, tol=1e-10)
    p = torch.linspace(-1.6, 1.6, 9, dtype=torch.float64)[:, None]
    v, _ = f.inverse(p, tol=1e-10)
    objective = r[None, :] + 0.5 * (grid[:, 0][None, :] - v) ** 2
    brute = grid[objective.argmin(1), 0]
    assert float((brute - p[:, 0]).abs().max()) <= 0.01
    assert float((v - p).abs().max()) > 1.0  # f is far from the identity


# --- the prior ---------------------------------------------------------------------------------------------------


class TestLearnedProxPriorContract(FunctionalContract):
    shape = (1, 8, 8)

    @pytest.fixture
    def make(self):
        return LearnedProxPrior(tiny_lpn(dtype=torch.float32))


def test_prox_under_no_grad_enables_grad_for_the_input_only():
    f = tiny_lpn()
    prior = LearnedProxPrior(f)
    x = randn((1, 8, 8), torch.float64, batch=2, seed=5)
    x0 = x.clone()
    with torch.no_grad():
        out = prior.prox(x, 0.1)
    assert not out.requires_grad and not x.requires_grad and torch.equal(x, x0)
    assert all(p.grad is None for p in f.parameters())
    assert rel_diff(out, f(x).detach()) < 1e-12
    with torch.no_grad():
        assert torch.equal(prior.prox(x, 10.0), out)  # tau is ignored


def test_prox_batched_equals_looped():
    prior = LearnedProxPrior(tiny_lpn())
    x = randn((1, 8, 8), torch.float64, batch=3, seed=6)
    with torch.no_grad():
        looped = torch.cat([prior.prox(x[i:i + 1], 1.0) for i in range(3)])
        assert rel_diff(prior.prox(x, 1.0), looped) < 1e-12


def test_prox_is_differentiable_with_grad_on():
    a = 0.7
    x = randn((1, 5, 5), torch.float64, seed=7).requires_grad_(True)
    LearnedProxPrior(LearnedProximalNetwork(Quadratic(a))).prox(x, 1.0).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, a))
    f = tiny_lpn()
    LearnedProxPrior(f).prox(randn((1, 8, 8), torch.float64, seed=8), 1.0).square().sum().backward()
    assert all(p.grad is not None for p in f.psi.nonnegative_weights())  # training through the prior


@pytest.mark.parametrize("patch, stride, size", [(8, 3, (13, 17)), (8, 8, (8, 8)), (4, 1, (5, 9))])
def test_patchwise_covers_every_pixel(patch, stride, size):
    """A pixel-wise map (psi = a/2 ||x||^2, f = a x) is unchanged by patch averaging iff every pixel is covered."""
    prior = LearnedProxPrior(LearnedProximalNetwork(Quadratic(0.6)), patch_size=patch, stride=stride, patch_batch=2)
    x = randn((2, *size), torch.float64, batch=2, seed=9)
    with torch.no_grad():
        assert rel_diff(prior.prox(x, 1.0), 0.6 * x) < 1e-12


def test_patchwise_with_an_icnn():
    f = tiny_lpn()
    x = randn((1, 12, 12), torch.float64, batch=2, seed=10)
    with torch.no_grad():
        whole = f(x)
        assert rel_diff(LearnedProxPrior(f, patch_size=12).prox(x, 1.0), whole) < 1e-12
        one = LearnedProxPrior(f, patch_size=8, stride=2, patch_batch=1).prox(x, 1.0)
        many = LearnedProxPrior(f, patch_size=8, stride=2, patch_batch=100).prox(x, 1.0)
    assert rel_diff(one, many) < 1e-12
    manual = (f(x[..., :8, :8]) + f(x[..., :8, 4:]))[..., :, 4:8] / 2  # two of the patches over [0:8, 4:8]
    assert 0 < rel_diff(one, whole) < 0.5 and manual.shape == (2, 1, 8, 4)


def test_patchwise_average_by_hand():
    x = torch.zeros(1, 1, 2, 7)
    calls = []

    def fn(p):
        calls.append(p.shape[0])
        return torch.ones_like(p) * len(calls)  # patch k (in call order) returns the value k

    out = patchwise(fn, x, patch_size=2, stride=2, patch_batch=1)  # column origins 0, 2, 4 and 5 (border)
    assert calls == [1, 1, 1, 1]
    assert torch.equal(out[0, 0], torch.tensor([[1.0, 1.0, 2.0, 2.0, 3.0, 3.5, 4.0]] * 2))
    with pytest.raises(ValueError, match=r"stride: expected an integer in \[1, patch_size = 2\], got 3"):
        patchwise(fn, x, patch_size=2, stride=3)


def test_prior_rejects_bad_arguments():
    f = tiny_lpn()
    with pytest.raises(ValueError, match="x: expected a 4-D tensor"):
        LearnedProxPrior(f).prox(torch.zeros(1, 8, 8, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="x: expected H and W >= patch_size = 16"):
        LearnedProxPrior(f, patch_size=16).prox(torch.zeros(1, 1, 8, 20, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="patch_size: expected a positive integer"):
        LearnedProxPrior(f, patch_size=0)
    with pytest.raises(ValueError, match=r"stride: expected an integer in \[1, patch_size\]"):
        LearnedProxPrior(f, patch_size=8, stride=9)
    with pytest.raises(ValueError, match="stride"):
        LearnedProxPrior(f, stride=4)


# --- losses and schedule -----------------------------------------------------------------------------------------


def test_losses_match_numpy():
    a, b = randn((1, 3, 4), torch.float64, batch=5, seed=11), randn((1, 3, 4), torch.float64, batch=5, seed=12)
    an, bn = a.numpy(), b.numpy()
    d2 = ((an - bn) ** 2).reshape(5, -1).sum(1)
    assert float(proximal_matching_loss(a, b, 2.5)) == pytest.approx(np.mean(1 - np.exp(-d2 / 2.5 ** 2)), rel=1e-12)
    assert float(l1_loss(a, b)) == pytest.approx(np.abs(an - bn).mean(), rel=1e-12)
    assert float(l2_loss(a, b)) == pytest.approx(((an - bn) ** 2).mean(), rel=1e-12)


def test_proximal_matching_limits_and_errors():
    a = randn((4,), torch.float64, batch=3, seed=13)
    assert float(proximal_matching_loss(a, a, 0.1)) == 0.0
    assert float(proximal_matching_loss(a + 100, a, 0.1)) == 1.0
    small = 1e-4 * randn((4,), torch.float64, batch=3, seed=14)  # 1 - exp(-t) = t + O(t^2)
    assert float(proximal_matching_loss(a + small, a, 1.0)) == pytest.approx(float(sq_norm(small).mean()), rel=1e-6)
    with pytest.raises(ValueError, match="gamma: expected a positive number"):
        proximal_matching_loss(a, a, 0.0)
    with pytest.raises(ValueError, match=r"x_hat: expected the shape of x \(3, 4\), got \(3, 5\)"):
        proximal_matching_loss(torch.zeros(3, 5), a, 1.0)


def test_gamma_schedule_paper_defaults():
    s = GammaSchedule.for_images(1, 128, 128)
    assert s.gamma_min == pytest.approx(10.24)
    assert s(0) == s(19_999) == ("l1", None, 1e-3)
    for step, factor in [(20_000, 8), (24_999, 8), (25_000, 4), (30_000, 2), (35_000, 1), (39_999, 1), (10**6, 1)]:
        kind, gamma, lr = s(step)
        assert (kind, lr) == ("pm", 1e-4) and gamma == pytest.approx(10.24 * factor)
    assert GammaSchedule.for_images(3, 128, 128).gamma_min == pytest.approx(0.08 * np.sqrt(3 * 128 * 128))


def test_gamma_schedule_stages_are_equal_and_halving():
    s = GammaSchedule(gamma_min=0.1, num_steps=100, pretrain_steps=10, num_stages=3, pretrain_lr=1e-2, lr=1e-3)
    steps = [s(k) for k in range(100)]
    assert all(st.kind == "l1" and st.lr == 1e-2 for st in steps[:10])
    gammas = [st.gamma for st in steps[10:]]
    assert sorted(set(gammas)) == pytest.approx([0.1, 0.2, 0.4])
    assert [gammas.count(g) for g in (0.4, 0.2)] == [30, 30] and gammas == sorted(gammas, reverse=True)


def test_schedule_step_loss_and_errors():
    a, b = randn((3,), torch.float64, seed=15), randn((3,), torch.float64, seed=16)
    assert torch.equal(ScheduleStep("l1", None, 1e-3).loss(a, b), l1_loss(a, b))
    assert torch.equal(ScheduleStep("l2", None, 1e-3).loss(a, b), l2_loss(a, b))
    assert torch.equal(ScheduleStep("pm", 0.3, 1e-3).loss(a, b), proximal_matching_loss(a, b, 0.3))
    with pytest.raises(ValueError, match="gamma_min"):
        GammaSchedule(gamma_min=0.0)
    with pytest.raises(ValueError, match="pretrain_steps: expected 0 <= pretrain_steps <= num_steps - num_stages"):
        GammaSchedule(gamma_min=1.0, num_steps=10, pretrain_steps=8, num_stages=4)
    with pytest.raises(ValueError, match="step: expected an integer >= 0"):
        GammaSchedule(gamma_min=1.0)(-1)


# --- the 1-D Laplace toy (Fang et al., Section 4.1) --------------------------------------------------------------


def laplace_targets(y: np.ndarray) -> dict[str, np.ndarray]:
    """For ``x ~ Laplace(0, 1)`` and ``y = x + N(0, 1)``: the posterior mean and median (trapezoidal quadrature
    on [-15, 15]), the MAP ``prox_{|.|}(y)`` = soft-thresholding at 1, and the density of ``y``."""
    t = np.linspace(-15.0, 15.0, 12001)
    dt = t[1] - t[0]
    w = 0.5 * np.exp(-np.abs(t)[None, :] - 0.5 * (t[None, :] - y[:, None]) ** 2) / np.sqrt(2 * np.pi)
    cdf = np.concatenate([np.zeros((len(y), 1)), np.cumsum((w[:, 1:] + w[:, :-1]) / 2 * dt, axis=1)], axis=1)
    return {"mean": (w * t).sum(1) / w.sum(1), "median": np.array([np.interp(0.5, c / c[-1], t) for c in cdf]),
            "soft": np.sign(y) * np.maximum(np.abs(y) - 1, 0), "density": cdf[:, -1]}


def laplace_pairs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + noise, x)`` with ``x ~ Laplace(0, 1)``, noise ``N(0, 1)``; antithetic (each pair with its mirror
    image), which halves the sampling noise of this symmetric problem."""
    u = 1 - torch.rand(n // 2, 1, generator=gen)  # in (0, 1]: -log(u) is finite
    x = -torch.log(u) * torch.sign(torch.rand(n // 2, 1, generator=gen) - 0.5)
    y = x + torch.randn(n // 2, 1, generator=gen)
    return torch.cat([y, -y]), torch.cat([x, -x])


def train_toy(f: LearnedProximalNetwork, stages, batch: int, gen: torch.Generator) -> None:
    """Plain Adam; ``stages`` of ``(steps, lr, loss kind, gamma)``; weights clamped after every step."""
    opt = torch.optim.Adam(f.parameters())
    for steps, lr, kind, gamma in stages:
        for group in opt.param_groups:
            group["lr"] = lr
        for _ in range(steps):
            y, x = laplace_pairs(batch, gen)
            loss = ScheduleStep(kind, gamma, lr).loss(f(y), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            f.clamp_weights()


def toy_errors(f: LearnedProximalNetwork, y: np.ndarray, targets) -> dict[str, tuple[float, float, float]]:
    """Per target: max and mean ``|f(y) - target(y)|`` over the grid ``y``, and the mean weighted by the density
    of ``y`` (the expected error on the data, which is what the losses control)."""
    with torch.no_grad():
        out = f(torch.tensor(y, dtype=torch.float32)[:, None])[:, 0].double().numpy()
    p = targets["density"] / targets["density"].sum()
    return {k: (float(np.abs(out - v).max()), float(np.abs(out - v).mean()), float((p * np.abs(out - v)).sum()))
            for k, v in targets.items() if k != "density"}


def test_laplace_quadrature_matches_closed_forms():
    """The quadrature references against closed forms: with ``Z(y) = e^-y Phi(y - 1) + e^y Phi(-y - 1)``,
    ``p(y) = e^(1/2) Z / 2``, ``E[x|y] = (e^-y ((y-1) Phi(y-1) + phi(y-1)) + e^y ((y+1) Phi(-y-1) - phi(y+1))) / Z``,
    and for ``y >= 0`` the median ``m`` solves ``e^-y (Phi(m - y + 1) - Phi(1 - y)) = Z / 2 - e^y Phi(-y - 1)``."""
    from scipy.stats import norm
    y = np.linspace(0.0, 4.0, 41)
    z = np.exp(-y) * norm.cdf(y - 1) + np.exp(y) * norm.cdf(-y - 1)
    mean = (np.exp(-y) * ((y - 1) * norm.cdf(y - 1) + norm.pdf(y - 1))
            + np.exp(y) * ((y + 1) * norm.cdf(-y - 1) - norm.pdf(y + 1))) / z
    median = y - 1 + norm.ppf(norm.cdf(1 - y) + np.exp(y) * (z / 2 - np.exp(y) * norm.cdf(-y - 1)))
    ref = laplace_targets(y)
    np.testing.assert_allclose(ref["density"], np.exp(0.5) * z / 2, rtol=1e-6)
    np.testing.assert_allclose(ref["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(ref["median"], median, atol=1e-4)  # linear interpolation of the CDF on a 0.0025 grid
    np.testing.assert_allclose(laplace_targets(-y)["median"], -median, atol=1e-4)


@pytest.mark.slow
def test_laplace_toy_losses_reach_their_estimators():
    """l2 -> posterior mean, l1 -> posterior median, proximal matching -> MAP (soft-thresholding at 1).

    The paper's runs shortened: 13x fewer steps at half the batch (l2, l1), 23x fewer steps (proximal
    matching); docs/lpn_laplace_study.py runs them in full (24.5 min on one core). l2 and l1: 1000 steps
    of batch 1000 at lr 1e-3, then 500 at 1e-4; proximal matching from the l1 model, batch 2000: gamma 0.5
    (300 steps at lr 1e-3), 0.3 (300 at 3e-4), 0.2 (300 at 1e-4, then 300 at 3e-5).
    """
    y = np.linspace(-4.0, 4.0, 161)
    targets = laplace_targets(y)
    gen, errors = torch.Generator().manual_seed(0), {}
    for kind in ("l2", "l1"):
        torch.manual_seed(0)
        f = LearnedProximalNetwork(ICNN1D(hidden=50, layers=4, beta=10.0))
        train_toy(f, [(1000, 1e-3, kind, None), (500, 1e-4, kind, None)], 1000, gen)
        errors[kind] = toy_errors(f, y, targets)
    train_toy(f, [(300, 1e-3, "pm", 0.5), (300, 3e-4, "pm", 0.3), (300, 1e-4, "pm", 0.2), (300, 3e-5, "pm", 0.2)],
              2000, gen)
    errors["pm"] = toy_errors(f, y, targets)
    print("\n|f - target| over y in [-4, 4], max / mean / density-weighted mean:")
    for kind, errs in errors.items():
        print(f"  {kind}: " + ", ".join(f"{t} {a:.3f}/{b:.3f}/{c:.3f}" for t, (a, b, c) in errs.items()))
    for kind, own in (("l2", "mean"), ("l1", "median"), ("pm", "soft")):
        weighted = {t: e[2] for t, e in errors[kind].items()}
        assert min(weighted, key=weighted.get) == own, (kind, errors[kind])
    assert errors["pm"]["soft"][1] < 0.75 * errors["l1"]["soft"][1], errors  # matching moved f towards the MAP
    assert errors["pm"]["soft"][0] < 0.3, errors["pm"]  # the kink at |y| = 1 is smoothed (softplus beta = 10)
