"""One-off study: PSNR of TV (300 Chambolle-Pock iterations from FBP) at multiples of the default lam.

Run from the repository root (~30 min on 2 cores):
    PYTHONPATH=. .venv/bin/python docs/lam_rule_study.py
Each line: size, views, phantom, pixel size, geometry, the rule's lam, [(multiple, PSNR)].
"""
import torch, numpy as np, sys
from operators import ParallelBeam2D, FanBeam2D
from priors import L2Fidelity, TV, NonNegativity
from recon import Problem, ChambollePock
from recon.reconstruct import default_tv_lambda
from recon.metrics import psnr
from recon.fbp import fbp
from data.phantoms import shepp_logan, random_ellipses
torch.set_num_threads(1)
cfgs=[(256,60,'sl',1.0,'par'),(128,30,'el',1.0,'par'),(256,120,'el',0.5,'par'),(128,60,'sl',0.3,'fan')]
for N,V,ph,p,geo in cfgs:
    x=shepp_logan(N) if ph=='sl' else random_ellipses(N,seed=2)
    if geo=='par': A=ParallelBeam2D((N,N), np.linspace(0,np.pi,V,endpoint=False), int(np.ceil(N*1.45)), pixel_size=p, detector_spacing=p)
    else: A=FanBeam2D((N,N), np.linspace(0,2*np.pi,V,endpoint=False), int(N*2), 4*N*p, 2*N*p, pixel_size=p, detector_spacing=1.4*p)
    y0=A(x); g=torch.Generator().manual_seed(0); s=0.01*float(y0.pow(2).mean().sqrt())
    y=y0+s*torch.randn(y0.shape,generator=g)
    lam0=default_tv_lambda(A,y)
    out=[]
    for m in [0.5,0.7,1,1.4,2]:
        prob=Problem(L2Fidelity(A,y), m*lam0*TV(), constraint=NonNegativity())
        r=ChambollePock(max_iter=300, tol=1e-5).run(prob, fbp(A,y))
        out.append((m, round(psnr(r.x,x).item(),2)))
    print(N,V,ph,p,geo,'lam',round(lam0,4),out,flush=True)
