"""Study: the edge-density variant of the TV weight rule on measured data (issue 20, item 2).

On the 8 HTC2022 scans at 60 of 721 views, 256^2, as ``recon bench quality`` runs them (PSNR against
the FBP of all 721 views): TV at the default rule, at the edge-density variant of
``docs/lam_rule_range_study.py`` and at multiples 1/2 ... 2 of the default, with the pilot's edge density.

    PYTHONPATH=. .venv/bin/python docs/lam_rule_edge_term_htc.py ../shared/data/real/htc2022 > docs/lam_rule_edge_term_htc.jsonl
"""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
from lam_rule_range_study import edge_term_weight, tv_solve  # noqa: E402

from apps.bench import _htc_loader  # noqa: E402
from operators.ct import ct_operator  # noqa: E402
from recon.fbp import fbp  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon.parameter_choice.lambda_rule import default_tv_lambda  # noqa: E402

torch.set_num_threads(1)
for path in sorted(Path(sys.argv[1]).rglob("*_full.mat")):
    data = _htc_loader(path, SimpleNamespace(htc_size=256, views=60))()
    A = ct_operator(data.geometry, data.angles, data.sinogram.shape[1])
    y, ref = torch.as_tensor(data.sinogram)[None, None], torch.as_tensor(data.reference)[None, None]

    def score(x):
        return round(float(psnr(x, ref, data_range=float(ref.max()))), 3)

    rule = default_tv_lambda(A, y)
    lam, pilot, f = edge_term_weight(A, y)
    row = {"case": path.name, "edge_density": round(f, 2), "variant_x_rule": round(lam / rule, 3),
           "variant_psnr": score(tv_solve(A, y, lam, pilot))}
    row.update({f"rule_x{m}_psnr": score(tv_solve(A, y, m * rule, fbp(A, y))) for m in (0.5, 0.707, 1.0, 1.414, 2.0)})
    print(json.dumps(row), flush=True)
