"""The models shipped in recon/weights: small, documented, loadable, and doing their job out of the box."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.cli import main
from apps.ct import simulate
from operators.ct import ct_operator
from recon.fbp import fbp
from recon.metrics import psnr
from recon.models import BUILTIN, builtin, load_model
from recon.reconstruct import reconstruct

MAX_BYTES = 10 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_shipped_model_is_small_and_carries_its_card(name):
    path = builtin(name)
    assert path.is_file() and path.stat().st_size <= MAX_BYTES
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["command"].startswith("recon train ")
    assert card["data"]["source"] in ("ellipses", "ellipses+coule", "htc-discs") and card["steps"] > 0
    assert all(np.isfinite(v) for v in card["metrics"].values()) and card["metrics"]
    model = load_model(path)
    assert model.task == {"lpn": "lpn", "svtv": "svtv-weights", "score": "score", "rising": "rising",
                          "limited-angle": "limited-angle"}[name]
    assert not model.network.training


def test_shipped_lpn_has_tuned_pnp_settings():
    pnp = load_model(builtin("lpn")).card["pnp"]
    assert pnp["rho_factor"] > 0 and pnp["iterations"] >= 1 and "lpn_ct_study.py" in pnp["tuned_by"]


def _case(size: int, seed: int):
    data = simulate("ellipses", size, 60, "parallel", 0.01, seed)
    A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
    return A, torch.as_tensor(data.sinogram)[None, None], torch.as_tensor(data.reference)[None, None]


def test_shipped_lpn_improves_on_fbp_out_of_the_box():
    A, y, ref = _case(128, 7)
    r = reconstruct(A, y, "lpn", iterations=15)
    assert r.parameters["weights"].endswith("lpn_ct256.safetensors")
    assert float(psnr(r.x, ref, data_range=1.0)) > float(psnr(fbp(A, y), ref, data_range=1.0)) + 5


def test_recon_ct_lpn_works_out_of_the_box(tmp_path):
    out = tmp_path / "out"
    assert main(["ct", "--phantom", "shepp-logan", "--size", "64", "--views", "30", "--method", "fbp",
                 "--method", "lpn", "--iterations", "3", "--output", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lpn"]["iterations"] == 3 and metrics["lpn"]["rho"] > 0


def test_shipped_weight_network_predicts_edges():
    """On a held-out phantom the predicted |grad x| is closer to the truth's than the FBP's own gradient."""
    from priors.weight_net import gradient_magnitude

    A, y, ref = _case(256, 3)
    x_fbp = fbp(A, y)
    predicted = load_model(builtin("svtv")).network.gradient_magnitude(x_fbp)
    truth = gradient_magnitude(ref)
    assert float((predicted - truth).norm()) < 0.5 * float((gradient_magnitude(x_fbp) - truth).norm())


@pytest.mark.slow
def test_svtv_with_the_weight_network_beats_svtv_with_fbp_weights():
    """The issue's claim on one held-out phantom (bench quality measures all 21), at the card's settings."""
    A, y, ref = _case(256, 5)
    net = float(psnr(reconstruct(A, y, "svtv", model=builtin("svtv")).x, ref, data_range=1.0))
    fbp_weights = float(psnr(reconstruct(A, y, "svtv", estimate="fbp").x, ref, data_range=1.0))
    assert net > fbp_weights + 0.5


def test_shipped_score_model_denoises_at_every_noise_level_it_was_validated_at():
    """A held-out phantom (random ellipses, seed 7, 128^2): D(x + sigma n, sigma) gains at each sigma,
    more where there is more noise to remove."""
    prior = load_model(builtin("score")).network
    x = simulate("ellipses", 128, 60, "parallel", 0.0, 7).reference
    x = torch.as_tensor(x)[None, None]
    gen = torch.Generator().manual_seed(0)
    gains = []
    for sigma in (0.01, 0.05, 0.2):
        noisy = x + sigma * torch.randn(x.shape, generator=gen)
        with torch.no_grad():
            gains.append(float(psnr(prior.denoise(noisy, sigma), x, 1.0) - psnr(noisy, x, 1.0)))
    assert gains[0] > 1.0 and gains[1] > 5.0 and gains[2] > 10.0, gains


def test_shipped_score_model_reconstructs_with_its_card_settings_out_of_the_box():
    """A held-out phantom (seed 7, 128^2, 60 views, 1% noise): DPIR at the card's settings (from TV, with
    the 4-flip ensemble) is far above FBP and above TV, its own start."""
    A, y, ref = _case(128, 7)
    r = reconstruct(A, y, "dpir")
    card = load_model(builtin("score")).card["dpir"]
    assert r.parameters["settings"] == "the model card's" and r.iterations == card["steps"]
    assert (r.parameters["init"], r.parameters["ensemble"]) == (card["init"], card["ensemble"])
    score = {k: float(psnr(v, ref, data_range=1.0)) for k, v in (("dpir", r.x), ("fbp", fbp(A, y)),
                                                                 ("tv", reconstruct(A, y, "tv", lam="rule").x))}
    assert score["dpir"] > score["fbp"] + 8 and score["dpir"] > score["tv"] + 1, score


def test_shipped_rising_completes_tv_out_of_the_box():
    """On a held-out phantom of its geometry (256^2, 60 views, 1% noise; seed 7, not a training image) the shipped
    RISING network lands within 1 dB of converged TV, far above its input of 10 TV iterations."""
    A, y, ref = _case(256, 7)
    r = reconstruct(A, y, "rising")
    assert r.iterations == 10 and r.parameters["model"].endswith("rising_ct256.safetensors")
    tv, early = reconstruct(A, y, "tv", lam="rule"), reconstruct(A, y, "tv", lam="rule", iterations=10)
    score = {k: float(psnr(v, ref, data_range=1.0)) for k, v in (("rising", r.x), ("tv", tv.x), ("early", early.x))}
    assert score["rising"] > score["tv"] - 1.0 and score["rising"] > score["early"] + 2.0, score


def test_shipped_limited_angle_fills_the_wedge_out_of_the_box():
    """A disc phantom it was not trained on (seed 7), 30 deg arc centred on 130 deg, noise as the challenge's: the
    shipped model beats TV with the disc bounds by over 4 dB and 0.05 MCC on its 128^2 grid."""
    from apps.bench_htc import score
    from data.htc2022 import htc_geometry
    from data.training import HTCDiscDataset

    x = 0.035 * HTCDiscDataset(1, size=256, seed=7)[0][None].double()
    angles = np.deg2rad(np.arange(115.0, 145.1, 0.5))
    y = ct_operator(htc_geometry(256), angles, 560)(x)
    y = y + 0.0075 * torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    A, ref = ct_operator(htc_geometry(128), angles, 560), torch.nn.functional.avg_pool2d(x, 2)
    r, tv = reconstruct(A, y, "limited-angle"), reconstruct(A, y, "tv", lam="rule", support="disc")
    assert r.parameters["model"].endswith("limited_angle_htc128.safetensors")
    seg = (ref[0, 0] > 0.0175).numpy()
    assert float(psnr(r.x, ref, data_range=0.035)) > float(psnr(tv.x, ref, data_range=0.035)) + 4.0
    assert score(r.x, seg) > score(tv.x, seg) + 0.05


@pytest.mark.real_data
def test_shipped_limited_angle_beats_tv_on_the_challenge_30_degree_arc():
    """HTC2022 07a (75-105 deg), scored as the challenge: MCC above TV with the disc bounds by 0.05."""
    from apps.bench_htc import _mat, score
    from data.htc2022 import read_htc2022
    from tests.test_htc2022 import HTC

    if not HTC.is_dir():
        pytest.skip(f"real data folder {HTC} is absent")
    data = read_htc2022(HTC / "test" / "htc2022_07a_limited.mat", image_size=128)
    A, y = ct_operator(data.geometry, data.angles, 560), torch.as_tensor(data.sinogram)[None, None]
    seg = _mat(HTC / "test" / "htc2022_07a_recon_fbp_seg.mat")
    tv = reconstruct(A, y, "tv", lam="rule", support="disc").x
    assert score(reconstruct(A, y, "limited-angle").x, seg) > score(tv, seg) + 0.05
