"""``recon ct``: reconstruct a 2D CT slice from a file or a simulated phantom.

Writes ``<output>/<method>.png``, ``comparison.png``, ``reconstructions.h5`` and
``metrics.json`` (``{method: {"psnr", "ssim", "seconds", "iterations"}}``, PSNR and
SSIM only when a reference image is known) and prints the same table. The output folder is
locked while a run writes to it (apps/outputs.py), and images of methods not in this run are
removed. A phantom whose reconstruction would not fit in memory (``ct_memory_bytes``) is
refused before anything is allocated.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from apps.argtypes import fraction, nonneg_float, nonneg_int, positive_float, positive_int
from apps.outputs import check_output, locked_output, remove_stale_images, write_metrics
from apps.uncertainty import (IMAGES, add_samples_option, check_samples, posterior_metrics, run_method,
                              write_uncertainty)
from data.hdf5 import CTData, read_ct, write_reconstructions
from data.limits import array_bytes, check_memory
from data.phantoms import random_ellipses, shepp_logan
from data.training import CouleLikeDataset
from operators.ct import FanBeam2D, ParallelBeam2D, ct_operator
from recon.metrics import psnr, ssim
from recon.models import check_geometry, check_shipped, load_model, shipped
from recon.reconstruct import ESTIMATES, METHODS, TRAINED_FOR_GEOMETRY, VARIATIONAL, reconstruct

PHANTOMS = ("shepp-logan", "ellipses", "coule")


#: the library's argument names (in error messages) that this command's options set
FLAGS = {"input": "--input", "path": "--input", "image_size": "--size", "slices": "--slice", "lam": "--lam",
         "iterations": "--iterations", "noise_std": "--noise-std", "model": "--weights"}


def add_parser(sub) -> None:
    p = sub.add_parser("ct", help="reconstruct a 2D CT slice (file or phantom)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, metavar="FILE", help="sinogram in the raw-data layout (data/hdf5.py), "
                                                              "or an HTC2022 challenge .mat file (full or limited)")
    src.add_argument("--phantom", choices=PHANTOMS, help="simulate data from a built-in phantom")
    p.add_argument("--slice", type=nonneg_int, default=None, metavar="K",
                   help="input holding a stack of slices: reconstruct slice K (0-based)")
    p.add_argument("--size", type=positive_int, default=256,
                   help="phantom size in pixels, or the grid over an HTC2022 file's 75.9 mm field of view "
                        "(default 256)")
    p.add_argument("--views", type=positive_int, default=None,
                   help="phantom: number of views (default 60); input: keep this many evenly spaced views")
    p.add_argument("--geometry", choices=("parallel", "fan"), default="parallel",
                   help="phantom geometry: parallel over 180 deg or fan over 360 deg (default parallel)")
    p.add_argument("--noise", type=fraction, default=0.01,
                   help="phantom: Gaussian noise std relative to the RMS of the sinogram (default 0.01)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="phantom and noise seed (default 0)")
    p.add_argument("--noise-std", type=positive_float, default=None,
                   help="the sinogram's noise std, if known (for --lam auto and the default rule); default: "
                        "the simulated noise for phantoms with --lam auto, else estimated from the sinogram")
    p.add_argument("--support", choices=("disc",), default=None,
                   help="disc: keep the variational methods inside the disc fitted to the sinogram's shadow, "
                        "below its largest attenuation (a disc-shaped object over a short arc, e.g. HTC2022)")
    p.add_argument("--estimate", choices=ESTIMATES, default=None,
                   help="svtv: the pre-estimate its weights come from (default tv)")
    p.add_argument("--weights", action="append", metavar="FILE", default=None,
                   help="trained model (.safetensors with its .json card; repeatable): an LPN for --method lpn "
                        "(default: the shipped one), an SV-TV weight network for --method svtv (replaces "
                        "--estimate), a denoiser for --method pnp (required: none is shipped), a score model for "
                        "--method red-diff, diffpir, dpir, dps and score-pc (default: the shipped one); 'lpn', "
                        "'svtv' and 'score' name the shipped models")
    add_run_options(p, METHODS, "fbp and tv", "recon.reconstruct", "the iterative methods", auto_lam=True)
    add_samples_option(p)
    p.set_defaults(run=run)


def add_run_options(p, methods, default: str, lam_rule: str, iterative: str, auto_lam: bool = False) -> None:
    """The options every reconstruction subcommand shares: methods, weight, iterations, device, output."""
    p.add_argument("--method", action="append", choices=methods, help=f"repeatable (default: {default})")
    if auto_lam:
        p.add_argument("--lam", type=_lam_arg, default=None, metavar="LAM|rule|auto|cv",
                       help="regularisation weight: 'rule' (fastest, blind to the object), 'auto' for the discrepancy "
                            "principle or 'cv' for cross-validation over the views (default: cv for tv, the rule "
                            f"otherwise; {lam_rule})")
    else:
        p.add_argument("--lam", type=nonneg_float, default=None, help=f"TV weight (default: rule in {lam_rule})")
    p.add_argument("--iterations", type=positive_int, default=None, help=f"iterations for {iterative}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--output", type=Path, default=Path("recon_output"),
                   help="output folder (default recon_output); locked while a run writes to it")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _lam_arg(text: str) -> float | str:
    if text in ("rule", "auto", "cv"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'rule', 'auto' or 'cv', got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a non-negative finite weight, 'rule', 'auto' or 'cv', got {text}")
    return value


def _device(name: str, option: str = "--device") -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``; ``option`` names the setting in the error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{option} cuda: no CUDA device is available (use {option} cpu or auto)")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


#: working copies counted by ``ct_memory_bytes``: of the image (FBP start, iterate, its previous value and
#: extrapolation, the two gradient duals, the reference, the written copy) and of the sinogram (data, noise,
#: the forward projection, the data-term dual)
WORK_IMAGES, WORK_SINOGRAMS = 8, 4


def ct_memory_bytes(image_shape, views: int, detectors: int, slices: int = 1) -> int:
    """Estimated memory (bytes) of reconstructing ``slices`` float32 CT slices: ``WORK_IMAGES`` images and
    ``WORK_SINOGRAMS`` sinograms ``(views, detectors)`` per slice. Compare with ``data.limits.check_memory``.

    Example:
        >>> round(ct_memory_bytes((256, 256), 60, 366) / 2**20, 2)   # MiB
        2.34
    """
    if not (isinstance(image_shape, (tuple, list)) and len(image_shape) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in image_shape)):
        raise ValueError(f"image_shape: expected (H, W), two positive integers, got {image_shape!r}")
    for name, n in (("views", views), ("detectors", detectors), ("slices", slices)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name}: expected a positive integer, got {n!r}")
    per_slice = WORK_IMAGES * array_bytes(image_shape, 4) + WORK_SINOGRAMS * array_bytes((views, detectors), 4)
    return slices * per_slice


def detector_count(size: int) -> int:
    """Detector pixels (1 mm) that cover a ``size``-pixel square image's diagonal with a 10% margin."""
    return math.ceil(size * math.sqrt(2) * 1.1) + 2


