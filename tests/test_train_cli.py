"""`recon train lpn|svtv-weights|denoiser` end to end on tiny data, its config errors, exact resume
with the LPN's step schedule, and the Trainer's ``lr_at`` / ``step_loss``."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import recon.training.trainer
from apps.cli import main
from recon.training.checkpoint import latest_checkpoint, load_weights
from recon.models import build_network, load_model
from recon.training.trainer import TrainConfig, Trainer
from tests.trainer_helpers import NoisyImages, TinyDenoiser, fixed_loss
from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)

UNET = {"channels": [4, 8], "norm": "group"}
#: the smallest settings of each task: 6 generated 32x32 images, 16x16 patches, validation every 2 steps
TINY = {
    "lpn": {"data": {"count": 6, "size": 32}, "model": {"hidden": 4, "strides": [1, 2]}, "task": {"patch_size": 16},
            "train": {"val_every": 2}},
    "svtv-weights": {"data": {"count": 6, "size": 32}, "model": UNET, "task": {"patch_size": 16, "views": 10},
                     "train": {"val_every": 2}},
    "denoiser": {"data": {"count": 6, "size": 32}, "model": UNET, "task": {"patch_size": 16},
                 "train": {"val_every": 2}},
}
METRIC = {"lpn": "psnr", "svtv-weights": "rmse", "denoiser": "psnr"}
STEPS = ("--steps", "4", "--batch-size", "2", "--no-progress")


def _config(folder, config: dict, name: str = "config.json"):
    path = folder / name
    path.write_text(json.dumps(config))
    return path


def _argv(task: str, output, config, *extra, data: str = "ellipses") -> list[str]:
    return ["train", task, "--data", str(data), "--output", str(output), "--config", str(config), *extra]


def _rows(output) -> list[dict]:
    with open(output / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _tensors(output) -> dict[str, torch.Tensor]:
    return load_file(output / "model.safetensors")


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def _outputs(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    network.eval()
    with torch.no_grad():
        return network(x)


# ------------------------------------------------------------------------------------ each task
@pytest.mark.parametrize("task", ["lpn", "svtv-weights", "denoiser"])
def test_train_writes_weights_and_a_card(tmp_path, task, capsys):
    out = tmp_path / "run"
    argv = _argv(task, out, _config(tmp_path, TINY[task]), *STEPS)
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file() and (out / "model.json").is_file()
    card = json.loads((out / "model.json").read_text())
    assert card["task"] == task and card["architecture"] == TINY[task]["model"] == card["settings"]["model"]
    assert card["data"]["source"] == "ellipses" and card["data"]["count"] == 6 and card["data"]["images"] == 6
    assert card["data"]["image_shape"] == [32, 32] and card["steps"] == 4
    assert card["command"] == "recon " + shlex.join(argv)
    assert card["settings"]["train"]["steps"] == 4 and card["settings"]["train"]["batch_size"] == 2
    assert card["settings"]["task"]["patch_size"] == 16
    # the validation metrics are those of the last step in the log and the trainer's summary
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == list(range(5))
    name = METRIC[task]
    assert set(card["metrics"]) == {name} and np.isfinite(card["metrics"][name])
    assert card["metrics"][name] == float(rows[-1][f"val_{name}"])
    assert card["metrics"] == json.loads((out / "summary.json").read_text())["last_metrics"]
    # load_model rebuilds from the card alone what the last checkpoint holds
    model = load_model(out)
    assert model.task == task and model.path == out / "model.safetensors"
    assert latest_checkpoint(out).name == "step_00000004"
    reference = build_network(task, TINY[task]["model"])
    load_weights(reference, latest_checkpoint(out))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = _outputs(reference, x)
    assert torch.equal(_outputs(model.network, x), expected)
    torch.manual_seed(1)
    assert not torch.equal(_outputs(build_network(task, TINY[task]["model"]), x), expected)  # trained: not initial
    printed = capsys.readouterr().out
    assert f"recon train {task}: 6 images (32, 32) from ellipses" in printed and "trained 4 steps" in printed


def test_task_specific_card_entries(tmp_path):
    assert main(_argv("lpn", tmp_path / "lpn", _config(tmp_path, TINY["lpn"]), "--steps", "6", *STEPS[2:])) == 0
    card = json.loads((tmp_path / "lpn" / "model.json").read_text())
    assert card["sigma"] == 0.05 and card["trained_on"] == "images in [0, 1]"
    assert card["schedule"]["pretrain_steps"] == 2 and card["schedule"]["stages"] == 4
    assert card["schedule"]["gamma_min"] == pytest.approx(0.08 * 16)  # the paper's rule for 16x16 patches
    lrs = [float(r["lr"]) for r in _rows(tmp_path / "lpn")[1:]]
    assert lrs == [1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-4]  # l1 pre-training at pretrain_lr, then lr
    config = _config(tmp_path, TINY["svtv-weights"], "svtv.json")
    assert main(_argv("svtv-weights", tmp_path / "svtv", config, *STEPS)) == 0
    card = json.loads((tmp_path / "svtv" / "model.json").read_text())
    assert card["simulation"] == {"geometry": "parallel", "views": 10, "noise": 0.01}
    assert len(list((tmp_path / "svtv" / "cache").glob("*.safetensors"))) == 2  # the images and their FBPs


def test_toml_and_json_configs_give_the_same_settings(tmp_path):
    toml = tmp_path / "config.toml"
    toml.write_text('[data]\ncount = 6\nsize = 32\nseed = 3\n\n[model]\nhidden = 4\nstrides = [1, 2]\n\n'
                    '[task]\npatch_size = 16\nsigma = 0.1\naugment = false\n\n[train]\nval_every = 2\nlr = 0.002\n')
    json_config = {"data": {"count": 6, "size": 32, "seed": 3}, "model": {"hidden": 4, "strides": [1, 2]},
                   "task": {"patch_size": 16, "sigma": 0.1, "augment": False}, "train": {"val_every": 2, "lr": 0.002}}
    assert main(_argv("lpn", tmp_path / "t", toml, *STEPS)) == 0
    assert main(_argv("lpn", tmp_path / "j", _config(tmp_path, json_config), *STEPS)) == 0
    settings = [json.loads((tmp_path / d / "model.json").read_text())["settings"] for d in ("t", "j")]
    assert settings[0] == settings[1]
    task, data = settings[0]["task"], settings[0]["data"]
    assert task["sigma"] == 0.1 and not task["augment"] and data["seed"] == 3 and settings[0]["train"]["lr"] == 0.002


def test_command_line_overrides_the_file(tmp_path):
    config = _config(tmp_path, {**TINY["denoiser"], "train": {"steps": 50, "batch_size": 8, "val_every": 2}})
    assert main(_argv("denoiser", tmp_path / "o", config, "--steps", "2", "--batch-size", "2", "--seed", "5",
                      "--no-progress")) == 0
    settings = json.loads((tmp_path / "o" / "model.json").read_text())["settings"]
    assert (settings["train"]["steps"], settings["train"]["batch_size"]) == (2, 2)
    assert settings["train"]["seed"] == settings["data"]["seed"] == 5



def test_count_and_size_flags_set_the_generated_data(tmp_path, capsys):
    # a quick try needs no config file: --count and --size override [data] count and size
    config = _config(tmp_path, {**TINY["denoiser"], "data": {"count": 50, "size": 64}})
    assert main(_argv("denoiser", tmp_path / "o", config, "--count", "5", "--size", "32", *STEPS)) == 0
    card = json.loads((tmp_path / "o" / "model.json").read_text())
    assert (card["data"]["count"], card["data"]["size"], card["data"]["images"]) == (5, 32, 5)
    assert card["data"]["image_shape"] == [32, 32]


def test_count_and_size_errors_name_the_flag_or_the_key(tmp_path, capsys):
    config = _config(tmp_path, TINY["denoiser"])
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_smooth_images(3)):
        np.save(folder / f"{i}.npy", image)
    _fails(capsys, _argv("denoiser", tmp_path / "o", config, "--count", "3", *STEPS, data=folder),
           r"--count: applies to the generated data \(ellipses, coule, ellipses\+coule, htc-discs, htc-shapes\); --data .*images is read as")
    _fails(capsys, _argv("denoiser", tmp_path / "o", config, "--size", "8", *STEPS),
           r"--size: expected an integer >= 16 for --data ellipses, got 8")
    _fails(capsys, _argv("denoiser", tmp_path / "o", config, "--count", "1", *STEPS),
           r"--count: expected an integer >= 2 for --data ellipses, got 1")
    small = _config(tmp_path, {**TINY["denoiser"], "data": {"count": 6, "size": 12.5}}, "small.json")
    _fails(capsys, _argv("denoiser", tmp_path / "o", small, *STEPS),
           r"--config: \[data\] size: expected an integer >= 16 for --data ellipses, got 12\.5")

# ---------------------------------------------------------------------------------- data sources
def _smooth_images(n: int, size: int = 32) -> np.ndarray:
    gen = torch.Generator().manual_seed(7)
    coarse = torch.rand(n, 1, 4, 4, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)[:, 0].numpy()


def test_train_from_a_folder_of_npy_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_smooth_images(5)):
        np.save(folder / f"{i}.npy", image)
    config = _config(tmp_path, {"model": UNET, "task": {"patch_size": 16}, "train": {"val_every": 2}})
    assert main(_argv("denoiser", tmp_path / "o", config, *STEPS, data=folder)) == 0
    card = json.loads((tmp_path / "o" / "model.json").read_text())
    assert card["data"]["source"] == str(folder) and card["data"]["images"] == 5 and card["steps"] == 4


def test_train_from_an_hdf5_file(tmp_path):
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=_smooth_images(5))
    config = _config(tmp_path, TINY["lpn"])
    assert main(_argv("lpn", tmp_path / "o", config, *STEPS, data=path)) == 0
    card = json.loads((tmp_path / "o" / "model.json").read_text())
    assert card["data"]["source"] == str(path) and card["data"]["images"] == 5
    assert card["data"]["image_shape"] == [32, 32]


# ------------------------------------------------------------------------------------ config errors
def _fails(capsys, argv, message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("recon train: error: ") and re.search(message, err), err
    assert not (Path(argv[argv.index("--output") + 1]) / "model.safetensors").exists()


@pytest.mark.parametrize("change, message", [
    ({"optim": {"lr": 1.0}}, r"--config: unknown table\(s\) \['optim'\]; expected some of \['data', 'model', 'task'"),
    ({"task": {"patch_size": 16, "sigmaa": 0.1}}, r"--config: unknown \[task\] key\(s\) \['sigmaa'\] for denoiser"),
    ({"data": {"count": 6, "size": 32, "folder": "x"}}, r"unknown \[data\] key\(s\) \['folder'\]"),
    ({"train": {"val_every": 2, "epochs": 3}}, r"--config: \[train\] .*unexpected keyword argument 'epochs'"),
    ({"train": 3}, r"--config: \[train\] must be a table, got int"),
    ({"task": {"patch_size": 64}}, r"--config: \[task\] patch_size = 64 is larger than the images \(32 pixels\)"),
    ({"model": {"channels": [4, 8], "depth": 2}}, r"architecture: .*'depth'"),
])
def test_config_errors_name_the_problem(tmp_path, capsys, change, message):
    config = _config(tmp_path, {**TINY["denoiser"], **change})
    _fails(capsys, _argv("denoiser", tmp_path / "o", config, *STEPS), message)


def test_missing_or_unreadable_config_and_bad_data(tmp_path, capsys):
    good = _config(tmp_path, TINY["denoiser"])
    _fails(capsys, _argv("denoiser", tmp_path / "o", tmp_path / "absent.json", *STEPS),
           r"--config: no such file .*absent\.json")
    yaml = tmp_path / "config.yaml"
    yaml.write_text("data: {}\n")
    _fails(capsys, _argv("denoiser", tmp_path / "o", yaml, *STEPS), r"--config: expected a \.toml or \.json file")
    text = tmp_path / "notes.txt"
    text.write_text("not images")
    for source in (text, tmp_path / "nowhere"):
        _fails(capsys, _argv("denoiser", tmp_path / "o", good, *STEPS, data=source),
               rf"--data: expected a generator \(ellipses, coule, ellipses\+coule, htc-discs, htc-shapes\), a folder of images or an HDF5 file; '{re.escape(str(source))}' "
               "is none of these")
    taken = tmp_path / "taken"
    taken.write_text("")
    _fails(capsys, _argv("denoiser", taken, good, *STEPS), r"--output: expected a folder, found a file .*taken")
    _fails(capsys, _argv("denoiser", tmp_path / "o", _config(tmp_path, {**TINY["denoiser"], "train": {"lr": -1}},
                                                              "lr.json"), *STEPS),
           r"--config: \[train\] lr: expected a positive number, got -1")
    for flag, value, message in (("--device", "gpu0", "expected cpu, cuda or cuda:N, got 'gpu0'"),
                                 ("--device", "cuda:64", "cuda:64: this machine has")):
        with pytest.raises(SystemExit):
            main(_argv("denoiser", tmp_path / "o", good, flag, value))
        assert f"argument {flag}: {message}" in capsys.readouterr().err
    for flag, value in (("--steps", "-5"), ("--batch-size", "0"), ("--seed", "-1")):
        with pytest.raises(SystemExit):  # argparse: the flag, the expectation and the value
            main(_argv("denoiser", tmp_path / "o", good, flag, value))
        assert f"argument {flag}: expected an integer >= " in capsys.readouterr().err


@pytest.mark.parametrize("text", ["3", '[{"train": {}}]', "{bad"])
def test_a_config_that_is_not_a_table_is_named(tmp_path, capsys, text):
    config = tmp_path / "config.json"
    config.write_text(text)
    _fails(capsys, _argv("denoiser", tmp_path / "o", config, *STEPS), "--config")


def test_svtv_weights_needs_square_images(tmp_path, capsys):
    folder = tmp_path / "wide"
    folder.mkdir()
    for k in range(3):
        np.save(folder / f"{k}.npy", np.zeros((32, 40), np.float32))
    _fails(capsys, _argv("svtv-weights", tmp_path / "o", _config(tmp_path, TINY["svtv-weights"]), *STEPS, data=folder),
           r"--data: svtv-weights simulates CT of square images; got \(32, 40\)")


def test_data_that_cannot_be_split_or_stacked(tmp_path, capsys):
    good = _config(tmp_path, TINY["denoiser"])
    one, mixed = tmp_path / "one", tmp_path / "mixed"
    one.mkdir()
    mixed.mkdir()
    np.save(one / "a.npy", np.zeros((32, 32), np.float32))
    np.save(mixed / "a.npy", np.zeros((32, 32), np.float32))
    np.save(mixed / "b.npy", np.zeros((24, 32), np.float32))
    _fails(capsys, _argv("denoiser", tmp_path / "o1", good, *STEPS, data=one), r"has 1 image\(s\); a training/valid")
    _fails(capsys, _argv("denoiser", tmp_path / "o2", good, *STEPS, data=mixed), "the images have different shapes")


# ------------------------------------------------------------------------------------- resume
RESUME = {**TINY["lpn"], "train": {"val_every": 2, "checkpoint_every": 1}}


class Interrupted(BaseException):
    """What a Ctrl-C would do, raised by the test in the middle of a run."""


def _interrupt_at(monkeypatch, stop: int) -> None:
    step = recon.training.trainer.Trainer._step

    def interrupted(self, k, bar):
        if k == stop:
            raise Interrupted(k)
        return step(self, k, bar)
    monkeypatch.setattr(recon.training.trainer.Trainer, "_step", interrupted)


def test_interrupted_lpn_run_resumes_bit_identically(tmp_path, monkeypatch):
    config = _config(tmp_path, RESUME)
    run = lambda out, *extra: main(_argv("lpn", out, config, "--steps", "6", "--batch-size", "2",  # noqa: E731
                                         "--no-progress", *extra))
    torch.manual_seed(0)  # the same initial weights for both runs (see test_the_same_command_trains_the_same_network)
    assert run(tmp_path / "ref") == 0
    torch.manual_seed(0)
    with monkeypatch.context() as m:
        _interrupt_at(m, 4)
        with pytest.raises(Interrupted):
            run(tmp_path / "cut")
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000003"
    torch.manual_seed(123)  # the resumed run takes everything from the checkpoint
    assert run(tmp_path / "cut", "--resume") == 0
    _assert_same_tensors(_tensors(tmp_path / "cut"), _tensors(tmp_path / "ref"))
    rows, expected = _rows(tmp_path / "cut"), _rows(tmp_path / "ref")
    assert [(r["step"], r["loss"], r["lr"]) for r in rows] == [(r["step"], r["loss"], r["lr"]) for r in expected]
    assert float(expected[1]["lr"]) != float(expected[-1]["lr"])  # the schedule did change the rate on the way


def test_extending_an_lpn_run_with_resume_is_refused(tmp_path, capsys):
    """The LPN's schedule is laid out over [train] steps: a resumed run must keep them."""
    config = _config(tmp_path, RESUME)
    common = ("--batch-size", "2", "--no-progress")
    assert main(_argv("lpn", tmp_path / "cut", config, "--steps", "3", *common)) == 0
    assert main(_argv("lpn", tmp_path / "cut", config, "--steps", "6", "--resume", *common)) == 2
    assert re.search(r"recon train: error: .*steps", capsys.readouterr().err)


