r"""``reconstruct(A, y, "red-diff" | "diffpir" | "dpir" | "dps" | "score-pc", model=...)`` and
``reconstruct_mri`` the same: the diffusion solvers on a CT or MRI problem (``"dps"``: ``recon.diffusion.dps``,
whose ``lam`` is its guidance step ``zeta``; ``"score-pc"``: ``recon.diffusion.score_pc``, whose ``lam`` is its
projection's weight in ``[0, 1]``). ``"dpir"`` is DiffPIR without re-noising (annealed
plug-and-play HQS, ``recon.diffusion.diffpir``) from the pre-estimate, over the timesteps from
``DPIR_START`` down to 0 (noise levels 0.72 to 0.01: the pre-estimate's errors, not pure noise).
A model card's table for the method (``"dpir": {"lam", "steps", "start", "init"}``, ``"diffpir":
{"lam", "zeta", "steps"}``, ``"red-diff": {"lam", "lr", "steps", "start", "init"}``, ``"dps": {"lam",
"steps"}``, ``"score-pc": {"lam", "snr", "steps", "final_projection"}``, each also ``"ensemble"``:
the settings tuned for that model) replaces these defaults; ``lam`` and ``iterations`` given replace
both. ``ensemble`` (1, 4 or 8) denoises each image as the mean over its flips (and transposes):
``priors.denoiser.geometric_ensemble``, at that many times the network's work. ``init`` (``INITS``:
``"direct"`` or ``"tv"``) picks the pre-estimate: the direct one below, or TV at the rule's weight,
a closer start from which fewer, lower-noise timesteps suffice.

RED-Diff and DPIR start from the pre-estimate (the direct one: FBP for CT; for MRI the adjoint,
with data and image scaled so that its magnitude's 99th percentile is 1); DiffPIR, DPS and score-PC
start from noise and take only its shape and scale from it. All see the data term
``||A x - y||^2 / (2 ||A||^2)``, so that their weights do not depend on the operator's scale (as
for the PnP methods). For DiffPIR and DPIR the
noise ``nu`` of each real component of the data (given, else estimated) enters as ``nu / ||A||``,
which makes its ``lam = 1`` the MAP weight: the deterministic limit minimises
``||A x - y||^2 / (2 nu^2) + phi(x)`` for a prior ``exp(-phi)``. The model is a ``recon train score``
model (task ``"score"``); images are expected in the range it was trained on (its card's
``trained_on``): a pre-estimate whose 99th percentile is far outside it (below 0.1 or above 3, e.g.
CT in 1/mm) is reconstructed divided by that percentile and scaled back, with a warning.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch

from priors.data import L2Fidelity
from priors.diffusion import VPSchedule
from recon.diffusion.diffpir import DiffPIR
from recon.diffusion.dps import DPS
from recon.diffusion.red_diff import REDDiff
from recon.diffusion.score_pc import ScorePC, projection_for
from recon.problem import Problem

__all__ = ["DIFFUSION", "DEFAULT_STEPS", "diffusion_names", "DPIR_START", "INITS", "check_init",
           "diffusion_reconstruction", "dpir_timesteps", "magnitude_p99"]

DIFFUSION = ("red-diff", "diffpir", "dpir", "dps", "score-pc")
#: timesteps of each method when ``iterations`` is None: RED-Diff's reference config, the others' papers
DEFAULT_STEPS = {"red-diff": 50, "diffpir": 100, "dpir": 50, "dps": 1000, "score-pc": 1000}
#: the reference weights: RED-Diff's grad_term_weight; DiffPIR's lambda = 1 is the MAP weight here; DPS's zeta';
#: score-PC's lambda = 1, hard data consistency (the paper's MRI setting; its CT one is 0.84)
DEFAULT_LAM = {"red-diff": 0.25, "diffpir": 1.0, "dpir": 1.0, "dps": 1.0, "score-pc": 1.0}


def diffusion_names() -> str:
    """The diffusion methods for a message: ``"red-diff, diffpir, dpir, dps and score-pc"``."""
    return f"{', '.join(DIFFUSION[:-1])} and {DIFFUSION[-1]}"
#: the pre-estimates a card's ``init`` may name
INITS = ("direct", "tv")


def check_init(name: str, value) -> str:
    """``value`` if it is one of ``INITS``, else a ``ValueError`` naming ``name`` (a card key)."""
    if value not in INITS:
        raise ValueError(f"{name}: expected one of {', '.join(INITS)}, got {value!r}")
    return value
#: DPIR's first timestep (noise level sigma_200 = 0.72 of the default schedule)
DPIR_START = 200


def magnitude_p99(x: torch.Tensor) -> float:
    """The 99th percentile of ``|x|`` (of its first million values): a robust image maximum."""
    return float(torch.quantile(x.detach().abs().flatten()[:1_000_000].float().cpu(), 0.99))


def dpir_timesteps(count: int, start: int = DPIR_START) -> list[int]:
    """``count`` timesteps evenly spaced from ``start`` down to 0 (fewer when ``count > start + 1``).

    Example:
        >>> dpir_timesteps(5, 200)
        [200, 150, 100, 50, 0]
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"iterations: expected a positive integer, got {count!r}")
    return VPSchedule().descending(count, start)


