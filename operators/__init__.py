"""Forward models: linear operators and their algebra, finite differences, CT on ASTRA,
Cartesian MRI (single- and multi-coil) with sampling masks and coil maps, blur, and dense matrices."""

from operators.base import Adjoint, Composed, Identity, LinearOperator, Scaled, Stack, Sum, conjugate_gradient, inner
from operators.blur import Blur, box_kernel, gaussian_kernel, motion_kernel
from operators.coils import calibration_region, espirit_maps, rss
from operators.cone import ConeBeam3D
from operators.ct import FanBeam2D, ParallelBeam2D
from operators.finite_diff import FiniteDifference
from operators.fourier import fft2c, ifft2c
from operators.masks import MASK_TYPES, acceleration_of, equispaced_mask, make_mask, poisson_disc_mask, random_mask
from operators.matrix import MatrixOperator
from operators.mri import CartesianMRI, MultiCoilMRI

__all__ = [
    "LinearOperator", "Adjoint", "Composed", "Sum", "Scaled", "Stack", "Identity", "inner", "conjugate_gradient",
    "FiniteDifference", "ParallelBeam2D", "FanBeam2D", "ConeBeam3D",
    "CartesianMRI", "MultiCoilMRI", "fft2c", "ifft2c", "espirit_maps", "calibration_region", "rss",
    "MASK_TYPES", "make_mask", "random_mask", "equispaced_mask", "poisson_disc_mask", "acceleration_of",
    "Blur", "gaussian_kernel", "box_kernel", "motion_kernel", "MatrixOperator",
]
