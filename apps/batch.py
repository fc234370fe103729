"""``recon batch``: reconstruct many studies on a Dask cluster, resumably.

Usage::

    recon batch INPUT... --output DIR [--config FILE.toml] [--workers N] [--scheduler ADDRESS] [--no-progress]

**Studies.** INPUT is any number of files and folders (searched recursively; hidden files and
the output folder are skipped). Each DICOM image series is a study (a folder may hold several; a
series split over folders is one study), and so is each ``*.h5``/``*.hdf5`` file: in the raw CT
layout of data/hdf5.py (one sinogram, or a stack ``(slices, views, detectors)``), or holding
k-space (``/kspace`` and no ``/sinogram``: the layout of data/mri.py, ``(coils, H, W)`` or a stack
``(slices, coils, H, W)``, or a fastMRI file, which has ``/ismrmrd_header``). The mode follows
the input:

- *simulate* (DICOM): the images in HU become attenuation ``mu = hu_to_mu(HU)`` in 1/mm
  (clipped at 0), are forward-projected by the configured operator, get Gaussian noise of std
  ``noise * RMS(sinogram)`` (as ``recon ct``), and are reconstructed; PSNR/SSIM against ``mu``.
- *measured* (HDF5): the sinograms are reconstructed with the file's geometry and all its views;
  PSNR/SSIM when the file holds a reference.
- *measured* (k-space, MRI; apps/batch_mri.py): as ``recon mri``, whose functions it calls.
  Undersampled k-space is reconstructed with its mask as acquired; fully sampled k-space gets a
  retrospective mask (``[mri]``; one ``(H, W)`` mask for all slices, seeded by ``seed``) and its
  root-sum-of-squares is the reference unless the file holds one. Coil maps: ESPIRiT per slice
  from the calibration region. The ``mri_methods`` are run; outputs are magnitude images
  (fastMRI: cropped to the reference's size); PSNR/SSIM with data range the reference's maximum.

Each method sees all slices of a study in one call (CT: ``reconstruct()`` with ``y`` of shape
``(slices, 1, views, det)``; MRI: ``reconstruct_mri()`` with ``(slices, coils, H, W)``), or
``chunk_slices`` at a time.

**Configuration** (TOML; every key optional; the defaults, which also run without ``--config``)::

    naming = "key"          # folder names: "key" (carries no patient data) or "patient":
                            # PatientID_SeriesDescription (HDF5: the file's path stem), sanitised
                            # to [A-Za-z0-9._-], at most 48 characters, "_KEY" added on a clash
    device = "auto"         # "auto", "cpu" or "cuda" (on each worker)
    chunk_slices = 0        # slices per reconstruct() call; 0: the whole study at once
    seed = 0                # noise seed (mixed with each study's key); k-space: the mask seed
    mu_water = 0.0193       # 1/mm, for HU <-> mu
    allow_gaps = false      # DICOM: a series with a missing or unreadable slice fails (naming the
                            # file and position); true: reconstruct the slices present at their
                            # true positions (the derived series keeps the gap), with a warning

    [operator]              # simulate mode only
    geometry = "parallel"   # "parallel" (views over 180 deg) or "fan" (360 deg, flat detector)
    views = 60
    noise = 0.01            # Gaussian noise std relative to the sinogram's RMS
    # detectors = 100       # default: the image diagonal plus 10%
    # detector_spacing = 1  # mm; default the pixel size (times the magnification for fan beam)
    # source_origin = 200   # fan only, mm; default 2x the field of view
    # origin_detector = 100 # fan only, mm; default 1x the field of view

    [methods.fbp]           # CT studies, in this order (or a list: methods = ["fbp", "tv"])
    [methods.tv]            # parameters of recon.reconstruct.reconstruct; unset: its defaults
    # lam = 0.002           # a number, "rule", "auto" or "cv"; unset: cv for tv, the rule otherwise
    # iterations = 300

    [mri]                   # k-space studies only
    # acceleration = 4      # retrospective R for fully sampled k-space (> 1); unset: the mask as
                            # acquired if undersampled (then it must stay unset), else 4
    center_fraction = 0.08  # fully sampled centre (ESPIRiT needs at least 5 lines of it)
    mask_type = "random"    # "random", "equispaced" or "poisson"
    phase_encode = "columns"  # the axis 1-D masks skip lines of: "columns" or "rows"

    [mri_methods.zero-filled]  # k-space studies, in this order (or mri_methods = ["zero-filled", "tv"])
    [mri_methods.cg-sense]  # parameters of recon.mri.reconstruct_mri; unset: its defaults
    # iterations = 10

Method parameters: ``fbp``: filter; ``sirt``: iterations, nonneg; ``cgls``, ``tikhonov``:
iterations; ``tv``: lam, iterations, nonneg, filter; ``svtv``: those and estimate, eta, p,
spread; ``graphla-fbp``/``-tik``/``-tv``: those of tv and estimate, radius, sigma. MRI methods:
``zero-filled``: none; ``cg-sense``: iterations; ``tv``: lam (a non-negative number; default
rule otherwise), iterations. An unknown key, method or value is an error naming it and what is
allowed.

**Output layout**::

    DIR/manifest.json                every study's state (below)
    DIR/studies/NAME/                one folder per finished study
        reconstructions.h5           per method a dataset (slices, H, W) in 1/mm with its parameters
                                     (max_iterations: the cap; iterations_run: the most any chunk ran);
                                     geometry, angles, the reference if any, provenance (k-space:
                                     magnitude images; the mask (H, W) or (slices, H, W), the
                                     sampling, coils and k-space shape instead of the geometry)
        dicom/METHOD/slice_0001.dcm  DICOM input only: each reconstruction as a derived series in HU
        metrics.json                 {"study", "mode", "slices", "methods": {METHOD: {"psnr", "ssim",
                                     "psnr_slices", "ssim_slices", "seconds", "iterations", "lam"}}}
        preview.png                  the middle slice: reference (if any) and each method
        provenance.json              data.provenance record (software, config, input hash, times)
        study.json                   the study's record; written last
    DIR/.partial/                    studies being written (cleared when a run starts)
    DIR/.lock                        locked while a run writes to DIR

**Manifest** (rewritten atomically after every change)::

    {"format": "recon-batch-manifest/1", "updated": ISO-8601, "config_hash": SHA-256 of the canonical
     resolved config, "config": {...}, "notes": [files skipped while finding studies],
     "content_cache": {hash of an HDF5 file's absolute path: [size, mtime_ns, SHA-256 of its bytes]},
     "studies": {KEY: {"name", "kind": "dicom" | "hdf5" | "kspace", "mode": "simulate" | "measured",
                       "state": "pending" | "running" | "done" | "failed", "inputs": [paths relative
                       to the input root: the HDF5 file, or the folders of the series' files],
                       "config_hash" (of the keys its kind uses, below), "input_hash", "slices",
                       "seconds", "started", "finished", "error", "warnings": [every DICOM warning
                       of the study, then up to 20 others], "metrics": {METHOD: {"psnr", "ssim",
                       "seconds"}}}}}

A manifest of another structure stops the run with a message naming what is wrong (move it away
to rebuild it from the study folders).

**Keys.** A DICOM series is keyed by its Study and Series Instance UIDs, an HDF5 file by its path
relative to the input root and the SHA-256 of its bytes: two sites' ``scan.h5`` with different
data are two studies with two folders. A study's folder is only ever replaced by a newer result
of the same key; a folder that holds anything else (another study, or files recon batch did not
write) is left alone and the study is published as ``NAME_KEY``. Symbolic links are followed;
broken ones are noted and skipped.

**Resume rules.** A study is skipped when ``studies/NAME/study.json`` records its key, the
current config hash of its kind and its input hash (SHA-256 of its files' names, sizes and
modification times). The hash of a kind covers only the keys it uses: CT studies (DICOM, raw
HDF5) all but ``[mri]`` and ``mri_methods`` (HDF5 also without ``allow_gaps``); k-space studies
all but ``mu_water``, ``allow_gaps``, ``[operator]`` and ``methods``; so changing ``[mri]`` redoes only k-space studies, and changing
``[operator]`` only CT ones. Otherwise a study runs (failed studies are retried on every run),
and its folder is replaced only once the new one is complete. A killed run leaves finished folders intact and nothing
half-written under ``studies/``; the studies it left ``pending`` or ``running`` run again (one
it finished but had not yet recorded is found by its study.json and kept). Studies of earlier
runs that are not among the inputs, and folders named under another ``naming``, stay on disk.
Studies are named in the outputs, the printed lines and the manifest by their key, or by the
sanitised name with ``naming = "patient"``.

**Engine.** One Dask task per study; results are gathered as they complete. Default: a
LocalCluster of ``--workers`` processes (default: CPU cores, at most the studies to run) with
one thread each (Dask sets OMP_NUM_THREADS=1 in them); ``--scheduler tcp://HOST:PORT`` uses a
running cluster, whose workers must import this package and see INPUT and DIR at the same paths.
Dying workers end in failures, never in a wait: a study whose worker died 3 times (killed, out of
memory, a crash in native code) fails, and when the cluster has had no live worker for 60 s, or
its scheduler is gone, the studies left fail with that reason (apps/batch_engine.py); the run then
ends, releases its lock and exits 1.

The summary table printed at the end has a PSNR column per method of the kinds present
(``methods``, then ``mri_methods``; a name in both shares its column).

Exit status: 0 when every study is done, 1 when any failed (or the run itself failed: a full
disk, a lost cluster), 2 for bad arguments, configuration or input (also an output folder that
cannot be written, and a manifest of another structure). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from apps.batch_config import config_hash, load_config
from apps.batch_engine import execute
from apps.batch_manifest import MANIFEST, cached_hashes, entry, finished_record, load_manifest, save_manifest, taken_names
from apps.batch_studies import Study, assign_names, discover
from apps.batch_worker import PARTIAL
from apps.outputs import hold_lock

KINDS = ("dicom", "hdf5", "kspace")


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="reconstruct many studies (DICOM series, CT HDF5, k-space) on a Dask cluster",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="DICOM/HDF5 (CT or k-space) files or folders")
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE.toml", help="pipeline configuration")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: CPU cores, at most the studies to run)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster, e.g. tcp://host:8786 (instead of a local one)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def kind_hashes(config: dict) -> dict[str, str]:
    """The config hash each kind of study is recorded with (only the keys that kind uses)."""
    return {kind: config_hash(config, kind) for kind in KINDS}


def _plan(out: Path, studies: list[Study], manifest: dict, hashes: dict[str, str]) -> list[Study]:
    """Record every study's starting state in the manifest; return those to run."""
    todo = []
    for s in studies:
        record = finished_record(out, s, hashes[s.kind])
        entries = manifest["studies"]
        if record is not None:
            if entries.get(s.key) != entry(record):
                entries[s.key] = entry(record)
        else:
            todo.append(s)
            entries[s.key] = entry({"name": s.name, "kind": s.kind, "mode": s.mode, "state": "pending",
                                     "inputs": list(s.inputs), "config_hash": hashes[s.kind],
                                     "input_hash": s.input_hash})
    return todo


