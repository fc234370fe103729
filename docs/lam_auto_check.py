"""Study: lam="auto" (the discrepancy principle, tau = 0.93, true noise level) on cases of
docs/lam_rule_range_study.py where tau = 0.93 lies outside the residual ratios the weight search saw,
plus four where it lies inside (issue 20, item 2: recheck tau with the balanced steps).

    PYTHONPATH=. .venv/bin/python docs/lam_auto_check.py > docs/lam_auto_check.jsonl
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import lam_rule_range_study as study  # noqa: E402

from recon.metrics import psnr  # noqa: E402
from recon.reconstruct import reconstruct  # noqa: E402

CASES = [("ellipses", 128, 180, "parallel", 0.05, 0), ("ellipses", 64, 180, "fan", 0.02, 0),
         ("shepp-logan", 64, 180, "parallel", 0.05, 0), ("ellipses", 64, 60, "parallel", 0.05, 0),
         ("shepp-logan", 128, 180, "parallel", 0.02, 0), ("ellipses", 128, 180, "fan", 0.005, 0),
         ("shepp-logan", 128, 30, "fan", 0.02, 0), ("shepp-logan", 64, 30, "parallel", 0.005, 0)]

for case in CASES:
    data, A, y, x = study.problem(case)
    r = reconstruct(A, y, "tv", lam="auto", noise_std=data.noise_std)
    print(json.dumps(dict(zip(study.KEYS, case), auto_lam=r.parameters["lam"], auto_psnr=float(psnr(r.x, x)))),
          flush=True)
