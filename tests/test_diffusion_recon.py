"""reconstruct() and recon ct with the diffusion solvers: wiring, parameters, errors (the solvers
themselves are checked against closed forms in test_red_diff.py and test_diffpir.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.cli import main
from data.phantoms import shepp_logan
from operators import ParallelBeam2D
from recon.models import TrainedModel, build_network, load_model, save_model
from recon.reconstruct import reconstruct
from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)

ARCH = {"channels": [8, 16], "embedding": 16, "sigma_data": 0.5, "sigma_range": [0.002, 160.0]}


@pytest.fixture(scope="module")
def problem():
    A = ParallelBeam2D((32, 32), np.linspace(0, np.pi, 20, endpoint=False), 48)
    y = A(shepp_logan(32))
    return A, y + 0.01 * float(y.abs().max()) * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TrainedModel("score", build_network("score", ARCH), {"trained_on": "images in [0, 1]"})


@pytest.mark.parametrize("method, lam", [("red-diff", 0.25), ("diffpir", 1.0), ("dpir", 1.0), ("dps", 1.0),
                                         ("score-pc", 1.0)])
def test_diffusion_methods_run_seeded_with_their_reference_defaults(problem, model, method, lam):
    A, y = problem
    r = reconstruct(A, y, method, model=model, iterations=5)
    assert r.x.shape == (1, 1, 32, 32) and r.iterations == 5 and bool(torch.isfinite(r.x).all())
    assert r.parameters["lam"] == lam and r.parameters["data_scale"] == pytest.approx(1 / float(A.norm()) ** 2)
    assert torch.equal(r.x, reconstruct(A, y, method, model=model, iterations=5).x)
    other = lam / 2 if method == "score-pc" else 2 * lam  # score-PC's weight is at most 1
    assert not torch.equal(r.x, reconstruct(A, y, method, model=model, iterations=5, lam=other).x)


def test_dpir_is_diffpir_without_renoising_from_fbp_over_the_low_noise_timesteps(problem, model):
    from priors import L2Fidelity
    from recon.diffusion.diffpir import DiffPIR
    from recon.diffusion.diffusion_recon import DPIR_START, dpir_timesteps
    from recon.fbp import fbp
    from recon.problem import Problem

    A, y = problem
    r = reconstruct(A, y, "dpir", model=model, iterations=6, noise_std=0.02)
    assert dpir_timesteps(6) == [DPIR_START, 160, 120, 80, 40, 0]
    assert r.parameters["sigma_start"] == pytest.approx(0.7236, abs=1e-4)
    norm_sq = float(A.norm()) ** 2
    solver = DiffPIR(model.network, noise_std=0.02 / norm_sq ** 0.5, lam=1.0, renoise=False,
                     timesteps=dpir_timesteps(6))
    torch.testing.assert_close(r.x, solver.run(Problem((1 / norm_sq) * L2Fidelity(A, y)), fbp(A, y)).x)
    with pytest.raises(ValueError, match="iterations: expected a positive integer, got 0"):
        dpir_timesteps(0)


def test_diffusion_methods_default_to_the_shipped_model_and_refuse_other_tasks(problem, tmp_path):
    A, y = problem
    r = reconstruct(A, y, "red-diff", iterations=2)
    assert r.parameters["weights"].endswith("score_ct128.safetensors")
    lpn = TrainedModel("lpn", build_network("lpn", {"hidden": 4, "strides": [1]}), {})
    with pytest.raises(ValueError, match="expected a 'score' model, got a 'lpn' model"):
        reconstruct(A, y, "diffpir", model=lpn)
    with pytest.raises(ValueError, match="lam: 'auto'"):
        reconstruct(A, y, "diffpir", model=TrainedModel("score", build_network("score", ARCH), {}), lam="auto")


def test_an_image_outside_the_trained_range_warns_and_is_reconstructed_scaled(problem, model):
    from recon.diffusion.diffusion_recon import magnitude_p99
    from recon.fbp import fbp

    A, y = problem
    with pytest.warns(UserWarning, match=r"far from the range the model was trained on \(images in \[0, 1\]\); "
                                         r"reconstructing the data divided by"):
        r = reconstruct(A, 100 * y, "dpir", model=model, iterations=3, noise_std=2.0)
    scale = r.parameters["scale"]
    assert scale == pytest.approx(magnitude_p99(fbp(A, 100 * y)))
    inside = reconstruct(A, 100 * y / scale, "dpir", model=model, iterations=3, noise_std=2.0 / scale)
    assert inside.parameters["scale"] == 1.0 and r.parameters["noise_std"] == 2.0  # reported in the data's units
    torch.testing.assert_close(r.x, scale * inside.x, rtol=0, atol=2e-3 * scale)  # float32 CG, 3 steps


def test_recon_ct_runs_both_diffusion_methods_with_one_score_model(tmp_path, capsys, model):
    weights = tmp_path / "score.safetensors"
    save_model(weights, model.network, "score", ARCH, trained_on="images in [0, 1]")
    out = tmp_path / "out"
    argv = ["ct", "--phantom", "shepp-logan", "--size", "32", "--views", "12", "--no-progress", "--iterations", "3",
            "--output", str(out)]
    assert main([*argv, "--method", "red-diff", "--method", "diffpir", "--method", "dpir", "--weights",
                 str(weights)]) == 0
    assert set(json.loads((out / "metrics.json").read_text())) == {"red-diff", "diffpir", "dpir"}
    shipped = [*argv[:-1], str(tmp_path / "shipped")]
    assert main([*shipped, "--method", "diffpir"]) == 0  # the shipped model
    assert json.loads((tmp_path / "shipped" / "metrics.json").read_text())["diffpir"]["iterations"] == 3


def test_reconstruct_mri_runs_the_diffusion_methods_on_complex_images(model):
    from operators import CartesianMRI, random_mask
    from recon.mri import reconstruct_mri

    A = CartesianMRI(random_mask((32, 32), 4, 0.08, seed=0))
    y = A(shepp_logan(32).to(torch.complex64))
    y = y + 0.01 * A(torch.randn(1, 1, 32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(1)))
    for method in ("red-diff", "diffpir", "dpir", "dps"):
        r = reconstruct_mri(A, y, method, model=model, iterations=4)
        assert r.x.shape == (1, 1, 32, 32) and r.x.is_complex() and bool(torch.isfinite(r.x).all())
        assert r.parameters["scale"] > 0 and r.iterations == 4
    with pytest.raises(ValueError, match="model: only red-diff, diffpir, dpir, dps and score-pc use a trained model, "
                                         "not 'tv'"):
        reconstruct_mri(A, y, "tv", model=model)


def test_recon_mri_diffusion_methods_use_the_shipped_model_or_the_weights_given(tmp_path, capsys):
    from data.mri import write_kspace
    from tests.mri_helpers import coil_head, noisy_kspace

    maps, phantom = coil_head(32, 1)
    write_kspace(tmp_path / "scan.h5", noisy_kspace(maps * phantom, 0.01, 0))
    argv = ["mri", "--input", str(tmp_path / "scan.h5"), "--no-progress", "--output", str(tmp_path / "o")]
    assert main([*argv, "--method", "diffpir", "--weights", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "d"), "--method", "dpir", "--iterations", "3"]) == 0
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["dpir"]["iterations"] == 3
    assert main(argv) == 0  # the default methods need no model
    assert set(json.loads((tmp_path / "o" / "metrics.json").read_text())) == {"zero-filled", "cg-sense", "tv"}


def test_the_missing_model_message_names_the_method_asked_for(problem):
    A, y = problem
    with pytest.raises(ValueError, match=r"model: pnp needs a trained denoiser"):
        reconstruct(A, y, "pnp")


def test_a_cards_tuned_settings_replace_the_defaults_and_are_checked(problem, model, tmp_path):
    from priors import L2Fidelity
    from recon.diffusion.red_diff import REDDiff
    from recon.fbp import fbp
    from recon.models import load_model
    from recon.problem import Problem

    A, y = problem
    card = {**model.card, "dpir": {"lam": 0.5, "steps": 4, "start": 100}, "red-diff": {"lam": 0.05, "lr": 0.03}}
    tuned = TrainedModel("score", model.network, card)
    r = reconstruct(A, y, "dpir", model=tuned, noise_std=0.02)
    assert (r.iterations, r.parameters["lam"], r.parameters["settings"]) == (4, 0.5, "the model card's")
    assert r.parameters["sigma_start"] == pytest.approx(0.3423, abs=1e-4)  # timestep 100
    assert reconstruct(A, y, "dpir", model=tuned, noise_std=0.02, lam=2.0, iterations=3).parameters["lam"] == 2.0
    red = reconstruct(A, y, "red-diff", model=tuned, iterations=2)
    assert (red.parameters["lam"], red.parameters["lr"]) == (0.05, 0.03)
    card["red-diff"]["start"] = 200  # two timesteps from 200 down to 0, as dpir's
    solver = REDDiff(model.network, lam=0.05, lr=0.03, timesteps=[200, 0])
    norm_sq = float(A.norm()) ** 2
    torch.testing.assert_close(reconstruct(A, y, "red-diff", model=TrainedModel("score", model.network, card),
                                           iterations=2).x,
                               solver.run(Problem((1 / norm_sq) * L2Fidelity(A, y)), fbp(A, y)).x)
    weights = tmp_path / "bad.safetensors"
    save_model(weights, model.network, "score", ARCH, dpir={"steps": 5000})
    with pytest.raises(ValueError, match=r"bad.json: dpir.steps: expected an integer in \[1, 1000\], got 5000"):
        load_model(weights, task="score")


def test_a_cards_ensemble_denoises_each_image_over_its_flips(problem, tmp_path):
    from recon.models import load_model

    A, y = problem
    torch.manual_seed(0)
    model = TrainedModel("score", build_network("score", ARCH), {"trained_on": "images in [0, 1]"})
    for p in model.network.network.head.parameters():
        torch.nn.init.normal_(p, std=0.1)  # a non-zero output layer (as after training): not flip-equivariant
    card = {**model.card, "dpir": {"steps": 3, "ensemble": 4}}
    r = reconstruct(A, y, "dpir", model=TrainedModel("score", model.network, card), noise_std=0.02)
    assert r.parameters["ensemble"] == 4 and model.network.ensemble == 1  # the loaded model is not changed
    by_hand = TrainedModel("score", model.network.with_ensemble(4), {**model.card, "dpir": {"steps": 3}})
    torch.testing.assert_close(r.x, reconstruct(A, y, "dpir", model=by_hand, noise_std=0.02).x)
    plain = reconstruct(A, y, "dpir", model=TrainedModel("score", model.network, {**card, "dpir": {"steps": 3}}),
                        noise_std=0.02)
    assert plain.parameters["ensemble"] == 1 and (plain.x - r.x).abs().max() > 1e-6
    weights = tmp_path / "bad.safetensors"
    save_model(weights, model.network, "score", ARCH, diffpir={"ensemble": 3})
    with pytest.raises(ValueError, match=r"bad.json: diffpir.ensemble: expected one of \(1, 4, 8\), got 3"):
        load_model(weights, task="score")


def test_a_cards_init_starts_dpir_from_tv(problem, model, tmp_path):
    from operators import CartesianMRI, random_mask
    from priors import L2Fidelity
    from recon.diffusion.diffpir import DiffPIR
    from recon.diffusion.diffusion_recon import dpir_timesteps
    from recon.models import load_model
    from recon.mri import reconstruct_mri
    from recon.problem import Problem

    A, y = problem
    card = {**model.card, "dpir": {"steps": 3, "start": 100, "lam": 0.5, "init": "tv"}}
    r = reconstruct(A, y, "dpir", model=TrainedModel("score", model.network, card), noise_std=0.02)
    assert r.parameters["init"] == "tv"
    norm_sq = float(A.norm()) ** 2
    solver = DiffPIR(model.network, noise_std=0.02 / norm_sq ** 0.5, lam=0.5, renoise=False,
                     timesteps=dpir_timesteps(3, 100))
    tv = reconstruct(A, y, "tv", lam="rule", noise_std=0.02).x
    torch.testing.assert_close(r.x, solver.run(Problem((1 / norm_sq) * L2Fidelity(A, y)), tv).x)
    direct = reconstruct(A, y, "dpir", model=model, noise_std=0.02, iterations=3)
    assert direct.parameters["init"] == "direct"

    mri = CartesianMRI(random_mask((32, 32), 4, 0.08, seed=0))
    k = mri(shepp_logan(32).to(torch.complex64))
    runs = [reconstruct_mri(mri, k, "dpir", model=TrainedModel("score", model.network, {**model.card, "dpir": d}),
                            noise_std=0.01) for d in ({"steps": 3, "init": "tv"}, {"steps": 3})]
    assert [run.parameters["init"] for run in runs] == ["tv", "direct"]
    assert (runs[0].x - runs[1].x).abs().max() > 1e-4
    weights = tmp_path / "bad.safetensors"
    save_model(weights, model.network, "score", ARCH, dpir={"init": "sirt"})
    with pytest.raises(ValueError, match=r"bad.json: dpir.init: expected one of direct, tv, got 'sirt'"):
        load_model(weights, task="score")


def test_dps_is_the_dps_solver_on_the_scaled_data_term(problem, model):
    from priors import L2Fidelity
    from recon.diffusion.dps import DPS
    from recon.fbp import fbp
    from recon.problem import Problem

    A, y = problem
    r = reconstruct(A, y, "dps", model=model, iterations=4, lam=0.5)
    norm_sq = float(A.norm()) ** 2
    by_hand = DPS(model.network, steps=4, zeta=0.5).run(Problem((1 / norm_sq) * L2Fidelity(A, y)), fbp(A, y)).x
    torch.testing.assert_close(r.x, by_hand)
    assert r.parameters["lam"] == 0.5 and r.iterations == 4


def test_score_pc_is_the_score_pc_solver_with_the_operators_projection(problem, model, tmp_path):
    from priors import L2Fidelity
    from recon.diffusion.score_pc import ScorePC
    from recon.problem import Problem

    A, y = problem
    r = reconstruct(A, y, "score-pc", model=model, iterations=4, lam=0.8)
    by_hand = ScorePC(model.network, steps=4, lam=0.8).run(Problem(L2Fidelity(A, y)), torch.zeros_like(A.adjoint(y))).x
    torch.testing.assert_close(r.x, by_hand)
    assert r.parameters["projection"] == "fbp" and r.parameters["snr"] == 0.25 and r.parameters["final_projection"]
    with pytest.raises(ValueError, match="lam: .*1"):
        reconstruct(A, y, "score-pc", model=model, iterations=4, lam=1.5)
    card = {**model.card, "score-pc": {"lam": 0.8, "steps": 4, "snr": 0.1, "final_projection": False}}
    tuned = reconstruct(A, y, "score-pc", model=TrainedModel("score", model.network, card))
    solver = ScorePC(model.network, steps=4, lam=0.8, snr=0.1, final_projection=False)
    torch.testing.assert_close(tuned.x, solver.run(Problem(L2Fidelity(A, y)), torch.zeros_like(r.x)).x)
    weights = tmp_path / "bad.safetensors"
    save_model(weights, model.network, "score", ARCH, **{"score-pc": {"final_projection": "no"}})
    with pytest.raises(ValueError, match=r"bad.json: score-pc.final_projection: expected true or false, got 'no'"):
        load_model(weights, task="score")
