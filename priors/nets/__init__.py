"""Networks used by the learned priors: a U-Net, a noise-conditional U-Net and input-convex networks (ICNN)."""

from priors.nets.icnn import ICNN, ICNN1D, init_nonnegative_
from priors.nets.noise_unet import NoiseUNet
from priors.nets.unet import UNet

__all__ = ["UNet", "NoiseUNet", "ICNN", "ICNN1D", "init_nonnegative_"]
