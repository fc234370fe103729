"""``recon batch``: one study on a worker, from its files to its published output folder.

``run_study`` is the Dask task. It never raises: a failure comes back as a record with
``state = "failed"`` and the error message, so one bad study cannot stop the others. Outputs
are written into ``<output>/.partial/<key>-<random>/`` and renamed to ``<output>/studies/<name>/``
only when complete; ``study.json``, written last, is what marks a study folder as finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from apps.batch_studies import Study
from apps.ct import _device, ct_memory_bytes
from data.hdf5 import atomic_path, read_ct, write_reconstructions
from data.limits import check_memory
from data.provenance import provenance
from operators.ct import ct_operator
from recon.metrics import psnr, ssim
from recon.reconstruct import reconstruct

__all__ = ["StudyData", "run_study", "load_study", "reconstruct_study", "write_json", "PARTIAL", "STUDIES", "RECORD"]

PARTIAL = ".partial"  # temporary folders of studies being written (cleared at the start of a run)
STUDIES = "studies"
RECORD = "study.json"
OTHER_WARNINGS = 20  # warnings a record keeps besides the DICOM ones (all of which it keeps)


@dataclass
class StudyData:
    """A CT study ready to reconstruct: ``sinogram (S, views, det)``, ``reference (S, H, W)`` in 1/mm
    or None, the geometry (``data.hdf5.CTData`` keys), the noise std and the DICOM volume.
    (k-space studies: ``apps.batch_mri.KSpaceStudyData``, with the same properties and methods.)"""

    sinogram: np.ndarray
    angles: np.ndarray
    geometry: dict
    reference: np.ndarray | None
    noise_std: float | None
    volume: object = None

    units = "1/mm"
    data_range = None  # PSNR/SSIM over the reference volume's range

    @property
    def slices(self) -> int:
        return len(self.sinogram)

    def attributes(self) -> dict:
        """The root attributes of reconstructions.h5: geometry and angles."""
        geometry = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.geometry.items()}
        return {**geometry, "angles": self.angles}

    def datasets(self) -> dict:
        return {} if self.reference is None else {"reference": self.reference}


def write_json(path: Path, record) -> None:
    """``record`` as JSON at ``path``, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=1, allow_nan=False)


def _seed(config: dict, key: str) -> int:
    """The noise seed of one study: the configured seed mixed with the study key (reproducible anywhere)."""
    return int(hashlib.sha256(f"{config['seed']}\n{key}".encode()).hexdigest()[:15], 16)


def simulation_geometry(op: dict, shape: tuple[int, int], pixel: float) -> tuple[dict, np.ndarray, int]:
    """Geometry, angles and detector count for simulating a ``shape`` image with ``pixel`` mm pixels;
    unset settings follow ``recon ct``: detectors cover the diagonal with 10% margin, fan source at
    2x and detector at 1x the field of view from the centre."""
    fov = max(shape) * pixel
    geom = {"geometry": op["geometry"], "pixel_size": pixel, "image_shape": tuple(shape)}
    magnification = 1.0
    if op["geometry"] == "fan":
        dso = op["source_origin"] or 2.0 * fov
        dod = fov if op["origin_detector"] is None else op["origin_detector"]
        geom.update(source_origin=float(dso), origin_detector=float(dod))
        magnification = (dso + dod) / dso
    geom["detector_spacing"] = float(op["detector_spacing"] or pixel * magnification)
    det = op["detectors"] or math.ceil(fov * math.sqrt(2) * 1.1 * magnification / geom["detector_spacing"]) + 2
    full = np.pi if op["geometry"] == "parallel" else 2 * np.pi
    return geom, np.linspace(0, full, op["views"], endpoint=False), int(det)


def _simulate(study: Study, config: dict) -> StudyData:
    from data.dicom import hu_to_mu, read_series

    volume = read_series(list(study.files), series_uid=study.series_uid, allow_gaps=config["allow_gaps"])
    spacing = volume.spacing
    if not math.isclose(spacing[1], spacing[2], rel_tol=1e-4):
        raise ValueError(f"study {study.key}: PixelSpacing {spacing[1:]} is not square; the CT operator needs "
                         "square pixels")
    mu = np.clip(hu_to_mu(volume.hu, mu_water=config["mu_water"]), 0.0, None).astype(np.float32)
    geom, angles, det = simulation_geometry(config["operator"], mu.shape[1:], float(spacing[1]))
    _check_memory(study, config, mu.shape, len(angles), det)
    y = ct_operator(geom, angles, det)(torch.as_tensor(mu)[:, None])
    noise_std = config["operator"]["noise"] * float(y.pow(2).mean().sqrt())
    gen = torch.Generator().manual_seed(_seed(config, study.key))
    y = y + noise_std * torch.randn(y.shape, generator=gen)
    return StudyData(y[:, 0].numpy(), angles, geom, mu, noise_std if noise_std > 0 else None, volume)


