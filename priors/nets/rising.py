"""The RISING network: a residual U-Net that completes the iterations of a model-based solver."""

from __future__ import annotations

import torch
from torch import nn

from priors.nets.unet import UNet, apply_unit_free
from priors.tv import intensity_scale

__all__ = ["RisingNet"]


class RisingNet(nn.Module):
    r"""``x_k -> x_IS``: from ``k`` iterations of a solver to (an estimate of) its converged solution.

    .. math:: \hat x = \max\big(0,\ s\,\mathrm{UNet}(x_k / s)\big),\qquad s = \mathrm{intensity\_scale}(x_k)

    The U-Net is residual (it learns the missing iterations' change; its last layer starts at zero, so
    the untrained network returns ``x_k``) and unit-free through the
    per-item intensity scale ``s``, so a model trained on images in [0, 1] applies to images in 1/mm;
    fully convolutional, it applies to any image size (trained on patches). RISING: Evangelista,
    Morotti & Loli Piccolomini, Comput. Med. Imaging Graph. 103 (2023).

    Args:
        unet: a residual ``UNet`` with one input and one output channel.

    Shapes:
        x: ``(B, 1, H, W)`` -> ``(B, 1, H, W)``.

    Example:
        >>> net = RisingNet(UNet(channels=(4, 8), residual=True, norm="group"))
        >>> x = torch.rand(2, 1, 30, 30)
        >>> torch.allclose(net(x), x)  # untrained, the residual is zero: the k iterations unchanged
        True
    """

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        if not isinstance(unet, UNet) or not unet.residual or unet.in_channels != 1:
            raise ValueError("unet: expected a residual UNet with one input channel")
        nn.init.zeros_(unet.head.weight)  # start as the identity: training only adds what x_k lacks
        nn.init.zeros_(unet.head.bias)
        self.unet = unet

    def raw(self, x: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """The unclipped output in ``x``'s units (what training fits to ``x_IS``); ``scale`` as
        ``GradientMagnitudeNet.raw``: None computes it from ``x`` (training on patches passes the image's)."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"x: expected an image of shape (B, 1, H, W), got {tuple(x.shape)}")
        return apply_unit_free(self.unet, x, intensity_scale(x) if scale is None else scale)

    def forward(self, x: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        return self.raw(x, scale).clamp_min(0)
