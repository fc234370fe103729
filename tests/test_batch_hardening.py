"""`recon batch` against lost results and dying workers: keys of HDF5 studies from two sites, symbolic
links, bad output folders and manifests, workers that crash or are killed, a full disk."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps import batch_engine, batch_worker
from apps.batch_studies import discover
from tests.batch_helpers import REPO, SIZE, VIEWS, batch, dask_cluster, manifest, phantom_series, raw_file, states

FBP_ONLY = f"[operator]\nviews = {VIEWS}\n[methods.fbp]\n"


def _config(tmp_path: Path, text: str = FBP_ONLY) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def _psnr(out: Path, key: str) -> float:
    return json.loads((out / "studies" / key / "metrics.json").read_text())["methods"]["fbp"]["psnr"]


def _lock_is_free(out: Path) -> bool:
    with open(out / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@pytest.mark.parametrize("naming", ["key", "patient"])
def test_two_sites_with_the_same_file_name_keep_both_results(tmp_path, capsys, naming):
    """siteA/scan.h5 then siteB/scan.h5 (other data) into one output: both results stay, untouched."""
    raw_file(tmp_path / "siteA" / "scan.h5", seeds=(1,))
    raw_file(tmp_path / "siteB" / "scan.h5", seeds=(2,))
    config, out = _config(tmp_path, f"naming = '{naming}'\n" + FBP_ONLY), tmp_path / "res"
    assert batch(tmp_path / "siteA", "--output", out, "--config", config, "--workers", 1, "--no-progress") == 0
    (key_a, entry_a), = manifest(out)["studies"].items()
    folder_a = out / "studies" / entry_a["name"]
    before = (folder_a / "reconstructions.h5").stat().st_mtime_ns, _psnr(out, entry_a["name"])
    assert batch(tmp_path / "siteB", "--output", out, "--config", config, "--workers", 1, "--no-progress") == 0
    studies = manifest(out)["studies"]
    assert len(studies) == 2 and {e["state"] for e in studies.values()} == {"done"}
    assert studies[key_a] == entry_a  # the other run's study is still recorded, as it was
    (key_b, entry_b), = ((k, e) for k, e in studies.items() if k != key_a)
    assert entry_b["name"] != entry_a["name"] and entry_a["inputs"] == entry_b["inputs"] == ["scan.h5"]
    assert ((folder_a / "reconstructions.h5").stat().st_mtime_ns, _psnr(out, entry_a["name"])) == before
    assert json.loads((folder_a / "study.json").read_text())["key"] == key_a
    assert json.loads((out / "studies" / entry_b["name"] / "study.json").read_text())["key"] == key_b
    assert _psnr(out, entry_b["name"]) != before[1]


def test_hdf5_keys_follow_content_and_paths():
    """The key of an HDF5 study changes with its bytes; the same relative path and bytes give the same key."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw_file(tmp / "a" / "scan.h5", seeds=(1,))
        shutil.copytree(tmp / "a", tmp / "b")
        raw_file(tmp / "c" / "scan.h5", seeds=(2,))
        key = {site: discover([tmp / site])[0][0].key for site in "abc"}
        assert key["a"] == key["b"] != key["c"]
        both = discover([tmp / "a", tmp / "b"])[0]  # one run with both copies: two studies, two keys
        assert len({s.key for s in both}) == 2
        cache: dict = {}
        discover([tmp / "a"], content_cache=cache)
        (entry,) = cache.values()
        assert entry[2] == batch_worker.hashlib.sha256((tmp / "a" / "scan.h5").read_bytes()).hexdigest()
        entry[2] = "0" * 64  # a cache hit (same size and mtime) is trusted: the key follows the cached digest
        assert discover([tmp / "a"], content_cache=cache)[0][0].key != key["a"]


