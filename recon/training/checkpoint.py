"""Checkpoints, weights and model cards that load without executing code.

A training output folder (written by ``recon.training.trainer.Trainer``)::

    latest.json                      {"step": k, "checkpoint": "checkpoints/step_0000000k"}, written last
    checkpoints/step_0000000k/       one checkpoint, renamed into place complete
        model.safetensors            the model's state dict (safetensors: tensors only, no code)
        optimizer.pt                 optimiser / scheduler / grad-scaler state, read back with
                                     ``torch.load(weights_only=True)`` (tensors and plain data only)
        state.json                   step, config, metrics and every RNG state

A checkpoint is written into a hidden temporary folder renamed into place with ``os.replace``;
``latest.json`` is replaced (atomically) only afterwards. A process killed at any moment leaves
``latest.json`` naming a complete checkpoint, plus at most hidden ``.*.tmp`` entries and newer
checkpoint folders, which nothing reads and ``remove_stale`` (on resume) deletes. Modes are a plain
``mkdir``'s and ``open``'s (``data.files.readable``).
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data.files import atomic_path, readable
from data.provenance import json_safe, provenance

__all__ = ["load_weights", "write_model_card", "save_checkpoint", "restore_checkpoint", "load_checkpoint",
           "latest_checkpoint", "remove_stale", "capture_rng", "restore_rng", "write_json", "TrainingLog"]

LATEST, CHECKPOINTS = "latest.json", "checkpoints"
MODEL, OPTIMIZER, STATE = "model.safetensors", "optimizer.pt", "state.json"
#: leading bytes of formats that unpickle (and so may run code) when loaded with torch.load / pickle
_PICKLE_MAGIC = {b"PK\x03\x04": "a zip archive (torch.save)", b"\x80": "a pickle"}
_SOFTWARE = ("package", "version", "python", "torch", "numpy", "astra", "platform")


def write_json(path: str | os.PathLike, record: Any) -> Path:
    """``record`` (made JSON-safe with ``data.provenance.json_safe``) as JSON at ``path``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(json_safe(record), f, indent=1, allow_nan=False)
    return Path(path)


