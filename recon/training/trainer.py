"""One training loop for every learned component (LPN, score models, SV-TV weight nets, unrolled ISTA).

.. math:: \\theta_{k+1} = \\mathrm{Adam}(\\theta_k, \\nabla_\\theta \\, \\mathrm{loss}(\\theta_k, B_k))

The global batch ``B_k`` of step ``k`` (0-based) depends on ``(seed, k)`` only: epoch
``e = k // (len(train_set) // batch_size)`` draws a permutation from ``(seed, e)`` and step ``k``
takes its next ``batch_size`` items (each epoch's last partial batch is dropped). Under ``torchrun``
rank ``r`` of ``W`` takes the ``r``-th contiguous ``batch_size / W`` items of it. Checkpoints
(``recon.training.checkpoint``) hold model, optimiser, scheduler, grad scaler, step, metrics and the RNGs of
every rank: a run stopped at any step and resumed ends with bit-identical weights on the CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from recon.training import checkpoint as ckpt
from recon.training.train_config import TrainConfig, TrainSummary

__all__ = ["TrainConfig", "TrainSummary", "Trainer", "step_indices"]

#: config fields a resumed run must share with its checkpoint (they shape the trajectory)
_FIXED = ("batch_size", "lr", "optimizer", "scheduler", "lr_step", "lr_gamma", "grad_clip", "amp", "seed", "ema")


def _mix(*numbers: int) -> int:
    """A 63-bit seed mixed from integers (the same in every process and Python version)."""
    return int(hashlib.sha256(" ".join(map(str, numbers)).encode()).hexdigest()[:15], 16)


def step_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Dataset indices of the global batch of ``step`` (0-based), a function of ``(seed, epoch)``.

    Example:
        >>> a = step_indices(10, 4, seed=0, step=0) + step_indices(10, 4, seed=0, step=1)
        >>> len(set(a)), step_indices(10, 4, seed=0, step=2) == step_indices(10, 4, seed=0, step=2)
        (8, True)
    """
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"train_set: expected at least batch_size={batch_size} items, found {n}")
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch)))
    return order[k * batch_size:(k + 1) * batch_size].tolist()


def _to(batch: Any, device: torch.device) -> Any:
    """``batch`` (tensors in tuples, lists, dicts, namedtuples) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        items = [_to(v, device) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch


def _sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the torchrun processes, in place (unchanged without a job)."""
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


@contextmanager
def _process_group(device: torch.device):
    """Yield ``(rank, world size)`` of the torchrun job, joined here if needed (gloo/nccl); else (0, 1)."""
    created = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if created:
            dist.barrier()  # no rank tears gloo down while another still talks (measured: abort -6 under load)
    finally:
        if created:
            dist.destroy_process_group()


