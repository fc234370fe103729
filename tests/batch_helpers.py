"""Shared pieces of the `recon batch` tests: synthetic studies, a module-scoped dataset, output checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
from pydicom.uid import generate_uid

from apps.cli import main
from apps.ct import simulate
from data.dicom import hu_to_mu, mu_to_hu, read_series
from data.dicom_write import write_series
from data.hdf5 import write_ct
from data.phantoms import random_ellipses
from tests.mri_helpers import coil_head, noisy_kspace

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
    smooth normalised coils, with complex noise."""
    maps, phantom = coil_head(size, coils)
    images = np.stack([maps * np.roll(phantom, 2 * s, axis=0) * (1 - 0.2 * s) for s in range(slices)])
    k = noisy_kspace(images, noise, seed=0)
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


def make_dataset(root: Path) -> Path:
    """4 DICOM series (two in one folder), one raw HDF5 stack, one broken HDF5, one k-space stack."""
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
        assert f["tv"].attrs["max_iterations"] == iterations and np.isfinite(f["tv"][()]).all()
        assert f["tv"].attrs["iterations_run"] == metrics["methods"]["tv"]["iterations"] <= iterations
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


@contextmanager
def dask_cluster(folder: Path, *worker_options: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """A Dask scheduler and one ``dask worker`` (with ``worker_options``, one thread) started as
    processes here; yields ``(address, worker process)`` once the worker is up, stops both afterwards."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    scheduler_file = folder / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, *worker_options,
                                       "--nthreads", "1", "--no-dashboard"], env=env, cwd=folder,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from dask.distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        yield address, procs[1]
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
