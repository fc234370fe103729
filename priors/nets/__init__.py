"""Networks used by the learned priors: a U-Net, the RISING network around it, learned primal-dual, unrolled
ISTA with CNN proxes, a noise-conditional U-Net and input-convex networks (ICNN)."""

from priors.nets.icnn import ICNN, ICNN1D, init_nonnegative_
from priors.nets.lpd import LearnedPrimalDual
from priors.nets.noise_unet import NoiseUNet
from priors.nets.rising import RisingNet
from priors.nets.unet import UNet, apply_unit_free
from priors.nets.unrolled_ista import UnrolledISTANet

__all__ = ["UNet", "apply_unit_free", "RisingNet", "LearnedPrimalDual", "UnrolledISTANet", "NoiseUNet", "ICNN",
           "ICNN1D", "init_nonnegative_"]
