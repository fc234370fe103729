"""Limited-angle CT with a learned prior (recon.learned.limited_angle, recon train limited-angle): the arc's canonical
frame, the scanner check, the composition TV -> network -> turn back, and the training task."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.cli import main
from data.htc2022 import htc_geometry
from data.training import HTCDiscDataset
from operators import FanBeam2D, ParallelBeam2D
from operators.ct import ct_operator
from recon.learned.limited_angle import arc_of, canonical_operator, check_limited_angle, rotate, scanner_of
from recon.models import TrainedModel, build_network, load_model
from recon.reconstruct import reconstruct
from tests.trainer_helpers import one_thread, train_cli  # noqa: F401  (one_thread: autouse fixture)

#: 10 disc phantoms drawn at 64^2, reconstructed on 32^2 from arcs of 30-90 deg
TINY = {"data": {"count": 10, "size": 64}, "model": {"channels": [4, 8], "norm": "group"},
        "task": {"grid": 32, "workers": 1}, "train": {"val_every": 20, "lr": 3e-3}}


def htc_scan(size: int, degrees, seed: int = 4, mu: float = 0.035):
    """``(A, y, x)``: an HTC2022-like disc scanned by the challenge's scanner at ``degrees``, exact data."""
    x = mu * HTCDiscDataset(1, size=size, seed=seed)[0][None].double()
    A = ct_operator(htc_geometry(size), np.deg2rad(np.asarray(degrees, dtype=float)), 560)
    return A, A(x), x


def model_of(network, grid: int = 32, arcs=(30.0, 90.0)) -> TrainedModel:
    scanner = scanner_of(ct_operator(htc_geometry(grid), [0.0, 0.1], 560))
    card = {"task": "limited-angle", "limited_angle": {"grid": grid, "arc_degrees": list(arcs), "scanner": scanner}}
    return TrainedModel("limited-angle", network, card, None)


@pytest.mark.parametrize("degrees, centre, span", [([75.0, 90.0, 105.0], 90.0, 30.0), ([350.0, 0.0, 10.0], 0.0, 20.0),
                                                   ([-170.0, 170.0, 180.0], 180.0, 20.0)])
def test_arc_of_finds_the_shortest_arc_holding_the_angles(degrees, centre, span):
    c, s = arc_of(np.deg2rad(degrees))
    assert math.isclose(math.degrees(s), span, abs_tol=1e-9)
    assert math.isclose(math.cos(c - math.radians(centre)), 1.0, abs_tol=1e-12)
    with pytest.raises(ValueError, match="angles: an arc needs at least 2 views, got 1"):
        arc_of([0.3])


def test_rotate_by_a_quarter_turn_is_rot90_and_turns_back():
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    assert torch.allclose(rotate(x, math.pi / 2), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-12)
    r, c = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    blob = torch.exp(-((r - 12) ** 2 + (c - 11) ** 2) / 30).double()[None, None]  # smooth: bilinear is near exact
    there = rotate(blob, 0.3)
    assert (there - blob).abs().max() > 0.03  # it moved, and comes back but for two bilinear interpolations
    assert torch.allclose(rotate(there, -0.3)[..., 5:-5, 5:-5], blob[..., 5:-5, 5:-5], atol=0.03)
    with pytest.raises(ValueError, match=r"x: expected \(B, C, H, W\)"):
        rotate(x[0], 0.1)


@pytest.mark.parametrize("centre", [90.0, 40.0, 200.0])
def test_the_canonical_frame_turned_back_is_the_direct_reconstruction(centre):
    """CGLS with the angles theta - c, turned by c, equals CGLS with theta (exact at quarter turns, bilinear
    otherwise); turned the other way it does not."""
    A, y, _ = htc_scan(64, np.arange(centre - 90, centre + 90.5, 1.0))
    direct = reconstruct(A, y, "cgls").x
    canonical = reconstruct(canonical_operator(A, 64), y, "cgls").x
    inner = (..., slice(10, -10), slice(10, -10))
    err = float((rotate(canonical, math.radians(centre)) - direct)[inner].abs().mean() / direct[inner].abs().mean())
    wrong = float((rotate(canonical, -math.radians(centre)) - direct)[inner].abs().mean() / direct[inner].abs().mean())
    assert err < (1e-4 if centre == 90.0 else 0.06) and wrong > 0.4  # 64^2 sharp edges: bilinear costs ~5%


