"""Anisotropic TV on real multi-coil k-space: recon against SigPy's ``TotalVariationRecon``.

Both minimise ``1/2 ||P F S x - y||^2 + lam sum |(D x)_i|`` over complex images, with the same
ESPIRiT maps (recon's), the same mask and the same ``lam`` (recon's default rule); ``|.|`` is the
modulus of each difference in each direction. They differ at the border only: recon's ``D`` is
forward differences with a zero last row (Neumann), SigPy's ``FiniteDifference`` wraps around
(``x - roll(x, 1)``). So each objective is evaluated here, in float64 numpy, at both solutions:
each solver should win on its own objective, and the minima differ by at most the wrap-around
terms. Data: the 2-coil GRE phantom at 4x (random phase-encode lines, seed 0, as the tests) and
the 8-coil brain as acquired (8x Poisson disc), from ../shared/data/real.

    python docs/mri_aniso_tv_sigpy_study.py [--iterations 3000] [--json docs/mri_aniso_tv_sigpy_study.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.mri import remove_readout_oversampling  # noqa: E402
from operators import MultiCoilMRI, espirit_maps, make_mask  # noqa: E402
from recon.mri import default_mri_tv_lambda, reconstruct_mri  # noqa: E402
from tests.mri_helpers import tv_objective  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def twix() -> torch.Tensor:
    k = np.load(REAL / "mri_twix_phantom" / "gre_kspace_lin_cha_col.npy")
    k = torch.as_tensor(remove_readout_oversampling(np.transpose(k, (1, 0, 2)), axis=-1))[None]
    return k * make_mask("random", k.shape[-2:], 4, 0.08, seed=0, axis=-2)


def brain() -> torch.Tensor:
    return torch.from_numpy(np.load(REAL / "mri_brain8ch_sigpy" / "cartesian_ksp.npy"))[None]


def compare(name: str, y: torch.Tensor, iterations: int) -> dict:
    import sigpy.mri

    mask = y.abs().sum(1)[0] > 0
    maps = espirit_maps(y)
    A = MultiCoilMRI(mask, maps)
    lam = float(default_mri_tv_lambda(A, y))
    started = time.perf_counter()
    r = reconstruct_mri(A, y, "tv", lam=lam, iterations=iterations, isotropic=False)
    ours_s = time.perf_counter() - started
    ours = r.x[0, 0].numpy()
    started = time.perf_counter()
    theirs = sigpy.mri.app.TotalVariationRecon(y[0].numpy(), maps[0].numpy(), lam, weights=mask.numpy().astype(np.float32),
                                               max_iter=iterations, show_pbar=False).run()
    theirs_s = time.perf_counter() - started
    args = (y[0].numpy(), maps[0].numpy(), mask.numpy(), lam)
    f = {f"{obj}@{who}": tv_objective(x, *args, wrap=obj == "wrap")
         for obj in ("neumann", "wrap") for who, x in (("recon", ours), ("sigpy", theirs))}
    return {"case": name, "shape": list(ours.shape), "lam": lam, "iterations_recon": r.iterations,
            "seconds_recon": round(ours_s, 1), "seconds_sigpy": round(theirs_s, 1), "objectives": f,
            "relative_gap_neumann": (f["neumann@sigpy"] - f["neumann@recon"]) / f["neumann@recon"],
            "relative_gap_wrap": (f["wrap@recon"] - f["wrap@sigpy"]) / f["wrap@sigpy"],
            "relative_image_difference": float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [compare("twix-2coil-4x", twix(), args.iterations), compare("brain-8coil-8x", brain(), args.iterations)]
    for row in rows:
        print(json.dumps(row))
    if args.json is not None:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "torch_threads": 1, "rows": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
