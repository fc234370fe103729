"""``recon batch`` configuration: defaults, validation and the canonical hash.

The keys, their defaults and a TOML example are documented in apps/batch.py. ``load_config``
returns the *resolved* configuration (every key present, defaults filled in); its SHA-256 over
canonical JSON (``config_hash``) decides whether a finished study is still up to date, so a
file that spells out the defaults hashes like no file at all.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from data.dicom import MU_WATER
from recon.fbp import FILTERS
from recon.reconstruct import ESTIMATES, METHODS

__all__ = ["DEFAULTS", "METHOD_KEYS", "load_config", "resolve_config", "config_hash"]

#: bumped when a change to the pipeline makes earlier results stale
PIPELINE_VERSION = 1

DEFAULTS: dict = {
    "naming": "key",
    "device": "auto",
    "chunk_slices": 0,
    "seed": 0,
    "mu_water": MU_WATER,
    "operator": {"geometry": "parallel", "views": 60, "noise": 0.01, "detectors": None, "detector_spacing": None,
                 "source_origin": None, "origin_detector": None},
    "methods": {"fbp": {}, "tv": {}},
}

_VARIATIONAL = ("lam", "iterations", "nonneg", "filter")
#: the parameters each method accepts (passed to ``recon.reconstruct.reconstruct``)
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "fbp": ("filter",), "sirt": ("iterations", "nonneg"), "cgls": ("iterations",), "tikhonov": ("iterations",),
    "tv": _VARIATIONAL, "svtv": (*_VARIATIONAL, "estimate", "eta", "p", "spread"),
    **{m: (*_VARIATIONAL, "estimate", "radius", "sigma") for m in ("graphla-fbp", "graphla-tik", "graphla-tv")},
}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


Check = tuple[Callable[[object], bool], str]
_TOP: dict[str, Check] = {
    "naming": (lambda v: v in ("key", "patient"), "'key' or 'patient'"),
    "device": (lambda v: v in ("auto", "cpu", "cuda"), "'auto', 'cpu' or 'cuda'"),
    "chunk_slices": (lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: all slices in one call)"),
    "seed": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "mu_water": (lambda v: _number(v) and v > 0, "a positive attenuation in 1/mm"),
}
_OPERATOR: dict[str, Check] = {
    "geometry": (lambda v: v in ("parallel", "fan"), "'parallel' or 'fan'"),
    "views": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "noise": (lambda v: _number(v) and 0 <= v < 1, "a relative noise level in [0, 1)"),
    "detectors": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "detector_spacing": (lambda v: _number(v) and v > 0, "a positive spacing in mm"),
    "source_origin": (lambda v: _number(v) and v > 0, "a positive distance in mm"),
    "origin_detector": (lambda v: _number(v) and v >= 0, "a distance >= 0 in mm"),
}
_METHOD: dict[str, Check] = {
    "lam": (lambda v: v == "auto" or (_number(v) and v >= 0), "a non-negative number or 'auto'"),
    "iterations": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "nonneg": (lambda v: isinstance(v, bool), "true or false"),
    "filter": (lambda v: v in FILTERS, f"one of {', '.join(FILTERS)}"),
    "estimate": (lambda v: v in ESTIMATES, f"one of {', '.join(ESTIMATES)}"),
    "eta": (lambda v: _number(v) and v > 0, "a positive number"),
    "p": (lambda v: _number(v) and v > 0, "a positive number"),
    "spread": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "radius": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "sigma": (lambda v: _number(v) and v > 0, "a positive number"),
}


def _check_keys(where: str, given: Mapping, allowed) -> None:
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}")


def _check_value(where: str, key: str, value, checks: Mapping[str, Check]) -> None:
    ok, expected = checks[key]
    if not ok(value):
        raise ValueError(f"{where}: {key}: expected {expected}, got {value!r}")


def _methods(where: str, given) -> dict:
    """``methods``: a list of names (default parameters) or a table ``{name: {parameter: value}}``."""
    if isinstance(given, list):
        if not all(isinstance(m, str) for m in given):
            raise ValueError(f"{where}: methods: expected a list of method names or a table, got {given!r}")
        given = {m: {} for m in given}
    if not isinstance(given, Mapping) or not given:
        raise ValueError(f"{where}: methods: expected a non-empty list of method names or a table "
                         f"[methods.NAME], got {given!r}")
    methods = {}
    for name, params in given.items():
        if name not in METHODS:
            raise ValueError(f"{where}: methods: unknown method {name!r}; allowed: {', '.join(METHODS)}")
        if not isinstance(params, Mapping):
            raise ValueError(f"{where}: methods.{name}: expected a table of parameters, got {params!r}")
        _check_keys(f"{where}: [methods.{name}]", params, METHOD_KEYS[name])
        for key, value in params.items():
            _check_value(f"{where}: [methods.{name}]", key, value, _METHOD)
        methods[name] = dict(params)
    return methods


def _operator(where: str, given) -> dict:
    if not isinstance(given, Mapping):
        raise ValueError(f"{where}: operator: expected a table [operator], got {given!r}")
    _check_keys(f"{where}: [operator]", given, _OPERATOR)
    for key, value in given.items():
        _check_value(f"{where}: [operator]", key, value, _OPERATOR)
    op = {**DEFAULTS["operator"], **given}
    fan_only = [k for k in ("source_origin", "origin_detector") if op[k] is not None]
    if op["geometry"] != "fan" and fan_only:
        raise ValueError(f"{where}: [operator] {fan_only[0]}: only used with geometry = 'fan', "
                         f"got geometry = {op['geometry']!r}")
    return op


def resolve_config(given: Mapping, where: str = "config") -> dict:
    """Validate ``given`` (the parsed TOML) and fill in the defaults; errors name the key."""
    _check_keys(where, given, DEFAULTS)
    config = copy.deepcopy(DEFAULTS)
    for key, value in given.items():
        if key in _TOP:
            _check_value(where, key, value, _TOP)
            config[key] = value
    config["operator"] = _operator(where, given.get("operator", {}))
    if "methods" in given:
        config["methods"] = _methods(where, given["methods"])
    return config


def load_config(path: str | Path | None) -> dict:
    """The resolved configuration from a TOML file, or the defaults when ``path`` is None."""
    if path is None:
        return resolve_config({})
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no such file {path}")
    try:
        with open(path, "rb") as f:
            given = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--config {path}: not valid TOML ({err})") from err
    return resolve_config(given, where=f"--config {path}")


def config_hash(config: Mapping) -> str:
    """SHA-256 (hex) of the resolved configuration as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps({"pipeline": PIPELINE_VERSION, **config}, sort_keys=True, separators=(",", ":"),
                           allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