def test_canonical_operator_keeps_the_scanner_and_field_of_view():
    A, _, _ = htc_scan(64, np.arange(50.0, 110.5, 0.5))
    C = canonical_operator(A, 32)
    assert C.image_shape == (32, 32) and math.isclose(C.pixel_size * 32, A.pixel_size * 64)
    assert {k: v for k, v in scanner_of(C).items()} == scanner_of(A)
    c, s = arc_of(C._np_angles)
    assert math.isclose(c, 0.0, abs_tol=1e-12) and math.isclose(math.degrees(s), 60.0)


def test_scanner_arc_and_card_are_checked_naming_both():
    model = model_of(build_network("limited-angle", {"channels": [4], "norm": "group"}))
    A, _, _ = htc_scan(64, np.arange(75.0, 105.5, 0.5))
    assert check_limited_angle(model.card, A, "m") == (32, (30.0, 90.0))
    with pytest.raises(ValueError, match=r"trained for arcs of 30-90 degrees; these data span 120.0 degrees"):
        check_limited_angle(model.card, htc_scan(64, np.arange(0.0, 120.5, 0.5))[0], "m")
    other = FanBeam2D((64, 64), np.deg2rad(np.arange(0, 60.5, 0.5)), 560, 500.0, 143.08, A.pixel_size, 0.2)
    with pytest.raises(ValueError, match=r"model: m was trained for the scanner .*differs in source_origin\)"):
        check_limited_angle(model.card, other, "m")
    parallel = ParallelBeam2D((64, 64), np.deg2rad(np.arange(0, 60.5, 0.5)), 560, A.pixel_size, 0.2)
    with pytest.raises(ValueError, match=r"differs in .*operator"):
        check_limited_angle(model.card, parallel, "m")
    with pytest.raises(ValueError, match="the card of m lacks limited_angle.grid"):
        check_limited_angle({"task": "limited-angle"}, A, "m")
    with pytest.raises(ValueError, match="A: limited-angle needs a square image grid, got 64x48"):
        scanner_of(FanBeam2D((64, 48), [0.0, 0.1], 560, 410.66, 143.08, A.pixel_size, 0.2))


def test_reconstruct_is_tv_with_the_disc_in_the_canonical_frame_then_the_network_turned_back():
    """Untrained, the network is the identity: the result is that TV turned back and resampled onto A's grid."""
    A, y, _ = htc_scan(64, np.arange(50.0, 110.5, 0.5))
    model = model_of(build_network("limited-angle", {"channels": [4, 8], "norm": "group"}))
    r = reconstruct(A, y, "limited-angle", model=model)
    tv = reconstruct(canonical_operator(A, 32), y, "tv", lam="rule", support="disc").x
    expected = torch.nn.functional.interpolate(rotate(tv, math.radians(80.0)), size=(64, 64), mode="bilinear",
                                               align_corners=False)
    assert r.x.shape == (1, 1, 64, 64) and torch.allclose(r.x, expected.clamp_min(0), atol=1e-10)
    assert r.parameters["arc_degrees"] == 60.0 and r.parameters["arc_centre_degrees"] == 80.0
    for bad, match in (({"lam": 1.0}, "lam: limited-angle runs TV"), ({"iterations": 5}, "iterations: limited"),
                       ({"nonneg": False}, "nonneg: limited-angle")):
        with pytest.raises(ValueError, match=match):
            reconstruct(A, y, "limited-angle", model=model, **bad)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_cli(tmp_path_factory.mktemp("limited"), "limited-angle", TINY, steps=60, data="htc-discs")


def test_recon_train_limited_angle_records_the_scanner_and_improves_on_tv(trained):
    card = json.loads((trained / "model.json").read_text())
    assert card["task"] == "limited-angle"
    assert card["limited_angle"]["grid"] == 32 and card["limited_angle"]["arc_degrees"] == [30.0, 90.0]
    assert card["limited_angle"]["scanner"] == scanner_of(ct_operator(htc_geometry(32), [0.0, 0.1], 560))
    assert card["metrics"]["psnr"] > card["metrics"]["psnr_input"] + 0.5
    model = load_model(trained / "model.safetensors", task="limited-angle")
    A, y, _ = htc_scan(64, np.arange(75.0, 105.5, 0.5))
    assert reconstruct(A, y, "limited-angle", model=model).x.shape == (1, 1, 64, 64)


