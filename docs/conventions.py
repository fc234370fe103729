"""Draw docs/conventions.png: the CT geometry conventions, computed with the operators themselves.

Run: .venv/bin/python docs/conventions.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from operators import FanBeam2D, ParallelBeam2D  # noqa: E402

N, P = 128, 0.5  # pixels, mm
THETA = np.deg2rad(30.0)


def marker_image() -> torch.Tensor:
    """A bright square in the upper right (x > 0, y > 0) and a faint bar on the left."""
    x = torch.zeros(1, 1, N, N)
    x[0, 0, 20:36, 84:100] = 1.0
    x[0, 0, 40:100, 20:28] = 0.4
    return x


def main(out: Path = Path(__file__).with_name("conventions.png")) -> None:
    img = marker_image()
    angles = np.linspace(0, np.pi, 180, endpoint=False)
    A = ParallelBeam2D((N, N), angles, 190, pixel_size=P, detector_spacing=P)
    sino = A(img)[0, 0].numpy()
    half = N * P / 2
    fig, ax = plt.subplots(1, 3, figsize=(15, 5))

    ax[0].imshow(img[0, 0], cmap="gray", extent=(-half, half, -half, half))
    d, ray = np.array([np.cos(THETA), np.sin(THETA)]), np.array([np.sin(THETA), -np.cos(THETA)])
    ax[0].annotate("", xy=20 * d, xytext=(0, 0), arrowprops=dict(color="tab:orange", width=2))
    ax[0].annotate("", xy=-10 * d + 25 * ray, xytext=-10 * d - 25 * ray, arrowprops=dict(color="tab:cyan", width=1))
    ax[0].text(*(21 * d), "detector axis s\n(cos θ, sin θ)", color="tab:orange")
    ax[0].text(*(-10 * d + 26 * ray), "ray (sin θ, -cos θ)", color="tab:cyan")
    ax[0].set(title="image: x right, y up, row 0 at the top\nθ = 30°, s = x cos θ + y sin θ",
              xlabel="x (mm)", ylabel="y (mm)")

    ext = (-95 * P, 95 * P, 180, 0)
    ax[1].imshow(sino, cmap="gray", aspect="auto", extent=ext)
    ax[1].axhline(30, color="tab:orange", ls="--")
    ax[1].set(title="ParallelBeam2D sinogram (views x detectors)\nsquare at x>0, y>0: s > 0 for θ in [0°, 90°]",
              xlabel="s (mm), detector index increases with s", ylabel="θ (degrees)")

    dso, dod = 80.0, 40.0
    src = dso * np.array([np.sin(THETA), -np.cos(THETA)])
    det_c = dod * np.array([-np.sin(THETA), np.cos(THETA)])
    ax[2].imshow(img[0, 0], cmap="gray", extent=(-half, half, -half, half))
    for u in (-40, 0, 40):
        end = det_c + u * d
        ax[2].plot([src[0], end[0]], [src[1], end[1]], color="tab:cyan", lw=0.8)
    ax[2].plot(*np.stack([det_c - 45 * d, det_c + 45 * d]).T, color="tab:orange", lw=3)
    ax[2].plot(*src, "o", color="tab:red")
    ax[2].text(*src, "  source (sin θ, -cos θ)·source_origin", color="tab:red")
    ax[2].text(*(det_c + 46 * d), "detector (-sin θ, cos θ)·origin_detector", color="tab:orange", ha="right")
    ax[2].set(xlim=(-90, 90), ylim=(-90, 90), aspect="equal", title="FanBeam2D (flat detector), θ = 30°",
              xlabel="x (mm)", ylabel="y (mm)")
    FanBeam2D((N, N), [THETA], 190, dso, dod, pixel_size=P)  # the geometry drawn is a valid operator
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
