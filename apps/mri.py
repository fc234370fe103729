"""``recon mri``: reconstruct a 2D MRI slice from Cartesian k-space.

Input: HDF5 with dataset ``kspace`` (coils, H, W) complex and optional ``mask`` and
``reference`` (layout in data/mri.py), or a ``.npy`` complex array. Fully sampled
input is undersampled retrospectively (``--acceleration``, ``--center-fraction``,
``--mask-type``) and the root-sum-of-squares of all its samples is the reference;
undersampled input is reconstructed as it is. Coil maps come from ESPIRiT on the
calibration region of the (undersampled) data.

Writes ``<output>/<method>.png`` (magnitude), ``comparison.png``, ``maps.png`` (coil
map magnitudes), ``mask.png``, ``reconstructions.h5`` and ``metrics.json``
(``{method: {"psnr", "ssim", "data_consistency", "seconds", "iterations"}}``, PSNR
and SSIM only with a reference) and prints the same table. As for ``recon ct``, the output
folder is locked while a run writes to it and images of methods not in this run are removed
(apps/outputs.py).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from apps.argtypes import nonneg_int, open_fraction, positive_float
from apps.ct import _device, add_run_options, format_table
from apps.outputs import check_output, locked_output, remove_stale_images, write_metrics
from apps.uncertainty import IMAGES, add_samples_option, check_samples, posterior_metrics, run_method, write_uncertainty
from data.hdf5 import write_reconstructions
from data.mri import KSpaceData, read_kspace
from operators.coils import calibration_region, espirit_maps, map_coverage
from operators.masks import MASK_TYPES, acceleration_of, make_mask
from operators.mri import CartesianMRI, MultiCoilMRI
from recon.diffusion.diffusion_recon import diffusion_names
from recon.metrics import psnr, ssim
from recon.models import builtin, load_model
from recon.mri import MRI_METHODS, data_consistency, reconstruct_mri, zero_filled

AXES = {"columns": -1, "rows": -2}
COLUMNS = ("psnr", "ssim", "data_consistency", "seconds", "iterations")
#: below this share of the object covered by the coil maps (operators.coils.map_coverage), recon mri warns
MIN_MAP_COVERAGE = 0.95
CLASSIC = ("zero-filled", "cg-sense", "tv")  # the default methods; the diffusion ones run when asked for


#: the library's argument names (in error messages) that this command's options set
FLAGS = {"input": "--input", "slices": "--slice", "acceleration": "--acceleration",
         "center_fraction": "--center-fraction", "lam": "--lam", "iterations": "--iterations", "model": "--weights"}


def add_parser(sub) -> None:
    p = sub.add_parser("mri", help="reconstruct a 2D MRI slice from Cartesian k-space",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, required=True, metavar="FILE", help="k-space: .h5 (data/mri.py layout) or .npy")
    p.add_argument("--slice", type=nonneg_int, default=None, metavar="K",
                   help="input holding a stack of slices: reconstruct slice K (0-based)")
    p.add_argument("--acceleration", type=positive_float, default=None,
                   help="retrospective undersampling factor R for fully sampled input (default 4)")
    p.add_argument("--center-fraction", type=open_fraction, default=0.08,
                   help="fully sampled centre: fraction of lines (random/equispaced) or of each side (poisson); default 0.08")
    p.add_argument("--mask-type", choices=MASK_TYPES, default="random", help="retrospective mask (default random)")
    p.add_argument("--phase-encode", choices=tuple(AXES), default="columns",
                   help="k-space axis whose lines are skipped by 1-D masks (default columns, as fastMRI)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="mask seed (default 0)")
    p.add_argument("--weights", type=Path, default=None, metavar="FILE",
                   help="a score model (`recon train score`) for --method red-diff, diffpir, dpir, dps and "
                        "score-pc (default: the shipped one, recon/weights/score_ct128)")
    p.add_argument("--anisotropic", action="store_true",
                   help="--method tv with anisotropic TV (the sum of |differences|, as SigPy and BART) instead of "
                        "the isotropic default")
    add_run_options(p, MRI_METHODS, ", ".join(CLASSIC), "recon.mri", "cg-sense/tv")
    add_samples_option(p)
    p.set_defaults(run=run)


def prepare(data: KSpaceData, args) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """k-space to reconstruct, its mask, the reference, and a description of the sampling.

    ``data`` holds one slice ``(coils, H, W)`` or a stack ``(slices, coils, H, W)``; a retrospective
    mask ``(H, W)`` is shared by every slice (``recon batch`` calls this per study)."""
    reference = data.reference
    if not data.fully_sampled:
        acquired = acceleration_of(torch.as_tensor(data.mask))
        if args.acceleration is not None:
            raise ValueError(f"--acceleration: the input is already undersampled (R = {acquired:.2f}); "
                             "retrospective undersampling needs fully sampled k-space")
        return data.kspace, data.mask, reference, f"as acquired, R = {acquired:.2f}"
    if reference is None:  # RSS of all samples, per slice of a stack (slices, coils, H, W)
        k = torch.as_tensor(data.kspace)
        reference = zero_filled(k.reshape(-1, *k.shape[-3:]))[:, 0].reshape(*k.shape[:-3], *k.shape[-2:]).numpy()
    accel = 4.0 if args.acceleration is None else args.acceleration
    mask = make_mask(args.mask_type, data.kspace.shape[-2:], accel, args.center_fraction, seed=args.seed,
                     axis=AXES[args.phase_encode]).numpy()
    how = f"retrospective {args.mask_type} mask, R = {acceleration_of(torch.as_tensor(mask)):.2f}"
    return data.kspace * mask, mask, reference, how


def operator(kspace: torch.Tensor, mask: torch.Tensor) -> tuple[CartesianMRI | MultiCoilMRI, torch.Tensor | None]:
    """Single coil: ``CartesianMRI``; several: ``MultiCoilMRI`` with ESPIRiT maps from the data's calibration region."""
    if kspace.shape[1] == 1:
        return CartesianMRI(mask), None
    region = calibration_region(kspace)
    if min(region) < 5:
        raise ValueError(f"--center-fraction: the fully sampled k-space centre is {region[0]} x {region[1]}; "
                         "ESPIRiT needs at least 5 x 5 calibration samples (raise --center-fraction)")
    # a narrow centre gets a smaller kernel, so that at least 3 kernel positions fit along each side
    maps = espirit_maps(kspace, kernel_size=min(6, min(region) - 2))
    covered = float(map_coverage(kspace, maps).min())
    if covered < MIN_MAP_COVERAGE:
        warnings.warn(f"--center-fraction: the ESPIRiT coil maps are zero on {100 * (1 - covered):.0f}% of the object "
                      f"(a {region[0]} x {region[1]} calibration region is too small for these coils), where the "
                      "SENSE reconstructions will be blank or wrong: sample a larger centre (raise --center-fraction)",
                      UserWarning, stacklevel=2)
    return MultiCoilMRI(mask, maps), maps


