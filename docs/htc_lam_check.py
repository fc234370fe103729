"""Study: does TV's default weight hold on HTC2022's arcs? (issue 21, item 1)

TV (300 iterations from FBP, x >= 0; with and without ``support="disc"``) at 1/4, 1/2, 1, 2 and 4
times the default weight on each test phantom's arc, 256^2, scored as ``recon bench htc`` scores
(MCC of the Otsu segmentation against the organisers'), and PSNR against their full-data FBP.

    PYTHONPATH=. .venv/bin/python docs/htc_lam_check.py ../shared/data/real/htc2022 > docs/htc_lam_check.json
"""
import json
import sys
from pathlib import Path

import torch

from apps.bench_htc import _mat, cases, reference_image, score
from data.htc2022 import read_htc2022
from operators.ct import ct_operator
from recon.metrics import psnr
from recon.reconstruct import reconstruct

torch.set_num_threads(1)
SIZE, MULTIPLES = 256, (0.25, 0.5, 1.0, 2.0, 4.0)
out = {}
for name, limited, _full, ref_fbp, ref_seg in cases(Path(sys.argv[1])):
    seg = _mat(ref_seg)
    data = read_htc2022(limited, image_size=SIZE)
    ref = torch.as_tensor(reference_image(ref_fbp, data.geometry))[None, None]
    A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
    y = torch.as_tensor(data.sinogram)[None, None]
    for support in (None, "disc"):
        lam0 = reconstruct(A, y, "tv", iterations=1, support=support).parameters["lam"]
        rows = []
        for m in MULTIPLES:
            x = reconstruct(A, y, "tv", lam=m * lam0, support=support).x
            rows.append({"multiple": m, "lam": m * lam0, "mcc": round(score(x, seg), 4),
                         "psnr": round(float(psnr(x, ref.to(x), data_range=float(ref.max()))), 2)})
            print(name, support, rows[-1], file=sys.stderr, flush=True)
        out[f"{name} {support or 'none'}"] = rows
print(json.dumps(out, indent=1))
