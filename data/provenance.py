"""Provenance: what produced a reconstruction, from which input, with which software, when.

A record is a JSON-safe dict (numbers, strings, lists, dicts, None)::

    method, parameters          what ran, with its parameters (arrays and tensors summarised)
    package, version            "recon" and its installed version ("unknown" when not installed)
    python, torch, numpy, astra software versions ("not installed" when astra is absent)
    platform, host              operating system and machine name
    input_path, input_sha256    the input file (absolute path) and its SHA-256, or None
    started, finished           ISO 8601 timestamps in UTC

``data.hdf5.write_reconstructions(..., provenance=record)`` stores it beside the images.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import socket
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["provenance", "file_sha256", "json_safe"]

#: Arrays and tensors with at most this many elements are stored in full, larger ones summarised.
ARRAY_ITEMS = 64


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes as a hex string, read in chunks of ``chunk_size`` bytes.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.bin")
        >>> _ = open(p, "wb").write(b"abc")
        >>> file_sha256(p)[:16]
        'ba7816bf8f01cfea'
    """
    path = Path(path)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive number of bytes, got {chunk_size!r}")
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _array(a: np.ndarray) -> Any:
    """Small arrays as (nested) lists; larger ones as shape, dtype and the range of finite values."""
    if a.size <= ARRAY_ITEMS and a.dtype.kind in "biufcUS":
        return json_safe(a.tolist())
    summary: dict = {"shape": list(a.shape), "dtype": str(a.dtype)}
    values = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    if a.dtype.kind in "biuf" and values.size:
        summary.update(min=json_safe(values.min()), max=json_safe(values.max()),
                       mean=json_safe(values.mean(dtype=np.float64)))
    return summary


def json_safe(value: Any) -> Any:
    """``value`` as JSON-safe data: numpy scalars become numbers, arrays and tensors lists (up to
    ``ARRAY_ITEMS`` elements) or a summary ``{"shape", "dtype", "min", "max", "mean"}``, non-finite
    floats the strings ``"nan"``/``"inf"``/``"-inf"``, complex numbers ``{"real", "imag"}``, paths
    and datetimes strings, mappings dicts with string keys; anything else its ``repr``.

    Example:
        >>> import numpy as np, torch
        >>> json_safe({"lam": np.float32(0.5), "w": torch.ones(2), "tol": None, "nan": float("nan")})
        {'lam': 0.5, 'w': [1.0, 1.0], 'tol': None, 'nan': 'nan'}
        >>> json_safe(np.ones((100, 100)))
        {'shape': [100, 100], 'dtype': 'float64', 'min': 1.0, 'max': 1.0, 'mean': 1.0}
    """
    if value is None or isinstance(value, (bool, str)):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, complex):
        return {"real": json_safe(value.real), "imag": json_safe(value.imag)}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().resolve_conj().resolve_neg().numpy()
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, np.ndarray):
        return _array(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((json_safe(v) for v in value), key=repr)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _astra_version() -> str:
    version = _version("astra-toolbox")
    if version != "unknown":
        return version
    try:  # e.g. a conda build without Python package metadata
        import astra
    except ImportError:
        return "not installed"
    return str(getattr(astra, "__version__", "unknown"))


def _utc(started: datetime | None, finished: datetime) -> datetime:
    if started is None:
        return finished
    if not isinstance(started, datetime):
        raise TypeError(f"started: expected a datetime (e.g. datetime.now(timezone.utc)), "
                        f"got {type(started).__name__}")
    started = started.astimezone(timezone.utc)  # a naive datetime is taken as local time
    if started > finished:
        raise ValueError(f"started: {started.isoformat()} is later than now ({finished.isoformat()})")
    return started


def provenance(method: str, parameters: Mapping | None, input_path: str | os.PathLike | None = None,
               started: datetime | None = None) -> dict:
    """A provenance record (keys in the module docstring); ``finished`` is now.

    Args:
        method: what ran, e.g. ``"tv"`` or ``"recon ct"``.
        parameters: its parameters; values are made JSON-safe with ``json_safe``.
        input_path: the input file, hashed with ``file_sha256``; None when there is none.
        started: when the work began (timezone-aware, or naive local time); default now.

    Example:
        >>> from datetime import datetime, timezone
        >>> r = provenance("tv", {"lam": 0.02, "iterations": 300}, started=datetime.now(timezone.utc))
        >>> r["method"], r["parameters"], r["package"], r["input_sha256"]
        ('tv', {'lam': 0.02, 'iterations': 300}, 'recon', None)
        >>> datetime.fromisoformat(r["finished"]) >= datetime.fromisoformat(r["started"])
        True
    """
    finished = datetime.now(timezone.utc)
    if not isinstance(method, str) or not method:
        raise ValueError(f"method: expected a non-empty string, got {method!r}")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise TypeError(f"parameters: expected a mapping of names to values, got {type(parameters).__name__}")
    if input_path is not None and not Path(input_path).is_file():
        raise FileNotFoundError(f"input_path: no such file {input_path}")
    return {
        "method": method,
        "parameters": json_safe(dict(parameters or {})),
        "package": "recon",
        "version": _version("recon"),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "astra": _astra_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "input_path": None if input_path is None else str(Path(input_path).resolve()),
        "input_sha256": None if input_path is None else file_sha256(input_path),
        "started": _utc(started, finished).isoformat(),
        "finished": finished.isoformat(),
    }
