"""Forward models: linear operators, their algebra, finite differences and CT on ASTRA."""

from operators.base import Adjoint, Composed, Identity, LinearOperator, Scaled, Stack, Sum, inner
from operators.cone import ConeBeam3D
from operators.ct import FanBeam2D, ParallelBeam2D
from operators.finite_diff import FiniteDifference

__all__ = [
    "LinearOperator", "Adjoint", "Composed", "Sum", "Scaled", "Stack", "Identity", "inner",
    "FiniteDifference", "ParallelBeam2D", "FanBeam2D", "ConeBeam3D",
]