def test_publish_never_replaces_another_studys_folder(tmp_path):
    studies, trash = tmp_path / "studies", tmp_path / "trash"
    (studies / "scan").mkdir(parents=True)
    batch_worker.write_json(studies / "scan" / "study.json", {"key": "other"})
    (studies / "scan" / "result.txt").write_text("theirs")
    trash.mkdir()
    for i in range(2):  # the second publish replaces the first of the same study, never the other
        new = tmp_path / f"new{i}"
        new.mkdir()
        batch_worker.write_json(new / "study.json", {"key": "mine"})
        assert batch_worker.publish(new, studies / "scan", trash, "mine") == studies / "scan_mine"
    assert (studies / "scan" / "result.txt").read_text() == "theirs"
    assert sorted(p.name for p in studies.iterdir()) == ["scan", "scan_mine"]
    (studies / "plain").mkdir()  # a folder without study.json (not written by recon batch) is left alone too
    new = tmp_path / "new2"
    new.mkdir()
    assert batch_worker.publish(new, studies / "plain", trash, "mine") == studies / "plain_mine"


def test_symbolic_links_are_followed_or_noted(tmp_path, capsys):
    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    raw_file(elsewhere / "real.h5", seeds=(3,))
    raw_file(src / "own.h5", seeds=(4,))
    (src / "link.h5").symlink_to(elsewhere / "real.h5")
    (src / "dangling.h5").symlink_to(tmp_path / "gone.h5")
    out = tmp_path / "out"
    assert batch(src, "--output", out, "--config", _config(tmp_path), "--workers", 1, "--no-progress") == 0
    err = capsys.readouterr().err
    assert f"skipped a broken symbolic link {src / 'dangling.h5'}" in err
    entries = manifest(out)["studies"].values()
    assert sorted(e["inputs"][0] for e in entries) == ["link.h5", "own.h5"]
    assert {e["state"] for e in entries} == {"done"}


@pytest.mark.parametrize("text, message", [
    ('{"format": "recon-batch-manifest/1", "studies": {"k": 3}}', "study 'k' is int, expected a record"),
    ('{"format": "recon-batch-manifest/1", "studies": {"k": {"state": ["done"]}}}', "'state' is ['done']"),
    ('{"format": "recon-batch-manifest/1", "studies": []}', "is not a recon batch manifest"),
    ('[1, 2]', "is not a recon batch manifest"),
    (b"\xff\xfe junk", "is not valid JSON"),
])
def test_a_manifest_of_another_structure_is_a_message(tmp_path, capsys, text, message):
    src = raw_file(tmp_path / "in" / "scan.h5", seeds=(1,)).parent
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    assert batch(src, "--output", out, "--config", _config(tmp_path), "--no-progress") == 2
    err = capsys.readouterr().err
    assert message in err and "manifest.json" in err and len(err.strip().splitlines()) == 1


def test_an_output_that_cannot_be_written_is_a_message(tmp_path, capsys, monkeypatch):
    src = raw_file(tmp_path / "in" / "scan.h5", seeds=(1,)).parent
    (tmp_path / "afile").write_text("x")
    assert batch(src, "--output", tmp_path / "afile" / "sub", "--no-progress") == 2
    err = capsys.readouterr().err
    assert "--output: cannot write into" in err and "Not a directory" in err and len(err.strip().splitlines()) == 1
    assert batch(src, "--output", tmp_path / "afile", "--no-progress") == 2
    assert "--output: expected a folder, found a file" in capsys.readouterr().err

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    import apps.batch as batch_app

    monkeypatch.setattr(batch_app.tempfile, "TemporaryFile", read_only)  # as root, chmod would not stop a write
    assert batch(src, "--output", tmp_path / "ro", "--no-progress") == 2
    err = capsys.readouterr().err
    assert "--output: cannot write into" in err and "Permission denied" in err and len(err.strip().splitlines()) == 1


def _read_only_mount(path: Path) -> bool:
    path.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(path)], capture_output=True)
    return ok.returncode == 0


def test_a_read_only_file_system_is_a_message(tmp_path, capsys):
    src = raw_file(tmp_path / "in" / "scan.h5", seeds=(1,)).parent
    mount = tmp_path / "ro"
    if not _read_only_mount(mount):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        assert batch(src, "--output", mount / "out", "--no-progress") == 2
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    err = capsys.readouterr().err
    assert "--output: cannot write into" in err and "Read-only file system" in err


