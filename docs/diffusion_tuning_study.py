"""Tuning RED-Diff, DiffPIR, DPS and score-PC on tuning phantoms (not the benchmark's): a grid over each solver's
settings, PSNR and seconds per reconstruction, parallel beam, 60 views, 1% noise.

The problems are set up as ``reconstruct`` sets them up (``recon.diffusion.diffusion_recon``): the FBP
start, the data term ``||A x - y||^2 / (2 ||A||^2)``, DiffPIR's noise ``nu / ||A||`` with ``nu``
estimated from the sinogram. The tuning phantoms are random ellipses of seeds 100 and up
(``recon bench quality`` uses seeds 0-19 and Shepp-Logan; the training sets use hashed seeds).

    python docs/diffusion_tuning_study.py --weights RUN/model.safetensors --method diffpir \\
        --grid lam=0.5,1,2 --grid zeta=0,0.3 --grid steps=50 [--size 128] [--seeds 100,101,102]
        [--json out.json]

``--grid`` names any keyword of ``recon.diffusion.red_diff.REDDiff``, ``recon.diffusion.diffpir.DiffPIR``,
``recon.diffusion.dps.DPS`` or ``recon.diffusion.score_pc.ScorePC`` (numbers;
``renoise`` as 0/1), ``t_start``: timesteps evenly spaced from it down to 0 (``steps`` of them),
``ensemble`` (1, 4, 8: the prior's geometric self-ensemble) and ``cg_iterations`` (the data step's);
every combination is run on every phantom. ``--init tv`` starts from TV at its default weight
instead of FBP (a card's ``init``; its time is included in the seconds).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from apps.ct import simulate  # noqa: E402
from operators import ParallelBeam2D  # noqa: E402
from priors import L2Fidelity  # noqa: E402
from recon.diffusion.diffpir import DiffPIR  # noqa: E402
from recon.diffusion.diffusion_recon import dpir_timesteps  # noqa: E402
from recon.diffusion.dps import DPS  # noqa: E402
from recon.diffusion.red_diff import REDDiff  # noqa: E402
from recon.diffusion.score_pc import ScorePC  # noqa: E402
from recon.fbp import fbp  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon.models import load_model  # noqa: E402
from recon.parameter_choice.lambda_rule import estimate_noise_std  # noqa: E402
from recon.problem import Problem  # noqa: E402
from recon.reconstruct import reconstruct  # noqa: E402

INTEGERS = ("steps", "seed", "renoise", "t_start", "ensemble", "cg_iterations")


def problem(size: int, seed: int):
    d = simulate("ellipses", size, 60, "parallel", 0.01, seed)
    A = ParallelBeam2D((size, size), d.angles, d.sinogram.shape[-1])
    y = torch.from_numpy(d.sinogram)[None, None].float()
    return A, y, torch.from_numpy(d.reference)[None, None].float()


def solve(method: str, network, A, y, settings: dict, init: str = "fbp") -> torch.Tensor:
    if method == "tv":  # the baseline, at its default weight unless the grid gives lam
        return reconstruct(A, y, "tv", **settings).x
    settings = dict(settings)
    network = network.with_ensemble(settings.pop("ensemble", 1))
    norm_sq = float(A.norm()) ** 2
    prob = Problem((1.0 / norm_sq) * L2Fidelity(A, y, cg_iterations=settings.pop("cg_iterations", 50)))
    if method == "red-diff":
        solver = REDDiff(network, **settings)
    elif method in ("dps", "score-pc"):  # from noise: the start gives only the shape
        solver = DPS(network, **settings) if method == "dps" else ScorePC(network, **settings)
    else:
        nu = float(estimate_noise_std(y).mean())
        solver = DiffPIR(network, noise_std=nu / norm_sq ** 0.5, **settings)
    return solver.run(prob, reconstruct(A, y, "tv").x if init == "tv" else fbp(A, y)).x


def parse_grid(items: list[str]) -> dict:
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        grid[key] = [int(v) if key in INTEGERS else float(v) for v in values.split(",")]
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--method", choices=("red-diff", "diffpir", "dps", "score-pc", "tv"), required=True)
    ap.add_argument("--grid", action="append", default=[])
    ap.add_argument("--init", choices=("fbp", "tv"), default="fbp")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seeds", default="100,101,102")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    network = load_model(args.weights, task="score").network if args.method != "tv" else None
    grid = parse_grid(args.grid)
    cases = {seed: problem(args.size, seed) for seed in map(int, args.seeds.split(","))}
    rows = []
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values))
        if "renoise" in settings:
            settings["renoise"] = bool(settings["renoise"])
        if "t_start" in settings:  # timesteps evenly spaced from t_start down to 0
            first, count = int(settings.pop("t_start")), int(settings.pop("steps", 50))
            settings["timesteps"] = dpir_timesteps(count, first)
        scores, seconds = [], []
        for A, y, ref in cases.values():
            started = time.perf_counter()
            x = solve(args.method, network, A, y, settings, args.init)
            seconds.append(time.perf_counter() - started)
            scores.append(float(psnr(x.clamp(0, 1), ref, data_range=1.0)))
        shown = {k: v for k, v in settings.items() if k != "timesteps"} | dict(zip(grid, values))
        row = {"settings": shown, "psnr": [round(s, 2) for s in scores], "mean": round(float(np.mean(scores)), 2),
               "seconds": round(float(np.mean(seconds)), 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["mean"])
    print("best:", json.dumps(best))
    if args.json is not None:
        args.json.write_text(json.dumps({"method": args.method, "init": args.init, "size": args.size,
                                         "seeds": args.seeds, "weights": str(args.weights), "rows": rows,
                                         "best": best}, indent=1) + "\n")


if __name__ == "__main__":
    main()
