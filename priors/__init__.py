"""Functionals: priors (TV, space-variant TV, graph Laplacian), constraints and data terms."""

from priors.base import Functional, ScaledFunctional, SumFunctional, Zero
from priors.constraints import Box, NonNegativity, PixelBox
from priors.data import L2Fidelity, SquaredL2Distance
from priors.denoiser import DenoiserPrior, FixedSigmaDenoiser, geometric_ensemble, noise_level
from priors.diffusion import DiffusionPrior, VPSchedule
from priors.graph_laplacian import GraphLaplacian, GraphLaplacianPrior
from priors.learned_prox import LearnedProximalNetwork, LearnedProxPrior
from priors.sparsity import L0Norm
from priors.tv import TV, L1Norm, L21Norm, SpaceVariantTV, WeightedNorm, adaptive_tv_weights

__all__ = [
    "Functional", "ScaledFunctional", "SumFunctional", "Zero",
    "TV", "SpaceVariantTV", "WeightedNorm", "adaptive_tv_weights", "GraphLaplacian", "GraphLaplacianPrior",
    "L1Norm", "L0Norm", "L21Norm", "Box", "NonNegativity", "PixelBox", "L2Fidelity", "SquaredL2Distance",
    "DenoiserPrior", "FixedSigmaDenoiser", "geometric_ensemble", "noise_level", "DiffusionPrior", "VPSchedule",
    "LearnedProximalNetwork", "LearnedProxPrior",
]
