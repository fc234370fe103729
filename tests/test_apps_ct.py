"""`recon ct` end to end on small problems, and its errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from apps.cli import main
from apps.ct import simulate
from data.hdf5 import write_ct


def run(*argv):
    return main(["ct", *map(str, argv)])


def test_phantom_run_writes_every_output(tmp_path, capsys):
    out = tmp_path / "out"
    code = run("--phantom", "shepp-logan", "--size", 48, "--views", 30, "--method", "fbp", "--method", "tv",
               "--method", "cgls", "--iterations", 60, "--output", out, "--no-progress")
    assert code == 0
    for name in ("fbp.png", "tv.png", "cgls.png", "comparison.png", "reconstructions.h5", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["fbp", "tv", "cgls"]
    assert metrics["tv"]["psnr"] > metrics["fbp"]["psnr"] and metrics["tv"]["iterations"] <= 60
    assert metrics["tv"]["lam_rule"] == "cross-validation" and metrics["tv"]["cv_multiple"] > 0  # TV's default
    assert set(metrics["fbp"]) >= {"psnr", "ssim", "seconds", "iterations"}
    with h5py.File(out / "reconstructions.h5") as f:
        assert f["tv"].shape == (48, 48) and f.attrs["geometry"] == "parallel"
        assert f["tv"].attrs["lam"] == pytest.approx(metrics["tv"]["lam"])
        for name in ("tv", "cgls"):  # the cap asked for and the iterations run, each under its own name
            assert f[name].attrs["max_iterations"] == 60
            assert f[name].attrs["iterations_run"] == metrics[name]["iterations"]
        assert "iterations" not in f["tv"].attrs
    printed = capsys.readouterr().out
    assert f"{metrics['tv']['psnr']}" in printed and "method" in printed


def test_input_file_with_reference_and_view_subsampling(tmp_path):
    data = simulate("ellipses", 40, 90, "fan", 0.01, seed=3)
    path = tmp_path / "scan.h5"
    write_ct(path, data.sinogram, data.angles, data.geometry, data.reference)
    out = tmp_path / "out"
    assert run("--input", path, "--views", 45, "--method", "fbp", "--output", out, "--no-progress") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fbp"]["psnr"] > 18
    with h5py.File(out / "reconstructions.h5") as f:
        assert len(f.attrs["angles"]) == 45 and f.attrs["geometry"] == "fan"


def test_input_without_reference_has_no_metrics(tmp_path):
    data = simulate("shepp-logan", 32, 20, "parallel", 0.0, seed=0)
    path = tmp_path / "scan.h5"
    write_ct(path, data.sinogram, data.angles, data.geometry)
    assert run("--input", path, "--method", "fbp", "--output", tmp_path / "o", "--no-progress") == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert "psnr" not in metrics["fbp"] and "seconds" in metrics["fbp"]


def test_stack_input_needs_a_slice(tmp_path, capsys):
    """A stack file: --slice K reconstructs slice K (the same image as a one-slice file); without it, an error."""
    a, b = (simulate("ellipses", 32, 20, "parallel", 0.0, seed=s) for s in (1, 2))
    stack, single = tmp_path / "stack.h5", tmp_path / "single.h5"
    write_ct(stack, np.stack([a.sinogram, b.sinogram]), a.angles, a.geometry, np.stack([a.reference, b.reference]))
    write_ct(single, b.sinogram, b.angles, b.geometry, b.reference)
    assert run("--input", stack, "--output", tmp_path / "none") == 2
    assert "holds a stack of 2 slices; recon ct reconstructs one, chosen with --slice K" in capsys.readouterr().err
    for path, extra, out in ((stack, ("--slice", 1), "o1"), (single, (), "o2")):
        assert run("--input", path, *extra, "--method", "fbp", "--output", tmp_path / out, "--no-progress") == 0
    with h5py.File(tmp_path / "o1" / "reconstructions.h5") as f1, h5py.File(tmp_path / "o2" / "reconstructions.h5") as f2:
        np.testing.assert_array_equal(f1["fbp"][()], f2["fbp"][()])


def test_input_errors_name_the_flags(tmp_path, capsys):
    """Messages name the options the user typed, not the library's arguments (slices=None, input)."""
    data = simulate("ellipses", 32, 20, "parallel", 0.0, seed=1)
    single = tmp_path / "single.h5"
    write_ct(single, data.sinogram, data.angles, data.geometry)
    assert run("--input", single, "--slice", 3, "--method", "fbp", "--output", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "--slice: the file holds one 2-D sinogram" in err and err.rstrip().endswith("leave out --slice")
    assert "slices=" not in err
    assert run("--input", tmp_path, "--method", "fbp", "--output", tmp_path / "o") == 2
    assert f"recon ct: error: --input: {tmp_path} is a folder; expected an HDF5 file" in capsys.readouterr().err
    assert run("--input", tmp_path / "none.h5", "--method", "fbp", "--output", tmp_path / "o") == 2
    assert "recon ct: error: --input: no such file" in capsys.readouterr().err


def test_unknown_method_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run("--phantom", "shepp-logan", "--method", "magic", "--output", tmp_path)
    assert exc.value.code == 2 and "--method: invalid choice: 'magic'" in capsys.readouterr().err


def test_malformed_input_file_gives_a_clear_error(tmp_path, capsys):
    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("sinogram", data=np.zeros((4, 8)))
        f.attrs["geometry"] = "parallel"
    assert run("--input", path, "--output", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "missing dataset 'angles'" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--size", 4], "--size"), (["--size", 32, "--views", 0], "--views"), (["--size", 32, "--noise", -0.1], "--noise")])
def test_bad_phantom_arguments(tmp_path, capsys, argv, message):
    """Exit status 2 naming the option: from argparse (--views 0, --noise -0.1) or from the run (--size 4)."""
    try:
        status = run("--phantom", "shepp-logan", *argv, "--output", tmp_path)
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    assert message in capsys.readouterr().err


def test_cuda_requested_without_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert run("--phantom", "shepp-logan", "--size", 32, "--device", "cuda", "--output", tmp_path) == 2
    assert "--device cuda: no CUDA device" in capsys.readouterr().err


def test_adaptive_methods_and_auto_lambda(tmp_path):
    """svtv and graphla-* run from the CLI; --lam auto uses the simulated noise (recorded) per method."""
    out = tmp_path / "out"
    code = run("--phantom", "shepp-logan", "--size", 48, "--views", 30, "--method", "tv", "--method", "svtv",
               "--method", "graphla-fbp", "--method", "graphla-tv", "--estimate", "fbp", "--lam", "auto",
               "--iterations", 60, "--output", out, "--no-progress")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["tv", "svtv", "graphla-fbp", "graphla-tv"]
    with h5py.File(out / "reconstructions.h5") as f:
        assert f["svtv"].attrs["estimate"] == "fbp" and f["graphla-tv"].attrs["estimate"] == "tv"
        assert all(f[m].attrs["lam_rule"] == "discrepancy" for m in metrics)
        assert f["tv"].attrs["noise_std"] == pytest.approx(simulate("shepp-logan", 48, 30, "parallel", 0.01, 0).noise_std)


def test_tikhonov_and_graphla_tik(tmp_path):
    """The Tikhonov pre-estimate from the CLI: alone, as graphLa's graph and as SV-TV's weights."""
    out = tmp_path / "out"
    assert run("--phantom", "ellipses", "--size", 48, "--views", 30, "--method", "fbp", "--method", "tikhonov",
               "--method", "graphla-tik", "--method", "svtv", "--estimate", "tikhonov", "--iterations", 60,
               "--output", out, "--no-progress") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tikhonov"]["psnr"] > metrics["fbp"]["psnr"] and metrics["graphla-tik"]["psnr"] > metrics["fbp"]["psnr"]
    with h5py.File(out / "reconstructions.h5") as f:
        assert f["graphla-tik"].attrs["estimate"] == "tikhonov" and f["svtv"].attrs["estimate"] == "tikhonov"


def test_coule_phantom_is_the_training_generator_s_image(tmp_path):
    """``--phantom coule`` simulates the COULE-like image of ``CouleLikeDataset`` (grey ellipses and bars) with
    ``--seed``; TV beats FBP on it."""
    from data.training import CouleLikeDataset

    data = simulate("coule", 48, 30, "parallel", 0.01, 3)
    assert np.array_equal(data.reference, CouleLikeDataset(1, size=48, seed=3)[0][0].numpy())
    assert not np.array_equal(data.reference, simulate("coule", 48, 30, "parallel", 0.01, 4).reference)
    out = tmp_path / "out"
    assert run("--phantom", "coule", "--size", 48, "--views", 30, "--seed", 3, "--method", "fbp", "--method", "tv",
               "--output", out, "--no-progress") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tv"]["psnr"] > metrics["fbp"]["psnr"] + 3


@pytest.mark.parametrize("argv, match", [
    (["--lam", "often"], "--lam: expected a number, 'rule', 'auto' or 'cv'"),
    (["--lam", "-1"], "--lam: expected a non-negative"),
])
def test_bad_lambda_is_rejected(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit):
        run("--phantom", "shepp-logan", "--size", 32, *argv, "--output", tmp_path)
    assert match.replace("--lam: ", "") in capsys.readouterr().err


def test_estimate_without_svtv_is_rejected(tmp_path, capsys):
    assert run("--phantom", "shepp-logan", "--size", 32, "--method", "tv", "--estimate", "fbp",
               "--output", tmp_path, "--no-progress") == 2
    assert "--estimate: only the svtv method" in capsys.readouterr().err
