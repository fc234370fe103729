"""`recon ct/mri --samples N`: the posterior outputs (mean, std map, samples, calibration), seeded, and
their errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import torch

from apps.cli import main
from recon.diffusion.posterior import Posterior, calibration
from tests.test_apps_mri import simulated_scan
from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)

CT = ("ct", "--phantom", "shepp-logan", "--size", 24, "--views", 12, "--iterations", 4, "--no-progress")


def run(*argv):
    return main([*map(str, argv)])


def test_ct_samples_write_mean_std_samples_and_calibration(tmp_path):
    out = tmp_path / "out"
    assert run(*CT, "--method", "fbp", "--method", "dps", "--samples", 3, "--output", out) == 0
    for name in ("mean.png", "std.png", "uncertainty.png", "dps.png", "fbp.png", "comparison.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert "samples" not in metrics["fbp"]
    m = metrics["dps"]
    assert m["samples"] == 3 and m["seconds_per_sample"] > 0 and m["iterations"] == 4
    with h5py.File(out / "reconstructions.h5") as f:
        samples, std, mean = f["samples"][()], f["std"][()], f["dps"][()]
    assert samples.shape == (3, 24, 24) and std.shape == mean.shape == (24, 24)
    np.testing.assert_allclose(mean, samples.mean(0), rtol=1e-5, atol=1e-6)  # the method's image is the mean
    np.testing.assert_allclose(std, samples.std(0, ddof=1), rtol=1e-4, atol=1e-6)
    from data.phantoms import shepp_logan

    truth = shepp_logan(24)
    draws = torch.from_numpy(samples)[:, None, None]
    expected = calibration(Posterior(draws.mean(0), torch.from_numpy(std)[None, None], draws, "dps", 0.0), truth)
    assert m["calibration"] == {"pearson_std_error": expected["pearson"][0], "coverage_90": expected["coverage"][0]}

    again = tmp_path / "again"
    assert run(*CT, "--method", "dps", "--samples", 3, "--output", again) == 0
    with h5py.File(again / "reconstructions.h5") as f:
        np.testing.assert_array_equal(f["samples"][()], samples)  # seeded: the same samples

    assert run(*CT, "--method", "dps", "--output", out) == 0  # one draw, no --samples: no stale posterior images
    assert not any((out / f"{name}.png").exists() for name in ("mean", "std", "uncertainty", "fbp"))


def test_mri_samples_are_complex_with_a_real_std(tmp_path):
    path, out = simulated_scan(tmp_path / "scan.h5", size=32, coils=2), tmp_path / "out"
    assert run("mri", "--input", path, "--acceleration", 2, "--center-fraction", 0.2, "--method", "score-pc", "--samples", 2,
               "--iterations", 3, "--output", out, "--no-progress") == 0
    with h5py.File(out / "reconstructions.h5") as f:
        assert f["samples"].shape == (2, 32, 32) and np.iscomplexobj(f["samples"][()])
        assert f["std"].shape == (32, 32) and not np.iscomplexobj(f["std"][()])
    m = json.loads((out / "metrics.json").read_text())["score-pc"]
    assert m["samples"] == 2 and set(m["calibration"]) == {"pearson_std_error", "coverage_90"}
    assert (out / "std.png").is_file() and (out / "uncertainty.png").is_file()


def test_samples_errors_name_the_flag(tmp_path, capsys):
    out = tmp_path / "o"
    assert run(*CT, "--method", "dps", "--samples", 1, "--output", out) == 2
    assert "recon ct: error: --samples: expected an integer >= 2 (a standard deviation needs two), got 1" in \
        capsys.readouterr().err
    assert run(*CT, "--method", "fbp", "--method", "tv", "--samples", 4, "--output", out) == 2
    assert ("--samples: draws posterior samples with exactly one of --method dps, diffpir, score-pc; the methods "
            "are fbp, tv") in capsys.readouterr().err
    assert run(*CT, "--method", "dps", "--method", "score-pc", "--samples", 4, "--output", out) == 2
    assert "the methods are dps, score-pc" in capsys.readouterr().err
    assert not out.exists()  # refused before any work
