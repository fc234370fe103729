"""The whole hostile set as one `recon batch` run (issue 19): the DICOM series of tests/hostile_dicom.py
(tag text with path traversal, NUL bytes and shell metacharacters, file names with shell metacharacters, bad orientation, duplicate positions, missing pixel data, a wrong BitsAllocated,
NaN and garbage slopes, huge Rows x Columns, a truncated slice, a junk .dcm) and the HDF5 files of
tests/hostile_hdf5.py (external raw storage, an external link, a virtual dataset pointing at secrets
outside the input, a huge declared sinogram, a text attribute), next to good studies.

Good studies end done, each bad one failed with its file named, the secrets never reach an output,
nothing is written outside --output, and the run exits 1."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.batch_helpers import batch, manifest
from tests.hostile_dicom import GOOD_CASES, write_hostile_dicom
from tests.hostile_hdf5 import MARKER, write_good_ct, write_hostile_hdf5

CONFIG = "naming = 'patient'\n[operator]\nviews = 12\n[methods.fbp]\n"


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if not p.is_symlink()}


@pytest.mark.slow
def test_the_hostile_set_as_one_batch(tmp_path, capsys, monkeypatch):
    inputs, secret, out = tmp_path / "in", tmp_path / "secret", tmp_path / "res"
    dicom_errors = write_hostile_dicom(inputs / "dicom")
    hdf5_errors = write_hostile_hdf5(inputs / "hdf5", secret)
    write_good_ct(inputs / "hdf5" / "good.h5")
    (tmp_path / "config.toml").write_text(CONFIG)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _tree(tmp_path)

    assert batch(inputs, "--output", out, "--config", tmp_path / "config.toml", "--workers", 1,
                 "--no-progress") == 1

    studies = manifest(out)["studies"]
    by_input = {entry["inputs"][0]: entry for entry in studies.values()}
    assert len(studies) == len(dicom_errors) + len(GOOD_CASES) + len(hdf5_errors) + 1, sorted(by_input)
    for case in GOOD_CASES:
        assert by_input[f"dicom/{case}"]["state"] == "done", by_input[f"dicom/{case}"]
    assert by_input["hdf5/good.h5"]["state"] == "done", by_input["hdf5/good.h5"]
    for case, fragment in dicom_errors.items():
        entry = by_input[f"dicom/{case}"]
        assert entry["state"] == "failed" and fragment in entry["error"], (case, entry)
        assert str(inputs / "dicom" / case) in entry["error"], (case, entry["error"])  # the file is named
    for name, fragment in hdf5_errors.items():
        entry = by_input[f"hdf5/{name}"]
        assert entry["state"] == "failed" and fragment in entry["error"], (name, entry)
        assert str(inputs / "hdf5" / name) in entry["error"], (name, entry["error"])
    assert any("junk.dcm" in note for note in manifest(out)["notes"])

    # outputs: only under --output, in folders named from sanitised tags, never holding a secret
    assert _tree(tmp_path) == {**before, **{k: v for k, v in _tree(tmp_path).items() if k.startswith("res")}}
    assert not list(cwd.iterdir()) and not list(tmp_path.rglob("PWNED"))
    folders = [p.name for p in (out / "studies").iterdir()]
    assert len(folders) == len(GOOD_CASES) + 1 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in folders)
    for path in out.rglob("*"):
        assert path.is_dir() or MARKER.encode() not in path.read_bytes(), path
    printed = capsys.readouterr()
    assert MARKER not in printed.out + printed.err
    for case in dicom_errors:
        assert str(inputs / "dicom" / case) in printed.out or case in printed.out, case
