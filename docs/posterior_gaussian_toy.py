"""How close posterior samplers come to the exact posterior of a linear-Gaussian toy (issue 17's first check).

Prior ``x0 ~ N(mu0, C)`` in ``d = 16`` dimensions (a random full covariance), data ``y = A x0 + sn e`` with a
Gaussian ``A`` (8 x 16) and ``sn = 0.1``: the posterior is Gaussian and known in closed form. Each sampler runs
the DDPM ancestral sampler (linear beta 1e-4..0.02, 1000 steps; ``priors.diffusion.VPSchedule``'s schedule)
with the ideal denoiser ``E[x0 | x0 + s n]`` of the prior, on ``N`` chains at once, and is scored by

* the distance of its sample mean from the posterior mean, over the posterior's total std (``sqrt(tr P)``);
* the relative Frobenius error of its sample covariance, and the ratio of its trace to ``tr P``;

with the Monte-Carlo error of an exact sampler at this ``N`` for scale. The control uses the exact
conditional denoiser ``E[x0 | x_t, y]``: it must land within Monte-Carlo error, or the harness is wrong.
DPS (Chung et al. 2023) uses ``E[x0 | x_t]`` and a step ``-zeta grad_{x_t} ||y - A x0_hat||``.

    python docs/posterior_gaussian_toy.py [--json docs/posterior_gaussian_toy.json]

numpy only; a few seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

D, M, NOISE, CHAINS = 16, 8, 0.1, 4000
BETA = np.linspace(1e-4, 0.02, 1000)
ABAR = np.cumprod(1 - BETA)


def setup(seed: int = 0):
    rng = np.random.default_rng(seed)
    L = rng.normal(size=(D, D)) / np.sqrt(D)
    C = L @ L.T + 0.2 * np.eye(D)
    mu0 = 0.3 * rng.normal(size=D)
    A = rng.normal(size=(M, D)) / np.sqrt(D)
    y = A @ (mu0 + L @ rng.normal(size=D)) + NOISE * rng.normal(size=M)
    return rng, C, mu0, A, y


def posterior(C, mu0, A, y):
    P = np.linalg.inv(np.linalg.inv(C) + A.T @ A / NOISE ** 2)
    return P @ (np.linalg.solve(C, mu0) + A.T @ y / NOISE ** 2), P


def ancestral(rng, x0_of, steps: int = 1000):
    """DDPM ancestral sampling over ``steps`` timesteps; ``x0_of(x_t, t, a)`` returns ``(x0_hat, extra)``
    where ``extra`` is added to the next iterate (a guidance step, or 0)."""
    ts = np.linspace(999, 0, steps).round().astype(int)
    x = rng.normal(size=(CHAINS, D))
    for i, t in enumerate(ts):
        a = ABAR[t]
        x0, extra = x0_of(x, t, a)
        if i + 1 == len(ts):
            return x0
        ap = ABAR[ts[i + 1]]
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        sig = np.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        x = np.sqrt(ap) * x0 + np.sqrt(max(1 - ap - sig ** 2, 0.0)) * eps + sig * rng.normal(size=x.shape) + extra
    return x


def exact_conditional(C, mu0, A, y):
    Ci = np.linalg.inv(C)

    def x0_of(x, t, a):
        s2 = (1 - a) / a  # x_t / sqrt(a) = x0 + s n
        P = np.linalg.inv(Ci + np.eye(D) / s2 + A.T @ A / NOISE ** 2)
        return ((Ci @ mu0)[None] + x / np.sqrt(a) / s2 + (A.T @ y / NOISE ** 2)[None]) @ P.T, 0.0
    return x0_of


def dps(C, mu0, A, y, zeta: float):
    def x0_of(x, t, a):
        s2 = (1 - a) / a
        K = C @ np.linalg.inv(C + s2 * np.eye(D))  # x0_hat = mu0 + K (x / sqrt(a) - mu0)
        x0 = mu0 + (x / np.sqrt(a) - mu0) @ K.T
        r = x0 @ A.T - y
        grad = (r / np.linalg.norm(r, axis=1, keepdims=True)) @ A @ K / np.sqrt(a)
        return x0, -zeta * grad
    return x0_of


def score(xs, mean, P) -> dict:
    cov = np.cov(xs.T)
    return {"mean_error_over_std": round(float(np.linalg.norm(xs.mean(0) - mean) / np.sqrt(np.trace(P))), 3),
            "cov_relative_error": round(float(np.linalg.norm(cov - P) / np.linalg.norm(P)), 3),
            "trace_ratio": round(float(np.trace(cov) / np.trace(P)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rng, C, mu0, A, y = setup()
    mean, P = posterior(C, mu0, A, y)
    rows = {"exact conditional denoiser (control)": score(ancestral(rng, exact_conditional(C, mu0, A, y)), mean, P)}
    for zeta in (0.1, 0.3, 1.0):
        rows[f"DPS zeta {zeta}"] = score(ancestral(rng, dps(C, mu0, A, y, zeta)), mean, P)
    out = {"setting": {"d": D, "m": M, "noise": NOISE, "chains": CHAINS, "steps": 1000,
                       "prior_trace": round(float(np.trace(C)), 3), "posterior_trace": round(float(np.trace(P)), 4)},
           "monte_carlo": {"mean_error_over_std": round(1 / np.sqrt(CHAINS), 3)},
           "samplers": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
