"""The settings of a training run and what it returns (``recon.training.trainer``; re-exported there)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["TrainConfig", "TrainSummary"]


@dataclass
class TrainConfig:
    """Settings of a training run.

    Attributes:
        steps: optimiser steps in total (a resumed run continues to this step).
        batch_size: the global batch (split evenly across ``torchrun`` processes).
        output: the run's folder (log, checkpoints, summary).
        lr: Adam's learning rate. optimizer: "adam" (the only one for now).
        scheduler: None, "step" (lr times ``lr_gamma`` every ``lr_step`` steps), "cosine" (to 0 at ``steps``).
        grad_clip: max global gradient norm, or None. amp: float16 autocast and grad scaling on CUDA only.
        ema: decay of an exponential moving average of the weights (``torch.optim.swa_utils``), e.g.
            0.999, or None; with it, validation and ``Trainer.trained`` use the averaged weights.
        val_every, checkpoint_every, log_every: periods in steps (0: only at the last step). The
            validation set is also evaluated once before the first step.
        keep_checkpoints: newest checkpoints kept (0 keeps all). seed: of the data order and the RNGs.
        device: e.g. "cpu", "cuda"; None picks cuda:LOCAL_RANK when CUDA is available.
        monitor, mode: the validation metric that defines the best step, "max" or "min"; None means
            the first metric val_fn returns and "max", or "loss" and "min" with the default val_fn.
        progress: tqdm bar on rank 0. tensorboard: also log there when tensorboard is importable.
    """

    steps: int
    batch_size: int
    output: str | os.PathLike
    lr: float = 1e-3
    optimizer: str = "adam"
    scheduler: str | None = None
    lr_step: int = 0
    lr_gamma: float = 0.1
    grad_clip: float | None = None
    amp: bool = False
    ema: float | None = None
    val_every: int = 0
    checkpoint_every: int = 0
    log_every: int = 1
    keep_checkpoints: int = 2
    seed: int = 0
    device: str | None = None
    monitor: str | None = None
    mode: str | None = None
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        lows = {"steps": 1, "batch_size": 1, "lr_step": int(self.scheduler == "step"), "val_every": 0,
                "checkpoint_every": 0, "log_every": 0, "keep_checkpoints": 0, "seed": 0}
        for name, low in lows.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"config.{name}: expected an integer >= {low}, got {value!r}")
        choices = {"optimizer": ("adam",), "scheduler": (None, "step", "cosine"), "mode": (None, "min", "max")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config.{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        for name in ("lr", "lr_gamma") + (("grad_clip",) if self.grad_clip is not None else ()):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ValueError(f"config.{name}: expected a positive number, got {getattr(self, name)!r}")
        if self.ema is not None and (isinstance(self.ema, bool) or not isinstance(self.ema, (int, float))
                                     or not 0 < self.ema < 1):
            raise ValueError(f"config.ema: expected a decay in (0, 1) or None, got {self.ema!r}")


@dataclass
class TrainSummary:
    """What ``Trainer.fit`` returns (also ``output/summary.json``; each checkpoint holds one).

    Attributes:
        steps: the last step run. start_step: where this call started (0 or the checkpoint's step).
        loss: the last logged training loss (mean over processes); None before the first step.
        last_metrics, best_metrics: validation metrics at the last and the best validation;
            best_step: the step of the best one (0: before training).
        seconds, total_seconds: wall time of this call, of the whole run. checkpoint: the last one's folder.
    """

    steps: int = 0
    start_step: int = 0
    loss: float | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None
    seconds: float = 0.0
    total_seconds: float = 0.0
    checkpoint: str = ""
    world_size: int = 1
