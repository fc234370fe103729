"""A score model as a denoiser and in reconstruction, against TV: where a `recon train score` run stands.

1. Denoising: the model's D(x, sigma) against the TV prox with its weight picked per image on the
   ground truth (the oracle of docs/lpn_stability_study.py), at sigma 0.01, 0.02, 0.05, 0.1, on
   held-out phantoms (random ellipses and COULE-like, seeds 1000+, never in a training set).
2. Reconstruction: parallel beam, 60 views, 1% noise, the same phantoms: TV (default weight),
   RED-Diff, DiffPIR and DPIR (the card's settings when it has them, else the defaults), PSNR and
   seconds.

    python docs/diffusion_pilot_study.py --weights runs/score/model.safetensors [--size 128]
        [--json docs/diffusion_pilot_study.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.training import CouleLikeDataset, EllipsesDataset  # noqa: E402
from operators import ParallelBeam2D  # noqa: E402
from priors.tv import TV  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon.models import load_model  # noqa: E402
from recon.reconstruct import reconstruct  # noqa: E402

SIGMAS = (0.01, 0.02, 0.05, 0.1)
METHODS = ("tv", "red-diff", "diffpir", "dpir")
TV_WEIGHTS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12)


def db(x: torch.Tensor, ref: torch.Tensor) -> float:
    return round(float(psnr(x.detach().clamp(0, 1), ref, data_range=1.0)), 2)


def phantoms(size: int) -> dict[str, torch.Tensor]:
    return {**{f"ellipses-{1000 + k}": EllipsesDataset(1, size=size, seed=1000 + k)[0][None].float() for k in (0, 1)},
            **{f"coule-{1000 + k}": CouleLikeDataset(1, size=size, seed=1000 + k)[0][None].float() for k in (0, 1)}}


def denoising(prior, ref: torch.Tensor, seed: int) -> dict:
    gen, out = torch.Generator().manual_seed(seed), {}
    for s in SIGMAS:
        noisy = ref + s * torch.randn(ref.shape, generator=gen)
        with torch.no_grad():
            model = db(prior.denoise(noisy, s), ref)
        tv = max((db(TV(prox_iterations=200).prox(noisy, w), ref), w) for w in TV_WEIGHTS)
        out[str(s)] = {"noisy": db(noisy, ref), "model": model, "tv_oracle": tv[0], "tv_weight": tv[1]}
    return out


def reconstruction(model, ref: torch.Tensor, seed: int) -> dict:
    size = ref.shape[-1]
    A = ParallelBeam2D((size, size), np.linspace(0, np.pi, 60, endpoint=False), int(np.ceil(size * 1.5)))
    y = A(ref)
    y = y + 0.01 * float(y.pow(2).mean().sqrt()) * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    out = {}
    for method in METHODS:
        started = time.perf_counter()
        r = reconstruct(A, y, method, **({} if method == "tv" else {"model": model}))
        out[method] = {"psnr": db(r.x, ref), "seconds": round(time.perf_counter() - started, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.weights, task="score")
    results: dict = {"weights": str(args.weights), "steps": model.card.get("steps"), "size": args.size,
                     "denoising": {}, "reconstruction": {}}
    for k, (name, ref) in enumerate(phantoms(args.size).items()):
        results["denoising"][name] = denoising(model.network, ref, k)
        results["reconstruction"][name] = reconstruction(model, ref, k)
        print(name, json.dumps(results["denoising"][name]), json.dumps(results["reconstruction"][name]), flush=True)
    means = {s: {key: round(float(np.mean([results["denoising"][n][str(s)][key] for n in results["denoising"]])), 2)
                 for key in ("noisy", "model", "tv_oracle")} for s in SIGMAS}
    recon = {m: round(float(np.mean([results["reconstruction"][n][m]["psnr"] for n in results["reconstruction"]])), 2)
             for m in METHODS}
    results["mean"] = {"denoising": means, "reconstruction": recon}
    print(json.dumps(results["mean"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
