"""``recon bench tv``: TV reconstruction time-to-quality, recon's Chambolle-Pock against ODL's pdhg.

The problem is ``make demo``'s: Shepp-Logan ``N x N`` (default 256) with 1 mm pixels, ``V`` (60)
parallel views over 180 deg, ``ceil(N sqrt 2) + 1`` detector cells of 1 mm, Gaussian noise of 1% of
the sinogram's RMS (seed 0), and

    F(x) = 1/2 ||A x - y||^2 + lam TV(x) + indicator(x >= 0),   lam = recon's default TV weight,

one objective scored by one implementation (``recon.Problem.objective``; ODL's images are mapped
to our orientation first) for every solver. ODL 1.0's ``odl.solvers.pdhg`` runs from zero on the
same geometry (``RayTransform``, ``impl='astra_cpu'``, or ``'astra_cuda'`` with ``--device cuda``)
and the same TV (the gradient of ``tests/test_chambolle_pock_odl.py``, equal to ours), set up two ways:

* ``odl-guide``: the recipe of ODL's own TV tomography example: ``L = BroadcastOperator(R, grad)``,
  ``tau = sigma = 1 / (1.1 ||L||)`` (``power_method_opnorm``);
* ``odl-tuned``: the blocks balanced (``R / c``, ``c = ||R|| / ||grad||``) and a primal/dual ratio
  tuned by hand on this problem (``s = 0.003``: ``tau = s / ||L||``, ``sigma = 0.98 / (s ||L||)``;
  the table in ``tests/test_chambolle_pock_odl.py``), which converges many times faster.

Each ODL set-up runs ``--odl-iterations`` (300) iterations; its final objective is the target.
recon's ``ChambollePock()`` (default steps) runs from zero until its objective is at or below the
target (found on a traced run that scores every iterate; the timed runs then make exactly that many
iterations and score nothing), or at most ``--max-iterations``.

Times are wall seconds of the solve including step-size set-up (ODL's power iterations; recon's
operator-norm cache is cleared before every timed run, so its norm estimates count too) and exclude
building the operators (ODL's ``RayTransform``; recon's cached sparse matrix on CPU), which is
reported as ``setup``. Each time is the median of ``--repeats`` runs after the traced run (the
warm-up). Memory: peak RSS above the level before the solver's first run (CPU) or
``torch.cuda.max_memory_allocated`` (recon on CUDA; ASTRA's own allocations are not counted).

    recon bench tv --json bench_tv.json                    # 256 x 256, about 4 minutes on 2 cores
    recon bench tv --quick                                 # odl-tuned only, one timed run: ~1 minute
    recon bench tv --device cuda --size 512 --impl recon    # recon alone on a GPU: 300 iterations timed

With ``--impl recon`` alone there is no ODL target and recon runs ``--odl-iterations`` iterations.
The exit status is 1 when ODL's own objective value disagrees with ours (a set-up error).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from apps.bench_speed import ODL_HINT, PeakRSS, _median_time, odl_installed
from data.hdf5 import atomic_path
from data.phantoms import shepp_logan
from operators.ct import ParallelBeam2D
from priors import L2Fidelity, NonNegativity, TV
from priors.base import ScaledFunctional
from recon import ChambollePock, Problem
from recon.metrics import psnr
from recon.reconstruct import default_tv_lambda

IMPLS = ("recon", "odl-guide", "odl-tuned")
ODL_TUNED_RATIO = 0.003  # s = tau ||L|| (tests/test_chambolle_pock_odl.py)
ODL_STEP_MARGIN = 0.98  # tau sigma ||L||^2 for the tuned set-up
ODL_GUIDE_NORM_FACTOR = 1.1  # ODL's example: op_norm = 1.1 * power_method_opnorm(op)
POWER_ITERATIONS = 100
OBJECTIVE_RTOL = 1e-4  # ODL's own f + g(Lx) against Problem.objective


def add_parser(bench) -> None:
    p = bench.add_parser("tv", help="TV reconstruction time-to-quality against ODL's pdhg",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="odl-tuned and recon only, one timed run each")
    p.add_argument("--size", type=int, default=256, help="image size N (default 256)")
    p.add_argument("--views", type=int, default=60, help="views over 180 deg (default 60)")
    p.add_argument("--noise", type=float, default=0.01, help="noise std relative to the sinogram RMS")
    p.add_argument("--odl-iterations", type=int, default=300, help="ODL's iterations (default 300)")
    p.add_argument("--max-iterations", type=int, default=3000, help="recon's cap (default 3000)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per solver (median; default 3, --quick 1)")
    p.add_argument("--impl", action="append", choices=IMPLS, help="repeatable (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    p.set_defaults(run=run_tv)


def detector_count(n: int) -> int:
    return math.ceil(n * math.sqrt(2)) + 1


def make_problem(n: int, views: int, noise: float, lam: float | None = None, seed: int = 0,
                 device: str = "cpu") -> tuple[Problem, torch.Tensor]:
    """The demo problem at ``n x n`` (float32, 1 mm pixels and cells) and its phantom; ``lam`` None:
    recon's default TV weight."""
    angles = np.linspace(0, np.pi, views, endpoint=False)
    A = ParallelBeam2D((n, n), angles, detector_count(n))
    x_true = shepp_logan(n)
    clean = A(x_true)
    gen = torch.Generator().manual_seed(seed)
    y = clean + noise * clean.pow(2).mean().sqrt() * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
    if lam is None:
        lam = default_tv_lambda(A, y)
    x_true, y = x_true.to(device), y.to(device)
    return Problem(L2Fidelity(A, y), lam * TV(), constraint=NonNegativity()), x_true


