"""``recon bench speed``: 2D parallel-beam CT forward and adjoint, recon against the anchors.

In one process, for each image size ``N`` (``N x N`` pixels, ``N`` detector cells of the pixel's
width), number of views (uniform over 180 deg) and batch size, times:

* ``recon``: ``ParallelBeam2D`` with its default CPU backend (``auto``: the cached sparse system
  matrix when it fits the memory budget, see ``operators.ct``), the whole batch per call;
* ``astra``: ASTRA's ``linear`` projector called directly, ``direct_FP``/``direct_BP`` slice by slice;
* ``odl``: ODL's ``RayTransform(impl='astra_cpu')`` on the same physical geometry, looping over the batch;
* ``skimage``: ``skimage.transform.radon`` and the unfiltered ``iradon(..., filter_name=None)`` per slice.

Outputs are compared before any timing, on a smooth phantom inside the inscribed circle (so that
scikit-image's ``circle=True`` sees the same object): recon against ASTRA and ODL (ODL's adjoint
converted to the plain transpose with its weights) as relative L2 differences below ``1e-4`` (ASTRA;
measured <= 6e-7) and ``1e-3`` (ODL, which sets up ASTRA's geometry and weights itself; measured 1e-5
to 2e-4, the largest for the 512 x 512 adjoint),
scikit-image (its own discretisation and scaling) as correlations above ``0.99``. Warm-up calls
(recon's includes building its matrix) are not timed but are reported as ``setup`` seconds; each
time is the median of ``--repeats`` calls. Memory is the peak resident-set size above the level
before the implementation started (sampled every 2 ms, C allocations included) over setup and
warm-up, which make the same calls as the timed ones; the sampling stops before the timing.

Quick run (256 x 256, 60 views, batches 1 and 8; about a minute on 2 cores)::

    recon bench speed --quick --json speed_quick.json

Full run (256 and 512, 60 and 180 views, batches 1, 8 and 32; scikit-image dominates, ~1 hour)::

    recon bench speed --json speed.json

On a GPU (``--device cuda``) the same problems run on CUDA tensors: ``recon`` (one ASTRA 3D call per
batch, tensors kept on the device), ``astra`` (ASTRA's 2D CUDA projector called per slice on the torch
tensors, what deepinv and ODL do) and ``odl`` (``RayTransform(impl='astra_cuda')`` on ODL's pytorch
array backend, per slice). Times synchronise the device; memory is ``torch.cuda.max_memory_allocated``
above the level before the implementation started (ASTRA's own allocations are not seen by torch).
ASTRA's 2D and 3D CUDA kernels interpolate differently, so CUDA outputs are compared with a looser
relative tolerance (``CUDA_TOL``) and the measured differences are reported. Default CUDA grid: 256
and 512, 60 and 180 views, batches 1, 8, 32 and 64 (``--quick``: 256, 180 views, batches 1 and 64)::

    recon bench speed --device cuda --json speed_cuda.json

``--sizes/--views/--batches/--repeats/--impl`` override either set. The exit status is 1 when a
correctness check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

from data.hdf5 import atomic_path
from operators.ct import ParallelBeam2D

IMPLS = ("recon", "astra", "odl", "skimage")
CUDA_IMPLS = ("recon", "astra", "odl")
EXACT_TOL, CORR_MIN = 1e-4, 0.99
ODL_TOL = 1e-3  # ODL sets up ASTRA's geometry and weights itself: measured 1e-5 (FP) to 2e-4 (BP, 512^2) from recon
CUDA_TOL = 5e-2  # ASTRA's 2D (per slice) and 3D (recon's batch) CUDA kernels differ in interpolation


def add_parser(bench) -> None:
    p = bench.add_parser("speed", help="CT forward/adjoint time against ASTRA, ODL and scikit-image",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="256 x 256, 60 views, batches 1 and 8")
    p.add_argument("--sizes", type=int, nargs="+", help="image sizes N (N x N pixels)")
    p.add_argument("--views", type=int, nargs="+", help="numbers of views over 180 deg")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median; default 5)")
    p.add_argument("--impl", action="append", choices=IMPLS, help="repeatable (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    p.set_defaults(run=run_speed)


ODL_HINT = "pip install 'recon[bench]' (or `pip install odl`) adds it"


def odl_installed() -> bool:
    """Whether ODL, the optional comparison the ``bench`` extra installs, can be imported."""
    return importlib.util.find_spec("odl") is not None


def _settings(args) -> dict:
    quick, cuda = args.quick, getattr(args, "device", "cpu") == "cuda"
    if cuda and "skimage" in (args.impl or ()):
        raise ValueError("--impl skimage: scikit-image runs on CPU only; use --device cpu")
    views = [180] if quick and cuda else [60] if quick else [60, 180]
    batches = ([1, 64] if quick else [1, 8, 32, 64]) if cuda else [1, 8] if quick else [1, 8, 32]
    s = {"sizes": args.sizes or ([256] if quick else [256, 512]), "views": args.views or views,
         "batches": args.batches or batches, "repeats": args.repeats, "device": "cuda" if cuda else "cpu",
         "impls": list(dict.fromkeys(["recon", *(args.impl or (CUDA_IMPLS if cuda else IMPLS))]))}
    if "odl" in s["impls"] and not odl_installed():
        if args.impl:
            raise ValueError(f"--impl odl: ODL is not installed; {ODL_HINT}")
        s["impls"].remove("odl")
        print(f"odl: not installed, left out ({ODL_HINT})")
    for key in ("sizes", "views", "batches", "repeats"):
        values = s[key] if isinstance(s[key], list) else [s[key]]
        if any(v < 1 for v in values):
            raise ValueError(f"--{key}: expected positive integers, got {values}")
    return s


class PeakRSS:
    """Peak resident-set size above the level at entry, in MiB (a 2 ms sampling thread)."""

    def __enter__(self):
        import psutil

        self._proc, self._stop = psutil.Process(), threading.Event()
        self.base = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self.mib = (self.peak - self.base) / 2**20


def phantom(n: int, batch: int, seed: int = 0) -> np.ndarray:
    """``(batch, n, n)`` float32 sums of random Gaussians, zero outside the inscribed circle."""
    rng = np.random.default_rng(seed)
    c = (np.arange(n) - (n - 1) / 2) / (n / 2)
    X, Y = np.meshgrid(c, -c)
    out = np.zeros((batch, n, n))
    for b in range(batch):
        for cx, cy, s, a in zip(rng.uniform(-0.4, 0.4, 6), rng.uniform(-0.4, 0.4, 6), rng.uniform(0.1, 0.3, 6),
                                rng.uniform(0.2, 1.0, 6)):
            out[b] += a * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * s * s))
    return (out * (np.hypot(X, Y) < 1 - 2 / n)).astype(np.float32)


# -- the implementations: setup(n, angles) -> (fp, bp) on (B, N, N) / (B, views, N) float32 arrays -----
def _recon(n, angles):
    A = ParallelBeam2D((n, n), angles, n)
    fp = lambda x: A(torch.from_numpy(x)[:, None])[:, 0].numpy()  # noqa: E731
    bp = lambda y: A.adjoint(torch.from_numpy(y)[:, None])[:, 0].numpy()  # noqa: E731
    return fp, bp, A


def _astra(n, angles):
    import astra

    pid = astra.create_projector("linear", astra.create_proj_geom("parallel", 1.0, n, angles),
                                 astra.create_vol_geom(n, n))

    def fp(x):
        out = np.empty((x.shape[0], len(angles), n), dtype=np.float32)
        for k in range(x.shape[0]):
            astra.projector.direct_FP(pid, x[k], out=out[k])
        return out

    def bp(y):
        out = np.empty((y.shape[0], n, n), dtype=np.float32)
        for k in range(y.shape[0]):
            astra.projector.direct_BP(pid, y[k], out=out[k])
        return out
    return fp, bp, pid


def _odl(n, angles):
    import odl
    from odl.applications import tomo

    space = odl.uniform_discr([-n / 2, -n / 2], [n / 2, n / 2], (n, n), dtype="float32")
    geometry = tomo.Parallel2dGeometry(odl.nonuniform_partition(angles), odl.uniform_partition(-n / 2, n / 2, n))
    R = tomo.RayTransform(space, geometry, impl="astra_cpu")
    w = float(R.domain.weighting.const) / float(R.range.weighting.const)  # ODL's adjoint -> plain transpose
    # ODL arrays: axis 0 = x, axis 1 = y (both increasing); ours: rows = y decreasing
    fp = lambda x: np.stack([R(np.rot90(xi, -1).copy()).asarray() for xi in x])  # noqa: E731
    bp = lambda y: np.stack([np.rot90(R.adjoint(yi).asarray(), 1) * w for yi in y])  # noqa: E731
    return fp, bp, R


def _skimage(n, angles):
    from skimage.transform import iradon, radon

    deg = np.degrees(angles)
    fp = lambda x: np.stack([radon(xi, deg, circle=True).T for xi in x])  # noqa: E731
    bp = lambda y: np.stack([iradon(yi.T, deg, filter_name=None, circle=True) for yi in y])  # noqa: E731
    return fp, bp, None


SETUPS = {"recon": _recon, "astra": _astra, "odl": _odl, "skimage": _skimage}


# -- CUDA: setup(n, angles) -> (fp, bp) on (B, N, N) / (B, views, N) float32 CUDA tensors -------------
def _recon_cuda(n, angles):
    A = ParallelBeam2D((n, n), angles, n)
    return (lambda x: A(x[:, None])[:, 0]), (lambda y: A.adjoint(y[:, None])[:, 0]), A


def _astra_cuda(n, angles):
    import astra

    pid = astra.create_projector("cuda", astra.create_proj_geom("parallel", 1.0, n, angles), astra.create_vol_geom(n, n))

    def fp(x):
        out = torch.empty((x.shape[0], len(angles), n), dtype=torch.float32, device=x.device)
        for k in range(x.shape[0]):
            astra.projector.direct_FP(pid, x[k], out=out[k])
        return out

    def bp(y):
        out = torch.empty((y.shape[0], n, n), dtype=torch.float32, device=y.device)
        for k in range(y.shape[0]):
            astra.projector.direct_BP(pid, y[k], out=out[k])
        return out
    return fp, bp, pid


def _odl_cuda(n, angles):
    import odl
    from odl.applications import tomo

    space = odl.uniform_discr([-n / 2, -n / 2], [n / 2, n / 2], (n, n), dtype="float32", impl="pytorch",
                              device="cuda:0")
    geometry = tomo.Parallel2dGeometry(odl.nonuniform_partition(angles), odl.uniform_partition(-n / 2, n / 2, n))
    R = tomo.RayTransform(space, geometry, impl="astra_cuda")
    w = float(R.domain.weighting.const) / float(R.range.weighting.const)
    fp = lambda x: torch.stack([R(space.element(torch.rot90(xi, -1).contiguous())).data for xi in x])  # noqa: E731
    bp = lambda y: torch.stack([torch.rot90(R.adjoint(R.range.element(yi)).data, 1) * w for yi in y])  # noqa: E731
    return fp, bp, R


CUDA_SETUPS = {"recon": _recon_cuda, "astra": _astra_cuda, "odl": _odl_cuda}


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _corr(a, b, mask) -> float:
    return float(np.corrcoef((a * mask).ravel(), (b * mask).ravel())[0, 1])


def _check(impl, out, ref, mask, tol: float = EXACT_TOL) -> dict:
    """Compare an implementation's (fp, bp) outputs with recon's."""
    if impl == "skimage":  # own interpolation and scaling: correlation (adjoint inside the circle)
        r = {"fp_corr": _corr(out[0], ref[0], 1.0), "bp_corr": _corr(out[1], ref[1], mask)}
        r["passed"] = min(r.values()) > CORR_MIN
    else:
        r = {"fp_rel": _rel(out[0], ref[0]), "bp_rel": _rel(out[1], ref[1])}
        r["passed"] = max(r.values()) < tol
    return r


def _median_time(fn, arg, repeats: int, cuda: bool = False) -> float:
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(arg)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _measure(impl, n, angles, x, y, repeats) -> tuple[dict, tuple]:
    cuda = isinstance(x, torch.Tensor) and x.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as mem:
        t = time.perf_counter()
        fp, bp, handle = (CUDA_SETUPS if cuda else SETUPS)[impl](n, angles)
        out = (fp(x), bp(y))
        if cuda:
            torch.cuda.synchronize()
        setup = time.perf_counter() - t
    # timed after the sampling thread has stopped (the warm-up calls cover the same peak)
    row = {"fp": _median_time(fp, x, repeats, cuda), "bp": _median_time(bp, y, repeats, cuda), "setup": setup}
    row.update(fp_bp=row["fp"] + row["bp"], peak_rss_mib=round(mem.mib, 1))
    if cuda:
        row["cuda_max_allocated_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        out = tuple(o.detach().cpu().numpy() for o in out)
    if impl == "recon":
        row["backend"] = "cuda (ASTRA 3D per batch)" if cuda else handle.cpu_backend_for()
    elif impl == "astra":
        import astra

        astra.projector.delete(handle)
    return row, out


def _case(n, views, batch, settings) -> dict:
    angles = np.linspace(0, np.pi, views, endpoint=False)
    x = phantom(n, batch)
    y = ParallelBeam2D((n, n), angles, n).set_cpu_backend("astra")(torch.from_numpy(x)[:, None])[:, 0].numpy()
    c = (np.arange(n) - (n - 1) / 2) / (n / 2)
    mask = np.hypot(*np.meshgrid(c, c)) < 1 - 2 / n
    cuda = settings.get("device") == "cuda"
    if cuda:
        x, y = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    seconds, checks, ref = {}, {}, None
    with torch.no_grad():
        for impl in settings["impls"]:
            seconds[impl], out = _measure(impl, n, angles, x, y, settings["repeats"])
            if impl == "recon":
                ref = out
            else:
                tol = CUDA_TOL if cuda else ODL_TOL if impl == "odl" else EXACT_TOL
                checks[impl] = _check(impl, out, ref, mask, tol)
    return {"size": n, "views": views, "batch": batch, "seconds": seconds, "checks": checks}


def run_speed(args) -> int:
    settings = _settings(args)
    if settings["device"] == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    cases = []
    for n in settings["sizes"]:
        for views in settings["views"]:
            for batch in settings["batches"]:
                cases.append(_case(n, views, batch, settings))
                print(format_row(cases[-1], settings["impls"]), flush=True)
    passed = all(c["passed"] for case in cases for c in case["checks"].values())
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if settings["device"] == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    report = {"settings": settings, "machine": machine,
              "cases": cases, "all_checks_passed": passed}
    print(format_table(cases, settings["impls"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.json) as tmp, open(tmp, "w") as f:
            json.dump(report, f, indent=1)
    if not passed:
        print("correctness checks FAILED: " + json.dumps([c["checks"] for c in cases]))
    return 0 if passed else 1


def format_row(case: dict, impls) -> str:
    s = case["seconds"]
    return (f"N={case['size']} views={case['views']} batch={case['batch']}: "
            + ", ".join(f"{i} {s[i]['fp_bp'] * 1e3:.1f} ms" for i in impls))


def format_table(cases: list[dict], impls) -> str:
    """Markdown: FP+BP milliseconds per implementation, and each one's time over recon's."""
    others = [i for i in impls if i != "recon"]
    head = "| N | views | batch | recon backend | " + " | ".join(f"{i} FP+BP ms" for i in impls)
    head += "".join(f" | {i}/recon" for i in others) + " | checks |"
    lines = [head, "|" + "---|" * (5 + len(impls) + len(others))]
    for c in cases:
        s = c["seconds"]
        ok = "pass" if all(v["passed"] for v in c["checks"].values()) else "FAIL"
        lines.append(f"| {c['size']} | {c['views']} | {c['batch']} | {s['recon'].get('backend', '')} | "
                     + " | ".join(f"{s[i]['fp_bp'] * 1e3:.1f}" for i in impls)
                     + "".join(f" | {s[i]['fp_bp'] / s['recon']['fp_bp']:.2f}x" for i in others) + f" | {ok} |")
    return "\n".join(lines)
