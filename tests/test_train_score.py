"""`recon train score`: a diffusion prior trained by denoising score matching, its card, EMA and resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from apps.cli import main
from priors.diffusion import DiffusionPrior
from recon.models import load_model
from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)

CONFIG = """[data]
count = 12
size = 64
[model]
channels = [8, 16]
embedding = 16
sigma_data = 0.5
sigma_range = [0.002, 160.0]
[task]
patch_size = 32
patches_per_image = 4
[train]
batch_size = 8
lr = 2e-3
ema = 0.9
val_every = 30
checkpoint_every = 30
"""


def _train(tmp_path, out: str, steps: int, *extra) -> int:
    config = tmp_path / "score.toml"
    config.write_text(CONFIG)
    return main(["train", "score", "--data", "ellipses", "--output", str(tmp_path / out), "--config", str(config),
                 "--steps", str(steps), "--no-progress", *extra])


def test_recon_train_score_writes_a_diffusion_prior_that_learns_to_denoise(tmp_path):
    assert _train(tmp_path, "run", 60) == 0
    with open(tmp_path / "run" / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["val_psnr@0.1"]]
    first, last = float(rows[0]["val_psnr@0.1"]), float(rows[-1]["val_psnr@0.1"])
    assert last > first + 1.0, (first, last)  # 60 steps of a 0.1 M-parameter net: ~3 dB measured
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["task"] == "score" and card["score"]["sigma_range"] == [0.002, 160.0]
    assert set(card["metrics"]) == {"psnr@0.01", "psnr@0.02", "psnr@0.05", "psnr@0.1"}
    prior = load_model(tmp_path / "run", task="score").network
    assert isinstance(prior, DiffusionPrior) and prior.sigma_range == (0.002, 160.0) and prior.sigma_data == 0.5
    x = torch.rand(2, 1, 24, 20)
    assert prior.denoise(x, 0.1).shape == x.shape
    with pytest.raises(ValueError, match="holds a 'score' model; expected a 'lpn' model"):
        load_model(tmp_path / "run", task="lpn")


@pytest.mark.slow
def test_a_resumed_score_run_ends_with_the_same_averaged_weights(tmp_path):
    assert _train(tmp_path, "straight", 60) == 0
    assert _train(tmp_path, "resumed", 30) == 0
    assert _train(tmp_path, "resumed", 60, "--resume") == 0
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema = load_file(str(tmp_path / "straight" / "checkpoints" / "step_00000060" / "model.safetensors"))
    assert any(not torch.equal(ema[k], a[k]) for k in a)  # the card's weights are the average, not the last step


def test_the_mixed_generator_gives_half_ellipses_half_coule():
    from apps.train import source_images
    from data.training import CouleLikeDataset, EllipsesDataset

    images = source_images("ellipses+coule", {"count": 5, "size": 32, "seed": 3}, progress=False)
    assert images.shape == (5, 1, 32, 32)
    torch.testing.assert_close(images[0], EllipsesDataset(3, size=32, seed=3)[0].float())
    torch.testing.assert_close(images[3], CouleLikeDataset(2, size=32, seed=4)[0].float())
