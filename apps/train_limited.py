"""``recon train limited-angle``: a network that completes TV on short arcs, trained on simulated scans of discs.

Each training image (``--data htc-discs``: ``data.training.HTCDiscDataset``, drawn at ``[data] size`` over the
HTC2022 field of view) is scanned with the challenge's fan-beam scanner (``data.htc2022.htc_geometry``) over an
arc centred on angle 0, of a span drawn per image from ``[task] arc_degrees`` in steps of ``[task] step_degrees``
(the challenge's 0.5 deg), with the material's attenuation drawn from ``[task] mu`` (1/mm) and Gaussian noise
of a standard deviation drawn from ``[task] noise`` (in line-integral units, as the challenge's -log data).
``[task] hardening`` (a range, default ``[0, 0]``: linear) draws a beam-hardening ``beta`` per image: the
line integral ``s`` is measured as ``s - beta s^2`` before the noise (the measured scans follow that with
beta about 0.09: ``docs/htc_beam_hardening_study.py``), while the target stays the linear attenuation.
The image is projected on its own grid and reconstructed on the coarser ``[task] grid`` (no inverse crime) as
``recon.learned.limited_angle`` does: TV at the rule's weight with the disc bounds (``support="disc"``). The target
is the image averaged onto that grid, times its attenuation. Pairs are divided by the input's intensity scale
(as rising's) and cached in ``OUTPUT/cache/``; ``[task] workers`` processes compute them.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch

from apps.train import cached

__all__ = ["scan_settings", "simulate_scans", "build_limited_angle"]


def scan_settings(t: dict, seed: int, index: int) -> dict:
    """The arc span (degrees), attenuation and noise of training image ``index``: seeded per image."""
    rng = np.random.default_rng([seed, index])
    lo, hi = (float(v) for v in t["arc_degrees"])
    step = float(t["step_degrees"])
    spans = np.arange(lo, hi + step / 2, step)
    return {"span": float(rng.choice(spans)), "mu": float(rng.uniform(*t["mu"])),
            "noise": float(rng.uniform(*t["noise"])), "noise_seed": int(rng.integers(2**31)),
            "hardening": float(rng.uniform(*t["hardening"]))}  # drawn last: the draws before it are a linear task's


def _operator(size: int, span: float, step: float):
    from data.htc2022 import htc_geometry
    from operators.ct import ct_operator

    angles = np.deg2rad(np.arange(-span / 2, span / 2 + step / 4, step))
    return ct_operator(htc_geometry(size), angles, 560)


def _scan_chunk(images: torch.Tensor, indices: list[int], t: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(TV inputs, targets)`` of ``images`` (items ``indices`` of the training set), one thread."""
    from recon.reconstruct import reconstruct

    torch.set_num_threads(1)
    grid, fine = int(t["grid"]), images.shape[-1]
    inputs, targets = [], []
    for image, index in zip(images, indices):
        s = scan_settings(t, seed, index)
        x = s["mu"] * image[None].double()
        y = _operator(fine, s["span"], float(t["step_degrees"]))(x)
        y = y - s["hardening"] * y.square()
        gen = torch.Generator().manual_seed(s["noise_seed"])
        y = y + s["noise"] * torch.randn(y.shape, generator=gen, dtype=y.dtype)
        A = _operator(grid, s["span"], float(t["step_degrees"]))
        inputs.append(reconstruct(A, y, "tv", lam="rule", support="disc").x.float())
        targets.append(torch.nn.functional.adaptive_avg_pool2d(x, grid).float())
    return torch.cat(inputs), torch.cat(targets)


def simulate_scans(images: torch.Tensor, t: dict, seed: int, progress: bool) -> dict[str, torch.Tensor]:
    """``{"input": TV, "target": image}`` on the task's grid for every image, in ``[task] workers`` processes."""
    from tqdm.auto import tqdm

    chunk = 8
    parts = [(images[i:i + chunk], list(range(i, min(i + chunk, len(images))))) for i in range(0, len(images), chunk)]
    workers = int(t.get("workers", 1))
    done: list = []
    with tqdm(total=len(images), desc="limited-angle scans", disable=not progress) as bar:
        if workers == 1:
            for part, idx in parts:
                done.append(_scan_chunk(part, idx, t, seed))
                bar.update(len(idx))
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_scan_chunk, part, idx, t, seed) for part, idx in parts]
                for future, (_, idx) in zip(futures, parts):
                    done.append(future.result())
                    bar.update(len(idx))
    return {"input": torch.cat([d[0] for d in done]), "target": torch.cat([d[1] for d in done])}


def _check_task(t: dict, images: torch.Tensor) -> None:
    """``ValueError`` naming the ``[task]`` key that cannot describe a limited-angle simulation."""
    grid, size = int(t["grid"]), images.shape[-1]
    if grid < 16 or size % grid or images.shape[-2] != size:
        raise ValueError(f"--config: [task] grid = {grid}; expected at least 16 and dividing the square images' "
                         f"side ({tuple(images.shape[-2:])})")
    lo, hi = (float(v) for v in t["arc_degrees"])
    if not 0 < lo <= hi < 180:
        raise ValueError(f"--config: [task] arc_degrees = {t['arc_degrees']}; expected [low, high] within (0, 180)")
    if not float(t["step_degrees"]) > 0:
        raise ValueError(f"--config: [task] step_degrees = {t['step_degrees']}; expected > 0")
    for key in ("mu", "noise", "hardening"):
        lo, hi = (float(v) for v in t[key])
        if not 0 <= lo <= hi or (key == "mu" and lo == 0):
            raise ValueError(f"--config: [task] {key} = {t[key]}; expected [low, high] with "
                             f"{'0 <' if key == 'mu' else '0 <='} low <= high")
    workers = t.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"--config: [task] workers = {workers!r}; expected an integer >= 1")


def build_limited_angle(network, t: dict, images, output, seed: int, train_idx, val_idx, extra: dict,
                        progress: bool):
    """The limited-angle task's ``(network, loss_fn, train_set, val_set, val_fn, trainer_kwargs, card_extra)``."""
    from apps.train_unrolled import completion
    from recon.learned.limited_angle import scanner_of

    _check_task(t, images)
    settings = {k: t[k] for k in ("grid", "arc_degrees", "step_degrees", "mu", "noise")}
    if any(float(v) for v in t["hardening"]):  # recorded (and cached apart) only when used
        settings["hardening"] = [float(v) for v in t["hardening"]]
    key = {"images": hashlib.sha256(images.numpy().tobytes()).hexdigest(), "seed": seed, "task": "limited-angle",
           **settings}
    pairs = cached(output, key, lambda: simulate_scans(images, t, seed, progress))
    train_set, val_set, loss_fn, val_fn = completion(pairs["input"], pairs["target"], train_idx, val_idx)
    grid = int(t["grid"])
    scanner = scanner_of(_operator(grid, float(t["arc_degrees"][0]), float(t["step_degrees"])))
    extra.update(limited_angle={"grid": grid, "arc_degrees": [float(v) for v in t["arc_degrees"]],
                                "scanner": scanner},
                 simulation={"geometry": "fan", "scanner": "HTC2022", **settings})
    return network, loss_fn, train_set, val_set, val_fn, {"monitor": "psnr", "mode": "max"}, extra
