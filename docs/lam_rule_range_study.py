"""Study: the default TV weight across image size, views, geometry and noise (issue 20, item 2).

For each case (phantom, size, views, geometry, relative noise, seed) it simulates the sinogram as
``recon ct --phantom`` does (``apps.ct.simulate``: pixel 1 mm, noise relative to the sinogram's RMS),
reconstructs with ``reconstruct(A, y, "tv", lam=m * centre)`` (300 Chambolle-Pock iterations from
FBP, x >= 0, the product's defaults) and searches m on the grid 2^(k/2): m = 1, 1/2, 2, then
doubling towards the better side until the best is bracketed, then the two sqrt(2) neighbours of
the best. ``centre`` is the rule before issue 20, ``1.8 sigma_hat rms(A^T eps)`` (``PREVIOUS_FACTOR``),
with the noise estimated from the sinogram as ``recon ct`` does. ``--check`` reconstructs once at the
default rule as it is now, ``--check-edge-term`` at the edge-density variant (not adopted). Each evaluation also records the residual ratio ||A x - y|| / (sigma sqrt m),
the quantity the discrepancy principle (``lam="auto"``) sets to tau.

    PYTHONPATH=. .venv/bin/python docs/lam_rule_range_study.py --set fit --workers 2 --out docs/lam_rule_range_study.jsonl
    PYTHONPATH=. .venv/bin/python docs/lam_rule_range_study.py --set fit --check --out docs/lam_rule_range_check.jsonl

Appends one JSON line per case to ``--out`` (a case already there is skipped, so an interrupted run
resumes). One torch thread per worker.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from pathlib import Path

#: (phantom, size, views, geometry, noise, seed): the fitting cases cover sizes 64-256, views
#: 30-180, both geometries and noise 0.5-5%, phantoms alternating
FIT = [(ph, n, v, geo, nz, 0)
       for i, (n, v, nz) in enumerate((n, v, nz) for n in (64, 128, 256) for v in (30, 60, 180)
                                      for nz in (0.005, 0.02, 0.05))
       for ph, geo in [(("shepp-logan", "ellipses")[i % 2], ("parallel", "fan")[(i // 2) % 2])]]
#: held out: sizes, views, noise levels and seeds not used for fitting, up to 512
HELD_OUT = [("ellipses", 96, 45, "parallel", 0.01, 5), ("shepp-logan", 96, 120, "fan", 0.03, 0),
            ("shepp-logan", 192, 90, "fan", 0.01, 0), ("ellipses", 192, 30, "parallel", 0.005, 6),
            ("ellipses", 128, 60, "parallel", 0.01, 7), ("shepp-logan", 128, 60, "parallel", 0.01, 0),
            ("shepp-logan", 384, 60, "parallel", 0.01, 0), ("ellipses", 384, 120, "fan", 0.02, 8),
            ("ellipses", 512, 30, "fan", 0.01, 9), ("shepp-logan", 512, 60, "parallel", 0.01, 0),
            ("ellipses", 64, 180, "fan", 0.03, 10), ("shepp-logan", 256, 45, "fan", 0.01, 0)]
#: held out for the content term: COULE-like phantoms (grey ellipses and bars), new ellipse seeds (one at
#: the setting of the previous rule's worst case) and Shepp-Logan in settings not used before
CONTENT = [("coule", 64, 60, "parallel", 0.05, 1), ("coule", 128, 30, "fan", 0.01, 2),
           ("coule", 256, 60, "parallel", 0.01, 3), ("coule", 128, 180, "parallel", 0.005, 4),
           ("coule", 96, 90, "fan", 0.02, 5), ("coule", 192, 45, "parallel", 0.03, 6),
           ("ellipses", 64, 60, "parallel", 0.05, 11), ("ellipses", 256, 60, "fan", 0.01, 12),
           ("ellipses", 128, 120, "parallel", 0.03, 13), ("shepp-logan", 64, 60, "fan", 0.05, 0)]
SETS = {"fit": FIT, "held-out": HELD_OUT, "content": CONTENT}
KEYS = ("phantom", "size", "views", "geometry", "noise", "seed")
#: the grid's centre: the rule before issue 20, PREVIOUS_FACTOR sigma_hat rms(A^T eps)
PREVIOUS_FACTOR = 1.8


def operator(data):
    """The CT operator of ``apps.ct.simulate``'s geometry."""
    import numpy as np

    from operators import FanBeam2D, ParallelBeam2D

    g, shape = data.geometry, tuple(data.geometry["image_shape"])
    det = data.sinogram.shape[1]
    if g["geometry"] == "parallel":
        return ParallelBeam2D(shape, np.asarray(data.angles), det)
    return FanBeam2D(shape, np.asarray(data.angles), det, g["source_origin"], g["origin_detector"],
                     detector_spacing=g["detector_spacing"])


