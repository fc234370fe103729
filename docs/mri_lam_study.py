"""How close the default MRI TV weight lands to the best weight of a grid (simulated data).

Simulated multi-coil scans (not the real data the tests use): Shepp-Logan with a
0.1 floor inside the head, 8 smooth coils, complex noise at 1% and 3% of the k-space
RMS, 4x random lines and 6x Poisson disc; ESPIRiT maps from the undersampled data.
Prints PSNR of TV at factor x the default lam, for factors 1/32 .. 1.

    .venv/bin/python docs/mri_lam_study.py

Printed with the CT constant c = 0.9 (before recon.mri.MRI_TV_LAMBDA_FACTOR existed as 0.11):

    case                          0.0312  0.0625   0.125    0.25     0.5       1   best/default
    random 4x, noise 1%            38.68   42.71   44.78   44.60   42.35   38.63   0.125 (+6.14 dB)
    poisson 6x, noise 1%           50.38   49.65   48.31   46.40   43.99   41.07   0.03125 (+9.32 dB)
    random 4x, noise 3%            37.18   41.02   42.70   42.84   42.14   39.23   0.25 (+3.61 dB)
    poisson 6x, noise 3%           43.85   43.79   43.40   42.70   41.53   39.65   0.03125 (+4.19 dB)

so c became 0.9 / 8 = 0.11; rerunning now prints factors relative to that.
"""

from __future__ import annotations

import numpy as np
import torch

from data.phantoms import shepp_logan
from operators import MultiCoilMRI, espirit_maps, make_mask, rss
from operators.fourier import fft2c, ifft2c
from recon.metrics import psnr
from recon.mri import default_mri_tv_lambda, reconstruct_mri

FACTORS = (1 / 32, 1 / 16, 0.125, 0.25, 0.5, 1.0)


def scan(size: int, noise: float, seed: int) -> torch.Tensor:
    yy, xx = np.mgrid[:size, :size] / size
    centres = [(0, 0), (0, 0.5), (0, 1), (0.5, 1), (1, 1), (1, 0.5), (1, 0), (0.5, 0)]
    maps = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.4) * np.exp(1j * (2 * c + 3 * yy - 2 * xx))
                     for c, (cy, cx) in enumerate(centres)])
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0))
    x = shepp_logan(size)[0, 0].numpy()
    x = x + 0.1 * (x > 0)
    k = fft2c(torch.as_tensor(maps * x))[None].to(torch.complex64)
    gen = torch.Generator().manual_seed(seed)
    return k + noise * float(k.abs().pow(2).mean().sqrt()) * torch.randn(k.shape, dtype=k.dtype, generator=gen)


def main() -> None:
    print(f"{'case':<28}" + "".join(f"{f:>8.3g}" for f in FACTORS) + "   best/default")
    for noise in (0.01, 0.03):
        k = scan(128, noise, seed=1)
        ref = rss(ifft2c(k), dim=1, keepdim=True)
        for kind, accel in (("random", 4), ("poisson", 6)):
            mask = make_mask(kind, (128, 128), accel, 0.08 if kind == "random" else 0.15, seed=2)
            y = k * mask
            A = MultiCoilMRI(mask, espirit_maps(y))
            lam = default_mri_tv_lambda(A, y)
            scores = [float(psnr(reconstruct_mri(A, y, "tv", lam=f * lam).x.abs(), ref, float(ref.max())))
                      for f in FACTORS]
            best = int(np.argmax(scores))
            print(f"{kind} {accel}x, noise {noise:.0%}".ljust(28) + "".join(f"{s:8.2f}" for s in scores)
                  + f"   {FACTORS[best]:g} ({scores[best] - scores[FACTORS.index(1.0)]:+.2f} dB)", flush=True)


if __name__ == "__main__":
    main()
