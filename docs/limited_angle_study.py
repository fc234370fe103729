"""The limited-angle model on measured scans it never saw: arcs cut from the five HTC2022 training scans.

    PYTHONPATH=. python docs/limited_angle_study.py --weights runs/limited_angle/model.safetensors \
        --htc ../shared/data/real/htc2022/training --out docs/limited_angle_study.json

The model is trained on simulated discs only; the organisers' five training scans (solid disc, ta-td: full 360
deg, 721 views) are held out. From each, arcs of 30, 60 and 90 deg are cut at a start angle drawn per scan and arc
(seeded), reconstructed at ``--size`` by TV with the disc bounds (``tv+disc``, the best method without a learned
prior in ``docs/htc_limited.md``) and by ``limited-angle``, and scored as ``recon bench htc`` scores: MCC of the
Otsu segmentation against the organisers' segmentation of their full-data FBP, on their 512 x 512 grid.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from apps.bench_htc import _mat, score
from data.htc2022 import read_htc2022
from operators.ct import ct_operator
from recon.models import load_model
from recon.reconstruct import reconstruct

SCANS = ("solid_disc", "ta", "tb", "tc", "td")
ARCS = (30, 60, 90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--htc", type=Path, required=True, help="the folder of the training scans")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model-only", action="store_true", help="skip tv+disc (the same arcs: compare with a run with it)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.weights, task="limited-angle")
    rng = np.random.default_rng(args.seed)
    rows = []
    for scan in SCANS:
        full = read_htc2022(args.htc / f"htc2022_{scan}_full.mat", image_size=args.size)
        seg = _mat(args.htc / f"htc2022_{scan}_full_recon_fbp_seg.mat")
        y_all = torch.as_tensor(full.sinogram)[None, None]
        for arc in ARCS:
            first = int(rng.integers(0, 720))  # 0.5 deg steps: views first .. first + 2 arc, wrapping
            keep = (first + np.arange(2 * arc + 1)) % 720
            A = ct_operator(full.geometry, full.angles[keep], full.sinogram.shape[1])
            y = y_all[:, :, keep]
            row = {"scan": scan, "arc": arc, "start_degrees": first / 2}
            methods = (("tv+disc", {"support": "disc"}), ("limited-angle", {"model": model}))
            for method, kwargs in methods[1:] if args.model_only else methods:
                start = time.perf_counter()
                x = reconstruct(A, y, method.split("+")[0], **kwargs).x
                row[method] = {"mcc": round(score(x, seg), 4), "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    summary = {m: {arc: round(float(np.mean([r[m]["mcc"] for r in rows if r["arc"] == arc])), 4) for arc in ARCS}
               for m in ("tv+disc", "limited-angle") if m in rows[0]}
    args.out.write_text(json.dumps({"settings": {"size": args.size, "seed": args.seed, "weights": str(args.weights)},
                                    "rows": rows, "mean_mcc_by_arc": summary}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