# --- dying workers: each run is a subprocess, so that its workers can be crashed or killed ---

def _run(src: Path, out: Path, config: Path, env_extra: dict | None = None, workers: int = 1):
    cmd = [sys.executable, "-m", "apps.cli", "batch", str(src), "--output", str(out), "--config", str(config),
           "--workers", str(workers), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


CRASH = """
import os
import data.hdf5

def _crash(*args, **kwargs):  # a worker dying inside the HDF5 writer, as libhdf5 on a full disk
    os.abort()

data.hdf5.write_reconstructions = _crash
"""


@pytest.mark.slow
def test_workers_crashing_in_the_writer_fail_the_study_and_end_the_run(tmp_path):
    src = tmp_path / "in"
    raw_file(src / "a.h5", seeds=(1,))
    raw_file(src / "b.h5", seeds=(2,))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH)  # imported by every new interpreter: the spawned workers
    out = tmp_path / "out"
    proc = _run(src, out, _config(tmp_path), {"PYTHONPATH": f"{hook}{os.pathsep}{REPO}"})
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr[-2000:]
    studies = manifest(out)["studies"]
    assert len(studies) == 2 and {e["state"] for e in studies.values()} == {"failed"}
    for e in studies.values():
        assert f"died {batch_engine.LOST_LIMIT} times" in e["error"] and e["error"] in stdout
    assert _lock_is_free(out) and not any((out / "studies").glob("*"))


def _workers(proc) -> list:
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "spawn_main" in " ".join(_cmdline(c))]


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except Exception:
        return []


@pytest.mark.slow
def test_killing_every_worker_again_and_again_ends_the_run(tmp_path):
    psutil = pytest.importorskip("psutil")
    src = tmp_path / "in"
    for i in range(4):
        phantom_series(src / f"s{i}", i, slices=4, size=48)
    config = _config(tmp_path, f"[operator]\nviews = {VIEWS}\n[methods.tv]\niterations = 400\n")
    out = tmp_path / "out"
    proc = _run(src, out, config, workers=2)
    killed, deadline = 0, time.monotonic() + 400
    try:
        while proc.poll() is None and time.monotonic() < deadline and not any((out / ".partial").glob("*")):
            time.sleep(0.05)  # mid-run: once the first study is being written
        while proc.poll() is None and time.monotonic() < deadline:
            for w in _workers(proc):
                try:
                    w.send_signal(signal.SIGKILL)
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.5)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr[-2000:]
    assert killed >= 2 * batch_engine.LOST_LIMIT
    found = manifest(out)["studies"]
    assert len(found) == 4 and {e["state"] for e in found.values()} == {"failed"}
    # each study fails as lost LOST_LIMIT times, or (workers killed before they come up) with the cluster
    assert all(f"died {batch_engine.LOST_LIMIT} times" in e["error"] or "no live Dask worker" in e["error"]
               for e in found.values()), [e["error"] for e in found.values()]
    assert _lock_is_free(out)
    assert batch(src, "--output", out, "--config", config, "--workers", 2, "--no-progress") == 0  # nothing stuck
    assert set(states(out).values()) == {"done"}


@pytest.fixture
def lone_worker(tmp_path):
    """A Dask scheduler and one worker without a nanny (nothing restarts it when it is killed)."""
    with dask_cluster(tmp_path, "--no-nanny") as (address, worker):
        yield address, worker


