"""Learned primal-dual (priors.nets.LearnedPrimalDual): the network, ``recon train lpd``, ``reconstruct``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.cli import main
from operators import ParallelBeam2D
from priors.nets import LearnedPrimalDual
from recon.reconstruct import reconstruct
from tests.trainer_helpers import one_thread, train_cli  # noqa: F401  (one_thread: autouse fixture)

TINY = {"data": {"count": 12, "size": 32}, "model": {"iterations": 3, "hidden": 8},
        "task": {"views": 10}, "train": {"val_every": 40, "lr": 3e-3}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_cli(tmp_path_factory.mktemp("lpd"), "lpd", TINY, steps=40)


def operator(views: int = 10, size: int = 32):
    from apps.ct import detector_count

    return ParallelBeam2D((size, size), np.linspace(0, np.pi, views, endpoint=False), detector_count(size))


def check_unit_free_batched_and_differentiable(net, start: bool = False) -> None:
    """A sinogram-to-image network: scaling data and scale scales the output, batched equals looped,
    every parameter gets a gradient; ``start``: the network also takes an estimate to start from."""
    A = operator()
    x = torch.rand(3, 1, 32, 32)
    y, s = A(x), torch.tensor([1.0, 2.0, 0.5])
    x0 = [x + 0.1 * torch.randn_like(x)] if start else []
    out = net(A, y, s, *x0)
    assert torch.allclose(net(A, 1e-3 * y, 1e-3 * s, *[1e-3 * v for v in x0]), 1e-3 * out, rtol=1e-4, atol=1e-9)
    assert torch.allclose(out[1:2], net(A, y[1:2], s[1:2], *[v[1:2] for v in x0]), rtol=1e-5, atol=1e-6)
    out.pow(2).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters())


def test_the_network_is_unit_free_batched_and_differentiable():
    torch.manual_seed(0)
    check_unit_free_batched_and_differentiable(LearnedPrimalDual(iterations=2, hidden=8))
    with pytest.raises(ValueError, match="primal: expected an integer >= 2, got 1"):
        LearnedPrimalDual(primal=1)


def test_a_warm_started_network_returns_its_start_until_trained():
    torch.manual_seed(0)
    net = LearnedPrimalDual(iterations=2, hidden=8, start_iterations=5)
    A = operator()
    x0, s = torch.rand(2, 1, 32, 32), torch.tensor([1.0, 3.0])
    assert torch.allclose(net(A, A(x0), s, x0), x0, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"x0: this network starts from TV after 5 iterations \(pass it as x0\); "
                                         "got no estimate"):
        net(A, A(x0), s)
    with pytest.raises(ValueError, match=r"x0: this network starts from zero \(pass no x0\); got an estimate"):
        LearnedPrimalDual(iterations=2, hidden=8)(A, A(x0), s, x0)
    with pytest.raises(ValueError, match=r"x0: expected shape \(2, 1, 32, 32\), got \(2, 1, 16, 16\)"):
        net(A, A(x0), s, x0[..., :16, :16])
    with torch.no_grad():  # once the zero-started layers have moved, the warm network is an LPD like any other
        for update in net.primal_updates:
            update[-1].weight.normal_(0, 0.01)
    check_unit_free_batched_and_differentiable(net, start=True)


def test_training_learns_and_the_card_records_the_geometry(trained):
    card = json.loads((trained / "model.json").read_text())
    assert card["task"] == "lpd" and card["geometry"]["views"] == 10 and card["geometry"]["image_shape"] == [32, 32]
    log = (trained / "log.csv").read_text().splitlines()
    header, first = log[0].split(","), log[1].split(",")
    assert card["metrics"]["psnr"] > float(first[header.index("val_psnr")]) + 3  # vs the untrained network


def test_reconstruct_lpd_and_its_errors(trained, tmp_path, capsys):
    from data.phantoms import random_ellipses

    A = operator()
    y = A(random_ellipses(32, seed=9))
    r = reconstruct(A, y, "lpd", model=trained)
    assert r.method == "lpd" and r.x.shape == (1, 1, 32, 32) and r.iterations == 3
    with pytest.raises(ValueError, match=r"model: .* was trained for ParallelBeam2D with 10 views .* \(differs in "
                                         r"views\); train one for this geometry with `recon train lpd`"):
        reconstruct(operator(views=12), operator(views=12)(random_ellipses(32, seed=9)), "lpd", model=trained)
    with pytest.raises(ValueError, match="lam: lpd is a trained network"):
        reconstruct(A, y, "lpd", model=trained, lam=1.0)
    with pytest.raises(ValueError, match=r"model: lpd needs a trained lpd \(none is shipped\)"):
        reconstruct(A, y, "lpd")
    common = ["ct", "--phantom", "ellipses", "--size", "32", "--views", "10", "--no-progress"]
    assert main([*common, "--method", "lpd", "--weights", str(trained), "--output", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["lpd"]["iterations"] == 3
    assert main([*common, "--method", "lpd", "--output", str(tmp_path / "o2")]) == 2
    assert "--weights: --method lpd needs a trained lpd model" in capsys.readouterr().err


def test_training_from_tv_iterates_and_reconstruct_starts_there(tmp_path):
    from data.phantoms import random_ellipses
    from priors.tv import intensity_scale
    from recon.fbp import fbp
    from recon.models import load_model

    config = {**TINY, "model": {**TINY["model"], "start_iterations": 4}}
    out = train_cli(tmp_path, "lpd", config, steps=80)
    card = json.loads((out / "model.json").read_text())
    assert card["architecture"]["start_iterations"] == 4
    assert card["metrics"]["psnr"] > card["metrics"]["psnr_start"] + 0.3  # better than the TV it starts from
    A = operator()
    y = A(random_ellipses(32, seed=9))
    r = reconstruct(A, y, "lpd", model=out)
    net = load_model(out, "lpd").network.eval()
    with torch.no_grad():
        expected = net(A, y, intensity_scale(fbp(A, y)), reconstruct(A, y, "tv", lam="rule", iterations=4).x)
    assert torch.allclose(r.x, expected) and r.parameters["iterations_tv"] == 4
