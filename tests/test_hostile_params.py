"""Hostile parameters: sizes past the memory, non-finite numbers, bad types, failing outputs.

Each request here used to allocate tens of GB, write NaN, end in a traceback or be accepted
silently; each now ends in an error naming the argument (``recon`` exits 2 for bad input, 1 for a
run failure such as a full disk or no memory). CT problems stay at 32 x 32 with few views.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from apps.cli import build_parser, main
from data.limits import ENV, MemoryLimitError, check_memory
from data.phantoms import shepp_logan
from operators import CartesianMRI, ParallelBeam2D, random_mask
from recon.models import TrainedModel, load_model, save_model
from recon.mri import reconstruct_mri
from recon.reconstruct import reconstruct
from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)

SMALL = ("--phantom", "shepp-logan", "--size", "32", "--views", "12", "--no-progress")


def ct(*argv) -> int:
    return main(["ct", *map(str, argv)])


def mri(*argv) -> int:
    return main(["mri", *map(str, argv)])


def _strict_json(path) -> dict:
    """``path`` parsed as standard JSON: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not valid JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def _one_line_error(err: str, command: str = "ct") -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"recon {command}: error: "), err
    return lines[0]


@pytest.fixture
def real_limit(monkeypatch):
    """The machine's own memory limit (no RECON_MEMORY_LIMIT)."""
    monkeypatch.delenv(ENV, raising=False)


@pytest.fixture(scope="module")
def ct_problem():
    A = ParallelBeam2D((32, 32), np.linspace(0, np.pi, 12, endpoint=False), 48)
    return A, A(shepp_logan(32))


@pytest.fixture(scope="module")
def mri_problem():
    A = CartesianMRI(random_mask((32, 32), 4, 0.08, seed=0))
    return A, A(shepp_logan(32).to(torch.complex64))


def _card(tmp_path, task: str, architecture: dict, name: str = "model", **card):
    """A weights file with a hand-written card (weights: one small tensor; the card is read first)."""
    path = tmp_path / f"{name}.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"task": task, "architecture": architecture, **card}))
    return path


def _small_lpn(tmp_path, **card):
    path = tmp_path / "lpn.safetensors"
    torch.manual_seed(0)
    from recon.models import build_network

    save_model(path, build_network("lpn", {"hidden": 4, "strides": [1]}), "lpn", {"hidden": 4, "strides": [1]},
               **card)
    return path


# ------------------------------------------------------------------------- 5. sizes past the memory
def test_phantom_size_past_the_memory_is_refused_naming_size(tmp_path, capsys, real_limit):
    assert ct("--phantom", "shepp-logan", "--size", 100000, "--output", tmp_path / "o") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--size 100000" in line and "needs about" in line, line
    assert not (tmp_path / "o").exists()


def test_views_past_the_memory_are_refused_naming_views(tmp_path, capsys, real_limit):
    assert ct("--phantom", "shepp-logan", "--size", 32, "--views", 10**9, "--output", tmp_path / "o") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--views 1000000000" in line and "needs about" in line, line


def test_views_under_a_small_memory_limit_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ENV, "64M")
    assert ct("--phantom", "shepp-logan", "--size", 64, "--views", 10**6, "--output", tmp_path / "o") == 2
    assert "--views" in capsys.readouterr().err


@pytest.mark.parametrize("key, value", [("views", 10**9), ("detectors", 10**8)])
def test_batch_operator_sizes_have_an_upper_bound(key, value):
    from apps.batch_config import MAX_DETECTORS, MAX_VIEWS, resolve_config

    with pytest.raises(ValueError, match=rf"\[operator\]:? {key}: expected a positive integer <= "):
        resolve_config({"operator": {key: value}})
    resolve_config({"operator": {key: MAX_VIEWS if key == "views" else MAX_DETECTORS}})  # the bound itself is fine