def _read_json(path: Path, what: str) -> dict:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no such file {path}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: expected a JSON {what}, the file does not parse ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(record).__name__}")
    return record


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU; errors name the file and what is wrong."""
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header ("{"). Its first byte
    # can be 0x80 (a header of 128 + 256 k bytes), so the pickle test applies only to other files.
    safetensors_like = len(head) == 9 and head[8:9] == b"{"
    for magic, kind in _PICKLE_MAGIC.items():
        if head.startswith(magic) and not safetensors_like:
            raise ValueError(
                f"{path}: expected a safetensors file, found {kind}; it is not loaded because unpickling "
                "can run code. Convert it once, in a session you trust, with safetensors.torch.save_file")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a valid safetensors file (truncated or corrupt?): {err}") from None


def _list(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def _check_keys(path: Path, expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                strict: bool) -> None:
    missing, unexpected = expected.keys() - found.keys(), found.keys() - expected.keys()
    if strict and (missing or unexpected):
        raise ValueError(f"{path}: the weights do not match the model: missing keys [{_list(missing)}], "
                         f"unexpected keys [{_list(unexpected)}] (load_weights(..., strict=False) skips them)")
    wrong = [f"{k}: the model expects {tuple(expected[k].shape)}, the file has {tuple(found[k].shape)}"
             for k in sorted(expected.keys() & found.keys()) if expected[k].shape != found[k].shape]
    if wrong:
        raise ValueError(f"{path}: shape mismatch for {len(wrong)} tensor(s): " + "; ".join(wrong[:8]))


def load_weights(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True):
    """Load safetensors weights into ``model`` without executing any code from the file.

    Args:
        model: the module to fill (its parameters and buffers keep their device; values are cast
            to their dtype).
        path: a ``.safetensors`` file, a checkpoint folder, or a training output folder (its
            ``latest.json`` checkpoint).
        strict: if True, missing and unexpected keys are errors; if False they are skipped and
            returned. Mismatched shapes are always errors.

    Returns:
        ``torch.nn.modules.module._IncompatibleKeys(missing_keys, unexpected_keys)``.

    Raises:
        FileNotFoundError: no such file. ValueError: a pickle or torch.save file, a truncated or
        corrupt file, missing/unexpected keys (strict) or shape mismatches; the message names the
        file and the keys.

    Example:
        >>> import os, tempfile, torch
        >>> from safetensors.torch import save_file
        >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save_file({"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, p)
        >>> net = torch.nn.Linear(3, 2)
        >>> load_weights(net, p)
        <All keys matched successfully>
        >>> net.weight.sum().item()
        6.0
    """
    path = Path(path)
    if path.is_dir():  # a checkpoint folder, or a training output folder (its latest checkpoint)
        path = (latest_checkpoint(path) or path) / MODEL
    tensors = _read_safetensors(path)
    _check_keys(path, model.state_dict(), tensors, strict)
    return model.load_state_dict(tensors, strict=strict)


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng() -> dict:
    """The states of Python's ``random``, numpy's global RNG, torch's CPU and (when present) CUDA
    generators, as JSON-safe data (``restore_rng`` sets them back).

    Generators created by user code (``np.random.default_rng``, ``torch.Generator``) are not global
    and are not captured.

    Example:
        >>> import torch
        >>> state = capture_rng()
        >>> a = torch.rand(3)
        >>> restore_rng(state)
        >>> torch.equal(a, torch.rand(3))
        True
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, base64.b64encode(keys.astype("<u4").tobytes()).decode("ascii"),
                       int(pos), int(has_gauss), float(cached)],
             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: Mapping) -> None:
    """Set the RNG states captured by ``capture_rng``; CUDA states only when the device count matches."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.frombuffer(base64.b64decode(keys), dtype="<u4").astype(np.uint32),
                         pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])


def _checkpoints(output: Path) -> dict[int, Path]:
    """The checkpoint folders under ``output/checkpoints``, by step (ascending)."""
    found = {int(e.name[5:]): e for e in (output / CHECKPOINTS).glob("step_*") if e.name[5:].isdigit()}
    return dict(sorted(found.items()))


def save_checkpoint(output: str | os.PathLike, step: int, model: torch.nn.Module, stateful: Mapping,
                    state: Mapping, keep: int = 0) -> Path:
    """Write the checkpoint of ``step`` into ``output/checkpoints``, then point ``latest.json`` at it.

    Written as the module says; then checkpoints beyond the newest ``keep`` are removed (0 keeps all).

    Args:
        output: the training output folder.
        step: steps done; the folder is ``checkpoints/step_<step, 8 digits>`` and must not exist yet.
        model: its state dict goes to ``model.safetensors`` (tensors copied to the CPU).
        stateful: ``{name: object with state_dict()}`` (optimiser, scheduler, grad scaler; None
            entries skipped), stored together in ``optimizer.pt``.
        state: JSON-safe data for ``state.json`` (config, metrics, RNG states); ``step`` is added.

    Returns:
        The checkpoint folder.

    Example:
        >>> import tempfile, torch
        >>> out, net = tempfile.mkdtemp(), torch.nn.Linear(2, 1)
        >>> opt = torch.optim.Adam(net.parameters())
        >>> folder = save_checkpoint(out, 7, net, {"optimizer": opt}, {"note": "demo"})
        >>> folder.name, restore_checkpoint(out, net, {"optimizer": opt})["note"]
        ('step_00000007', 'demo')
    """
    output = Path(output)
    folder = output / CHECKPOINTS / f"step_{step:08d}"
    if folder.exists():
        raise FileExistsError(f"step: expected a new checkpoint, found an existing {folder}")
    weights = model.state_dict()
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"model: expected a state dict of tensors only (safetensors); non-tensor entries: {_list(bad)}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    readable(tmp, directory=True)
    try:  # clones: safetensors refuses tensors that share memory (tied weights)
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}, tmp / MODEL,
                  metadata={"format": "pt"})
        readable(tmp / MODEL)
        torch.save({k: v.state_dict() for k, v in stateful.items() if v is not None}, tmp / OPTIMIZER)
        write_json(tmp / STATE, {**state, "step": int(step)})
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(output / LATEST, {"step": int(step), "checkpoint": folder.relative_to(output).as_posix()})
    remove_stale(output, keep)
    return folder


def load_checkpoint(folder: str | os.PathLike) -> dict:
    """Read a checkpoint folder: ``{"weights": {name: tensor}, "stateful": dict, "state": dict}``,
    all on the CPU, with no code executed (safetensors, ``torch.load(weights_only=True)``, JSON)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder: no such checkpoint folder {folder}")
    try:
        stateful = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"folder: no {OPTIMIZER} in checkpoint {folder}") from None
    except Exception as err:  # torch raises several types for bad archives and unsafe globals
        raise ValueError(f"{folder / OPTIMIZER}: not a loadable optimiser state ({err})") from None
    return {"weights": _read_safetensors(folder / MODEL), "stateful": stateful,
            "state": _read_json(folder / STATE, "checkpoint state")}


