"""The README's uncertainty figure: truth, posterior mean, posterior std and |mean - truth| for the
phantoms saved by ``docs/posterior_calibration.py --save DIR`` (the ``.npz`` files given), one row each, the std and the error of
a row on one colour scale (``apps.figures.uncertainty_panels``).

    python docs/posterior_figure.py runs/post/cal/ellipses-0_score-pc_128.npz \
        runs/post/cal/shepp-logan_score-pc_128.npz --out docs/uncertainty.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from apps.figures import plt, uncertainty_panels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", type=Path, nargs="+", help="from docs/posterior_calibration.py --save DIR")
    ap.add_argument("--out", type=Path, default=Path("docs/uncertainty.png"))
    args = ap.parse_args()
    files = args.files
    fig, axes = plt.subplots(len(files), 4, figsize=(13.6, 3.5 * len(files)), squeeze=False)
    for row, path in zip(axes, files):
        d = np.load(path)
        info = json.loads(str(d["row"]))
        uncertainty_panels(fig, row, d["truth"], d["mean"], d["std"], 1.0,
                           (f"{info['phantom']}: truth", f"posterior mean ({info['psnr_mean']:.1f} dB; TV "
                            f"{info['psnr_tv']:.1f})", f"std of {info['samples']} samples",
                            f"|mean - truth| (corr {info['pearson_std_error']:.2f}, 90% cover "
                            f"{100 * info['coverage_90']:.0f}%)"))
    fig.suptitle(f"{info['method']}, {info['size']}², 60 views, 1% noise, {info['steps']} steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
