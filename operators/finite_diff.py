"""Forward finite differences (the discrete gradient) with its exact adjoint."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from operators.base import LinearOperator

__all__ = ["FiniteDifference"]


class FiniteDifference(LinearOperator):
    r"""Discrete gradient by forward differences with a zero (Neumann) last row.

    .. math:: (\nabla x)_k[i] = (x[i + e_k] - x[i]) / h \text{ if } i_k < n_k - 1 \text{ else } 0

    The adjoint is minus the matching backward-difference divergence, exact to
    rounding error.

    Args:
        in_shape: shape of one item, e.g. ``(C, H, W)``.
        ndim: number of trailing axes to differentiate (2 for images, 3 for volumes).
        spacing: grid spacing ``h`` (for example the pixel size in mm); 1 gives
            plain pixel differences.

    Shapes:
        ``(B, *in_shape) -> (B, ndim, *in_shape)``; component ``k`` differentiates
        axis ``-ndim + k`` (so for images: 0 = rows/vertical, 1 = columns/horizontal).

    Example:
        >>> import torch
        >>> D = FiniteDifference((1, 4, 4))
        >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
        >>> D(x)[0, 1, 0, 0]
        tensor([1., 1., 1., 0.])
    """

    native_autograd = True

    def __init__(self, in_shape: Sequence[int], ndim: int = 2, spacing: float = 1.0) -> None:
        in_shape = tuple(int(s) for s in in_shape)
        if not 1 <= ndim <= len(in_shape):
            raise ValueError(f"ndim: expected 1..{len(in_shape)} for in_shape {in_shape}, got {ndim}")
        if not spacing > 0:
            raise ValueError(f"spacing: expected a positive number, got {spacing}")
        super().__init__(in_shape, (ndim, *in_shape))
        self.ndim_diff, self.spacing = ndim, float(spacing)

    def _axes(self, x: torch.Tensor) -> range:
        return range(x.ndim - self.ndim_diff, x.ndim)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for ax in self._axes(x):
            d = torch.diff(x, dim=ax)
            pad = [0, 0] * (x.ndim - 1 - ax) + [0, 1]
            parts.append(torch.nn.functional.pad(d, pad))
        return torch.stack(parts, dim=1) / self.spacing

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._transpose(y, sign=-1.0)

    def _transpose(self, y: torch.Tensor, sign: float) -> torch.Tensor:
        """``D^T y`` (``sign = -1``: minus the backward-difference divergence) or ``|D|^T y`` (``sign = 1``).

        Row ``i`` of component ``k`` holds ``x[i + e_k] - x[i]``, so it sends ``+g[i]`` to ``i + e_k``
        and ``sign * g[i]`` to ``i``; the last row (``g[n-1]``, zero by construction) sends nothing.
        """
        out = torch.zeros_like(y[:, 0])
        for k, ax in enumerate(self._axes(out)):
            n = y.shape[ax + 1]
            inner = y[:, k].narrow(ax, 0, n - 1)
            out.narrow(ax, 0, n - 1).add_(inner, alpha=sign)
            out.narrow(ax, 1, n - 1).add_(inner)
        return out / self.spacing

    def abs_row_sums(self, like: torch.Tensor) -> torch.Tensor:
        ones = torch.ones((1, *self.in_shape), dtype=like.real.dtype, device=like.device)
        return self._valid(ones) * (2.0 / self.spacing)

    def abs_col_sums(self, like: torch.Tensor) -> torch.Tensor:
        ones = torch.ones((1, *self.in_shape), dtype=like.real.dtype, device=like.device)
        return self._transpose(self._valid(ones), sign=1.0)

    def _valid(self, ones: torch.Tensor) -> torch.Tensor:
        """Mask (1, ndim, *in_shape) of the output entries that are not the zero last row."""
        parts = []
        for ax in self._axes(ones):
            m = torch.ones_like(ones)
            m.narrow(ax, m.shape[ax] - 1, 1).zero_()
            parts.append(m)
        return torch.stack(parts, dim=1)

    def norm(self, *args, **kwargs) -> float:
        """``2 sqrt(ndim) / h``: the exact norm's limit as the grid grows, an upper bound
        for every size (safer for step sizes than a power iteration that stops short)."""
        return 2.0 * self.ndim_diff ** 0.5 / self.spacing

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, ndim={self.ndim_diff}, spacing={self.spacing}"
