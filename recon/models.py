"""Trained models as files: ``NAME.safetensors`` (the weights) beside ``NAME.json`` (the model card).

The card says what the weights are (``task``: ``"lpn"``, ``"svtv-weights"``, ``"denoiser"``, ``"score"``,
``"rising"``, ``"lpd"``, ``"unrolled-ista"`` or ``"limited-angle"``),
how to rebuild the network (``architecture``: the class's keyword arguments), what they were
trained on and how well they did, the command that trained them, and how to use them (e.g.
``"pnp": {"rho": ..., "iterations": ...}`` for an LPN in CT). Loading reads JSON and safetensors
only, so a weights file cannot execute code; a missing card, an unknown task, an architecture whose
network would not fit in memory (``network_memory_bytes``, counted before anything is allocated),
settings out of range (``CARD_SETTINGS``), or weights that do not fit the architecture or hold NaN or
Inf raise a ``ValueError`` naming the file (and the card key or tensor).

Shipped models live in ``recon/weights/`` (``builtin``): ``lpn_ct256``, ``svtv_weights_ct256``,
``score_ct128`` (the diffusion prior of ``red-diff``, ``diffpir``, ``dpir``, ``dps`` and ``score-pc``),
``rising_ct256`` (RISING
for 256^2 images from 60 parallel views over 180 degrees) and ``limited_angle_htc128`` (``limited-angle`` for the
HTC2022 scanner's 30-90 degree arcs).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data.limits import check_memory
from priors.denoiser import check_ensemble
from priors.diffusion import DiffusionPrior
from priors.learned_prox import LearnedProximalNetwork
from priors.nets import ICNN, LearnedPrimalDual, NoiseUNet, RisingNet, UNet, UnrolledISTANet
from priors.weight_net import GradientMagnitudeNet
from recon.diffusion.diffusion_recon import check_init
from recon.params import check_integer, check_number
from recon.training.checkpoint import load_weights, write_json, write_model_card

__all__ = ["TASKS", "TrainedModel", "build_network", "network_memory_bytes", "load_model", "save_model", "builtin",
           "BUILTIN", "shipped", "check_shipped", "CT_METHOD", "CT_METHODS", "CARD_SETTINGS", "geometry_of",
           "check_geometry"]

TASKS = ("lpn", "svtv-weights", "denoiser", "score", "rising", "lpd", "unrolled-ista", "limited-angle")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the models shipped with recon: name (the reconstruction method using it) -> file stem in recon/weights
BUILTIN = {"lpn": "lpn_ct256", "svtv": "svtv_weights_ct256", "score": "score_ct128",  # score: the diffusion methods
           "rising": "rising_ct256", "limited-angle": "limited_angle_htc128"}
#: the reconstruction method (``recon.reconstruct``) that uses a model of each task
CT_METHOD = {"lpn": "lpn", "svtv-weights": "svtv", "denoiser": "pnp", "score": "red-diff", "rising": "rising",
             "lpd": "lpd", "unrolled-ista": "unrolled-ista", "limited-angle": "limited-angle"}
#: every method a model of each task serves (a score model: every diffusion method)
CT_METHODS = {**{task: (method,) for task, method in CT_METHOD.items()},
              "score": ("red-diff", "diffpir", "dpir", "dps", "score-pc")}


def _ensemble(name: str, value) -> int:
    """``check_ensemble`` in ``CARD_SETTINGS``'s ``(name, value)`` order."""
    return check_ensemble(value, name)


