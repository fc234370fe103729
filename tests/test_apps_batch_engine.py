"""`recon batch` under stress: SIGKILL mid-run, and an external Dask scheduler and worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tests.batch_helpers import (CONFIG, REPO, batch, check_outputs, dask_cluster, done_mtimes, make_dataset,
                                 phantom_series, states)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("batch_in"))


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
    with dask_cluster(tmp_path, "--nworkers", "1") as (address, _):
        yield address


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
