"""Priors on complex images (MRI): the complex l1 norm's prox against a brute-force minimisation,
real inputs untouched, and a contract every ``Functional`` in ``priors`` keeps: its prox on a
complex image is either correct (checked by optimality) or refused with an error naming the dtype."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import priors
from operators import Identity
from priors import (Box, DenoiserPrior, FixedSigmaDenoiser, GraphLaplacianPrior, L1Norm, L21Norm, L2Fidelity,
                    LearnedProximalNetwork, LearnedProxPrior, NonNegativity, SpaceVariantTV, SquaredL2Distance, TV,
                    WeightedNorm, Zero)
from priors.base import Functional, ScaledFunctional, SumFunctional
from priors.constraints import PixelBox
from priors.sparsity import L0Norm
from priors.nets.icnn import ICNN

N = 8


def _complex(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=gen, dtype=torch.float64),
                         torch.randn(shape, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("tau", [0.3, 1.5])
def test_complex_l1_prox_matches_a_brute_force_minimisation(tau):
    z = _complex(1, 24, seed=1)
    ours = L1Norm().prox(z, tau)[0].numpy()
    for k, zk in enumerate(z[0].numpy()):
        def cost(v, zk=zk):
            return tau * np.hypot(v[0], v[1]) + 0.5 * ((v[0] - zk.real) ** 2 + (v[1] - zk.imag) ** 2)
        best = minimize(cost, [zk.real, zk.imag], method="Nelder-Mead",
                        options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 4000}).x
        assert abs(ours[k] - complex(*best)) < 1e-6, (k, zk, ours[k], best)


def test_complex_l1_conjugate_prox_is_the_projection_onto_the_unit_disc():
    z = 3 * _complex(1, 50, seed=2)
    p = L1Norm().conj_prox(z, 0.7)
    assert float(p.abs().max()) <= 1 + 1e-12
    inside = z.abs() <= 1
    assert torch.equal(p[inside], z[inside])
    torch.testing.assert_close(torch.angle(p), torch.angle(z))
    for tau in (0.2, 2.0):  # Moreau: z = prox_{tau f}(z) + tau prox_{f* / tau}(z / tau)
        torch.testing.assert_close(L1Norm().prox(z, tau) + tau * L1Norm().conj_prox(z / tau, 1 / tau), z)


def test_real_l1_is_unchanged_bit_for_bit():
    z = torch.randn(3, 2, N, N, generator=torch.Generator().manual_seed(3))
    assert torch.equal(L1Norm().prox(z, 0.4), torch.sign(z) * torch.clamp(z.abs() - 0.4, min=0))
    assert torch.equal(L1Norm().conj_prox(z, 0.4), torch.clamp(z, -1.0, 1.0))


def _denoiser(x, sigma):  # a smooth, nonlinear, image-wise "denoiser"
    return torch.tanh(x) * (1 + 0 * sigma)


def _weights() -> torch.Tensor:
    return torch.rand(1, N, N, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.1


#: every Functional of ``priors`` on a complex input: (instance, input shape, expected: "prox", "parts" or "refuses")
#: "prox": checked by the prox's optimality; "parts": a real-image prior applied to the real and imaginary parts
CASES = {
    "L1Norm": (lambda: L1Norm(), (1, 2, N, N), "prox"),
    "L21Norm": (lambda: L21Norm(), (1, 2, N, N), "prox"),
    "WeightedNorm": (lambda: WeightedNorm(_weights()), (1, 2, N, N), "prox"),
    "WeightedNorm-anisotropic": (lambda: WeightedNorm(_weights(), isotropic=False), (1, 2, N, N), "prox"),
    "TV": (lambda: TV(prox_iterations=4000), (1, 1, N, N), "prox"),
    "TV-anisotropic": (lambda: TV(isotropic=False, prox_iterations=4000), (1, 1, N, N), "prox"),
    "SpaceVariantTV": (lambda: SpaceVariantTV(_weights()[None], prox_iterations=4000), (1, 1, N, N), "prox"),
    "SpaceVariantTV-anisotropic": (lambda: SpaceVariantTV(_weights()[None], isotropic=False, prox_iterations=4000),
                                   (1, 1, N, N), "prox"),
    "SquaredL2Distance": (lambda: SquaredL2Distance(_complex(1, 1, N, N, seed=5)), (1, 1, N, N), "prox"),
    "L2Fidelity": (lambda: L2Fidelity(Identity((1, N, N)), _complex(1, 1, N, N, seed=5)), (1, 1, N, N), "prox"),
    "Zero": (lambda: Zero(), (1, 1, N, N), "prox"),
    "ScaledFunctional": (lambda: 0.7 * L1Norm(), (1, 2, N, N), "prox"),
    "Box": (lambda: Box(0.0, 1.0), (1, 1, N, N), "refuses"),
    "NonNegativity": (lambda: NonNegativity(), (1, 1, N, N), "refuses"),
    "PixelBox": (lambda: PixelBox(torch.full((1, 1, N, N), 2.0)), (1, 1, N, N), "refuses"),
    "L0Norm": (lambda: L0Norm(), (1, 1, N, N), "refuses"),  # a count of nonzeros: real sparse codes only
    "GraphLaplacianPrior": (lambda: GraphLaplacianPrior.from_estimate(torch.rand(1, 1, N, N)), (1, 1, N, N), "refuses"),
    "DenoiserPrior": (lambda: DenoiserPrior(_denoiser), (1, 1, N, N), "parts"),
    "FixedSigmaDenoiser": (lambda: FixedSigmaDenoiser(DenoiserPrior(_denoiser), 0.1), (1, 1, N, N), "parts"),
    "LearnedProxPrior": (lambda: LearnedProxPrior(LearnedProximalNetwork(ICNN(hidden=4, strides=(1,)).double())),
                         (1, 1, N, N), "parts"),
}


def test_every_functional_in_priors_has_a_complex_case():
    """A new prior must say what it does with complex images: add it to CASES."""
    for info in pkgutil.iter_modules(priors.__path__):
        importlib.import_module(f"priors.{info.name}")
    found, stack = set(), [Functional]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("priors.") and not inspect.isabstract(sub):
                found.add(sub.__name__)
    assert found - {SumFunctional.__name__} <= {name.split("-")[0] for name in CASES}, found


@pytest.mark.parametrize("name", list(CASES))
def test_each_prior_handles_or_refuses_complex_images(name):
    make, shape, expected = CASES[name]
    f, x, tau = make(), _complex(*shape, seed=6), 0.35
    if expected == "refuses":
        with pytest.raises(TypeError, match="complex"):
            f.prox(x.to(torch.complex64), tau)
        return
    p = f.prox(x, tau)
    assert p.shape == x.shape and p.is_complex()
    if expected == "parts":
        torch.testing.assert_close(p, torch.complex(f.prox(x.real, tau), f.prox(x.imag, tau)))
        return

    # optimality, coordinate by coordinate: moving any real or imaginary part of p by +-eps does
    # not lower tau f(v) + 1/2 ||v - x||^2 (all moves in one batch; f's value is per item)
    eps, count = 1e-3, x.numel()
    moves = torch.cat([torch.eye(count, dtype=x.dtype), 1j * torch.eye(count, dtype=x.dtype)])
    v = p + eps * torch.cat([moves, -moves]).reshape(-1, *shape[1:])
    cost = tau * f.value(v) + 0.5 * (v - x).abs().pow(2).flatten(1).sum(1)
    best = float(tau * f.value(p) + 0.5 * (p - x).abs().pow(2).sum())
    assert float(cost.min()) >= best - 1e-9 * max(1.0, abs(best)), (name, float(cost.min()) - best)


def test_complex_modulus_is_what_anisotropic_tv_penalises():
    x = torch.zeros(1, 1, 1, 3, dtype=torch.complex128)
    x[..., 1:] = 3 + 4j  # one horizontal step of modulus 5
    assert float(TV(isotropic=False).value(x)) == pytest.approx(5.0)
    assert isinstance(0.5 * TV(isotropic=False), ScaledFunctional)
