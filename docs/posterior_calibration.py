"""Posterior samples on CT, scored against the truth: the PSNR of the posterior mean (and of TV at its
default weight, for scale), the calibration of the standard deviation (``recon.diffusion.posterior.calibration``:
Pearson correlation of std and |mean - truth|, coverage of the pixel-wise 90% intervals), and the
seconds per sample.

The phantoms are ``recon bench quality``'s held-out ones (Shepp-Logan and random ellipses of seeds
0, 1, ...; parallel beam over 180 deg, 1% noise), at ``--size``; the sampler runs with the shipped
diffusion prior, ``--steps`` and ``--lam`` (its weight: DPS's zeta, score-PC's projection weight). Results are appended
one phantom per line to ``--jsonl`` as they finish, and phantoms already there are skipped, so an
interrupted run resumes. ``--save DIR`` keeps each phantom's truth, mean and std for figures
(``docs/posterior_figure.py``).

    python docs/posterior_calibration.py --method score-pc --samples 16 --size 128 --ellipses 4 \\
        --steps 300 --lam 1 --jsonl docs/posterior_calibration.jsonl
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

from apps.ct import simulate  # noqa: E402
from operators import ParallelBeam2D  # noqa: E402
from recon.diffusion.posterior import SAMPLERS, calibration, posterior  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon.reconstruct import reconstruct  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=SAMPLERS, required=True)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--views", type=int, default=60)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--ellipses", type=int, default=4, help="random-ellipse phantoms, seeds 0..N-1, after Shepp-Logan")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--lam", type=float, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", type=Path, required=True)
    ap.add_argument("--save", type=Path, default=None, help="folder for each phantom's truth, mean, std (.npz)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    done = set()
    if args.jsonl.exists():
        done = {(r["phantom"], r["method"], r["samples"], r["steps"], r["lam"], r["size"])
                for r in map(json.loads, args.jsonl.read_text().splitlines()) if r}
    cases = [("shepp-logan", 0)] + [("ellipses", s) for s in range(args.ellipses)]
    for phantom, seed in cases:
        name = phantom if phantom == "shepp-logan" else f"ellipses-{seed}"
        if (name, args.method, args.samples, args.steps, args.lam, args.size) in done:
            continue
        d = simulate(phantom, args.size, args.views, "parallel", args.noise, seed)
        A = ParallelBeam2D((args.size, args.size), d.angles, d.sinogram.shape[-1])
        y = torch.from_numpy(d.sinogram)[None, None].float()
        truth = torch.from_numpy(d.reference)[None, None].float()
        p = posterior(A, y, args.method, samples=args.samples, iterations=args.steps, lam=args.lam)
        tv = reconstruct(A, y, "tv")
        c = calibration(p, truth)
        row = {"phantom": name, "method": args.method, "samples": args.samples, "size": args.size,
               "steps": args.steps, "lam": args.lam,
               "psnr_mean": round(float(psnr(p.mean.clamp(0, 1), truth, data_range=1.0)), 2),
               "psnr_samples": [round(float(psnr(s.clamp(0, 1), truth, data_range=1.0)), 2) for s in p.samples],
               "psnr_tv": round(float(psnr(tv.x.clamp(0, 1), truth, data_range=1.0)), 2),
               "pearson_std_error": c["pearson"][0], "coverage_90": c["coverage"][0],
               "seconds_per_sample": round(p.parameters["seconds_per_sample"], 2), "threads": args.threads,
               "finished": time.strftime("%Y-%m-%d %H:%M")}
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.save / f"{name}_{args.method}_{args.size}.npz", truth=truth[0, 0].numpy(),
                                mean=p.mean[0, 0].numpy(), std=p.std[0, 0].numpy(), row=json.dumps(row))
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
