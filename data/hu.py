"""Hounsfield units and linear attenuation.

The CT operators work in 1/mm (FBP returns mu in 1/mm); ``hu_to_mu`` and ``mu_to_hu`` use
HU = 1000 (mu - mu_water) / (mu_water - mu_air), with mu_air ~ 0 and mu_water a parameter
(default ``MU_WATER``).
"""

from __future__ import annotations

__all__ = ["MU_WATER", "hu_to_mu", "mu_to_hu"]

MU_WATER = 0.0193
"""Linear attenuation of water in 1/mm at ~70 keV effective energy: mass attenuation 0.193 cm^2/g
(NIST XCOM / Hubbell-Seltzer tables for water, total with coherent scattering, interpolated at
70 keV) times 1 g/cm^3 = 0.193 /cm. Depends on the spectrum; pass ``mu_water`` for another."""


def _check_mu(mu_water: float, mu_air: float) -> None:
    if not mu_water > mu_air:
        raise ValueError(f"mu_water: must exceed mu_air ({mu_air}), got {mu_water}")


def hu_to_mu(hu, mu_water: float = MU_WATER, mu_air: float = 0.0):
    r"""Hounsfield units to linear attenuation in 1/mm (numpy arrays, torch tensors or floats).

    .. math:: \mu = \mu_{water} + \mathrm{HU}\,(\mu_{water} - \mu_{air}) / 1000

    Example:
        >>> round(hu_to_mu(0.0), 6), round(hu_to_mu(-1000.0), 6), round(hu_to_mu(1000.0, mu_water=0.02), 6)
        (0.0193, 0.0, 0.04)
    """
    _check_mu(mu_water, mu_air)
    return mu_water + hu * ((mu_water - mu_air) / 1000.0)


def mu_to_hu(mu, mu_water: float = MU_WATER, mu_air: float = 0.0):
    r"""Linear attenuation in 1/mm (e.g. an FBP reconstruction) to Hounsfield units.

    .. math:: \mathrm{HU} = 1000\,(\mu - \mu_{water}) / (\mu_{water} - \mu_{air})

    Example:
        >>> round(mu_to_hu(MU_WATER), 6), round(mu_to_hu(0.0), 6)
        (0.0, -1000.0)
    """
    _check_mu(mu_water, mu_air)
    return (mu - mu_water) * (1000.0 / (mu_water - mu_air))