def restore_checkpoint(output: str | os.PathLike, model: torch.nn.Module, stateful: Mapping,
                       expect: Mapping | None = None) -> dict | None:
    """Load ``output``'s latest checkpoint into ``model`` and the ``stateful`` objects (as passed to
    ``save_checkpoint``) and return its ``state.json``; None when ``output`` has no checkpoint.
    ``expect``: values the checkpoint's ``state["config"]`` must hold, checked before loading."""
    folder = latest_checkpoint(output)
    if folder is None:
        return None
    saved = load_checkpoint(folder)
    config = saved["state"].get("config", {})
    for name in (k for k, v in (expect or {}).items() if config.get(k) != v):
        raise ValueError(f"config.{name}: the checkpoint {folder} was trained with {config.get(name)!r}, got "
                         f"{expect[name]!r}; resume with the same value or start in a new folder")
    _check_keys(folder / MODEL, model.state_dict(), saved["weights"], strict=True)
    model.load_state_dict(saved["weights"])
    for name, obj in stateful.items():
        if obj is not None:
            if name not in saved["stateful"]:
                raise ValueError(f"{folder / OPTIMIZER}: expected a saved {name!r} state, found "
                                 f"{sorted(saved['stateful'])}")
            obj.load_state_dict(saved["stateful"][name])
    return saved["state"]


def latest_checkpoint(output: str | os.PathLike) -> Path | None:
    """The checkpoint folder named by ``output/latest.json``, or None when there is none yet."""
    pointer = Path(output) / LATEST
    if not pointer.exists():
        return None
    record = _read_json(pointer, "checkpoint pointer")
    folder = Path(output) / str(record.get("checkpoint", ""))
    if not record.get("checkpoint") or not folder.is_dir():
        raise FileNotFoundError(f"{pointer}: names checkpoint {record.get('checkpoint')!r}, which does not exist")
    return folder


def remove_stale(output: str | os.PathLike, keep: int = 0) -> None:
    """Remove what a killed run may leave (hidden ``.*.tmp`` entries, checkpoint folders newer than
    ``latest.json``) and, when ``keep > 0``, all but the newest ``keep`` checkpoints."""
    output = Path(output)
    latest = latest_checkpoint(output)
    for entry in [*output.glob(".*.tmp"), *(output / CHECKPOINTS).glob(".*.tmp")]:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    steps = _checkpoints(output)
    current = next((s for s, f in steps.items() if latest is not None and f.name == latest.name), -1)
    older = [s for s in steps if s < current]
    doomed = [s for s in steps if s > current] + (older[:max(len(older) - keep + 1, 0)] if keep > 0 else [])
    for step in doomed:
        shutil.rmtree(steps[step])


