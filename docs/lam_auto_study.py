"""Study: TV with lam="auto" (discrepancy principle, known noise) against the best lam on a grid.

Test phantoms of the quality table (Shepp-Logan, ellipses seeds 0 and 1), 256^2, 60 parallel
views, 1% noise, 300 Chambolle-Pock iterations from FBP; the grid is multiples of the
default rule's lam computed with the known noise level.

Run from the repository root (~25 min on one core):
    PYTHONPATH=. .venv/bin/python docs/lam_auto_study.py [out.json]
"""
import json
import sys

import torch

from apps.ct import simulate
from operators.ct import ct_operator
from recon.metrics import psnr
from recon.reconstruct import default_tv_lambda, reconstruct

torch.set_num_threads(1)
rows = []
for phantom, seed in (("shepp-logan", 0), ("ellipses", 0), ("ellipses", 1)):
    d = simulate(phantom, 256, 60, "parallel", 0.01, seed)
    A = ct_operator(d.geometry, d.angles, d.sinogram.shape[1])
    y, ref = torch.as_tensor(d.sinogram)[None, None], torch.as_tensor(d.reference)[None, None]
    rng = float(ref.max() - ref.min())
    lam0 = default_tv_lambda(A, y, d.noise_std)
    grid = {m: round(float(psnr(reconstruct(A, y, "tv", lam=m * lam0).x, ref, data_range=rng)), 2)
            for m in (0.5, 0.7, 1.0, 1.4, 2.0)}
    auto = reconstruct(A, y, "tv", lam="auto", noise_std=d.noise_std)
    row = {"phantom": f"{phantom}-{seed}", "lam0": lam0, "grid": grid, "auto_lam": auto.parameters["lam"],
           "auto_psnr": round(float(psnr(auto.x, ref, data_range=rng)), 2), "auto_iterations": auto.iterations}
    row["auto_minus_best"] = round(row["auto_psnr"] - max(grid.values()), 2)
    rows.append(row)
    print(row, flush=True)
json.dump(rows, open(sys.argv[1] if len(sys.argv) > 1 else "lam_auto_study.json", "w"), indent=1)
