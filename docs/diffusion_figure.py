"""The README's diffusion figure from a ``recon bench quality`` output folder: chosen cases (rows) by
chosen methods (columns), each panel titled with its PSNR and SSIM, the reference first.

    recon bench quality --datasets phantoms --phantoms 1 --method fbp --method tv --method svtv-net \\
        --method red-diff --method diffpir --method dpir --output runs/bench_fig
    python docs/diffusion_figure.py runs/bench_fig --cases shepp-logan,ellipses-0 \\
        --methods fbp,tv,svtv-net,red-diff,diffpir,dpir --output docs/quality_diffusion.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from apps.figures import plt  # noqa: E402  (sets the Agg backend first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path, help="a recon bench quality --output folder")
    ap.add_argument("--cases", required=True, help="comma-separated case names (cases/<name>.npz)")
    ap.add_argument("--methods", required=True, help="comma-separated methods, in column order")
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()
    cases, methods = args.cases.split(","), args.methods.split(",")
    cols = ["reference", *methods]
    fig, axes = plt.subplots(len(cases), len(cols), figsize=(2.4 * len(cols), 2.75 * len(cases)), squeeze=False)
    for r, name in enumerate(cases):
        images = np.load(args.bench / "cases" / f"{name}.npz")
        metrics = json.loads((args.bench / "cases" / f"{name}.json").read_text())["metrics"]
        missing = [m for m in cols if m not in images.files]
        if missing:
            raise SystemExit(f"--methods: case {name} has no {', '.join(missing)} (has {', '.join(images.files)})")
        vmax = float(np.percentile(images["reference"], 99.9))
        for c, col in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(images[col], cmap="gray", vmin=0.0, vmax=vmax)
            m = metrics.get(col)
            ax.set_title(name if m is None else f"{col}\n{m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.output, dpi=80)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