def _check_memory(study: Study, config: dict, shape, views: int, detectors: int) -> None:
    """Refuse a study whose reconstruction (``chunk_slices`` at a time) would exceed the memory."""
    slices = min(shape[0], config["chunk_slices"] or shape[0])
    check_memory(ct_memory_bytes(tuple(int(n) for n in shape[1:]), int(views), int(detectors), slices=int(slices)),
                 f"study {study.key}: {slices} slice(s) of {shape[1]} x {shape[2]} at once, {views} views x "
                 f"{detectors} detectors ([operator] views and detectors, chunk_slices)")


def load_study(study: Study, config: dict):
    """Read (and for DICOM simulate) one study: ``StudyData``, or for k-space ``KSpaceStudyData``."""
    if study.kind == "dicom":
        return _simulate(study, config)
    if study.kind == "kspace":
        from apps.batch_mri import load_kspace

        return load_kspace(study.files, config)
    if study.kind != "hdf5":
        raise ValueError(f"study {study.key}: kind {study.kind!r} is not supported by recon batch")
    data = read_ct(study.files[0])
    stack = data.sinogram.ndim == 3
    sino = data.sinogram if stack else data.sinogram[None]
    ref = None if data.reference is None else (data.reference if stack else data.reference[None])
    _check_memory(study, config, (len(sino), *data.geometry["image_shape"]), *sino.shape[1:])
    return StudyData(sino, data.angles, data.geometry, ref, data.noise_std)


def _merge(parameters: list[dict]) -> dict:
    """One parameter record for a method run in chunks: a value shared by every chunk, else the list."""
    merged = {}
    for key in parameters[0]:
        values = [p.get(key) for p in parameters]
        merged[key] = values[0] if all(v == values[0] for v in values) else values
    return merged


def reconstruct_study(data, config: dict) -> dict:
    """``{method: (x (S, H, W) numpy, parameters, seconds, iterations)}``: each method runs on the
    whole stack at once (``y`` of shape ``(S, 1, views, det)``), or in chunks of ``chunk_slices``.
    k-space studies run ``mri_methods`` instead (``apps.batch_mri.reconstruct_kspace``)."""
    device = _device(config["device"], option="device =")
    if not isinstance(data, StudyData):
        from apps.batch_mri import reconstruct_kspace

        return reconstruct_kspace(data, config, device)
    A = ct_operator(data.geometry, data.angles, data.sinogram.shape[-1]).to(device)
    y = torch.as_tensor(data.sinogram, device=device)[:, None]
    size = config["chunk_slices"] or len(y)
    out = {}
    for method, params in config["methods"].items():
        noise_std = data.noise_std if params.get("lam") == "auto" else None
        runs = [reconstruct(A, y[i:i + size], method, noise_std=noise_std, **params) for i in range(0, len(y), size)]
        x = torch.cat([r.x for r in runs])[:, 0].detach().cpu().numpy()
        out[method] = (x, _merge([r.parameters for r in runs]), sum(r.seconds for r in runs),
                       max(r.iterations for r in runs))
    return out


def study_metrics(results: dict, reference: np.ndarray | None, data_range: float | None = None) -> dict:
    """Per method: seconds, iterations, weight, and with a reference PSNR/SSIM (mean and per slice;
    the data range is ``data_range``, by default the reference volume's range)."""
    metrics = {}
    ref = None if reference is None else torch.as_tensor(reference, dtype=torch.float64)[:, None]
    rng = None if ref is None else data_range or float(ref.max() - ref.min()) or 1.0
    for method, (x, params, seconds, iterations) in results.items():
        m: dict = {"seconds": round(seconds, 3), "iterations": iterations}
        if "lam" in params:
            m["lam"] = params["lam"]
        if ref is not None:
            xt = torch.as_tensor(x, dtype=torch.float64)[:, None]
            p, s = psnr(xt, ref, data_range=rng), ssim(xt, ref, data_range=rng)
            m.update(psnr=float(p.mean()), ssim=float(s.mean()), psnr_slices=p.tolist(), ssim_slices=s.tolist())
        metrics[method] = m
    return metrics


def _write_dicom(folder: Path, volume, results: dict, mu_water: float) -> None:
    from data.dicom import mu_to_hu
    from data.dicom_write import write_series

    for method, (x, *_rest) in results.items():
        write_series(mu_to_hu(x, mu_water=mu_water), folder / "dicom" / method, volume, description=f"recon {method}")