def simulate(phantom: str, size: int, views: int, geometry: str, noise: float, seed: int) -> CTData:
    """A phantom's noisy sinogram with its geometry (pixel 1 mm, values in 1/mm)."""
    if size < 16:
        raise ValueError(f"--size: expected at least 16 pixels, got {size}")
    if views < 1:
        raise ValueError(f"--views: expected a positive number of views, got {views}")
    if not 0 <= noise < 1:
        raise ValueError(f"--noise: expected a relative noise level in [0, 1), got {noise}")
    if phantom == "shepp-logan":
        x = shepp_logan(size)
    elif phantom == "coule":  # grey ellipses and straight bars, as in the COULE dataset
        x = CouleLikeDataset(1, size=size, seed=seed)[0][None]
    else:
        x = random_ellipses(size, seed=seed)
    det = detector_count(size)
    if geometry == "parallel":
        geom = {"geometry": "parallel", "detector_spacing": 1.0, "pixel_size": 1.0, "image_shape": (size, size)}
        angles = np.linspace(0, np.pi, views, endpoint=False)
        A = ParallelBeam2D((size, size), angles, det)
    else:
        dso, dod = 2.0 * size, 1.0 * size
        geom = {"geometry": "fan", "detector_spacing": (dso + dod) / dso, "pixel_size": 1.0,
                "image_shape": (size, size), "source_origin": dso, "origin_detector": dod}
        angles = np.linspace(0, 2 * np.pi, views, endpoint=False)
        A = FanBeam2D((size, size), angles, det, dso, dod, detector_spacing=geom["detector_spacing"])
    y = A(x)
    gen = torch.Generator().manual_seed(seed)
    noise_std = noise * float(y.pow(2).mean().sqrt())
    y = y + noise_std * torch.randn(y.shape, generator=gen)
    return CTData(y[0, 0].numpy(), angles, geom, x[0, 0].numpy(), f"{phantom} {size}x{size}, {views} views",
                  noise_std if noise > 0 else None)


