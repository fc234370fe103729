"""``recon train``: train a learned prior and write its weights with a model card.

    recon train lpn          --data ellipses --output runs/lpn   [--config lpn.toml]
    recon train svtv-weights --data ellipses --output runs/svtv  [--config svtv.toml]
    recon train denoiser     --data FOLDER|FILE.h5 --output runs/dn
    recon train score        --data ellipses --output runs/score  (a diffusion prior, priors.diffusion)
    recon train rising       --data ellipses --output runs/rising (TV's first iterations -> converged TV)
    recon train lpd          --data ellipses --output runs/lpd    (learned primal-dual, whole images)
    recon train unrolled-ista --data ellipses --output runs/ista  (unrolled ISTA with CNN proxes, whole images)
    recon train limited-angle --data htc-discs --output runs/la  (TV on short fan-beam arcs -> the disc phantom)
    recon train denoiser     --data ellipses --count 40 --size 128 --steps 50 --output runs/try  (a quick try)
    recon train score        --init score --data FOLDER --output runs/ft  (fine-tune the shipped diffusion prior)

``--data`` is a built-in generator (``ellipses``, ``coule``, ``ellipses+coule``: half each; ``htc-discs``:
HTC2022-like discs with convex holes and slots, ``data.training.HTCDiscDataset``; ``htc-shapes``: also crosses
and bends; no download)
or a folder of PNG/NPY images, a folder of DICOM files, or an HDF5 file with an ``images`` dataset. The
images are read once into ``OUTPUT/cache/`` (reused on ``--resume``) and split into training and
validation sets by seed. The config file (TOML or JSON) has up to four tables, each optional:

    [data]   count, size, seed, val_fraction       (count and size for the generators)
    [model]  the network's keyword arguments        (priors.nets.ICNN for lpn, NoiseUNet plus sigma_data
                                                     and sigma_range for score, LearnedPrimalDual for lpd,
                                                     UnrolledISTANet for unrolled-ista, UNet otherwise;
                                                     RisingNet wraps it for rising and limited-angle)
    [task]   lpn: sigma, patch_size, patches_per_image, pretrain_fraction, pretrain_lr, lr, augment
             denoiser: sigma, patch_size, patches_per_image, augment
             svtv-weights: views, noise, patch_size, patches_per_image
             rising: views, noise, iterations (TV's, of the input), patch_size, patches_per_image
             lpd: views, noise
             limited-angle: grid (the network's), arc_degrees, step_degrees, mu, noise, hardening ([low, high]
                    ranges drawn per image), workers (processes simulating the scans; apps.train_limited)
             unrolled-ista: views, noise, loss ("supervised": MSE to the image; "unsupervised": the
                    objective at the output, ||A x - y||^2 / (2 ||A||^2) + tv TV(x) on the FBP's intensity
                    scale, no image needed), tv
             score: patch_size, patches_per_image, augment, p_mean, p_std (log-normal noise levels,
                    clamped to the model's sigma_range), val_sigmas (validation PSNR at each)
    [train]  recon.training.trainer.TrainConfig fields (steps, batch_size, lr, val_every, checkpoint_every, ...)

Command-line options override the file (``--count`` and ``--size`` the ``[data]`` table's
``count`` and ``size``). Writes ``OUTPUT/model.safetensors`` and
``OUTPUT/model.json`` (the card: task, architecture, data, steps, validation metrics, the command,
the settings), plus the trainer's log, checkpoints and ``summary.json``. ``--init MODEL`` starts from
a trained model of the same task (a weights file, a run folder, or ``lpn``, ``svtv``, ``score`` for the
shipped ones) instead of random weights, with its architecture; the card records it under
``initialised_from``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from apps.argtypes import nonneg_int, positive_int, torch_device
from data.patches import Augment, NoisyPairs, RandomPatches, split
from recon.models import TASKS, build_network, save_model

DEFAULTS = {
    "data": {"count": 400, "size": 256, "seed": 0, "val_fraction": 0.05},
    "lpn": {"model": {"hidden": 32, "strides": [1, 2, 1, 2], "beta": 100.0, "alpha": 1e-6},
            "task": {"sigma": 0.05, "patch_size": 32, "patches_per_image": 8, "pretrain_fraction": 0.5,
                     "pretrain_lr": 1e-3, "lr": 1e-4, "augment": True},
            "train": {"steps": 2000, "batch_size": 16, "val_every": 250, "checkpoint_every": 250}},
    "denoiser": {"model": {"channels": [16, 32, 64], "norm": "group"},
                 "task": {"sigma": 0.05, "patch_size": 64, "patches_per_image": 8, "augment": True},
                 "train": {"steps": 2000, "batch_size": 16, "lr": 1e-3, "scheduler": "cosine", "val_every": 250,
                           "checkpoint_every": 250}},
    "svtv-weights": {"model": {"channels": [16, 32, 64], "norm": "group"},
                     "task": {"views": 60, "noise": 0.01, "patch_size": 128, "patches_per_image": 4},
                     "train": {"steps": 2000, "batch_size": 8, "lr": 1e-3, "scheduler": "cosine", "val_every": 250,
                               "checkpoint_every": 250}},
}
DEFAULTS["rising"] = {
    "model": {"channels": [16, 32, 64], "norm": "group"},
    "task": {"views": 60, "noise": 0.01, "iterations": 10, "patch_size": 128, "patches_per_image": 4},
    "train": {"steps": 2000, "batch_size": 8, "lr": 1e-3, "scheduler": "cosine", "val_every": 250,
              "checkpoint_every": 250}}
DEFAULTS["lpd"] = {
    "model": {"iterations": 10, "primal": 5, "dual": 5, "hidden": 32},
    "task": {"views": 60, "noise": 0.01},
    "train": {"steps": 2000, "batch_size": 4, "lr": 1e-3, "scheduler": "cosine", "grad_clip": 1.0, "val_every": 250,
              "checkpoint_every": 250}}
DEFAULTS["unrolled-ista"] = {
    "model": {"layers": 10, "hidden": 32},
    "task": {"views": 60, "noise": 0.01, "loss": "supervised", "tv": 0.0},
    "train": {"steps": 2000, "batch_size": 4, "lr": 1e-3, "scheduler": "cosine", "grad_clip": 1.0, "val_every": 250,
              "checkpoint_every": 250}}
DEFAULTS["limited-angle"] = {
    "model": {"channels": [16, 32, 64, 128], "norm": "group"},
    "task": {"grid": 128, "arc_degrees": [30.0, 90.0], "step_degrees": 0.5, "mu": [0.03, 0.04],
             "noise": [0.005, 0.01], "hardening": [0.0, 0.0], "workers": 1},
    "train": {"steps": 3000, "batch_size": 8, "lr": 1e-3, "scheduler": "cosine", "val_every": 250,
              "checkpoint_every": 250}}
DEFAULTS["score"] = {
    "model": {"channels": [32, 64, 128], "embedding": 128, "sigma_data": 0.5, "sigma_range": [0.002, 160.0]},
    "task": {"patch_size": 64, "patches_per_image": 8, "augment": True, "p_mean": -1.0, "p_std": 1.6,
             "val_sigmas": [0.01, 0.02, 0.05, 0.1]},
    # ema 0.99 averages over ~100 steps, short against the run: an average over a large share of a short run
    # lags the weights (0.999 over 1500 steps lost 3.5-4 dB of denoising, docs/diffusion_pilot_study.json)
    "train": {"steps": 2000, "batch_size": 16, "lr": 2e-4, "ema": 0.99, "val_every": 250, "checkpoint_every": 250}}
GENERATORS = ("ellipses", "coule", "ellipses+coule", "htc-discs", "htc-shapes")
TABLES = ("data", "model", "task", "train")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a learned prior or reconstruction network (LPN, SV-TV weights, "
                                     "denoiser, diffusion prior, RISING, learned primal-dual)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=TASKS, help="what to train")
    p.add_argument("--data", required=True, metavar="SOURCE",
                   help="ellipses | coule | ellipses+coule | htc-discs | htc-shapes | a folder of PNG/NPY or DICOM "
                        "images | an HDF5 file")
    p.add_argument("--output", required=True, type=Path, metavar="DIR", help="run folder (weights, card, log)")
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML or JSON settings (see above)")
    p.add_argument("--steps", type=positive_int, help="training steps (overrides [train] steps)")
    p.add_argument("--batch-size", type=positive_int, help="global batch (overrides [train] batch_size)")
    p.add_argument("--count", type=positive_int, metavar="N",
                   help="images to generate (overrides [data] count; generators only)")
    p.add_argument("--size", type=positive_int, metavar="PIXELS",
                   help="side of the generated images (overrides [data] size; generators only)")
    p.add_argument("--seed", type=nonneg_int, help="seed of the data, split and training (overrides both tables)")
    p.add_argument("--device", type=torch_device, default=None,
                   help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--init", metavar="MODEL",
                   help="start from a trained model's weights (a weights file, a run folder, or lpn, svtv, score for "
                        "the shipped ones): same task; its architecture is the run's unless [model] says otherwise, "
                        "which must then match it")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def read_config(path: Path | None) -> dict:
    """The config file's tables (``{}`` without one); unknown tables are an error."""
    if path is None:
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"--config: no such file {path}")
    text = path.read_text()
    if path.suffix not in (".json", ".toml"):
        raise ValueError(f"--config: expected a .toml or .json file, got {path.name}")
    try:
        if path.suffix == ".json":
            config = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                raise ValueError("--config: TOML needs Python >= 3.11; use a .json file") from None
            config = tomllib.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--config: {path} is not valid JSON ({err})") from None
    except Exception as err:  # tomllib.TOMLDecodeError
        if isinstance(err, ValueError) and str(err).startswith("--config"):
            raise
        raise ValueError(f"--config: {path} is not valid TOML ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config: {path} must hold a table of tables {list(TABLES)}, got a "
                         f"{type(config).__name__}")
    unknown = sorted(set(config) - set(TABLES))
    if unknown:
        raise ValueError(f"--config: unknown table(s) {unknown}; expected some of {list(TABLES)} (in {path})")
    return config


