"""Output files get the permissions a plain open() would give (0o666 less the umask), whatever writes them."""

from __future__ import annotations

import os
import stat

import pytest

from apps.cli import main
from data.files import atomic_path, current_umask


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    before = os.umask(0o022)

    def set_to(mask: int) -> None:
        os.umask(mask)

    yield set_to
    os.umask(before)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_honour_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    with atomic_path(tmp_path / "out.txt") as tmp, open(tmp, "w") as f:
        f.write("done")
    assert mode(tmp_path / "out.txt") == expected


def test_every_output_of_recon_ct_is_readable_by_the_group_and_others(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "out"
    assert main(["ct", "--phantom", "shepp-logan", "--size", "32", "--views", "8", "--method", "fbp",
                 "--output", str(out), "--no-progress"]) == 0
    files = [p for p in out.rglob("*") if p.is_file() and p.name != ".lock"]
    assert {p.suffix for p in files} >= {".png", ".h5", ".json"}
    assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(0o644) for p in files}


def test_checkpoint_folders_and_files_honour_the_umask(tmp_path, umask):
    import torch

    from recon.training.checkpoint import save_checkpoint

    umask(0o022)
    folder = save_checkpoint(tmp_path, 1, torch.nn.Linear(2, 2), {}, {})
    assert mode(folder) == 0o755
    assert {p.name: oct(mode(p)) for p in folder.iterdir()} == {p.name: oct(0o644) for p in folder.iterdir()}


def test_model_weights_written_by_safetensors_honour_the_umask(tmp_path, umask):
    from recon.models import build_network, save_model

    umask(0o022)
    arch = {"hidden": 4, "strides": [1]}
    path = save_model(tmp_path / "m.safetensors", build_network("lpn", arch), "lpn", arch)
    assert mode(tmp_path / "m.safetensors") == mode(path) == 0o644