def test_ct_memory_estimate_for_the_batch_worker(monkeypatch):
    from apps.ct import ct_memory_bytes

    small = ct_memory_bytes((64, 64), 10, 20)
    assert small >= 10 * 20 * 4 + 64 * 64 * 4
    assert ct_memory_bytes((64, 64), 10, 20, slices=3) > 2 * small
    assert ct_memory_bytes((64, 64), 100, 20) > small and ct_memory_bytes((128, 128), 10, 20) > small
    monkeypatch.setenv(ENV, "1G")
    check_memory(ct_memory_bytes((256, 256), 60, 366, slices=4), "a typical study")
    with pytest.raises(MemoryLimitError, match="a stack"):
        check_memory(ct_memory_bytes((512, 512), 100000, 100000, slices=100), "a stack")
    with pytest.raises(ValueError, match="image_shape"):
        ct_memory_bytes((64,), 10, 20)


@pytest.mark.parametrize("task, architecture, key", [
    ("lpn", {"hidden": 200000, "strides": [1]}, "hidden"),
    ("denoiser", {"channels": [200000, 200000]}, "channels"),
])
def test_a_card_asking_for_a_huge_network_is_refused(tmp_path, real_limit, task, architecture, key):
    path = _card(tmp_path, task, architecture)
    with pytest.raises(ValueError, match="needs about") as err:
        load_model(path)
    assert str(path.with_suffix(".json")) in str(err.value) and f"architecture.{key}" in str(err.value)


def test_recon_ct_refuses_a_huge_lpn_card(tmp_path, capsys, real_limit):
    path = _card(tmp_path, "lpn", {"hidden": 200000, "strides": [1, 2]})
    assert ct(*SMALL, "--method", "lpn", "--weights", path, "--output", tmp_path / "o") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "model.json" in line and "architecture.hidden" in line and "needs about" in line, line


def test_network_memory_counts_parameters_without_allocating():
    from recon.models import build_network, network_memory_bytes

    small = network_memory_bytes("lpn", {"hidden": 4, "strides": [1]})
    params = sum(p.numel() for p in build_network("lpn", {"hidden": 4, "strides": [1]}).parameters())
    assert small >= 4 * params
    assert network_memory_bytes("lpn", {"hidden": 200000, "strides": [1]}) > 200000 ** 2 * 9 * 4
    assert network_memory_bytes("lpn", {"hidden": 4, "strides": [1]}, training=True) > small


# -------------------------------------------------------------------------- 6. non-finite numbers
def test_recon_ct_refuses_an_infinite_lam(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        ct(*SMALL, "--method", "tv", "--lam", "inf", "--output", tmp_path / "o")
    assert exc.value.code == 2 and "--lam" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method, kwargs, name", [
    ("tv", {"lam": math.inf}, "lam"),
    ("tv", {"lam": math.nan}, "lam"),
    ("tv", {"noise_std": math.inf}, "noise_std"),
    ("tv", {"noise_std": "x"}, "noise_std"),
    ("tv", {"noise_std": -1.0}, "noise_std"),
    ("svtv", {"eta": math.inf}, "eta"),
    ("svtv", {"p": math.nan}, "p"),
    ("svtv", {"spread": 1.5}, "spread"),
    ("graphla-fbp", {"sigma": math.inf}, "sigma"),
    ("graphla-fbp", {"radius": 0}, "radius"),
    ("tv", {"iterations": 2.7}, "iterations"),
    ("tv", {"iterations": "ten"}, "iterations"),
    ("tv", {"iterations": True}, "iterations"),
    ("tv", {"iterations": 0}, "iterations"),
    ("lpn", {"lam": math.inf}, "lam"),
])
def test_reconstruct_names_a_bad_parameter(ct_problem, method, kwargs, name):
    A, y = ct_problem
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        reconstruct(A, y, method, **kwargs)


def test_reconstruct_accepts_numpy_integers_for_iterations(ct_problem):
    A, y = ct_problem
    assert reconstruct(A, y, "sirt", iterations=np.int64(3)).iterations == 3


