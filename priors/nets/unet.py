"""A small configurable U-Net (Ronneberger et al. 2015) for image-to-image maps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "apply_unit_free", "eval_output"]

NORMS = ("batch", "group", None)
GROUPS = 8  # group norm: gcd(8, channels) groups


def _norm(kind: str | None, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(GROUPS, channels), channels)
    return nn.Identity()


def _block(c_in: int, c_out: int, norm: str | None) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by the normalisation and a ReLU."""
    layers: list[nn.Module] = []
    for a, b in ((c_in, c_out), (c_out, c_out)):
        layers += [nn.Conv2d(a, b, 3, padding=1, bias=norm is None), _norm(norm, b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    r"""U-Net: ``len(channels)`` levels, 2x2 max-pooling down, 2x2 transposed convolutions up.

    .. math:: y = x + \mathrm{net}(x)\ \text{(residual)}\quad\text{or}\quad y = \mathrm{net}(x)

    Each level has two 3x3 convolution + normalisation + ReLU blocks; the decoder
    concatenates the encoder features of the same level; a 1x1 convolution maps to
    ``out_channels``. The defaults have 0.47 M parameters (1.9 MB in float32).

    Args:
        in_channels: input channels.
        out_channels: output channels (equal to ``in_channels`` when ``residual``).
        channels: feature channels per level; ``depth = len(channels)``.
        residual: add the input to the output (a denoiser learns the noise).
        norm: ``"batch"``, ``"group"`` (``gcd(8, channels)`` groups) or None.

    Shapes:
        x: ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by
        ``2**(depth - 1)`` -> ``(B, out_channels, H, W)``.

    Example:
        >>> import torch
        >>> net = UNet(channels=(8, 16, 32), norm="group")
        >>> net(torch.randn(2, 1, 12, 20)).shape
        torch.Size([2, 1, 12, 20])
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, channels: Sequence[int] = (32, 64, 128),
                 residual: bool = True, norm: str | None = "batch") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
        if len(channels) < 1 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels: expected a non-empty sequence of positive integers, got {tuple(channels)}")
        if residual and in_channels != out_channels:
            raise ValueError(f"out_channels: a residual U-Net needs out_channels == in_channels = {in_channels}, "
                             f"got {out_channels}")
        chans = [int(c) for c in channels]
        self.in_channels, self.depth, self.residual = int(in_channels), len(chans), bool(residual)
        self.down = nn.ModuleList(_block(a, b, norm) for a, b in zip([in_channels] + chans[:-1], chans))
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(chans[:-1], chans[1:]))
        self.merge = nn.ModuleList(_block(2 * a, a, norm) for a in chans[:-1])
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        m = 2 ** (self.depth - 1)
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"x: expected H and W divisible by 2**(depth - 1) = {m} (depth {self.depth}), "
                             f"got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        skips, h = [], x
        for k, block in enumerate(self.down):
            h = block(self.pool(h) if k else h)
            skips.append(h)
        for k in reversed(range(self.depth - 1)):
            h = self.merge[k](torch.cat([skips[k], self.up[k](h)], dim=1))
        out = self.head(h)
        return x + out if self.residual else out


def apply_unit_free(unet: UNet, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * unet(x / scale)`` per item, padding ``x`` to the U-Net's multiple and cropping back.

    Dividing by an intensity scale per item (``(B,)`` or a number) makes the network see the same numbers
    whether the image is in 1/mm or in [0, 1]; the sides need not be multiples of ``2**(depth - 1)``
    (reflect padding, or replicate where the image is too small to reflect).

    Example:
        >>> net = UNet(channels=(4, 8), residual=False, norm="group")
        >>> x = torch.rand(2, 1, 30, 30)
        >>> torch.allclose(apply_unit_free(net, 1e-3 * x, 1e-3 * torch.ones(2)), 1e-3 * apply_unit_free(net, x, 1.0),
        ...                atol=1e-9)
        True
    """
    s = torch.as_tensor(scale, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    m = 2 ** (unet.depth - 1)
    H, W = x.shape[-2:]
    ph, pw = -H % m, -W % m
    z = x / s
    if ph or pw:
        z = F.pad(z, (0, pw, 0, ph), mode="reflect" if min(H, W) > max(ph, pw) else "replicate")
    return unet(z)[..., :H, :W] * s


@torch.no_grad()
def eval_output(network: nn.Module, *args) -> torch.Tensor:
    """``network(*args)`` in eval mode without gradients, leaving the network in the mode it was in."""
    mode = network.training
    network.eval()
    try:
        return network(*args)
    finally:
        network.train(mode)
