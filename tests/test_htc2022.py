"""The HTC2022 reader: geometry in millimetres, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data.htc2022 import read_htc2022

HTC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "htc2022"



@pytest.mark.parametrize("size", [512, 128])
@pytest.mark.real_data
def test_geometry_and_fbp_match_the_organisers(size):
    if not HTC.is_dir():
        pytest.skip(f"real data folder {HTC} is absent")
    from scipy import io as scipy_io

    from operators.ct import ct_operator
    from recon.fbp import fbp

    data = read_htc2022(HTC / "training" / "htc2022_ta_full.mat", image_size=size)
    g = data.geometry
    assert data.sinogram.shape == (721, 560) and data.angles[-1] == pytest.approx(2 * np.pi)
    assert g["pixel_size"] * size == pytest.approx(512 * 0.14832232, rel=1e-6)  # the organisers' 75.9 mm FOV
    assert g["source_origin"] == pytest.approx(410.66) and g["origin_detector"] == pytest.approx(143.08)
    A = ct_operator(g, data.angles, data.sinogram.shape[1])
    ours = fbp(A, torch.as_tensor(data.sinogram)[None, None])[0, 0].double().numpy()
    ref = scipy_io.loadmat(HTC / "training" / "htc2022_ta_full_recon_fbp.mat")["reconFullFbp"] / 0.14832232
    if size != 512:  # block-average the organisers' image onto our grid
        f = 512 // size
        ref = ref.reshape(size, f, size, f).mean(axis=(1, 3))
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.98
    assert float((ours * ref).sum() / (ref * ref).sum()) == pytest.approx(1.0, abs=0.05)


@pytest.mark.real_data
@pytest.mark.parametrize("name, start, end", [("01a", 0, 90), ("04a", 50, 110), ("07a", 75, 105)])
def test_limited_files_and_their_fbp(name, start, end):
    """The challenge's limited files cover different arcs; FBP on each keeps the material's attenuation
    (mean over the organisers' segmentation, eroded) within 10% of FBP on all 721 views (measured
    1.010, 1.058, 0.945 at 128^2: the missing wedge moves values, the weights no longer halve them)."""
    if not HTC.is_dir():
        pytest.skip(f"real data folder {HTC} is absent")
    from scipy import io as scipy_io
    from scipy.ndimage import binary_erosion

    from operators.ct import ct_operator
    from recon.fbp import fbp

    images = {}
    for kind in ("full", "limited"):
        data = read_htc2022(HTC / "test" / f"htc2022_{name}_{kind}.mat", image_size=128)
        if kind == "limited":
            degrees = np.rad2deg(data.angles)
            assert (degrees.min(), degrees.max()) == (pytest.approx(start), pytest.approx(end))
            assert np.allclose(np.diff(degrees), 0.5)
        A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
        images[kind] = fbp(A, torch.as_tensor(data.sinogram)[None, None])[0, 0].double().numpy()
    seg = scipy_io.loadmat(HTC / "test" / f"htc2022_{name}_recon_fbp_seg.mat")["reconFullFbpSeg"].astype(float)
    inner = binary_erosion(seg.reshape(128, 4, 128, 4).mean(axis=(1, 3)) > 0.99, iterations=3)
    ratio = images["limited"][inner].mean() / images["full"][inner].mean()
    assert ratio == pytest.approx(1.0, abs=0.1)


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: no such file"):
        read_htc2022(tmp_path / "missing.mat")
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match="not a readable MATLAB file"):
        read_htc2022(junk)
    from scipy import io as scipy_io

    other = tmp_path / "other.mat"
    scipy_io.savemat(other, {"x": np.zeros(3)})
    with pytest.raises(ValueError, match="expected a struct 'CtDataFull' or 'CtDataLimited'"):
        read_htc2022(other)
    with pytest.raises(ValueError, match="image_size: expected an integer of at least 16"):
        read_htc2022(other, image_size=8)


@pytest.mark.slow
@pytest.mark.real_data
def test_bench_htc_scores_as_the_challenge(tmp_path, capsys):
    """recon bench htc: MCC of Otsu segmentations against the organisers'; our FBP of all 721 views is
    oriented like theirs (it scores near 1 as it is, and clearly lower flipped or transposed)."""
    if not HTC.is_dir():
        pytest.skip(f"real data folder {HTC} is absent")
    import json

    from apps.bench_htc import _mat, score
    from apps.cli import main
    from operators.ct import ct_operator
    from recon.fbp import fbp

    seg = _mat(HTC / "test" / "htc2022_04a_recon_fbp_seg.mat")
    data = read_htc2022(HTC / "test" / "htc2022_04a_full.mat", image_size=128)
    x = fbp(ct_operator(data.geometry, data.angles, data.sinogram.shape[1]), torch.as_tensor(data.sinogram)[None, None])
    as_is = score(x, seg)
    assert as_is > 0.95
    for moved in (x.flip(-1), x.flip(-2), x.transpose(-1, -2)):
        assert score(moved, seg) < as_is - 0.2
    assert main(["bench", "htc", "--htc", str(HTC / "test"), "--size", "64", "--method", "fbp",
                 "--method", "tv+disc+rule", "--output", str(tmp_path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "htc.json").read_text())["results"]
    assert set(results) == {"01a", "04a", "07a"}
    for name, arc in (("01a", "arc 0-90 deg"), ("04a", "arc 50-110 deg"), ("07a", "arc 75-105 deg")):
        assert results[name]["60 views"]["fbp"]["mcc"] > 0.9 > results[name][arc]["fbp"]["mcc"]
        assert results[name][arc]["tv+disc+rule"]["mcc"] > results[name][arc]["fbp"]["mcc"] + 0.1
    assert (tmp_path / "htc.png").stat().st_size > 0 and "| 07a | arc 75-105 deg |" in (tmp_path / "htc.md").read_text()


@pytest.mark.real_data
def test_recon_ct_reads_the_challenge_files(tmp_path, capsys):
    """recon ct --input on a .mat file: its fan-beam geometry and arc, on the --size grid."""
    if not HTC.is_dir():
        pytest.skip(f"real data folder {HTC} is absent")
    import h5py

    from apps.cli import main

    path = HTC / "test" / "htc2022_07a_limited.mat"
    assert main(["ct", "--input", str(path), "--size", "64", "--method", "fbp", "--method", "tv", "--iterations", "20",
                 "--output", str(tmp_path / "o"), "--no-progress"]) == 0
    with h5py.File(tmp_path / "o" / "reconstructions.h5") as f:
        assert f["tv"].shape == (64, 64) and f.attrs["geometry"] == "fan" and len(f.attrs["angles"]) == 61
        assert np.rad2deg(f.attrs["angles"][[0, -1]]) == pytest.approx([75.0, 105.0])
    assert main(["ct", "--input", str(path), "--size", "64", "--method", "fbp", "--method", "tv", "--iterations", "20",
                 "--support", "disc", "--output", str(tmp_path / "d"), "--no-progress"]) == 0
    with h5py.File(tmp_path / "d" / "reconstructions.h5") as f:
        assert f["tv"].attrs["support"] == "disc" and "support" not in f["fbp"].attrs
    assert main(["ct", "--input", str(path), "--method", "fbp", "--support", "disc", "--output", str(tmp_path / "e")]) == 2
    assert "--support: bounds the variational methods" in capsys.readouterr().err
    assert main(["ct", "--input", str(path), "--slice", "1", "--output", str(tmp_path / "p")]) == 2
    assert "--slice: " in capsys.readouterr().err
    assert main(["ct", "--input", str(tmp_path / "none.mat"), "--output", str(tmp_path / "q")]) == 2
    assert "recon ct: error: --input: no such file" in capsys.readouterr().err


@pytest.mark.real_data
def test_htc_geometry_is_the_files_geometry():
    """htc_geometry (no file: for simulating the challenge's scanner) equals what read_htc2022 reads, at any grid."""
    if not HTC.is_dir():
        pytest.skip(f"real data folder {HTC} is absent")
    from data.htc2022 import htc_geometry

    for name, size in (("test/htc2022_04a_limited.mat", 256), ("training/htc2022_ta_full.mat", 64)):
        assert htc_geometry(size) == read_htc2022(HTC / name, image_size=size).geometry
    with pytest.raises(ValueError, match="image_size: expected an integer of at least 16 pixels, got 8"):
        htc_geometry(8)
