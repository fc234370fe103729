"""recon.training.trainer and recon.training.checkpoint: training, exact resume (also after SIGKILL), torchrun, safe
loading."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

from recon.training.checkpoint import latest_checkpoint, load_checkpoint, load_weights, write_model_card
from recon.training.trainer import TrainConfig, Trainer, step_indices
from tests.trainer_helpers import REPO, NoisyImages, TinyDenoiser, fixed_loss, make_trainer, weights
from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)

#: the runs that are killed: a cosine schedule (its state must resume too), checkpoints every 4 steps
KILL_STEPS = 40
KILL_CONFIG = {"lr": 1e-2, "scheduler": "cosine", "checkpoint_every": 4, "val_every": 5}
#: torchrun x2 vs one process after 20 Adam steps: measured max relative difference per tensor 1.9e-7
#: (float32 round-off of the all-reduce order; max abs 6e-8); the bound leaves 50x headroom
TORCHRUN_RTOL = 1e-5


def _rows(output) -> list[dict]:
    with open(output / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def _script(output, *args, steps: int = KILL_STEPS, config: dict = KILL_CONFIG) -> list[str]:
    return [sys.executable, "-m", "tests.trainer_helpers", "--output", str(output), "--steps", str(steps),
            "--config", json.dumps(config), *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _latest_step(output) -> int:
    try:
        return json.loads((output / "latest.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def _assert_checkpoints_complete(output) -> None:
    """Every visible checkpoint folder is complete and loadable; latest.json names one of them."""
    folders = sorted((output / "checkpoints").glob("step_*"))
    assert folders and latest_checkpoint(output) in folders
    for folder in folders:
        loaded = load_checkpoint(folder)
        assert loaded["state"]["step"] == int(folder.name[5:]) and {"optimizer", "scheduler"} <= loaded["stateful"].keys()
        load_weights(TinyDenoiser(), folder)


def test_training_reduces_loss_and_logs_validation(tmp_path):
    summary = make_trainer(tmp_path, 60, "fixed", lr=1e-2, val_every=20, checkpoint_every=10, amp=True).fit()
    rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(61))
    losses = [float(r["loss"]) for r in rows[1:]]
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:10])
    psnr = {int(r["step"]): float(r["val_psnr"]) for r in rows if r["val_psnr"]}
    assert sorted(psnr) == [0, 20, 40, 60] and psnr[60] > psnr[0] + 10
    assert summary.steps == 60 and summary.loss == losses[-1]
    assert summary.last_metrics["psnr"] == psnr[60] and set(summary.last_metrics) == {"psnr", "mse"}
    assert summary.best_metrics["psnr"] == max(psnr.values()) and summary.best_step == max(psnr, key=psnr.get)
    assert json.loads((tmp_path / "summary.json").read_text()) == dataclasses.asdict(summary)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step_00000050", "step_00000060"]  # keep_checkpoints=2


def test_monitor_min_picks_the_smallest(tmp_path):
    summary = make_trainer(tmp_path, 12, "fixed", lr=1e-2, val_every=3, monitor="mse", mode="min").fit()
    mse = {int(r["step"]): float(r["val_mse"]) for r in _rows(tmp_path) if r["val_mse"]}
    assert summary.best_step == min(mse, key=mse.get) and summary.best_metrics["mse"] == min(mse.values())


def test_clean_stop_and_resume_equals_uninterrupted(tmp_path):
    config = dict(lr=1e-2, scheduler="step", lr_step=7, lr_gamma=0.5, grad_clip=0.5, val_every=6, checkpoint_every=5)
    reference = make_trainer(tmp_path / "ref", 30, **config)
    expected = reference.fit()
    make_trainer(tmp_path / "cut", 13, **config).fit()
    resumed = make_trainer(tmp_path / "cut", 30, seed=99, **config)  # other initial weights: all must be restored
    summary = resumed.fit(resume=True)
    assert summary.start_step == 13 and summary.steps == 30
    _assert_same_tensors(reference.model.state_dict(), resumed.model.state_dict())
    for name in ("exp_avg", "exp_avg_sq"):
        _assert_same_tensors({k: v[name] for k, v in reference.optimizer.state_dict()["state"].items()},
                             {k: v[name] for k, v in resumed.optimizer.state_dict()["state"].items()})
    assert resumed.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"] == 1e-2 / 16
    rows, expected_rows = _rows(tmp_path / "cut"), _rows(tmp_path / "ref")
    assert [(r["step"], r["loss"], r["lr"]) for r in rows] == [(r["step"], r["loss"], r["lr"]) for r in expected_rows]
    extra = [r["step"] for r, e in zip(rows, expected_rows) if r["val_psnr"] != e["val_psnr"]]
    assert extra == ["13"]  # the shortened run also validated at its last step; nothing else differs
    assert (summary.loss, summary.last_metrics, summary.best_metrics, summary.best_step) == \
        (expected.loss, expected.last_metrics, expected.best_metrics, expected.best_step)
    again = make_trainer(tmp_path / "ref", 30, **config).fit(resume=True)  # already finished: nothing to do
    assert again.start_step == 30 and again.last_metrics == expected.last_metrics


def test_resume_refuses_what_would_break_it(tmp_path):
    make_trainer(tmp_path, 4, "fixed", lr=1e-2, scheduler="cosine").fit()
    with pytest.raises(FileExistsError, match="resume=True"):
        make_trainer(tmp_path, 8, "fixed", lr=1e-2, scheduler="cosine").fit()
    with pytest.raises(ValueError, match=r"config\.lr: .* trained with 0\.01, got 0\.02"):
        make_trainer(tmp_path, 4, "fixed", lr=2e-2, scheduler="cosine").fit(resume=True)
    with pytest.raises(ValueError, match=r"config\.steps: .* trained with 4, got 8"):  # the cosine length
        make_trainer(tmp_path, 8, "fixed", lr=1e-2, scheduler="cosine").fit(resume=True)
    make_trainer(tmp_path / "b", 6, "fixed").fit()
    with pytest.raises(ValueError, match=r"config\.steps: expected at least the checkpoint's step 6, got 5"):
        make_trainer(tmp_path / "b", 5, "fixed").fit(resume=True)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run the killed-and-resumed runs must reproduce bit for bit."""
    output, threads = tmp_path_factory.mktemp("reference"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_trainer(output, KILL_STEPS, **KILL_CONFIG).fit()
    finally:
        torch.set_num_threads(threads)
    return output


def _assert_resumes_to_reference(output, reference) -> None:
    resumed = subprocess.run(_script(output, "--resume"), cwd=REPO, env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_tensors(weights(output), weights(reference))
    rows, expected = _rows(output), _rows(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in expected] == [str(s) for s in range(KILL_STEPS + 1)]
    assert [(r["loss"], r["val_psnr"]) for r in rows] == [(r["loss"], r["val_psnr"]) for r in expected]
    assert not list(output.rglob(".*.tmp")), "temporary files left behind after the resume"


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path, reference_run):
    proc = subprocess.Popen(_script(tmp_path, "--sleep", "0.1"), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _latest_step(tmp_path) < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
    assert 8 <= _latest_step(tmp_path) < KILL_STEPS
    _assert_checkpoints_complete(tmp_path)
    _assert_resumes_to_reference(tmp_path, reference_run)


def test_sigkill_while_writing_a_checkpoint(tmp_path, reference_run):
    """Killed half-way through writing the third checkpoint's weights (step 12)."""
    killed = subprocess.run(_script(tmp_path, "--kill-in-save", "3"), cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partial = list((tmp_path / "checkpoints").glob(".step_00000012.*.tmp"))
    assert len(partial) == 1 and not (tmp_path / "checkpoints" / "step_00000012").exists()
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_weights(TinyDenoiser(), partial[0] / "model.safetensors")
    assert _latest_step(tmp_path) == 8
    _assert_checkpoints_complete(tmp_path)
    _assert_resumes_to_reference(tmp_path, reference_run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch build has no torch.distributed gloo backend")
    steps, config = 20, {"lr": 1e-2, "val_every": 10, "checkpoint_every": 10}
    single = make_trainer(tmp_path / "one", steps, "fixed", **config).fit()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "tests.trainer_helpers", "--output", str(tmp_path / "two"),
           "--steps", str(steps), "--variant", "fixed", "--config", json.dumps(config)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["steps"] == steps
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in one:  # float sums in another order (DDP's all-reduce), then Adam: close, not equal
        assert float((two[key] - one[key]).norm() / one[key].norm()) < TORCHRUN_RTOL, key
    for name, value in single.last_metrics.items():
        assert summary["last_metrics"][name] == pytest.approx(value, rel=1e-4)
    assert [r["step"] for r in _rows(tmp_path / "two")] == [str(s) for s in range(steps + 1)]
    state = load_checkpoint(latest_checkpoint(tmp_path / "two"))["state"]
    assert len(state["rng"]) == 2 and state["rng"][0] != state["rng"][1]


def test_load_weights_from_a_file_a_checkpoint_or_an_output_folder(tmp_path):
    trainer = make_trainer(tmp_path, 3, "fixed")
    trainer.fit()
    trained = trainer.model.state_dict()
    for where in (tmp_path, latest_checkpoint(tmp_path), latest_checkpoint(tmp_path) / "model.safetensors"):
        model = TinyDenoiser()
        assert not torch.equal(model.conv1.weight, trained["conv1.weight"])
        result = load_weights(model, where)
        assert result.missing_keys == [] == result.unexpected_keys
        _assert_same_tensors(model.state_dict(), trained)


def test_load_weights_errors_name_the_file_and_keys(tmp_path):
    from safetensors.torch import save_file

    state = TinyDenoiser().state_dict()
    good = tmp_path / "good.safetensors"
    save_file(state, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match=rf"{truncated}: not a valid safetensors file \(truncated or corrupt"):
        load_weights(TinyDenoiser(), truncated)
    pickled = tmp_path / "pickle.safetensors"
    torch.save(state, pickled)
    with pytest.raises(ValueError, match=rf"{pickled}: expected a safetensors file, found a zip archive"):
        load_weights(TinyDenoiser(), pickled)
    partial = tmp_path / "partial.safetensors"
    save_file({**{k: v for k, v in state.items() if k != "conv2.bias"}, "extra": torch.zeros(1)}, partial)
    with pytest.raises(ValueError, match=r"missing keys \[conv2\.bias\], unexpected keys \[extra\]"):
        load_weights(TinyDenoiser(), partial)
    assert load_weights(TinyDenoiser(), partial, strict=False).missing_keys == ["conv2.bias"]
    with pytest.raises(ValueError, match=r"conv1\.weight: the model expects \(4, 1, 3, 3\), the file has \(8, 1"):
        load_weights(TinyDenoiser(width=4), good, strict=False)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_weights(TinyDenoiser(), tmp_path / "absent.safetensors")


def test_after_step_hooks_run_after_every_step(tmp_path):
    class NonNegativeOutput(TinyDenoiser):  # e.g. an input-convex net keeping its weights >= 0
        def after_step(self) -> None:
            self.conv2.weight.clamp_(min=0)

    torch.manual_seed(0)
    model, calls = NonNegativeOutput(), []
    assert (model.conv2.weight < 0).any()
    config = TrainConfig(steps=5, batch_size=8, output=tmp_path, progress=False)
    Trainer(model, fixed_loss, NoisyImages(16, seed=1), config=config, after_step=calls.append).fit()
    assert len(calls) == 5 and all(c is model for c in calls) and (model.conv2.weight >= 0).all()


def test_bad_losses_and_configs_are_reported(tmp_path):
    data = NoisyImages(16, seed=1)
    config = TrainConfig(steps=3, batch_size=4, output=tmp_path / "a", progress=False)
    with pytest.raises(FloatingPointError, match="training loss is nan at step 1"):
        Trainer(TinyDenoiser(), lambda m, b: fixed_loss(m, b) * float("nan"), data, config=config).fit()
    config = dataclasses.replace(config, output=tmp_path / "b")
    with pytest.raises(ValueError, match="loss_fn: expected a scalar tensor"):
        Trainer(TinyDenoiser(), lambda m, b: m(b[0]), data, config=config).fit()
    for bad, match in (({"steps": 0}, r"config\.steps: expected an integer >= 1, got 0"),
                       ({"scheduler": "plateau"}, r"config\.scheduler: expected one of"),
                       ({"scheduler": "step"}, r"config\.lr_step: expected an integer >= 1, got 0"),
                       ({"lr": -1.0}, r"config\.lr: expected a positive number, got -1\.0")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**{"steps": 3, "batch_size": 4, "output": tmp_path, **bad})
    with pytest.raises(ValueError, match="train_set: expected at least batch_size=32 items, found 16"):
        Trainer(TinyDenoiser(), fixed_loss, data, config=dataclasses.replace(config, batch_size=32)).fit()


def test_data_order_is_a_function_of_seed_and_epoch():
    epoch = [i for step in range(3) for i in step_indices(10, 3, seed=5, step=step)]
    assert len(set(epoch)) == 9  # one epoch: 3 batches of distinct items, the 10th item dropped
    assert step_indices(10, 3, seed=5, step=4) == step_indices(10, 3, seed=5, step=4)
    assert step_indices(10, 3, seed=5, step=0) != step_indices(10, 3, seed=5, step=3)  # a new epoch
    assert step_indices(10, 3, seed=5, step=0) != step_indices(10, 3, seed=6, step=0)


def test_model_card(tmp_path):
    path = write_model_card(tmp_path / "card.json", data={"folder": "phantoms", "items": 64}, steps=60,
                            metrics={"psnr": 25.0}, command=["recon", "train"], architecture="TinyDenoiser")
    card = json.loads(path.read_text())
    assert card["data"] == {"folder": "phantoms", "items": 64} and card["steps"] == 60
    assert card["metrics"] == {"psnr": 25.0} and card["command"] == ["recon", "train"]
    assert card["architecture"] == "TinyDenoiser" and card["software"]["torch"] == torch.__version__
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]
    with pytest.raises(ValueError, match="steps: expected a non-negative integer"):
        write_model_card(tmp_path / "bad.json", data="x", steps=-1, metrics={}, command="")
