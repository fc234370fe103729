"""``recon bench``: measured comparisons, reproducible from one command.

``recon bench speed`` times the CT operators against ASTRA, ODL and scikit-image
(``apps/bench_speed.py``); ``recon bench tv`` times TV reconstruction to the same objective
against ODL's pdhg (``apps/bench_tv.py``); ``recon bench htc`` scores the HTC2022 limited-angle
task as the challenge did (``apps/bench_htc.py``).

``recon bench quality`` reconstructs simulated phantoms (Shepp-Logan and seeded random
ellipses, parallel beam over 180 deg with Gaussian noise relative to the sinogram's RMS)
and, with ``--htc``, the measured HTC2022 fan-beam sinograms reduced to ``--views`` of
their 721 views over 360 deg, against a reference FBP from all 721 views. Every method
runs at its own weight (its default, or ``--lam rule|auto|cv``); with ``--lam rule`` SV-TV and
graphLa+TV reuse the TV reconstruction as their pre-estimate (the one ``reconstruct`` makes for them),
and their time includes it. The learned methods use
the shipped models unless ``--lpn-weights`` / ``--svtv-weights`` name others: ``lpn`` (PnP-ADMM
with the learned proximal network), ``svtv-net`` (SV-TV with the weight network's edge map) and,
for comparison, ``svtv-fbp`` (SV-TV with FBP as the pre-estimate); ``pnp`` is PnP-ADMM with the
denoiser ``--pnp-weights`` (none is shipped); ``red-diff``, ``diffpir``, ``dpir``, ``dps`` and ``score-pc``
use the shipped diffusion prior unless ``--score-weights`` names another; ``rising`` (TV's first iterations
completed by a network) the model ``--rising-weights``, ``lpd`` (learned primal-dual) ``--lpd-weights``,
``unrolled-ista`` ``--unrolled-ista-weights``.

Writes ``<output>/quality.json`` (settings, per-case metrics, mean and std per dataset),
``quality.md`` (the table), ``quality.png`` (Shepp-Logan and the first HTC2022 case), and
one ``cases/<case>.json`` + ``.npz`` per finished case: a rerun skips finished cases and
computes only the methods a case lacks, so an interrupted run loses nothing and a method
added later (or removed from the case files to redo it) runs alone.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from apps import bench_htc, bench_speed, bench_tv
from apps.ct import _device, _metrics, simulate
from data.hdf5 import CTData, atomic_path
from operators.ct import ct_operator
from recon.diffusion.diffusion_recon import DIFFUSION
from recon.reconstruct import PNP, TRAINED_FOR_GEOMETRY, reconstruct

QUALITY_METHODS = ("fbp", "tikhonov", "tv", "svtv", "graphla-fbp", "graphla-tik", "graphla-tv")
#: run when asked for with --method
LEARNED_METHODS = ("svtv-fbp", "svtv-net", "lpn", "pnp", *DIFFUSION, *TRAINED_FOR_GEOMETRY)
DIRECT = ("fbp", "tikhonov")  # no weight, no iteration option
TRAINED = TRAINED_FOR_GEOMETRY  # trained for one geometry: weight and iterations from the model


#: the library's argument names (in error messages) that this command's options set
FLAGS = {"iterations": "--iterations"}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measured comparisons (quality, speed)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench = p.add_subparsers(dest="bench", metavar="BENCH")
    bench.required = True
    bench_speed.add_parser(bench)
    bench_tv.add_parser(bench)
    bench_htc.add_parser(bench)
    q = bench.add_parser("quality", help="PSNR/SSIM/time of the CT methods on phantoms and HTC2022",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--phantoms", type=int, default=20, help="random-ellipse phantoms (seeds 0..N-1), besides "
                                                            "Shepp-Logan (default 20)")
    q.add_argument("--size", type=int, default=256, help="phantom size in pixels (default 256)")
    q.add_argument("--views", type=int, default=60, help="views kept (phantoms and HTC2022; default 60)")
    q.add_argument("--noise", type=float, default=0.01, help="phantom noise std relative to the sinogram RMS")
    q.add_argument("--htc", type=Path, default=None, metavar="DIR",
                   help="folder with HTC2022 *_full.mat files (searched recursively); omitted: phantoms only")
    q.add_argument("--htc-size", type=int, default=256,
                   help="HTC2022 grid over the organisers' 75.9 mm field of view (default 256)")
    q.add_argument("--datasets", nargs="+", choices=("phantoms", "htc2022"), default=["phantoms", "htc2022"],
                   help="run only these datasets (e.g. one per process; the summary covers what is finished)")
    q.add_argument("--method", action="append", choices=QUALITY_METHODS + LEARNED_METHODS,
                   help=f"repeatable (default: {', '.join(QUALITY_METHODS)})")
    q.add_argument("--lpn-weights", type=Path, default=None, metavar="FILE", help="lpn: the model (default shipped)")
    q.add_argument("--pnp-weights", type=Path, default=None, metavar="FILE",
                   help="pnp: the trained denoiser (required for --method pnp; none is shipped)")
    q.add_argument("--score-weights", type=Path, default=None, metavar="FILE",
                   help="red-diff, diffpir, dpir, dps, score-pc: the diffusion prior (default shipped)")
    q.add_argument("--rising-weights", type=Path, default=None, metavar="FILE",
                   help="rising: the RISING network (recon train rising)")
    q.add_argument("--lpd-weights", type=Path, default=None, metavar="FILE",
                   help="lpd: the learned primal-dual network (recon train lpd)")
    q.add_argument("--unrolled-ista-weights", type=Path, default=None, metavar="FILE",
                   help="unrolled-ista: the unrolled ISTA network (recon train unrolled-ista)")
    q.add_argument("--svtv-weights", type=Path, default=None, metavar="FILE",
                   help="svtv-net: the weight network (default shipped)")
    q.add_argument("--lam", choices=("default", "rule", "auto", "cv"), default="default",
                   help="weights of the variational methods: each one's default (cv for tv, the rule otherwise), "
                        "the rule, the discrepancy principle or cross-validation over the views")
    q.add_argument("--iterations", type=int, default=None, help="iterations of the variational methods")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    q.add_argument("--output", type=Path, default=Path("bench_quality"), help="output folder")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")
    q.set_defaults(run=run_quality)


def _cases(args) -> list[tuple[str, str, object]]:
    """``(dataset, case name, loader)`` for every case, phantoms first."""
    if args.phantoms < 0:
        raise ValueError(f"--phantoms: expected a non-negative number, got {args.phantoms}")
    sim = lambda phantom, seed: lambda: simulate(phantom, args.size, args.views, "parallel", args.noise, seed)  # noqa: E731
    cases = []
    if "phantoms" in args.datasets:
        cases += [("phantoms", "shepp-logan", sim("shepp-logan", 0))]
        cases += [("phantoms", f"ellipses-{s}", sim("ellipses", s)) for s in range(args.phantoms)]
    if args.htc is not None and "htc2022" in args.datasets:
        if not args.htc.is_dir():
            raise FileNotFoundError(f"--htc: no such folder {args.htc}")
        files = sorted(args.htc.rglob("*_full.mat"))
        if not files:
            raise FileNotFoundError(f"--htc: no HTC2022 *_full.mat files under {args.htc}")
        cases += [("htc2022", f.name.removesuffix("_full.mat"), _htc_loader(f, args)) for f in files]
    return cases


def _htc_loader(path: Path, args):
    def load() -> CTData:
        from data.htc2022 import HTC_VIEWS_FULL, read_htc2022, sparse_views
        from recon.fbp import fbp

        full = read_htc2022(path, image_size=args.htc_size)
        if full.sinogram.shape[0] != HTC_VIEWS_FULL:
            raise ValueError(f"--htc: {path} has {full.sinogram.shape[0]} views, expected the full {HTC_VIEWS_FULL}")
        A = ct_operator(full.geometry, full.angles, full.sinogram.shape[1])
        ref = fbp(A, torch.as_tensor(full.sinogram)[None, None])[0, 0].numpy()
        return replace(sparse_views(full, args.views), reference=ref,
                       source=f"HTC2022 {path.name}, {args.views} of {HTC_VIEWS_FULL} views")
    return load


def _run_case(data: CTData, methods, args, device, earlier: dict | None = None,
              models: dict | None = None) -> tuple[dict, dict]:
    """Metrics and images of ``methods`` on one case; ``earlier = {"metrics", "images"}`` of a previous
    run with the same settings supplies the methods it has (TV's image then serves as the pre-estimate)."""
    earlier, models = earlier or {"metrics": {}, "images": {}}, models or {}
    A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1]).to(device)
    y = torch.as_tensor(data.sinogram, device=device)[None, None]
    ref = torch.as_tensor(data.reference, device=device)[None, None]
    lam = None if args.lam == "default" else args.lam
    noise_std = data.noise_std if lam == "auto" else None
    common = {"iterations": args.iterations, "progress": not args.no_progress, "noise_std": noise_std}
    metrics = {m: earlier["metrics"][m] for m in methods if m in earlier["metrics"]}
    images = {m: earlier["images"][m] for m in metrics if m in earlier["images"]}
    todo = [m for m in methods if m not in metrics]
    reuse = lam == "rule"  # TV at the rule is the pre-estimate reconstruct's svtv and graphla-tv make
    need_tv = reuse and any(m in todo for m in ("svtv", "graphla-tv"))
    tv_x, tv_seconds = None, 0.0
    if need_tv and "tv" in earlier["metrics"] and "tv" in earlier["images"]:
        tv_x = torch.as_tensor(earlier["images"]["tv"], device=device)[None, None]
        tv_seconds = earlier["metrics"]["tv"]["seconds"]
    elif need_tv:
        todo = ["tv"] + [m for m in todo if m != "tv"]
    for method in todo:
        extra: dict = {}
        if method in LEARNED_METHODS:
            extra = {"svtv-fbp": {"estimate": "fbp"}, "svtv-net": {"model": models.get("svtv-net")},
                     "lpn": {"model": models.get("lpn")}, "pnp": {"model": models.get("pnp")},
                     **{m: {"model": models.get(m)} for m in (*DIFFUSION, *TRAINED)}}[method]
        if reuse and method in ("svtv", "graphla-tv"):
            def tv_estimate(_y, x=tv_x):
                return x
            tv_estimate.__name__ = "tv"
            extra["estimate"] = tv_estimate
        run_as = "svtv" if method.startswith("svtv-") else method
        kwargs = {} if method in DIRECT else {**common, **extra}
        if method in TRAINED:
            kwargs["iterations"] = None  # the model's
        r = reconstruct(A, y, run_as, lam=lam if method not in DIRECT + PNP + DIFFUSION + TRAINED else None,
                        **kwargs)
        if method == "tv":
            tv_x, tv_seconds = r.x, r.seconds
        elif "estimate" in extra:
            r.seconds += tv_seconds  # the pre-estimate is part of the method's cost
        metrics[method] = _metrics(r, ref)
        images[method] = r.x[0, 0].detach().cpu().numpy()
    return ({m: metrics[m] for m in methods},
            {"reference": data.reference, **{m: images[m] for m in methods if m in images}})


