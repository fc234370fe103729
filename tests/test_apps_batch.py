"""`recon batch`: discovery, config, resumable runs, failures, naming, k-space (MRI) studies."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest

from apps import batch_worker
from apps.batch_config import config_hash, load_config, resolve_config
from apps.batch_studies import Study, assign_names, discover, safe_name
from data.dicom import list_series
from tests.batch_helpers import (CONFIG, SAFE, SIZE, VIEWS, batch, check_kspace_outputs, check_outputs, done_mtimes,
                                 kspace_stack, make_dataset, manifest, phantom_series, states)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("batch_in"))


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
    ("[operator]\nviews = 0", "views: expected a positive integer <= 100000, got 0"),
    ("[operator]\nviews = true", "views: expected a positive integer <= 100000, got True"),
    ("[operator]\nsource_origin = 100.0", "source_origin: only used with geometry = 'fan'"),
    ("naming = 'names'", "naming: expected 'key' or 'patient'"),
    ("methods = []", "methods: expected a non-empty list"),
    ("[methods.tv]\nlam = 'often'", "lam: expected a non-negative number, 'rule', 'auto' or 'cv'"),
    ("[mri_methods.tv]\nlam = 'cv'", "[mri_methods.tv]: lam: expected a non-negative number"),
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


def test_config_takes_the_weight_searches(tmp_path):
    config = tmp_path / "cv.toml"
    config.write_text("[methods.tv]\nlam = 'cv'\n[methods.svtv]\nlam = 'auto'\n")
    methods = load_config(config)["methods"]
    assert methods["tv"]["lam"] == "cv" and methods["svtv"]["lam"] == "auto"


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
