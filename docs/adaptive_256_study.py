"""Study: the adaptive methods' weights at 256^2 on a tuning phantom (ellipses seed 100).

Multiples of each method's default weight (recon.reconstruct.default_lambda, constants fitted at
128^2 by docs/svtv_study.py and docs/graphla_study.py), 60 parallel views, 1% noise, 300 iterations.

Measured (ellipses-100, PSNR in dB at the multiple of the then default): TV 36.68 / 37.38 / 37.67
at 0.7 / 1 / 1.4; SV-TV 36.59 / 37.13 / 37.41 / 37.53 at 0.7 / 1 / 1.4 / 2; graphLa+TV 35.76 / 37.07 /
37.69 / 37.95 at 0.5 / 1 / 2 / 4; graphLa+FBP 32.93 / 33.23 / 33.63 / 34.06 at 1 / 2 / 4 / 8 (graph
constant 10 then). Hence the 256^2 constants: graphLa+TV 40, graphLa+FBP 80.

Run from the repository root (~15 min on one core):
    PYTHONPATH=. .venv/bin/python docs/adaptive_256_study.py [seed]
"""
import sys

import torch

from apps.ct import simulate
from operators.ct import ct_operator
from priors import GraphLaplacianPrior
from recon.fbp import fbp
from recon.metrics import psnr
from recon.reconstruct import default_lambda, reconstruct

torch.set_num_threads(1)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 100
d = simulate("ellipses", 256, 60, "parallel", 0.01, seed)
A = ct_operator(d.geometry, d.angles, d.sinogram.shape[1])
y, ref = torch.as_tensor(d.sinogram)[None, None], torch.as_tensor(d.reference)[None, None]
rng = float(ref.max() - ref.min())
score = lambda x: round(float(psnr(x, ref, data_range=rng)), 2)  # noqa: E731
tv = reconstruct(A, y, "tv")
for m in (0.7, 1.4):
    print("tv", m, score(reconstruct(A, y, "tv", lam=m * tv.parameters["lam"]).x), flush=True)
print("tv", 1.0, score(tv.x), flush=True)


def tv_estimate(_y):
    return tv.x


tv_estimate.__name__ = "tv"
for method, est, mults in (("svtv", tv_estimate, (0.7, 1.0, 1.4, 2.0)), ("graphla-tv", tv_estimate, (0.5, 1.0, 2.0, 4.0)),
                           ("graphla-fbp", "fbp", (1.0, 2.0, 4.0, 8.0))):
    x_hat = tv.x if est is tv_estimate else fbp(A, y)
    base = (default_lambda(method, A, y, prior=GraphLaplacianPrior.from_estimate(x_hat)) if "graphla" in method
            else default_lambda(method, A, y))
    for m in mults:
        r = reconstruct(A, y, method, lam=m * base, estimate=est)
        print(method, m, score(r.x), flush=True)
