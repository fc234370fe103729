"""One-off study: TV reconstructions of the same object at pixel sizes 0.01-10 mm, 300 iterations.

With the canonical-form steps every pixel size gives the same PSNR; pass "norm" or "diagonal".
    PYTHONPATH=. .venv/bin/python docs/unit_invariance_study.py diagonal
"""
import numpy as np, torch, sys
from operators import ParallelBeam2D
from priors import L2Fidelity, TV, NonNegativity
from recon import Problem, ChambollePock
from recon.reconstruct import default_tv_lambda
from recon.metrics import psnr
from data.phantoms import shepp_logan
torch.set_num_threads(1)
N=128; x=shepp_logan(N)
for p in [0.01, 0.1, 1.0, 10.0]:
    A=ParallelBeam2D((N,N), np.linspace(0,np.pi,60,endpoint=False), 190, pixel_size=p, detector_spacing=p)
    for xv,label in [(x,'same mu'),]:
        y0=A(xv); y=y0+0.01*y0.pow(2).mean().sqrt()*torch.randn(y0.shape,generator=torch.Generator().manual_seed(0))
        lam=default_tv_lambda(A,y)
        for pre in sys.argv[1].split(','):
            r=ChambollePock(max_iter=300,tol=0,preconditioning=pre).run(Problem(L2Fidelity(A,y),lam*TV(),constraint=NonNegativity()), torch.zeros_like(xv))
            print(p,label,pre,round(lam,6),round(psnr(r.x,xv).item(),2),flush=True)
