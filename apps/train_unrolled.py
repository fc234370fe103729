"""``recon train rising`` and ``recon train lpd``: networks trained on simulated sinograms of one geometry.

``rising``: each training image is projected (parallel beam over 180 degrees, ``[task] views``, Gaussian noise of
``[task] noise`` times the sinogram's RMS, as ``recon ct --phantom`` simulates), then reconstructed
twice as ``reconstruct(A, y, "tv", lam="rule")`` does, one image at a time (the weight rule): ``[task]
iterations`` Chambolle-Pock iterations (the input ``x_k``) and the full run (the target ``x_IS``, the
converged TV solution, not the ground truth). The pairs are cached in ``OUTPUT/cache/``; both are divided
by ``x_k``'s intensity scale, so the network learns a unit-free map.

``lpd``: learned primal-dual (``priors.nets.LearnedPrimalDual``) from each image's noisy sinogram (the same
simulation) to the image itself, on whole images (the operator needs them), with the FBP's intensity
scale; a network with ``[model] start_iterations = k`` starts from TV after ``k`` iterations, computed
as ``reconstruct`` does and cached with the sinograms. ``unrolled-ista`` (``priors.nets.UnrolledISTANet``)
the same, on the same simulated data; its ``[task] loss`` is ``"supervised"`` (as lpd: MSE to the
image) or ``"unsupervised"``: the objective at the output, ``||A_hat x - y_hat||^2 / 2 + tv TV(x)`` per
pixel on the intensity scale, which needs no image (the validation PSNR still uses them). The cards record the geometry;
``recon.models.check_geometry`` refuses data of another.
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Dataset, Subset

from apps.train import _patches, _SplitChannels, _Stacked, cached, noisy_sinograms, simulation_operator

__all__ = ["tv_iterates", "simulate_pairs", "completion", "build_rising", "build_lpd"]


def tv_iterates(A, sinograms, iterations: int | None, progress: bool, desc: str) -> torch.Tensor:
    """``reconstruct(A, y, "tv", lam="rule", iterations=...)`` of every item of the ``sinograms`` chunks, one at a
    time (the weight rule): the TV a trained network starts from or imitates (``None``: run to convergence)."""
    from tqdm.auto import tqdm

    from recon.reconstruct import reconstruct

    out = []
    with tqdm(total=sum(len(y) for y in sinograms), desc=desc, disable=not progress) as bar:
        for y in sinograms:
            for item in y.split(1):
                out.append(reconstruct(A, item, "tv", lam="rule", iterations=iterations).x)
                bar.update(1)
    return torch.cat(out)


def simulate_pairs(images: torch.Tensor, views: int, noise: float, iterations: int, seed: int,
                   progress: bool) -> dict[str, torch.Tensor]:
    """``{"early": x_k, "converged": x_IS}`` for every image."""
    A, chunks = noisy_sinograms(images, views, noise, seed, "rising")
    ys = [y for _, y in chunks]
    return {"early": tv_iterates(A, ys, iterations, progress, "TV inputs"),
            "converged": tv_iterates(A, ys, None, progress, "TV targets")}


def completion(inputs: torch.Tensor, targets: torch.Tensor, train_idx, val_idx, train_items=lambda d: d):
    """``(train_set, val_set, loss_fn, val_fn)`` for a network that completes a solver's image (``RisingNet``):
    pairs divided by the input's intensity scale (unit-free), MSE of the raw output, validation PSNR of the
    output and of the input against the target. ``train_items`` wraps the training subset (e.g. into patches)."""
    from priors.tv import intensity_scale
    from recon.metrics import psnr

    s = intensity_scale(inputs).reshape(-1, 1, 1, 1)
    stacked = _Stacked(torch.cat([inputs / s, targets / s], dim=1))
    train_set = _SplitChannels(train_items(Subset(stacked, train_idx.indices)))
    val_set = _SplitChannels(Subset(stacked, val_idx.indices))

    def loss_fn(model, batch):
        return torch.nn.functional.mse_loss(model.raw(batch[0], 1.0), batch[1])

    def val_fn(model, batch):
        target = batch[1]
        rng = float(target.max()) or 1.0
        return {"psnr": float(psnr(model(batch[0], 1.0), target, data_range=rng).mean()),
                "psnr_input": float(psnr(batch[0], target, data_range=rng).mean())}
    return train_set, val_set, loss_fn, val_fn


def build_rising(network, t: dict, images, output, seed: int, train_idx, val_idx, extra: dict, progress: bool):
    """The rising task's ``(network, loss_fn, train_set, val_set, val_fn, trainer_kwargs, card_extra)``."""
    from recon.models import geometry_of

    views, noise, k = int(t["views"]), float(t["noise"]), int(t["iterations"])
    if k < 1:
        raise ValueError(f"--config: [task] iterations = {k}; expected the TV iterations of the input, >= 1")
    key = {"images": hashlib.sha256(images.numpy().tobytes()).hexdigest(), "views": views, "noise": noise,
           "iterations": k, "seed": seed, "task": "rising"}
    pairs = cached(output, key, lambda: simulate_pairs(images, views, noise, k, seed, progress))
    train_set, val_set, loss_fn, val_fn = completion(pairs["early"], pairs["converged"], train_idx, val_idx,
                                                     lambda d: _patches(d, t, seed, False))
    extra.update(geometry=geometry_of(simulation_operator(images, views, "rising")), rising={"iterations": k},
                 simulation={"geometry": "parallel", "views": views, "noise": noise})
    return network, loss_fn, train_set, val_set, val_fn, {"monitor": "psnr", "mode": "max"}, extra