@pytest.mark.parametrize("task, match", [({"grid": 24}, r"\[task\] grid = 24; expected at least 16 and dividing"),
                                         ({"arc_degrees": [30.0, 200.0]}, r"\[task\] arc_degrees"),
                                         ({"mu": [0.0, 0.1]}, r"\[task\] mu"),
                                         ({"hardening": [-0.1, 0.1]}, r"\[task\] hardening = \[-0.1, 0.1\]; "
                                                                      r"expected \[low, high\] with 0 <= low"),
                                         ({"workers": 0}, r"\[task\] workers = 0")])
def test_bad_task_settings_are_named(tmp_path, capsys, task, match):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "data": {"count": 2, "size": 64}, "task": {**TINY["task"], **task}}))
    assert main(["train", "limited-angle", "--data", "htc-discs", "--config", str(config), "--output",
                 str(tmp_path / "run"), "--no-progress"]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_scan_settings_are_seeded_per_image_and_in_range():
    from apps.train import DEFAULTS
    from apps.train_limited import scan_settings

    t = DEFAULTS["limited-angle"]["task"]
    draws = [scan_settings(t, 0, i) for i in range(50)]
    assert draws[3] == scan_settings(t, 0, 3) != scan_settings(t, 1, 3)
    assert all(30.0 <= d["span"] <= 90.0 and (2 * d["span"]).is_integer() for d in draws)
    assert all(0.03 <= d["mu"] <= 0.04 and 0.005 <= d["noise"] <= 0.01 for d in draws)
    assert all(d["hardening"] == 0.0 for d in draws)  # linear by default
    hardened = [scan_settings({**t, "hardening": [0.06, 0.12]}, 0, i) for i in range(50)]
    assert all({**h, "hardening": 0.0} == d for h, d in zip(hardened, draws))  # the other draws unchanged
    assert all(0.06 <= h["hardening"] <= 0.12 for h in hardened) and len({h["hardening"] for h in hardened}) == 50


def test_hardened_scans_measure_less_on_long_chords_and_keep_the_linear_target():
    """``[task] hardening``: the line integral s is measured as s - beta s^2, so TV from it is darker (most in the
    middle, where chords are longest), while the target stays the linear attenuation."""
    from apps.train import DEFAULTS
    from apps.train_limited import _scan_chunk
    from data.training import HTCDiscDataset

    t = {**DEFAULTS["limited-angle"]["task"], "grid": 32}
    images = torch.stack([HTCDiscDataset(1, size=64, seed=3)[0]])
    linear, target = _scan_chunk(images, [0], t, 0)
    hardened, same = _scan_chunk(images, [0], {**t, "hardening": [0.1, 0.1]}, 0)
    assert torch.equal(target, same)
    centre, rim = (slice(12, 20), slice(12, 20)), (slice(14, 18), slice(3, 6))
    ratio = [float(hardened[0, 0][r].mean() / linear[0, 0][r].mean()) for r in (centre, rim)]
    assert ratio[0] < ratio[1] < 1.0 and ratio[0] < 0.95, ratio


HTC = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "htc2022"


@pytest.mark.real_data
@pytest.mark.skipif(not HTC.is_dir(), reason=f"real data folder {HTC} is absent")
def test_bench_htc_and_recon_ct_run_the_model_on_the_challenge_arcs_only(trained, tmp_path, capsys):
    """On the measured files: scored at the three arcs, skipped (and said so) at 60 views over 360 deg."""
    weights = str(trained / "model.safetensors")
    assert main(["bench", "htc", "--htc", str(HTC / "test"), "--size", "64", "--method", "limited-angle",
                 "--limited-angle-weights", weights, "--output", str(tmp_path / "b"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "b" / "htc.json").read_text())["results"]
    for name, arc in (("01a", "arc 0-90 deg"), ("04a", "arc 50-110 deg"), ("07a", "arc 75-105 deg")):
        assert 0 < results[name][arc]["limited-angle"]["mcc"] <= 1
        assert "trained for arcs of 30-90 degrees" in results[name]["60 views"]["limited-angle"]["skipped"]
    assert "not for these data" in (tmp_path / "b" / "htc.md").read_text()
    limited = str(HTC / "test" / "htc2022_07a_limited.mat")
    assert main(["ct", "--input", limited, "--size", "64", "--method", "limited-angle", "--weights", weights,
                 "--output", str(tmp_path / "c"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["limited-angle"]["lam_rule"] == "rule" and (tmp_path / "c" / "limited-angle.png").is_file()
    full = str(HTC / "test" / "htc2022_07a_full.mat")
    assert main(["ct", "--input", full, "--size", "64", "--method", "limited-angle", "--weights", weights,
                 "--output", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "trained for arcs of 30-90 degrees; these data span 359.5 degrees" in capsys.readouterr().err
