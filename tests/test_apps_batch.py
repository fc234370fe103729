"""`recon batch`: discovery, config, resumable runs on Dask (local and external), failures, naming,
k-space (MRI) studies."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from apps import batch_worker
from apps.batch_config import config_hash, load_config, resolve_config
from apps.batch_studies import Study, assign_names, discover, safe_name
from apps.cli import main
from apps.ct import simulate
from data.dicom import hu_to_mu, list_series, mu_to_hu, read_series
from data.dicom_write import write_series
from data.hdf5 import write_ct
from data.phantoms import random_ellipses, shepp_logan
from operators.fourier import fft2c

REPO = Path(__file__).resolve().parents[1]
SIZE, SLICES, VIEWS = 32, 3, 24
CONFIG = f"""
[operator]
views = {VIEWS}
noise = 0.01
[methods.fbp]
[methods.tv]
iterations = 20
[mri]
acceleration = 2
center_fraction = 0.2
"""
SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def phantom_series(folder: Path, seed: int, slices: int = SLICES, size: int = SIZE, **tags) -> Path:
    """A derived-CT DICOM series of random ellipses (mu up to ~0.02 1/mm) in HU, 1 mm pixels."""
    mu = 0.02 * np.stack([random_ellipses(size, seed=100 * seed + k)[0, 0].numpy() for k in range(slices)])
    tags = {"PatientID": f"PAT{seed}", "PatientName": "Doe^Jane", "StudyInstanceUID": generate_uid(), **tags}
    description = tags.pop("SeriesDescription", "CT")
    write_series(mu_to_hu(mu), folder, tags, spacing=(2.0, 1.0, 1.0), description=description)
    return folder


def raw_file(path: Path, seeds=(1, 2, 3)) -> Path:
    """A raw-data stack (slices, views, detectors) with its reference, as recon ct simulates it."""
    data = [simulate("ellipses", SIZE, VIEWS, "parallel", 0.01, seed=s) for s in seeds]
    write_ct(path, np.stack([d.sinogram for d in data]), data[0].angles, data[0].geometry,
             np.stack([d.reference for d in data]))
    return path


def kspace_stack(path: Path, slices: int = 2, coils: int = 4, size: int = SIZE, noise: float = 0.01,
                 extra: dict | None = None) -> Path:
    """Fully sampled multi-coil k-space (slices, coils, H, W) of shifted, scaled Shepp-Logan slices seen by
    smooth normalised coils, with complex noise (as tests/test_apps_mri.py's simulated_scan)."""
    yy, xx = np.mgrid[:size, :size] / size
    centres = [(0, 0), (0, 1), (1, 0), (1, 1)][:coils]
    maps = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5) * np.exp(2j * (yy + c * xx))
                     for c, (cy, cx) in enumerate(centres)])
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0))
    phantom = shepp_logan(size)[0, 0].numpy()
    phantom = phantom + 0.1 * (phantom > 0)  # no exactly-zero regions inside the head (ESPIRiT crops those)
    images = np.stack([maps * np.roll(phantom, 2 * s, axis=0) * (1 - 0.2 * s) for s in range(slices)])
    k = fft2c(torch.as_tensor(images)).numpy()
    rng = np.random.default_rng(0)
    k = k + noise * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)) / np.sqrt(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k.astype(np.complex64))
        for name, value in (extra or {}).items():
            f.create_dataset(name, data=value)
    return path


def broken_file(path: Path) -> Path:
    with h5py.File(path, "w") as f:  # no angles, no geometry
        f.create_dataset("sinogram", data=np.zeros((4, 8), dtype=np.float32))
    return path


def batch(*argv) -> int:
    return main(["batch", *map(str, argv)])


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def states(out: Path) -> dict:
    return {k: e["state"] for k, e in manifest(out)["studies"].items()}


