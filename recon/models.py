"""Trained models as files: ``NAME.safetensors`` (the weights) beside ``NAME.json`` (the model card).

The card says what the weights are (``task``: ``"lpn"``, ``"svtv-weights"`` or ``"denoiser"``),
how to rebuild the network (``architecture``: the class's keyword arguments), what they were
trained on and how well they did, the command that trained them, and how to use them (e.g.
``"pnp": {"rho": ..., "iterations": ...}`` for an LPN in CT). Loading reads JSON and safetensors
only, so a weights file cannot execute code; a missing card, an unknown task, or weights that do not
fit the architecture raise a ``ValueError`` naming the file.

Shipped models live in ``recon/weights/`` (``builtin``): ``lpn_ct256`` and ``svtv_weights_ct256``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from priors.learned_prox import LearnedProximalNetwork
from priors.nets import ICNN, UNet
from priors.weight_net import GradientMagnitudeNet
from recon.checkpoint import load_weights, write_json, write_model_card

__all__ = ["TASKS", "TrainedModel", "build_network", "load_model", "save_model", "builtin", "BUILTIN", "CT_METHOD"]

TASKS = ("lpn", "svtv-weights", "denoiser")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the models shipped with recon: name (the reconstruction method using it) -> file stem in recon/weights
BUILTIN = {"lpn": "lpn_ct256", "svtv": "svtv_weights_ct256"}
#: the reconstruction method (``recon.reconstruct``) that uses a model of each task
CT_METHOD = {"lpn": "lpn", "svtv-weights": "svtv", "denoiser": "pnp"}


@dataclass
class TrainedModel:
    """A loaded model: its task, the network (eval mode) and its card."""

    task: str
    network: torch.nn.Module
    card: dict = field(default_factory=dict)
    path: Path | None = None

    def to(self, device) -> "TrainedModel":
        self.network.to(device)
        return self


def build_network(task: str, architecture: dict) -> torch.nn.Module:
    """The untrained network of ``task`` with ``architecture`` (keyword arguments of ICNN or UNet).

    Example:
        >>> net = build_network("lpn", {"hidden": 4, "strides": [1]})
        >>> type(net).__name__, type(net.psi).__name__
        ('LearnedProximalNetwork', 'ICNN')
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    if not isinstance(architecture, dict):
        raise ValueError(f"architecture: expected a dict of keyword arguments, got {type(architecture).__name__}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in architecture.items()}
    try:
        if task == "lpn":
            return LearnedProximalNetwork(ICNN(**kwargs))
        if task == "svtv-weights":
            return GradientMagnitudeNet(UNet(**{**kwargs, "residual": False}))
        return UNet(**{**kwargs, "residual": True})
    except TypeError as err:
        raise ValueError(f"architecture: {err} (task {task!r})") from None


def _card_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_model(path: str | os.PathLike, network: torch.nn.Module, task: str, architecture: dict,
               **card: Any) -> Path:
    """Write ``network``'s weights to ``path`` (``.safetensors``) and its card beside it (``.json``).

    Args:
        path: the weights file, ending in ``.safetensors``.
        network: the trained network (as built by ``build_network(task, architecture)``).
        task, architecture: what ``load_model`` rebuilds it from.
        **card: anything else for the card (data, steps, metrics, command, settings); JSON-safe.

    Returns:
        The card's path.
    """
    from safetensors.torch import save_file

    from data.hdf5 import atomic_path

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path: expected a file name ending in .safetensors, got {path}")
    build_network(task, architecture)  # refuse a card that could not be loaded back
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, os.fspath(tmp))
    fields = {"data": None, "steps": 0, "metrics": {}, "command": None, **card}
    return write_model_card(_card_path(path), task=task, architecture=architecture, **fields)


def builtin(name: str) -> Path:
    """The weights file of a shipped model: ``"lpn"`` or ``"svtv"`` (see ``BUILTIN``)."""
    if name not in BUILTIN:
        raise ValueError(f"name: expected one of the shipped models {', '.join(BUILTIN)}, got {name!r}")
    return WEIGHTS_DIR / f"{BUILTIN[name]}.safetensors"


def load_model(path: str | os.PathLike, task: str | None = None, device=None) -> TrainedModel:
    """Load ``path`` (``.safetensors``) with its card (``.json`` beside it), without executing code.

    Args:
        path: the weights file, or a ``recon train`` output folder (its ``model.safetensors``).
        task: the task the caller needs (e.g. ``"lpn"``); a card of another task is an error.
        device: where to put the network (default: CPU).

    Raises:
        FileNotFoundError: no weights file. ValueError: no card or an unreadable one, a task other
        than ``task``, or weights that do not fit the card's architecture (the file and keys named).

    Example:
        >>> m = load_model(builtin("lpn"), task="lpn")
        >>> m.task, type(m.network).__name__, m.card["pnp"]["rho_factor"] > 0
        ('lpn', 'LearnedProximalNetwork', True)
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"weights: no such file {path}")
    card_path = _card_path(path)
    if not card_path.is_file():
        raise ValueError(f"weights: {path} has no model card {card_path.name} beside it (it says which network "
                         "the weights belong to; `recon train` writes both)")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"weights: the model card {card_path} is not valid JSON ({err})") from None
    if not isinstance(card, dict) or "task" not in card or "architecture" not in card:
        raise ValueError(f"weights: the model card {card_path} lacks 'task' or 'architecture'")
    if task is not None and card["task"] != task:
        raise ValueError(f"weights: {path} holds a {card['task']!r} model; expected a {task!r} model")
    try:
        network = build_network(card["task"], card["architecture"])
    except ValueError as err:
        raise ValueError(f"weights: the model card {card_path}: {err}") from None
    load_weights(network, path)
    network.eval()
    if device is not None:
        network.to(device)
    return TrainedModel(card["task"], network, card, path)


def update_card(path: str | os.PathLike, **entries: Any) -> Path:
    """Add or replace entries of the card beside weights file ``path`` (e.g. tuned PnP settings)."""
    card_path = _card_path(Path(path))
    card = json.loads(card_path.read_text())
    card.update(entries)
    return write_json(card_path, card)