def summary_methods(studies: list[Study], config: dict) -> list[str]:
    """The PSNR columns: ``methods`` when there are CT studies, then ``mri_methods`` for k-space ones."""
    kinds = {s.kind for s in studies}
    ct = list(config["methods"]) if kinds - {"kspace"} else []
    mri = list(config["mri_methods"]) if "kspace" in kinds else []
    return list(dict.fromkeys(ct + mri))


def format_summary(studies: list[Study], manifest: dict, methods, kept: set[str]) -> str:
    """The table printed at the end: study, state, slices, seconds and PSNR per method."""
    head = ["study", "state", "slices", "seconds", *(f"PSNR {m}" for m in methods)]
    rows = []
    for s in studies:
        e = manifest["studies"][s.key]
        metrics = e.get("metrics") or {}
        state = f"{e['state']} (earlier)" if s.key in kept else e["state"]
        cells = [s.name, state, e.get("slices"), e.get("seconds"), *(metrics.get(m, {}).get("psnr") for m in methods)]
        rows.append(["-" if c is None else f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [head, *rows]]
    failed = [f"failed: {s.name}: {manifest['studies'][s.key]['error']}" for s in studies
              if manifest["studies"][s.key]["state"] == "failed"]
    warned = [f"warning: {s.name}: {w}" for s in studies for w in manifest["studies"][s.key].get("warnings") or ()]
    return "\n".join(lines + failed + warned)


def _prepare_output(out: Path) -> None:
    """Create ``out`` and check that it can be written, naming ``--output`` when not."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output: expected a folder, found a file {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"--output: cannot write into {out} ({err.strerror or err})") from err


def run(args) -> int:
    from tqdm.auto import tqdm

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: expected a positive number of processes, got {args.workers}")
    if args.workers is not None and args.scheduler:
        raise ValueError("--workers: sets local processes; with --scheduler the cluster's own workers run the studies")
    config = load_config(args.config)
    chash, hashes = config_hash(config), kind_hashes(config)
    out = args.output.resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output: expected a folder, found a file {out}")
    cache = cached_hashes(out)
    studies, notes = discover(args.inputs, exclude=out, patient_labels=config["naming"] == "patient",
                              content_cache=cache)
    _prepare_output(out)
    with hold_lock(out, f"--output: another recon batch run is writing to {out}", RuntimeError):
        manifest = load_manifest(out)
        previous = {k: e["name"] for k, e in manifest["studies"].items()
                    if e.get("config_hash") == hashes.get(e.get("kind")) and e.get("name")}
        studies = assign_names(studies, config["naming"], previous, taken_names(out))
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        for note in notes:
            print(f"recon batch: {note}", file=sys.stderr)
        manifest.update(config_hash=chash, config=config, notes=notes, content_cache=cache)
        todo = _plan(out, studies, manifest, hashes)
        kept = {s.key for s in studies if manifest["studies"][s.key]["state"] == "done"}
        save_manifest(out, manifest)
        print(f"recon batch: {len(studies)} studies: {len(kept)} done earlier, {len(todo)} to run -> {out}", flush=True)
        with tqdm(total=len(studies), initial=len(studies) - len(todo), unit="study", desc="recon batch",
                  disable=args.no_progress) as bar:
            if todo:
                execute(args, out, todo, config, hashes, manifest, bar)
    print(format_summary(studies, manifest, summary_methods(studies, config), kept))
    print(f"manifest: {out / MANIFEST}")
    return 1 if any(manifest["studies"][s.key]["state"] == "failed" for s in studies) else 0