def _subsample(data: CTData, views: int | None) -> CTData:
    n = len(data.angles)
    if views is None or views == n:
        return data
    if not 1 <= views <= n:
        raise ValueError(f"--views: expected 1..{n} (the file has {n} views), got {views}")
    keep = np.unique(np.floor(np.arange(views) * n / views).astype(int))
    return CTData(data.sinogram[keep], data.angles[keep], data.geometry, data.reference, data.source, data.noise_std)


def load(args) -> CTData:
    """The data ``args`` ask for; ``MemoryLimitError`` naming the option when the reconstruction would not fit."""
    if args.input is not None and args.input.suffix == ".mat":  # the HTC2022 challenge's own files
        from data.htc2022 import read_htc2022

        if args.slice is not None:
            raise ValueError(f"--slice: {args.input} is an HTC2022 file, which holds one slice; leave out --slice")
        data = read_htc2022(args.input, image_size=args.size)
    elif args.input is not None:
        data = read_ct(args.input, slices=args.slice)
    if args.input is not None:
        if data.sinogram.ndim == 3:
            raise ValueError(f"--input: {args.input} holds a stack of {data.sinogram.shape[0]} slices; recon ct "
                             "reconstructs one, chosen with --slice K")
        data = _subsample(data, args.views)
        shape = tuple(int(n) for n in data.geometry["image_shape"])
        check_memory(ct_memory_bytes(shape, *data.sinogram.shape),
                     f"--input {args.input}: a {shape[0]} x {shape[1]} reconstruction from {data.sinogram.shape[0]} "
                     f"views x {data.sinogram.shape[1]} detectors")
        return data
    views = 60 if args.views is None else args.views
    given = f"--size {args.size}" + (f", --views {views}" if args.views is not None else "")
    det = detector_count(args.size)
    check_memory(ct_memory_bytes((args.size, args.size), views, det),
                 f"{given}: a {args.size} x {args.size} phantom reconstructed from {views} views x {det} detectors")
    return simulate(args.phantom, args.size, views, args.geometry, args.noise, args.seed)


def run(args) -> int:
    check_output(args.output)
    device = _device(args.device)
    data = load(args)
    methods = list(dict.fromkeys(args.method or ["fbp", "tv"]))
    A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1]).to(device)
    y = torch.as_tensor(data.sinogram, device=device)[None, None]
    ref = None if data.reference is None else torch.as_tensor(data.reference, device=device)[None, None]
    print(f"recon ct: {data.source or args.input}: {data.geometry['geometry']} beam, {len(data.angles)} views x "
          f"{data.sinogram.shape[1]} detectors -> {data.geometry['image_shape']} image on {device}")
    noise_std = args.noise_std if args.noise_std is not None else (data.noise_std if args.lam == "auto" else None)
    if args.support and not set(methods) & set(VARIATIONAL):
        raise ValueError(f"--support: bounds the variational methods ({', '.join(VARIATIONAL)}); none is among "
                         f"{', '.join(methods)}")
    if args.estimate is not None and "svtv" not in methods:
        raise ValueError("--estimate: only the svtv method uses it; add --method svtv")
    sampled = check_samples(args.samples, methods)
    models = _models(args.weights or [], methods)
    for method, task in (("pnp", "denoiser"), *((m, m) for m in TRAINED_FOR_GEOMETRY)):
        if method in methods and method not in models:
            check_shipped(method, task, "--weights")
    trained = [m for m in TRAINED_FOR_GEOMETRY if m in methods]
    for method in trained:  # a model serves the geometry it was trained for: check before any work
        if method not in models:
            models[method] = load_model(shipped(method), task=method)
        check_geometry(models[method].card, A, models[method].path)
    if trained and (args.lam is not None or args.iterations is not None):
        raise ValueError(f"--{'lam' if args.lam is not None else 'iterations'}: --method {trained[0]} takes its "
                         "weight and iterations from its model; run it without them (or separately)")
    if args.estimate is not None and "svtv" in models:
        raise ValueError("--estimate: svtv takes its weights from --weights or from --estimate, not both")
    results, metrics, drawn = {}, {}, None
    with locked_output(args.output):
        for method in methods:
            extra = {"estimate": args.estimate} if method == "svtv" and args.estimate else {}
            if args.support and method in VARIATIONAL:
                extra["support"] = args.support
            if method in models:
                extra["model"] = models[method]
            r, p = run_method(reconstruct, A, y, method, sampled, args.samples, lam=args.lam,
                              iterations=args.iterations, progress=not args.no_progress, noise_std=noise_std, **extra)
            results[method] = r
            metrics[method] = _metrics(r, ref) | ({} if p is None else posterior_metrics(p, ref))
            drawn = p or drawn
        _write_outputs(args.output, data, results, metrics, ref, drawn)
        remove_stale_images(args.output, (*METHODS, *IMAGES), [*results, *(IMAGES if drawn else ())])
    print(format_table(metrics))
    print(f"outputs in {args.output}/")
    return 0


