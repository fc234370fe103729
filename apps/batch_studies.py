"""``recon batch`` study discovery and naming (rules in apps/batch.py).

A study is one DICOM image series (``data.dicom.list_series`` over every non-HDF5 file found, so
a series split over several folders is one study) or one ``*.h5``/``*.hdf5`` file. Each study
gets a stable key that carries no patient data and an input hash from its files' names, sizes
and modification times (cheap: no file is read in full).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import pydicom

from data.dicom import DicomWarning, list_series

__all__ = ["Study", "discover", "assign_names", "safe_name", "NAME_LIMIT"]

HDF5_SUFFIXES = (".h5", ".hdf5")
NAME_LIMIT = 48  # characters of a name taken from file contents (a key may be appended)


@dataclass(frozen=True)
class Study:
    """One unit of work: what to read, and the names it goes by.

    Attributes:
        key: stable key (``data.dicom.stable_key`` for DICOM; for HDF5 16 hex digits of the
            sha256 of the path relative to the input root).
        kind: ``"dicom"``, ``"hdf5"`` (raw CT layout) or ``"kspace"`` (MRI: data/mri.py or fastMRI layout).
        files: absolute paths of its files, sorted.
        input_hash: sha256 over the files' names, sizes and modification times.
        series_uid: the DICOM SeriesInstanceUID ("" for HDF5).
        label: the raw text ``naming = "patient"`` builds a name from (PatientID and
            SeriesDescription, or the file's stem); never used unsanitised.
        name: the study's folder name under ``studies/`` (set by ``assign_names``).
    """

    key: str
    kind: str
    files: tuple[str, ...]
    input_hash: str
    series_uid: str = ""
    label: str = ""
    name: str = ""

    @property
    def mode(self) -> str:
        return "simulate" if self.kind == "dicom" else "measured"


def _input_hash(files) -> str:
    digest = hashlib.sha256()
    for f in sorted(Path(p) for p in files):
        st = f.stat()
        digest.update(f"{f.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _candidates(inputs, exclude: Path | None) -> list[tuple[Path, Path]]:
    """``(root, file)`` for every file under the inputs (resolved, deduplicated, hidden ones and
    those under ``exclude`` left out); a missing input raises."""
    found: dict[Path, Path] = {}
    for given in inputs:
        p = Path(given)
        if not p.exists():
            raise FileNotFoundError(f"INPUT: no such file or folder {given}")
        root = (p if p.is_dir() else p.parent).resolve()
        files = [p.resolve()] if p.is_file() else sorted(f.resolve() for f in p.rglob("*") if f.is_file())
        for f in files:
            if (p.is_dir() and _hidden(f, root)) or (exclude is not None and f.is_relative_to(exclude)):
                continue
            found.setdefault(f, root)
    return [(root, f) for f, root in found.items()]


def _hdf5_kind(path: Path) -> str:
    """``"kspace"`` for the MRI layouts (data/mri.py, fastMRI), else ``"hdf5"`` (also when unreadable:
    the study then fails with read_ct's message)."""
    try:
        with h5py.File(path, "r") as f:
            return "kspace" if "kspace" in f and "sinogram" not in f else "hdf5"
    except OSError:
        return "hdf5"


def _hdf5_studies(items: list[tuple[Path, Path]]) -> list[Study]:
    keyed = [(hashlib.sha256(f"hdf5\n{f.relative_to(root).as_posix()}".encode()).hexdigest()[:16], root, f)
             for root, f in items]
    counts: dict[str, int] = {}
    for key, _, _ in keyed:
        counts[key] = counts.get(key, 0) + 1
    studies = []
    for key, root, f in keyed:
        if counts[key] > 1:  # the same relative path under two inputs: key on the absolute path instead
            key = hashlib.sha256(f"hdf5\n{f.as_posix()}".encode()).hexdigest()[:16]
        label = f.relative_to(root).with_suffix("").as_posix()
        studies.append(Study(key, _hdf5_kind(f), (str(f),), _input_hash([f]), label=label))
    return studies


def _dicom_label(first: Path) -> str:
    ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["PatientID", "SeriesDescription"])
    return "_".join(str(ds.get(kw, "") or "") for kw in ("PatientID", "SeriesDescription")).strip("_")


def _dicom_studies(files: list[Path], patient_labels: bool, notes: list[str]) -> list[Study]:
    if not files:
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DicomWarning)
        try:
            infos = list_series(files)
        except ValueError:
            infos = []
            notes.append(f"ignored {len(files)} file(s) that are neither HDF5 nor DICOM images, e.g. {files[0]}")
    notes.extend(f"ignored: {w.message}" for w in caught if issubclass(w.category, DicomWarning))
    studies = []
    for info in infos:
        paths = tuple(sorted(str(f) for f in info.files))
        label = _dicom_label(Path(paths[0])) if patient_labels else ""
        studies.append(Study(info.key, "dicom", paths, _input_hash(paths), info.series_uid, label))
    return studies