class _Items(Dataset):
    """Items ``(y, x, scale[, x0])``: a sinogram, its image, the FBP's intensity scale and, for a network that
    starts from an estimate, that estimate."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, i: int):
        return tuple(t[i] for t in self.tensors)


def build_lpd(network, t: dict, images, output, seed: int, train_idx, val_idx, extra: dict, progress: bool):
    """The lpd (and unrolled-ista) task's ``(network, loss_fn, train_set, val_set, val_fn, trainer_kwargs,
    card_extra)``."""
    from priors import TV
    from priors.tv import intensity_scale
    from recon.fbp import fbp
    from recon.metrics import psnr
    from recon.models import geometry_of

    views, noise = int(t["views"]), float(t["noise"])
    k = int(getattr(network, "start_iterations", 0))
    A, chunks = noisy_sinograms(images, views, noise, seed, "lpd")
    key = {"images": hashlib.sha256(images.numpy().tobytes()).hexdigest(), "views": views, "noise": noise,
           "seed": seed, "task": "lpd", **({"start_iterations": k} if k else {})}

    def simulate() -> dict[str, torch.Tensor]:
        ys = [y for _, y in chunks]
        data = {"y": torch.cat(ys), "scale": torch.cat([intensity_scale(fbp(A, c)) for c in ys])}
        if k:
            data["x0"] = tv_iterates(A, ys, k, progress, "TV starts")
        return data
    data = cached(output, key, simulate)
    everything = _Items(data["y"], images, data["scale"], *([data["x0"]] if k else []))
    train_set, val_set = Subset(everything, train_idx.indices), Subset(everything, val_idx.indices)
    on: dict = {}

    def operator(device):
        if device not in on:
            on[device] = A.to(device)
        return on[device]

    loss = t.get("loss", "supervised")
    if loss not in ("supervised", "unsupervised"):
        raise ValueError(f"--config: [task] loss = {loss!r}; expected 'supervised' or 'unsupervised'")
    tv = TV()

    def loss_fn(model, batch):
        y, x, s, *x0 = batch
        s4 = s.reshape(-1, 1, 1, 1)
        A = operator(y.device)
        out = model(A, y, s, *x0) / s4
        if loss == "supervised":
            return torch.nn.functional.mse_loss(out, x / s4)
        norm = A.norm(device=y.device)  # the data term on the network's own scale, per pixel
        fit = 0.5 * (A(out) / norm - y / (norm * s4)).pow(2).flatten(1).sum(1)
        return ((fit + float(t["tv"]) * tv.value(out)) / out[0].numel()).mean()

    def val_fn(model, batch):
        y, x, s, *x0 = batch
        scores = {"psnr": float(psnr(model(operator(y.device), y, s, *x0).clamp(0, 1), x, data_range=1.0).mean())}
        if x0:
            scores["psnr_start"] = float(psnr(x0[0].clamp(0, 1), x, data_range=1.0).mean())
        return scores
    extra.update(geometry=geometry_of(A), simulation={"geometry": "parallel", "views": views, "noise": noise})
    if "loss" in t:
        extra["loss"] = {"loss": loss, "tv": float(t["tv"])}
    return network, loss_fn, train_set, val_set, val_fn, {"monitor": "psnr", "mode": "max"}, extra