def _models(paths: list, methods: list) -> dict:
    """``{method: TrainedModel}`` for each ``--weights`` file, by the task its card names."""
    from recon.models import BUILTIN, CT_METHODS, builtin, load_model

    models = {}
    for given in paths:
        path = builtin(given) if given in BUILTIN and not Path(given).exists() else Path(given)
        model = load_model(path)
        served = CT_METHODS.get(model.task)
        if served is None:
            raise ValueError(f"--weights: {path} holds a {model.task!r} model; recon ct uses "
                             f"{' and '.join(repr(t) for t in CT_METHODS)} models")
        used = [m for m in served if m in methods]
        if not used:
            raise ValueError(f"--weights: {path} is a {model.task!r} model for --method {' or '.join(served)}, "
                             f"which is not among the methods {methods}")
        for method in used:
            if method in models:
                raise ValueError(f"--weights: two models for --method {method}")
            models[method] = model
    return models


def _metrics(r, ref) -> dict:
    m = {"seconds": round(r.seconds, 3), "iterations": r.iterations}
    if ref is not None:
        rng = float(ref.max() - ref.min()) or 1.0
        m["psnr"] = round(float(psnr(r.x, ref, data_range=rng)), 3)
        m["ssim"] = round(float(ssim(r.x, ref, data_range=rng)), 4)
    for key in ("lam", "rho", "lam_rule", "cv_multiple"):
        if key in r.parameters:
            m[key] = r.parameters[key]
    return m


def format_table(metrics: dict, cols=("psnr", "ssim", "seconds", "iterations")) -> str:
    """The printed table: one row per method, ``-`` where a metric does not apply."""
    name_w, col_w = max(8, *(len(n) + 2 for n in metrics)), max(12, *(len(c) + 2 for c in cols))
    lines = [f"{'method':<{name_w}}" + "".join(f"{c:>{col_w}}" for c in cols)]
    for name, m in metrics.items():
        lines.append(f"{name:<{name_w}}" + "".join(f"{m[c]:>{col_w}}" if c in m else f"{'-':>{col_w}}" for c in cols))
    return "\n".join(lines)


def _write_outputs(out: Path, data: CTData, results: dict, metrics: dict, ref, drawn=None) -> None:
    from apps.figures import comparison_figure, save_image

    images = {name: r.x[0, 0].detach().cpu().numpy() for name, r in results.items()}
    vmax = float(ref.max()) if ref is not None else float(np.percentile(next(iter(images.values())), 99.5))
    for name, image in images.items():
        save_image(out / f"{name}.png", image, 0.0, vmax)
    reference = None if ref is None else ref[0, 0].cpu().numpy()
    extra = None if drawn is None else write_uncertainty(out, drawn, reference, vmax, metrics[drawn.method])
    geometry = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.geometry.items()}
    params = {name: {**r.parameters, "iterations_run": r.iterations} for name, r in results.items()}
    write_reconstructions(out / "reconstructions.h5", images, {**geometry, "angles": data.angles}, params, extra=extra)
    write_metrics(out / "metrics.json", metrics)
    comparison_figure(out / "comparison.png", images, metrics, reference, vmax)