@pytest.mark.slow
def test_a_cluster_without_workers_fails_the_studies_left(tmp_path, lone_worker, monkeypatch, capsys):
    address, worker = lone_worker
    src = tmp_path / "in"
    for i in range(3):
        phantom_series(src / f"s{i}", i, slices=4, size=48)
    config = _config(tmp_path, f"[operator]\nviews = {VIEWS}\n[methods.tv]\niterations = 300\n")
    monkeypatch.setattr(batch_engine, "NO_WORKERS_S", 3.0)
    monkeypatch.setattr(batch_engine, "WORKER_CHECK_S", 0.5)
    out = tmp_path / "out"

    def kill_when_started():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any((out / ".partial").glob("*")):
            time.sleep(0.05)
        worker.kill()

    import threading

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    start = time.monotonic()
    assert batch(src, "--output", out, "--config", config, "--scheduler", address, "--no-progress") == 1
    killer.join(timeout=5)
    assert time.monotonic() - start < 120
    found = manifest(out)["studies"]
    assert len(found) == 3 and {e["state"] for e in found.values()} == {"failed"}
    assert all("no live Dask worker for 3 s" in e["error"] for e in found.values())
    assert _lock_is_free(out)


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_disk_ends_the_run_with_the_lock_released(tmp_path):
    src = tmp_path / "in"
    for i in range(3):
        phantom_series(src / f"s{i}", i, slices=2, size=SIZE)
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "120k"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        proc = _run(src, disk / "out", _config(tmp_path))
        try:
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            proc.kill()
        assert proc.returncode == 1, stderr[-2000:]
        assert "Traceback" not in stderr
        assert "No space left on device" in stdout + stderr
        assert _lock_is_free(disk / "out")
        m = json.loads((disk / "out" / "manifest.json").read_text())  # still valid JSON
        assert {e["state"] for e in m["studies"].values()} <= {"done", "failed", "pending", "running"}
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_series_with_a_missing_slice_fails_unless_gaps_are_allowed(tmp_path, capsys):
    """Issue 19, item 4: the gap at z = 5 is never closed; allowed, it stays a gap in the derived series."""
    import pydicom

    from tests.hostile_dicom import write_good_dicom_series

    def no_pixels(k, ds):
        if k == 2:
            del ds.PixelData
        return ds

    write_good_dicom_series(tmp_path / "in" / "series", edit=no_pixels)  # z = 0, 2.5, (5), 7.5
    out = tmp_path / "res"
    run = ("--output", out, "--workers", 1, "--no-progress")
    assert batch(tmp_path / "in", "--config", _config(tmp_path), *run) == 1
    (entry,) = manifest(out)["studies"].values()
    assert entry["state"] == "failed" and "slice_03.dcm: no pixel data" in entry["error"], entry
    assert "between 2.500 and 7.500 mm" in entry["error"] and "allow_gaps" in entry["error"]
    assert not (out / "studies" / entry["name"]).exists()
    assert "slice_03.dcm" in capsys.readouterr().out

    assert batch(tmp_path / "in", "--config", _config(tmp_path, "allow_gaps = true\n" + FBP_ONLY), *run) == 0
    (entry,) = manifest(out)["studies"].values()
    assert entry["state"] == "done" and any("slice_03.dcm: no pixel data" in w for w in entry["warnings"]), entry
    assert "warning:" in (printed := capsys.readouterr().out) and "slice_03.dcm" in printed
    series = sorted((out / "studies" / entry["name"] / "dicom" / "fbp").glob("*.dcm"))
    assert [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in series] == [0.0, 2.5, 7.5]


def test_a_study_too_large_for_the_memory_fails_before_allocating(tmp_path, monkeypatch):
    """Issue 19, item 5: views and detectors within their bounds, but 4 x 10^10 sinogram values per slice."""
    monkeypatch.setenv("RECON_MEMORY_LIMIT", "8G")
    phantom_series(tmp_path / "in" / "s", seed=1)
    config = _config(tmp_path, "[operator]\nviews = 100000\ndetectors = 100000\n[methods.fbp]\n")
    out = tmp_path / "res"
    started = time.monotonic()
    assert batch(tmp_path / "in", "--output", out, "--config", config, "--workers", 1, "--no-progress") == 1
    (entry,) = manifest(out)["studies"].values()
    assert entry["state"] == "failed" and "MemoryLimitError" in entry["error"], entry
    assert "100000 views x 100000 detectors" in entry["error"] and "needs about" in entry["error"]
    assert time.monotonic() - started < 60
