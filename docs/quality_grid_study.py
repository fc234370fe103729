"""Study: each method at its best weight on a grid, and TV with lam="auto", on quality-table phantoms.

The same data as ``recon bench quality`` (256^2, 60 parallel views, 1% noise, seeds as there),
300 Chambolle-Pock iterations from FBP. Weights are multiples of each method's default
(recon.reconstruct.default_lambda); SV-TV and graphLa+TV use the TV reconstruction at its
default weight as pre-estimate. TV with lam="auto" uses the known noise level.

Measured (PSNR in dB, best on the grid; Shepp-Logan-0 / ellipses-0 / ellipses-1): FBP 24.15 / 26.28 /
24.65, TV 40.36 / 38.47 / 37.37, SV-TV 39.95 / 38.16 / 37.52, graphLa+TV 41.17 / 38.86 / 37.97,
graphLa+FBP 39.90 / 35.73 / 33.60. That run used the graphLa constant 10 of docs/graphla_study.py as
base (the grid's best lay at 4-16x, hence today's 40 and 80), so rerunning shifts the graphLa grids.
TV with lam="auto" as coded now (tau 0.93, every trial from FBP): 40.33 / 38.36 / 37.26 (3 trials each);
the first version (tau 0.9, warm starts) gave 40.30 / 36.89 / 36.81.

Run from the repository root, one phantom per process (~25 min each on one core):
    PYTHONPATH=. .venv/bin/python docs/quality_grid_study.py shepp-logan 0 [out.json]
    PYTHONPATH=. .venv/bin/python docs/quality_grid_study.py ellipses 0 [out.json]
"""
import json
import sys

import torch

from apps.ct import simulate
from operators.ct import ct_operator
from priors import GraphLaplacianPrior
from recon.fbp import fbp
from recon.metrics import psnr
from recon.reconstruct import default_lambda, reconstruct

torch.set_num_threads(1)
GRIDS = {"tv": (0.5, 0.7, 1.0, 1.4, 2.0), "svtv": (0.7, 1.0, 1.4, 2.0, 2.8),
         "graphla-tv": (0.5, 1.0, 2.0, 4.0, 8.0), "graphla-fbp": (1.0, 2.0, 4.0, 8.0, 16.0)}
phantom, seed = sys.argv[1], int(sys.argv[2])
d = simulate(phantom, 256, 60, "parallel", 0.01, seed)
A = ct_operator(d.geometry, d.angles, d.sinogram.shape[1])
y, ref = torch.as_tensor(d.sinogram)[None, None], torch.as_tensor(d.reference)[None, None]
rng = float(ref.max() - ref.min())
score = lambda x: round(float(psnr(x, ref, data_range=rng)), 2)  # noqa: E731
tv = reconstruct(A, y, "tv")
row = {"phantom": f"{phantom}-{seed}", "fbp": score(fbp(A, y)), "grid": {}}


def tv_estimate(_y):
    return tv.x


tv_estimate.__name__ = "tv"
for method, grid in GRIDS.items():
    est = {"svtv": tv_estimate, "graphla-tv": tv_estimate, "graphla-fbp": "fbp"}.get(method)
    x_hat = tv.x if est is tv_estimate else fbp(A, y)
    base = (default_lambda(method, A, y, prior=GraphLaplacianPrior.from_estimate(x_hat)) if "graphla" in method
            else default_lambda(method, A, y))
    row["grid"][method] = {}
    for m in grid:
        x = tv.x if (method, m) == ("tv", 1.0) else reconstruct(A, y, method, lam=m * base,
                                                                  **({"estimate": est} if est else {})).x
        row["grid"][method][m] = score(x)
        print(method, m, row["grid"][method][m], flush=True)
auto = reconstruct(A, y, "tv", lam="auto", noise_std=d.noise_std)
row["tv_auto"] = {"psnr": score(auto.x), "lam": auto.parameters["lam"], "default_lam": tv.parameters["lam"],
                  "iterations": auto.iterations}
row["best"] = {m: max(v.values()) for m, v in row["grid"].items()}
row["tv_auto_minus_best"] = round(row["tv_auto"]["psnr"] - row["best"]["tv"], 2)
print(row, flush=True)
json.dump(row, open(sys.argv[3] if len(sys.argv) > 3 else f"grid_{phantom}_{seed}.json", "w"), indent=1)
