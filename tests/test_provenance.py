"""Provenance records: keys and versions, the streamed file hash, UTC timestamps, JSON-safe
parameters, and the round trip through write_reconstructions."""

from __future__ import annotations

import hashlib
import json
import math
import platform
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import data.provenance as prov
from data.hdf5 import write_reconstructions
from data.provenance import file_sha256, json_safe, provenance

KEYS = {"method", "parameters", "package", "version", "python", "torch", "numpy", "astra", "platform", "host",
        "input_path", "input_sha256", "started", "finished"}


@pytest.fixture
def input_file(tmp_path, rng):
    path = tmp_path / "scan.h5"
    path.write_bytes(rng.bytes(3 * 2**20 + 123))  # more than one default chunk, not a multiple of it
    return path


def test_record_keys_and_versions(input_file):
    r = provenance("tv", {"lam": 0.02}, input_file)
    assert set(r) == KEYS and r["method"] == "tv" and r["parameters"] == {"lam": 0.02}
    assert r["package"] == "recon" and r["version"] == metadata.version("recon")
    assert r["python"] == platform.python_version() and r["numpy"] == np.__version__
    assert r["torch"] == str(torch.__version__) and r["platform"] == platform.platform() and r["host"]
    assert r["astra"] == metadata.version("astra-toolbox")
    assert r["input_path"] == str(input_file.resolve()) and Path(r["input_path"]).is_absolute()
    assert json.loads(json.dumps(r, allow_nan=False)) == r


def test_uninstalled_package_version_is_unknown(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(prov.metadata, "version", missing)
    r = provenance("fbp", {})
    assert r["version"] == "unknown" and r["astra"] != "unknown"  # astra falls back to its module


def test_hash_equals_hashlib_on_the_whole_file(input_file):
    whole = hashlib.sha256(input_file.read_bytes()).hexdigest()
    assert file_sha256(input_file) == whole == file_sha256(input_file, chunk_size=4093)
    assert provenance("fbp", None, str(input_file))["input_sha256"] == whole


def test_hash_reads_in_chunks(input_file, monkeypatch):
    sizes = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n):
            sizes.append(n)
            return self.f.read(n)

    monkeypatch.setattr(prov, "open", lambda p, mode: Spy(real_open(p, mode)), raising=False)
    file_sha256(input_file, chunk_size=2**20)
    assert sizes == [2**20] * 5  # 3 full chunks, the tail, the empty read that ends the loop


@pytest.mark.parametrize("call, error, message", [
    (lambda p: file_sha256(p / "nope.bin"), FileNotFoundError, "path: no such file"),
    (lambda p: file_sha256(p / "scan.h5", chunk_size=0), ValueError, "chunk_size: expected a positive number"),
    (lambda p: provenance("tv", {}, p / "nope.h5"), FileNotFoundError, "input_path: no such file"),
    (lambda p: provenance("", {}), ValueError, "method: expected a non-empty string, got ''"),
    (lambda p: provenance("tv", [0.1]), TypeError, "parameters: expected a mapping of names to values, got list"),
    (lambda p: provenance("tv", {}, started="2024-01-01"), TypeError, "started: expected a datetime"),
    (lambda p: provenance("tv", {}, started=datetime.now(timezone.utc) + timedelta(hours=1)), ValueError,
     "started: .* is later than now"),
])
def test_bad_arguments_are_named(input_file, call, error, message):
    with pytest.raises(error, match=message):
        call(input_file.parent)


def test_timestamps_are_iso_8601_utc():
    before = datetime.now(timezone.utc)
    r = provenance("tv", {}, started=before - timedelta(seconds=5))
    started, finished = datetime.fromisoformat(r["started"]), datetime.fromisoformat(r["finished"])
    assert started.utcoffset() == finished.utcoffset() == timedelta(0)
    assert started == before - timedelta(seconds=5) and before <= finished <= datetime.now(timezone.utc)
    default = provenance("tv", {})
    assert default["started"] == default["finished"]