# -- ODL ------------------------------------------------------------------------------------------
def to_odl(img: np.ndarray) -> np.ndarray:
    """Our (H, W) image (row 0 = top) -> ODL's (W, H) array (axis 0 = x, axis 1 = y, both increasing)."""
    return np.ascontiguousarray(np.rot90(img, -1), dtype=np.float32)


def from_odl(f: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(f, 1))


def _odl_modules():
    import odl
    from odl.applications import tomo

    return odl, tomo, getattr(odl, "functionals", None) or odl.solvers  # ODL 1.0 moved the functionals


def odl_gradient(space):
    """Our ``FiniteDifference`` in ODL's layout: x (axis 0) forward, y (axis 1) backward, zero edge.

    ODL's ``Gradient`` applies one method to both axes and cannot reproduce it (checked in
    ``tests/test_chambolle_pock_odl.py``).
    """
    odl, _, _ = _odl_modules()
    return odl.BroadcastOperator(odl.PartialDerivative(space, 0, method="forward", pad_mode="order0"),
                                 odl.PartialDerivative(space, 1, method="backward", pad_mode="order0"))


def odl_ray_transform(space, A: ParallelBeam2D, impl: str = "astra_cpu"):
    """ODL's ``RayTransform`` on ``A``'s geometry (parallel beam, 1 mm pixels and detector cells)."""
    odl, tomo, _ = _odl_modules()
    if A.pixel_size != 1.0 or A.detector_spacing != 1.0:
        raise ValueError("A: the ODL comparison maps 1 mm pixels and detector cells only")
    det = A.detector_count
    geometry = tomo.Parallel2dGeometry(odl.nonuniform_partition(A._np_angles), odl.uniform_partition(-det / 2, det / 2, det))
    return tomo.RayTransform(space, geometry, impl=impl)


def odl_setup(problem: Problem, impl: str = "astra_cpu") -> dict:
    """ODL's space, ray transform, gradient and data for ``problem`` (operator construction only)."""
    odl, _, _ = _odl_modules()
    A = problem.data.A
    H, W = A.image_shape
    space = odl.uniform_discr([-W / 2, -H / 2], [W / 2, H / 2], (W, H), dtype="float32")
    R = odl_ray_transform(space, A, impl)
    y = R.range.element(problem.data.y[0, 0].detach().cpu().numpy())
    return {"space": space, "R": R, "grad": odl_gradient(space), "y": y}


