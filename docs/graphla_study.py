"""One-off study: graphLa+Psi's weight and graph sigma on the tuning phantoms (as docs/svtv_study.py).

||L x||_1 with L from Psi = FBP or TV (TV at its default weight), radius 3, at multiples m of
the graph rule's lam (recon.reconstruct.default_lambda with the TV constant), graph sigma 1e-3
and 1e-2, and for one setting Chambolle-Pock's balance 1 instead of 10.

Measured (stopped after two phantoms to free the machine): graphLa+TV, sigma 1e-3, best at
m = 3-10 (Shepp-Logan 41.44 dB at 3, 41.29 at 10; ellipses-100 37.97 at 10, the grid's end),
against the best TV of docs/svtv_study.py, 40.19 / 37.52; graphLa+FBP 40.98 (m 3) / 36.15 (m 10);
sigma 1e-2 was better only for graphLa+FBP on the ellipses. Chambolle-Pock's balance 1 left the
objective higher after 300 iterations than the default 10 (264 vs 220 at m 10), so 10 stays.
Default chosen: m = 10, sigma 1e-3.

Run from the repository root (~15 min on one core):
    PYTHONPATH=. .venv/bin/python docs/graphla_study.py [out.json]
"""
import json
import sys

import numpy as np
import torch

from data.phantoms import random_ellipses, shepp_logan
from operators import ParallelBeam2D
from priors import GraphLaplacianPrior, L2Fidelity, NonNegativity, TV
from recon import ChambollePock, Problem
from recon.fbp import fbp
from recon.metrics import psnr
from recon.reconstruct import default_tv_lambda

torch.set_num_threads(1)
N, V = 128, 60
A = ParallelBeam2D((N, N), np.linspace(0, np.pi, V, endpoint=False), int(np.ceil(N * 1.45)))
rows = []
for name in ("shepp-logan", "ellipses-100", "ellipses-101"):
    x = shepp_logan(N) if name == "shepp-logan" else random_ellipses(N, seed=int(name[-3:]))
    y0 = A(x)
    y = y0 + 0.01 * float(y0.pow(2).mean().sqrt()) * torch.randn(y0.shape, generator=torch.Generator().manual_seed(0))
    lam0, x_fbp = default_tv_lambda(A, y), fbp(A, y)
    rng = float(x.max() - x.min())

    def solve(prior, lam, balance=10.0):
        problem = Problem(L2Fidelity(A, y), lam * prior, constraint=NonNegativity())
        r = ChambollePock(max_iter=300, tol=1e-5, balance=balance).run(problem, x_fbp)
        return r.x, round(float(psnr(r.x, x, data_range=rng)), 2), float(problem.objective(r.x))

    x_tv, _, _ = solve(TV(), lam0)
    for est, x_hat in (("fbp", x_fbp), ("tv", x_tv)):
        for sigma in (1e-3, 1e-2):
            prior = GraphLaplacianPrior.from_estimate(x_hat, sigma=sigma)
            lam_g = lam0 / float(prior.laplacian.degree.mean())
            for balance in ((10.0, 1.0) if (est, sigma) == ("tv", 1e-3) else (10.0,)):
                for m in (0.1, 0.3, 1.0, 3.0, 10.0):
                    _, p, obj = solve(prior, m * lam_g, balance)
                    rows.append({"phantom": name, "estimate": est, "sigma": sigma, "balance": balance, "m": m,
                                 "psnr": p, "objective": obj})
                    print(rows[-1], flush=True)
json.dump(rows, open(sys.argv[1] if len(sys.argv) > 1 else "graphla_study.json", "w"), indent=1)
