"""Learned proximal networks (LPN; Fang, Buchanan & Sulam, ICLR 2024).

An LPN is the gradient of an input-convex potential, ``f(x) = grad psi(x)``. By
Gribonval & Nikolova (2020) such a map is exactly the proximal operator of a
(possibly non-convex) regulariser ``R``,

    f(y) = argmin_x R(x) + 1/2 ||x - y||^2,
    R(x) = <y*, x> - 1/2 ||x||^2 - psi(y*),   y* = argmin_y psi(y) - <x, y>  (so f(y*) = x),

defined up to an additive constant. Trained on pairs ``(x + sigma noise, x)`` with the
proximal matching loss and ``gamma -> 0``, ``f`` approaches the MAP denoiser
``prox_{-sigma^2 log p}`` (the paper's Theorem 1); l2 gives the posterior mean, l1 the median.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from operators.base import conjugate_gradient, inner, per_item
from priors.base import Functional, on_parts

__all__ = ["LearnedProximalNetwork", "LearnedProxPrior", "GammaSchedule", "ScheduleStep",
           "proximal_matching_loss", "l1_loss", "l2_loss", "patchwise"]

NEWTON_CG_ITERATIONS = 50  # CG iterations per Newton step (inverse)
NEWTON_CG_RTOL = 1e-3  # relative CG residual per Newton step
BACKTRACKS = 40  # step halvings per Newton step


class LearnedProximalNetwork(nn.Module):
    r"""``f(x) = grad_x psi(x)`` for a convex potential ``psi`` (an ICNN).

    .. math:: f_\theta(x) = \nabla\psi_\theta(x) = \operatorname{prox}_{R_\theta}(x)

    Args:
        psi: a module mapping ``(B, ...)`` to ``(B,)``, convex in its input
            (``priors.nets.ICNN`` or ``ICNN1D``); its ``clamp_weights()``, when it has
            one, is what ``clamp_weights`` calls.

    ``forward`` builds the graph of ``f`` (``create_graph=True``) whenever autograd is
    on at the call, as in training or when differentiating through ``f``; under
    ``torch.no_grad()`` it enables autograd locally for the input only and returns a
    detached result.

    Shapes:
        x: whatever ``psi`` takes, ``(B, ...)``; the output has the same shape.

    Example:
        >>> import torch
        >>> from priors.nets import ICNN1D
        >>> f = LearnedProximalNetwork(ICNN1D(in_dim=1, alpha=0.5))
        >>> with torch.no_grad():
        ...     y = f(torch.zeros(4, 1))
        >>> y.shape, y.requires_grad
        (torch.Size([4, 1]), False)
    """

    def __init__(self, psi: nn.Module) -> None:
        super().__init__()
        self.psi = psi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.psi(xg).sum(), xg, create_graph=create)
        return g

    def clamp_weights(self) -> None:
        """Keep ``psi`` convex: clamp its non-negative weights (call after each optimiser step)."""
        clamp = getattr(self.psi, "clamp_weights", None)
        if clamp is not None:
            clamp()

    def inverse(self, x: torch.Tensor, max_iter: int = 50, tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """``y* = argmin_y psi(y) - <x, y>``, i.e. ``f(y*) = x``, by batched damped Newton-CG.

        Each batch item is its own convex problem, started at ``y = x``. A Newton step solves
        ``H d = x - f(y)`` (``H`` = Hessian of ``psi`` by double backward) by CG to a relative
        residual of 1e-3; each item's step is halved until ``||f(y) - x||`` decreases (Armijo).
        The residual stays accurate near the solution, where values of ``psi`` lose the digits
        a value-based line search needs: on small ICNNs, L-BFGS with Wolfe steps stalled at
        ``max |f(y) - x| ~ 5e-7`` in float64; this reaches 1e-12 (float64) and about 1e-6
        (float32) for inputs of order one. ``x`` must be in the range of ``f``, which holds
        when ``psi`` is strongly convex (``alpha > 0``).

        Args:
            x: points to invert, ``(B, ...)``.
            max_iter: Newton steps at most.
            tol: target for ``max |f(y) - x|`` per item (absolute, in the units of ``x``).

        Returns:
            ``(y, residual)``: ``y`` detached, like ``x``; ``residual`` = ``max |f(y) - x|`` per
            item ``(B,)``. A ``RuntimeWarning`` says when an item ends above ``tol``.
        """
        x, y = x.detach(), x.detach().clone()
        residual = _max_abs(_no_grad(self, y) - x)
        for _ in range(max_iter):
            if bool((residual <= tol).all()):
                break
            y, residual, moved = self._newton_step(y, x)
            if not moved:
                break
        if bool((residual > tol).any()):
            warnings.warn(f"LearnedProximalNetwork.inverse: max |f(y) - x| = {float(residual.max()):.2e} "
                          f"after at most {max_iter} Newton steps, above tol = {tol:.1e}", RuntimeWarning,
                          stacklevel=2)
        return y, residual

    def _newton_step(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One damped Newton step per item; returns ``(y, residual, any item moved)``."""
        with torch.enable_grad():
            yg = y.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.psi(yg).sum(), yg, create_graph=True)
            r = g.detach() - x

            def hessian(v: torch.Tensor) -> torch.Tensor:
                return torch.autograd.grad(g, yg, v, retain_graph=True)[0]

            d = conjugate_gradient(hessian, -r, torch.zeros_like(r), NEWTON_CG_ITERATIONS, tol=NEWTON_CG_RTOL)
        norm0, t = inner(r, r).sqrt(), torch.ones_like(r.flatten(1)[:, 0])
        for _ in range(BACKTRACKS):
            y_new = y + per_item(t, y.ndim) * d
            r_new = _no_grad(self, y_new) - x
            ok = inner(r_new, r_new).sqrt() <= (1 - 1e-4 * t) * norm0
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t / 2)
        y = torch.where(per_item(ok, y.ndim), y_new, y)
        return y, _max_abs(torch.where(per_item(ok, y.ndim), r_new, r)), bool(ok.any())

    def regulariser(self, x: torch.Tensor, max_iter: int = 50, tol: float = 1e-6) -> torch.Tensor:
        r"""The regulariser ``R`` whose prox is ``f``, at ``x``, up to an additive constant.

        .. math:: R(x) = \langle y^*, x\rangle - \tfrac12\|x\|^2 - \psi(y^*),\quad f(y^*) = x

        ``y*`` comes from ``inverse(x, max_iter, tol)`` (see there for the tolerance).

        Returns:
            ``R(x)`` per batch item, shape ``(B,)``, detached.
        """
        y, _ = self.inverse(x, max_iter=max_iter, tol=tol)
        with torch.no_grad():
            x = x.detach()
            return (y * x).flatten(1).sum(1) - 0.5 * x.flatten(1).square().sum(1) - self.psi(y)


