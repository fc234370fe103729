"""Deblurring study: Wiener vs TV (Chambolle-Pock) on Shepp-Logan.

Setting: 256x256 Shepp-Logan, circular Gaussian blur sigma = 2 px, white Gaussian noise
of std 0.01 * rms(blurred), seed 0. TV solves 1/2||Ax - y||^2 + lam TV(x), x >= 0, with
300 Chambolle-Pock iterations from x0 = y, at multiples of default_tv_lambda(A, y).
Wiener uses the oracle-best nsr of a log grid and the estimated nsr (estimate_nsr).

Run from the repository root (~1-2 min on 2 cores):
    .venv/bin/python docs/deblur_study.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from data.phantoms import shepp_logan
from operators.blur import Blur, gaussian_kernel
from priors import TV, L2Fidelity, NonNegativity
from recon import ChambollePock, Problem
from recon.metrics import psnr, ssim
from recon.reconstruct import default_tv_lambda, estimate_noise_std
from recon.wiener import estimate_nsr, wiener


def setting(size: int = 256, sigma: float = 2.0, noise: float = 0.01, seed: int = 0):
    """``(x_true, A, y, noise_std)`` for the study's deblurring problem."""
    x = shepp_logan(size)
    A = Blur(gaussian_kernel(sigma), (size, size), boundary="circular")
    blurred = A(x)
    std = noise * float(blurred.square().mean().sqrt())
    gen = torch.Generator().manual_seed(seed)
    return x, A, blurred + std * torch.randn(blurred.shape, generator=gen, dtype=x.dtype), std


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def tv(A, y, lam, iterations=300):
    problem = Problem(L2Fidelity(A, y), lam * TV(), constraint=NonNegativity())
    return ChambollePock(max_iter=iterations, tol=0.0).run(problem, y.clone()).x


def best_wiener(A, y, x, grid=np.logspace(-6, 0, 61)):
    """The nsr of ``grid`` with the highest PSNR against the truth (an oracle) and its image."""
    scores = [float(psnr(wiener(A, y, nsr=float(r)), x, data_range=1.0)) for r in grid]
    r = float(grid[int(np.argmax(scores))])
    return r, wiener(A, y, nsr=r)


def main() -> None:
    torch.set_num_threads(2)
    x, A, y, std = setting()
    lam0 = default_tv_lambda(A, y)
    print(f"noise std {std:.3e} (estimated {float(estimate_noise_std(y)):.3e}); default lam {lam0:.3e}")
    rows = []
    (r, xw), t = timed(lambda: best_wiener(A, y, x))
    rows.append((f"Wiener, best nsr {r:.2e} (grid search)", xw, t))
    r_est = float(estimate_nsr(y))
    xw, t = timed(lambda: wiener(A, y, nsr=r_est))
    rows.append((f"Wiener, estimated nsr {r_est:.2e}", xw, t))
    for m in (0.25, 0.5, 1.0, 2.0, 4.0):
        xt, t = timed(lambda: tv(A, y, m * lam0))
        rows.append((f"TV, lam = {m:g} x default = {m * lam0:.2e}", xt, t))
    print(f"{'method':48s} {'PSNR':>7s} {'SSIM':>6s} {'seconds':>8s}")
    for name, est, t in rows:
        print(f"{name:48s} {float(psnr(est, x, 1.0)):7.2f} {float(ssim(est, x, 1.0)):6.3f} {t:8.2f}")


if __name__ == "__main__":
    main()
