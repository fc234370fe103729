"""`recon bench quality`, `speed` and `tv` on tiny configurations: outputs, checks, resuming, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.bench import format_quality, summarise
from apps.cli import main

HTC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "htc2022"


def bench(*argv):
    return main(["bench", "quality", *map(str, argv)])


def test_quality_writes_table_json_figure_and_resumes(tmp_path, capsys):
    out = tmp_path / "q"
    argv = ("--phantoms", 1, "--size", 40, "--views", 24, "--iterations", 40, "--lam", "rule", "--output", out,
            "--no-progress")
    assert bench(*argv) == 0
    report = json.loads((out / "quality.json").read_text())
    assert set(report["cases"]) == {"shepp-logan", "ellipses-0"}
    assert set(report["summary"]["phantoms"]) == {"fbp", "tikhonov", "tv", "svtv", "graphla-fbp", "graphla-tik",
                                                  "graphla-tv"}
    for name in ("quality.md", "quality.png", "cases/shepp-logan.npz", "cases/ellipses-0.json"):
        assert (out / name).is_file(), name
    psnrs = [report["cases"][c]["tv"]["psnr"] for c in ("shepp-logan", "ellipses-0")]
    assert report["summary"]["phantoms"]["tv"]["psnr_mean"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    # at the rule, SV-TV and graphLa+TV reuse TV as their pre-estimate and include its time
    for c in report["cases"].values():
        assert c["svtv"]["seconds"] >= c["tv"]["seconds"] and c["graphla-tv"]["seconds"] >= c["tv"]["seconds"]
    capsys.readouterr()
    assert bench(*argv) == 0  # everything finished: nothing recomputed
    assert capsys.readouterr().out.count("done earlier, skipped") == 2
    # a method missing from a finished case runs alone; the others (and TV's time) are kept
    case = out / "cases" / "ellipses-0.json"
    done = json.loads(case.read_text())
    del done["metrics"]["graphla-tv"]
    case.write_text(json.dumps(done))
    assert bench(*argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, skipped") == 1 and "ellipses-0: fbp" in printed
    again = json.loads((out / "quality.json").read_text())["cases"]["ellipses-0"]
    assert again["tv"] == report["cases"]["ellipses-0"]["tv"] and again["svtv"] == report["cases"]["ellipses-0"]["svtv"]
    assert again["graphla-tv"]["psnr"] == pytest.approx(report["cases"]["ellipses-0"]["graphla-tv"]["psnr"], abs=1e-3)
    assert set(np.load(out / "cases" / "ellipses-0.npz")) >= {"reference", "tv", "graphla-tv"}


def test_summary_statistics_by_hand():
    cases = {"a": {"dataset": "d", "metrics": {"tv": {"psnr": 30.0, "ssim": 0.8, "seconds": 1.0}}},
             "b": {"dataset": "d", "metrics": {"tv": {"psnr": 32.0, "ssim": 0.9, "seconds": 3.0}}}}
    s = summarise(cases, ["tv"])["d"]["tv"]
    assert (s["psnr_mean"], s["psnr_std"], s["seconds_mean"], s["cases"]) == (31.0, pytest.approx(2 ** 0.5, abs=1e-4), 2.0, 2)
    assert "| d (2) | tv | 31.00 ± 1.41 | 0.850 ± 0.071 | 2.0 |" in format_quality(summarise(cases, ["tv"]))


def test_bad_arguments(tmp_path, capsys):
    assert bench("--htc", tmp_path / "nowhere", "--output", tmp_path) == 2
    assert "--htc: no such folder" in capsys.readouterr().err
    assert bench("--htc", tmp_path, "--phantoms", 0, "--output", tmp_path / "o") == 2
    assert "--htc: no HTC2022 *_full.mat files" in capsys.readouterr().err
    assert bench("--phantoms", -1, "--output", tmp_path) == 2
    assert "--phantoms: expected a non-negative" in capsys.readouterr().err
    assert bench("--phantoms", 0, "--datasets", "phantoms", "--method", "pnp", "--output", tmp_path / "p") == 2
    assert "--pnp-weights: --method pnp needs a trained denoiser" in capsys.readouterr().err
    assert not (tmp_path / "p" / "quality.json").exists()


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.skipif(not HTC.is_dir(), reason=f"real data folder {HTC} is absent")
def test_htc_case_runs_against_the_full_view_reference(tmp_path):
    """One HTC2022 sinogram at 64^2, 30 views: the adaptive methods run on measured data and beat FBP."""
    src = tmp_path / "htc"
    src.mkdir()
    (src / "htc2022_ta_full.mat").symlink_to(HTC / "training" / "htc2022_ta_full.mat")
    out = tmp_path / "q"
    assert bench("--datasets", "htc2022", "--htc", src, "--htc-size", 64, "--views", 30, "--iterations", 100,
                 "--output", out, "--no-progress") == 0
    case = json.loads((out / "quality.json").read_text())["cases"]["htc2022_ta"]
    assert all(case[m]["psnr"] > case["fbp"]["psnr"] for m in ("tv", "svtv", "graphla-fbp", "graphla-tv"))


def test_speed_quick_writes_json_with_every_implementation_and_passed_checks(tmp_path, capsys):
    """``recon bench speed --quick`` on a tiny override: runs, compares, writes JSON (times not asserted)."""
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--quick", "--sizes", "64", "--views", "12", "--batches", "1", "2",
                 "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["all_checks_passed"] is True
    assert [(c["size"], c["views"], c["batch"]) for c in report["cases"]] == [(64, 12, 1), (64, 12, 2)]
    for case in report["cases"]:
        assert set(case["seconds"]) == {"recon", "astra", "odl", "skimage"}
        assert set(case["checks"]) == {"astra", "odl", "skimage"}
        assert all(check["passed"] for check in case["checks"].values())
        assert case["checks"]["astra"]["fp_rel"] < 1e-4 and case["checks"]["odl"]["bp_rel"] < 1e-4
        assert case["seconds"]["recon"]["backend"] == "sparse"  # the warm-up reaches the auto rule's threshold
        assert all(r["fp"] > 0 and r["bp"] > 0 and "peak_rss_mib" in r for r in case["seconds"].values())
    assert "| 64 | 12 | 2 | sparse |" in capsys.readouterr().out


def test_speed_bad_arguments(capsys):
    assert main(["bench", "speed", "--sizes", "0"]) == 2
    assert "--sizes: expected positive integers" in capsys.readouterr().err



def test_without_odl_the_benches_name_the_extra(monkeypatch, capsys):
    """ODL is an optional extra (recon[bench]): asked for, it is named; by default bench speed leaves it out."""
    import argparse

    import apps.bench_speed
    import apps.bench_tv

    for module in (apps.bench_speed, apps.bench_tv):
        monkeypatch.setattr(module, "odl_installed", lambda: False)
    assert main(["bench", "tv", "--quick"]) == 2
    assert "--impl odl-tuned: ODL is not installed; pip install 'recon[bench]'" in capsys.readouterr().err
    assert main(["bench", "speed", "--impl", "odl"]) == 2
    assert "--impl odl: ODL is not installed; pip install 'recon[bench]'" in capsys.readouterr().err
    args = argparse.Namespace(quick=True, device="cpu", impl=None, sizes=None, views=None, batches=None, repeats=1)
    assert apps.bench_speed._settings(args)["impls"] == ["recon", "astra", "skimage"]
    assert "odl: not installed, left out (pip install 'recon[bench]'" in capsys.readouterr().out


def test_speed_cuda_options(capsys):
    assert main(["bench", "speed", "--device", "cuda", "--impl", "skimage"]) == 2
    assert "--impl skimage: scikit-image runs on CPU only" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "speed", "--device", "cuda", "--quick"]) == 2
        assert "--device cuda: no CUDA device is available" in capsys.readouterr().err


def test_tv_time_to_quality_small(tmp_path, capsys):
    """``recon bench tv`` on a tiny problem: ODL's objective agrees with ours, recon reaches both
    targets and its objective is at or below each (times are not asserted)."""
    out = tmp_path / "tv.json"
    assert main(["bench", "tv", "--size", "48", "--views", "20", "--odl-iterations", "40", "--repeats", "1",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert set(results) == {"odl-guide", "odl-tuned", "recon"}
    for setup in ("odl-guide", "odl-tuned"):
        odl_row, ours = results[setup], results["recon"][setup]
        assert odl_row["objective_agrees"] and odl_row["iterations"] == 40
        assert ours["reached_target"] and ours["objective"] <= odl_row["objective"]
        assert ours["seconds"] > 0 and odl_row["seconds"] > 0
    assert "| odl-tuned | 40 |" in capsys.readouterr().out


def test_tv_recon_alone_runs_the_odl_iteration_count(tmp_path):
    out = tmp_path / "tv.json"
    assert main(["bench", "tv", "--size", "32", "--views", "12", "--odl-iterations", "25", "--repeats", "1",
                 "--impl", "recon", "--json", str(out)]) == 0
    ours = json.loads(out.read_text())["results"]["recon"]["none"]
    assert ours["iterations"] == 25 and ours["reached_target"]


def test_tv_bad_arguments(capsys):
    assert main(["bench", "tv", "--size", "0"]) == 2
    assert "--size: expected a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_speed_and_tv_on_cuda(tmp_path):
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--device", "cuda", "--sizes", "64", "--views", "12", "--batches", "1", "4",
                 "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["all_checks_passed"] and set(report["cases"][0]["seconds"]) == {"recon", "astra", "odl"}
    assert main(["bench", "tv", "--device", "cuda", "--size", "64", "--views", "20", "--odl-iterations", "30",
                 "--repeats", "1", "--impl", "recon", "--json", str(tmp_path / "tv.json")]) == 0


def test_quality_runs_the_diffusion_methods_with_a_score_model(tmp_path, capsys):
    from recon.models import build_network, save_model

    arch = {"channels": [8, 16], "embedding": 16, "sigma_data": 0.5, "sigma_range": [0.002, 160.0]}
    torch.manual_seed(0)
    weights = tmp_path / "score.safetensors"
    save_model(weights, build_network("score", arch), "score", arch, trained_on="images in [0, 1]")
    argv = ("--phantoms", 0, "--datasets", "phantoms", "--size", 32, "--views", 12, "--iterations", 3,
            "--method", "red-diff", "--method", "diffpir", "--no-progress")
    assert bench(*argv, "--score-weights", tmp_path / "none.safetensors", "--output", tmp_path / "none") == 2
    assert "none.safetensors" in capsys.readouterr().err
    assert bench(*argv, "--score-weights", weights, "--output", tmp_path / "q") == 0
    metrics = json.loads((tmp_path / "q" / "quality.json").read_text())["cases"]["shepp-logan"]
    assert set(metrics) >= {"red-diff", "diffpir"} and all(m["seconds"] > 0 for m in metrics.values())


def test_bench_htc_names_a_missing_folder_or_files(tmp_path, capsys):
    assert main(["bench", "htc", "--htc", str(tmp_path / "none")]) == 2
    assert "--htc: no such folder" in capsys.readouterr().err
    assert main(["bench", "htc", "--htc", str(tmp_path)]) == 2
    assert "--htc: no HTC2022 *_limited.mat files under" in capsys.readouterr().err
    (tmp_path / "htc2022_01a_limited.mat").write_bytes(b"")
    assert main(["bench", "htc", "--htc", str(tmp_path), "--output", str(tmp_path / "htc2022_01a_limited.mat")]) == 2
    assert "--output: expected a folder, found a file" in capsys.readouterr().err
    assert main(["bench", "htc", "--htc", str(tmp_path)]) == 2
    assert "lacks htc2022_01a_full.mat, htc2022_01a_recon_fbp.mat, htc2022_01a_recon_fbp_seg.mat" in capsys.readouterr().err


def test_quality_with_weights_by_cross_validation(tmp_path):
    from apps.ct import simulate
    from operators.ct import ct_operator
    from recon.reconstruct import reconstruct

    out = tmp_path / "cv"
    assert bench("--phantoms", 0, "--size", 32, "--views", 24, "--iterations", 40, "--method", "tv", "--lam", "cv",
                 "--output", out, "--no-progress") == 0
    report = json.loads((out / "quality.json").read_text())
    data = simulate("shepp-logan", 32, 24, "parallel", 0.01, 0)
    A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
    expected = reconstruct(A, torch.as_tensor(data.sinogram)[None, None], "tv", lam="cv", iterations=40)
    assert report["settings"]["lam"] == "cv"
    assert report["cases"]["shepp-logan"]["tv"]["lam"] == pytest.approx(expected.parameters["lam"])