def _max_abs(a: torch.Tensor) -> torch.Tensor:
    return a.abs().flatten(1).amax(1)


@torch.no_grad()
def _no_grad(fn, x: torch.Tensor) -> torch.Tensor:
    return fn(x)


class LearnedProxPrior(Functional):
    r"""A trained LPN as a prior with a proximal operator, for PnP/ADMM solvers.

    .. math:: \operatorname{prox}(x, \tau) = f_\theta(x)\quad(\tau\ \text{ignored})

    ``tau`` is ignored, as in the paper: ``f`` is the prox of one fixed regulariser ``R``
    learned at the training noise level, so the strength is set through the data term's
    scale and the ADMM penalty ``rho``. A complex ``x`` (MRI) gets the prox of ``R(Re x) + R(Im x)``,
    ``f`` applied to each part. No ``value``: ``R`` costs an inner solve
    (``LearnedProximalNetwork.regulariser``) and would not match a ``tau``-free prox.

    With ``patch_size``, ``f`` is applied to overlapping square patches
    (``stride`` apart, default half a patch; the last row and column of patches
    are aligned with the image border) and the overlaps are averaged, as the paper
    does for 512x512 CT. The average of proxes is not a prox: patch-wise
    application breaks the exact-prox property.

    Args:
        network: the trained ``LearnedProximalNetwork``.
        patch_size: side of the square patches, or None for the whole image.
        stride: step between patches (default ``patch_size // 2``).
        patch_batch: patches per network call (bounds memory).

    Shapes:
        x: ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    Example:
        >>> import torch
        >>> from priors.nets import ICNN
        >>> prior = LearnedProxPrior(LearnedProximalNetwork(ICNN(hidden=4, strides=(1,))), patch_size=8)
        >>> with torch.no_grad():
        ...     prior.prox(torch.rand(2, 1, 12, 12), 0.5).shape
        torch.Size([2, 1, 12, 12])
    """

    has_prox = True

    def __init__(self, network: LearnedProximalNetwork, patch_size: int | None = None, stride: int | None = None,
                 patch_batch: int = 64) -> None:
        super().__init__()
        if patch_size is not None and int(patch_size) < 1:
            raise ValueError(f"patch_size: expected a positive integer or None, got {patch_size!r}")
        if stride is not None and (patch_size is None or not 1 <= int(stride) <= int(patch_size)):
            raise ValueError(f"stride: expected an integer in [1, patch_size] with a patch_size, got {stride!r}")
        if int(patch_batch) < 1:
            raise ValueError(f"patch_batch: expected a positive integer, got {patch_batch!r}")
        self.network, self.patch_size, self.patch_batch = network, patch_size, int(patch_batch)
        self.stride = stride if stride is not None or patch_size is None else max(1, int(patch_size) // 2)

    def _prox(self, x: torch.Tensor, tau) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"x: expected a 4-D tensor (B, C, H, W), got shape {tuple(x.shape)}")
        if x.is_complex():  # the prox of psi(Re x) + psi(Im x): one real image per part
            return on_parts(lambda parts: self._prox(parts, tau), x)
        if self.patch_size is None:
            return self.network(x)
        return patchwise(self.network, x, int(self.patch_size), int(self.stride), self.patch_batch)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, stride={self.stride}"