def discover(inputs, exclude: Path | None = None, patient_labels: bool = False) -> tuple[list[Study], list[str]]:
    """The studies under ``inputs`` (files or folders, searched recursively), sorted by key, and
    notes on ignored files. Raises FileNotFoundError for a missing input and ValueError when no
    study is found."""
    if not inputs:
        raise ValueError("INPUT: expected at least one file or folder")
    notes: list[str] = []
    items = _candidates(inputs, exclude)
    h5 = [(root, f) for root, f in items if f.suffix.lower() in HDF5_SUFFIXES]
    other = [f for _, f in items if f.suffix.lower() not in HDF5_SUFFIXES]
    studies = _hdf5_studies(h5) + _dicom_studies(other, patient_labels, notes)
    if not studies:
        where = ", ".join(str(i) for i in inputs)
        raise ValueError(f"INPUT: no studies found in {where} ({len(items)} files; looked for DICOM image series "
                         f"and {'/'.join('*' + s for s in HDF5_SUFFIXES)} files)")
    keys: dict[str, Study] = {}
    for s in studies:
        if s.key in keys:
            raise ValueError(f"INPUT: two studies share the key {s.key}: {s.files[0]} and {keys[s.key].files[0]}")
        keys[s.key] = s
    return sorted(studies, key=lambda s: s.key), notes


def safe_name(text: str, limit: int = NAME_LIMIT) -> str:
    """``text`` as a folder name: ASCII letters, digits and ``._-`` only, no ``..``, no leading dot
    or dash, at most ``limit`` characters; "" when nothing is left.

    Example:
        >>> safe_name("../../etc/passwd"), safe_name("Müller^Jürgen  CT/Thorax"), safe_name("..")
        ('etc_passwd', 'Muller_Jurgen_CT_Thorax', '')
    """
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_text)
    name = re.sub(r"\.{2,}", "_", name)
    name = re.sub(r"_{2,}", "_", name).strip("._-")
    return name[:limit].rstrip("._-")


def assign_names(studies: list[Study], naming: str, previous: dict[str, str] | None = None) -> list[Study]:
    """Each study with its folder name: its key, or (``naming = "patient"``) its sanitised label.

    Names that collide (case-insensitively) with another study's get ``_<key>`` appended; a study
    an earlier run with the same configuration already named (``previous``: key -> name) keeps
    its name, so adding studies never renames finished ones.
    """
    if naming == "key":
        return [replace(s, name=s.key) for s in studies]
    previous = previous or {}
    bases = {s.key: safe_name(s.label) or s.key for s in studies}
    counts: dict[str, int] = {}
    for base in bases.values():
        counts[base.casefold()] = counts.get(base.casefold(), 0) + 1
    used = {name.casefold() for key, name in previous.items() if key in bases}
    named = []
    for s in studies:
        name = previous.get(s.key)
        if name is None or safe_name(name, limit=NAME_LIMIT + 17) != name:
            base = bases[s.key]
            clash = counts[base.casefold()] > 1 or base.casefold() in used
            name = f"{base}_{s.key}" if clash and base != s.key else base
        used.add(name.casefold())
        named.append(replace(s, name=name))
    return named