def problem(case):
    """``(data, A, y, x_true)`` of a case, as ``recon ct --phantom`` simulates it."""
    import torch

    from apps.ct import simulate

    torch.set_num_threads(1)
    data = simulate(*case)
    y = torch.from_numpy(data.sinogram)[None, None].float()
    return data, operator(data), y, torch.from_numpy(data.reference)[None, None].float()


def check_case(case) -> dict:
    """The default rule as it is now (``reconstruct`` with ``lam=None``) on one case."""
    from recon.metrics import psnr
    from recon.reconstruct import reconstruct

    data, A, y, x_true = problem(case)
    r = reconstruct(A, y, "tv")
    return dict(zip(("phantom", "size", "views", "geometry", "noise", "seed"), case),
                rule_lam=r.parameters["lam"], rule_psnr=float(psnr(r.x, x_true)))


#: the edge-density variant, tried and not adopted (docs/lam_rule_range_study.md): the rule times
#: (EDGE_REFERENCE / f)^EDGE_EXPONENT with constant EDGE_FACTOR instead of the rule's, f the edge density
#: TV(x) / (N rms(x)) of a pilot reconstruction (PILOT_ITERATIONS Chambolle-Pock iterations at the rule's weight
#: with EDGE_FACTOR), which then starts the final one
EDGE_FACTOR, EDGE_REFERENCE, EDGE_EXPONENT, PILOT_ITERATIONS = 1.15, 12.0, 2.0 / 3.0, 20


def edge_density(x) -> float:
    """``TV(x) / (N rms(x))`` of one image ``(1, 1, N, N)``: edge length in image sides, weighted by contrast."""
    import torch

    x = x[0, 0].double()
    gx, gy = torch.diff(x, dim=0, append=x[-1:]), torch.diff(x, dim=1, append=x[:, -1:])
    return float((gx ** 2 + gy ** 2).sqrt().sum() / (x.shape[0] * x.pow(2).mean().sqrt()))


def edge_term_weight(A, y):
    """``(lam, pilot, f)``: the edge-density variant's weight for ``(A, y)``, its pilot and edge density."""
    from recon.fbp import fbp
    from recon.parameter_choice.lambda_rule import TV_LAMBDA_FACTOR, default_tv_lambda

    base = default_tv_lambda(A, y) * EDGE_FACTOR / TV_LAMBDA_FACTOR
    pilot = tv_solve(A, y, base, fbp(A, y), PILOT_ITERATIONS)
    f = edge_density(pilot)
    return base * (EDGE_REFERENCE / f) ** EDGE_EXPONENT, pilot, f


def tv_solve(A, y, lam, x0, iterations=300):
    """TV with x >= 0 by Chambolle-Pock from ``x0``, as ``reconstruct(A, y, "tv")`` runs it."""
    from priors import TV, L2Fidelity, NonNegativity
    from recon.chambolle_pock import ChambollePock
    from recon.problem import Problem

    problem_ = Problem(L2Fidelity(A, y), lam * TV(), constraint=NonNegativity())
    return ChambollePock(max_iter=iterations, tol=1e-5).run(problem_, x0).x


def check_edge_term(case) -> dict:
    """The edge-density variant of the rule on one case (the final solve starts from the pilot)."""
    from recon.metrics import psnr

    data, A, y, x_true = problem(case)
    lam, pilot, f = edge_term_weight(A, y)
    x = tv_solve(A, y, lam, pilot)
    return dict(zip(KEYS, case), rule_lam=lam, rule_psnr=float(psnr(x, x_true)), edge_density=f)


def run_case(case) -> dict:
    from recon.metrics import psnr
    from recon.parameter_choice.cross_validation import grid_minimum
    from recon.parameter_choice.lambda_rule import _backprojected_noise_rms, estimate_noise_std
    from recon.reconstruct import reconstruct

    phantom, size, views, geometry, noise, seed = case
    started = time.perf_counter()
    data, A, y, x_true = problem(case)
    sigma_hat = float(estimate_noise_std(y).mean())
    centre = PREVIOUS_FACTOR * sigma_hat * _backprojected_noise_rms(A, y)
    m = y[0].numel()
    evals: dict[float, dict] = {}

    def negative_psnr(multiple: float) -> float:
        r = reconstruct(A, y, "tv", lam=centre * multiple)
        ratio = float((A(r.x) - y).norm()) / (data.noise_std * math.sqrt(m))
        evals[multiple] = {"multiple": multiple, "lam": centre * multiple, "psnr": float(psnr(r.x, x_true)),
                           "residual_ratio": ratio, "iterations": r.iterations}
        return -evals[multiple]["psnr"]

    best, _ = grid_minimum(negative_psnr, max_doublings=6)  # the search of lam="cv", on the PSNR
    return {"phantom": phantom, "size": size, "views": views, "geometry": geometry, "noise": noise, "seed": seed,
            "noise_std": data.noise_std, "sigma_hat": sigma_hat, "sinogram_rms": float(y.pow(2).mean().sqrt()),
            "bp_noise_rms": _backprojected_noise_rms(A, y), "measurements": m, "pixels": size * size,
            "rule_lam": centre, "best_multiple": evals[best]["multiple"], "best_psnr": evals[best]["psnr"],
            "evaluations": [evals[k] for k in sorted(evals)], "seconds": time.perf_counter() - started}