def test_the_same_command_trains_the_same_network(tmp_path):
    config = _config(tmp_path, TINY["lpn"])
    for out, earlier_use in (("a", 1), ("b", 2)):
        torch.manual_seed(earlier_use)  # whatever ran before in this process
        assert main(_argv("lpn", tmp_path / out, config, *STEPS)) == 0
    _assert_same_tensors(_tensors(tmp_path / "a"), _tensors(tmp_path / "b"))


# ------------------------------------------------------------------------------ Trainer lr_at
def test_lr_at_sets_the_rate_of_every_step(tmp_path):
    seen = []

    def loss_fn(model, batch, step):
        seen.append((step, trainer.optimizer.param_groups[0]["lr"]))
        return fixed_loss(model, batch)
    lr_at = lambda step: 1e-2 / (step + 1)  # noqa: E731
    torch.manual_seed(0)
    trainer = Trainer(TinyDenoiser(), loss_fn, NoisyImages(16, seed=1), config=TrainConfig(
        steps=5, batch_size=4, lr=0.5, output=tmp_path, progress=False), lr_at=lr_at, step_loss=True)
    trainer.fit()
    assert seen == [(k, lr_at(k)) for k in range(1, 6)]
    assert [(int(r["step"]), float(r["lr"])) for r in _rows(tmp_path)] == seen  # no validation: no step 0 row


