"""``--samples N`` of ``recon ct`` and ``recon mri``: posterior samples from a diffusion sampler
(``recon.diffusion.posterior``) and what is written of them.

With ``--samples N`` the sampling method (one of ``recon.diffusion.posterior.SAMPLERS``, exactly one per run)
draws ``N`` samples in one batched, seeded call. Its reconstruction (``<method>.png``, the table,
``comparison.png``) is the posterior mean; besides it the output folder gets

* ``mean.png``: the mean, in the window of the other images;
* ``std.png``: the pixel-wise standard deviation in a colour map with its colour bar (image units);
* ``uncertainty.png`` (with a reference): truth, mean, std and ``|mean - truth|``, the last two on one
  colour scale;
* in ``reconstructions.h5``: the datasets ``samples`` ``(N, H, W)`` and ``std`` ``(H, W)``;
* in ``metrics.json``, under the method: ``samples``, ``seconds_per_sample`` and, with a reference,
  ``calibration``: the Pearson correlation of std and error and the share of pixels whose true value
  lies in the samples' central 90% interval (``recon.diffusion.posterior.calibration``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.diffusion.posterior import SAMPLERS, Posterior, calibration

__all__ = ["IMAGES", "add_samples_option", "check_samples", "run_method", "posterior_metrics", "summary",
           "write_uncertainty"]

#: the images ``write_uncertainty`` writes (removed as stale by a run without ``--samples``)
IMAGES = ("mean", "std", "uncertainty")
LEVEL = 0.9


def add_samples_option(p) -> None:
    from apps.argtypes import positive_int

    p.add_argument("--samples", type=positive_int, default=None, metavar="N",
                   help=f"draw N >= 2 posterior samples with --method {', '.join(SAMPLERS)}: its image is their mean, "
                        "with std.png (the pixel-wise std), the samples in reconstructions.h5 and, given a reference, "
                        "calibration figures in metrics.json")


def check_samples(samples: int | None, methods: list[str]) -> str | None:
    """The one sampling method ``--samples`` applies to (None without ``--samples``), else a usage error."""
    if samples is None:
        return None
    if samples < 2:
        raise ValueError(f"--samples: expected an integer >= 2 (a standard deviation needs two), got {samples}")
    chosen = [m for m in methods if m in SAMPLERS]
    if len(chosen) != 1:
        raise ValueError(f"--samples: draws posterior samples with exactly one of --method {', '.join(SAMPLERS)}; "
                         f"the methods are {', '.join(methods)}")
    return chosen[0]


def run_method(solve, A, y, method: str, sampled: str | None, samples: int | None, **kwargs):
    """``(reconstruction, posterior)``: ``solve(A, y, method, **kwargs)`` and None, or for the sampled
    method ``samples`` draws (their mean the reconstruction) and them as a ``Posterior``."""
    if method != sampled:
        return solve(A, y, method, **kwargs), None
    r = solve(A, y, method, samples=samples, **kwargs)
    return r, Posterior.of(r)


def posterior_metrics(p: Posterior, reference) -> dict:
    """``samples``, ``seconds_per_sample`` and, given the reference ``(1, 1, H, W)``, ``calibration``."""
    m = {"samples": p.parameters["samples"], "seconds_per_sample": round(p.parameters["seconds_per_sample"], 3)}
    if reference is not None:
        c = calibration(p, reference.to(p.std.dtype), LEVEL)
        m["calibration"] = {"pearson_std_error": c["pearson"][0], f"coverage_{int(LEVEL * 100)}": c["coverage"][0]}
    return m


def summary(p: Posterior, m: dict) -> str:
    """One line on the samples and, where measured, the mean's PSNR and the calibration."""
    parts = [f"{p.method}, {m['samples']} samples, {m['seconds_per_sample']:.1f} s each"]
    if "psnr" in m:
        parts.append(f"mean {m['psnr']:.2f} dB")
    if "calibration" in m:
        c = m["calibration"]
        parts.append(f"corr(std, |error|) {c['pearson_std_error']:.2f}, "
                     f"{int(LEVEL * 100)}% intervals cover {100 * c[f'coverage_{int(LEVEL * 100)}']:.0f}%")
    return "; ".join(parts)


def write_uncertainty(out: Path, p: Posterior, reference: np.ndarray | None, vmax: float, metrics: dict) -> dict:
    """``mean.png``, ``std.png``, ``uncertainty.png`` (given the reference, titled with ``summary``);
    returns the arrays for ``reconstructions.h5`` (``samples``, ``std``)."""
    from apps.figures import save_image, std_map, uncertainty_figure

    mean = p.mean[0, 0].abs().detach().cpu().numpy()
    std = p.std[0, 0].detach().cpu().numpy()
    save_image(out / "mean.png", mean, 0.0, vmax)
    std_map(out / "std.png", std, f"{p.method}: posterior std of {p.parameters['samples']} samples")
    if reference is not None:
        uncertainty_figure(out / "uncertainty.png", reference, mean, std, vmax, summary(p, metrics))
    elif (out / "uncertainty.png").is_file():
        (out / "uncertainty.png").unlink()
    samples = p.samples[:, 0, 0].detach().cpu().numpy()
    return {"samples": samples if np.iscomplexobj(samples) else samples.astype(np.float32), "std": std}
