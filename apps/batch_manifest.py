"""``recon batch``'s manifest: reading it (checked), writing it (atomically) and the records it holds.

Format and resume rules are documented in apps/batch.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from apps.batch_studies import Study
from apps.batch_worker import RECORD, STUDIES, write_json

__all__ = ["MANIFEST", "FORMAT", "ENTRY_KEYS", "load_manifest", "save_manifest", "entry", "finished_record",
           "cached_hashes", "taken_names", "now"]

MANIFEST = "manifest.json"
FORMAT = "recon-batch-manifest/1"
ENTRY_KEYS = ("name", "kind", "mode", "state", "inputs", "config_hash", "input_hash", "slices", "seconds", "started",
              "finished", "error", "warnings", "metrics")


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _checkentry(path: Path, key, entry) -> None:
    if not isinstance(key, str) or not isinstance(entry, dict):
        raise ValueError(f"--output: {path}: study {key!r} is {type(entry).__name__}, expected a record (a JSON "
                         "object); move the manifest away to rebuild it")
    for field in ("name", "kind", "state", "config_hash", "input_hash", "error"):
        if entry.get(field) is not None and not isinstance(entry[field], str):
            raise ValueError(f"--output: {path}: study {key}: {field!r} is {entry[field]!r}, expected text; "
                             "move the manifest away to rebuild it")
    if entry.get("metrics") is not None and not isinstance(entry["metrics"], dict):
        raise ValueError(f"--output: {path}: study {key}: 'metrics' is not a JSON object; move the manifest away "
                         "to rebuild it")


def load_manifest(out: Path) -> dict:
    """``out/manifest.json``, checked (a manifest of another structure is refused, naming what is wrong),
    or an empty one when there is none."""
    path = out / MANIFEST
    if not path.is_file():
        return {"format": FORMAT, "studies": {}}
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"--output: {path} is not valid JSON ({err}); move it away to rebuild it") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("studies"), dict):
        raise ValueError(f"--output: {path} is not a recon batch manifest (expected format {FORMAT!r})")
    for key, entry in manifest["studies"].items():
        _checkentry(path, key, entry)
    if not isinstance(manifest.get("content_cache", {}), dict):
        manifest["content_cache"] = {}
    return manifest


def cached_hashes(out: Path) -> dict:
    """The manifest's content-hash cache, read before the lock is taken (only a cache: {} when unreadable)."""
    try:
        cache = json.loads((out / MANIFEST).read_text()).get("content_cache", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return cache if isinstance(cache, dict) else {}


def taken_names(out: Path) -> dict[str, str]:
    """Folder name -> key of every finished study folder under ``out/studies`` (from its study.json)."""
    taken = {}
    try:
        folders = list((out / STUDIES).iterdir())
    except OSError:
        return taken
    for folder in folders:
        try:
            key = json.loads((folder / RECORD).read_text()).get("key")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(key, str):
            taken[folder.name] = key
    return taken


def save_manifest(out: Path, manifest: dict) -> None:
    manifest["updated"] = now()
    write_json(out / MANIFEST, manifest)


def entry(record: dict) -> dict:
    return {k: record.get(k) for k in ENTRY_KEYS}


def finished_record(out: Path, study: Study, chash: str) -> dict | None:
    """The study's study.json when it is done with this config and input, else None."""
    try:
        record = json.loads((out / STUDIES / study.name / RECORD).read_text())
    except (OSError, ValueError):
        return None
    same = (record.get("state"), record.get("key"), record.get("config_hash"), record.get("input_hash"))
    return record if same == ("done", study.key, chash, study.input_hash) else None
