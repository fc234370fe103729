"""argparse types for the numbers of the ``recon`` commands: a bad value is a usage error naming the option.

argparse turns the ``ArgumentTypeError`` these raise into ``recon ct: error: argument --iterations:
expected an integer >= 1, got '0'`` and exit status 2, before any work starts. Floats must be
finite (``nan`` and ``inf`` parse as floats in Python, and would otherwise reach the solvers).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

__all__ = ["positive_int", "nonneg_int", "finite_float", "positive_float", "nonneg_float", "fraction",
           "open_fraction", "torch_device"]


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
    return value


def _real(text: str, test: Callable[[float], bool], expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and test(value)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (``2.7`` and ``0`` are refused).

    Example:
        >>> positive_int("3")
        3
    """
    return _integer(text, 1)


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    return _integer(text, 0)


def finite_float(text: str) -> float:
    """Any finite number."""
    return _real(text, lambda v: True, "a finite number")


def positive_float(text: str) -> float:
    """A finite number > 0.

    Example:
        >>> positive_float("nan")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a finite number > 0, got 'nan'
    """
    return _real(text, lambda v: v > 0, "a finite number > 0")


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    return _real(text, lambda v: v >= 0, "a finite number >= 0")


def fraction(text: str) -> float:
    """A number in ``[0, 1)`` (a relative noise level)."""
    return _real(text, lambda v: 0 <= v < 1, "a number in [0, 1)")


def open_fraction(text: str) -> float:
    """A number in ``(0, 1)`` (a share of k-space lines)."""
    return _real(text, lambda v: 0 < v < 1, "a number in (0, 1)")


def torch_device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, naming a device this machine has.

    Example:
        >>> torch_device("cpu")
        'cpu'
        >>> torch_device("gpu0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected cpu, cuda or cuda:N, got 'gpu0'
    """
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if text != "cpu":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(text.partition(":")[2] or 0)
        if index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA device(s)"
                                             + (" (use cpu)" if count == 0 else ""))
    return text