def settings(task: str, config: dict, args) -> dict:
    """Defaults, then the file, then the command line; unknown data/task keys are an error."""
    merged = {"data": dict(DEFAULTS["data"]), **copy.deepcopy({k: v for k, v in DEFAULTS[task].items()})}
    for table in TABLES:
        given = config.get(table, {})
        if not isinstance(given, dict):
            raise ValueError(f"--config: [{table}] must be a table, got {type(given).__name__}")
        if table in ("data", "task"):
            unknown = sorted(set(given) - set(merged[table]))
            if unknown:
                raise ValueError(f"--config: unknown [{table}] key(s) {unknown} for {task}; "
                                 f"expected some of {sorted(merged[table])}")
        merged[table] = {**merged[table], **given} if table != "model" or not given else dict(given)
    for key, value in (("steps", args.steps), ("batch_size", args.batch_size), ("seed", args.seed)):
        if value is not None:
            merged["train"][key] = value
    if args.seed is not None:
        merged["data"]["seed"] = args.seed
    for key in ("count", "size"):
        value = getattr(args, key, None)
        if value is not None and args.data not in GENERATORS:
            raise ValueError(f"--{key}: applies to the generated data ({', '.join(GENERATORS)}); "
                             f"--data {args.data} is read as it is")
        if value is not None:
            merged["data"][key] = value
    _check_generated(merged["data"], args)
    return merged


