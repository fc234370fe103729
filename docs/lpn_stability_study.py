"""Why PnP with the shipped LPN stops short of TV: the learned prox as a denoiser and as an iteration.

Three measurements on the tuning phantoms (random ellipses, seeds 100 and 101, 256^2; the quality
benchmark uses seeds 0..19 and Shepp-Logan):

1. Denoising: the LPN (trained at noise ``sigma``) against the TV prox with its weight picked per
   image on the ground truth (an oracle), on the phantom plus Gaussian noise of std 0.02 and 0.05.
2. The prox iterated on the clean phantom, ``x <- LPN(x)``: a proximal-point iteration, which
   decreases the learned regulariser ``R``; how far it walks from the phantom shows where ``R``
   puts its minima.
3. PnP schemes on 60 views, 1% noise: ADMM at the card's ``rho`` (``recon.pnp.PnPADMM``), HQS (the
   same without the dual variable) and proximal gradient with step 1 (``1 / L``, the step with a
   convergence guarantee), PSNR along 100 iterations.

    python docs/lpn_stability_study.py [--weights FILE] [--json docs/lpn_stability_study.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from apps.ct import simulate  # noqa: E402
from operators.base import conjugate_gradient  # noqa: E402
from operators.ct import ct_operator  # noqa: E402
from priors import L2Fidelity, LearnedProxPrior, NonNegativity  # noqa: E402
from priors.tv import TV  # noqa: E402
from recon.fbp import fbp  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon.models import builtin, load_model  # noqa: E402
from recon.pnp import PnPADMM, PnPProximalGradient  # noqa: E402
from recon.problem import Problem  # noqa: E402
from recon.reconstruct import estimate_noise_std  # noqa: E402

SEEDS = (100, 101)
NOISE = (0.02, 0.05)
TV_WEIGHTS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08)
PROX_RECORD = (1, 2, 5, 10, 20)
PNP_RECORD = (10, 20, 30, 50, 100)


def db(x: torch.Tensor, ref: torch.Tensor) -> float:
    return round(float(psnr(x.detach(), ref, data_range=1.0)), 2)


def denoising(prox, ref: torch.Tensor, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for s in NOISE:
        noisy = ref + s * torch.randn(ref.shape, generator=gen, dtype=ref.dtype)
        tv = max((db(TV(prox_iterations=200).prox(noisy, w), ref), w) for w in TV_WEIGHTS)
        out[str(s)] = {"noisy": db(noisy, ref), "lpn": db(prox(noisy), ref), "tv_oracle": tv[0], "tv_weight": tv[1]}
    return out


def iterated(prox, ref: torch.Tensor) -> dict:
    x, out = ref.clone(), {}
    for k in range(1, max(PROX_RECORD) + 1):
        x = prox(x)
        if k in PROX_RECORD:
            out[k] = {"psnr": db(x, ref), "max": round(float(x.max()), 3)}
    return out


def hqs(prox, A, y, x0, rho: float, iterations: int, record) -> None:
    """Half-quadratic splitting: ``w = argmin data + rho/2 ||w - x||^2``, ``x = prox(w)``."""
    s = 1.0 / A.norm() ** 2
    rhs, x, w = s * A.adjoint(y), x0.clone(), x0.clone()
    for k in range(1, iterations + 1):
        w = conjugate_gradient(lambda p: s * A.normal(p) + rho * p, rhs + rho * x, w, 10, 1e-5)
        x = prox(w).clamp_min(0)
        record(k, x)


def schemes(model, prior, data, iterations: int) -> dict:
    A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
    y = torch.as_tensor(data.sinogram)[None, None]
    ref = torch.as_tensor(data.reference)[None, None]
    nu = float(estimate_noise_std(y).mean())
    rho = float(model.card["pnp"]["rho_factor"]) * nu ** 2 / (float(model.card["sigma"]) ** 2 * A.norm() ** 2)
    problem = Problem(L2Fidelity(A, y) * (1.0 / A.norm() ** 2), prior, constraint=NonNegativity())
    x0 = fbp(A, y)
    out: dict = {"rho": rho}

    def tracer(name):
        out[name] = {}
        return lambda k, x: out[name].__setitem__(k, db(x, ref)) if k in PNP_RECORD else None

    for name, solver in (("admm", PnPADMM(rho=rho, max_iter=iterations, tol=0.0, cg_iterations=10)),
                         ("pgd_step1", PnPProximalGradient(eta=1.0, max_iter=iterations, tol=0.0))):
        record = tracer(name)
        for k, state in enumerate(solver.iterate(problem, x0), start=1):
            record(k, state.x)
            if k >= iterations:
                break
    hqs(lambda v: prior.prox(v, 1.0), A, y, x0, rho, iterations, tracer("hqs"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None, help="an LPN (default: the shipped one)")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.weights or builtin("lpn"), task="lpn")
    prior = LearnedProxPrior(model.network)
    prox = lambda v: prior.prox(v, 1.0).detach()  # noqa: E731
    root = Path(__file__).resolve().parents[1]
    where = model.path.resolve()
    results: dict = {"weights": str(where.relative_to(root) if where.is_relative_to(root) else where),
                     "sigma": model.card["sigma"]}
    for seed in SEEDS:
        t = time.perf_counter()
        data = simulate("ellipses", 256, 60, "parallel", 0.01, seed)
        ref = torch.as_tensor(data.reference)[None, None]
        results[seed] = {"denoising": denoising(prox, ref, seed), "iterated_prox": iterated(prox, ref),
                         "pnp": schemes(model, prior, data, args.iterations)}
        print(seed, json.dumps(results[seed]), f"{time.perf_counter() - t:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
