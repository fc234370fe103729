"""SV-TV with the weight network's edge map: weight, eta and spread on the tuning phantoms.

The network predicts ``|grad x|`` of the true image from the FBP; the SV-TV weights are built from
it with ``magnitude_tv_weights``. The defaults (eta 0.05, p 0.5, spread 1, weight 2.1x TV's rule)
were fitted for a TV pre-estimate; this checks them for the network's map, against SV-TV with FBP
and TV pre-estimates, on random ellipses seeds 100 and 101 (256^2, 60 views, 1% noise; the quality
benchmark uses seeds 0..19 and Shepp-Logan).

    python docs/svtv_net_study.py --weights recon/weights/svtv_weights_ct256.safetensors
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from apps.ct import simulate  # noqa: E402
from operators.ct import ct_operator  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon.models import load_model  # noqa: E402
from recon.reconstruct import default_lambda, reconstruct  # noqa: E402

SEEDS = (100, 101)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--factors", type=float, nargs="+", default=(0.5, 1.0, 1.5))
    ap.add_argument("--etas", type=float, nargs="+", default=(0.02, 0.05, 0.1))
    ap.add_argument("--spreads", type=int, nargs="+", default=(0, 1))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.weights, task="svtv-weights")
    rows = []
    for seed in SEEDS:
        data = simulate("ellipses", 256, 60, "parallel", 0.01, seed)
        A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
        y = torch.as_tensor(data.sinogram)[None, None]
        ref = torch.as_tensor(data.reference)[None, None]
        score = lambda r: float(psnr(r.x, ref, data_range=float(ref.max() - ref.min())))  # noqa: E731
        lam0 = default_lambda("svtv", A, y)
        for name, kw in (("tv", {"method": "tv"}), ("svtv-tv", {"method": "svtv"}),
                         ("svtv-fbp", {"method": "svtv", "estimate": "fbp"})):
            rows.append({"seed": seed, "name": name, "psnr": score(reconstruct(A, y, **kw))})
            print(rows[-1], flush=True)
        for f, eta, spread in itertools.product(args.factors, args.etas, args.spreads):
            r = reconstruct(A, y, "svtv", lam=f * lam0, model=model, eta=eta, spread=spread)
            rows.append({"seed": seed, "name": "svtv-net", "factor": f, "eta": eta, "spread": spread,
                         "psnr": score(r)})
            print(rows[-1], flush=True)
    keys = sorted({(r["name"], r.get("factor"), r.get("eta"), r.get("spread")) for r in rows},
                  key=lambda k: tuple(str(v) for v in k))
    means = {k: sum(r["psnr"] for r in rows if (r["name"], r.get("factor"), r.get("eta"), r.get("spread")) == k)
             / len(SEEDS) for k in keys}
    for k, v in sorted(means.items(), key=lambda kv: -kv[1]):
        print(f"{v:7.2f}  {k}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
