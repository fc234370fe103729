"""The wheel: built from this tree, it carries the shipped models (weights, cards, configs), builds
without setuptools warnings, and ``recon ct --method lpn`` runs from it outside the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_shipped_lpn(tmp_path):
    # pyproject.toml asks for setuptools >= 77: build with the installed one when it is that new (no
    # download), else in pip's isolated build environment
    isolation = ["--no-build-isolation"] if int(version("setuptools").split(".")[0]) >= 77 else []
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", *isolation,
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    assert "Warning" not in build.stdout + build.stderr, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("recon-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for stem in ("lpn_ct256", "svtv_weights_ct256", "score_ct128"):
        for suffix in (".safetensors", ".json", ".toml"):
            assert f"recon/weights/{stem}{suffix}" in names, f"{stem}{suffix} missing from the wheel"
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    # the installed entry point, with the wheel's packages first and the source tree out of reach
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import recon, apps; print(recon.__file__); print(apps.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    run = subprocess.run([sys.executable, str(site / "bin" / "recon"), "ct", "--phantom", "shepp-logan", "--size", "32",
                          "--views", "10", "--method", "lpn", "--iterations", "2", "--output", str(tmp_path / "out"),
                          "--no-progress"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "lpn" in run.stdout and (tmp_path / "out" / "lpn.png").is_file()