def test_lr_at_excludes_a_scheduler(tmp_path):
    data = NoisyImages(16, seed=1)
    for scheduler in ("cosine", "step"):
        config = TrainConfig(steps=3, batch_size=4, output=tmp_path, progress=False, scheduler=scheduler, lr_step=2)
        with pytest.raises(ValueError, match=rf"lr_at: expected a callable and config\.scheduler None, got "
                                             rf"function with scheduler '{scheduler}'"):
            Trainer(TinyDenoiser(), fixed_loss, data, config=config, lr_at=lambda step: 1e-3)
    config = TrainConfig(steps=3, batch_size=4, output=tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr_at: expected a callable .* got float"):
        Trainer(TinyDenoiser(), fixed_loss, data, config=config, lr_at=1e-3)


# ------------------------------------------------------------------------------------ --init
def test_init_starts_from_a_trained_model(tmp_path, capsys):
    """``--init`` loads the weights of a model of the same task; without a [model] table the run takes that
    model's architecture. At a learning rate of 1e-12 the result is the initial model; without ``--init`` it is
    not. The card says where it started."""
    assert main(_argv("denoiser", tmp_path / "a", _config(tmp_path, TINY["denoiser"]), *STEPS)) == 0
    tiny_lr = {k: v for k, v in TINY["denoiser"].items() if k != "model"} | {"train": {"val_every": 2, "lr": 1e-12}}
    config = _config(tmp_path, tiny_lr, "tiny_lr.json")
    assert main(_argv("denoiser", tmp_path / "b", config, *STEPS, "--init", str(tmp_path / "a"))) == 0
    a, b = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    card = json.loads((tmp_path / "b" / "model.json").read_text())
    assert card["architecture"] == TINY["denoiser"]["model"]
    assert card["initialised_from"]["weights"].endswith("model.safetensors") and card["initialised_from"]["steps"] == 4
    with_model = _config(tmp_path, {**tiny_lr, "model": UNET}, "with_model.json")
    assert main(_argv("denoiser", tmp_path / "c", with_model, *STEPS)) == 0  # same architecture, no --init
    c = _tensors(tmp_path / "c")
    assert not all(torch.allclose(a[k], c[k], atol=1e-3) for k in a)


def test_init_errors_name_the_flag(tmp_path, capsys):
    config = _config(tmp_path, TINY["denoiser"])
    assert main(_argv("denoiser", tmp_path / "a", config, *STEPS)) == 0
    other = _config(tmp_path, {**TINY["denoiser"], "model": {"channels": [4, 8, 16], "norm": "group"}}, "other.json")
    _fails(capsys, _argv("denoiser", tmp_path / "o1", other, *STEPS, "--init", str(tmp_path / "a")),
           r"--init: .* has the architecture .* the run's \[model\]")
    _fails(capsys, _argv("lpn", tmp_path / "o2", _config(tmp_path, TINY["lpn"], "lpn.json"), *STEPS, "--init",
                         str(tmp_path / "a")), r"--init: .* holds a 'denoiser' model; expected a 'lpn' model")
    _fails(capsys, _argv("denoiser", tmp_path / "o3", config, *STEPS, "--init", str(tmp_path / "none.safetensors")),
           r"--init: no such file")
