"""``recon batch`` configuration: defaults, validation and the canonical hash.

The keys, their defaults and a TOML example are documented in apps/batch.py. ``load_config``
returns the *resolved* configuration (every key present, defaults filled in); its SHA-256 over
canonical JSON (``config_hash``, per kind of study over the keys that kind uses) decides whether
a finished study is still up to date, so a file that spells out the defaults hashes like no file
at all.
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
from operators.masks import MASK_TYPES
from recon.fbp import FILTERS
from recon.mri import MRI_METHODS
from recon.reconstruct import ESTIMATES, METHODS

__all__ = ["DEFAULTS", "METHOD_KEYS", "MRI_METHOD_KEYS", "load_config", "resolve_config", "config_hash"]

#: bumped when a change to the pipeline makes earlier results stale
PIPELINE_VERSION = 1

DEFAULTS: dict = {
    "naming": "key",
    "device": "auto",
    "chunk_slices": 0,
    "seed": 0,
    "mu_water": MU_WATER,
    "allow_gaps": False,
    "operator": {"geometry": "parallel", "views": 60, "noise": 0.01, "detectors": None, "detector_spacing": None,
                 "source_origin": None, "origin_detector": None},
    "methods": {"fbp": {}, "tv": {}},
    "mri": {"acceleration": None, "center_fraction": 0.08, "mask_type": "random", "phase_encode": "columns"},
    "mri_methods": {"zero-filled": {}, "cg-sense": {}},
}
#: the keys only k-space studies use, and those only CT studies use (see ``config_hash``)
MRI_KEYS = ("mri", "mri_methods")
CT_KEYS = ("mu_water", "operator", "methods")
#: the keys only DICOM studies use
DICOM_KEYS = ("allow_gaps",)

_VARIATIONAL = ("lam", "iterations", "nonneg", "filter")
#: the parameters each method accepts (passed to ``recon.reconstruct.reconstruct``)
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "fbp": ("filter",), "sirt": ("iterations", "nonneg"), "cgls": ("iterations",), "tikhonov": ("iterations",),
    "tv": _VARIATIONAL, "svtv": (*_VARIATIONAL, "estimate", "eta", "p", "spread"),
    **{m: (*_VARIATIONAL, "estimate", "radius", "sigma") for m in ("graphla-fbp", "graphla-tik", "graphla-tv")},
}
#: the parameters each MRI method accepts (passed to ``recon.mri.reconstruct_mri``)
MRI_METHOD_KEYS: dict[str, tuple[str, ...]] = {"zero-filled": (), "cg-sense": ("iterations",),
                                               "tv": ("lam", "iterations", "isotropic")}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


Check = tuple[Callable[[object], bool], str]
#: upper bounds of ``[operator] views`` and ``detectors`` (measured scanners use a few thousand of each);
#: the memory a study needs is checked separately (``apps.ct.ct_memory_bytes``)
MAX_VIEWS, MAX_DETECTORS = 100_000, 100_000
_TOP: dict[str, Check] = {
    "naming": (lambda v: v in ("key", "patient"), "'key' or 'patient'"),
    "device": (lambda v: v in ("auto", "cpu", "cuda"), "'auto', 'cpu' or 'cuda'"),
    "chunk_slices": (lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: all slices in one call)"),
    "seed": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "mu_water": (lambda v: _number(v) and v > 0, "a positive attenuation in 1/mm"),
    "allow_gaps": (lambda v: isinstance(v, bool), "true or false"),
}
_OPERATOR: dict[str, Check] = {
    "geometry": (lambda v: v in ("parallel", "fan"), "'parallel' or 'fan'"),
    "views": (lambda v: _integer(v) and 1 <= v <= MAX_VIEWS, f"a positive integer <= {MAX_VIEWS}"),
    "noise": (lambda v: _number(v) and 0 <= v < 1, "a relative noise level in [0, 1)"),
    "detectors": (lambda v: _integer(v) and 1 <= v <= MAX_DETECTORS, f"a positive integer <= {MAX_DETECTORS}"),
    "detector_spacing": (lambda v: _number(v) and v > 0, "a positive spacing in mm"),
    "source_origin": (lambda v: _number(v) and v > 0, "a positive distance in mm"),
    "origin_detector": (lambda v: _number(v) and v >= 0, "a distance >= 0 in mm"),
}
_METHOD: dict[str, Check] = {
    "lam": (lambda v: v in ("rule", "auto", "cv") or (_number(v) and v >= 0),
            "a non-negative number, 'rule', 'auto' or 'cv'"),
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


_MRI: dict[str, Check] = {
    "acceleration": (lambda v: _number(v) and v > 1, "a number > 1 (unset: the mask as acquired, or 4 for "
                                                       "fully sampled k-space)"),
    "center_fraction": (lambda v: _number(v) and 0 < v < 1, "a fraction in (0, 1)"),
    "mask_type": (lambda v: v in MASK_TYPES, f"one of {', '.join(MASK_TYPES)}"),
    "phase_encode": (lambda v: v in ("columns", "rows"), "'columns' or 'rows'"),
}
_MRI_METHOD: dict[str, Check] = {
    "lam": (lambda v: _number(v) and v >= 0, "a non-negative number"),
    "iterations": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "isotropic": (lambda v: isinstance(v, bool), "true or false"),
}


def _check_keys(where: str, given: Mapping, allowed) -> None:
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed) or 'none'}")


def _check_value(where: str, key: str, value, checks: Mapping[str, Check]) -> None:
    ok, expected = checks[key]
    if not ok(value):
        raise ValueError(f"{where}: {key}: expected {expected}, got {value!r}")


def _methods(where: str, given, key: str = "methods") -> dict:
    """``methods`` (or ``mri_methods``): a list of names (default parameters) or a table
    ``{name: {parameter: value}}``."""
    names, allowed, checks = (METHODS, METHOD_KEYS, _METHOD) if key == "methods" else \
        (MRI_METHODS, MRI_METHOD_KEYS, _MRI_METHOD)
    if isinstance(given, list):
        if not all(isinstance(m, str) for m in given):
            raise ValueError(f"{where}: {key}: expected a list of method names or a table, got {given!r}")
        given = {m: {} for m in given}
    if not isinstance(given, Mapping) or not given:
        raise ValueError(f"{where}: {key}: expected a non-empty list of method names or a table "
                         f"[{key}.NAME], got {given!r}")
    methods = {}
    for name, params in given.items():
        if name not in names:
            raise ValueError(f"{where}: {key}: unknown method {name!r}; allowed: {', '.join(names)}")
        if not isinstance(params, Mapping):
            raise ValueError(f"{where}: {key}.{name}: expected a table of parameters, got {params!r}")
        _check_table(f"{where}: [{key}.{name}]", params, allowed[name], checks)
        methods[name] = dict(params)
    return methods


def _check_table(label: str, given: Mapping, allowed, checks: dict) -> None:
    """Every key of ``given`` allowed, every value passing its check."""
    _check_keys(label, given, allowed)
    for key, value in given.items():
        _check_value(label, key, value, checks)


def _table(where: str, name: str, given, checks: dict) -> dict:
    """The checked table ``[name]`` over its defaults."""
    if not isinstance(given, Mapping):
        raise ValueError(f"{where}: {name}: expected a table [{name}], got {given!r}")
    _check_table(f"{where}: [{name}]", given, checks, checks)
    return {**DEFAULTS[name], **given}


def _mri(where: str, given) -> dict:
    return _table(where, "mri", given, _MRI)


def _operator(where: str, given) -> dict:
    op = _table(where, "operator", given, _OPERATOR)
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
    config["mri"] = _mri(where, given.get("mri", {}))
    if "mri_methods" in given:
        config["mri_methods"] = _methods(where, given["mri_methods"], "mri_methods")
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


def config_hash(config: Mapping, kind: str | None = None) -> str:
    """SHA-256 (hex) of the resolved configuration as canonical JSON (sorted keys, no spaces).

    With a study ``kind``, only the keys that kind uses: k-space studies leave out ``mu_water``,
    ``[operator]`` and ``methods``; CT studies (``"dicom"``, ``"hdf5"``) leave out ``[mri]`` and
    ``mri_methods``, so their hash is the one of a configuration without MRI keys, and changing
    only those never redoes a CT study (nor changing only CT keys a k-space one); ``allow_gaps``
    counts for DICOM studies only.
    """
    if kind is not None:
        dropped = (CT_KEYS if kind == "kspace" else MRI_KEYS) + (DICOM_KEYS if kind != "dicom" else ())
        config = {k: v for k, v in config.items() if k not in dropped}
    canonical = json.dumps({"pipeline": PIPELINE_VERSION, **config}, sort_keys=True, separators=(",", ":"),
                           allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