def write_model_card(path: str | os.PathLike, *, data: Any, steps: int, metrics: Mapping, command: Any,
                     **extra: Any) -> Path:
    """Write a JSON model card (atomically): what a set of weights was trained on and how well it does.

    Args:
        path: the card's file, e.g. ``runs/lpn/model_card.json``.
        data: the training data (a path, a dataset name, or a dict describing it).
        steps: training steps run.
        metrics: validation metrics, e.g. ``TrainSummary.best_metrics``.
        command: the command line or call that trained it (a string or a list of strings).
        **extra: anything else worth keeping (architecture, noise level, config); JSON-safe after
            ``data.provenance.json_safe``.

    Returns:
        ``path`` as a Path. The card also records the creation time (UTC) and software versions.

    Example:
        >>> import json, os, tempfile
        >>> p = write_model_card(os.path.join(tempfile.mkdtemp(), "card.json"), data="phantoms/train",
        ...                      steps=100, metrics={"psnr": 31.5}, command="recon train lpn", sigma=0.05)
        >>> card = json.load(open(p))
        >>> card["steps"], card["metrics"], card["sigma"]
        (100, {'psnr': 31.5}, 0.05)
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics: expected a mapping of metric names to values, got {type(metrics).__name__}")
    card = {"data": data, "steps": steps, "metrics": dict(metrics), "command": command, **extra,
            "created": datetime.now(timezone.utc).isoformat(),
            "software": {k: v for k, v in provenance("model card", None).items() if k in _SOFTWARE}}
    return write_json(path, card)


class TrainingLog:
    """``log.csv`` of a training run (and ``tensorboard/`` when asked for and tensorboard is installed):
    columns step, loss, lr, seconds, then ``val_<name>`` per validation metric; one row per logged
    step, empty cells where a value was not computed.

    Opening it at ``step > 0`` (a resume) keeps the rows up to ``step`` and drops later ones (written
    after the checkpoint by a run that was then killed), so the log matches the resumed run.

    Example:
        >>> import tempfile
        >>> log = TrainingLog(tempfile.mkdtemp(), ["psnr"], step=0)
        >>> log.write(1, loss=0.5, lr=0.001, seconds=0.1, metrics={"psnr": 20.0})
        >>> open(log.path).read().splitlines()
        ['step,loss,lr,seconds,val_psnr', '1,0.5,0.001,0.100,20.0']
    """

    def __init__(self, output: str | os.PathLike, keys: Sequence[str], step: int, tensorboard: bool = False) -> None:
        self.path, self.keys = Path(output) / "log.csv", list(keys)
        self.columns = ["step", "loss", "lr", "seconds"] + [f"val_{k}" for k in self.keys]
        rows = []
        if step > 0 and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.reader(f)
                        if len(r) == len(self.columns) and r[0].isdigit() and int(r[0]) <= step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([self.columns] + rows)
        self.writer = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.fspath(Path(output) / "tensorboard"), purge_step=step or None)

    def write(self, step: int, loss: float | None, lr: float | None, seconds: float,
              metrics: Mapping[str, float] | None) -> None:
        """Append one row (``None`` for what this step did not compute)."""
        if metrics is not None and sorted(metrics) != sorted(self.keys):
            raise ValueError(f"val_fn: expected the metrics {sorted(self.keys)} at every validation, "
                             f"got {sorted(metrics)}")
        values = {"loss": loss, "lr": lr, **{f"val_{k}": v for k, v in (metrics or {}).items()}}
        row = [step] + ["" if values.get(c) is None else repr(float(values[c])) for c in self.columns[1:]]
        row[3] = f"{seconds:.3f}"
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(row)
        for name, value in values.items():
            if self.writer is not None and value is not None:
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
