"""Unrolled ISTA with CNN proxes (priors.nets.UnrolledISTANet): the untrained network is Landweber,
``recon train unrolled-ista`` (supervised and unsupervised) learns, ``reconstruct`` and ``recon ct`` use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.cli import main
from data.phantoms import random_ellipses
from priors.nets import UnrolledISTANet
from recon.reconstruct import reconstruct
from tests.test_lpd import check_unit_free_batched_and_differentiable, operator
from tests.trainer_helpers import one_thread, train_cli  # noqa: F401  (one_thread: autouse fixture)

TINY = {"data": {"count": 12, "size": 32}, "model": {"layers": 4, "hidden": 8},
        "task": {"views": 10}, "train": {"val_every": 40, "lr": 3e-3}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_cli(tmp_path_factory.mktemp("ista"), "unrolled-ista", TINY, steps=40)


@pytest.mark.parametrize("start", [0, 7])
def test_the_untrained_network_is_landweber_on_the_normalised_data_term(start):
    """theta = 0 and zero last convolutions: 4 steps x <- x - A^T(A x - y) / ||A||^2 by hand in numpy, from 0
    or (start_iterations > 0) from the estimate passed."""
    A = operator()
    x_true = random_ellipses(32, seed=3).double()
    y = A(x_true)
    x0 = x_true + 0.05 * torch.randn_like(x_true) if start else None
    net = UnrolledISTANet(layers=4, hidden=8, start_iterations=start).double()
    got = net(A, y, torch.full((1,), 2.0, dtype=torch.float64), *([x0] if start else []))
    norm = A.norm()
    x = x0.numpy() if start else np.zeros((1, 1, 32, 32))
    for _ in range(4):
        x = x - A.adjoint(A(torch.from_numpy(x)) - y).numpy() / norm ** 2
    np.testing.assert_allclose(got.detach().numpy(), x, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="x0: this network starts from"):
        net(A, y, torch.ones(1, dtype=torch.float64), *([] if start else [x_true]))


@pytest.mark.parametrize("start", [0, 3])
def test_the_network_is_unit_free_batched_and_every_parameter_learns(start):
    torch.manual_seed(0)
    net = UnrolledISTANet(layers=2, hidden=8, start_iterations=start)
    for prox in net.proxes:  # as after a training step: the last convolutions no longer zero
        torch.nn.init.normal_(prox[-1].weight, std=0.1)
    check_unit_free_batched_and_differentiable(net, start=bool(start))
    with pytest.raises(ValueError, match="layers: expected an integer >= 1, got 0"):
        UnrolledISTANet(layers=0)


def test_supervised_training_learns_and_the_card_records_geometry_and_loss(trained):
    card = json.loads((trained / "model.json").read_text())
    assert card["task"] == "unrolled-ista" and card["geometry"]["views"] == 10
    assert card["loss"] == {"loss": "supervised", "tv": 0.0}
    log = (trained / "log.csv").read_text().splitlines()
    header, first = log[0].split(","), log[1].split(",")
    assert card["metrics"]["psnr"] > float(first[header.index("val_psnr")]) + 3  # vs the untrained network


def test_unsupervised_training_lowers_its_objective_without_the_images(tmp_path):
    config = {**TINY, "task": {"views": 10, "loss": "unsupervised", "tv": 0.01}}
    run = train_cli(tmp_path, "unrolled-ista", config, steps=30)
    assert json.loads((run / "model.json").read_text())["loss"] == {"loss": "unsupervised", "tv": 0.01}
    losses = [float(r.split(",")[1]) for r in (run / "log.csv").read_text().splitlines()[1:] if r.split(",")[1]]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    bad = {**TINY, "task": {"views": 10, "loss": "self"}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["train", "unrolled-ista", "--data", "ellipses", "--config", str(tmp_path / "bad.json"),
                 "--output", str(tmp_path / "bad"), "--steps", "1", "--no-progress"]) == 2


def test_reconstruct_and_recon_ct_use_it_for_its_geometry_only(trained, tmp_path, capsys):
    A = operator()
    y = A(random_ellipses(32, seed=9))
    r = reconstruct(A, y, "unrolled-ista", model=trained)
    assert r.method == "unrolled-ista" and r.x.shape == (1, 1, 32, 32) and r.iterations == 4
    with pytest.raises(ValueError, match=r"model: .* was trained for ParallelBeam2D with 10 views .* \(differs in "
                                         r"views\); train one for this geometry with `recon train unrolled-ista`"):
        reconstruct(operator(views=12), operator(views=12)(random_ellipses(32, seed=9)), "unrolled-ista",
                    model=trained)
    with pytest.raises(ValueError, match="iterations: unrolled-ista is a trained network"):
        reconstruct(A, y, "unrolled-ista", model=trained, iterations=3)
    common = ["ct", "--phantom", "ellipses", "--size", "32", "--views", "10", "--no-progress"]
    assert main([*common, "--method", "unrolled-ista", "--weights", str(trained), "--output", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["unrolled-ista"]["iterations"] == 4
    assert main([*common, "--method", "unrolled-ista", "--output", str(tmp_path / "o2")]) == 2
    assert "--weights: --method unrolled-ista needs a trained unrolled-ista model" in capsys.readouterr().err
