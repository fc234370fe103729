"""Where score-PC's time goes at 256^2 (parallel beam, 60 views, the shipped prior, one thread): seconds
per step, and the share of the network, of the projections (FBP and ray transforms) and of the rest.

    python docs/score_pc_profile.py [--size 256] [--steps 6] [--json docs/score_pc_profile.json]

The first call into ASTRA (projector set-up, about 2 s, once per operator) is made before the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from apps.ct import simulate  # noqa: E402
from operators import ParallelBeam2D  # noqa: E402
from priors import L2Fidelity  # noqa: E402
from recon.diffusion.score_pc import ScorePC  # noqa: E402
from recon.models import builtin, load_model  # noqa: E402
from recon.problem import Problem  # noqa: E402


def timed(f, bucket: dict, key: str):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        out = f(*args, **kwargs)
        bucket[key] += time.perf_counter() - started
        return out
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prior = load_model(builtin("score"), task="score").network
    d = simulate("ellipses", args.size, 60, "parallel", 0.01, 0)
    A = ParallelBeam2D((args.size, args.size), d.angles, d.sinogram.shape[-1])
    y = torch.from_numpy(d.sinogram)[None, None].float()
    A.adjoint(A(torch.zeros(1, 1, args.size, args.size)))  # ASTRA's set-up, once
    spent = {"network": 0.0, "projection": 0.0}
    solver = ScorePC(prior, steps=args.steps, lam=0.84, final_projection=False)
    prior.denoise = timed(prior.denoise, spent, "network")
    solver.project = timed(solver.project, spent, "projection")
    started = time.perf_counter()
    with torch.no_grad():
        solver.run(Problem(L2Fidelity(A, y)), torch.zeros(1, 1, args.size, args.size))
    total = time.perf_counter() - started
    out = {"size": args.size, "steps": args.steps, "threads": 1, "seconds_per_step": round(total / args.steps, 3),
           "network_share": round(spent["network"] / total, 3), "projection_share": round(spent["projection"] / total, 3),
           "other_share": round(1 - (spent["network"] + spent["projection"]) / total, 3),
           "load_average_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