def _preview(path: Path, data, results: dict, metrics: dict) -> None:
    from apps.figures import comparison_figure

    mid = data.slices // 2
    images = {m: r[0][mid] for m, r in results.items()}
    ref = None if data.reference is None else data.reference[mid]
    vmax = float(ref.max()) if ref is not None else float(np.percentile(next(iter(images.values())), 99.5))
    comparison_figure(path, images, metrics, ref, vmax or 1.0)


def write_outputs(folder: Path, study: Study, data, results: dict, config: dict, record: dict,
                  started: datetime) -> dict:
    """Every output of one study (``StudyData`` or ``KSpaceStudyData``) into ``folder``; ``record``
    (the study.json fields so far) is completed and returned."""
    metrics = study_metrics(results, data.reference, data.data_range)
    prov = provenance("recon batch", {"study": study.key, "mode": study.mode, "config": config,
                                      "input_files": len(study.files), "input_hash": study.input_hash},
                      input_path=study.files[0] if study.kind != "dicom" else None, started=started)
    write_reconstructions(folder / "reconstructions.h5", {m: r[0] for m, r in results.items()},
                          {**data.attributes(), "study": study.key, "mode": study.mode},
                          {m: {**r[1], "iterations_run": r[3]} for m, r in results.items()}, units=data.units,
                          extra=data.datasets(), provenance=prov)
    if data.volume is not None:
        _write_dicom(folder, data.volume, results, config["mu_water"])
    write_json(folder / "metrics.json", {"study": study.key, "mode": study.mode, "slices": data.slices,
                                    "methods": metrics})
    write_json(folder / "provenance.json", prov)
    _preview(folder / "preview.png", data, results, metrics)
    summary = {m: {k: v[k] for k in ("psnr", "ssim", "seconds") if k in v} for m, v in metrics.items()}
    record.update(state="done", slices=data.slices, metrics=summary, finished=prov["finished"])
    return record


def _owner(folder: Path) -> str | None:
    """The key recorded in ``folder/study.json``, or None when there is none (or it cannot be read)."""
    try:
        key = json.loads((folder / RECORD).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def publish(folder: Path, target: Path, trash_dir: Path, key: str) -> Path:
    """Rename the finished ``folder`` to ``target`` and return where it went. An older ``target`` of the
    same study (its study.json records ``key``) is moved aside first and deleted; a ``target`` that is
    anything else (another study's results, a folder not written by recon batch) is never touched:
    the study goes to ``<target>_<key>`` instead."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and _owner(target) != key:
        target = target.with_name(f"{target.name}_{key}")
    old = None
    if target.exists():
        if _owner(target) != key:
            raise FileExistsError(f"studies/{target.name} exists and holds no result of study {key}; left untouched")
        old = trash_dir / f"old-{target.name}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    os.rename(folder, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _warnings(caught) -> list[str]:
    """Every DICOM warning (each once, in order), then at most ``OTHER_WARNINGS`` others."""
    from data.dicom import DicomWarning

    dicom = [str(w.message) for w in caught if issubclass(w.category, DicomWarning)]
    other = sorted({str(w.message) for w in caught if not issubclass(w.category, DicomWarning)})
    return list(dict.fromkeys(dicom)) + other[:OTHER_WARNINGS]


def run_study(study: Study, config: dict, config_hash: str, output: str) -> dict:
    """The Dask task: read, reconstruct, write and publish one study; returns its record (never raises)."""
    start, started = time.perf_counter(), datetime.now(timezone.utc)
    record = {"key": study.key, "name": study.name, "kind": study.kind, "mode": study.mode,
              "inputs": list(study.inputs), "config_hash": config_hash, "input_hash": study.input_hash,
              "started": started.isoformat()}
    out = Path(output)
    folder = out / PARTIAL / f"{study.key}-{uuid.uuid4().hex[:8]}"
    caught: list = []
    try:
        folder.mkdir(parents=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = load_study(study, config)
            results = reconstruct_study(data, config)
        write_outputs(folder, study, data, results, config, record, started)
        record["warnings"] = _warnings(caught)
        record["seconds"] = round(time.perf_counter() - start, 3)
        write_json(folder / RECORD, record)
        record["name"] = publish(folder, out / STUDIES / study.name, out / PARTIAL, study.key).name
        if record["name"] != study.name:
            write_json(out / STUDIES / record["name"] / RECORD, record)
        return record
    except Exception as err:  # isolate the study: any error is its failure, reported by the client
        return {**record, "state": "failed", "error": f"{type(err).__name__}: {err}", "warnings": _warnings(caught),
                "seconds": round(time.perf_counter() - start, 3)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
