r"""Plug-and-play priors: any denoiser ``D(x, sigma)`` used as a proximal operator.

**The tau -> sigma rule** (written once, here; every noise-level-dependent prior uses
``noise_level``). A Gaussian denoiser at noise standard deviation ``sigma`` that is the MAP
estimate under a prior density ``p(x) ~ exp(-phi(x))`` solves

.. math:: D(v, \sigma) = \arg\min_x\; \phi(x) + \tfrac{1}{2\sigma^2}\|x - v\|^2
          = \operatorname{prox}_{\sigma^2 \phi}(v),

so the prior ``g = lam * phi`` has ``prox_{tau g} = D(., sigma)`` with ``sigma^2 = lam * tau``.
For a MAP denoiser this is an identity (tested with a Gaussian prior, whose MAP denoiser is a
linear shrinkage); for MMSE networks, BM3D or learned proxes it is the usual PnP convention.
``lam`` is the prior's weight in the units of ``tau`` (a solver's step, e.g. ``1 / rho`` in ADMM):
a larger ``lam`` denoises harder at the same step.

**Fixed noise level.** ``prior.at(sigma)`` is a ``Functional`` whose ``prox`` ignores ``tau`` and
denoises at ``sigma`` (the learned-prox convention of the LPN paper: regularisation is then tuned
through the data scale and the solver's ``rho``). Its ``grad`` is ``(x - D(x, sigma)) / sigma^2``,
which by Tweedie's formula is ``-grad log p_sigma(x)`` for an MMSE denoiser (the RED gradient).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from operators.base import per_item
from priors.base import Functional, on_parts

__all__ = ["DenoiserPrior", "FixedSigmaDenoiser", "ENSEMBLES", "check_ensemble", "geometric_ensemble", "noise_level"]

#: the geometric self-ensembles: 1 (none), 4 (the flips of the last two axes), 8 (with their transposes)
ENSEMBLES = (1, 4, 8)


def noise_level(tau, lam: float = 1.0):
    r"""The PnP rule ``sigma = sqrt(lam * tau)``: a denoiser at this noise std is ``prox_{tau lam phi}``.

    .. math:: \sigma^2 = \lambda \tau

    Args:
        tau: step size, a number ``>= 0`` or a tensor (per item or per pixel).
        lam: prior weight ``> 0``.

    Returns:
        ``sigma``, a Python float for a number ``tau``, else a tensor like ``tau``.

    Example:
        >>> noise_level(0.5, lam=2.0)
        1.0
    """
    if isinstance(tau, torch.Tensor):
        return (lam * tau).sqrt()
    return math.sqrt(lam * float(tau))


def check_ensemble(count, name: str = "ensemble") -> int:
    """``count`` if it is one of ``ENSEMBLES``, else a ``ValueError`` naming ``name``."""
    if isinstance(count, bool) or count not in ENSEMBLES:
        raise ValueError(f"{name}: expected one of {ENSEMBLES}, got {count!r}")
    return int(count)


def geometric_ensemble(denoise: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                       count: int) -> torch.Tensor:
    """The mean of ``denoise`` over ``count`` flips and transposes of ``x``'s last two axes, each undone.

    A denoiser trained with those flips as augmentation makes errors that differ between the
    copies; their mean keeps the image and averages part of the errors away (the "x8" of DPIR),
    at ``count`` times the work. ``count``: one of ``ENSEMBLES``; 8 needs square images.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> shift = lambda z: z + z[..., :1, :1]      # not flip-equivariant: adds the corner value
        >>> geometric_ensemble(shift, x, 4)[0, 0, 0, 0].item()   # x + mean of the four corners
        7.5
    """
    check_ensemble(count)
    if count == 8 and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"ensemble: 8 (with transposes) needs square images, got {tuple(x.shape[-2:])}; use 4")
    if count == 1:
        return denoise(x)
    total = None
    for k in range(count):
        dims = [d for d, bit in ((-1, 1), (-2, 2)) if k & bit]
        z = x.transpose(-1, -2) if k >= 4 else x
        out = denoise(z.flip(dims) if dims else z)
        out = out.flip(dims) if dims else out
        out = out.transpose(-1, -2) if k >= 4 else out
        total = out if total is None else total + out
    return total / count


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _check_batched(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name}: expected a batched tensor (B, C, ...), got shape {tuple(x.shape)}")


def _network_dtype(denoiser) -> torch.dtype | None:
    """The floating dtype of an ``nn.Module``'s first floating parameter or buffer (None if none)."""
    if not isinstance(denoiser, nn.Module):
        return None
    tensors = list(denoiser.parameters()) + list(denoiser.buffers())
    return next((t.dtype for t in tensors if t.is_floating_point()), None)