def _check_generated(data: dict, args) -> None:
    """The generators' count and size, named as the flag when given there and as the key otherwise."""
    if args.data not in GENERATORS:
        return
    for key, low in (("count", 2), ("size", 16)):
        value = data[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            where = f"--{key}" if getattr(args, key, None) is not None else f"--config: [data] {key}"
            raise ValueError(f"{where}: expected an integer >= {low} for --data {args.data}, got {value!r}")


def source_images(source: str, data: dict, progress: bool) -> torch.Tensor:
    """All images of ``source`` as one ``(N, 1, H, W)`` float32 tensor."""
    from tqdm.auto import tqdm

    from data.training import (CouleLikeDataset, DicomSeriesDataset, EllipsesDataset, HDF5ImageDataset,
                               HTCDiscDataset, ImageFolderDataset)

    if source in GENERATORS:
        count, size, seed = int(data["count"]), int(data["size"]), int(data["seed"])
        if source == "ellipses+coule":  # half of each, so that a model is not an ellipse detector
            ds = ConcatDataset([EllipsesDataset(count - count // 2, size=size, seed=seed),
                                CouleLikeDataset(count // 2, size=size, seed=seed + 1)])
        else:
            generator = {"ellipses": EllipsesDataset, "coule": CouleLikeDataset, "htc-discs": HTCDiscDataset,
                         "htc-shapes": lambda *a, **k: HTCDiscDataset(*a, **k, shapes="all")}[source]
            ds = generator(count, size=size, seed=seed)
    else:
        path = Path(source)
        if path.is_file() and path.suffix in (".h5", ".hdf5"):
            ds = HDF5ImageDataset(path)
        elif path.is_dir() and any(path.rglob("*.dcm")):
            ds = DicomSeriesDataset(path)
        elif path.is_dir():
            ds = ImageFolderDataset(path)
        else:
            raise ValueError(f"--data: expected a generator ({', '.join(GENERATORS)}), a folder of images or an "
                             f"HDF5 file; {source!r} is none of these")
    if len(ds) < 2:
        raise ValueError(f"--data: {source} has {len(ds)} image(s); a training/validation split needs at least 2")
    items = [ds[i] for i in tqdm(range(len(ds)), desc=f"reading {source}", disable=not progress)]
    shapes = {tuple(x.shape) for x in items}
    if len(shapes) != 1:
        raise ValueError(f"--data: the images have different shapes {sorted(shapes)[:4]}; training needs one size")
    return torch.stack(items).float()


def cached(output: Path, key: dict, build) -> dict[str, torch.Tensor]:
    """``build()`` (a dict of tensors), kept in ``output/cache/`` under a hash of ``key``."""
    from safetensors.torch import load_file, save_file

    from data.hdf5 import atomic_path

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = output / "cache" / f"{digest}.safetensors"
    if path.is_file():
        return load_file(path)
    tensors = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    return tensors


def simulation_operator(images: torch.Tensor, views: int, task: str):
    """The parallel-beam operator over 180 degrees (``views`` views, pixel 1 mm, ``recon ct --phantom``'s
    detector) that ``task`` simulates the square ``images`` with."""
    from apps.ct import detector_count
    from operators.ct import ParallelBeam2D

    n = images.shape[-1]
    if images.shape[-2] != n:
        raise ValueError(f"--data: {task} simulates CT of square images; got {tuple(images.shape[-2:])}")
    return ParallelBeam2D((n, n), np.linspace(0, np.pi, views, endpoint=False), detector_count(n))


def noisy_sinograms(images: torch.Tensor, views: int, noise: float, seed: int, task: str):
    """``(A, chunks)``: ``simulation_operator`` and, lazily, ``(images, y)`` chunks of 16 with Gaussian noise
    of ``noise`` times each sinogram's RMS (``recon ct --phantom``'s simulation), seeded."""
    A = simulation_operator(images, views, task)

    def chunks():
        gen = torch.Generator().manual_seed(seed)
        for chunk in images.split(16):
            y = A(chunk)
            std = noise * y.pow(2).flatten(1).mean(1).sqrt()
            yield chunk, y + std.reshape(-1, 1, 1, 1) * torch.randn(y.shape, generator=gen)
    return A, chunks()


def simulate_fbp(images: torch.Tensor, views: int, noise: float, seed: int, progress: bool) -> torch.Tensor:
    """FBP of each image's noisy sinogram (``noisy_sinograms``)."""
    from tqdm.auto import tqdm

    from recon.fbp import fbp

    A, chunks = noisy_sinograms(images, views, noise, seed, "svtv-weights")
    return torch.cat([fbp(A, y) for _, y in tqdm(chunks, total=-(-len(images) // 16), desc="FBP inputs",
                                                  disable=not progress)])


class _Stacked(Dataset):
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tensor[i]


class _SplitChannels(Dataset):
    """Items ``(input, target)`` from 2-channel patches (channel 0 the input, 1 the target)."""

    def __init__(self, patches: Dataset) -> None:
        self.patches = patches

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.patches[i]
        return p[:1], p[1:]


def _patches(images: Dataset, task: dict, seed: int, augment: bool) -> RandomPatches:
    return RandomPatches(images, int(task["patch_size"]), int(task["patches_per_image"]), seed=seed,
                         transform=Augment(seed=seed) if augment else None)


def _psnr_fn(network_out):
    from recon.metrics import psnr

    def val_fn(model, batch):
        noisy, clean = batch
        return {"psnr": float(psnr(network_out(model, noisy).clamp(0, 1), clean, data_range=1.0).mean())}
    return val_fn


def build(task: str, cfg: dict, images: torch.Tensor, output: Path, progress: bool):
    """``(network, loss_fn, train_set, val_set, val_fn, trainer_kwargs, card_extra)`` for ``task``."""
    from priors.learned_prox import GammaSchedule

    seed, t = int(cfg["data"]["seed"]), cfg["task"]
    network = build_network(task, cfg["model"])
    train_idx, val_idx = split(_Stacked(images), float(cfg["data"]["val_fraction"]), seed)
    side = min(images.shape[-2:])
    if "patch_size" in t and int(t["patch_size"]) > side:
        raise ValueError(f"--config: [task] patch_size = {t['patch_size']} is larger than the images ({side} pixels)")
    extra, kwargs = {"trained_on": "images in [0, 1]" if float(images.max()) <= 1 else "images as given"}, {}
    if task == "svtv-weights":
        from priors.tv import intensity_scale
        from priors.weight_net import gradient_magnitude

        key = {"images": hashlib.sha256(images.numpy().tobytes()).hexdigest(), "views": t["views"],
               "noise": t["noise"], "seed": seed}
        x_fbp = cached(output, key, lambda: {"fbp": simulate_fbp(images, int(t["views"]), float(t["noise"]), seed,
                                                                   progress)})["fbp"]
        s = intensity_scale(x_fbp).reshape(-1, 1, 1, 1)
        pairs = torch.cat([x_fbp / s, gradient_magnitude(images) / s], dim=1)  # unit-free, per image
        train_set = _SplitChannels(_patches(Subset(_Stacked(pairs), train_idx.indices), t, seed, False))
        val_set = _SplitChannels(_Stacked(pairs[val_idx.indices]))

        def loss_fn(model, batch):
            return torch.nn.functional.mse_loss(model.raw(batch[0], 1.0), batch[1])

        def val_fn(model, batch):
            err = model(batch[0], 1.0) - batch[1]
            return {"rmse": float(err.pow(2).flatten(1).mean(1).sqrt().mean())}
        kwargs["monitor"], kwargs["mode"] = "rmse", "min"
        extra["simulation"] = {"geometry": "parallel", "views": int(t["views"]), "noise": float(t["noise"])}
        return network, loss_fn, train_set, val_set, val_fn, kwargs, extra

    if task == "score":
        return _score(network, t, images, train_idx, val_idx, seed, extra)
    if task == "limited-angle":
        from apps.train_limited import build_limited_angle

        return build_limited_angle(network, t, images, output, seed, train_idx, val_idx, extra, progress)
    if task in ("rising", "lpd", "unrolled-ista"):
        from apps.train_unrolled import build_lpd, build_rising

        build_task = build_rising if task == "rising" else build_lpd
        return build_task(network, t, images, output, seed, train_idx, val_idx, extra, progress)
    sigma = float(t["sigma"])
    train_set = NoisyPairs(_patches(Subset(_Stacked(images), train_idx.indices), t, seed, bool(t["augment"])),
                           sigma, seed)
    val_set = NoisyPairs(_patches(Subset(_Stacked(images), val_idx.indices), t, seed + 1, False), sigma, seed + 1)
    extra["sigma"] = sigma
    if task == "denoiser":
        return (network, lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), train_set, val_set,
                _psnr_fn(lambda m, x: m(x)), {"monitor": "psnr", "mode": "max"}, extra)
    steps, p = int(cfg["train"]["steps"]), int(t["patch_size"])
    pretrain = min(int(round(float(t["pretrain_fraction"]) * steps)), max(steps - 4, 0))
    schedule = GammaSchedule.for_images(1, p, p, num_steps=max(steps, 4), pretrain_steps=pretrain,
                                        pretrain_lr=float(t["pretrain_lr"]), lr=float(t["lr"]))

    def lpn_loss(model, batch, step):
        return schedule(step - 1).loss(model(batch[0]), batch[1])
    kwargs.update(monitor="psnr", mode="max", lr_at=lambda step: schedule(step - 1).lr, step_loss=True,
                  after_step=lambda m: m.clamp_weights())
    extra["schedule"] = {"gamma_min": schedule.gamma_min, "pretrain_steps": pretrain, "stages": schedule.num_stages}
    return network, lpn_loss, train_set, val_set, _psnr_fn(lambda m, x: m(x)), kwargs, extra


def _score(network, t: dict, images, train_idx, val_idx, seed: int, extra: dict):
    """The score task: EDM denoising score matching on clean patches; validation PSNR at ``val_sigmas``."""
    from priors.diffusion import edm_loss
    from recon.metrics import psnr

    lo, hi = network.sigma_range
    train_set = _patches(Subset(_Stacked(images), train_idx.indices), t, seed, bool(t["augment"]))
    val_set = _patches(Subset(_Stacked(images), val_idx.indices), t, seed + 1, False)
    sigmas = [float(s) for s in t["val_sigmas"]]

    def loss_fn(model, batch):
        return edm_loss(model, batch, network.sigma_data, float(t["p_mean"]), float(t["p_std"]), lo, hi)

    def val_fn(model, batch):
        out = {}
        for k, sigma in enumerate(sigmas):  # fixed noise per level: comparable across steps
            gen = torch.Generator(device=batch.device).manual_seed(seed + k)
            noisy = batch + sigma * torch.randn(batch.shape, generator=gen, device=batch.device, dtype=batch.dtype)
            out[f"psnr@{sigma:g}"] = float(psnr(model(noisy, sigma).clamp(0, 1), batch, data_range=1.0).mean())
        return out
    extra["score"] = {"sigma_data": network.sigma_data, "sigma_range": [lo, hi], "p_mean": float(t["p_mean"]),
                      "p_std": float(t["p_std"])}
    return network, loss_fn, train_set, val_set, val_fn, {"monitor": f"psnr@{sigmas[-1]:g}", "mode": "max"}, extra


def initial_model(given: str, task: str, config: dict):
    """The model ``--init`` names, loaded; ``config`` takes its architecture when it has no ``[model]`` table.
    The card's warnings (a short or weak training) are not repeated: the run is there to train it further."""
    import warnings

    from recon.models import BUILTIN, builtin, load_model

    path = builtin(given) if given in BUILTIN and not Path(given).exists() else Path(given)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = load_model(path, task=task)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(re.sub(r"^weights:", "--init:", str(err))) from None
    architecture = model.card["architecture"]
    if "model" not in config:
        config["model"] = dict(architecture)
    elif json.loads(json.dumps(config["model"])) != json.loads(json.dumps(architecture)):
        raise ValueError(f"--init: {path} has the architecture {architecture}, the run's [model] is "
                         f"{config['model']}; leave [model] out to train that architecture")
    return model


def run(args) -> int:
    from recon.training.trainer import Trainer, TrainConfig

    from apps.outputs import check_output

    check_output(args.output)
    config = read_config(args.config)
    init = initial_model(args.init, args.task, config) if getattr(args, "init", None) else None
    cfg = settings(args.task, config, args)
    progress = not args.no_progress
    args.output.mkdir(parents=True, exist_ok=True)
    key = {"source": args.data, **({k: cfg["data"][k] for k in ("count", "size", "seed")}
                                   if args.data in GENERATORS else {})}
    images = cached(args.output, key, lambda: {"images": source_images(args.data, cfg["data"], progress)})["images"]
    torch.manual_seed(int(cfg["train"].get("seed", 0)))  # the initial weights follow the seed, not the process
    network, loss_fn, train_set, val_set, val_fn, kwargs, extra = build(args.task, cfg, images, args.output, progress)
    if init is not None:
        network.load_state_dict(init.network.state_dict())
        extra["initialised_from"] = {"weights": str(init.path), "steps": init.card.get("steps"),
                                     "command": init.card.get("command")}
    trainer_kw = {k: kwargs.pop(k) for k in ("lr_at", "step_loss", "after_step") if k in kwargs}
    train = {"progress": progress, "device": args.device, **kwargs, **cfg["train"], "output": args.output}
    try:
        config = TrainConfig(**train)
    except TypeError as err:
        raise ValueError(f"--config: [train] {err}") from None
    except ValueError as err:  # TrainConfig names its fields config.NAME: the device is a flag, the rest the file's
        raise ValueError(re.sub(r"\bconfig\.(\w+)",
                                lambda m: "--device" if m[1] == "device" else f"--config: [train] {m[1]}",
                                str(err))) from None
    print(f"recon train {args.task}: {len(images)} images {tuple(images.shape[-2:])} from {args.data} -> "
          f"{len(train_set)} training / {len(val_set)} validation items, {config.steps} steps of {config.batch_size}")
    trainer = Trainer(network, loss_fn, train_set, val_set, val_fn, config=config, **trainer_kw)
    summary = trainer.fit(resume=args.resume)
    network = trainer.trained  # the moving average of the weights when [train] ema is set
    command = "recon " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))
    card = save_model(args.output / "model.safetensors", network.cpu(), args.task, cfg["model"],
                      data={"source": args.data, **cfg["data"], "images": int(len(images)),
                            "image_shape": list(images.shape[-2:])},
                      steps=summary.steps, metrics=summary.last_metrics, best_metrics=summary.best_metrics,
                      best_step=summary.best_step, command=command, settings=cfg, seconds=summary.total_seconds,
                      **extra)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in summary.last_metrics.items())
    print(f"trained {summary.steps} steps in {summary.total_seconds:.0f} s; validation: {shown}")
    print(f"weights: {args.output / 'model.safetensors'}, model card: {card}")
    return 0
