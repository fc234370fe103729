"""``recon bench htc``: the HTC2022 challenge's limited-angle task, scored as the challenge scored it.

    recon bench htc --htc ../shared/data/real/htc2022 --method fbp --method tv --output bench_htc

For each test phantom with a ``*_limited.mat`` file (01a, 04a, 07a: arcs of 90, 60 and 30 deg) every
method reconstructs two tasks: the challenge's arc (the limited file as it is) and 60 of the 721
views over 360 deg (the sparse-view task of ``recon bench quality``). The score is the challenge's:
the reconstruction, brought to the organisers' 512 x 512 grid (bilinear) when ``--size`` is smaller,
is split into two classes by Otsu's threshold (``recon.metrics.otsu_threshold``) and compared with
the organisers' segmentation of their full-data FBP (``*_recon_fbp_seg.mat``) by the Matthews
correlation coefficient (``recon.metrics.mcc``), without any flip: our images are oriented like
theirs. PSNR against the organisers' full-data FBP (block-averaged onto ``--size``) is the second
figure. Every method runs at its defaults (300 iterations; for TV the weight by cross-validation over
the views, for the others the weight rule); ``tv+disc`` and the like add ``support="disc"``: the disc
fitted to the sinogram's shadow bounds the image (``recon.support``); ``+cv`` chooses the weight by
cross-validation (``lam="cv"``), ``+rule`` by the rule (``lam="rule"``);
``svtv-net``, ``lpn`` and ``dpir`` use the shipped models; ``limited-angle`` (TV with the disc bounds completed by a
network trained on simulated arcs of discs, ``recon.learned.limited_angle``) the shipped model or
``--limited-angle-weights``, on the arcs only (60 views over 360 deg are not what it was trained for: "not for
these data").

Writes ``<output>/htc.json`` (settings and per case and method: MCC, PSNR, seconds),
``htc.md`` (the table) and ``htc.png`` (the reference segmentation and each method's, per case).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from apps.argtypes import positive_int
from apps.outputs import check_output
from data.htc2022 import HTC_FOV_PIXELS
from recon.reconstruct import VARIATIONAL

SPARSE_VIEWS = 60
#: the learned methods with the shipped models: SV-TV with the weight network's edge map, PnP-ADMM with
#: the learned proximal network, DPIR with the diffusion prior (trained on simulated images in [0, 1]),
#: as (the method of ``reconstruct``, the model's task)
LEARNED = {"svtv-net": ("svtv", "svtv-weights"), "lpn": ("lpn", "lpn"), "dpir": ("dpir", "score"),
           "limited-angle": ("limited-angle", "limited-angle")}
#: the methods of ``reconstruct``, the variational ones with ``support="disc"`` (``tv+disc``...) and/or the weight
#: by cross-validation or the rule (``tv+cv``, ``tv+disc+rule``...), the learned ones
METHODS = ("fbp", "sirt", "cgls", "tikhonov",
           *(f"{m}{o}" for o in ("", "+disc", "+cv", "+disc+cv", "+rule", "+disc+rule") for m in VARIATIONAL),
           *LEARNED)


def add_parser(bench) -> None:
    p = bench.add_parser("htc", help="HTC2022 limited-angle task: MCC of Otsu segmentations, as the challenge",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--htc", type=Path, required=True, metavar="DIR",
                   help="folder with the HTC2022 test files (*_limited.mat, *_full.mat, *_recon_fbp*.mat)")
    p.add_argument("--size", type=positive_int, default=256, help="reconstruction grid over the 75.9 mm field "
                                                                  "of view (default 256; the challenge's is 512)")
    p.add_argument("--method", action="append", choices=METHODS, help="repeatable (default: fbp and tv)")
    p.add_argument("--limited-angle-weights", type=Path, default=None, metavar="FILE",
                   help="limited-angle: the model (recon train limited-angle; default: the shipped one)")
    p.add_argument("--output", type=Path, default=Path("bench_htc"), help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def cases(folder: Path) -> list[tuple[str, Path, Path, Path, Path]]:
    """``(name, limited, full, reference FBP, reference segmentation)`` for each test phantom in ``folder``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--htc: no such folder {folder}")
    found = []
    for limited in sorted(folder.rglob("htc2022_*_limited.mat")):
        name = limited.name.removeprefix("htc2022_").removesuffix("_limited.mat")
        others = [limited.with_name(f"htc2022_{name}_{s}.mat") for s in ("full", "recon_fbp", "recon_fbp_seg")]
        missing = [p.name for p in others if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"--htc: {limited.name} lacks {', '.join(missing)} beside it")
        found.append((name, limited, *others))
    if not found:
        raise FileNotFoundError(f"--htc: no HTC2022 *_limited.mat files under {folder}")
    return found