@pytest.mark.parametrize("kwargs, name", [
    ({"lam": math.inf}, "lam"), ({"lam": -1.0}, "lam"), ({"noise_std": math.nan}, "noise_std"),
    ({"noise_std": "x"}, "noise_std"), ({"iterations": 2.7}, "iterations"), ({"iterations": False}, "iterations"),
])
def test_reconstruct_mri_names_a_bad_parameter(mri_problem, kwargs, name):
    A, y = mri_problem
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        reconstruct_mri(A, y, "tv", **kwargs)


class _NaNDenoiser(torch.nn.Module):
    def forward(self, x):
        return x * math.nan


def test_a_non_finite_reconstruction_is_an_error_naming_the_method(ct_problem):
    A, y = ct_problem
    model = TrainedModel("denoiser", _NaNDenoiser(), {"sigma": 0.1})
    with pytest.raises(RuntimeError, match="pnp"):
        reconstruct(A, y, "pnp", model=model, iterations=2)


def test_weights_with_nan_are_refused_naming_file_and_tensor(tmp_path):
    path = _small_lpn(tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(path))
    name = sorted(state)[0]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = math.nan
    save_file(state, str(path))
    with pytest.raises(ValueError, match=rf"{path}.*{name}.*(NaN|non-finite)"):
        load_model(path)


def test_metrics_json_is_valid_json_even_for_an_infinite_psnr(tmp_path, monkeypatch):
    monkeypatch.setattr("apps.ct.psnr", lambda *a, **k: torch.tensor(math.inf))
    assert ct(*SMALL, "--method", "fbp", "--output", tmp_path / "o") == 0
    assert _strict_json(tmp_path / "o" / "metrics.json")["fbp"]["psnr"] in ("inf", None)


