"""Study: each CT method's default weight after the balanced Chambolle-Pock steps.

The weight constants in ``recon.reconstruct.LAMBDA_FACTORS`` were calibrated with the diagonal step
rule, whose 300 iterations were far from converged (``docs/cp_steps_study.py``). This reruns the
calibration on the tuning phantoms (random ellipses seeds 100 and 101, 256 x 256, 60 views, 1% noise;
never the test phantoms of ``recon bench quality``): each method at ``m`` times its current default
weight, 300 iterations from FBP (as ``reconstruct`` runs), PSNR against the phantom. Run from the
repository root, one phantom per process (about 10 minutes each on one core):

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python docs/lambda_factor_study.py ROUND 100
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python docs/lambda_factor_study.py ROUND 101

with ROUND 1 (multipliers 1/4 to 2 for every method), then 2 (around round 1's best).

Measured (2026-11-23, this project's 2-core CPU, factors before the change), PSNR dB:

    ellipses-100 tv           0.25: 34.12  0.5: 36.44  1: 38.38  2: 38.86  3: 38.53  4: 38.08  6: 37.17
    ellipses-100 svtv         0.25: 35.83  0.5: 37.98  1: 39.02  2: 39.02  3: 38.54  4: 38.03  6: 37.09
    ellipses-100 graphla-fbp  0.00390625: 31.68  0.015625: 32.30  0.0625: 32.71  0.25: 33.41  0.5: 33.41  1: 33.41  2: 33.41
    ellipses-100 graphla-tik  0.00390625: 31.38  0.015625: 32.87  0.0625: 35.83  0.25: 37.98  0.5: 38.21  1: 38.23  2: 38.23
    ellipses-100 graphla-tv   0.00390625: 31.21  0.015625: 32.02  0.0625: 35.03  0.25: 37.29  0.5: 37.64  1: 37.75  2: 37.76
    ellipses-101 tv           0.25: 32.26  0.5: 34.82  1: 37.03  2: 37.56  3: 37.24  4: 36.76  6: 35.82
    ellipses-101 svtv         0.25: 34.28  0.5: 36.56  1: 37.69  2: 37.79  3: 37.35  4: 36.82  6: 35.84
    ellipses-101 graphla-fbp  0.00390625: 29.66  0.015625: 30.30  0.0625: 30.72  0.25: 31.38  0.5: 31.38  1: 31.38  2: 31.38
    ellipses-101 graphla-tik  0.00390625: 29.38  0.015625: 30.68  0.0625: 33.47  0.25: 36.17  0.5: 36.61  1: 36.64  2: 36.64
    ellipses-101 graphla-tv   0.00390625: 29.31  0.015625: 30.29  0.0625: 33.46  0.25: 35.76  0.5: 36.24  1: 36.39  2: 36.42

Multipliers are of the factors before this study (TV 0.9, SV-TV 2.52, graphLa+TV 36, graphLa+FBP/Tik 72).
Chosen: TV x2 (1.8), SV-TV x1.5 (3.78 = 2.1 x TV's new), graphLa unchanged in absolute terms.
"""
import sys

import torch

from apps.ct import simulate
from operators.ct import ct_operator
from priors import L2Fidelity, NonNegativity
from priors.tv import DEFAULT_ETA, DEFAULT_P, DEFAULT_SPREAD
from recon import ChambollePock, Problem
from recon.fbp import fbp
from recon.metrics import psnr
from recon.reconstruct import _adaptive_prior, default_lambda

GRIDS = {  # method -> multipliers of its current default weight (round 1, then round 2 around the best)
    1: dict.fromkeys(("tv", "svtv", "graphla-fbp", "graphla-tik", "graphla-tv"), (0.25, 0.5, 1.0, 2.0)),
    2: {"tv": (3.0, 4.0, 6.0), "svtv": (3.0, 4.0, 6.0),
        **dict.fromkeys(("graphla-fbp", "graphla-tik", "graphla-tv"), (1 / 256, 1 / 64, 1 / 16))},
}

torch.set_num_threads(1)
grid = GRIDS[int(sys.argv[1])]
for seed in map(int, sys.argv[2:]):
    d = simulate("ellipses", 256, 60, "parallel", 0.01, seed)
    A = ct_operator(d.geometry, d.angles, d.sinogram.shape[1])
    y, x_true = torch.as_tensor(d.sinogram)[None, None], torch.as_tensor(d.reference)[None, None]
    x_fbp = fbp(A, y)
    for method, multipliers in grid.items():
        prior, _ = _adaptive_prior(method, A, y, x_fbp, None, 300, True, None, DEFAULT_ETA, DEFAULT_P,
                                   DEFAULT_SPREAD, None, None)
        lam = default_lambda(method, A, y, None, prior)
        row = {}
        for m in multipliers:
            problem = Problem(L2Fidelity(A, y), m * lam * prior, constraint=NonNegativity())
            x = ChambollePock(max_iter=300, tol=1e-5).run(problem, x_fbp).x
            row[m] = round(float(psnr(x, x_true)), 2)
        print(f"ellipses-{seed} {method} {row}", flush=True)