def done_mtimes(out: Path) -> dict:
    return {p.parent.name: (p.stat().st_mtime_ns, (p.parent / "reconstructions.h5").stat().st_mtime_ns)
            for p in (out / "studies").glob("*/study.json")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """4 DICOM series (two in one folder), one raw HDF5 stack, one broken HDF5, one k-space stack."""
    root = tmp_path_factory.mktemp("batch_in")
    for seed in range(2):
        phantom_series(root / f"patient{seed}", seed)
    phantom_series(root / "shared" / "a", 2)
    phantom_series(root / "shared" / "b", 3)
    raw_file(root / "raw" / "scan.h5")
    broken_file(root / "raw" / "broken.hdf5")
    kspace_stack(root / "raw" / "knee.h5")
    (root / "config.toml").write_text(CONFIG)
    return root


def check_outputs(out: Path, key: str, dicom: bool, slices: int = SLICES, size: int = SIZE,
                  iterations: int = 20) -> dict:
    """Every output of a done study is there and readable; returns its metrics."""
    folder = out / "studies" / key
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["study"] == key and metrics["slices"] == slices and list(metrics["methods"]) == ["fbp", "tv"]
    with h5py.File(folder / "reconstructions.h5") as f:
        assert f["tv"].shape == (slices, size, size) and f["reference"].shape == (slices, size, size)
        assert json.loads(f.attrs["provenance"])["parameters"]["study"] == key
        assert f["tv"].attrs["iterations"] <= iterations and np.isfinite(f["tv"][()]).all()
    assert (folder / "preview.png").stat().st_size > 0
    assert json.loads((folder / "provenance.json").read_text())["method"] == "recon batch"
    assert (folder / "dicom").is_dir() == dicom
    if dicom:
        vol = read_series(folder / "dicom" / "tv")
        with h5py.File(folder / "reconstructions.h5") as f:
            np.testing.assert_allclose(hu_to_mu(vol.hu), f["tv"][()], atol=1e-4)
    return metrics


def check_kspace_outputs(out: Path, key: str, slices: int = 2, size: int = SIZE) -> dict:
    """Every output of a done k-space study; returns its metrics (cg-sense beats zero-filled)."""
    folder = out / "studies" / key
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["mode"] == "measured" and metrics["slices"] == slices
    assert list(metrics["methods"]) == ["zero-filled", "cg-sense"]
    with h5py.File(folder / "reconstructions.h5") as f:
        for method in ("zero-filled", "cg-sense", "reference"):
            assert f[method].shape == (slices, size, size) and np.isfinite(f[method][()]).all()
        assert f["mask"].shape == (size, size) and f.attrs["modality"] == "mri" and f.attrs["coils"] == 4
        assert "retrospective random mask, R = 2.00" == f.attrs["sampling"]
        assert json.loads(f.attrs["provenance"])["parameters"]["study"] == key
    assert (folder / "preview.png").stat().st_size > 0 and not (folder / "dicom").exists()
    assert json.loads((folder / "study.json").read_text())["kind"] == "kspace"
    m = metrics["methods"]
    assert len(m["cg-sense"]["psnr_slices"]) == slices and m["cg-sense"]["psnr"] > m["zero-filled"]["psnr"] + 1
    return metrics


def test_batch_runs_resumes_and_redoes_on_config_change(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    config = dataset / "config.toml"
    assert batch(dataset, "--output", out, "--config", config, "--workers", 2, "--no-progress") == 1
    printed = capsys.readouterr()
    found = states(out)
    assert sorted(found.values()) == ["done"] * 6 + ["failed"]
    m = manifest(out)
    assert m["config_hash"] == config_hash(load_config(config))
    broken = next(e for e in m["studies"].values() if e["state"] == "failed")
    assert "missing dataset 'angles'" in broken["error"] and broken["error"] in printed.out
    kspace = [k for k, e in m["studies"].items() if e["kind"] == "kspace"]
    assert len(kspace) == 1 and m["studies"][kspace[0]]["state"] == "done"
    check_kspace_outputs(out, kspace[0])
    for key, e in m["studies"].items():
        if e["state"] == "done" and e["kind"] != "kspace":
            metrics = check_outputs(out, key, dicom=e["kind"] == "dicom")
            assert metrics["methods"]["tv"]["psnr"] > metrics["methods"]["fbp"]["psnr"] > 20
            assert e["metrics"]["tv"]["psnr"] == metrics["methods"]["tv"]["psnr"] and e["name"] == key
    assert re.search(r"study\s+state\s+slices\s+seconds\s+PSNR fbp\s+PSNR tv", printed.out)
    assert not list((out / ".partial").iterdir())

    before, entries = done_mtimes(out), {k: e for k, e in m["studies"].items() if e["state"] == "done"}
    assert batch(dataset, "--output", out, "--config", config, "--no-progress") == 1  # the broken one fails again
    assert "6 done earlier, 1 to run" in capsys.readouterr().out
    assert done_mtimes(out) == before
    assert {k: e for k, e in manifest(out)["studies"].items() if e["state"] == "done"} == entries

    touched = next((dataset / "patient0").glob("*.dcm"))  # a changed input is redone, alone
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert batch(dataset, "--output", out, "--config", config, "--no-progress") == 1
    assert "5 done earlier, 2 to run" in capsys.readouterr().out
    redone = {k for k in before if done_mtimes(out)[k] != before[k]}
    assert redone == {list_series(touched.parent)[0].key}
    before = done_mtimes(out)

    changed = tmp_path / "changed.toml"
    changed.write_text(CONFIG.replace("iterations = 20", "iterations = 10"))
    assert batch(dataset, "--output", out, "--config", changed, "--workers", 2, "--no-progress") == 1
    assert "1 done earlier, 6 to run" in capsys.readouterr().out  # the k-space study uses no CT key
    after = done_mtimes(out)
    assert after.keys() == before.keys() and all((after[k] == before[k]) == (k in kspace) for k in before)
    m2 = manifest(out)
    assert m2["config_hash"] != m["config_hash"]
    for key in set(before) - set(kspace):
        assert json.loads((out / "studies" / key / "metrics.json").read_text())["methods"]["tv"]["iterations"] <= 10


def test_reconstruct_study_batches_slices(monkeypatch, tmp_path):
    """One reconstruct() call per method with y (slices, 1, views, det); chunk_slices splits it."""
    folder = phantom_series(tmp_path / "s", 0, slices=4)
    info = list_series(folder)[0]
    study = Study(info.key, "dicom", tuple(map(str, info.files)), "h", info.series_uid)
    calls = []
    real = batch_worker.reconstruct

    def spy(A, y, method, **kw):
        calls.append((method, tuple(y.shape)))
        return real(A, y, method, **kw)

    monkeypatch.setattr(batch_worker, "reconstruct", spy)
    config = resolve_config({"operator": {"views": VIEWS}, "methods": {"fbp": {}, "tv": {"iterations": 5}}})
    data = batch_worker.load_study(study, config)
    whole = batch_worker.reconstruct_study(data, config)
    assert [(m, s[:3]) for m, s in calls] == [("fbp", (4, 1, VIEWS)), ("tv", (4, 1, VIEWS))]
    calls.clear()
    chunked = batch_worker.reconstruct_study(data, {**config, "chunk_slices": 3})
    assert [s[0] for _, s in calls] == [3, 1, 3, 1]
    np.testing.assert_allclose(chunked["fbp"][0], whole["fbp"][0], atol=1e-6)
    assert whole["tv"][0].shape == (4, SIZE, SIZE)


def test_fan_beam_simulation(tmp_path):
    """geometry = "fan": recon ct's defaults (source at 2x, detector at 1x the field of view), 360 deg."""
    folder = phantom_series(tmp_path / "s", 2, slices=2)
    info = list_series(folder)[0]
    study = Study(info.key, "dicom", tuple(map(str, info.files)), "h", info.series_uid)
    config = resolve_config({"operator": {"geometry": "fan", "views": 40}, "methods": ["fbp"]})
    data = batch_worker.load_study(study, config)
    assert data.geometry["source_origin"] == 2 * SIZE and data.geometry["origin_detector"] == SIZE
    assert data.angles[-1] > np.pi and data.sinogram.shape[:2] == (2, 40)
    metrics = batch_worker.study_metrics(batch_worker.reconstruct_study(data, config), data.reference)
    assert metrics["fbp"]["psnr"] > 20 and len(metrics["fbp"]["psnr_slices"]) == 2


def test_run_study_isolates_a_corrupt_series(tmp_path):
    """Readable headers, garbage pixel data: a failed record, no exception, nothing published."""
    folder = phantom_series(tmp_path / "s", 1)
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PixelData = b"\x07" * 10
        ds.save_as(f)
    info = list_series(folder)[0]
    study = Study(info.key, "dicom", tuple(map(str, info.files)), "h", info.series_uid, name=info.key)
    out = tmp_path / "out"
    record = batch_worker.run_study(study, resolve_config({}), "c", str(out))
    assert record["state"] == "failed" and "no slice has readable pixel data" in record["error"]
    assert not (out / "studies").exists() and not list((out / ".partial").iterdir())


@pytest.mark.parametrize("text, message", [
    ("nmae = 'patient'", "unknown key 'nmae'; allowed keys: naming, device"),
    ("[operator]\nangles = 10", "[operator]: unknown key 'angles'; allowed keys: geometry, views, noise"),
    ("[methods.tv]\nlambda = 0.1", "[methods.tv]: unknown key 'lambda'; allowed keys: lam, iterations"),
    ("[methods.fbp]\niterations = 3", "[methods.fbp]: unknown key 'iterations'; allowed keys: filter"),
    ("[methods.magic]", "unknown method 'magic'; allowed: fbp, sirt"),
    ("[operator]\nviews = 0", "views: expected a positive integer, got 0"),
    ("[operator]\nviews = true", "views: expected a positive integer, got True"),
    ("[operator]\nsource_origin = 100.0", "source_origin: only used with geometry = 'fan'"),
    ("naming = 'names'", "naming: expected 'key' or 'patient'"),
    ("methods = []", "methods: expected a non-empty list"),
    ("[methods.tv]\nlam = 'often'", "lam: expected a non-negative number or 'auto'"),
    ("views = [", "not valid TOML"),
    ("[mri]\naccel = 2", "[mri]: unknown key 'accel'; allowed keys: acceleration, center_fraction, mask_type"),
    ("[mri]\nmask_type = 'spiral'", "[mri]: mask_type: expected one of random, equispaced, poisson"),
    ("[mri]\nacceleration = 1", "[mri]: acceleration: expected a number > 1"),
    ("[mri_methods.cg-sense]\nlam = 0.1", "[mri_methods.cg-sense]: unknown key 'lam'; allowed keys: iterations"),
    ("[mri_methods.zero-filled]\niterations = 3",
     "[mri_methods.zero-filled]: unknown key 'iterations'; allowed keys: none"),
    ("mri_methods = ['fbp']", "mri_methods: unknown method 'fbp'; allowed: zero-filled, cg-sense, tv"),
    ("[mri_methods.tv]\nlam = 'auto'", "[mri_methods.tv]: lam: expected a non-negative number"),
])
def test_bad_config_is_a_clear_error(dataset, tmp_path, capsys, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert batch(dataset, "--output", tmp_path / "o", "--config", config, "--no-progress") == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_config_defaults_and_hash():
    default = load_config(None)
    assert default["operator"]["views"] == 60 and default["operator"]["noise"] == 0.01
    assert list(default["methods"]) == ["fbp", "tv"]
    spelled = resolve_config({"naming": "key", "operator": {"geometry": "parallel", "views": 60},
                              "methods": ["fbp", "tv"]})
    assert config_hash(spelled) == config_hash(default)
    assert config_hash(resolve_config({"operator": {"views": 61}})) != config_hash(default)
    assert default["mri"] == {"acceleration": None, "center_fraction": 0.08, "mask_type": "random",
                              "phase_encode": "columns"}
    assert list(default["mri_methods"]) == ["zero-filled", "cg-sense"]
    assert config_hash(resolve_config({"mri_methods": ["zero-filled", "cg-sense"]})) == config_hash(default)
    mri, ct = resolve_config({"mri": {"acceleration": 3}}), resolve_config({"methods": ["fbp"]})
    for kind in ("dicom", "hdf5"):  # CT studies: MRI keys are not part of their hash, CT keys are
        assert config_hash(mri, kind) == config_hash(default, kind) != config_hash(ct, kind)
    assert config_hash(mri, "kspace") != config_hash(default, "kspace") == config_hash(ct, "kspace")
    assert len({config_hash(mri), config_hash(ct), config_hash(default)}) == 3  # the manifest's: everything


def test_kspace_stack_with_a_dicom_series(tmp_path, capsys):
    """A k-space stack beside a DICOM series: both done; changing [mri] redoes only the k-space study."""
    src = tmp_path / "in"
    phantom_series(src / "ct", 0, slices=2)
    kspace_stack(src / "mri" / "scan.h5")
    config = tmp_path / "c.toml"
    text = f"[operator]\nviews = {VIEWS}\n[methods.fbp]\n[mri]\nacceleration = 2\ncenter_fraction = 0.2\n"
    config.write_text(text)
    out = tmp_path / "out"
    assert batch(src, "--output", out, "--config", config, "--workers", 2, "--no-progress") == 0
    printed = capsys.readouterr().out
    assert re.search(r"study\s+state\s+slices\s+seconds\s+PSNR fbp\s+PSNR zero-filled\s+PSNR cg-sense", printed)
    entries = manifest(out)["studies"]
    assert {e["kind"]: e["state"] for e in entries.values()} == {"dicom": "done", "kspace": "done"}
    key = next(k for k, e in entries.items() if e["kind"] == "kspace")
    metrics = check_kspace_outputs(out, key)
    assert entries[key]["metrics"]["cg-sense"]["psnr"] == metrics["methods"]["cg-sense"]["psnr"]
    assert f"{metrics['methods']['cg-sense']['psnr']:.2f}" in printed

    before = done_mtimes(out)
    config.write_text(text.replace("center_fraction = 0.2", "center_fraction = 0.25"))
    assert batch(src, "--output", out, "--config", config, "--workers", 2, "--no-progress") == 0
    assert "1 done earlier, 1 to run" in capsys.readouterr().out
    after = done_mtimes(out)
    assert {k for k in before if after[k] != before[k]} == {key}
    assert manifest(out)["config"]["mri"]["center_fraction"] == 0.25


def test_kspace_study_details(tmp_path):
    """As acquired (undersampled) input, chunks, tv slice by slice, a fastMRI file cropped to its reference,
    and ESPIRiT's error named by its [mri] key."""
    def study(path: Path) -> Study:
        return Study("k", "kspace", (str(path),), "h")

    full = kspace_stack(tmp_path / "full.h5")
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:, ::2] = mask[:, SIZE // 2 - 4:SIZE // 2 + 4] = True
    with h5py.File(full) as f:
        k = f["kspace"][()]
    under = kspace_stack(tmp_path / "under.h5", extra={"mask": mask})
    with h5py.File(under, "r+") as f:
        f["kspace"][...] = k * mask
    config = resolve_config({"mri_methods": {"cg-sense": {"iterations": 5}, "tv": {"iterations": 5}}})
    data = batch_worker.load_study(study(under), config)
    assert data.sampling == "as acquired, R = 1.60" and data.reference is None and data.mask.shape == (2, SIZE, SIZE)
    whole = batch_worker.reconstruct_study(data, config)
    chunked = batch_worker.reconstruct_study(data, {**config, "chunk_slices": 1})
    np.testing.assert_allclose(chunked["cg-sense"][0], whole["cg-sense"][0], rtol=1e-4, atol=1e-4)
    assert isinstance(whole["tv"][1]["lam"], list) and len(whole["tv"][1]["lam"]) == 2  # one default per slice
    with pytest.raises(ValueError, match="acceleration: the input is already undersampled"):
        batch_worker.load_study(study(under), resolve_config({"mri": {"acceleration": 2}}))
    with pytest.raises(ValueError, match=r"ESPIRiT needs at least 5 x 5 .*raise \[mri\] center_fraction"):
        batch_worker.reconstruct_study(batch_worker.load_study(study(full), resolve_config({})), resolve_config({}))

    xml = ('<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding><encodedSpace><matrixSize><x>32</x>'
           '<y>32</y><z>1</z></matrixSize><fieldOfView_mm><x>1</x><y>1</y><z>1</z></fieldOfView_mm></encodedSpace>'
           '<reconSpace><matrixSize><x>24</x><y>24</y><z>1</z></matrixSize><fieldOfView_mm><x>1</x><y>1</y><z>1</z>'
           '</fieldOfView_mm></reconSpace></encoding></ismrmrdHeader>')
    rss = np.sqrt((np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"),
                                          axes=(-2, -1))) ** 2).sum(1))
    fast = kspace_stack(tmp_path / "fastmri.h5", extra={"ismrmrd_header": xml,
                                                        "reconstruction_rss": rss[:, 4:28, 4:28].astype(np.float32)})
    config = resolve_config({"mri": {"acceleration": 2, "center_fraction": 0.2}})
    data = batch_worker.load_study(study(fast), config)
    results = batch_worker.reconstruct_study(data, config)
    assert data.crop == (24, 24) and results["cg-sense"][0].shape == (2, 24, 24)
    metrics = batch_worker.study_metrics(results, data.reference, data.data_range)
    assert metrics["cg-sense"]["psnr"] > metrics["zero-filled"]["psnr"] > 15


@pytest.mark.parametrize("files, message", [
    (None, "no such file or folder"), ([], "no studies found"), (["a.txt", ".hidden/x.dcm"], "no studies found")])
def test_bad_input_is_a_clear_error(tmp_path, capsys, files, message):
    src = tmp_path / "in"
    for name in files or []:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("not an image")
    if files is not None:
        src.mkdir(exist_ok=True)
    assert batch(src, "--output", tmp_path / "o", "--no-progress") == 2
    err = capsys.readouterr().err
    assert message in err and str(src) in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (("--workers", 0), "--workers: expected a positive number"),
    (("--workers", 2, "--scheduler", "tcp://127.0.0.1:1"), "with --scheduler the cluster's own workers"),
])
def test_bad_engine_options(dataset, tmp_path, capsys, argv, message):
    assert batch(dataset, "--output", tmp_path / "o", *argv) == 2
    assert message in capsys.readouterr().err


