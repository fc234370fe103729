"""The 1-D Laplace toy of Fang, Buchanan & Sulam (ICLR 2024): which estimator each training loss learns.

Setting: ``x ~ Laplace(0, 1)``, ``y = x + N(0, 1)``. The MAP denoiser ``prox_{-sigma^2 log p}`` is
soft-thresholding at 1; the l2 loss learns the posterior mean, the l1 loss the posterior median (both
computed here by quadrature). Model: ``LearnedProximalNetwork(ICNN1D(hidden=50, layers=4, beta=10))``,
plain Adam, batch 2000 of fresh samples per step, non-negative weights clamped after every step.
Schedules (the paper's notebook, exps/laplacian/laplacian_train.ipynb):

    l2, l1: 10k steps at lr 1e-3, then 10k at 1e-4 (separate models)
    proximal matching, from the l1 model: gamma 0.5: 2k at 1e-3 + 2k at 1e-4; gamma 0.4 and 0.3: 4k each at
    1e-4; gamma 0.2: 4k at 1e-5; gamma 0.1: 4k at 1e-5 + 4k at 1e-6

``--scale s`` multiplies every step count by ``s``. The errors are max/mean ``|f(y) - target(y)|`` over
801 points of ``y`` in [-4, 4]; the learned regulariser ``R`` (``LearnedProximalNetwork.regulariser``,
shifted to ``R(0) = 0``) is compared with ``-sigma^2 log p(x) + c = |x|`` over ``x`` in [-3, 3].

Run from the repository root (one thread):
    .venv/bin/python docs/lpn_laplace_study.py docs/lpn_laplace.png

Measured with that command (the paper's full step counts, seed 0, one thread of a 2-core CPU container shared
with other jobs, torch 2.13): 1470 s in all (l2 370 s, l1 381 s, proximal matching 718 s). Printed
max/mean |f - target| over [-4, 4]:

    l2: posterior mean 0.062/0.018, posterior median 0.072/0.042, soft-threshold 0.498/0.163
    l1: posterior mean 0.078/0.040, posterior median 0.040/0.010, soft-threshold 0.431/0.131
    pm: posterior mean 0.367/0.153, posterior median 0.291/0.115, soft-threshold 0.180/0.042
    pm regulariser: max/mean |R(x) - R(0) - |x|| over [-3, 3]: 0.101/0.065 (all 121 points inverted)

Each map is closest to its own estimator. The proximal-matching map is soft-thresholding up to a rounded
kink at |y| = 1 (the 0.18 maximum; Softplus with beta = 10 cannot make a corner), and its regulariser
follows |x| up to the same rounding at 0. The l1 and l2 baselines differ by about 0.04 on average, the
gap between the posterior median and mean. tests/test_learned_prox.py trains a 13-23x shorter version
(antithetic batches) and reaches similar errors (proximal matching: 0.178/0.043).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from priors.learned_prox import LearnedProximalNetwork, ScheduleStep  # noqa: E402
from priors.nets import ICNN1D  # noqa: E402

BATCH = 2000
BASELINE = [(10_000, 1e-3, None), (10_000, 1e-4, None)]  # (steps, lr, gamma)
MATCHING = [(2_000, 1e-3, 0.5), (2_000, 1e-4, 0.5), (4_000, 1e-4, 0.4), (4_000, 1e-4, 0.3), (4_000, 1e-5, 0.2),
            (4_000, 1e-5, 0.1), (4_000, 1e-6, 0.1)]


def laplace_targets(y: np.ndarray) -> dict[str, np.ndarray]:
    """Posterior mean and median (trapezoidal quadrature on [-15, 15]) and the MAP (soft-thresholding at 1)."""
    t = np.linspace(-15.0, 15.0, 12001)
    logp = -np.abs(t)[None, :] - 0.5 * (t[None, :] - y[:, None]) ** 2
    w = np.exp(logp - logp.max(1, keepdims=True))
    cdf = np.concatenate([np.zeros((len(y), 1)), np.cumsum((w[:, 1:] + w[:, :-1]) / 2, axis=1)], axis=1)
    median = np.array([np.interp(0.5, c / c[-1], t) for c in cdf])
    return {"mean": (w * t).sum(1) / w.sum(1), "median": median, "soft": np.sign(y) * np.maximum(np.abs(y) - 1, 0)}


def sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + noise, x)``: ``x ~ Laplace(0, 1)`` by inverse transform, noise ``N(0, 1)``."""
    u = 1 - torch.rand(n, 1, generator=gen)  # in (0, 1]
    x = -torch.log(u) * torch.sign(torch.rand(n, 1, generator=gen) - 0.5)
    return x + torch.randn(n, 1, generator=gen), x