def table(search: Path, check: Path, variant: Path | None = None) -> str:
    """Markdown: per case the best weight on the grid, the rule as checked, the edge-density variant (when
    ``variant`` has the case) and the previous rule."""
    def load(path):
        return {tuple(r[k] for k in KEYS): r for r in map(json.loads, path.read_text().splitlines()) if r}

    rows = [json.loads(line) for line in search.read_text().splitlines() if line.strip()]
    checked, variants = load(check), load(variant) if variant else {}
    lines = ["| set | phantom | size | views | geometry | noise | best on grid (x previous rule) | best PSNR | "
             "rule: x previous | rule PSNR | loss | edge density | edge-density variant loss | previous rule PSNR | "
             "previous loss |", "|" + "---|" * 15]
    summary: dict[str, list[tuple]] = {}
    for r in sorted(rows, key=lambda r: (list(SETS).index(r["set"]), r["size"], r["views"], r["noise"])):
        key = tuple(r[k] for k in KEYS)
        if key not in checked:  # searched, not checked yet
            continue
        c = checked[key]
        previous = next(e["psnr"] for e in r["evaluations"] if e["multiple"] == 1.0)
        best = max(r["best_psnr"], c["rule_psnr"], variants.get(key, c)["rule_psnr"])
        loss, variant_loss = best - c["rule_psnr"], best - variants[key]["rule_psnr"] if key in variants else None
        summary.setdefault(r["set"], []).append((loss, variant_loss, best - previous))
        lines.append(f"| {r['set']} | {r['phantom']} | {r['size']} | {r['views']} | {r['geometry']} | {r['noise']:.1%} | "
                     f"x{r['best_multiple']:.3g} | {r['best_psnr']:.2f} | x{c['rule_lam'] / r['rule_lam']:.3g} | "
                     f"{c['rule_psnr']:.2f} | {loss:.2f} | {variants.get(key, {}).get('edge_density', float('nan')):.1f} | "
                     f"{'-' if variant_loss is None else f'{variant_loss:.2f}'} | {previous:.2f} | {best - previous:.2f} |")
    for name, rows_ in summary.items():
        for i, label in enumerate(("rule", "edge-density variant", "previous rule")):
            losses = [row[i] for row in rows_ if row[i] is not None]
            if losses:
                lines.append(loss_summary(name, label, losses))
    return "\n".join(lines) + "\n"


def loss_summary(name: str, label: str, losses: list[float]) -> str:
    """The summary line under a study table: how many cases, the worst and mean loss, how many within 1 dB."""
    return (f"\n{name}, {label}: {len(losses)} cases, loss max {max(losses):.2f} dB, mean "
            f"{sum(losses) / len(losses):.2f} dB, {sum(v <= 1.0 for v in losses)} within 1 dB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=SETS)
    p.add_argument("--out", type=Path)
    p.add_argument("--table", nargs="+", type=Path, metavar="FILE",
                   help="SEARCH CHECK [VARIANT]: print the markdown table of a search file, a check file and "
                        "optionally a --check-edge-term file, and stop")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--check", action="store_true",
                   help="reconstruct each case once at the default rule as it is now (no search)")
    p.add_argument("--check-edge-term", action="store_true",
                   help="the same with the edge-density variant of the rule (not adopted)")
    args = p.parse_args()
    if args.table:
        if len(args.table) not in (2, 3):
            p.error("--table: expected SEARCH CHECK [VARIANT]")
        print(table(*args.table), end="")
        return
    done = set()
    if args.out.exists():
        done = {tuple(json.loads(line)[k] for k in ("phantom", "size", "views", "geometry", "noise", "seed"))
                for line in args.out.read_text().splitlines() if line.strip()}
    todo = [c for c in SETS[args.set] if c not in done]
    todo.sort(key=lambda c: -c[1] ** 2 * c[2])  # the longest first, so the workers finish together
    with mp.get_context("spawn").Pool(args.workers) as pool:
        if args.check or args.check_edge_term:
            for row in pool.imap_unordered(check_edge_term if args.check_edge_term else check_case, todo):
                with args.out.open("a") as f:
                    f.write(json.dumps({"set": args.set, **row}) + "\n")
                print(*[row[k] for k in ("phantom", "size", "views", "geometry", "noise")],
                      f"rule {row['rule_psnr']:.2f} dB", flush=True)
            return
        for row in pool.imap_unordered(run_case, todo):
            with args.out.open("a") as f:
                f.write(json.dumps({"set": args.set, **row}) + "\n")
            print(row["phantom"], row["size"], row["views"], row["geometry"], row["noise"],
                  f"best x{row['best_multiple']:.3g} {row['best_psnr']:.2f} dB ({row['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