def test_a_second_run_on_the_same_output_is_refused(dataset, tmp_path, capsys):
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert batch(dataset, "--output", out, "--no-progress") == 2
    assert "another recon batch run is writing" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("../../x", "x"), ("..", ""), ("a/b\\c", "a_b_c"), ("Zoë^Jürgen 患者", "Zoe_Jurgen"), ("-rf .hidden", "rf_.hidden"),
    ("x" * 300, "x" * 48), ("../" * 40 + "y", "y")])
def test_safe_name(text, expected):
    assert safe_name(text) == expected


def test_names_collide_and_keep_earlier_ones():
    studies = [Study(k, "dicom", (), "h", label=label) for k, label in
               [("k1", "P_CT"), ("k2", "P/CT"), ("k3", "../.."), ("k4", "Q")]]
    names = {s.key: s.name for s in assign_names(studies, "patient")}
    assert names == {"k1": "P_CT_k1", "k2": "P_CT_k2", "k3": "k3", "k4": "Q"}
    later = assign_names([*studies, Study("k5", "dicom", (), "h", label="Q")], "patient", previous=names)
    assert {s.key: s.name for s in later} == {**names, "k5": "Q_k5"}
    assert {s.name for s in assign_names(studies, "key")} == {"k1", "k2", "k3", "k4"}


