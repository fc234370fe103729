"""Study: TV's default weight, chosen per image by cross-validation over views (issue 20, item 2).

The rule sees the sinogram's noise, size and geometry but not the object, and the best weight differs
by about 4x between phantom families at the same setting (docs/lam_rule_range_study.md). TV's default
on 2D CT lets the data pick it: every 4th view is held out, the rest are reconstructed at multiples
``m`` of the rule computed on them, and the ``m`` that best predicts the held-out views is taken; the
image is then reconstructed from all views at ``m`` times the rule (``recon.parameter_choice.cross_validation``).

This runs the default, ``reconstruct(A, y, "tv")``, and the rule, ``lam="rule"``, in the same process
on the cases of ``docs/lam_rule_range_study.py``; the loss is measured against the best weight of that
study's grid (``docs/lam_rule_range_study.jsonl``), the time as a ratio to the rule's.

    PYTHONPATH=. .venv/bin/python docs/lam_cv_study.py --set content --out docs/lam_cv_study.jsonl
    PYTHONPATH=. .venv/bin/python docs/lam_cv_study.py --table docs/lam_cv_study.jsonl

One torch thread per worker (``--workers``); appends one JSON line per case (a case already there is
skipped, so an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lam_rule_range_study import KEYS, SETS, loss_summary, problem  # noqa: E402

SEARCH = Path(__file__).resolve().parent / "lam_rule_range_study.jsonl"
CHECK = Path(__file__).resolve().parent / "lam_rule_range_check.jsonl"


def run(case) -> dict:
    """TV's default and the rule on one case: the default's weight, multiple of the rule and PSNR, both times."""
    from recon.metrics import psnr
    from recon.reconstruct import reconstruct

    _, A, y, x_true = problem(case)
    started = time.perf_counter()
    rule = reconstruct(A, y, "tv", lam="rule")
    rule_seconds, started = time.perf_counter() - started, time.perf_counter()
    r = reconstruct(A, y, "tv")
    seconds = time.perf_counter() - started
    if r.parameters["lam_rule"] != "cross-validation":
        raise RuntimeError(f"TV's default on {case} was {r.parameters['lam_rule']!r}, not cross-validation")
    return {**dict(zip(KEYS, case)), "cv_lam": r.parameters["lam"], "cv_multiple": r.parameters["cv_multiple"],
            "cv_psnr": float(psnr(r.x, x_true)), "seconds": seconds, "rule_psnr": float(psnr(rule.x, x_true)),
            "rule_seconds": rule_seconds}


def table(path: Path) -> str:
    """Markdown: per case the best weight on the grid, the cross-validated one, and the losses of it and the rule."""
    def load(p):
        return {tuple(r[k] for k in KEYS): r for r in map(json.loads, p.read_text().splitlines()) if r}

    searched, checked = load(SEARCH), load(CHECK)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    sets = {c: name for name, cases in SETS.items() for c in cases}
    lines = ["| set | phantom | size | views | geometry | noise | best on grid: x rule | best PSNR | CV: x rule | "
             "CV PSNR | CV loss | rule loss | CV seconds | x rule's time |", "|" + "---|" * 14]
    summary: dict[str, list[tuple[float, float]]] = {}
    for r in sorted(rows, key=lambda r: (list(SETS).index(sets[tuple(r[k] for k in KEYS)]), r["size"], r["views"])):
        key = tuple(r[k] for k in KEYS)
        name, s, c = sets[key], searched[key], checked[key]
        best = max(s["best_psnr"], c["rule_psnr"], r["cv_psnr"])
        summary.setdefault(name, []).append((best - r["cv_psnr"], best - c["rule_psnr"]))
        grid_best = s["best_multiple"] * s["rule_lam"] / c["rule_lam"]  # the study's grid is of the previous rule
        lines.append(f"| {name} | {r['phantom']} | {r['size']} | {r['views']} | {r['geometry']} | {r['noise']:.1%} | "
                     f"x{grid_best:.3g} | {s['best_psnr']:.2f} | x{r['cv_multiple']:.3g} | {r['cv_psnr']:.2f} | "
                     f"{best - r['cv_psnr']:.2f} | {best - c['rule_psnr']:.2f} | {r['seconds']:.0f} | "
                     f"{r['seconds'] / r['rule_seconds']:.1f} |")
    for name, losses in summary.items():
        for i, label in enumerate(("cross-validation", "rule")):
            lines.append(loss_summary(name, label, [row[i] for row in losses]))
    ratios = sorted(r["seconds"] / r["rule_seconds"] for r in rows)
    lines.append(f"\ntime, cross-validation over the rule's: median {ratios[len(ratios) // 2]:.1f}x, "
                 f"range {ratios[0]:.1f}-{ratios[-1]:.1f}x over {len(ratios)} cases")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=SETS)
    p.add_argument("--out", type=Path)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--table", type=Path, metavar="FILE", help="print the markdown table of a study file and stop")
    args = p.parse_args()
    if args.table:
        print(table(args.table), end="")
        return
    done = set()
    if args.out.exists():
        done = {tuple(json.loads(line)[k] for k in KEYS) for line in args.out.read_text().splitlines() if line.strip()}
    todo = sorted((c for c in SETS[args.set] if c not in done), key=lambda c: -c[1] ** 2 * c[2])  # longest first
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for row in pool.imap_unordered(run, todo):
            with args.out.open("a") as f:
                f.write(json.dumps({"set": args.set, **row}) + "\n")
            print(*[row[k] for k in KEYS[:5]], f"CV x{row['cv_multiple']:.3g} {row['cv_psnr']:.2f} dB "
                  f"({row['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