def _starts(n: int, patch: int, stride: int) -> list[int]:
    """Patch origins along an axis of length ``n``; the last patch ends at the border."""
    starts = list(range(0, n - patch + 1, stride))
    return starts if starts[-1] == n - patch else starts + [n - patch]


def patchwise(fn, x: torch.Tensor, patch_size: int, stride: int, patch_batch: int = 64) -> torch.Tensor:
    """Apply ``fn`` to overlapping ``patch_size``-square patches of ``x`` and average the overlaps.

    Args:
        fn: a map ``(N, C, p, p) -> (N, C, p, p)``.
        x: images ``(B, C, H, W)`` with ``H, W >= patch_size``.
        patch_size: patch side ``p``.
        stride: step between patch origins; the last patches touch the border.
        patch_batch: patch positions per call of ``fn`` (each call sees ``B`` times as many patches).

    Returns:
        ``(B, C, H, W)``; every pixel is covered at least once.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 1, 10, 7)
        >>> torch.allclose(patchwise(lambda p: 2 * p, x, 4, 3), 2 * x)
        True
    """
    H, W = x.shape[-2:]
    if not 1 <= stride <= patch_size:
        raise ValueError(f"stride: expected an integer in [1, patch_size = {patch_size}], got {stride!r}")
    if H < patch_size or W < patch_size:
        raise ValueError(f"x: expected H and W >= patch_size = {patch_size}, got shape {tuple(x.shape)}")
    boxes = [(i, j) for i in _starts(H, patch_size, stride) for j in _starts(W, patch_size, stride)]
    out = torch.zeros_like(x)
    count = x.new_zeros((1, 1, H, W))
    for k in range(0, len(boxes), patch_batch):
        part = boxes[k:k + patch_batch]
        res = fn(torch.cat([x[..., i:i + patch_size, j:j + patch_size] for i, j in part]))
        for (i, j), r in zip(part, res.split(x.shape[0])):
            out[..., i:i + patch_size, j:j + patch_size] += r
            count[..., i:i + patch_size, j:j + patch_size] += 1
    return out / count


