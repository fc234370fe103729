"""A U-Net conditioned on the noise level: the network ``F(x, c_noise)`` of a diffusion prior."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NoiseUNet"]

GROUPS = 8  # group norm: gcd(8, channels) groups


def _embed(c_noise: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the noise level: ``(B,) -> (B, dim)`` (frequencies 1 to 1000, geometric)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), half, device=c_noise.device, dtype=c_noise.dtype))
    angles = c_noise[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _Block(nn.Module):
    """Two 3x3 convolutions with group norm and SiLU; the noise embedding scales and shifts the
    first one's features (FiLM); a 1x1 convolution carries the input around them."""

    def __init__(self, c_in: int, c_out: int, embedding: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(math.gcd(GROUPS, c_out), c_out)
        self.norm2 = nn.GroupNorm(math.gcd(GROUPS, c_out), c_out)
        self.film = nn.Linear(embedding, 2 * c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(self.conv1(x)) * (1 + scale) + shift)
        return self.skip(x) + F.silu(self.norm2(self.conv2(h)))


class NoiseUNet(nn.Module):
    r"""U-Net ``F(x, c_noise)``: ``len(channels)`` levels, 2x2 average pooling down, nearest-neighbour
    upsampling and a 3x3 convolution up, skip connections by concatenation, every block conditioned on
    sinusoidal features of ``c_noise`` through an MLP (scale and shift of its features).

    Fully convolutional: any ``H x W`` (reflect-padded to a multiple of ``2**(depth - 1)`` and cropped
    back), so a model trained on patches applies to whole images. Group norm (per sample): batched
    equals looped. The output layer starts at zero, so an untrained ``DiffusionPrior`` is
    ``c_skip * x``, the best linear denoiser for data of standard deviation ``sigma_data``.

    Args:
        in_channels: image channels (output the same).
        channels: feature channels per level.
        embedding: width of the noise embedding.

    Shapes:
        x: ``(B, C, H, W)``, c_noise: ``(B,)`` -> ``(B, C, H, W)``.

    Example:
        >>> net = NoiseUNet(channels=(8, 16), embedding=16)
        >>> net(torch.randn(2, 1, 13, 10), torch.zeros(2)).shape
        torch.Size([2, 1, 13, 10])
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128), embedding: int = 128) -> None:
        super().__init__()
        chans = [int(c) for c in channels]
        if not chans or min(chans) < 1:
            raise ValueError(f"channels: expected a non-empty sequence of positive integers, got {tuple(channels)}")
        if isinstance(embedding, bool) or not isinstance(embedding, int) or embedding < 2 or embedding % 2:
            raise ValueError(f"embedding: expected an even integer >= 2, got {embedding!r}")
        self.in_channels, self.depth, self.embedding = int(in_channels), len(chans), embedding
        self.mlp = nn.Sequential(nn.Linear(embedding, embedding), nn.SiLU(), nn.Linear(embedding, embedding))
        self.down = nn.ModuleList(_Block(a, b, embedding) for a, b in zip([in_channels] + chans[:-1], chans))
        self.up = nn.ModuleList(nn.Conv2d(b, a, 3, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        self.merge = nn.ModuleList(_Block(2 * a, a, embedding) for a in chans[:-1])
        self.head = nn.Conv2d(chans[0], in_channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        c_noise = torch.as_tensor(c_noise, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.mlp(_embed(c_noise, self.embedding))
        H, W = x.shape[-2:]
        m = 2 ** (self.depth - 1)
        pad_h, pad_w = -H % m, -W % m
        if pad_h or pad_w:
            mode = "reflect" if pad_h < H and pad_w < W else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        h = x
        for k, block in enumerate(self.down):
            h = block(F.avg_pool2d(h, 2) if k else h, emb)
            skips.append(h)
        for k in reversed(range(self.depth - 1)):
            h = self.up[k](F.interpolate(h, scale_factor=2, mode="nearest"))
            h = self.merge[k](torch.cat([skips[k], h], dim=1), emb)
        return self.head(h)[..., :H, :W]
