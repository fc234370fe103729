r"""Diffusion (score) priors: one noise-conditional denoiser ``D(x, sigma)``, valid at every noise level.

Every conversion between the denoiser, the score, the noise prediction and the DDPM (VP) and
VE time scales is written once, here; the solvers (``recon/``) use these and derive none.

Conventions::

    VE       x_sigma = x0 + sigma * eps,  eps ~ N(0, I)                 (the denoiser's variable)
    VP       x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps            (DDPM, t = 0 .. T - 1)
             = sqrt(abar_t) * x_sigma  with  sigma_t = sqrt((1 - abar_t) / abar_t)
    D        D(x, sigma) ~ E[x0 | x_sigma = x]                          (trained: MSE to x0)
    score    grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2          (Tweedie)
    eps      eps_hat(x, sigma) = (x - D(x, sigma)) / sigma,  so  D = x - sigma * eps_hat

The VP noise prediction at ``(x_t, t)`` is ``eps_hat(x_t / sqrt(abar_t), sigma_t)``: the VP and VE
forms are one model seen on two scales, and ``sigma_t / alpha_t`` (RED-Diff's "linear" weight) is
``sigma_t`` of the VE form.

**Preconditioning** (Karras et al. 2022, "EDM"): the network ``F`` sees ``c_in * x`` and
``c_noise = log(sigma) / 4``, and ``D = c_skip * x + c_out * F`` with
``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma * sd / sqrt(sigma^2 + sd^2)``,
``c_in = 1 / sqrt(sigma^2 + sd^2)`` (``sd``: the data's standard deviation). Input and training
target of ``F`` then have unit variance at every ``sigma``, which is what lets one small network
train on all noise levels at once.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from operators.base import per_item
from priors.base import on_parts
from priors.denoiser import DenoiserPrior, FixedSigmaDenoiser, check_ensemble, geometric_ensemble

__all__ = ["VPSchedule", "ve_sigmas", "score_from_denoiser", "eps_from_denoiser", "denoiser_from_eps",
           "edm_scalings", "edm_loss", "complex_noise", "DiffusionPrior"]


class VPSchedule:
    r"""The DDPM variance-preserving schedule: ``beta`` linear from ``beta_min`` to ``beta_max`` over
    ``steps`` timesteps, ``abar_t = prod_{s <= t} (1 - beta_s)``.

    Example:
        >>> s = VPSchedule()
        >>> round(float(s.abar[0]), 6), round(float(s.sigma(999)), 1)
        (0.9999, 157.4)
    """

    def __init__(self, beta_min: float = 1e-4, beta_max: float = 0.02, steps: int = 1000) -> None:
        if not 0 < beta_min <= beta_max < 1:
            raise ValueError(f"beta_min, beta_max: expected 0 < beta_min <= beta_max < 1, got {beta_min}, {beta_max}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps: expected an integer >= 2, got {steps!r}")
        self.steps = steps
        self.beta = torch.linspace(beta_min, beta_max, steps, dtype=torch.float64)
        self.abar = torch.cumprod(1 - self.beta, 0)

    def sigma(self, t) -> torch.Tensor:
        """The VE noise level of timestep ``t`` (int or tensor): ``sqrt((1 - abar_t) / abar_t)``."""
        abar = self.abar[torch.as_tensor(t, dtype=torch.long)]
        return ((1 - abar) / abar).sqrt()

    def timesteps(self, count: int, start: int | None = None) -> list[int]:
        """``count`` timesteps, descending: ``range(0, start, start // count)`` reversed (RED-Diff's order).

        Example:
            >>> VPSchedule().timesteps(4)
            [750, 500, 250, 0]
        """
        start = self.steps if start is None else start
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= start:
            raise ValueError(f"count: expected an integer in [1, {start}], got {count!r}")
        return list(range(0, start, start // count))[:count][::-1]

    def descending(self, count: int, start: int | None = None) -> list[int]:
        """``count`` timesteps evenly spaced from ``start`` (default ``steps - 1``) down to 0, rounded;
        fewer when ``count > start + 1`` (each at most once). DiffPIR's order.

        Example:
            >>> VPSchedule().descending(5, 200)
            [200, 150, 100, 50, 0]
        """
        start = self.steps - 1 if start is None else start
        return sorted({round(start * (1 - k / max(count - 1, 1))) for k in range(count)}, reverse=True)

    def to_ve(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """``x_t / sqrt(abar_t)``: the VP variable on the denoiser's scale."""
        return x_t / per_item(self.abar[torch.as_tensor(t, dtype=torch.long)].sqrt().to(x_t.real.dtype), x_t.ndim)

    def from_ve(self, x: torch.Tensor, t) -> torch.Tensor:
        """``sqrt(abar_t) * x``: back to the VP variable."""
        return x * per_item(self.abar[torch.as_tensor(t, dtype=torch.long)].sqrt().to(x.real.dtype), x.ndim)


def ve_sigmas(count: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    r"""``count`` noise levels from ``sigma_max`` down to ``sigma_min``, spaced as in EDM:
    ``(sigma_max^(1/rho) + i / (count - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.

    Example:
        >>> [round(s, 6) for s in ve_sigmas(3, 0.01, 1.0, rho=1.0).tolist()]
        [1.0, 0.505, 0.01]
    """
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"sigma_min, sigma_max: expected 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ValueError(f"count: expected an integer >= 2, got {count!r}")
    ramp = torch.linspace(0, 1, count, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def score_from_denoiser(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    """``grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2`` (Tweedie); ``sigma`` a number or ``(B,)``."""
    return (denoised - x) / per_item(sigma, x.ndim) ** 2


def eps_from_denoiser(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    """The noise prediction ``(x - D(x, sigma)) / sigma``."""
    return (x - denoised) / per_item(sigma, x.ndim)


def denoiser_from_eps(x: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """``D = x - sigma * eps_hat``: an epsilon-network as a denoiser."""
    return x - per_item(sigma, x.ndim) * eps


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """``(c_skip, c_out, c_in, c_noise)`` of EDM preconditioning for a ``(B,)`` tensor ``sigma``.

    Example:
        >>> [round(float(c), 4) for c in edm_scalings(torch.tensor([0.5]), 0.5)]
        [0.5, 0.3536, 1.4142, -0.1733]
    """
    total = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4


def complex_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``N(0, I)`` noise shaped like ``like``; for a complex ``like``, real and imaginary parts each
    ``N(0, 1)`` (``torch.randn`` gives complex noise of variance 1 in total, half per part).

    Example:
        >>> complex_noise(torch.zeros(2, dtype=torch.complex64)).dtype
        torch.complex64
    """
    kw = {"generator": generator, "device": like.device, "dtype": like.real.dtype}
    if like.is_complex():
        return torch.complex(torch.randn(like.shape, **kw), torch.randn(like.shape, **kw))
    return torch.randn(like.shape, **kw)


def edm_loss(denoiser, x0: torch.Tensor, sigma_data: float, p_mean: float = -1.2, p_std: float = 1.2,
             sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    r"""Denoising score matching with EDM's noise levels and weights: a scalar, the batch mean of

    .. math:: \frac{\sigma^2 + \sigma_d^2}{(\sigma \sigma_d)^2}\,
              \overline{(D(x_0 + \sigma n, \sigma) - x_0)^2},\qquad
              \ln\sigma \sim N(P_{mean}, P_{std}^2)\ \text{clamped to}\ [\sigma_{min}, \sigma_{max}]

    (one ``sigma`` and one ``n ~ N(0, I)`` per item, from the global RNG). The weight makes the
    preconditioned network's target unit-variance at every ``sigma``; the loss is 1 for ``D = c_skip x``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> x0 = 0.5 * torch.randn(1024, 1, 8, 8)
        >>> prior = DiffusionPrior(lambda x, c: torch.zeros_like(x))       # F = 0: D = c_skip x
        >>> round(float(edm_loss(prior, x0, sigma_data=0.5)), 1)
        1.0
    """
    sigma = (p_mean + p_std * torch.randn(x0.shape[0], device=x0.device, dtype=x0.real.dtype)).exp()
    sigma = sigma.clamp(sigma_min, sigma_max)
    noisy = x0 + per_item(sigma, x0.ndim) * torch.randn_like(x0)
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    err = (denoiser(noisy, sigma) - x0).abs().pow(2).flatten(1).mean(1)
    return (weight * err).mean()


class DiffusionPrior(nn.Module):
    r"""A noise-conditional denoiser ``D(x, sigma)`` and everything derived from it.

    ``network(x_in, c_noise)`` (``c_noise`` a ``(B,)`` tensor) is wrapped with EDM preconditioning
    (``preconditioned=True``, for a trained network), or is ``D`` itself (``network(x, sigma)``,
    ``preconditioned=False``: an analytic denoiser, or a network trained without it).

    Args:
        network: an ``nn.Module`` or callable as above, fully convolutional for images.
        sigma_data: the data's standard deviation (EDM's ``sigma_data``).
        sigma_range: ``(sigma_min, sigma_max)`` the model was trained on; a noise level outside
            it warns once, naming the range.
        ensemble: ``D`` is the mean over this many flips (4) or flips and transposes (8) of the
            image (``priors.denoiser.geometric_ensemble``); 1: none. ``with_ensemble`` changes it.

    Example:
        >>> gauss = lambda x, sigma: x / (1 + sigma ** 2)          # D for x0 ~ N(0, I)
        >>> prior = DiffusionPrior(gauss, preconditioned=False)
        >>> x = torch.ones(1, 1, 2, 2)
        >>> prior.score(x, 1.0).flatten().tolist()                 # -x / (1 + sigma^2)
        [-0.5, -0.5, -0.5, -0.5]
        >>> prior.at(1.0).prox(x, 0.3).flatten().tolist()          # a PnP prior at sigma = 1
        [0.5, 0.5, 0.5, 0.5]
    """

    def __init__(self, network, sigma_data: float = 0.5, preconditioned: bool = True,
                 sigma_range: tuple[float, float] = (0.002, 80.0), ensemble: int = 1) -> None:
        super().__init__()
        if not callable(network):
            raise TypeError(f"network: expected a callable network(x, c_noise) (an nn.Module), "
                            f"got {type(network).__name__}")
        if not 0 < sigma_data < math.inf:
            raise ValueError(f"sigma_data: expected a finite number > 0, got {sigma_data!r}")
        lo, hi = (float(s) for s in sigma_range)
        if not 0 < lo < hi < math.inf:
            raise ValueError(f"sigma_range: expected 0 < sigma_min < sigma_max, got {sigma_range!r}")
        self.network, self.sigma_data = network, float(sigma_data)
        self.preconditioned, self.sigma_range = bool(preconditioned), (lo, hi)
        self.ensemble = check_ensemble(ensemble)
        self._warned = False

    def with_ensemble(self, count: int) -> "DiffusionPrior":
        """This prior (the same network, not a copy of its weights) with ``ensemble=count``."""
        other = copy.copy(self)
        other.ensemble = check_ensemble(count)
        return other

    def _sigmas(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``sigma`` as a ``(B,)`` tensor on ``x``'s device, in ``x``'s real dtype, checked."""
        s = torch.as_tensor(sigma, dtype=x.real.dtype, device=x.device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(x.shape[0])
        if s.shape != (x.shape[0],):
            raise ValueError(f"sigma: expected a number or a ({x.shape[0]},) tensor, got shape {tuple(s.shape)}")
        if s.device.type == "cpu":
            if not bool(torch.isfinite(s).all() and (s > 0).all()):
                raise ValueError(f"sigma: expected finite noise levels > 0, got {s.tolist()}")
            lo, hi = self.sigma_range
            if not self._warned and bool(((s < lo * (1 - 1e-6)) | (s > hi * (1 + 1e-6))).any()):
                self._warned = True
                warnings.warn(f"sigma: noise level(s) {float(s.min()):.3g} to {float(s.max()):.3g} outside the range "
                              f"the model was trained on, [{lo:g}, {hi:g}]; its output there is extrapolation",
                              UserWarning, stacklevel=3)
        return s

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``D(x, sigma)``: ``x`` of shape ``(B, C, ...)``, ``sigma`` a number or a ``(B,)`` tensor.

        A complex ``x`` (MRI) is denoised as its real and imaginary parts, each an image with noise
        ``sigma`` (complex noise ``sigma * (n1 + i n2)``: see ``complex_noise``)."""
        s = self._sigmas(x, sigma)
        if x.is_complex():
            return on_parts(lambda parts: self.denoise(parts, torch.cat([s, s])), x)
        return geometric_ensemble(lambda z: self._denoise(z, s), x, self.ensemble)

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if not self.preconditioned:
            return self.network(x, per_item(s, x.ndim))
        c_skip, c_out, c_in, c_noise = (per_item(c, x.ndim) for c in edm_scalings(s, self.sigma_data))
        return c_skip * x + c_out * self.network(c_in * x, c_noise.reshape(-1))

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self.denoise(x, sigma)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``grad log p_sigma(x)``."""
        return score_from_denoiser(x, self.denoise(x, sigma), self._sigmas(x, sigma))

    def eps(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The noise prediction at the VE variable ``x``."""
        return eps_from_denoiser(x, self.denoise(x, sigma), self._sigmas(x, sigma))

    def eps_vp(self, x_t: torch.Tensor, t, schedule: VPSchedule) -> torch.Tensor:
        """The DDPM noise prediction ``eps_theta(x_t, t)``: ``eps`` at ``x_t / sqrt(abar_t)``, ``sigma_t``."""
        return self.eps(schedule.to_ve(x_t, t), schedule.sigma(t).to(x_t.real.dtype))

    def as_prior(self, lam: float = 1.0) -> DenoiserPrior:
        """A ``DenoiserPrior`` (``sigma = sqrt(lam * tau)``) for the PnP solvers."""
        return DenoiserPrior(self.denoise, lam=lam)

    def at(self, sigma: float) -> FixedSigmaDenoiser:
        """The prior at a fixed noise level: a ``Functional`` whose ``prox`` ignores ``tau``."""
        return self.as_prior().at(sigma)

    def extra_repr(self) -> str:
        return (f"sigma_data={self.sigma_data}, preconditioned={self.preconditioned}, sigma_range={self.sigma_range}, "
                f"ensemble={self.ensemble}")