def test_naive_and_other_zones_are_converted_to_utc():
    local = datetime.now() - timedelta(minutes=1)  # naive: local time
    r = provenance("tv", {}, started=local)
    assert datetime.fromisoformat(r["started"]) == local.astimezone(timezone.utc)
    tokyo = datetime.now(timezone(timedelta(hours=9))) - timedelta(minutes=1)
    started = datetime.fromisoformat(provenance("tv", {}, started=tokyo)["started"])
    assert started == tokyo and started.utcoffset() == timedelta(0)


def test_parameters_are_stored_json_safely():
    params = {"lam": np.float32(0.25), "iterations": np.int64(300), "weights": np.array([1.0, 2.0]),
              "x0": torch.ones(2, 2, requires_grad=True), "maps": torch.zeros(4, 32, 32, dtype=torch.complex64),
              "tol": None, "nan": float("nan"), "shift": 1 + 2j, "path": Path("/tmp/a"), "flag": np.bool_(True),
              "nested": {1: (np.float64(-np.inf), [torch.tensor(3)])}, "image": np.arange(100.0).reshape(10, 10),
              "other": object}
    r = provenance("tv", params)["parameters"]
    assert json.loads(json.dumps(r, allow_nan=False)) == r
    assert r["lam"] == 0.25 and type(r["lam"]) is float and r["iterations"] == 300 and type(r["iterations"]) is int
    assert r["weights"] == [1.0, 2.0] and r["x0"] == [[1.0, 1.0], [1.0, 1.0]] and r["tol"] is None
    assert r["maps"] == {"shape": [4, 32, 32], "dtype": "complex64"}
    assert r["image"] == {"shape": [10, 10], "dtype": "float64", "min": 0.0, "max": 99.0, "mean": 49.5}
    assert r["nan"] == "nan" and r["shift"] == {"real": 1.0, "imag": 2.0} and r["path"] == "/tmp/a"
    assert r["flag"] is True and r["nested"] == {"1": ["-inf", [3]]} and r["other"] == repr(object)


def test_array_summary_skips_non_finite_values():
    a = np.array([np.nan, 1.0, 3.0] * 30)
    assert json_safe(a) == {"shape": [90], "dtype": "float64", "min": 1.0, "max": 3.0, "mean": 2.0}
    assert json_safe(np.full(100, np.nan)) == {"shape": [100], "dtype": "float64"}
    assert json_safe(torch.tensor(2.5)) == 2.5 and json_safe({"s"}) == ["s"]


def test_round_trip_through_write_reconstructions(tmp_path, input_file):
    started = datetime.now(timezone.utc)
    record = provenance("recon ct", {"views": 60, "noise": np.float64(0.01)}, input_file, started)
    params = {"fbp": {"filter": "ramp"}, "tv": {"lam": np.float32(0.02), "x0": torch.zeros(1, 1, 4, 4), "tol": None}}
    target = write_reconstructions(tmp_path / "out.h5", {"fbp": np.zeros((4, 4)), "tv": np.ones((4, 4))},
                                   {"geometry": "parallel"}, params, provenance=record)
    with h5py.File(target) as f:
        root = json.loads(f.attrs["provenance"])
        per_method = {name: json.loads(f[name].attrs["provenance"]) for name in ("fbp", "tv")}
        assert f["tv"].attrs["lam"] == np.float32(0.02) and f["tv"].attrs["tol"] == "none"
    assert root == record
    assert root["input_sha256"] == hashlib.sha256(input_file.read_bytes()).hexdigest()
    assert datetime.fromisoformat(root["started"]) == started
    for name, r in per_method.items():
        assert r["method"] == name and {k: v for k, v in r.items() if k not in ("method", "parameters")} == \
            {k: v for k, v in record.items() if k not in ("method", "parameters")}
    assert per_method["fbp"]["parameters"] == {"filter": "ramp"}
    assert per_method["tv"]["parameters"] == {"lam": pytest.approx(0.02), "x0": [[[[0.0] * 4] * 4]], "tol": None}
    assert math.isclose(per_method["tv"]["parameters"]["lam"], 0.02, rel_tol=1e-6)


def test_provenance_must_be_a_mapping(tmp_path):
    with pytest.raises(TypeError, match="provenance: expected a mapping .* got str"):
        write_reconstructions(tmp_path / "out.h5", {"fbp": np.zeros((2, 2))}, {}, {}, provenance="tv")
    assert not (tmp_path / "out.h5").exists()
