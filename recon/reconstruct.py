"""One call from a sinogram to a reconstruction, shared by scripts and ``recon ct``.

``reconstruct(A, y, "tv")`` picks the solver, a starting point, a default
regularisation weight and the iteration count; everything can be overridden. TV's default weight on
2D CT is chosen by cross-validation over the views (``lam="cv"``,
``recon.parameter_choice.cross_validation``); the rule it scales (``lam="rule"``,
``recon.parameter_choice.lambda_rule``) is the default elsewhere.

The adaptive priors take a fast first reconstruction ``x_hat = Psi(y)`` (FBP, Krylov
Tikhonov, TV, or any callable such as a trained network) and build the prior from it once:
``"svtv"`` weights TV per pixel (``priors.SpaceVariantTV``), ``"graphla-fbp"`` /
``"graphla-tik"`` / ``"graphla-tv"`` penalise ``||L x||_1`` with the graph Laplacian of
``x_hat`` (``priors.graph_laplacian``). ``"svtv"`` with a trained weight network
(``model=``, ``recon train svtv-weights``) builds the weights from the network's prediction of
``|grad x|`` instead. ``"lpn"`` is plug-and-play ADMM with a learned proximal network
(``recon train lpn``; the shipped ``recon/weights/lpn_ct256`` by default), ``"pnp"`` the same with
a trained denoiser (``recon train denoiser``; none is shipped). ``"red-diff"``, ``"diffpir"``,
``"dpir"``, ``"dps"`` and ``"score-pc"`` use a diffusion prior (``recon train score``; the shipped
``recon/weights/score_ct128`` by default).
``lam="auto"`` chooses the weight by the discrepancy principle (``recon.parameter_choice.discrepancy``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from collections.abc import Callable

import torch

from operators.base import LinearOperator
from priors import TV, L2Fidelity, NonNegativity, PixelBox, SpaceVariantTV
from priors.base import Functional
from priors.graph_laplacian import GraphLaplacianPrior
from priors.nets.unet import eval_output
from priors.tv import DEFAULT_ETA, DEFAULT_P, DEFAULT_SPREAD, intensity_scale
from recon.chambolle_pock import ChambollePock
from recon.diffusion.diffusion_recon import DEFAULT_STEPS, DIFFUSION, diffusion_reconstruction
from recon.fbp import fbp
from recon.learned.limited_angle import limited_angle
from recon.learned.rising import rising_iterations
from recon.linear import CGLS, SIRT, TIKHONOV_ITERATIONS, tikhonov
from recon.models import check_geometry
from recon.parameter_choice.cross_validation import CV_FOLDS, can_cross_validate, cv_lambda
from recon.parameter_choice.discrepancy import DISCREPANCY_TAU, auto_lambda
from recon.parameter_choice.lambda_rule import (LAMBDA_FACTORS, TV_LAMBDA_FACTOR,  # noqa: F401
                                                _backprojected_noise_rms, default_lambda, default_tv_lambda,
                                                estimate_noise_std)
from recon.params import check_finite_result, check_integer, check_number
from recon.problem import Problem
from recon.result import SAMPLERS, Reconstruction, draw_samples
from recon.support import disc_bounds

__all__ = ["METHODS", "ESTIMATES", "SAMPLERS", "Reconstruction", "reconstruct", "estimate_noise_std",
           "default_tv_lambda", "default_lambda"]

METHODS = ("fbp", "sirt", "cgls", "tikhonov", "tv", "svtv", "graphla-fbp", "graphla-tik", "graphla-tv", "lpn",
           "pnp", *DIFFUSION, "rising", "lpd", "unrolled-ista", "limited-angle")
#: networks trained for one geometry (their card's): weight and iterations come from the model
TRAINED_FOR_GEOMETRY = ("rising", "lpd", "unrolled-ista", "limited-angle")
PNP = ("lpn", "pnp")  # plug-and-play ADMM with a trained model: a learned proximal network, a denoiser
ADAPTIVE = ("svtv", "graphla-fbp", "graphla-tik", "graphla-tv")  # priors built from a pre-estimate Psi(y)
VARIATIONAL = ("tv", *ADAPTIVE)
ESTIMATES = ("fbp", "tikhonov", "tv")
DEFAULT_ITERATIONS = {"sirt": 200, "cgls": 20, "tikhonov": TIKHONOV_ITERATIONS, "tv": 300, "svtv": 300,
                      "graphla-fbp": 300, "graphla-tik": 300, "graphla-tv": 300, "lpn": 10, "pnp": 20,
                      **DEFAULT_STEPS}
#: PnP-ADMM settings of "lpn" and "pnp" when the model card has none (the card's "pnp" entry wins): rho is
#: this factor times the MAP rule nu^2 / (sigma^2 ||A||^2) (see _pnp): on the tuning phantoms (ellipses 100/101,
#: 60 views, 1% noise) best for the shipped LPN (docs/lpn_ct_study.py), within 0.1 dB of best for a U-Net
#: denoiser at sigma 0.03; ADMM with the LPN degrades past 10-30 iterations (docs/lpn_stability_study.py)
PNP_RHO_FACTOR, PNP_CG_ITERATIONS = 0.5, 10
#: each graphLa method's default pre-estimate
GRAPHLA_ESTIMATES = {"graphla-fbp": "fbp", "graphla-tik": "tikhonov", "graphla-tv": "tv"}
#: the weights ``lam`` may name instead of a number (see ``reconstruct``)
LAM_RULES = ("rule", "auto", "cv")


def reconstruct(A: LinearOperator, y: torch.Tensor, method: str = "tv", lam: float | str | None = None,
                iterations: int | None = None, nonneg: bool = True, progress: bool = False,
                filter: str = "ram-lak", noise_std: float | None = None,
                estimate: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
                eta: float | None = None, p: float | None = None, spread: int | None = None, radius: int | None = None,
                sigma: float | None = None, model=None, support: str | None = None,
                samples: int | None = None) -> Reconstruction:
    """Reconstruct ``y`` with one of ``METHODS``.

    Args:
        A: the CT operator.
        y: sinogram ``(B, *A.out_shape)``.
        method: ``"fbp"``, ``"sirt"``, ``"cgls"``, ``"tikhonov"`` (``recon.linear.tikhonov``),
            ``"tv"`` (Chambolle-Pock, started from FBP), ``"svtv"`` (space-variant TV with weights
            from ``estimate``), ``"graphla-fbp"``, ``"graphla-tik"`` or ``"graphla-tv"``
            (graph-Laplacian prior built from FBP, Tikhonov or TV), ``"lpn"`` (PnP-ADMM with a learned
            proximal network, started from FBP), ``"pnp"`` (the same with a trained denoiser),
            ``"red-diff"``, ``"diffpir"``, ``"dpir"``, ``"dps"`` or ``"score-pc"`` (a diffusion prior,
            ``recon.diffusion.diffusion_recon``),
            ``"rising"`` (a few TV iterations completed by a network, ``recon.learned.rising``), ``"lpd"``
            (learned primal-dual, ``priors.nets.LearnedPrimalDual``), ``"unrolled-ista"`` (unrolled
            ISTA with CNN proxes, ``priors.nets.UnrolledISTANet``) or ``"limited-angle"`` (TV with the
            disc bounds on a short arc, completed by a network: ``recon.learned.limited_angle``).
        lam: the weight: a number; None for the default, which for ``"tv"`` on a 2D CT operator with 8
            views or more is ``"cv"`` and otherwise ``"rule"``; ``"rule"`` for the rule
            (``default_lambda``: the sinogram's noise, the size and the geometry, blind to the object;
            the fastest); ``"auto"`` for the discrepancy principle ``||A x - y|| = tau sigma sqrt(m)``
            (one weight per batch item; ``sigma`` is ``noise_std`` when given, else the sinogram's
            estimate); or ``"cv"`` for the multiple of the rule whose reconstruction from three
            quarters of the views best predicts the rest (per item; 2D CT; about four reconstructions
            in all, ``recon.parameter_choice.cross_validation``).
        iterations: iteration cap for iterative methods (defaults in ``DEFAULT_ITERATIONS``).
        nonneg: enforce ``x >= 0`` (SIRT and the variational methods).
        support: ``"disc"``: the variational methods also keep ``x`` inside the disc fitted to each
            sinogram's shadow, below the largest attenuation its rays allow (``recon.support``; for a
            disc-shaped object scanned over a short arc, as in HTC2022).
        samples: ``N >= 2`` draws per item of a sampler (``SAMPLERS``) in one batched, seeded run:
            ``x`` is their mean, ``std`` and ``samples`` are set (``Reconstruction``).
        progress: show a progress bar for iterative methods.
        filter: FBP filter.
        noise_std: the sinogram's noise standard deviation, if known (the rule, ``"cv"`` and ``"auto"``).
        estimate: the pre-estimate ``Psi`` of ``svtv`` and ``graphla-*``: ``"fbp"``, ``"tikhonov"``,
            ``"tv"`` (TV at the rule's weight) or a callable ``y -> x_hat`` (e.g. a trained network)
            returning ``(B, *A.in_shape)``. Default: ``"tv"`` for svtv, the one its name says for graphla.
        eta, p, spread: SV-TV weight parameters (``priors.adaptive_tv_weights``); None: the weight
            network card's ``"svtv"`` settings when ``model`` is one, else ``DEFAULT_ETA``, ``DEFAULT_P``,
            ``DEFAULT_SPREAD``.
        radius, sigma: graph parameters (``priors.graph_laplacian``; None: their defaults).
        model: a trained model (``recon.models.load_model``) or its weights file: for ``"lpn"`` the
            learned proximal network (None: the shipped one, ``recon.models.builtin("lpn")``); for
            ``"svtv"`` a weight network (task ``svtv-weights``) whose predicted ``|grad x|`` from the
            FBP replaces ``estimate``; for ``"pnp"`` a denoiser (task ``denoiser``, required); for
            ``"red-diff"``, ``"diffpir"``, ``"dpir"``, ``"dps"`` and ``"score-pc"`` a diffusion prior (task
            ``score``; None: the shipped one; ``lam`` is their weight, DPS's guidance step, score-PC's
            projection weight, and ``iterations`` their number
            of timesteps). For
            ``"lpn"`` and ``"pnp"``, ``lam`` is the ADMM penalty ``rho`` (the prior's
            weight against the data term ``||A x - y||^2 / (2 ||A||^2)``; default: the card's). For
            ``"rising"`` a RISING network (task ``rising``, required; its card fixes the geometry, the
            TV iterations and the weight: ``lam`` and ``iterations`` stay unset); for ``"lpd"`` and
            ``"unrolled-ista"`` their network (task ``lpd`` / ``unrolled-ista``, required; for the
            geometry of its card); for ``"limited-angle"`` its network (task ``limited-angle``; None: the
            shipped ``limited_angle_htc128``; its card fixes the scanner and the arcs, any view count).

    Raises:
        ValueError: a bad argument, named: ``iterations`` an integer >= 1 (not a float or bool),
        ``lam`` finite >= 0, ``noise_std``, ``eta``, ``sigma`` finite > 0, ``p`` in ``[0, 1)``,
        ``spread`` an integer >= 0, ``radius`` an integer >= 1. RuntimeError: a reconstruction holding
        NaN or Inf (a diverged method), naming the method.

    Example:
        >>> import numpy as np
        >>> from operators import ParallelBeam2D
        >>> from data.phantoms import shepp_logan
        >>> A = ParallelBeam2D((64, 64), np.linspace(0, np.pi, 40, endpoint=False), 92)
        >>> r = reconstruct(A, A(shepp_logan(64)), "fbp")
        >>> r.x.shape, r.method
        (torch.Size([1, 1, 64, 64]), 'fbp')
    """
    _check_parameters(method, lam, iterations, noise_std, estimate, model, eta=eta, p=p, spread=spread,
                      radius=radius, sigma=sigma)
    if samples is not None:  # N draws per item in one batched run (seeded: the same call, the same draws)
        return draw_samples(lambda ys: reconstruct(A, ys, method, lam, iterations, nonneg, progress, filter,
                                                   noise_std, estimate, eta, p, spread, radius, sigma, model, support),
                            y, method, samples)
    if support not in (None, "disc"):
        raise ValueError(f"support: expected None or 'disc', got {support!r}")
    if support is not None and (method not in VARIATIONAL or not nonneg):
        raise ValueError(f"support: bounds the variational methods with nonneg=True, not {method!r}")
    r = _reconstruct(A, y, method, lam, iterations, nonneg, progress, filter, noise_std, estimate, eta, p, spread,
                     radius, sigma, model, support)
    check_finite_result(r.x, method)
    return r


def _check_parameters(method, lam, iterations, noise_std, estimate, model, **numbers) -> None:
    """``ValueError`` naming the first bad argument of ``reconstruct`` (see ``recon.params``)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if iterations is not None:
        check_integer("iterations", iterations)
    if isinstance(lam, str) and lam not in LAM_RULES:
        raise ValueError(f"lam: expected a number, None (the default), 'rule', 'auto' or 'cv', got {lam!r}")
    if lam is not None and not isinstance(lam, str):
        check_number("lam", lam, strict=False)
    if noise_std is not None:
        check_number("noise_std", noise_std)
    checks = {"eta": lambda v: check_number("eta", v), "p": lambda v: check_number("p", v, strict=False, below=1.0),
              "spread": lambda v: check_integer("spread", v, minimum=0), "radius": lambda v: check_integer("radius", v),
              "sigma": lambda v: check_number("sigma", v)}
    for name, value in numbers.items():
        if value is not None:
            checks[name](value)
    if estimate is not None and method not in ADAPTIVE:
        raise ValueError(f"estimate: only svtv and graphla-* use a pre-estimate, not {method!r}")
    if model is not None and method not in ("svtv", *PNP, *DIFFUSION, *TRAINED_FOR_GEOMETRY):
        raise ValueError(f"model: only lpn, pnp, svtv, {', '.join(DIFFUSION)}, {', '.join(TRAINED_FOR_GEOMETRY[:-1])} "
                         f"and {TRAINED_FOR_GEOMETRY[-1]} use a trained model, not {method!r}")
    if model is not None and estimate is not None:
        raise ValueError("estimate: svtv takes its weights from the model or from a pre-estimate, not both")


def _reconstruct(A, y, method, lam, iterations, nonneg, progress, filter, noise_std, estimate, eta, p, spread,
                 radius, sigma, model, support=None) -> Reconstruction:
    """``reconstruct`` once its arguments are checked: picks the solver and runs it."""
    start = time.perf_counter()
    if method == "fbp":
        x = fbp(A, y, filter=filter)
        return Reconstruction(x, method, 0, time.perf_counter() - start, {"filter": filter})
    if method == "rising":
        return _rising(A, y, lam, iterations, nonneg, filter, noise_std, model, start)
    if method == "limited-angle":  # TV with the disc bounds in the arc's frame, then a network (its module)
        if lam is not None or iterations is not None or not nonneg:
            raise ValueError(f"{'lam' if lam is not None else 'iterations' if iterations is not None else 'nonneg'}: "
                             "limited-angle runs TV as its network was trained (the rule's weight, default iterations, "
                             "x >= 0); leave it at its default")
        return limited_angle(A, y, _load(model, method, y.device), progress)
    if method in ("lpd", "unrolled-ista"):  # sinogram -> image networks, run at the FBP's intensity scale
        if lam is not None or iterations is not None:
            raise ValueError(f"{'lam' if lam is not None else 'iterations'}: {method} is a trained network with no "
                             "weight or iteration count to set; leave it unset")
        m = _load(model, method, y.device, method)
        check_geometry(m.card, A, m.path)
        k = getattr(m.network, "start_iterations", 0)  # an LPD that starts from TV's k-th iterate
        x0 = [reconstruct(A, y, "tv", lam="rule", iterations=k, filter=filter, noise_std=noise_std).x] if k else []
        x = eval_output(m.network, A, y, intensity_scale(fbp(A, y, filter=filter)), *x0)
        params = {"model": str(m.path), **({"iterations_tv": k} if k else {})}
        return Reconstruction(x, method, m.network.iterations, time.perf_counter() - start, params)
    n_iter = int(iterations or DEFAULT_ITERATIONS[method])
    constraint = NonNegativity() if nonneg and method != "cgls" else None
    params: dict = {"max_iterations": n_iter, "nonneg": constraint is not None}
    if method == "tikhonov":
        x = tikhonov(A, y, iterations=n_iter)
        return Reconstruction(x, method, n_iter, time.perf_counter() - start,
                              {"max_iterations": n_iter, "alpha": "default"})
    if method in DIFFUSION:
        def noise() -> float:
            return float(noise_std) if noise_std is not None else float(estimate_noise_std(y).mean())
        score_model = _load(model, "score", y.device, method)
        def pre_estimate(init: str) -> torch.Tensor:  # FBP, or TV at the rule's weight (a card's init)
            if init == "tv":
                return reconstruct(A, y, "tv", lam="rule", nonneg=nonneg, filter=filter, noise_std=noise_std).x
            return fbp(A, y, filter=filter)

        x, n, params, history = diffusion_reconstruction(method, A, y, pre_estimate, score_model, lam, iterations,
                                                         noise, progress, start)
        return Reconstruction(x, method, n, time.perf_counter() - start, params, history)
    if method in PNP:
        return _pnp(method, A, y, fbp(A, y, filter=filter), model, lam, iterations, constraint, progress, start,
                    noise_std)
    if method not in VARIATIONAL:
        problem = Problem(L2Fidelity(A, y), constraint=constraint)
        solver = (SIRT if method == "sirt" else CGLS)(max_iter=n_iter, progress=progress)
        x0 = torch.zeros((y.shape[0], *A.in_shape), dtype=y.dtype, device=y.device)
        result = solver.run(problem, x0)
        return Reconstruction(result.x, method, result.n_iter, time.perf_counter() - start, params, result.history)

    x_fbp = fbp(A, y, filter=filter)
    tuned: dict = {}
    if model is not None:
        estimate = _weight_network(model, y.device)
        tuned = estimate.settings
    eta = float(tuned.get("eta", DEFAULT_ETA) if eta is None else eta)
    p = float(tuned.get("p", DEFAULT_P) if p is None else p)
    spread = int(tuned.get("spread", DEFAULT_SPREAD) if spread is None else spread)
    prior, prior_params = _adaptive_prior(method, A, y, x_fbp, estimate, n_iter, nonneg, noise_std, eta, p, spread,
                                          radius, sigma, support)
    params.update(prior_params)
    if lam is None:  # TV's weight from the data where the views can be split, else (and for the others) the rule
        lam = "cv" if method == "tv" and can_cross_validate(A) else "rule"
    solver = ChambollePock(max_iter=n_iter, tol=1e-5, progress=progress and lam not in ("auto", "cv"))

    if support == "disc":
        constraint = PixelBox(torch.cat([disc_bounds(A, y[i:i + 1]) for i in range(y.shape[0])]))
        params["support"] = "disc"

    def solve(weight: float, x0: torch.Tensor, yy: torch.Tensor, pr: Functional, cons=constraint, op=A):
        return solver.run(Problem(L2Fidelity(op, yy), weight * pr, constraint=cons), x0)

    if lam == "auto":
        x, lams, iters, searched = auto_lambda(method, A, y, prior, x_fbp, noise_std, solve, progress, constraint)
        params.update(lam=_per_item(lams), lam_rule="discrepancy", auto_search_iterations=searched,
                      discrepancy_tau=DISCREPANCY_TAU, noise_std=noise_std if noise_std is not None else "estimated")
        return Reconstruction(x, method, iters, time.perf_counter() - start, params)
    if lam == "cv":
        x, lams, multiples, iters, searched = cv_lambda(method, A, y, prior, x_fbp, noise_std, solve, progress,
                                                        constraint)
        params.update(lam=_per_item(lams), lam_rule="cross-validation", cv_held_out=f"every {CV_FOLDS}th view",
                      cv_multiple=_per_item(multiples), cv_search_iterations=searched)
        return Reconstruction(x, method, iters, time.perf_counter() - start, params)
    rule = ("rule" if "lam_factor" not in tuned else f"rule x {tuned['lam_factor']:g} (model card)") \
        if lam == "rule" else "given"
    if lam == "rule":
        lam = default_lambda(method, A, y, noise_std, prior) * float(tuned.get("lam_factor", 1.0))
    else:
        lam = float(lam)
    params.update(lam=lam, lam_rule=rule)
    result = solve(lam, x_fbp, y, prior)
    return Reconstruction(result.x, method, result.n_iter, time.perf_counter() - start, params, result.history)


def _per_item(values: list):
    """A searched setting as recorded: the value for a batch of one, else the list of them per item."""
    return values[0] if len(values) == 1 else values


def _rising(A, y, lam, iterations, nonneg, filter, noise_std, model, start) -> Reconstruction:
    """``k`` TV iterations at the rule's weight, completed by the RISING network (``recon.learned.rising``)."""
    if lam is not None:
        raise ValueError("lam: rising runs TV at the rule's weight its network was trained with; leave lam unset")
    if not nonneg:
        raise ValueError("nonneg: rising's network was trained on TV with x >= 0; leave nonneg=True")
    m = _load(model, "rising", y.device, "rising")
    check_geometry(m.card, A, m.path)
    k = rising_iterations(m.card, iterations, m.path)
    early = reconstruct(A, y, "tv", lam="rule", iterations=k, filter=filter, noise_std=noise_std)
    params = {"iterations_tv": k, "lam": early.parameters["lam"], "lam_rule": early.parameters["lam_rule"],
              "model": str(m.path)}
    return Reconstruction(eval_output(m.network, early.x), "rising", k, time.perf_counter() - start, params)


def _adaptive_prior(method, A, y, x_fbp, estimate, n_iter, nonneg, noise_std, eta, p, spread, radius, sigma,
                    support=None):
    """The prior of a variational method and the parameters to record; builds ``Psi(y)`` if needed."""
    if method == "tv":
        return TV(), {}
    if estimate is None:
        estimate = "tv" if method == "svtv" else GRAPHLA_ESTIMATES[method]
    if isinstance(estimate, _WeightNetwork):
        mag = estimate.network.gradient_magnitude(x_fbp)
        prior = SpaceVariantTV.from_magnitude(mag, intensity_scale(x_fbp), eta=eta, p=p, spread=spread)
        return prior, {"estimate": f"network {estimate.name}", "eta": eta, "p": p, "spread": spread}
    if callable(estimate):
        name, x_hat = getattr(estimate, "__name__", type(estimate).__name__), estimate(y)
        expected = (y.shape[0], *A.in_shape)
        if not isinstance(x_hat, torch.Tensor) or tuple(x_hat.shape) != expected:
            found = tuple(x_hat.shape) if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__
            raise ValueError(f"estimate: the pre-estimate Psi(y) must be a tensor of shape {expected}, got {found}")
        x_hat = x_hat.detach()
    elif estimate == "fbp":
        name, x_hat = "fbp", x_fbp
    elif estimate == "tikhonov":
        name, x_hat = "tikhonov", tikhonov(A, y)
    elif estimate == "tv":
        name, x_hat = "tv", reconstruct(A, y, "tv", lam="rule", iterations=n_iter, nonneg=nonneg,
                                        noise_std=noise_std, support=support).x
    else:
        raise ValueError(f"estimate: expected one of {', '.join(ESTIMATES)} or a callable y -> x_hat, got {estimate!r}")
    if method == "svtv":
        return (SpaceVariantTV.from_estimate(x_hat, eta=eta, p=p, spread=spread),
                {"estimate": name, "eta": eta, "p": p, "spread": spread})
    graph = {k: v for k, v in (("radius", radius), ("sigma", sigma)) if v is not None}
    prior = GraphLaplacianPrior.from_estimate(x_hat, **graph)
    return prior, {"estimate": name, "radius": prior.laplacian.radius, "sigma": prior.laplacian.sigma}


@dataclass
class _WeightNetwork:
    """A loaded SV-TV weight network standing in for the pre-estimate."""

    network: torch.nn.Module
    name: str
    settings: dict = field(default_factory=dict)  # the card's tuned SV-TV settings (eta, p, spread, lam_factor)


def _load(model, task: str, device, method: str | None = None):
    from recon.models import CT_METHOD, TrainedModel, load_model, shipped

    if model is None:
        model = shipped(task)
        if model is None:
            raise ValueError(f"model: {method or CT_METHOD[task]} needs a trained {task} (none is shipped): train one "
                             f"with `recon train {task} --data ... --output DIR` and pass DIR/model.safetensors")
    if not isinstance(model, TrainedModel):
        model = load_model(model, task=task)
    elif model.task != task:
        raise ValueError(f"model: expected a {task!r} model, got a {model.task!r} model")
    return model.to(device)


def _weight_network(model, device) -> _WeightNetwork:
    m = _load(model, "svtv-weights", device)
    return _WeightNetwork(m.network, m.path.name if m.path is not None else "in memory", dict(m.card.get("svtv", {})))


def _pnp(method, A, y, x_fbp, model, lam, iterations, constraint, progress, start, noise_std) -> Reconstruction:
    r"""PnP-ADMM with a trained model, data term ``||A x - y||^2 / (2 ||A||^2)``, from FBP.

    ``"lpn"``: the learned proximal network is the prox of a fixed regulariser ``R`` (about
    ``sigma^2 phi`` for a network trained at noise ``sigma`` on images with prior ``exp(-phi)``), so
    ADMM's fixed point minimises ``data + rho R``. MAP estimation with sinogram noise ``nu`` asks for

    .. math:: \rho_{MAP} = \nu^2 / (\sigma^2 \|A\|^2)

    ``"pnp"``: a denoiser trained at noise ``sigma`` (``recon train denoiser``) in the prox's place,
    with the same rule (a heuristic there: a denoiser is not in general a prox).

    ``rho`` is the card's ``pnp.rho_factor`` (tuned, ``docs/lpn_ct_study.py``; default
    ``PNP_RHO_FACTOR``) times it, with ``nu`` given (``noise_std``) or estimated from the sinogram
    (one value per item, their mean), so the setting follows the noise level and the geometry.
    ``lam`` gives ``rho`` directly; so does a card's ``pnp.rho``.
    """
    from priors.denoiser import DenoiserPrior
    from priors.learned_prox import LearnedProxPrior
    from recon.pnp import PnPADMM

    if isinstance(lam, str):
        raise ValueError(f"lam: {lam!r} (a weight rule of the variational methods) is not available for {method}; "
                         "give rho as lam or None")
    m = _load(model, "lpn" if method == "lpn" else "denoiser", y.device)
    pnp = m.card.get("pnp", {})
    norm_sq = A.norm() ** 2
    if lam is not None:
        rho, rule = float(lam), "given"
    elif "rho" in pnp:
        rho, rule = float(pnp["rho"]), "model card"
    else:
        if "sigma" not in m.card:
            raise ValueError(f"model: the {m.task} model's card has neither pnp.rho nor the training noise 'sigma'; "
                             "pass lam (rho)")
        nu = float(noise_std) if noise_std is not None else float(estimate_noise_std(y).mean())
        factor = float(pnp.get("rho_factor", PNP_RHO_FACTOR))
        rho, rule = factor * nu ** 2 / (float(m.card["sigma"]) ** 2 * norm_sq), f"{factor:g} x MAP rule"
    if not rho > 0:
        raise ValueError(f"lam: {method}'s penalty rho must be > 0, got {rho}")
    n_iter = int(iterations or pnp.get("iterations", DEFAULT_ITERATIONS[method]))
    prior = LearnedProxPrior(m.network) if method == "lpn" else DenoiserPrior(m.network, blind=True)
    problem = Problem((1.0 / norm_sq) * L2Fidelity(A, y), prior, constraint=constraint)
    solver = PnPADMM(rho=rho, max_iter=n_iter, tol=0.0, cg_iterations=int(pnp.get("cg_iterations", PNP_CG_ITERATIONS)),
                     progress=progress)
    result = solver.run(problem, x_fbp)
    params = {"max_iterations": n_iter, "nonneg": constraint is not None, "rho": rho, "lam_rule": rule,
              "weights": str(m.path) if m.path is not None else "in memory", "data_scale": 1.0 / norm_sq,
              "cg_iterations": solver.cg_iterations}
    return Reconstruction(result.x, method, result.n_iter, time.perf_counter() - start, params, result.history)