def _boolean(name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False``, else a ``ValueError`` naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    return value


#: the card settings ``recon.reconstruct`` uses, each with its check (other card entries are records only):
#: iteration counts are bounded so that a card cannot ask for days of work
CARD_SETTINGS = {
    "pnp": {"iterations": lambda n, v: check_integer(n, v, 1, 10_000),
            "cg_iterations": lambda n, v: check_integer(n, v, 1, 1_000),
            "rho": lambda n, v: check_number(n, v), "rho_factor": lambda n, v: check_number(n, v)},
    "svtv": {"eta": lambda n, v: check_number(n, v), "p": lambda n, v: check_number(n, v, strict=False, below=1.0),
             "spread": lambda n, v: check_integer(n, v, 0, 100), "lam_factor": lambda n, v: check_number(n, v)},
    # a score model's tuned solver settings (recon.diffusion.diffusion_recon), one table per method
    "red-diff": {"lam": lambda n, v: check_number(n, v, strict=False), "lr": lambda n, v: check_number(n, v),
                 "steps": lambda n, v: check_integer(n, v, 1, 1000), "start": lambda n, v: check_integer(n, v, 1, 999),
                 "ensemble": _ensemble, "init": check_init},
    # a RISING model: the solver iterations its input had (recon.learned.rising)
    "rising": {"iterations": lambda n, v: check_integer(n, v, 1, 10_000)},
    # a limited-angle model: the grid its network works on (recon.learned.limited_angle)
    "limited_angle": {"grid": lambda n, v: check_integer(n, v, 16, 4096)},
    "diffpir": {"lam": lambda n, v: check_number(n, v),
                "zeta": lambda n, v: check_number(n, v, strict=False, below=1.0001),
                "steps": lambda n, v: check_integer(n, v, 1, 1000), "ensemble": _ensemble},
    "dpir": {"lam": lambda n, v: check_number(n, v), "steps": lambda n, v: check_integer(n, v, 1, 1000),
             "start": lambda n, v: check_integer(n, v, 1, 999), "ensemble": _ensemble,
             "init": check_init},
    "dps": {"lam": lambda n, v: check_number(n, v, strict=False),
            "steps": lambda n, v: check_integer(n, v, 1, 1000), "ensemble": _ensemble},
    "score-pc": {"lam": lambda n, v: check_number(n, v, strict=False, below=1.0001),
                 "snr": lambda n, v: check_number(n, v, strict=False), "final_projection": _boolean,
                 "steps": lambda n, v: check_integer(n, v, 1, 1000), "ensemble": _ensemble},
}


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
    """The untrained network of ``task`` with ``architecture`` (keyword arguments of ICNN or UNet; for
    ``"score"`` of NoiseUNet plus ``sigma_data`` and ``sigma_range``, giving a ``DiffusionPrior``).

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
        if task in ("rising", "limited-angle"):  # a residual U-Net that completes a TV image
            return RisingNet(UNet(**{**kwargs, "residual": True}))
        if task == "lpd":
            return LearnedPrimalDual(**kwargs)
        if task == "unrolled-ista":
            return UnrolledISTANet(**kwargs)
        if task == "score":
            prior = {k: kwargs.pop(k) for k in ("sigma_data", "sigma_range") if k in kwargs}
            return DiffusionPrior(NoiseUNet(**kwargs), **prior)
        return UNet(**{**kwargs, "residual": True})
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"architecture: {err} (task {task!r})") from None


def network_memory_bytes(task: str, architecture: dict, training: bool = False) -> int:
    """Bytes of ``build_network(task, architecture)``'s parameters and buffers, without allocating them.

    The network is built on PyTorch's ``meta`` device (shapes only). With ``training``, the parameters
    count four times (weights, gradients and Adam's two moments). Activations depend on the image size
    and are not counted.

    Example:
        >>> network_memory_bytes("lpn", {"hidden": 4, "strides": [1]})
        920
        >>> round(network_memory_bytes("lpn", {"hidden": 200000, "strides": [1]}) / 2**40, 2)   # TiB
        1.31
    """
    with torch.device("meta"):
        network = build_network(task, architecture)
    params = sum(t.numel() * t.element_size() for t in network.parameters())
    buffers = sum(t.numel() * t.element_size() for t in network.buffers())
    return (4 if training else 1) * params + buffers


def _size_entry(architecture: dict) -> str:
    """``architecture.<key> = <value>`` for the entry with the largest integer (channels, hidden units)."""
    def largest(v) -> int:
        items = v if isinstance(v, (list, tuple)) else [v]
        return max((abs(u) for u in items if isinstance(u, int) and not isinstance(u, bool)), default=0)

    if not architecture:
        return "architecture"
    key = max(architecture, key=lambda k: largest(architecture[k]))
    return f"architecture.{key} = {json.dumps(architecture[key])}"


def _check_settings(card: dict, card_path: Path) -> None:
    """``ValueError`` naming the card and the key (``pnp.iterations``) of a setting out of ``CARD_SETTINGS``."""
    for section, checks in CARD_SETTINGS.items():
        entries = card.get(section, {})
        if not isinstance(entries, dict):
            raise ValueError(f"weights: the model card {card_path}: {section}: expected a table of settings, got "
                             f"{type(entries).__name__}")
        for key, check in checks.items():
            if key in entries:
                try:
                    check(f"{section}.{key}", entries[key])
                except ValueError as err:
                    raise ValueError(f"weights: the model card {card_path}: {err}") from None


def _check_finite(network: torch.nn.Module, path: Path) -> None:
    """``ValueError`` naming ``path`` and the first tensor of ``network`` that holds NaN or Inf."""
    for name, tensor in network.state_dict().items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ValueError(f"weights: {path}: tensor {name} holds {bad} non-finite value(s) (NaN or Inf); "
                                 "the file is damaged or the training diverged")


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


def shipped(task: str) -> Path | None:
    """The weights file of the shipped model of ``task``, or None when none is shipped.

    Example:
        >>> shipped("score").name, shipped("denoiser")
        ('score_ct128.safetensors', None)
    """
    name = "score" if task == "score" else CT_METHOD.get(task)  # the others are named by their method
    return builtin(name) if name in BUILTIN else None


def check_shipped(method: str, task: str, flag: str) -> None:
    """A ``ValueError`` naming ``flag`` (the option that gives a model) when no ``task`` model is shipped
    for ``method``: the apps' check before any work.

    Example:
        >>> check_shipped("red-diff", "score", "--weights")       # shipped: nothing to say
        >>> check_shipped("pnp", "denoiser", "--weights")
        Traceback (most recent call last):
        ...
        ValueError: --weights: --method pnp needs a trained denoiser model (none is shipped): `recon train denoiser --data ... --output DIR`, then --weights DIR/model.safetensors
    """
    if shipped(task) is None:
        raise ValueError(f"{flag}: --method {method} needs a trained {task} model (none is shipped): `recon train "
                         f"{task} --data ... --output DIR`, then {flag} DIR/model.safetensors")


def builtin(name: str) -> Path:
    """The weights file of a shipped model: ``"lpn"``, ``"svtv"`` or ``"score"`` (see ``BUILTIN``)."""
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
        than ``task``, a setting out of ``CARD_SETTINGS`` (``pnp.iterations``...), a network needing
        more memory than available (``data.limits.check_memory``; the card and the
        ``architecture.<key>`` named), weights that do not fit the card's architecture, or weights
        holding NaN or Inf (the file and the tensor named).

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
    _check_settings(card, card_path)
    try:
        nbytes = network_memory_bytes(card["task"], card["architecture"])
    except ValueError as err:
        raise ValueError(f"weights: the model card {card_path}: {err}") from None
    # the network, and the tensors read from the file before they are copied into it
    check_memory(2 * nbytes, f"weights: the model card {card_path}: {_size_entry(card['architecture'])}")
    network = build_network(card["task"], card["architecture"])
    load_weights(network, path)
    _check_finite(network, path)
    network.eval()
    if device is not None:
        network.to(device)
    for message in card_warnings(card, path):
        warnings.warn(message, UserWarning, stacklevel=2)
    return TrainedModel(card["task"], network, card, path)


def geometry_of(A) -> dict:
    """What a model trained on one CT geometry depends on: the operator's kind, views, detector count and
    image shape (recorded in the card as ``geometry``)."""
    views, detectors = A.out_shape[-2:]
    return {"operator": type(A).__name__, "views": int(views), "detectors": int(detectors),
            "image_shape": [int(n) for n in A.in_shape[-2:]]}


def check_geometry(card: dict, A, path) -> None:
    """``ValueError`` naming both geometries when ``A`` is not the one the model was trained for (a
    ``limited-angle`` model: the scanner and arcs of ``recon.learned.limited_angle.check_limited_angle``)."""
    if card.get("task") == "limited-angle":
        from recon.learned.limited_angle import check_limited_angle

        check_limited_angle(card, A, path)
        return
    trained = card.get("geometry")
    if not isinstance(trained, dict):
        raise ValueError(f"model: the card of {path} lacks 'geometry' (the one its network was trained for)")
    here = geometry_of(A)
    diff = [k for k in ("operator", "views", "detectors", "image_shape") if trained.get(k) != here[k]]
    if diff:
        def show(g: dict) -> str:
            return (f"{g.get('operator')} with {g.get('views')} views x {g.get('detectors')} detectors on "
                    f"{'x'.join(map(str, g.get('image_shape') or []))} images")
        raise ValueError(f"model: {path} was trained for {show(trained)}; these data are {show(here)} (differs in "
                         f"{', '.join(diff)}); train one for this geometry with `recon train {card.get('task')}`")


#: a model trained for fewer than this share of the shipped model's steps is flagged on load
SHORT_TRAINING = 0.1


def card_warnings(card: dict, path: Path) -> list[str]:
    """What a model card says against using the model: a training run far shorter than the shipped
    model's of the task (below ``SHORT_TRAINING`` of its steps), or a validation PSNR at a noise
    level below that of the noisy input itself, ``20 log10(1 / sigma)`` for images in [0, 1] (the
    network makes its training inputs worse).

    Example:
        >>> card_warnings({"task": "lpn", "steps": 5, "sigma": 0.05, "trained_on": "images in [0, 1]",
        ...                "metrics": {"psnr": 9.0}}, Path("runs/lpn/model.safetensors"))[1]
        'runs/lpn/model.safetensors: validation PSNR 9.00 dB at sigma = 0.05, below the 26.02 dB of the noisy input'
    """
    found = []
    reference = shipped(str(card.get("task")))
    steps = card.get("steps")
    # steps 0: not recorded (save_model's default for a network trained outside recon train)
    if reference is not None and reference.resolve() != path.resolve() and isinstance(steps, int) and steps > 0:
        shipped_steps = json.loads(_card_path(reference).read_text()).get("steps", 0)
        if steps < SHORT_TRAINING * shipped_steps:
            found.append(f"{path}: trained for {steps} steps, the shipped {card['task']} model for {shipped_steps}; "
                         f"expect poor results (train longer: recon train {card['task']} --steps N)")
    if card.get("trained_on") != "images in [0, 1]":
        return found
    metrics = card.get("metrics") or {}
    levels = {}  # metric -> the noise level it was measured at
    for key in metrics:
        try:
            levels[key] = float(key.split("@", 1)[1]) if key.startswith("psnr@") else None
        except ValueError:
            continue
    if "psnr" in metrics:
        levels["psnr"] = card.get("sigma")
    for key, sigma in levels.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and isinstance(sigma, (int, float)) and sigma > 0:
            noisy = 20 * math.log10(1 / sigma)
            if value < noisy:
                found.append(f"{path}: validation PSNR {value:.2f} dB at sigma = {sigma:g}, below the "
                             f"{noisy:.2f} dB of the noisy input")
    return found


def update_card(path: str | os.PathLike, **entries: Any) -> Path:
    """Add or replace entries of the card beside weights file ``path`` (e.g. tuned PnP settings)."""
    card_path = _card_path(Path(path))
    card = json.loads(card_path.read_text())
    card.update(entries)
    return write_json(card_path, card)
