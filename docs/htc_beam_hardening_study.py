"""Study: beam hardening in the measured HTC2022 scans, and whether linearising the data helps the arcs (issue 21).

The simulated training scans of ``recon train limited-angle`` are linear: line integral = attenuation x
chord. A polychromatic beam hardens along long chords, so the measured line integral grows slower than
the chord. This study measures that on the solid-disc training scan (one material, no holes): it fits
the disc to the sinogram's shadow (``recon.support.fit_disc``), computes every ray's chord through it,
and fits ``p = a L + b L^2`` over chords above 5 mm. Read as ``p = f(s) = s - beta s^2`` of the linear
line integral ``s = a L``, ``beta = -b / a^2``. It then linearises the three test arcs with that beta
(``s = (1 - sqrt(1 - 4 beta p)) / (2 beta)``: a precorrection calibrated on a training scan, as scanners
calibrate on a phantom) and scores ``limited-angle`` (the shipped model) and TV with the disc bounds at
the rule's weight, with and without it, by the challenge's MCC.

    PYTHONPATH=. .venv/bin/python docs/htc_beam_hardening_study.py --htc ../shared/data/real/htc2022 \
        --out docs/htc_beam_hardening_study.json

One torch thread; 256^2 grid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def chord_fit(data) -> dict:
    """The fitted disc and ``p = a L + b L^2`` over the rays with chords above 5 mm, with the median ``p / L`` by
    chord length."""
    from operators.ct import ct_operator
    from recon.support import chord_lengths, fit_disc

    A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
    y = torch.as_tensor(data.sinogram)[None, None].double()
    disc = fit_disc(A, y)
    L, P = chord_lengths(A, disc).ravel(), y[0, 0].numpy().ravel()
    keep = L > 5.0
    (a, b), *_ = np.linalg.lstsq(np.stack([L[keep], L[keep] ** 2], 1), P[keep], rcond=None)
    edges = np.linspace(5.0, 2 * disc.radius, 9)
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        ray = keep & (L >= lo) & (L < hi)
        bins.append({"chord_mm": [round(float(lo), 1), round(float(hi), 1)],
                     "median_p_over_L": round(float(np.median(P[ray] / L[ray])), 5)})
    return {"disc_radius_mm": round(disc.radius, 2), "a": float(a), "b": float(b), "beta": float(-b / a ** 2),
            "by_chord": bins}


def linearise(p: torch.Tensor, beta: float) -> torch.Tensor:
    """The linear line integral ``s`` with ``p = s - beta s^2`` (the smaller root)."""
    return p if beta == 0 else (1 - torch.sqrt(torch.clamp(1 - 4 * beta * p, min=0))) / (2 * beta)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--htc", type=Path, required=True, help="the htc2022 folder (training/ and test/)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from apps.bench_htc import _mat, score
    from data.htc2022 import read_htc2022
    from operators.ct import ct_operator
    from recon.reconstruct import reconstruct

    torch.set_num_threads(1)
    fit = chord_fit(read_htc2022(args.htc / "training" / "htc2022_solid_disc_full.mat", image_size=256))
    print(f"solid disc: p = {fit['a']:.5f} L {fit['b']:+.3e} L^2, beta {fit['beta']:.4f}", flush=True)
    scores: dict = {}
    for case in ("01a", "04a", "07a"):
        data = read_htc2022(args.htc / "test" / f"htc2022_{case}_limited.mat", image_size=256)
        A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
        seg = _mat(args.htc / "test" / f"htc2022_{case}_recon_fbp_seg.mat")
        measured = torch.as_tensor(data.sinogram)[None, None].double()
        for label, beta in (("as measured", 0.0), ("linearised", fit["beta"])):
            y = linearise(measured, beta)
            row = {"limited-angle": score(reconstruct(A, y, "limited-angle").x, seg),
                   "tv+disc (rule)": score(reconstruct(A, y, "tv", lam="rule", support="disc").x, seg)}
            scores.setdefault(case, {})[label] = {k: round(v, 4) for k, v in row.items()}
            print(case, label, scores[case][label], flush=True)
    args.out.write_text(json.dumps({"solid_disc_fit": fit, "mcc": scores}, indent=1) + "\n")


if __name__ == "__main__":
    main()