def run(args) -> int:
    check_output(args.output)
    device = _device(args.device)
    data = read_kspace(args.input, slices=args.slice)
    if data.kspace.ndim == 4:
        raise ValueError(f"--input: {args.input} holds a stack of {data.kspace.shape[0]} slices; recon mri "
                         "reconstructs one, chosen with --slice K")
    kspace, mask, reference, how = prepare(data, args)
    methods = list(dict.fromkeys(args.method or list(CLASSIC)))
    learned = [m for m in methods if m not in CLASSIC]
    if args.weights is not None and not learned:
        raise ValueError(f"--weights: only --method {diffusion_names()} use a model")
    if args.anisotropic and "tv" not in methods:
        raise ValueError(f"--anisotropic: only --method tv has an anisotropic form; the methods are {', '.join(methods)}")
    sampled = check_samples(args.samples, methods)
    model = None if not learned else load_model(args.weights or builtin("score"), task="score", device=device)
    y = torch.as_tensor(kspace, device=device)[None]
    A, maps = operator(y, torch.as_tensor(mask, device=device))
    A = A.to(device)
    print(f"recon mri: {args.input}: {y.shape[1]} coil(s), {y.shape[2]} x {y.shape[3]}, {how}, on {device}")
    ref = None if reference is None else torch.as_tensor(reference, device=device)[None, None]
    results, metrics, drawn = {}, {}, None
    with locked_output(args.output):
        for method in methods:
            r, p = run_method(reconstruct_mri, A, y, method, sampled, args.samples, lam=args.lam,
                              iterations=args.iterations, progress=not args.no_progress,
                              **({"model": model} if method in learned else {}),
                              **({"isotropic": False} if args.anisotropic and method == "tv" else {}))
            results[method] = r
            metrics[method] = _metrics(A, r, y, ref) | ({} if p is None else posterior_metrics(p, ref))
            drawn = p or drawn
        _write_outputs(args.output, results, metrics, reference, mask, maps, how, drawn)
        remove_stale_images(args.output, (*MRI_METHODS, *IMAGES), [*results, *(IMAGES if drawn else ())])
    print(format_table(metrics, COLUMNS))
    print(f"outputs in {args.output}/")
    return 0


def _metrics(A, r, y, ref) -> dict:
    m = {"seconds": round(r.seconds, 3), "iterations": r.iterations}
    if r.x.is_complex():
        m["data_consistency"] = round(float(data_consistency(A, r.x, y)), 5)
    if ref is not None:
        rng = float(ref.max()) or 1.0
        m["psnr"] = round(float(psnr(r.x.abs(), ref, data_range=rng)), 3)
        m["ssim"] = round(float(ssim(r.x.abs(), ref, data_range=rng)), 4)
    if "lam" in r.parameters:
        m["lam"] = r.parameters["lam"]
    return m


def _write_outputs(out: Path, results: dict, metrics: dict, reference, mask, maps, how: str, drawn=None) -> None:
    from apps.figures import comparison_figure, save_image, save_panels

    images = {name: r.x[0, 0].abs().detach().cpu().numpy() for name, r in results.items()}
    vmax = float(reference.max()) if reference is not None else float(np.percentile(next(iter(images.values())), 99.5))
    for name, image in images.items():
        save_image(out / f"{name}.png", image, 0.0, vmax)
    save_image(out / "mask.png", np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    if maps is not None:
        save_panels(out / "maps.png", {f"coil {c}": m for c, m in enumerate(maps[0].abs().cpu().numpy())}, 0.0, 1.0)
    extra = {"mask": np.asarray(mask, dtype=bool)}
    if drawn is not None:
        extra.update(write_uncertainty(out, drawn, reference, vmax, metrics[drawn.method]))
    params = {name: {**r.parameters, "iterations_run": r.iterations} for name, r in results.items()}
    write_reconstructions(out / "reconstructions.h5", images, {"modality": "mri", "sampling": how}, params,
                          units="magnitude, scale of the input", extra=extra)
    write_metrics(out / "metrics.json", metrics)
    comparison_figure(out / "comparison.png", images, metrics, reference, vmax)
