"""RISING: a few iterations of TV, then a network that completes them (``reconstruct(A, y, "rising")``).

RISING (Evangelista, Morotti & Loli Piccolomini, Comput. Med. Imaging Graph. 103, 2023) runs ``k``
iterations of a model-based solver, ``x_k``, and maps them with a network trained to give the
converged solution ``x_IS`` (not the ground truth): the variational problem stays the target, at a
fraction of its time. Here the solver is ``reconstruct``'s TV (Chambolle-Pock from FBP, x >= 0, the
weight rule) and the network a residual U-Net (``priors.nets.RisingNet``) trained by
``recon train rising`` on pairs ``(x_k, x_IS)`` of simulated sinograms. The model's card records the
geometry it was trained for and ``k``; data of another geometry is refused, naming both
(``recon.models.check_geometry``).
"""

from __future__ import annotations

__all__ = ["rising_iterations"]


def rising_iterations(card: dict, iterations: int | None, path) -> int:
    """The early iterations ``k``: the card's; an ``iterations`` other than it is refused."""
    k = int(card.get("rising", {}).get("iterations", 0))
    if k < 1:
        raise ValueError(f"model: the card of {path} lacks rising.iterations (the TV iterations of its input)")
    if iterations is not None and int(iterations) != k:
        raise ValueError(f"iterations: the RISING model {path} completes {k} TV iterations; got {iterations} "
                         "(leave it unset)")
    return k

