"""RISING (recon.learned.rising): the network, ``recon train rising``, ``reconstruct(..., "rising")`` and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.cli import main
from operators import FanBeam2D, ParallelBeam2D
from priors.nets import RisingNet, UNet
from priors.nets.unet import eval_output
from recon.metrics import psnr
from recon.models import load_model
from recon.reconstruct import reconstruct
from tests.trainer_helpers import one_thread, train_cli  # noqa: F401  (one_thread: autouse fixture)

#: 12 generated 32x32 images, 10 views (52 detectors), 3 TV iterations as the input
TINY = {"data": {"count": 12, "size": 32}, "model": {"channels": [8, 16], "norm": "group"},
        "task": {"patch_size": 32, "patches_per_image": 1, "views": 10, "iterations": 3},
        "train": {"val_every": 20, "lr": 3e-3}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_cli(tmp_path_factory.mktemp("rising"), "rising", TINY, steps=80)


def problem(views: int = 10, size: int = 32, seed: int = 3):
    from apps.ct import detector_count
    from data.phantoms import random_ellipses

    A = ParallelBeam2D((size, size), np.linspace(0, np.pi, views, endpoint=False), detector_count(size))
    y = A(random_ellipses(size, seed=seed))
    return A, y + 0.01 * y.pow(2).mean().sqrt() * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))


def test_the_network_starts_as_the_identity_and_is_unit_free():
    net = RisingNet(UNet(channels=(4, 8), residual=True, norm="group"))
    x = torch.rand(2, 1, 24, 24)
    assert torch.allclose(net(x), x, atol=1e-6)
    torch.nn.init.normal_(net.unet.head.weight, std=0.1)  # as if trained
    assert torch.allclose(net(1e-3 * x), 1e-3 * net(x), rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="unet: expected a residual UNet"):
        RisingNet(UNet(channels=(4, 8), residual=False))


def test_training_brings_the_input_towards_converged_tv(trained):
    """The card records the geometry and k; validation: the network's output is nearer converged TV than x_k."""
    card = json.loads((trained / "model.json").read_text())
    assert card["task"] == "rising" and card["rising"] == {"iterations": 3}
    assert card["geometry"] == {"operator": "ParallelBeam2D", "views": 10, "detectors": 52, "image_shape": [32, 32]}
    assert card["metrics"]["psnr"] > card["metrics"]["psnr_input"] + 1.0


def test_reconstruct_runs_k_tv_iterations_then_the_network(trained):
    A, y = problem()
    r = reconstruct(A, y, "rising", model=trained / "model.safetensors")
    model = load_model(trained / "model.safetensors", task="rising")
    early = reconstruct(A, y, "tv", lam="rule", iterations=3)
    assert r.method == "rising" and r.iterations == 3 and r.parameters["iterations_tv"] == 3
    assert torch.allclose(r.x, eval_output(model.network, early.x))
    converged = reconstruct(A, y, "tv", lam="rule").x
    assert float(psnr(r.x, converged)) > float(psnr(early.x, converged))  # held-out phantom (seed 3)


@pytest.mark.parametrize("make, differs", [
    (lambda: problem(views=12)[0], "views"),
    (lambda: ParallelBeam2D((32, 32), np.linspace(0, np.pi, 10, endpoint=False), 60), "detectors"),
    (lambda: FanBeam2D((32, 32), np.linspace(0, 2 * np.pi, 10, endpoint=False), 52, 64.0, 32.0), "operator"),
])
def test_another_geometry_is_refused_naming_both(trained, make, differs):
    A = make()
    y = torch.zeros(1, *A.out_shape)
    with pytest.raises(ValueError, match=rf"model: .* was trained for ParallelBeam2D with 10 views x 52 detectors on "
                                         rf"32x32 images; these data are .* \(differs in {differs}\)"):
        reconstruct(A, y, "rising", model=trained)


def test_rising_arguments_are_checked(trained):
    A, y = problem()
    with pytest.raises(ValueError, match="iterations: the RISING model .* completes 3 TV iterations; got 5"):
        reconstruct(A, y, "rising", model=trained, iterations=5)
    with pytest.raises(ValueError, match="lam: rising runs TV at the rule's weight"):
        reconstruct(A, y, "rising", model=trained, lam=0.1)
    with pytest.raises(ValueError, match="nonneg: rising's network was trained"):
        reconstruct(A, y, "rising", model=trained, nonneg=False)
    with pytest.raises(ValueError, match=r"model: .*rising_ct256.safetensors was trained for ParallelBeam2D with 60 "
                                         r"views x 401 detectors on 256x256 images"):
        reconstruct(A, y, "rising")  # the shipped model, for another geometry
    with pytest.raises(ValueError, match="weights: .* holds a 'rising' model; expected a 'lpn' model"):
        reconstruct(A, y, "lpn", model=trained)


def test_recon_ct_method_rising(trained, tmp_path, capsys):
    common = ["ct", "--phantom", "ellipses", "--size", "32", "--views", "10", "--no-progress"]
    assert main([*common, "--method", "tv", "--method", "rising", "--weights", str(trained),
                 "--output", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["rising"]["iterations"] == 3 and metrics["rising"]["psnr"] > 20
    assert main([*common, "--method", "rising", "--output", str(tmp_path / "o2")]) == 2  # the shipped one: 256^2
    assert "--weights: " in (err := capsys.readouterr().err) and "with 60 views x 401 detectors on 256x256" in err
    assert main([*common, "--method", "rising", "--weights", str(trained), "--lam", "0.1",
                 "--output", str(tmp_path / "o3")]) == 2
    assert "--lam: --method rising takes its weight and iterations from its model" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3" / "metrics.json").exists()


def test_bench_quality_method_rising(trained, tmp_path, capsys):
    argv = ["bench", "quality", "--phantoms", "1", "--size", "32", "--views", "10", "--method", "tv", "--method",
            "rising", "--no-progress"]
    weights = ["--rising-weights", str(trained)]
    assert main([*argv, "--datasets", "phantoms", *weights, "--output", str(tmp_path / "q")]) == 0
    cases = json.loads((tmp_path / "q" / "quality.json").read_text())["cases"]
    assert all(c["rising"]["psnr"] > 20 and c["rising"]["iterations"] == 3 for c in cases.values())
    assert main([*argv, "--htc", str(tmp_path), *weights, "--output", str(tmp_path / "o2")]) == 2
    assert "--method rising: a rising model serves the geometry it was trained for" in capsys.readouterr().err