class Trainer:
    """Train ``model`` by minimising ``loss_fn`` with Adam; validate, log, checkpoint, resume.

    Args:
        model: the module to train (moved to the config's device).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, a mean over the batch's items. Under
            ``torchrun`` ``model`` is the ``DistributedDataParallel`` wrapper: call ``model(...)``.
        train_set: a map-style dataset; items are collated with ``default_collate``.
        val_set: optional validation dataset, evaluated in eval mode without gradients, leaving the
            RNG states as they were (validating does not change the training run).
        val_fn: ``val_fn(model, batch) -> {name: float}``, each a mean over the batch (e.g. PSNR by
            ``recon.metrics.psnr``), averaged over the validation set weighted by batch size. None:
            ``{"loss": loss_fn(model, batch)}``.
        config: a ``TrainConfig``.
        after_step: called as ``after_step(model)`` after every optimiser step, without gradients.
            A model's own ``model.after_step()`` (e.g. an input-convex net clamping its weights to
            be non-negative) is called before it, always.
        lr_at: ``lr_at(step) -> float``, the learning rate of step ``step`` (1-based), set before
            the step; for schedules that are a function of the step only (e.g. the LPN's
            ``GammaSchedule``), so a resumed run follows them exactly. Excludes ``config.scheduler``.
        step_loss: call ``loss_fn(model, batch, step)`` (losses that change with the step).

    Example:
        >>> import tempfile, torch
        >>> from torch.utils.data import TensorDataset
        >>> x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
        >>> data = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]))
        >>> loss = lambda model, b: torch.nn.functional.mse_loss(model(b[0]), b[1])
        >>> config = TrainConfig(steps=100, batch_size=8, lr=0.1, output=tempfile.mkdtemp(), progress=False)
        >>> summary = Trainer(torch.nn.Linear(3, 1), loss, data, val_set=data, config=config).fit()
        >>> summary.steps, summary.best_metrics["loss"] < 1e-3
        (100, True)
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, train_set: Sequence,
                 val_set: Sequence | None = None, val_fn: Callable | None = None, *, config: TrainConfig,
                 after_step: Callable[[torch.nn.Module], Any] | None = None,
                 lr_at: Callable[[int], float] | None = None, step_loss: bool = False) -> None:
        for name, value, kind in (("model", model, torch.nn.Module), ("config", config, TrainConfig)):
            if not isinstance(value, kind):
                raise TypeError(f"{name}: expected a {kind.__name__}, got {type(value).__name__}")
        for name, value in (("loss_fn", loss_fn), ("val_fn", val_fn or len), ("after_step", after_step or len)):
            if not callable(value):
                raise TypeError(f"{name}: expected a callable, got {type(value).__name__}")
        if lr_at is not None and (not callable(lr_at) or config.scheduler is not None):
            raise ValueError(f"lr_at: expected a callable and config.scheduler None, got {type(lr_at).__name__} "
                             f"with scheduler {config.scheduler!r}")
        if val_fn is not None and val_set is None:
            raise ValueError("val_fn: given without a val_set to evaluate it on")
        self.model, self.loss_fn, self.train_set, self.val_set = model, loss_fn, train_set, val_set
        self.val_fn = val_fn or (lambda m, batch: {"loss": float(loss_fn(m, batch))})
        self.config, self.after_step, self.output = config, after_step, Path(config.output)
        self.lr_at, self.step_loss = lr_at, bool(step_loss)
        default = val_fn is None and config.monitor is None  # the validation loss: smaller is better
        self.monitor = config.monitor or ("loss" if default else None)
        self.mode = config.mode or ("min" if default else "max")

    def fit(self, resume: bool = False) -> TrainSummary:
        """Train to ``config.steps``. With ``resume=True`` continue from ``output/latest.json`` when
        there is one, else start fresh; a fresh start refuses a folder that holds a checkpoint."""
        started, cfg = time.perf_counter(), self.config
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        with _process_group(self.device) as (self.rank, self.world):
            self._build()
            if not (resume and self._resume()):
                self._fresh()
            start, bar = self.run.steps, tqdm(total=cfg.steps, initial=self.run.steps, desc="train", unit="step",
                                              dynamic_ncols=True, disable=not (cfg.progress and self.rank == 0))
            while self.run.steps < cfg.steps:
                self.run.steps += 1
                self._step(self.run.steps, bar)
            bar.close()
            if self.log is not None:
                self.log.close()
            self.run.start_step, self.run.seconds = start, time.perf_counter() - started
            self.run.total_seconds = time.perf_counter() - self.t0
            if self.rank == 0:
                ckpt.write_json(self.output / "summary.json", dataclasses.asdict(self.run))
            return dataclasses.replace(self.run)

    def _build(self) -> None:
        cfg, world = self.config, self.world
        if cfg.batch_size % world:
            raise ValueError(f"config.batch_size: expected a multiple of the {world} processes, got {cfg.batch_size}")
        if self.val_set is not None and len(self.val_set) < world:
            raise ValueError(f"val_set: expected at least one item per process ({world}), found {len(self.val_set)}")
        self.module = self.model.to(self.device)
        self.net = self.module if world == 1 else DistributedDataParallel(
            self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler
        self.scheduler = (sched.StepLR(self.optimizer, cfg.lr_step, cfg.lr_gamma) if cfg.scheduler == "step" else
                          sched.CosineAnnealingLR(self.optimizer, cfg.steps) if cfg.scheduler == "cosine" else None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        swa = torch.optim.swa_utils
        self.ema = None if cfg.ema is None else swa.AveragedModel(
            self.module, multi_avg_fn=swa.get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        self.stateful = {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler,
                         "ema": self.ema}
        self.run, self.t0, self.log = TrainSummary(world_size=world), time.perf_counter(), None

    def _fresh(self) -> None:
        if ckpt.latest_checkpoint(self.output) is not None:
            raise FileExistsError(f"config.output: {self.output} already holds a checkpoint; pass "
                                  "resume=True to continue it, or choose a new folder")
        if self.rank == 0:
            ckpt.remove_stale(self.output)
        seed = _mix(self.config.seed, self.rank)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        metrics = self._validate() if self.val_set is not None else None
        self.log = ckpt.TrainingLog(self.output, list(metrics or {}), 0, self.config.tensorboard) \
            if self.rank == 0 else None
        if metrics is not None:
            self._record(0, None, metrics)

    def _resume(self) -> bool:
        """Restore the latest checkpoint; False when there is none."""
        # a cosine scheduler and an lr_at/step loss (e.g. the LPN's GammaSchedule) are laid out over config.steps
        fixed = _FIXED + (("steps",) if self.config.scheduler == "cosine" or self.lr_at or self.step_loss else ())
        expect = {name: getattr(self.config, name) for name in fixed}
        state = ckpt.restore_checkpoint(self.output, self.module, self.stateful, expect)
        if state is None:
            return False
        if state["step"] > self.config.steps:
            raise ValueError(f"config.steps: expected at least the checkpoint's step {state['step']}, "
                             f"got {self.config.steps}")
        summary = state["summary"]  # non-finite metrics were stored as the strings "nan", "inf"
        for key in ("last_metrics", "best_metrics"):
            summary[key] = {k: float(v) for k, v in summary[key].items()}
        self.run = dataclasses.replace(TrainSummary(**summary), world_size=self.world)
        self.t0 -= self.run.total_seconds
        if len(state["rng"]) == self.world:
            ckpt.restore_rng(state["rng"][self.rank])
        else:
            warnings.warn(f"{self.output}: checkpoint saved by {len(state['rng'])} processes, resumed by {self.world}: "
                          "the RNGs are re-seeded, so the run is not bit-identical", stacklevel=3)
            torch.manual_seed(_mix(self.config.seed, self.rank, self.run.steps))
        if self.rank == 0:
            ckpt.remove_stale(self.output)
            self.log = ckpt.TrainingLog(self.output, list(self.run.last_metrics), self.run.steps,
                                        self.config.tensorboard)
        return True

    @property
    def trained(self) -> torch.nn.Module:
        """The weights to validate and keep: the moving average with ``config.ema``, else the model."""
        return self.ema.module if self.ema is not None else self.module

    def _batch(self, step: int) -> Any:
        cfg, rank, local = self.config, self.rank, self.config.batch_size // self.world
        indices = step_indices(len(self.train_set), cfg.batch_size, cfg.seed, step - 1)
        return _to(default_collate([self.train_set[i] for i in indices[rank * local:(rank + 1) * local]]),
                   self.device)

    def _step(self, step: int, bar) -> None:
        cfg, batch = self.config, self._batch(step)
        if self.lr_at is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = float(self.lr_at(step))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            loss = self.loss_fn(self.net, batch, step) if self.step_loss else self.loss_fn(self.net, batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"loss_fn: expected a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        self.scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        with torch.no_grad():
            if callable(getattr(self.module, "after_step", None)):
                self.module.after_step()
            if self.after_step is not None:
                self.after_step(self.module)
            if self.ema is not None:
                self.ema.update_parameters(self.module)
        logged = self._log_loss(step, loss, lr, bar)
        metrics = self._validate() if self.val_set is not None and _due(step, cfg.val_every, cfg.steps) else None
        if logged or metrics is not None:
            self._record(step, lr if logged else None, metrics)
        if _due(step, cfg.checkpoint_every, cfg.steps):
            self._save(step)

    def _log_loss(self, step: int, loss: torch.Tensor, lr: float, bar) -> bool:
        bar.update(1)
        if not _due(step, self.config.log_every, self.config.steps):
            return False
        self.run.loss = float(_sum(loss.detach().float().reshape(1).clone()) / self.world)
        if not np.isfinite(self.run.loss):
            raise FloatingPointError(f"loss_fn: the training loss is {self.run.loss} at step {step}; lower "
                                     f"config.lr (now {lr:g}) or set config.grad_clip")
        bar.set_postfix(loss=f"{self.run.loss:.4g}", refresh=False)
        return True

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """Validation metrics (of items rank, rank + W, ... summed over ranks); updates last and best."""
        rng, local = ckpt.capture_rng(), max(self.config.batch_size // self.world, 1)
        share, totals, model = list(range(self.rank, len(self.val_set), self.world)), {}, self.trained
        model.eval()
        try:
            for start in range(0, len(share), local):
                chunk = share[start:start + local]
                batch = _to(default_collate([self.val_set[i] for i in chunk]), self.device)
                for key, value in self.val_fn(model, batch).items():
                    totals[key] = totals.get(key, 0.0) + float(value) * len(chunk)
        finally:
            model.train()
            ckpt.restore_rng(rng)
        keys = list(totals)  # in val_fn's order (the same on every rank)
        sums = _sum(torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=self.device))
        metrics = self.run.last_metrics = dict(zip(keys, (sums / len(self.val_set)).tolist()))
        self.monitor = self.monitor or keys[0]
        if self.monitor not in metrics:
            raise ValueError(f"config.monitor: expected one of the validation metrics {keys}, got {self.monitor!r}")
        new, best = metrics[self.monitor], self.run.best_metrics.get(self.monitor)
        if best is None or (new > best if self.mode == "max" else new < best):
            self.run.best_metrics, self.run.best_step = dict(metrics), self.run.steps
        return metrics

    def _record(self, step: int, lr: float | None, metrics: dict | None) -> None:
        self.run.total_seconds = time.perf_counter() - self.t0
        if self.rank != 0:
            return
        loss = self.run.loss if lr is not None else None
        self.log.write(step, loss, lr, self.run.total_seconds, metrics)

    def _save(self, step: int) -> None:
        rngs = [ckpt.capture_rng()] * self.world  # every rank's RNG states, gathered on all ranks
        if self.world > 1:
            dist.all_gather_object(rngs, rngs[0])
        if self.rank != 0:
            return
        self.run.total_seconds = time.perf_counter() - self.t0
        self.run.checkpoint = os.fspath(self.output / ckpt.CHECKPOINTS / f"step_{step:08d}")
        state = {"config": dataclasses.asdict(self.config), "summary": dataclasses.asdict(self.run), "rng": rngs}
        ckpt.save_checkpoint(self.output, step, self.module, self.stateful, state, keep=self.config.keep_checkpoints)


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)