@contextlib.contextmanager
def _frozen(denoiser, frozen: bool) -> Iterator[None]:
    """No gradients and eval mode inside; the module's own train/eval flags are restored after."""
    if not frozen:
        yield
        return
    modules = list(denoiser.modules()) if isinstance(denoiser, nn.Module) else []
    modes = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


class DenoiserPrior(Functional):
    r"""A denoiser as a prior: ``prox(x, tau) = D(x, sigma)`` with ``sigma = sqrt(lam * tau)``.

    .. math:: \operatorname{prox}_{\tau g}(x) = D\big(x, \sqrt{\lambda \tau}\big)

    The denoiser is any callable on batched tensors: ``D(x, sigma)``, or ``D(x)`` with
    ``blind=True`` (a denoiser trained for one noise level, or one that estimates it). ``sigma``
    is passed as a Python float for a number ``tau`` and as a tensor broadcastable to ``x``
    (``(B, 1, ..., 1)`` for per-item steps) otherwise. An ``nn.Module`` denoiser is a submodule,
    so ``prior.to(device)`` moves it; it must live on the input's device. Its input is cast to
    the network's floating dtype and the output back to the input's dtype, so a float32
    network serves float64 data. The prior has no value (``has_value = False``).

    By default (``frozen=True``) the denoiser runs in eval mode and without gradients, and
    a module's own train/eval flags are restored afterwards; ``frozen=False`` leaves both to
    the caller (for training through PnP iterations).

    Args:
        denoiser: callable ``D(x, sigma) -> x_hat`` (or ``D(x)`` when ``blind``), same shape out.
        lam: prior weight ``> 0`` in the rule ``sigma^2 = lam * tau``.
        blind: call ``D(x)`` without a noise level (``prox`` then ignores ``tau``).
        frozen: eval mode and no gradients while denoising.

    Shapes:
        ``(B, C, ...) -> (B, C, ...)``.

    Example:
        >>> import torch
        >>> shrink = lambda x, sigma: x / (1 + sigma ** 2)   # MAP denoiser for phi(x) = ||x||^2 / 2
        >>> prior = DenoiserPrior(shrink, lam=2.0)
        >>> prior.prox(torch.ones(1, 1, 2, 2), 0.5).flatten()   # sigma^2 = 2 * 0.5 = 1
        tensor([0.5000, 0.5000, 0.5000, 0.5000])
        >>> round(prior.at(3.0).prox(torch.ones(1, 1, 1, 1), 123.0).item(), 6)   # tau is ignored
        0.1
    """

    has_prox = True

    def __init__(self, denoiser: Callable, lam: float = 1.0, blind: bool = False, frozen: bool = True) -> None:
        super().__init__()
        if not callable(denoiser):
            raise TypeError("denoiser: expected a callable D(x, sigma) or D(x) (e.g. an nn.Module), "
                            f"got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.lam = _positive("lam", lam)
        self.blind, self.frozen = bool(blind), bool(frozen)

    def _prox(self, x: torch.Tensor, tau) -> torch.Tensor:
        """``D(x, sqrt(lam * tau))``; ``tau = 0`` returns a copy of ``x`` (the exact prox)."""
        _check_batched(x)
        if not isinstance(tau, torch.Tensor) and tau == 0:
            return x.clone()
        return self.denoise(x, noise_level(tau, self.lam))

    def at(self, sigma) -> "FixedSigmaDenoiser":
        """The prior at noise level ``sigma``: a ``Functional`` whose ``prox`` ignores ``tau``."""
        return FixedSigmaDenoiser(self, sigma)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``D(x, sigma)`` in ``x``'s dtype; ``sigma`` a number or a ``(B,)`` or broadcastable tensor.
        A complex ``x`` (MRI) is denoised as its real and imaginary parts, each at ``sigma``: the prox
        of ``phi(Re x) + phi(Im x)``, since ``||p - x||^2`` splits into the two parts."""
        _check_batched(x)
        if x.is_complex():
            if isinstance(sigma, torch.Tensor) and sigma.ndim > 0 and sigma.shape[0] == x.shape[0] > 1:
                sigma = torch.cat([sigma, sigma])
            return on_parts(lambda parts: self.denoise(parts, sigma), x)
        dtype = _network_dtype(self.denoiser)
        inp = x.to(dtype) if dtype is not None and x.is_floating_point() and x.dtype != dtype else x
        if isinstance(sigma, torch.Tensor):
            sigma = per_item(sigma.to(device=x.device, dtype=inp.real.dtype), x.ndim)
        with _frozen(self.denoiser, self.frozen):
            out = self.denoiser(inp) if self.blind else self.denoiser(inp, sigma)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"denoiser: expected an output of shape {tuple(x.shape)} like its input, got {found}")
        return out.to(dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, blind={self.blind}, frozen={self.frozen}"


class FixedSigmaDenoiser(Functional):
    r"""A ``DenoiserPrior`` at a fixed noise level: ``prox(x, tau) = D(x, sigma)`` for every ``tau``.

    .. math:: \nabla(x) = \frac{x - D(x, \sigma)}{\sigma^2}

    ``grad`` is the denoiser residual over ``sigma^2``: ``-grad log p_sigma(x)`` for an MMSE
    denoiser (Tweedie's formula). ``lam`` does not enter: it only sets the tau -> sigma rule.

    Args:
        prior: the ``DenoiserPrior``.
        sigma: noise level ``> 0``: a number, or a ``(B,)`` tensor (one per batch item).

    Example:
        >>> import torch
        >>> prior = DenoiserPrior(lambda x, sigma: x / (1 + sigma ** 2)).at(1.0)
        >>> prior.grad(torch.ones(1, 1, 1, 2))   # x / (1 + sigma^2): score of N(0, 1 + sigma^2)
        tensor([[[[0.5000, 0.5000]]]])
    """

    has_prox = has_grad = True

    def __init__(self, prior: DenoiserPrior, sigma) -> None:
        super().__init__()
        if not isinstance(prior, DenoiserPrior):
            raise TypeError(f"prior: expected a DenoiserPrior, got {type(prior).__name__}")
        self.prior = prior
        if isinstance(sigma, torch.Tensor):
            if sigma.ndim != 1 or not bool(torch.isfinite(sigma).all() & (sigma > 0).all()):
                raise ValueError(f"sigma: expected a (B,) tensor of finite values > 0, got shape "
                                 f"{tuple(sigma.shape)}")
            self.register_buffer("sigma", sigma)
        else:
            self.sigma = _positive("sigma", sigma)

    def _prox(self, x: torch.Tensor, tau) -> torch.Tensor:
        return self.prior.denoise(x, self.sigma)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma
        if isinstance(sigma, torch.Tensor):
            sigma = per_item(sigma.to(device=x.device, dtype=x.real.dtype), x.ndim)
        return (x - self.prior.denoise(x, self.sigma)) / sigma ** 2

    def extra_repr(self) -> str:
        return f"sigma={self.sigma if not isinstance(self.sigma, torch.Tensor) else tuple(self.sigma.shape)}"