def train(f: LearnedProximalNetwork, stages, kind: str, scale: float, gen: torch.Generator) -> None:
    """Plain Adam over ``stages`` of ``(steps, lr, gamma)``; the loss is ``kind`` ("l2", "l1" or "pm")."""
    opt = torch.optim.Adam(f.parameters())
    for steps, lr, gamma in stages:
        for group in opt.param_groups:
            group["lr"] = lr
        for _ in range(max(1, round(steps * scale))):
            y, x = sample(BATCH, gen)
            loss = ScheduleStep(kind, gamma, lr).loss(f(y), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            f.clamp_weights()


def apply(f: LearnedProximalNetwork, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return f(torch.tensor(y, dtype=torch.float32)[:, None])[:, 0].double().numpy()


def errors(out: np.ndarray, targets: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    return {k: (float(np.abs(out - v).max()), float(np.abs(out - v).mean())) for k, v in targets.items()}


def learned_regulariser(f: LearnedProximalNetwork, x: np.ndarray) -> np.ndarray:
    """``R(x) - R(0)`` (``x`` must contain 0), inverted in float64; NaN where ``max |f(y*) - x| > 1e-6``
    (``x`` outside the range of ``f``, which is bounded when ``f`` has not learned to grow)."""
    f64, xt = copy.deepcopy(f).double(), torch.tensor(x, dtype=torch.float64)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, residual = f64.inverse(xt, tol=1e-8)
        r = f64.regulariser(xt, tol=1e-8).numpy()
    r = np.where(residual.numpy() <= 1e-6, r, np.nan)
    return r - r[np.argmin(np.abs(x))]


def figure(path: str, y, targets, outputs, x, r) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, style in (("soft", "k--"), ("mean", "C0:"), ("median", "C1:")):
        ax[0].plot(y, targets[name], style, lw=1, label={"soft": "MAP (soft thr.)", "mean": "posterior mean",
                                                       "median": "posterior median"}[name])
    for (name, out), color in zip(outputs.items(), ("C0", "C1", "C3")):
        ax[0].plot(y, out, color=color, lw=1.5, alpha=0.8, label=f"LPN, {name}")
    ax[0].set(title="learned prox f(y)", xlabel="y")
    ax[0].legend(fontsize=7)
    ax[1].plot(x, np.abs(x), "k--", lw=1, label="|x| (= -log p + c)")
    ax[1].plot(x, r, "C3", lw=1.5, label="R(x) - R(0), proximal matching")
    ax[1].set(title="learned regulariser", xlabel="x")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", help="path of the PNG figure to write")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count (1 = the paper's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    y, gen, start = np.linspace(-4.0, 4.0, 801), torch.Generator().manual_seed(args.seed), time.perf_counter()
    targets, outputs = laplace_targets(y), {}
    for kind, stages in (("l2", BASELINE), ("l1", BASELINE), ("pm", MATCHING)):
        if kind != "pm":  # proximal matching continues from the l1 model
            torch.manual_seed(args.seed)
            f = LearnedProximalNetwork(ICNN1D(hidden=50, layers=4, beta=10.0))
        train(f, stages, kind, args.scale, gen)
        outputs[kind] = apply(f, y)
        table = ", ".join(f"{t} {a:.3f}/{b:.3f}" for t, (a, b) in errors(outputs[kind], targets).items())
        print(f"{kind:>2} ({time.perf_counter() - start:6.0f} s)  max/mean |f - target|: {table}", flush=True)
    x = np.linspace(-3.0, 3.0, 121)
    r = learned_regulariser(f, x)
    err = np.abs(r - np.abs(x))
    print(f"pm regulariser: max/mean |R(x) - R(0) - |x|| over [-3, 3]: {np.nanmax(err):.3f}/{np.nanmean(err):.3f}"
          f" ({int(np.isnan(err).sum())} of {len(x)} points outside the range of f)")
    figure(args.figure, y, targets, outputs, x, r)
    print(f"figure: {args.figure}; total {time.perf_counter() - start:.0f} s with {args.threads} thread(s)")


if __name__ == "__main__":
    main()
