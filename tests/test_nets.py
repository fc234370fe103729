"""priors/nets: U-Net shapes and errors; ICNN convexity, monotone gradients, gradcheck."""

from __future__ import annotations

import pytest
import torch

from priors.learned_prox import LearnedProximalNetwork, l2_loss
from priors.nets import ICNN, ICNN1D, UNet
from tests.contracts import randn


def randomise_nonnegative(psi, scale: float = 0.3, seed: int = 0) -> None:
    """Replace the tiny exp(N(-10, 0.1)) initial weights by O(scale) non-negative ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in psi.nonnegative_weights():
            w.copy_(scale * torch.randn(w.shape, generator=gen, dtype=w.dtype).abs())


def tiny_icnn(dtype=torch.float64, **kwargs) -> ICNN:
    return ICNN(**{"hidden": 6, "strides": (2, 1), "alpha": 0.01, **kwargs}).to(dtype)


def midpoint_gaps(psi, shape, n: int = 64, scale: float = 2.0) -> torch.Tensor:
    """``(psi(x) + psi(y)) / 2 - psi((x + y) / 2)`` on ``n`` random pairs, relative to ``|psi(x)| + |psi(y)|``."""
    x = scale * randn(shape, torch.float64, batch=n, seed=1)
    y = scale * randn(shape, torch.float64, batch=n, seed=2)
    with torch.no_grad():
        px, py, pm = psi(x), psi(y), psi((x + y) / 2)
    return ((px + py) / 2 - pm) / (px.abs() + py.abs() + 1e-30)


def train_briefly(f: LearnedProximalNetwork, shape, sign: float = 1.0, steps: int = 15, lr: float = 1e-2) -> None:
    """A few Adam steps towards ``sign * x`` from ``x + 0.3 noise`` (random data), clamping after each step."""
    opt = torch.optim.Adam(f.parameters(), lr=lr)
    for k in range(steps):
        x = randn(shape, torch.float64, batch=8, seed=100 + k)
        y = x + 0.3 * randn(shape, torch.float64, batch=8, seed=200 + k)
        loss = l2_loss(f(y), sign * x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        f.clamp_weights()


# --- U-Net -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["batch", "group", None])
@pytest.mark.parametrize("residual", [True, False])
def test_unet_shapes(norm, residual):
    net = UNet(channels=(4, 8, 16), residual=residual, norm=norm)
    assert net(torch.randn(2, 1, 12, 20)).shape == (2, 1, 12, 20)


def test_unet_channels_and_depth_one():
    net = UNet(in_channels=2, out_channels=3, channels=(4, 8), residual=False, norm="group")
    assert net(torch.randn(1, 2, 6, 10)).shape == (1, 3, 6, 10)
    assert UNet(channels=(4,), norm=None)(torch.randn(1, 1, 7, 5)).shape == (1, 1, 7, 5)


@pytest.mark.parametrize("shape", [(1, 1, 18, 20), (1, 1, 20, 18), (1, 1, 2, 4)])
def test_unet_rejects_sizes_not_divisible(shape):
    with pytest.raises(ValueError, match=r"x: expected H and W divisible by 2\*\*\(depth - 1\) = 4"):
        UNet(channels=(4, 8, 16))(torch.zeros(shape))


def test_unet_rejects_bad_inputs_and_arguments():
    net = UNet(channels=(4, 8))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, H, W\), got \(1, 2, 8, 8\)"):
        net(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="x: expected shape"):
        net(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="norm: expected one of"):
        UNet(norm="layer")
    with pytest.raises(ValueError, match="out_channels: a residual U-Net needs out_channels == in_channels"):
        UNet(out_channels=2, residual=True)
    with pytest.raises(ValueError, match="channels: expected a non-empty sequence"):
        UNet(channels=())


def test_unet_default_is_small():
    size = sum(p.numel() * p.element_size() for p in UNet().state_dict().values())
    assert size < 4e6


@pytest.mark.parametrize("residual", [True, False])
def test_unet_residual_means_input_plus_head(residual):
    net = UNet(channels=(4, 8), residual=residual, norm=None)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(0.5)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(net(x), x + 0.5 if residual else torch.full_like(x, 0.5))


@pytest.mark.parametrize("norm", ["batch", "group", None])
def test_unet_batch_items_are_independent_in_eval(norm):
    net = UNet(channels=(4, 8, 16), norm=norm).eval()
    x = torch.randn(3, 1, 8, 12)
    with torch.no_grad():
        batched = net(x)
        looped = torch.cat([net(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, looped, rtol=1e-5, atol=1e-6)


def test_unet_learns():
    torch.manual_seed(0)
    net = UNet(channels=(4, 8), norm="group", residual=False)
    x = torch.rand(4, 1, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = l2_loss(net(x), x.flip(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]


# --- ICNN --------------------------------------------------------------------------------------------------------


def test_icnn_shapes_and_errors():
    psi = ICNN(in_channels=2, hidden=4, strides=(2, 2, 1))
    assert psi(torch.randn(3, 2, 7, 9)).shape == (3,)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 2, H, W\), got \(3, 1, 7, 9\)"):
        psi(torch.randn(3, 1, 7, 9))
    with pytest.raises(ValueError, match="strides: expected a non-empty sequence"):
        ICNN(strides=())
    with pytest.raises(ValueError, match="alpha: expected a number >= 0"):
        ICNN(alpha=-1.0)
    with pytest.raises(ValueError, match="beta: expected a positive number"):
        ICNN1D(beta=0.0)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1\), got \(4,\)"):
        ICNN1D()(torch.zeros(4))
    assert ICNN1D(in_dim=3)(torch.randn(5, 3)).shape == (5,)


def test_icnn_initial_weights_are_tiny_and_positive():
    for psi in (ICNN(hidden=8), ICNN1D()):
        w = torch.cat([t.detach().flatten() for t in psi.nonnegative_weights()])
        # exp(N(-10, 0.1)): every value within 6 standard deviations of exp(-10)
        assert bool((w > 0).all()) and float(w.log().mean()) == pytest.approx(-10, abs=0.05)
        assert float(w.log().max()) < -10 + 0.6 and float(w.log().min()) > -10 - 0.6


@pytest.mark.parametrize("make, shape", [(tiny_icnn, (1, 8, 8)), (lambda: ICNN1D(in_dim=2).double(), (2,))])
def test_icnn_convex_at_init_and_with_random_weights(make, shape):
    psi = make()
    assert float(midpoint_gaps(psi, shape).min()) >= -1e-12
    randomise_nonnegative(psi)
    gaps = midpoint_gaps(psi, shape)
    assert float(gaps.min()) >= -1e-12
    assert float(gaps.max()) > 1e-3  # psi is far from affine: the check has something to see


@pytest.mark.parametrize("make, shape", [(tiny_icnn, (1, 8, 8)), (lambda: ICNN1D(in_dim=2).double(), (2,))])
def test_midpoint_check_detects_negative_weights(make, shape):
    """Negative control: with the constrained weights negated, psi is no longer convex and the check sees it."""
    psi = make()
    randomise_nonnegative(psi, scale=1.0)
    with torch.no_grad():
        for w in psi.nonnegative_weights():
            w.neg_()
    assert float(midpoint_gaps(psi, shape).min()) < -1e-3


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("make, shape", [(tiny_icnn, (1, 8, 8)), (lambda: ICNN1D(in_dim=2).double(), (2,))])
def test_icnn_convex_after_training_with_clamp(make, shape, sign):
    """Denoising (sign 1) and a decreasing target no convex potential can fit (sign -1), which drives
    the constrained weights below zero so that the clamp has to act."""
    psi = make()
    randomise_nonnegative(psi, scale=0.05)
    before = [w.clone() for w in psi.nonnegative_weights()]
    train_briefly(LearnedProximalNetwork(psi), shape, sign)
    after = torch.cat([w.flatten() for w in psi.nonnegative_weights()])
    assert not all(torch.equal(a, b) for a, b in zip(before, psi.nonnegative_weights()))
    assert bool((after >= 0).all())
    if sign < 0:
        assert bool((after == 0).any())
    assert float(midpoint_gaps(psi, shape).min()) >= -1e-12


def test_clamp_weights_projects_onto_nonnegative():
    for psi in (tiny_icnn(), ICNN1D()):
        randomise_nonnegative(psi)
        with torch.no_grad():
            for w in psi.nonnegative_weights():
                w[..., 0] *= -1
        expected = [w.clamp(min=0) for w in psi.nonnegative_weights()]
        LearnedProximalNetwork(psi).clamp_weights()
        assert all(torch.equal(w, e) for w, e in zip(psi.nonnegative_weights(), expected))


@pytest.mark.parametrize("make, shape", [(tiny_icnn, (1, 8, 8)), (lambda: ICNN1D(in_dim=2).double(), (2,))])
def test_lpn_map_is_monotone(make, shape):
    psi = make()
    randomise_nonnegative(psi)
    f = LearnedProximalNetwork(psi)
    x, y = randn(shape, torch.float64, batch=64, seed=3), randn(shape, torch.float64, batch=64, seed=4)
    with torch.no_grad():
        dot = ((f(x) - f(y)) * (x - y)).flatten(1).sum(1)
    assert float(dot.min()) >= -1e-12 * float((x - y).flatten(1).square().sum(1).max())


def test_gradcheck_psi_and_lpn_float64():
    psi = ICNN(hidden=3, strides=(2,), alpha=0.1).double()
    randomise_nonnegative(psi)
    f = LearnedProximalNetwork(psi)
    x = randn((1, 5, 5), torch.float64, batch=2, seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(psi, (x,))
    assert torch.autograd.gradcheck(f, (x,))  # second derivatives of psi through double backward
    v = torch.linspace(-2, 2, 6, dtype=torch.float64)[:, None].requires_grad_(True)
    assert torch.autograd.gradcheck(LearnedProximalNetwork(ICNN1D(hidden=5, layers=2).double()), (v,))
