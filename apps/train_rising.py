"""``recon train rising``: the RISING network from pairs ``(x_k, x_IS)`` of simulated sinograms.

Each training image is projected (parallel beam over 180 degrees, ``[task] views``, Gaussian noise of
``[task] noise`` times the sinogram's RMS, as ``recon ct --phantom`` simulates), then reconstructed
twice as ``reconstruct(A, y, "tv")`` does, one image at a time (its own default weight): ``[task]
iterations`` Chambolle-Pock iterations (the input ``x_k``) and the full run (the target ``x_IS``, the
converged TV solution, not the ground truth). The pairs are cached in ``OUTPUT/cache/``; both are divided
by ``x_k``'s intensity scale, so the network learns a unit-free map.
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Subset

from apps.train import _patches, _SplitChannels, _Stacked, cached, noisy_sinograms

__all__ = ["simulate_pairs", "build_rising"]


def simulate_pairs(images: torch.Tensor, views: int, noise: float, iterations: int, seed: int,
                   progress: bool) -> dict[str, torch.Tensor]:
    """``{"early": x_k, "converged": x_IS}`` for every image."""
    from tqdm.auto import tqdm

    from recon.reconstruct import reconstruct

    A, chunks = noisy_sinograms(images, views, noise, seed, "rising")
    early, converged = [], []
    with tqdm(total=len(images), desc="TV pairs", disable=not progress) as bar:
        for _, y in chunks:
            for item in y.split(1):
                early.append(reconstruct(A, item, "tv", iterations=iterations).x)
                converged.append(reconstruct(A, item, "tv").x)
                bar.update(1)
    return {"early": torch.cat(early), "converged": torch.cat(converged)}


def build_rising(network, t: dict, images, output, seed: int, train_idx, val_idx, extra: dict, progress: bool):
    """The rising task's ``(network, loss_fn, train_set, val_set, val_fn, trainer_kwargs, card_extra)``."""
    from priors.tv import intensity_scale
    from recon.metrics import psnr
    from recon.models import geometry_of

    views, noise, k = int(t["views"]), float(t["noise"]), int(t["iterations"])
    if k < 1:
        raise ValueError(f"--config: [task] iterations = {k}; expected the TV iterations of the input, >= 1")
    key = {"images": hashlib.sha256(images.numpy().tobytes()).hexdigest(), "views": views, "noise": noise,
           "iterations": k, "seed": seed, "task": "rising"}
    pairs = cached(output, key, lambda: simulate_pairs(images, views, noise, k, seed, progress))
    s = intensity_scale(pairs["early"]).reshape(-1, 1, 1, 1)
    stacked = torch.cat([pairs["early"] / s, pairs["converged"] / s], dim=1)
    train_set = _SplitChannels(_patches(Subset(_Stacked(stacked), train_idx.indices), t, seed, False))
    val_set = _SplitChannels(_Stacked(stacked[val_idx.indices]))

    def loss_fn(model, batch):
        return torch.nn.functional.mse_loss(model.raw(batch[0], 1.0), batch[1])

    def val_fn(model, batch):
        target = batch[1]
        rng = float(target.max()) or 1.0
        return {"psnr": float(psnr(model(batch[0], 1.0), target, data_range=rng).mean()),
                "psnr_input": float(psnr(batch[0], target, data_range=rng).mean())}
    A, _ = noisy_sinograms(images[:1], views, noise, seed, "rising")
    extra.update(geometry=geometry_of(A), rising={"iterations": k},
                 simulation={"geometry": "parallel", "views": views, "noise": noise})
    return network, loss_fn, train_set, val_set, val_fn, {"monitor": "psnr", "mode": "max"}, extra