def run_odl_pdhg(problem: Problem, setup: dict, niter: int, steps: str = "tuned", callback=None,
                 power_iterations: int = POWER_ITERATIONS) -> tuple[torch.Tensor, dict]:
    """ODL's pdhg on ``problem`` (``1/2||Ax-y||^2 + lam TV + x >= 0``) from zero; ``steps`` ``"tuned"``
    or ``"guide"`` (module docstring). ``callback(k, image)`` gets our-orientation images."""
    odl, _, functionals = _odl_modules()
    space, R, grad, y = setup["space"], setup["R"], setup["grad"], setup["y"]
    lam = problem.prior.lam if isinstance(problem.prior, ScaledFunctional) else 1.0
    w_dom, w_ran = float(space.weighting.const), float(R.range.weighting.const)
    start = space.element(np.random.default_rng(0).standard_normal(space.shape))
    if steps == "tuned":
        c = odl.power_method_opnorm(R, xstart=start, maxiter=power_iterations) / odl.power_method_opnorm(
            grad, xstart=start, maxiter=power_iterations)
    elif steps == "guide":
        c = 1.0
    else:
        raise ValueError(f"steps: expected 'tuned' or 'guide', got {steps!r}")
    L = odl.BroadcastOperator((1.0 / c) * R, grad)
    norm_L = odl.power_method_opnorm(L, xstart=start, maxiter=power_iterations)
    if steps == "tuned":
        tau, sigma = ODL_TUNED_RATIO / norm_L, ODL_STEP_MARGIN / (ODL_TUNED_RATIO * norm_L)
    else:
        tau = sigma = 1.0 / (ODL_GUIDE_NORM_FACTOR * norm_L)
    # (c^2 / 2) ||R x / c - y / c||^2 = 1/2 ||R x - y||^2; ODL's norms carry the space weights
    data = (c * c / (2.0 * w_ran)) * functionals.L2NormSquared(R.range).translated(y / c)
    g = functionals.SeparableSum(data, (lam / w_dom) * functionals.GroupL1Norm(grad.range, exponent=2))
    f = functionals.IndicatorNonnegativity(space)
    count = [0]

    def step(x):
        count[0] += 1
        if callback is not None:
            callback(count[0], odl_image(x, problem))

    x = space.zero()
    odl.solvers.pdhg(x, f, g, L, niter, tau=tau, sigma=sigma, callback=step)
    info = {"c": c, "norm_L": norm_L, "tau": tau, "sigma": sigma, "odl_objective": float(f(x) + g(L(x)))}
    return odl_image(x, problem), info


def odl_image(f, problem: Problem) -> torch.Tensor:
    img = torch.as_tensor(from_odl(np.asarray(f.asarray())), dtype=torch.float32)[None, None]
    return img.to(problem.data.y.device)


# -- the comparison -------------------------------------------------------------------------------
def _objective(problem: Problem, x: torch.Tensor) -> float:
    return float(problem.objective(x.double())[0])


def _timed(run, repeats: int, device: str) -> float:
    """Median seconds of ``run()`` over ``repeats`` calls (bench_speed's timer; synchronised on CUDA)."""
    return _median_time(lambda _: run(), None, repeats, device == "cuda")


def _recon_run(problem: Problem, x0: torch.Tensor, iterations: int, callbacks=()):
    problem.data.A._norm = None  # the norm estimate is part of every timed solve
    return ChambollePock(max_iter=iterations, tol=0).run(problem, x0, callbacks=list(callbacks))


