"""`recon mri` end to end on a simulated multi-coil scan and on the real data, and its errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from apps.cli import main
from data.mri import write_kspace
from tests.mri_helpers import coil_head, noisy_kspace


def run(*argv):
    return main(["mri", *map(str, argv)])


def simulated_scan(path, size=64, coils=4, noise=0.01, seed=0):
    """Fully sampled k-space of Shepp-Logan seen by smooth, normalised coils, with complex noise."""
    maps, phantom = coil_head(size, coils)
    write_kspace(path, noisy_kspace(maps * phantom, noise, seed))
    return path


def test_simulated_run_writes_every_output(tmp_path, capsys):
    path, out = simulated_scan(tmp_path / "scan.h5"), tmp_path / "out"
    code = run("--input", path, "--acceleration", 3, "--method", "zero-filled", "--method", "cg-sense",
               "--method", "tv", "--output", out, "--no-progress")
    assert code == 0
    for name in ("zero-filled.png", "cg-sense.png", "tv.png", "comparison.png", "maps.png", "mask.png",
                 "reconstructions.h5", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["zero-filled", "cg-sense", "tv"]
    assert metrics["tv"]["psnr"] > metrics["zero-filled"]["psnr"] + 3
    assert "data_consistency" in metrics["tv"] and "data_consistency" not in metrics["zero-filled"]
    with h5py.File(out / "reconstructions.h5") as f:
        assert f["tv"].shape == (64, 64) and f.attrs["modality"] == "mri"
        assert f["mask"].shape == (64, 64) and 0.3 < f["mask"][()].mean() < 0.37
        assert f["tv"].attrs["iterations_run"] == metrics["tv"]["iterations"] <= f["tv"].attrs["max_iterations"]
        assert f["zero-filled"].attrs["iterations_run"] == 0 and "iterations" not in f["cg-sense"].attrs
    printed = capsys.readouterr().out
    assert "retrospective random mask, R = 3.05" in printed and f"{metrics['tv']['psnr']}" in printed


def test_stack_input_needs_a_slice(tmp_path, capsys):
    one = simulated_scan(tmp_path / "one.h5", size=32, coils=2)
    with h5py.File(one) as f:
        k = f["kspace"][()]
    stack = tmp_path / "stack.h5"
    with h5py.File(stack, "w") as f:
        f.create_dataset("kspace", data=np.stack([0.5 * k, k]))
    assert run("--input", stack, "--output", tmp_path / "none") == 2
    assert "holds a stack of 2 slices; recon mri reconstructs one, chosen with --slice K" in capsys.readouterr().err
    for path, extra, out in ((stack, ("--slice", 1), "o1"), (one, (), "o2")):
        assert run("--input", path, *extra, "--acceleration", 2, "--center-fraction", 0.2, "--method", "zero-filled",
                   "--output", tmp_path / out, "--no-progress") == 0
    with h5py.File(tmp_path / "o1" / "reconstructions.h5") as f1, h5py.File(tmp_path / "o2" / "reconstructions.h5") as f2:
        np.testing.assert_allclose(f1["zero-filled"][()], f2["zero-filled"][()], rtol=1e-6)


@pytest.mark.real_data
def test_brain_npy_as_acquired(real_data, tmp_path):
    out = tmp_path / "out"
    code = run("--input", real_data / "mri_brain8ch_sigpy" / "cartesian_ksp.npy", "--method", "cg-sense",
               "--output", out, "--no-progress")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "psnr" not in metrics["cg-sense"] and metrics["cg-sense"]["data_consistency"] < 0.1


class TestErrors:
    def test_acceleration_on_undersampled_input(self, tmp_path, capsys):
        k = np.ones((2, 8, 8), np.complex64)
        k[:, :, ::2] = 0
        np.save(tmp_path / "k.npy", k)
        assert run("--input", tmp_path / "k.npy", "--acceleration", 4, "--output", tmp_path / "o") == 2
        assert "--acceleration: the input is already undersampled (R = 2.00)" in capsys.readouterr().err

    def test_real_kspace(self, tmp_path, capsys):
        np.save(tmp_path / "k.npy", np.ones((2, 8, 8), np.float32))
        assert run("--input", tmp_path / "k.npy", "--output", tmp_path / "o") == 2
        assert "'kspace': expected complex k-space" in capsys.readouterr().err

    def test_mask_shape_mismatch(self, tmp_path, capsys):
        with h5py.File(tmp_path / "k.h5", "w") as f:
            f["kspace"] = np.ones((2, 8, 8), np.complex64)
            f["mask"] = np.ones((8, 6))
        assert run("--input", tmp_path / "k.h5", "--output", tmp_path / "o") == 2
        assert "dataset 'mask' has shape (8, 6)" in capsys.readouterr().err

    def test_missing_file(self, tmp_path, capsys):
        assert run("--input", tmp_path / "nope.h5", "--output", tmp_path / "o") == 2
        assert "no such file" in capsys.readouterr().err

    def test_bad_acceleration(self, tmp_path, capsys):
        path = simulated_scan(tmp_path / "scan.h5", size=32, coils=2)
        assert run("--input", path, "--acceleration", 0.5, "--output", tmp_path / "o") == 2
        assert "acceleration" in capsys.readouterr().err

    def test_errors_name_the_flags(self, tmp_path, capsys):
        # the library says acceleration: / center_fraction: / slices=None; the command says what was typed
        path = simulated_scan(tmp_path / "scan.h5", size=32, coils=2)
        for argv, message in ((("--acceleration", 100), "recon mri: error: --acceleration: 100 leaves no line"),
                              (("--center-fraction", 0.9), "recon mri: error: --center-fraction: 0.9 asks for 29"),
                              (("--slice", 2), "--slice: the file holds one slice")):
            assert run("--input", path, *map(str, argv), "--output", tmp_path / "o") == 2
            err = capsys.readouterr().err
            assert message in err and "center_fraction" not in err and "slices=None" not in err, err
        assert run("--input", tmp_path, "--output", tmp_path / "o") == 2
        assert f"--input: {tmp_path} is a folder" in capsys.readouterr().err


def test_anisotropic_tv_from_the_command_line(tmp_path, capsys):
    path = simulated_scan(tmp_path / "scan.h5", size=48, coils=2)
    for how, extra in (("iso", ()), ("aniso", ("--anisotropic",))):
        assert run("--input", path, "--acceleration", 3, "--center-fraction", 0.15, "--method", "tv", *extra,
                   "--output", tmp_path / how, "--no-progress") == 0
    with h5py.File(tmp_path / "iso" / "reconstructions.h5") as f, h5py.File(tmp_path / "aniso" / "reconstructions.h5") as g:
        assert not np.allclose(f["tv"][()], g["tv"][()])  # the flag reached the solver
    iso, aniso = (json.loads((tmp_path / how / "metrics.json").read_text())["tv"]["psnr"] for how in ("iso", "aniso"))
    assert aniso > iso - 1.0
    capsys.readouterr()
    assert run("--input", path, "--method", "cg-sense", "--anisotropic", "--output", tmp_path / "no") == 2
    assert "--anisotropic: only --method tv has an anisotropic form" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_maps_with_holes_in_the_object_are_reported(tmp_path, capsys, monkeypatch):
    """Coil maps zero on part of the object (as ESPIRiT gives from too small a calibration region on real
    coils): recon mri says so, naming --center-fraction, and still runs."""
    import apps.mri

    real = apps.mri.espirit_maps

    def with_hole(kspace, **kwargs):
        maps = real(kspace, **kwargs)
        maps[..., : maps.shape[-2] // 2, :] = 0  # the top half of the image
        return maps
    monkeypatch.setattr(apps.mri, "espirit_maps", with_hole)
    path = simulated_scan(tmp_path / "scan.h5")
    assert run("--input", path, "--acceleration", 2, "--method", "zero-filled", "--output", tmp_path / "o",
               "--no-progress") == 0
    err = capsys.readouterr().err
    assert "recon mri: warning: --center-fraction: the ESPIRiT coil maps are zero on" in err
    assert "raise --center-fraction" in err
    monkeypatch.setattr(apps.mri, "espirit_maps", real)
    assert run("--input", path, "--acceleration", 2, "--method", "zero-filled", "--output", tmp_path / "o2",
               "--no-progress") == 0
    assert "warning" not in capsys.readouterr().err
