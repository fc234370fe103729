"""Shared pieces of the trainer tests: a tiny denoiser, noisy 16x16 images, losses, and a script.

Run as a script (``python -m tests.trainer_helpers --output DIR ...``, also under ``torchrun``) it
trains the tiny denoiser with the options below and prints the summary as JSON on rank 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from recon.metrics import psnr
from recon.training import checkpoint
from recon.training.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
SIZE = 16


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as in the script runs: CPU results are then reproducible bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyDenoiser(torch.nn.Module):
    """Two 3x3 convolutions with a ReLU between: ``(B, 1, H, W) -> (B, 1, H, W)``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


class NoisyImages(Dataset):
    """``n`` smooth random images in [0, 1] (4x4 noise upsampled bilinearly) with fixed Gaussian noise;
    items are ``(noisy, clean)``, each ``(1, 16, 16)``. With ``augment=True`` an item is flipped when
    Python's ``random`` says so and its noise scaled by numpy's global RNG, so that training draws from
    every global RNG."""

    def __init__(self, n: int, seed: int, sigma: float = 0.1, augment: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        coarse = torch.rand(n, 1, 4, 4, generator=g)
        self.clean = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
        self.noisy = self.clean + sigma * torch.randn(self.clean.shape, generator=g)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        clean, noisy = self.clean[i], self.noisy[i]
        if self.augment:
            if random.random() < 0.5:
                clean, noisy = clean.flip(-1), noisy.flip(-1)
            noisy = clean + (noisy - clean) * float(np.random.uniform(0.5, 1.5))
        return noisy, clean


def fixed_loss(model, batch) -> torch.Tensor:
    """MSE of the denoised fixed-noise images (no randomness)."""
    noisy, clean = batch
    return F.mse_loss(model(noisy), clean)


def fresh_noise_loss(model, batch) -> torch.Tensor:
    """MSE of the denoised item plus fresh noise from torch's global RNG."""
    noisy, clean = batch
    return F.mse_loss(model(noisy + 0.05 * torch.randn_like(noisy)), clean)


def val_metrics(model, batch) -> dict[str, float]:
    noisy, clean = batch
    out = model(noisy)
    return {"psnr": float(psnr(out, clean, data_range=1.0).mean()), "mse": float(F.mse_loss(out, clean))}


def make_trainer(output, steps: int, variant: str = "random", after_step=None, seed: int = 0,
                 **config) -> Trainer:
    """The tiny denoiser (initialised from torch seed ``seed``) on 64 training and 16 validation
    images, batch 8 unless ``config`` says otherwise. ``variant`` "random" draws from every RNG
    while training, "fixed" from none."""
    torch.manual_seed(seed)
    randomised = variant == "random"
    return Trainer(TinyDenoiser(), fresh_noise_loss if randomised else fixed_loss,
                   NoisyImages(64, seed=1, augment=randomised), NoisyImages(16, seed=2), val_metrics,
                   config=TrainConfig(steps=steps, output=output, **{"batch_size": 8, "progress": False, **config}),
                   after_step=after_step)


def train_cli(folder, task: str, config: dict, steps: int, batch_size: int = 4, data: str = "ellipses"):
    """``recon train TASK --data DATA`` with ``config`` written to ``folder``; returns the run folder."""
    import json

    from apps.cli import main as cli

    path = folder / "config.json"
    path.write_text(json.dumps(config))
    out = folder / "run"
    assert cli(["train", task, "--data", data, "--config", str(path), "--output", str(out),
                "--steps", str(steps), "--batch-size", str(batch_size), "--no-progress"]) == 0
    return out


def weights(output) -> dict[str, torch.Tensor]:
    """The final weights of a training output folder, read through ``load_weights``."""
    model = TinyDenoiser()
    checkpoint.load_weights(model, output)
    return model.state_dict()


def _die_during_save(call: int) -> None:
    """Make the ``call``-th safetensors write leave a half-written file and SIGKILL this process."""
    original, calls = checkpoint.save_file, []

    def save_file(tensors, path, metadata=None):
        calls.append(path)
        original(tensors, path, metadata=metadata)
        if len(calls) == call:
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[:len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save_file = save_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--variant", choices=("random", "fixed"), default="random")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after each step")
    parser.add_argument("--kill-in-save", type=int, default=0, help="SIGKILL during this checkpoint write")
    parser.add_argument("--config", default="{}", help="more TrainConfig fields, as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.kill_in_save:
        _die_during_save(args.kill_in_save)
    pause = (lambda model: time.sleep(args.sleep)) if args.sleep else None
    trainer = make_trainer(args.output, args.steps, args.variant, after_step=pause, **json.loads(args.config))
    summary = trainer.fit(resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(dataclasses.asdict(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
