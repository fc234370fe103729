"""Problems, solvers, FBP and metrics."""

from recon.base import Result, Solver
from recon.chambolle_pock import ChambollePock
from recon.learned.unrolled import Unrolled, UnrolledISTA
from recon.pnp import PnPADMM, PnPProximalGradient
from recon.problem import Problem

__all__ = ["Problem", "Solver", "Result", "ChambollePock", "PnPADMM", "PnPProximalGradient", "Unrolled", "UnrolledISTA"]
