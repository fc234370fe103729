"""Tune PnP-ADMM with a learned proximal network for sparse-view CT, on tuning phantoms only.

The LPN's prox ignores the step, so its strength in PnP-ADMM is the penalty ``rho``: with the data
term ``||A x - y||^2 / (2 ||A||^2)`` the fixed point minimises ``data + rho R`` (``R`` the learned
regulariser). For a MAP denoiser at noise ``sigma`` (``R = sigma^2 phi``, ``phi = -log p``) and
sinogram noise ``nu``, MAP estimation ``||A x - y||^2 / (2 nu^2) + phi`` asks for
``rho_MAP = nu^2 / (sigma^2 ||A||^2)``; the grid is a range of multiples of it. Tuning phantoms: random ellipses, seeds 100 and 101 (the quality benchmark uses seeds 0..19 and
Shepp-Logan, training used ``EllipsesDataset`` seeds), 256^2, 60 views, 1% noise. PSNR is recorded
along each run, so one run per ``rho`` gives every iteration count.

    python docs/lpn_ct_study.py --weights recon/weights/lpn_ct256.safetensors [--write]

``--write`` stores the best ``{"rho_factor", "iterations"}`` in the model card's ``"pnp"`` entry (what
``reconstruct(..., "lpn")`` uses by default: ``rho = rho_factor * rho_MAP``), with this command.
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
from operators.ct import ct_operator  # noqa: E402
from priors import L2Fidelity, LearnedProxPrior, NonNegativity  # noqa: E402
from recon.fbp import fbp  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon.models import load_model, update_card  # noqa: E402
from recon.pnp import PnPADMM  # noqa: E402
from recon.problem import Problem  # noqa: E402
from recon.reconstruct import estimate_noise_std, reconstruct  # noqa: E402

SEEDS = (100, 101)
FACTORS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
RECORD = (10, 20, 30, 50, 75, 100)


def trace(model, A, y, ref, rho: float, iterations: int, cg_iterations: int) -> dict[int, float]:
    """PSNR along one PnP-ADMM run (at the iterations in RECORD and the last)."""
    problem = Problem(L2Fidelity(A, y) * (1.0 / A.norm() ** 2), LearnedProxPrior(model.network),
                      constraint=NonNegativity())
    solver = PnPADMM(rho=rho, max_iter=iterations, tol=0.0, cg_iterations=cg_iterations)
    out = {}
    for k, state in enumerate(solver.iterate(problem, fbp(A, y)), start=1):
        if k in RECORD or k == iterations:
            out[k] = float(psnr(state.x, ref, data_range=float(ref.max() - ref.min())))
        if k >= iterations:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--cg-iterations", type=int, default=10)
    ap.add_argument("--factors", type=float, nargs="+", default=FACTORS)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--write", action="store_true", help="store the best rho and iteration count in the card")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.weights, task="lpn", device=args.device)
    sigma = float(model.card["sigma"])
    results: dict = {}
    for seed in SEEDS:
        data = simulate("ellipses", args.size, 60, "parallel", 0.01, seed)
        A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1]).to(args.device)
        y = torch.as_tensor(data.sinogram, device=args.device)[None, None]
        ref = torch.as_tensor(data.reference, device=args.device)[None, None]
        nu = float(estimate_noise_std(y).mean())  # as reconstruct does
        rho_map = nu ** 2 / (sigma ** 2 * A.norm() ** 2)
        tv = reconstruct(A, y, "tv").x
        results.setdefault("tv", {})[seed] = float(psnr(tv, ref, data_range=float(ref.max() - ref.min())))
        print(f"seed {seed}: TV {results['tv'][seed]:.2f} dB", flush=True)
        for f in args.factors:
            t0 = time.perf_counter()
            psnrs = trace(model, A, y, ref, f * rho_map, args.iterations, args.cg_iterations)
            results.setdefault(f, {})[seed] = {"rho": f * rho_map, "psnr": psnrs,
                                               "seconds": time.perf_counter() - t0}
            print(f"seed {seed} rho {f:g} x {rho_map:.4g}: " + ", ".join(f"{k}: {v:.2f}" for k, v in psnrs.items()),
                  flush=True)
    tv = results.pop("tv")
    best = max(((f, k) for f in results for k in results[f][SEEDS[0]]["psnr"]),
               key=lambda fk: sum(results[fk[0]][s]["psnr"][fk[1]] for s in SEEDS))
    mean = sum(results[best[0]][s]["psnr"][best[1]] for s in SEEDS) / len(SEEDS)
    print(f"best: {best[0]:g} x rho_MAP, {best[1]} iterations, mean PSNR {mean:.2f} dB "
          f"(TV {sum(tv.values()) / len(tv):.2f} dB)")
    if args.json:
        args.json.write_text(json.dumps({"tv": tv, **{str(f): v for f, v in results.items()}}, indent=1))
    if args.write:
        update_card(args.weights, pnp={"rho_factor": best[0], "iterations": best[1],
                                       "cg_iterations": args.cg_iterations, "tuning_psnr": round(mean, 2),
                                       "tuned_by": "python docs/lpn_ct_study.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
