"""``recon batch`` study discovery and naming (rules in apps/batch.py).

A study is one DICOM image series (``data.dicom.list_series`` over every non-HDF5 file found, so
a series split over several folders is one study) or one ``*.h5``/``*.hdf5`` file. Each study
gets a stable key that carries no patient data and an input hash from its files' names, sizes
and modification times.

Keys identify content, never a location alone: a DICOM series by its Study and Series Instance
UIDs, an HDF5 file by its path relative to the input root together with the SHA-256 of its
bytes, so ``siteA/scan.h5`` and ``siteB/scan.h5`` with different data never share a key (and
never share an output folder). Hashing reads each HDF5 file once; a cache (``content_cache``,
kept in the manifest, keyed by a hash of the absolute path) skips files whose size and
modification time are unchanged. Symbolic links are followed (a link to a file outside the
input folder is read like any other file); broken links are skipped with a note.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom

from data.dicom import DicomWarning, list_series
from data.hdf5 import open_hdf5

__all__ = ["Study", "discover", "assign_names", "safe_name", "NAME_LIMIT"]

HDF5_SUFFIXES = (".h5", ".hdf5")
NAME_LIMIT = 48  # characters of a name taken from file contents (a key may be appended)


@dataclass(frozen=True)
class Study:
    """One unit of work: what to read, and the names it goes by.

    Attributes:
        key: stable key (``data.dicom.stable_key`` for DICOM; for HDF5 16 hex digits of the
            sha256 of the path relative to the input root and of the file's content).
        kind: ``"dicom"``, ``"hdf5"`` (raw CT layout) or ``"kspace"`` (MRI: data/mri.py or fastMRI layout).
        files: absolute paths of its files, sorted.
        input_hash: sha256 over the files' names, sizes and modification times.
        series_uid: the DICOM SeriesInstanceUID ("" for HDF5).
        label: the raw text ``naming = "patient"`` builds a name from (PatientID and
            SeriesDescription, or the file's stem); never used unsanitised.
        name: the study's folder name under ``studies/`` (set by ``assign_names``).
        inputs: where it came from, relative to its input root (the manifest records these):
            the HDF5 file, or the folders holding the series' files.
    """

    key: str
    kind: str
    files: tuple[str, ...]
    input_hash: str
    series_uid: str = ""
    label: str = ""
    name: str = ""
    inputs: tuple[str, ...] = ()

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


def _files_under(p: Path, notes: list[str]) -> list[Path]:
    """The files under folder ``p`` (absolute, links not resolved); broken links are noted and left out."""
    files = []
    for f in sorted(p.rglob("*")):
        if f.is_file():
            files.append(f.absolute())
        elif f.is_symlink() and not f.exists():
            notes.append(f"skipped a broken symbolic link {f}")
    return files


def _candidates(inputs, exclude: Path | None, notes: list[str]) -> list[tuple[Path, Path]]:
    """``(root, file)`` for every file under the inputs, ``file`` as found under ``root`` (absolute,
    links not resolved, so that it is always relative to ``root``), deduplicated by the file a path
    resolves to; hidden ones and those under ``exclude`` left out. A missing input raises."""
    found: dict[Path, tuple[Path, Path]] = {}
    for given in inputs:
        p = Path(given)
        if not p.exists():
            raise FileNotFoundError(f"INPUT: no such file or folder {given}")
        root = (p if p.is_dir() else p.parent).absolute()
        files = _files_under(p, notes) if p.is_dir() else [p.absolute()]
        for f in files:
            real = f.resolve()
            if (p.is_dir() and _hidden(f, root)) or (exclude is not None and real.is_relative_to(exclude)):
                continue
            found.setdefault(real, (root, f))
    return list(found.values())


def _hdf5_kind(path: Path) -> str:
    """``"kspace"`` for the MRI layouts (data/mri.py, fastMRI), else ``"hdf5"`` (also when unreadable or
    refused by ``open_hdf5``: the study then fails with read_ct's message)."""
    try:
        with open_hdf5(path) as f:
            return "kspace" if "kspace" in f and "sinogram" not in f else "hdf5"
    except (OSError, ValueError):
        return "hdf5"


def content_hash(path: Path, cache: dict | None = None) -> str:
    """SHA-256 (hex) of the file's bytes; ``cache`` (``{id: [size, mtime_ns, digest]}``, ``id`` a hash of
    the absolute path, so no path is stored) answers for files whose size and mtime are unchanged."""
    st = path.stat()
    ident = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    hit = None if cache is None else cache.get(ident)
    if isinstance(hit, list) and len(hit) == 3 and hit[:2] == [st.st_size, st.st_mtime_ns]:
        return str(hit[2])
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if cache is not None:
        cache[ident] = [st.st_size, st.st_mtime_ns, digest.hexdigest()]
    return digest.hexdigest()


def _hdf5_studies(items: list[tuple[Path, Path]], cache: dict | None) -> list[Study]:
    keyed = []
    for root, f in items:
        rel = f.relative_to(root).as_posix()
        keyed.append((hashlib.sha256(f"hdf5\n{rel}\n{content_hash(f, cache)}".encode()).hexdigest()[:16], root, f))
    counts: dict[str, int] = {}
    for key, _, _ in keyed:
        counts[key] = counts.get(key, 0) + 1
    studies = []
    for key, root, f in keyed:
        if counts[key] > 1:  # the same file (path and content) under two inputs: add the absolute path
            key = hashlib.sha256(f"hdf5\n{f.as_posix()}\n{key}".encode()).hexdigest()[:16]
        rel = f.relative_to(root)
        studies.append(Study(key, _hdf5_kind(f), (str(f),), _input_hash([f]), label=rel.with_suffix("").as_posix(),
                             inputs=(rel.as_posix(),)))
    return studies


def _dicom_label(first: Path) -> str:
    ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["PatientID", "SeriesDescription"])
    return "_".join(str(ds.get(kw, "") or "") for kw in ("PatientID", "SeriesDescription")).strip("_")


def _folders(files, roots: dict[Path, Path]) -> tuple[str, ...]:
    """The folders holding ``files``, relative to their input roots (the root itself is ".")."""
    return tuple(sorted({Path(f).parent.relative_to(roots[Path(f)]).as_posix() for f in files}))


def _dicom_studies(items: list[tuple[Path, Path]], patient_labels: bool, notes: list[str]) -> list[Study]:
    roots = {f: root for root, f in items}
    files = list(roots)
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
        studies.append(Study(info.key, "dicom", paths, _input_hash(paths), info.series_uid, label,
                             inputs=_folders(info.files, roots)))
    return studies


def discover(inputs, exclude: Path | None = None, patient_labels: bool = False,
             content_cache: dict | None = None) -> tuple[list[Study], list[str]]:
    """The studies under ``inputs`` (files or folders, searched recursively), sorted by key, and
    notes on ignored files. ``content_cache`` (see ``content_hash``) is read and updated. Raises
    FileNotFoundError for a missing input and ValueError when no study is found."""
    if not inputs:
        raise ValueError("INPUT: expected at least one file or folder")
    notes: list[str] = []
    items = _candidates(inputs, exclude, notes)
    h5 = [(root, f) for root, f in items if f.suffix.lower() in HDF5_SUFFIXES]
    other = [(root, f) for root, f in items if f.suffix.lower() not in HDF5_SUFFIXES]
    studies = _hdf5_studies(h5, content_cache) + _dicom_studies(other, patient_labels, notes)
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


def assign_names(studies: list[Study], naming: str, previous: dict[str, str] | None = None,
                 taken: dict[str, str] | None = None) -> list[Study]:
    """Each study with its folder name: its key, or (``naming = "patient"``) its sanitised label.

    Names that collide (case-insensitively) with another study's get ``_<key>`` appended: another
    study of this run, or a folder already under ``studies/`` that belongs to another key
    (``taken``: folder name -> the key its study.json records), so a run never takes over a
    finished study of another run. A study an earlier run with the same configuration already
    named (``previous``: key -> name) keeps its name, so adding studies never renames finished ones.
    """
    if naming == "key":
        return [replace(s, name=s.key) for s in studies]
    previous, taken = previous or {}, taken or {}
    bases = {s.key: safe_name(s.label) or s.key for s in studies}
    counts: dict[str, int] = {}
    for base in bases.values():
        counts[base.casefold()] = counts.get(base.casefold(), 0) + 1
    used = {name.casefold() for key, name in previous.items() if key in bases}
    owners = {name.casefold(): key for name, key in taken.items()}
    named = []
    for s in studies:
        name = previous.get(s.key)
        if name is None or safe_name(name, limit=NAME_LIMIT + 17) != name or owners.get(name.casefold(), s.key) != s.key:
            base = bases[s.key]
            clash = counts[base.casefold()] > 1 or base.casefold() in used or \
                owners.get(base.casefold(), s.key) != s.key
            name = f"{base}_{s.key}" if clash and base != s.key else base
        used.add(name.casefold())
        named.append(replace(s, name=name))
    return named