def bench_recon(problem, x_true, target: float | None, args, setup: float) -> dict:
    """Iterations recon needs to reach ``target`` (or ``--odl-iterations`` without one), timed;
    ``setup``: the seconds its operator took to build (the CPU sparse matrix, on its first call)."""
    device = args.device
    x0 = torch.zeros_like(x_true)
    trace = {}

    def record(k, state):
        trace[k] = _objective(problem, state.x)
        return target is not None and trace[k] <= target

    cap = args.max_iterations if target is not None else args.odl_iterations
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        result = _recon_run(problem, x0, cap, [record])
    k = result.n_iter
    reached = target is None or trace[k] <= target
    row = {"iterations": k, "reached_target": reached, "setup": setup,
           "seconds": _timed(lambda: _recon_run(problem, x0, k), args.repeats, device),
           "objective": trace[k], "psnr": float(psnr(result.x, x_true)[0]),
           "peak_rss_mib": round(mem.mib, 1)}
    if device == "cuda":
        row["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def bench_odl(problem, x_true, steps: str, args) -> dict:
    impl = "astra_cuda" if args.device == "cuda" else "astra_cpu"
    t = time.perf_counter()
    setup = odl_setup(problem, impl)
    setup_s = time.perf_counter() - t
    with PeakRSS() as mem:  # the warm-up run
        x, info = run_odl_pdhg(problem, setup, args.odl_iterations, steps)
    seconds = _timed(lambda: run_odl_pdhg(problem, setup, args.odl_iterations, steps), args.repeats, args.device)
    f = _objective(problem, x)
    return {"iterations": args.odl_iterations, "setup": setup_s, "seconds": seconds, "objective": f,
            "odl_own_objective": info["odl_objective"], "psnr": float(psnr(x, x_true)[0]),
            "peak_rss_mib": round(mem.mib, 1), "steps": {k: info[k] for k in ("c", "norm_L", "tau", "sigma")},
            "objective_agrees": abs(info["odl_objective"] / f - 1) < OBJECTIVE_RTOL}


def run_tv(args) -> int:
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    for name in ("size", "views", "odl_iterations", "max_iterations", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    impls = list(dict.fromkeys(args.impl or (("recon", "odl-tuned") if args.quick else IMPLS)))
    missing = [i for i in impls if i.startswith("odl")] if not odl_installed() else []
    if missing:
        raise ValueError(f"--impl {missing[0]}: ODL is not installed; {ODL_HINT}, or run --impl recon alone")
    t = time.perf_counter()
    problem, x_true = make_problem(args.size, args.views, args.noise, device=args.device)  # A's first call builds it
    setup = time.perf_counter() - t
    print(f"TV, {args.size}^2, {args.views} views, {args.noise:.0%} noise, lam {problem.prior.lam:.4g}, "
          f"device {args.device}; objective of the phantom {_objective(problem, x_true):.4f}", flush=True)
    rows, ok = {}, True
    with torch.no_grad():
        for impl in (i for i in impls if i != "recon"):
            rows[impl] = bench_odl(problem, x_true, impl.removeprefix("odl-"), args)
            ok &= rows[impl]["objective_agrees"]
            print(format_row(impl, rows[impl]), flush=True)
        if "recon" in impls:
            targets = {i: r["objective"] for i, r in rows.items()} or {"none": None}
            rows["recon"] = {}
            for against, target in targets.items():
                rows["recon"][against] = bench_recon(problem, x_true, target, args, setup)
                print(format_row(f"recon (to {against})", rows["recon"][against]), flush=True)
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "run"},
              "lam": problem.prior.lam, "phantom_objective": _objective(problem, x_true), "results": rows}
    print(format_table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.json) as tmp, open(tmp, "w") as f:
            json.dump(report, f, indent=1)
    if not ok:
        print("ODL's own objective value disagrees with Problem.objective: the set-up is wrong")
    return 0 if ok else 1


def format_row(name: str, r: dict) -> str:
    return (f"{name}: {r['iterations']} iterations, {r['seconds']:.2f} s, F = {r['objective']:.4f}, "
            f"PSNR {r['psnr']:.2f} dB, peak RSS +{r['peak_rss_mib']} MiB")


def format_table(rows: dict) -> str:
    """Markdown: each ODL set-up against recon run to ODL's objective."""
    lines = ["| target | ODL it | ODL s | ODL F | ODL PSNR | recon it | recon s | recon F | recon PSNR | ODL s / recon s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for against, r in rows.get("recon", {}).items():
        o = rows.get(against)
        if o is None:
            lines.append(f"| none | | | | | {r['iterations']} | {r['seconds']:.2f} | {r['objective']:.2f} | "
                         f"{r['psnr']:.2f} | |")
            continue
        ratio = f"{o['seconds'] / r['seconds']:.1f}x" if r["reached_target"] else "not reached"
        lines.append(f"| {against} | {o['iterations']} | {o['seconds']:.2f} | {o['objective']:.2f} | {o['psnr']:.2f} | "
                     f"{r['iterations']} | {r['seconds']:.2f} | {r['objective']:.2f} | {r['psnr']:.2f} | {ratio} |")
    return "\n".join(lines)