def _range_scale(x: torch.Tensor, card: dict) -> float:
    """1, or the pre-estimate's 99th percentile when that is far from the trained range (with a warning)."""
    high = magnitude_p99(x)
    if 0.1 <= high <= 3.0 or high == 0:
        return 1.0
    warnings.warn(f"the pre-estimate's 99th percentile is {high:.3g}, far from the range the model was trained on "
                  f"({card.get('trained_on', 'images in [0, 1]')}); reconstructing the data divided by {high:.3g} and "
                  "scaling the result back", UserWarning, stacklevel=4)
    return high


def diffusion_reconstruction(method: str, A, y: torch.Tensor, pre_estimate: Callable[[str], torch.Tensor], model,
                             lam, iterations, noise: Callable[[], float], progress: bool, start: float):
    """Run ``method`` (one of ``DIFFUSION``) with the loaded ``model`` from ``pre_estimate(init)`` (``init``
    one of ``INITS``, from the card, default ``"direct"``); ``noise()`` gives the noise std of each real
    component of ``y`` (called by DiffPIR and DPIR only). Returns ``(x, n_iter, params, history)``."""
    if isinstance(lam, str):
        raise ValueError(f"lam: {lam!r} (a weight rule of the variational methods) is not available for {method}; "
                         "give a number or None")
    tuned = model.card.get(method, {})  # checked by load_model (recon.models.CARD_SETTINGS)
    lam = float(tuned.get("lam", DEFAULT_LAM[method])) if lam is None else float(lam)
    steps = int(iterations or tuned.get("steps", DEFAULT_STEPS[method]))
    init = tuned.get("init", "direct")
    x_start = pre_estimate(init)
    scale = _range_scale(x_start, model.card)  # e.g. CT in 1/mm with a model of images in [0, 1]
    y, x_start = y / scale, x_start / scale
    norm_sq = float(A.norm()) ** 2
    problem = Problem((1.0 / norm_sq) * L2Fidelity(A, y))
    prior = model.network.with_ensemble(int(tuned["ensemble"])) if "ensemble" in tuned else model.network
    params = {"max_iterations": steps, "lam": lam, "data_scale": 1.0 / norm_sq, "ensemble": prior.ensemble,
              "init": init, "weights": str(model.path) if model.path is not None else "in memory",
              "settings": "the model card's" if tuned else "defaults", "scale": scale}
    if method == "red-diff":
        extra = {"lr": tuned["lr"]} if "lr" in tuned else {}
        if "start" in tuned:  # evenly spaced from the card's start down to 0, as dpir (and as tuned)
            extra["timesteps"] = dpir_timesteps(steps, int(tuned["start"]))
        solver = REDDiff(prior, steps=steps, lam=lam, progress=progress, **extra)
        params["lr"] = solver.lr
    elif method == "dps":  # its residual is ||A x - y|| / ||A||: zeta does not depend on A's scale
        solver = DPS(prior, steps=steps, zeta=lam, progress=progress)
    elif method == "score-pc":  # its projection is free of A's and y's scale
        extra = {k: tuned[k] for k in ("snr", "final_projection") if k in tuned}
        solver = ScorePC(prior, steps=steps, lam=lam, progress=progress, **extra)
        params.update(snr=solver.snr, projection=projection_for(A), final_projection=solver.final_projection)
    else:
        nu = float(noise())  # in the data's units; the solver sees the scaled data
        if method == "diffpir":
            extra = {"steps": steps, **({"zeta": tuned["zeta"]} if "zeta" in tuned else {})}
        else:
            extra = {"renoise": False, "timesteps": dpir_timesteps(steps, int(tuned.get("start", DPIR_START)))}
        solver = DiffPIR(prior, noise_std=nu / scale / norm_sq ** 0.5, lam=lam, progress=progress, **extra)
        params.update(noise_std=nu, **({"zeta": solver.zeta} if method == "diffpir" else
                                       {"sigma_start": float(solver.schedule.sigma(solver.timesteps[0]))}))
    result = solver.run(problem, x_start)
    params["seconds_per_step"] = (time.perf_counter() - start) / max(result.n_iter, 1)
    return result.x * scale, result.n_iter, params, result.history