def _mat(path: Path) -> np.ndarray:
    from scipy import io as scipy_io

    arrays = [v for k, v in scipy_io.loadmat(path).items() if not k.startswith("__")]
    return np.asarray(arrays[0], dtype=np.float64)


def segment(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``image`` on the organisers' grid ``shape`` (bilinear when it differs), split by Otsu: ``(1, 1, H, W)`` bool."""
    from recon.metrics import otsu_threshold

    x = image.detach().double().cpu().reshape(1, 1, *image.shape[-2:])
    if tuple(x.shape[-2:]) != tuple(shape):
        x = F.interpolate(x, size=tuple(shape), mode="bilinear", align_corners=False)
    return x > otsu_threshold(x).reshape(-1, 1, 1, 1)


def score(image: torch.Tensor, segmentation: np.ndarray) -> float:
    """The challenge's score: MCC of ``image``'s Otsu segmentation against the organisers' ``segmentation``."""
    from recon.metrics import mcc

    ours = segment(image, segmentation.shape)
    return float(mcc(ours, torch.as_tensor(segmentation > 0.5)[None, None])[0])


def reference_image(ref_fbp: Path, geometry: dict) -> np.ndarray | None:
    """The organisers' full-data FBP in 1/mm on ``geometry``'s grid (block-averaged), or None when
    that grid does not divide theirs. Their image is per pixel of ``HTC_FOV_PIXELS`` over the field."""
    size = int(geometry["image_shape"][0])
    if HTC_FOV_PIXELS % size:
        return None
    f = HTC_FOV_PIXELS // size
    image = _mat(ref_fbp) / (geometry["pixel_size"] * size / HTC_FOV_PIXELS)
    return image.reshape(size, f, size, f).mean(axis=(1, 3))


def _tasks(limited: Path, full: Path, size: int) -> dict:
    """The challenge's arc and the sparse-view task, as ``{task: CTData}``."""
    from data.htc2022 import read_htc2022, sparse_views

    arc = read_htc2022(limited, image_size=size)
    degrees = np.rad2deg(arc.angles)
    sparse = sparse_views(read_htc2022(full, image_size=size), SPARSE_VIEWS)
    return {f"arc {degrees.min():.0f}-{degrees.max():.0f} deg": arc, f"{SPARSE_VIEWS} views": sparse}


def run(args) -> int:
    from apps.figures import plt
    from apps.outputs import write_metrics
    from data.hdf5 import atomic_path
    from operators.ct import ct_operator
    from recon.metrics import mcc, psnr
    from recon.models import check_geometry, check_shipped, load_model, shipped
    from recon.reconstruct import reconstruct

    check_output(args.output)
    found = cases(args.htc)
    methods = list(dict.fromkeys(args.method or ["fbp", "tv"]))
    given = {"limited-angle": args.limited_angle_weights}
    for m in methods:
        if m in LEARNED and given.get(m) is None:
            check_shipped(m, LEARNED[m][1], f"--{m}-weights" if m in given else "--method")
    models = {m: load_model(given.get(m) or shipped(LEARNED[m][1]), task=LEARNED[m][1])
              for m in methods if m in LEARNED}
    args.output.mkdir(parents=True, exist_ok=True)
    results, panels = {}, []
    for name, limited, full, ref_fbp, ref_seg in found:
        segmentation = _mat(ref_seg)
        truth = torch.as_tensor(segmentation > 0.5)[None, None]
        tasks = _tasks(limited, full, args.size)
        reference = reference_image(ref_fbp, next(iter(tasks.values())).geometry)
        for task, data in tasks.items():
            A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
            y = torch.as_tensor(data.sinogram)[None, None]
            row, segs = {}, {"reference": segmentation > 0.5}
            for method in methods:
                if method == "limited-angle":  # for short arcs only: the 60 views over 360 deg are not one
                    try:
                        check_geometry(models[method].card, A, models[method].path)
                    except ValueError as err:
                        row[method] = {"skipped": str(err)}
                        print(f"{name} {task}: {method} skipped ({err})", flush=True)
                        continue
                start = time.perf_counter()
                base, *options = method.split("+")
                weight = next((o for o in options if o in ("cv", "rule")), None)
                extra = {"model": models[method]} if method in LEARNED else {"lam": weight} if weight else {}
                x = reconstruct(A, y, LEARNED[method][0] if method in LEARNED else base, progress=not args.no_progress,
                                support="disc" if "disc" in options else None, **extra).x
                seconds = time.perf_counter() - start
                mask = segment(x, segmentation.shape)
                row[method] = {"mcc": round(float(mcc(mask, truth)[0]), 4), "seconds": round(seconds, 2)}
                if reference is not None:
                    ref = torch.as_tensor(reference, dtype=x.dtype)[None, None]
                    row[method]["psnr"] = round(float(psnr(x, ref, data_range=float(ref.max()))), 2)
                segs[method] = mask[0, 0].numpy()
                print(f"{name} {task}: {method} MCC {row[method]['mcc']:.3f}"
                      + (f", {row[method]['psnr']:.2f} dB" if "psnr" in row[method] else "")
                      + f", {row[method]['seconds']:.1f} s", flush=True)
            results.setdefault(name, {})[task] = row
            panels.append((f"{name}, {task}", segs))
    table = format_table(results, methods)
    write_metrics(args.output / "htc.json", {"settings": {"size": args.size, "methods": methods}, "results": results})
    with atomic_path(args.output / "htc.md") as tmp, open(tmp, "w") as f:
        f.write(table)
    columns = 1 + len(methods)
    fig, axes = plt.subplots(len(panels), columns, figsize=(2.2 * columns, 2.3 * len(panels)), squeeze=False)
    for row_axes, (title, segs) in zip(axes, panels):
        for ax, method in zip(row_axes, ["reference", *methods]):
            ax.axis("off")
            if method in segs:  # a method skipped for these data leaves its panel blank
                ax.imshow(segs[method], cmap="gray")
                ax.set_title(f"{title}\n{method}" if method == "reference" else method, fontsize=8)
    fig.tight_layout()
    with atomic_path(args.output / "htc.png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    print(table)
    print(f"outputs in {args.output}/")
    return 0


def _cell(entry: dict) -> str:
    """One method's cell: MCC (PSNR, seconds), or why it did not run."""
    if "skipped" in entry:
        return "not for these data"
    psnr = f"{entry['psnr']:.2f} dB, " if "psnr" in entry else ""
    return f"{entry['mcc']:.3f} ({psnr}{entry['seconds']:.1f} s)"


def format_table(results: dict, methods: list[str]) -> str:
    """Markdown: one row per case and task, the MCC (PSNR, seconds) of each method."""
    lines = ["| case | task | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for name, tasks in results.items():
        for task, row in tasks.items():
            cells = [_cell(row[m]) for m in methods]
            lines.append(f"| {name} | {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
