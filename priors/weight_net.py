"""The SV-TV weight network: a U-Net from an FBP image to the ground truth's gradient magnitude.

SV-TV weights ``w = (eta s / sqrt((eta s)^2 + g^2))^(1 - p)`` need the edge map ``g = |grad x|``
of the unknown image. Differencing a fast pre-estimate (FBP, TV) gives streaks and noise as
edges, or misses low-contrast ones; the "gradient-focused training" of the SV-TV papers instead
trains a network to predict ``|grad x_true|`` from the FBP directly, and the weights are built from
its output (``SpaceVariantTV.from_magnitude``).
"""

from __future__ import annotations

import torch
from torch import nn

from operators.finite_diff import FiniteDifference
from priors.nets import UNet
from priors.nets.unet import apply_unit_free, eval_output
from priors.tv import group_magnitude, intensity_scale

__all__ = ["GradientMagnitudeNet", "gradient_magnitude"]


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """``|grad x|`` per pixel with the forward differences TV uses, ``(B, 1, H, W)`` -> ``(B, 1, H, W)``.

    Example:
        >>> x = torch.zeros(1, 1, 4, 4); x[..., 2:] = 1.0
        >>> gradient_magnitude(x)[0, 0, 0].tolist()
        [0.0, 1.0, 0.0, 0.0]
    """
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"x: expected shape (B, 1, H, W), got {tuple(x.shape)}")
    return group_magnitude(FiniteDifference(x.shape[1:])(x), keepdim=False)


class GradientMagnitudeNet(nn.Module):
    r"""Predict ``|grad x_true|`` from an FBP image ``x_fbp``; the output is ``>= 0`` in ``x_fbp``'s units.

    .. math:: g = s\,\max(0, \mathrm{UNet}(x_{fbp}/s)),\qquad s = \mathrm{intensity\_scale}(x_{fbp})

    Dividing by the per-item intensity scale ``s`` (0.99-quantile of ``|x_fbp|``) makes the network
    see the same numbers whether the image is in 1/mm or in [0, 1]. Inputs whose sides are not
    multiples of ``2**(depth - 1)`` are reflect-padded and cropped back.

    Args:
        unet: a ``UNet`` with one input and one output channel and ``residual=False``.

    Shapes:
        x: ``(B, 1, H, W)`` -> ``(B, 1, H, W)``.

    Example:
        >>> net = GradientMagnitudeNet(UNet(channels=(4, 8), residual=False, norm="group"))
        >>> g = net.gradient_magnitude(torch.rand(2, 1, 30, 30))
        >>> g.shape, bool((g >= 0).all())
        (torch.Size([2, 1, 30, 30]), True)
    """

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        if not isinstance(unet, UNet) or unet.residual or unet.in_channels != 1 or unet.head.out_channels != 1:
            raise ValueError("unet: expected a UNet with in_channels=1, out_channels=1 and residual=False")
        self.unet = unet

    def raw(self, x: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """The network's unclipped output in ``x``'s units (what training fits to ``|grad x_true|``).

        ``scale``: the intensity scale ``s`` (a number or ``(B,)``); None computes it from ``x``.
        Training on patches passes the whole image's scale (a patch's own quantile is not it)."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"x: expected an FBP image of shape (B, 1, H, W), got {tuple(x.shape)}")
        return apply_unit_free(self.unet, x, intensity_scale(x) if scale is None else scale)

    def forward(self, x: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        return self.raw(x, scale).clamp_min(0)

    def gradient_magnitude(self, x_fbp: torch.Tensor) -> torch.Tensor:
        """The predicted edge map, detached, in eval mode (what SV-TV's weights are built from)."""
        return eval_output(self, x_fbp)
