"""Figures written by the apps (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data.hdf5 import atomic_path  # noqa: E402


def save_image(path: Path, image: np.ndarray, vmin: float, vmax: float) -> None:
    """A grayscale PNG of ``image`` in the window ``[vmin, vmax]`` (one pixel per pixel)."""
    with atomic_path(path) as tmp:
        plt.imsave(tmp, np.clip(image, vmin, vmax), cmap="gray", vmin=vmin, vmax=vmax, format="png")


def comparison_figure(path: Path, images: dict, metrics: dict, reference: np.ndarray | None, vmax: float) -> None:
    """Side-by-side panels: the reference (when known) and each method, titled with its metrics."""
    panels = ([("reference", reference, "")] if reference is not None else []) + [
        (name, img, _subtitle(metrics.get(name, {}))) for name, img in images.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.9), squeeze=False)
    for ax, (name, img, sub) in zip(axes[0], panels):
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=vmax)
        ax.set_title(f"{name}: {sub}" if sub else name, fontsize=9)
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def save_panels(path: Path, images: dict, vmin: float, vmax: float, columns: int = 4) -> None:
    """A grid of titled grayscale panels (e.g. coil-map magnitudes), one shared window."""
    rows = -(-len(images) // columns)
    cols = min(columns, len(images))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, img) in zip(axes.flat, images.items()):
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _subtitle(m: dict) -> str:
    parts = []
    if "psnr" in m:
        parts.append(f"{m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}")
    if "data_consistency" in m:
        parts.append(f"residual {m['data_consistency']:.3f}")
    parts.append(f"{m.get('seconds', 0):.2f} s" + (f", {m['iterations']} it" if m.get("iterations") else ""))
    return "\n".join(parts)


def std_map(path: Path, std: np.ndarray, title: str = "posterior std") -> None:
    """The pixel-wise standard deviation in a colour map, with its colour bar (in the image's units)."""
    fig, ax = plt.subplots(figsize=(4.4, 3.8))
    shown = ax.imshow(std, cmap="magma", vmin=0.0, vmax=float(np.percentile(std, 99.5)) or 1.0)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def uncertainty_panels(fig, axes, reference: np.ndarray, mean: np.ndarray, std: np.ndarray, vmax: float,
                       titles: tuple[str, ...] = ("truth", "posterior mean", "posterior std", "|mean - truth|")) -> None:
    """Truth, posterior mean, posterior std and |mean - truth| on four ``axes``: the last two share one
    colour scale (with colour bars), so where the error is large the std should be large too."""
    error = np.abs(mean - reference)
    top = float(np.percentile(np.concatenate([std.ravel(), error.ravel()]), 99.5)) or 1.0
    for ax, title, img, coloured in zip(axes, titles, (reference, mean, std, error), (False, False, True, True)):
        shown = ax.imshow(img, cmap="magma" if coloured else "gray", vmin=0.0, vmax=top if coloured else vmax)
        if coloured:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title, fontsize=9)
        ax.axis("off")


def uncertainty_figure(path: Path, reference: np.ndarray, mean: np.ndarray, std: np.ndarray, vmax: float,
                       subtitle: str = "") -> None:
    """``uncertainty_panels`` in one row, titled ``subtitle``."""
    fig, axes = plt.subplots(1, 4, figsize=(13.6, 3.7))
    uncertainty_panels(fig, axes, reference, mean, std, vmax)
    if subtitle:
        fig.suptitle(subtitle, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
