"""One-off study: our Chambolle-Pock vs ODL pdhg on the literal `make demo` problem (256^2).

Takes ~30 min on 2 cores. Run from the repository root:
    PYTHONPATH=. .venv/bin/python docs/odl_pdhg_256.py
The 128^2 version of this comparison is the slow test tests/test_chambolle_pock_odl.py.
"""
import time, torch, numpy as np
import tests.test_chambolle_pock_odl as T
from apps.ct import simulate
from operators.ct import ct_operator
from priors import L2Fidelity, TV, NonNegativity
from recon import Problem, ChambollePock
from recon.fbp import fbp
from recon.reconstruct import default_tv_lambda
from recon.metrics import psnr
torch.set_num_threads(1)
d = simulate("shepp-logan", 256, 60, "parallel", 0.01, 0)
A = ct_operator(d.geometry, d.angles, d.sinogram.shape[1])
y = torch.as_tensor(d.sinogram)[None, None]; x_true = torch.as_tensor(d.reference)[None, None]
lam = default_tv_lambda(A, y)
T.LAM = lam
T.detector_count = lambda n: d.sinogram.shape[1]
problem = Problem(L2Fidelity(A, y), lam * TV(), constraint=NonNegativity())
print("demo problem: lam", lam, "detectors", d.sinogram.shape[1], flush=True)
t = time.time()
x_odl, info = T.run_odl_pdhg(problem, 256, 4000, checkpoints=(500, 1000, 2000, 3000, 4000))
print("odl", {k: round(v, 4) for k, v in info["trace"].items()}, "psnr", round(float(psnr(x_odl, x_true)), 2), f"{time.time()-t:.0f}s", flush=True)
trace = {}
t = time.time()
r = ChambollePock(max_iter=12000, tol=0).run(problem, fbp(A, y), callbacks=[
    lambda n, s: trace.__setitem__(n, round(float(problem.objective(s.x.double())), 4)) if n % 1000 == 0 or n in (300, 500) else None])
print("ours", trace, "psnr", round(float(psnr(r.x, x_true)), 2), f"{time.time()-t:.0f}s", flush=True)
f_odl, f_ours = float(problem.objective(x_odl.double())), float(problem.objective(r.x.double()))
print("final objective ours", f_ours, "odl", f_odl, "rel diff", abs(f_ours - f_odl) / f_odl, flush=True)
