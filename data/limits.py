"""Memory checks before allocating: refuse a request that cannot fit, with the estimate and the argument named.

A file, a command-line option or a model card can declare sizes (a ``(10, 20000, 50000)`` sinogram,
``--size 100000``, ``hidden = 200000``) whose arrays would need tens of GB. Reading or building them
would end in a MemoryError deep inside numpy or torch, or in minutes of swapping. Every reader and
builder that allocates from a declared size calls ``check_memory`` first.

The cap is the memory the machine has available now (``MemAvailable`` in /proc/meminfo, else
the physical memory), or the environment variable ``RECON_MEMORY_LIMIT`` when set (bytes, or a
number with a unit: ``512M``, ``8G``, ``1.5T``). An estimate above the cap raises
``MemoryLimitError``, a ``ValueError`` (so commands report it as bad input, exit 2).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

__all__ = ["MemoryLimitError", "check_memory", "memory_limit", "array_bytes", "format_bytes", "ENV"]

ENV = "RECON_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class MemoryLimitError(ValueError):
    """A request whose estimated memory exceeds what the machine (or ``RECON_MEMORY_LIMIT``) allows."""


def format_bytes(n: float) -> str:
    """``n`` bytes for people.

    Example:
        >>> format_bytes(512), format_bytes(3 * 2**30), format_bytes(4.5e13)
        ('512 B', '3.0 GiB', '40.9 TiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _parse(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", text, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"{ENV}: expected bytes or a number with a unit (e.g. 8G), got {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not value > 0:
        raise ValueError(f"{ENV}: expected a positive size, got {text!r}")
    return int(value)


def _available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 2**63


def memory_limit() -> int:
    """The cap in bytes: ``RECON_MEMORY_LIMIT`` when set, else the memory available now."""
    text = os.environ.get(ENV)
    return _parse(text) if text else _available()


def array_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of an array of ``shape`` with ``itemsize``-byte elements (Python ints: no overflow).

    Example:
        >>> array_bytes((10, 20000, 50000), 4) / 2**30
        37.25290298461914
    """
    return math.prod(int(n) for n in shape) * int(itemsize)


def check_memory(nbytes: float, what: str) -> None:
    """Raise ``MemoryLimitError`` when ``nbytes`` exceeds ``memory_limit()``.

    Args:
        nbytes: the estimate, in bytes, of what the request will allocate.
        what: the request and the argument it comes from, e.g. ``"--size 100000: the phantom and
            its sinogram"``; the message starts with it.

    Example:
        >>> check_memory(1024, "a small array")
        >>> check_memory(2**60, "--size 10**9: the phantom")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        data.limits.MemoryLimitError: --size 10**9: the phantom: needs about 1048576.0 TiB of memory, ...
    """
    limit = memory_limit()
    if nbytes > limit:
        source = f"the limit {ENV}" if os.environ.get(ENV) else "the memory available"
        raise MemoryLimitError(f"{what}: needs about {format_bytes(nbytes)} of memory, more than {source} "
                               f"({format_bytes(limit)}); set {ENV} to change the limit")