def test_hostile_tags_with_patient_naming(tmp_path, capsys):
    """PatientID / SeriesDescription with separators, '..', long and non-ASCII text stay inside the output."""
    src = tmp_path / "in"
    hostile = [("../../x", "../escape"), ("../../x", "../escape"), ("/etc/passwd", "a\\b/c"),
               ("Zoë 患者 " + "y" * 60, "CT" * 40), ("..", "..")]
    for i, (pid, desc) in enumerate(hostile):
        phantom_series(src / f"s{i}", i, slices=2, PatientID=pid, SeriesDescription=desc)
    config = tmp_path / "c.toml"
    config.write_text(f"naming = 'patient'\n[operator]\nviews = {VIEWS}\n[methods.fbp]\n")
    out = tmp_path / "out"
    assert batch(src, "--output", out, "--config", config, "--workers", 2, "--no-progress") == 0
    names = sorted(p.name for p in (out / "studies").iterdir())
    assert len(names) == 5 and all(SAFE.match(n) and ".." not in n and len(n) <= 48 + 17 for n in names)
    assert sorted(os.listdir(tmp_path)) == ["c.toml", "in", "out"]  # nothing written beside the output
    keys = {s.key for s in discover([src])[0]}
    assert sum(n.startswith("x_escape_") for n in names) == 2  # the twin pair, told apart by their keys
    assert {n.rsplit("_", 1)[-1] for n in names if n.startswith("x_escape_")} <= keys
    assert "etc_passwd_a_b_c" in names and any(n.startswith("Zoe_y") for n in names)
    assert any(n in keys for n in names)  # '..' / '..' leaves nothing: named by its key
    for e in manifest(out)["studies"].values():
        assert (out / "studies" / e["name"] / "study.json").is_file()