def run_quality(args) -> int:
    device = _device(args.device)
    methods = list(dict.fromkeys(args.method or QUALITY_METHODS))
    models = _models(args, methods)  # before any case is read or the output made: a bad model stops here
    cases = _cases(args)
    out = args.output
    (out / "cases").mkdir(parents=True, exist_ok=True)
    # what a case's result depends on; a finished case with the same settings is not recomputed
    settings = {"size": args.size, "views": args.views, "noise": args.noise, "htc_size": args.htc_size,
                "lam": args.lam, "iterations": args.iterations}
    used = {m: str(v.path) for m, v in models.items()}
    per_case: dict = {}
    for i, (dataset, name, load) in enumerate(cases):
        path = out / "cases" / f"{name}.json"
        done = json.loads(path.read_text()) if path.is_file() else None
        if done is not None and done.get("settings") != settings:
            done = None  # computed with other settings: start over
        for m in used if done is not None else ():
            if done.get("models", {}).get(m) != used[m]:
                done["metrics"].pop(m, None)  # computed with another model: redo that method
        if done is not None and all(m in done["metrics"] for m in methods):
            per_case[name] = done
            print(f"[{i + 1}/{len(cases)}] {name}: done earlier, skipped")
            continue
        earlier = None
        if done is not None:  # finished methods are kept; only the missing ones run
            npz = out / "cases" / f"{name}.npz"
            images = dict(np.load(npz)) if npz.is_file() else {}
            earlier = {"metrics": done["metrics"], "images": images}
        metrics, images = _run_case(load(), methods, args, device, earlier, models)
        if earlier is not None:
            metrics, images = {**earlier["metrics"], **metrics}, {**earlier["images"], **images}
        per_case[name] = {"dataset": dataset, "settings": settings, "metrics": metrics,
                          "models": {**(done or {}).get("models", {}), **used}}
        with atomic_path(out / "cases" / f"{name}.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **images)
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(per_case[name], f, indent=1)
        print(f"[{i + 1}/{len(cases)}] {name}: " + ", ".join(
            f"{m} {v['psnr']:.2f} dB" for m, v in metrics.items()), flush=True)
    summary = summarise(per_case, methods)
    with atomic_path(out / "quality.json") as tmp, open(tmp, "w") as f:
        json.dump({"settings": {**settings, "device": str(device)}, "summary": summary,
                   "cases": {k: v["metrics"] for k, v in per_case.items()}}, f, indent=1)
    table = format_quality(summary)
    with atomic_path(out / "quality.md") as tmp, open(tmp, "w") as f:
        f.write(table + "\n")
    _figure(out, per_case, methods)
    print(table)
    print(f"outputs in {out}/")
    return 0


def _models(args, methods) -> dict:
    """The trained models of the learned methods among ``methods`` (shipped ones by default)."""
    from recon.models import check_shipped, load_model, shipped

    wanted = {"lpn": (args.lpn_weights, "lpn"), "svtv-net": (args.svtv_weights, "svtv-weights"),
              "pnp": (args.pnp_weights, "denoiser"), **{m: (args.score_weights, "score") for m in DIFFUSION},
              "rising": (args.rising_weights, "rising"), "lpd": (args.lpd_weights, "lpd"),
              "unrolled-ista": (args.unrolled_ista_weights, "unrolled-ista")}
    for method, task in (("pnp", "denoiser"), *((m, m) for m in TRAINED)):
        if method in methods and wanted[method][0] is None:
            check_shipped(method, task, f"--{method}-weights")
    trained = [m for m in TRAINED if m in methods]
    if trained and "htc2022" in args.datasets and args.htc is not None:
        raise ValueError(f"--method {trained[0]}: a {trained[0]} model serves the geometry it was trained for "
                         "(parallel beam); the HTC2022 scans are fan beam: add --datasets phantoms")
    return {m: load_model(path or shipped(task), task=task) for m, (path, task) in wanted.items() if m in methods}


def summarise(per_case: dict, methods) -> dict:
    """``{dataset: {method: {psnr_mean, psnr_std, ssim_mean, ssim_std, seconds_mean, cases}}}``."""
    summary: dict = {}
    for dataset in dict.fromkeys(v["dataset"] for v in per_case.values()):
        rows = [v["metrics"] for v in per_case.values() if v["dataset"] == dataset]
        summary[dataset] = {}
        for m in methods:
            entry = {"cases": len(rows)}
            for key in ("psnr", "ssim", "seconds"):
                vals = np.array([r[m][key] for r in rows], dtype=float)
                entry[f"{key}_mean"] = round(float(vals.mean()), 4)
                entry[f"{key}_std"] = round(float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, 4)
            summary[dataset][m] = entry
    return summary


def format_quality(summary: dict) -> str:
    """A Markdown table: mean +- std PSNR and SSIM and mean seconds per dataset and method."""
    lines = ["| dataset | method | PSNR (dB) | SSIM | seconds |", "|---|---|---|---|---|"]
    for dataset, rows in summary.items():
        for m, e in rows.items():
            lines.append(f"| {dataset} ({e['cases']}) | {m} | {e['psnr_mean']:.2f} ± {e['psnr_std']:.2f} | "
                         f"{e['ssim_mean']:.3f} ± {e['ssim_std']:.3f} | {e['seconds_mean']:.1f} |")
    return "\n".join(lines)


def _figure(out: Path, per_case: dict, methods) -> None:
    from apps.figures import plt  # sets the Agg backend first

    firsts = [name for dataset in dict.fromkeys(v["dataset"] for v in per_case.values())
              for name in [next(k for k, v in per_case.items() if v["dataset"] == dataset)]]
    rows = [(name, np.load(out / "cases" / f"{name}.npz")) for name in firsts if (out / "cases" / f"{name}.npz").is_file()]
    if not rows:
        return
    cols = ["reference", *methods]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.7 * len(cols), 3.2 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows):
        ref = images["reference"]
        vmax = float(np.percentile(ref, 99.9))
        for c, col in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(images[col], cmap="gray", vmin=0.0, vmax=vmax)
            m = per_case[name]["metrics"].get(col)
            ax.set_title(f"{name}\n{col}" if col == "reference" else f"{col}\n{m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}",
                         fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(out / "quality.png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