# ---------------------------------------------------------------- 9. messages instead of tracebacks
def test_output_naming_a_file_is_a_usage_error(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("mine")
    assert ct(*SMALL, "--method", "fbp", "--output", target) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--output" in line and str(target) in line
    assert target.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_a_run_failure(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert ct(*SMALL, "--method", "fbp", "--output", out / "sub") == 1
    finally:
        out.chmod(0o700)
    _one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("target, error", [
    ("apps.figures.save_image", PermissionError(errno.EACCES, "Permission denied", "fbp.png")),
    ("apps.ct.write_reconstructions", OSError(errno.ENOSPC, "No space left on device")),
    ("apps.ct.reconstruct", MemoryError()),
])
def test_write_and_memory_failures_are_one_line_run_failures(tmp_path, capsys, monkeypatch, target, error):
    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(target, fail)
    assert ct(*SMALL, "--method", "fbp", "--output", tmp_path / "o") == 1
    line = _one_line_error(capsys.readouterr().err)
    assert ("memory" in line) if isinstance(error, MemoryError) else (error.strerror in line), line


@pytest.fixture(scope="module")
def kspace_file(tmp_path_factory):
    from data.mri import write_kspace
    from tests.mri_helpers import coil_head, noisy_kspace

    maps, phantom = coil_head(32, 1)
    path = tmp_path_factory.mktemp("mri") / "scan.h5"
    write_kspace(path, noisy_kspace(maps * phantom, 0.01, 0))
    return path


def test_recon_mri_output_errors(tmp_path, capsys, monkeypatch, kspace_file):
    target = tmp_path / "taken"
    target.write_text("mine")
    assert mri("--input", kspace_file, "--method", "zero-filled", "--output", target, "--no-progress") == 2
    assert "--output" in _one_line_error(capsys.readouterr().err, "mri")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("apps.mri.write_reconstructions", full)
    assert mri("--input", kspace_file, "--method", "zero-filled", "--output", tmp_path / "o", "--no-progress") == 1
    assert "No space left" in _one_line_error(capsys.readouterr().err, "mri")


def test_recon_mri_metrics_json_is_valid_json(tmp_path, monkeypatch, kspace_file):
    monkeypatch.setattr("apps.mri.psnr", lambda *a, **k: torch.tensor(math.inf))
    assert mri("--input", kspace_file, "--method", "zero-filled", "--output", tmp_path / "o", "--no-progress") == 0
    _strict_json(tmp_path / "o" / "metrics.json")


def test_help_documents_the_exit_codes():
    text = " ".join(build_parser().format_help().split())
    assert "exit status" in text.lower() and "1 " in text and "2 " in text
    assert "run failure" in text and "bad arguments" in text


# ------------------------------------------------------------------------------------- 10. smaller
def test_a_second_run_on_a_locked_output_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert ct(*SMALL, "--method", "fbp", "--output", out) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--output" in line and "another" in line, line
    assert not (out / "metrics.json").exists()
    assert ct(*SMALL, "--method", "fbp", "--output", out) == 0  # released: the next run goes ahead


def test_stale_method_images_are_removed_and_user_files_kept(tmp_path):
    out = tmp_path / "o"
    assert ct(*SMALL, "--method", "fbp", "--method", "sirt", "--iterations", 2, "--output", out) == 0
    (out / "notes.png").write_text("mine")
    (out / "sirt.txt").write_text("mine")
    assert ct(*SMALL, "--method", "fbp", "--output", out) == 0
    assert (out / "fbp.png").is_file() and not (out / "sirt.png").exists()
    assert (out / "notes.png").read_text() == "mine" and (out / "sirt.txt").read_text() == "mine"
    assert list(_strict_json(out / "metrics.json")) == ["fbp"]


@pytest.mark.parametrize("pnp, key", [
    ({"iterations": 10**9}, "pnp.iterations"), ({"iterations": 2.5}, "pnp.iterations"),
    ({"rho": math.inf}, "pnp.rho"), ({"rho_factor": -1.0}, "pnp.rho_factor"),
    ({"cg_iterations": 10**9}, "pnp.cg_iterations"),
])
def test_card_pnp_settings_are_bounded(tmp_path, pnp, key):
    path = _small_lpn(tmp_path, pnp=pnp)
    with pytest.raises(ValueError, match="pnp") as err:
        load_model(path)
    assert str(path.with_suffix(".json")) in str(err.value) and key in str(err.value)


def _functionals():
    from priors import TV, L2Fidelity, NonNegativity
    from priors.graph_laplacian import GraphLaplacianPrior
    from priors.tv import L1Norm, L21Norm, SpaceVariantTV

    x = torch.rand(1, 1, 8, 8)
    A = ParallelBeam2D((8, 8), np.linspace(0, np.pi, 4, endpoint=False), 12)
    return {"TV": TV(), "L1Norm": L1Norm(), "L21Norm": L21Norm(), "NonNegativity": NonNegativity(),
            "SpaceVariantTV": SpaceVariantTV.from_estimate(x), "scaled TV": 0.5 * TV(),
            "GraphLaplacianPrior": GraphLaplacianPrior.from_estimate(x), "L2Fidelity": L2Fidelity(A, A(x))}


@pytest.mark.parametrize("name", list(_functionals()))
@pytest.mark.parametrize("tau", [-0.5, math.nan, math.inf])
def test_prox_refuses_a_negative_or_non_finite_step(name, tau):
    f = _functionals()[name]
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="^tau: expected"):
        f.prox(x, tau)
    f.prox(x, 0.5)  # a valid step still works


def test_prox_checks_tensor_steps_on_the_cpu():
    from priors import TV

    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="^tau: expected"):
        TV().prox(x, torch.full((1, 1, 1, 1), -1.0))
    assert TV().prox(x, torch.full((1, 1, 1, 1), 0.1)).shape == x.shape


@pytest.mark.parametrize("argv, option", [
    (("--iterations", "0"), "--iterations"), (("--iterations", "2.7"), "--iterations"),
    (("--noise-std", "-1"), "--noise-std"), (("--noise-std", "nan"), "--noise-std"),
    (("--noise-std", "x"), "--noise-std"),
])
def test_cli_numbers_name_the_option(tmp_path, capsys, argv, option):
    with pytest.raises(SystemExit) as exc:
        ct(*SMALL, "--method", "tv", *argv, "--output", tmp_path / "o")
    assert exc.value.code == 2 and f"argument {option}:" in capsys.readouterr().err