def _difference(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat: expected the shape of x {tuple(x.shape)}, got {tuple(x_hat.shape)}")
    return x_hat - x


def _sq_dist(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _difference(x_hat, x).flatten(1).square().sum(1)


def proximal_matching_loss(x_hat: torch.Tensor, x: torch.Tensor, gamma: float) -> torch.Tensor:
    r"""Proximal matching loss, averaged over the batch (without the paper's ``(pi gamma^2)^{-n/2}``).

    .. math:: \ell_{PM}(\hat x, x;\gamma) = 1 - \exp(-\|\hat x - x\|_2^2 / \gamma^2)

    Args:
        x_hat: estimates ``(B, ...)``.
        x: targets, same shape.
        gamma: the radius ``> 0``; the paper uses ``0.08 sqrt(C H W)`` as its last value.

    Returns:
        A scalar tensor in ``[0, 1)``.

    Example:
        >>> import torch
        >>> proximal_matching_loss(torch.ones(2, 3), torch.zeros(2, 3), gamma=3 ** 0.5)
        tensor(0.6321)
    """
    if not gamma > 0:
        raise ValueError(f"gamma: expected a positive number, got {gamma!r}")
    return (1 - torch.exp(-_sq_dist(x_hat, x) / gamma ** 2)).mean()


def l1_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements (the paper's pre-training loss)."""
    return _difference(x_hat, x).abs().mean()


def l2_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements."""
    return _sq_dist(x_hat, x).sum() / x.numel()


class ScheduleStep(NamedTuple):
    """What to do at one training step: the loss kind (``"l1"``, ``"l2"`` or ``"pm"``), gamma, lr."""

    kind: str
    gamma: float | None
    lr: float

    def loss(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The step's loss of ``x_hat`` against ``x``."""
        if self.kind not in ("l1", "l2", "pm"):
            raise ValueError(f"kind: expected 'l1', 'l2' or 'pm', got {self.kind!r}")
        if self.kind == "pm":
            return proximal_matching_loss(x_hat, x, self.gamma)
        return l1_loss(x_hat, x) if self.kind == "l1" else l2_loss(x_hat, x)


@dataclass(frozen=True)
class GammaSchedule:
    r"""The paper's training schedule: l1 pre-training, then proximal matching with decreasing gamma.

    .. math:: \gamma_s = \gamma_{min}\, 2^{S-1-s},\quad s = 0, \dots, S-1

    Steps ``[0, pretrain_steps)`` use the l1 loss at ``pretrain_lr``; the remaining
    ``num_steps - pretrain_steps`` are cut into ``num_stages`` equal stages of proximal
    matching at ``lr`` (with ``S = 4``: ``gamma = 8, 4, 2, 1 x gamma_min``). Steps at or
    past ``num_steps`` stay in the last stage. Defaults are the paper's image settings.

    Example:
        >>> s = GammaSchedule.for_images(1, 128, 128)
        >>> s(0), [round(s(k).gamma, 2) for k in (20_000, 25_000, 30_000, 39_999)]
        (ScheduleStep(kind='l1', gamma=None, lr=0.001), [81.92, 40.96, 20.48, 10.24])
    """

    gamma_min: float
    num_steps: int = 40_000
    pretrain_steps: int = 20_000
    num_stages: int = 4
    pretrain_lr: float = 1e-3
    lr: float = 1e-4

    def __post_init__(self) -> None:
        if not self.gamma_min > 0:
            raise ValueError(f"gamma_min: expected a positive number, got {self.gamma_min!r}")
        if self.num_stages < 1:
            raise ValueError(f"num_stages: expected a positive integer, got {self.num_stages!r}")
        if not 0 <= self.pretrain_steps <= self.num_steps - self.num_stages:
            raise ValueError(f"pretrain_steps: expected 0 <= pretrain_steps <= num_steps - num_stages = "
                             f"{self.num_steps - self.num_stages}, got {self.pretrain_steps!r}")

    @classmethod
    def for_images(cls, channels: int, height: int, width: int, **kwargs) -> GammaSchedule:
        """The paper's rule ``gamma_min = 0.08 sqrt(C H W)`` (10.24 for 128x128 grey)."""
        return cls(gamma_min=0.08 * (channels * height * width) ** 0.5, **kwargs)

    def __call__(self, step: int) -> ScheduleStep:
        if step < 0:
            raise ValueError(f"step: expected an integer >= 0, got {step!r}")
        if step < self.pretrain_steps:
            return ScheduleStep("l1", None, self.pretrain_lr)
        per_stage = (self.num_steps - self.pretrain_steps) // self.num_stages
        stage = min((step - self.pretrain_steps) // per_stage, self.num_stages - 1)
        return ScheduleStep("pm", self.gamma_min * 2 ** (self.num_stages - 1 - stage), self.lr)
