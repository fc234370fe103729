"""What a reconstruction returns: ``Reconstruction``, and the summary of a sampler's ``samples=N`` draws."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from recon.params import check_integer

__all__ = ["Reconstruction", "SAMPLERS", "check_samples", "draw_samples", "summarise_draws"]


@dataclass
class Reconstruction:
    """A reconstruction with what produced it.

    ``iterations`` is the number of iterations run (fewer than the cap when the solver met its
    tolerance); ``parameters["max_iterations"]`` is the cap it was given. With ``samples=N`` (a
    sampler, ``SAMPLERS``) ``x`` is the mean of the ``N`` draws ``samples`` ``(N, B, *image)`` and
    ``std`` their pixel-wise standard deviation (of the complex values for MRI).
    """

    x: torch.Tensor
    method: str
    iterations: int
    seconds: float
    parameters: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    std: torch.Tensor | None = None
    samples: torch.Tensor | None = None


#: the methods whose runs are draws from an (approximate) posterior: ``samples=N`` draws N of them
SAMPLERS = ("dps", "diffpir", "score-pc")


def check_samples(samples, method: str) -> int:
    """``samples`` as an integer >= 2 for one of ``SAMPLERS``, else a ``ValueError`` naming it."""
    n = check_integer("samples", samples, 2)
    if method not in SAMPLERS:
        raise ValueError(f"samples: only the samplers {', '.join(SAMPLERS)} draw posterior samples, not {method!r}")
    return n


def draw_samples(solve, y: torch.Tensor, method: str, samples) -> Reconstruction:
    """``samples`` draws of ``method`` per item of ``y`` in one batched run: ``solve(y_repeated)`` sees
    each item repeated ``samples`` times in a row, and the result is summarised by ``summarise_draws``."""
    n = check_samples(samples, method)
    if not isinstance(y, torch.Tensor) or y.ndim < 2:
        raise TypeError(f"y: expected a batched tensor (B, ...), got {getattr(y, 'shape', type(y).__name__)}")
    return summarise_draws(solve(y.repeat_interleave(n, dim=0)), n)


def summarise_draws(r: Reconstruction, n: int) -> Reconstruction:
    """``r`` of ``B * n`` items, item ``b``'s draws being rows ``b * n`` to ``b * n + n - 1``, as one
    reconstruction per item: the mean, the std (``sqrt(sum |x - mean|^2 / (n - 1))``) and the draws."""
    draws = r.x.reshape(-1, n, *r.x.shape[1:]).transpose(0, 1)
    mean = draws.mean(0)
    std = ((draws - mean).abs().pow(2).sum(0) / (n - 1)).sqrt()
    params = {**r.parameters, "samples": n, "seconds_per_sample": r.seconds / r.x.shape[0]}
    return Reconstruction(mean, r.method, r.iterations, r.seconds, params, r.history, std, draws)
