"""Checks of numeric parameters at the library's boundary, one message form for all of them.

``reconstruct``, ``reconstruct_mri`` and ``load_model`` (a card's settings) call these before any work,
so a bad value ends in ``ValueError("<name>: expected ..., got ...")`` instead of NaN images, a
silent truncation (``iterations=2.7``) or a traceback deep inside a solver. Booleans are refused where
a number is expected (``True`` is an ``int`` to Python, never a meaningful iteration count); numpy
scalars are accepted.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["check_integer", "check_number", "check_finite_result"]


def check_integer(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``; floats, strings and booleans are refused.

    Example:
        >>> import numpy as np
        >>> check_integer("iterations", np.int64(3))
        3
        >>> check_integer("iterations", 2.7)
        Traceback (most recent call last):
        ...
        ValueError: iterations: expected an integer >= 1, got 2.7
    """
    bound = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected {bound}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name}: expected {bound}, got {value}")
    return int(value)


def check_number(name: str, value, minimum: float = 0.0, strict: bool = True, below: float | None = None) -> float:
    """``value`` (a real number or a one-element tensor) as a finite ``float`` above ``minimum`` (``>=``
    when not ``strict``) and under ``below``.

    Example:
        >>> check_number("lam", 0.0, strict=False)
        0.0
        >>> check_number("noise_std", float("inf"))
        Traceback (most recent call last):
        ...
        ValueError: noise_std: expected a positive finite number, got inf
    """
    if minimum == 0:
        expected = f"a {'positive' if strict else 'non-negative'} finite number"
    else:
        expected = f"a finite number {'>' if strict else '>='} {minimum:g}"
    expected += f" below {below:g}" if below is not None else ""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()  # a one-element tensor, e.g. estimate_noise_std(y).mean()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and (v > minimum if strict else v >= minimum) and (below is None or v < below)):
        raise ValueError(f"{name}: expected {expected}, got {v}")
    return v


def check_finite_result(x: torch.Tensor, method: str) -> torch.Tensor:
    """``x`` itself, or ``RuntimeError`` naming ``method`` when the reconstruction holds NaN or Inf.

    Example:
        >>> check_finite_result(torch.tensor([1.0, float("nan")]), "pnp")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        RuntimeError: pnp: the reconstruction holds 1 non-finite value(s) (NaN or Inf) of 2; the method diverged ...
    """
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise RuntimeError(f"{method}: the reconstruction holds {bad} non-finite value(s) (NaN or Inf) of "
                           f"{x.numel()}; the method diverged (try fewer iterations, another weight, or check "
                           "the model and the data)")
    return x
