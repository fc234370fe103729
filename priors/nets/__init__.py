"""Networks used by the learned priors: a U-Net and input-convex networks (ICNN)."""

from priors.nets.icnn import ICNN, ICNN1D, init_nonnegative_
from priors.nets.unet import UNet

__all__ = ["UNet", "ICNN", "ICNN1D", "init_nonnegative_"]
