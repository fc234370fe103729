"""Study: supervised vs unsupervised unrolled ISTA and IHT on the sparse-recovery toy (issue 18).

The setting of Nagahisa, Hayakawa & Iiguni (arXiv 2509.01331) as ../shared/reference/methods.md section 8
gives it: ``A`` 75 x 150 with N(0, 1) entries, redrawn for every problem; Bernoulli-Gaussian ``x``
(p = 12/150); noise std ``sqrt(p / 10^(SNR/10))`` at SNR 10 dB; ``lam = 10``. For each depth T the
unrolled network (``recon.learned.unrolled.UnrolledISTA``: one learnable step per layer, initialised at the
classical ``1 / ||A||^2``) is trained with Adam on fresh problems, once on the MSE to the truth
(supervised) and once on the objective ``1/2 ||A x_T - y||^2 + lam R(x_T)`` at its output
(unsupervised), and compared on 1000 held-out problems with the classical solver run for T
iterations and for CONVERGED iterations. R is the l1 norm (ISTA, soft threshold) or the l0 count
(IHT, hard threshold at sqrt(2 alpha lam)).

    PYTHONPATH=. .venv/bin/python docs/unrolled_ista_toy.py --out docs/unrolled_ista_toy
    PYTHONPATH=. .venv/bin/python docs/unrolled_ista_toy.py --unbounded --out docs/unrolled_ista_toy_unbounded

writes ``OUT.json`` and ``OUT.png`` (MSE and objective against T). By default each learned step stays below
``2 / ||A||^2`` (``UnrolledISTA``'s bound, ``||A||`` the largest over the batch); ``--unbounded`` lets it grow.
Single precision, one torch thread.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from operators.matrix import MatrixOperator
from recon.learned.unrolled import UnrolledISTA, objective, supervised_loss, unsupervised_loss
from recon.pnp import PnPProximalGradient

M, N, P, SNR_DB, LAM = 75, 150, 12 / 150, 10.0, 10.0
#: single precision: the per-problem matrices make every step memory-bound
DTYPE = torch.float32
DEPTHS = (1, 2, 5, 10, 20, 50, 100)
STEPS, BATCH, LR, TEST, CONVERGED = 300, 64, 0.03, 1000, 5000


def problems(batch: int, gen: torch.Generator):
    """``(A, y, x)``: ``batch`` problems, a matrix each."""
    A = MatrixOperator(torch.randn(batch, M, N, generator=gen, dtype=DTYPE))
    x = torch.randn(batch, N, generator=gen, dtype=DTYPE) * (torch.rand(batch, N, generator=gen) < P)
    sigma = math.sqrt(P / 10 ** (SNR_DB / 10))
    return A, A(x) + sigma * torch.randn(batch, M, generator=gen, dtype=DTYPE), x


def mse_db(x: torch.Tensor, x_true: torch.Tensor) -> float:
    """Normalised MSE in dB: ``10 log10(sum ||x - x*||^2 / sum ||x*||^2)`` over the test set."""
    return 10 * math.log10(float((x - x_true).pow(2).sum() / x_true.pow(2).sum()))


def classical(prox: str, A, y, iterations: int) -> torch.Tensor:
    """ISTA / IHT for ``iterations`` steps from zero, in chunks of 100 problems (each chunk's own step,
    1 / max ||A_b||^2 over its problems, as the unrolled networks take on the same chunks)."""
    net = UnrolledISTA(layers=1, lam=LAM, prox=prox)
    out = []
    for i in range(0, y.shape[0], 100):
        Ai = MatrixOperator(A.matrix[i:i + 100])
        problem = net.problem(Ai, y[i:i + 100])
        out.append(PnPProximalGradient(max_iter=iterations, tol=0.0).run(problem, torch.zeros(y[i:i + 100].shape[0], N,
                                                                                               dtype=y.dtype)).x)
    return torch.cat(out)


def chunked(net: UnrolledISTA, A, y) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(MatrixOperator(A.matrix[i:i + 100]), y[i:i + 100]) for i in range(0, y.shape[0], 100)])


def mean_objective(prox: str, A, y, x) -> float:
    net = UnrolledISTA(layers=1, lam=LAM, prox=prox)
    return float(torch.cat([objective(net.problem(MatrixOperator(A.matrix[i:i + 100]), y[i:i + 100]), x[i:i + 100])
                            for i in range(0, y.shape[0], 100)]).mean())


def train(prox: str, depth: int, loss: str, seed: int, bound: float | None) -> tuple[UnrolledISTA, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = UnrolledISTA(layers=depth, lam=LAM, prox=prox, step_bound=bound)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    started = time.perf_counter()
    for _ in range(STEPS):
        A, y, x = problems(BATCH, gen)
        opt.zero_grad()
        out = net(A, y)
        value = supervised_loss(out, x) if loss == "supervised" else unsupervised_loss(net.problem(A, y), out)
        value.backward()
        opt.step()
    return net, time.perf_counter() - started


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for row, prox in enumerate(("l1", "l0")):
        r = result[prox]
        name = "ISTA" if prox == "l1" else "IHT"
        for col, key in enumerate(("mse_db", "objective")):
            ax = axes[row, col]
            for label, style in (("classical", "k-o"), ("supervised", "C0-s"), ("unsupervised", "C1-^")):
                ax.plot(DEPTHS, [r[label][str(t)][key] for t in DEPTHS], style, label=f"{label} ({name})", ms=4)
            ax.axhline(r["converged"][key], color="grey", ls="--", label=f"{name}, {CONVERGED} iterations")
            ax.set_xscale("log")
            if key == "objective":
                ax.set_yscale("log")
            ax.set_ylabel("NMSE to the truth (dB)" if key == "mse_db" else "objective 1/2||Ax-y||^2 + lam R(x)")
            ax.set_title(f"{name}: {'MSE' if key == 'mse_db' else 'objective'} against layers T")
            ax.legend(fontsize=7)
            if row == 1:
                ax.set_xlabel("layers / iterations T")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="path without suffix for the .json and .png")
    ap.add_argument("--unbounded", dest="bound", action="store_const", const=None, default=2.0,
                    help="learn unbounded steps (exp(theta) / ||A||^2) instead of steps below 2 / ||A||^2")
    args = ap.parse_args()
    torch.set_num_threads(1)
    A, y, x = problems(TEST, torch.Generator().manual_seed(12345))
    snr = 10 * math.log10(float(A(x).pow(2).mean() / (y - A(x)).pow(2).mean()))
    result = {"setting": {"m": M, "n": N, "p": P, "snr_db_nominal": SNR_DB, "snr_db_measured": round(snr, 2),
                          "lam": LAM, "depths": DEPTHS, "train_steps": STEPS, "batch": BATCH, "lr": LR,
                          "test_problems": TEST, "converged_iterations": CONVERGED, "step_bound": args.bound}}
    for prox in ("l1", "l0"):
        r = {"classical": {}, "supervised": {}, "unsupervised": {}}
        ref = classical(prox, A, y, CONVERGED)
        r["converged"] = {"mse_db": mse_db(ref, x), "objective": mean_objective(prox, A, y, ref)}
        for t in DEPTHS:
            xc = classical(prox, A, y, t)
            r["classical"][str(t)] = {"mse_db": mse_db(xc, x), "objective": mean_objective(prox, A, y, xc)}
            for loss in ("supervised", "unsupervised"):
                net, seconds = train(prox, t, loss, seed=t, bound=args.bound)
                xt = chunked(net, A, y)
                r[loss][str(t)] = {"mse_db": mse_db(xt, x), "objective": mean_objective(prox, A, y, xt),
                                   "train_seconds": round(seconds, 1),
                                   "step_multipliers": [round(v, 4) for v in net.multipliers("eta").tolist()]}
                print(prox, t, loss, {k: round(v, 3) for k, v in r[loss][str(t)].items() if k != "step_multipliers"},
                      "classical", {k: round(v, 3) for k, v in r["classical"][str(t)].items()}, flush=True)
        result[prox] = r
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    figure(result, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