def _kill_tree(proc: subprocess.Popen, children) -> None:
    for p in [proc, *children]:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_mid_run_loses_nothing(tmp_path):
    psutil = pytest.importorskip("psutil")
    src = tmp_path / "in"
    for i in range(6):
        phantom_series(src / f"s{i}", i, slices=4, size=48)
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace("iterations = 20", "iterations = 150"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "apps.cli", "batch", str(src), "--output", str(out), "--config", str(config),
           "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if "done" in states(out).values():
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        children = psutil.Process(proc.pid).children(recursive=True)
        _kill_tree(proc, [])  # the CLI only, as a crash would; its workers must go by themselves
        assert proc.returncode == -signal.SIGKILL
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"worker processes outlived the killed client: {alive}"
    finally:
        _kill_tree(proc, [c for c in children if c.is_running()])
    at_kill = states(out)  # the manifest is still valid JSON
    finished = {k for k, s in at_kill.items() if s == "done"}
    assert finished and len(finished) < 6
    assert {s for s in at_kill.values() if s != "done"} <= {"pending", "running"}
    before = done_mtimes(out)
    assert batch(src, "--output", out, "--config", config, "--workers", 2, "--no-progress") == 0
    assert set(states(out).values()) == {"done"} and len(states(out)) == 6
    after = done_mtimes(out)
    assert all(after[k] == before[k] for k in before) and finished <= before.keys()
    for key in states(out):
        check_outputs(out, key, dicom=True, slices=4, size=48, iterations=150)


@pytest.fixture
def external_cluster(tmp_path):
    """A Dask scheduler and one worker process started here, torn down afterwards."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    scheduler_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1",
                                       "--nthreads", "1", "--no-dashboard"], env=env, cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from dask.distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


@pytest.mark.slow
def test_external_cluster_gives_the_local_results(dataset, tmp_path, external_cluster):
    config = dataset / "config.toml"
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert batch(dataset, "--output", local, "--config", config, "--workers", 2, "--no-progress") == 1
    assert batch(dataset, "--output", remote, "--config", config, "--scheduler", external_cluster, "--no-progress") == 1
    assert states(local) == states(remote)
    for key, state in states(local).items():
        if state != "done":
            continue
        a, b = (json.loads((o / "studies" / key / "metrics.json").read_text())["methods"] for o in (local, remote))
        for method in a:
            for metric in ("psnr", "ssim"):
                assert b[method][metric] == pytest.approx(a[method][metric], abs=1e-6)
        with h5py.File(local / "studies" / key / "reconstructions.h5") as fa, \
                h5py.File(remote / "studies" / key / "reconstructions.h5") as fb:
            for method in a:
                np.testing.assert_allclose(fb[method][()], fa[method][()], atol=1e-6)
