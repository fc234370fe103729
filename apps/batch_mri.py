"""``recon batch`` for k-space studies (mode *measured*, MRI): read, sample, reconstruct a stack.

A k-space study is one HDF5 file in the layout of data/mri.py (``/kspace`` ``(coils, H, W)`` or
``(slices, coils, H, W)``, optional ``/mask`` and ``/reference``) or a fastMRI file (it has
``/ismrmrd_header``; data/fastmri.py). Each study follows ``recon mri`` (apps/mri.py), whose
functions it calls:

- ``prepare``: undersampled input is reconstructed with its mask as acquired (``[mri]
  acceleration`` must then be unset); fully sampled input gets one retrospective mask ``(H, W)``
  for all its slices (``acceleration``, default 4, ``center_fraction``, ``mask_type``,
  ``phase_encode``; the mask seed is the top-level ``seed``, as ``recon mri --seed``), and the
  root-sum-of-squares of all its samples is the reference unless the file holds one.
- ``operator``: ESPIRiT coil maps per slice from the calibration region (``MultiCoilMRI``), or
  ``CartesianMRI`` for one coil.
- each of ``mri_methods`` (``recon.mri.reconstruct_mri``) sees a whole stack at once, ``y`` of
  shape ``(slices, coils, H, W)``, or ``chunk_slices`` slices at a time.

The outputs are magnitude images ``(slices, H, W)`` on the scale of the input. fastMRI images
are cropped to the centre of the reference's size (or of the header's recon matrix), as
fastMRI's own references are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
import torch

from apps.batch_worker import _merge
from apps.mri import operator, prepare
from data.fastmri import center_crop, read_fastmri
from data.hdf5 import open_hdf5
from data.mri import read_kspace
from operators.mri import CartesianMRI, MultiCoilMRI
from recon.mri import reconstruct_mri

__all__ = ["KSpaceStudyData", "load_kspace", "reconstruct_kspace"]

#: ``recon mri`` option names in the messages of apps/mri.py, and their ``recon batch`` keys
_OPTIONS = {"--acceleration": "[mri] acceleration", "--center-fraction": "[mri] center_fraction"}


@dataclass
class KSpaceStudyData:
    """A k-space study ready to reconstruct (the interface of ``apps.batch_worker.StudyData``).

    Attributes:
        kspace: ``(slices, coils, H, W)`` complex64, zero where not sampled.
        mask: ``(H, W)`` shared by every slice, or ``(slices, H, W)``.
        reference: ``(slices, h, w)`` magnitude images, or None.
        sampling: how the k-space was sampled (e.g. ``"retrospective random mask, R = 4.00"``).
        crop: ``(h, w)`` the images are cropped to (fastMRI), or None.
    """

    kspace: np.ndarray
    mask: np.ndarray
    reference: np.ndarray | None
    sampling: str
    crop: tuple[int, int] | None = None

    volume = None  # no DICOM output for k-space input
    units = "magnitude, scale of the input"

    @property
    def slices(self) -> int:
        return len(self.kspace)

    @property
    def data_range(self) -> float | None:
        """The PSNR/SSIM data range, as ``recon mri``: the reference's maximum."""
        return None if self.reference is None else float(self.reference.max()) or 1.0

    def attributes(self) -> dict:
        return {"modality": "mri", "sampling": self.sampling, "coils": self.kspace.shape[1],
                "kspace_shape": list(self.kspace.shape[-2:])}

    def datasets(self) -> dict:
        extra = {"mask": np.asarray(self.mask, dtype=bool)}
        return extra if self.reference is None else {**extra, "reference": self.reference}


def _batch_names(err: ValueError) -> ValueError:
    """apps/mri.py's error with the ``[mri]`` key in place of the ``recon mri`` option."""
    message = str(err)
    for option, key in _OPTIONS.items():
        message = message.replace(option, key)
    return ValueError(message)


def _read(path: str):
    """``KSpaceData`` (data/mri.py) or ``FastMRIData`` as a stack: ``kspace (slices, coils, H, W)``."""
    with open_hdf5(path) as f:
        fastmri = "ismrmrd_header" in f
    if fastmri:
        data = read_fastmri(path)
        shape = data.reference.shape[-2:] if data.reference is not None else \
            (data.header.recon_shape if data.header is not None else None)
        return data, None if shape is None else tuple(int(n) for n in shape)
    data = read_kspace(path)
    if data.kspace.ndim == 3:
        data = replace(data, kspace=data.kspace[None], mask=data.mask[None],
                       reference=None if data.reference is None else data.reference[None])
    return data, None


def load_kspace(files: tuple[str, ...], config: dict) -> KSpaceStudyData:
    """Read one k-space study and sample it as ``recon mri`` does (``[mri]`` settings)."""
    data, crop = _read(files[0])
    mri = config["mri"]
    args = SimpleNamespace(acceleration=mri["acceleration"], center_fraction=mri["center_fraction"],
                           mask_type=mri["mask_type"], phase_encode=mri["phase_encode"], seed=config["seed"])
    try:
        kspace, mask, reference, how = prepare(data, args)
    except ValueError as err:
        raise _batch_names(err) from err
    if reference is not None and crop is not None:  # fastMRI: an RSS of all samples is on the full grid
        reference = np.ascontiguousarray(center_crop(reference, crop))
    return KSpaceStudyData(np.ascontiguousarray(kspace, dtype=np.complex64), np.asarray(mask, dtype=bool),
                           reference, how, crop)


def _operators(data: KSpaceStudyData, size: int, device: torch.device) -> tuple[list, list]:
    """``(A, y)`` per slice (ESPIRiT maps from that slice's calibration region, as ``recon mri
    --slice K``) and per chunk of ``size`` slices (the same maps and masks, batched)."""
    y = torch.as_tensor(data.kspace, device=device)
    mask = torch.as_tensor(data.mask, device=device)
    per_slice, maps = [], []
    for i in range(len(y)):
        try:
            A, m = operator(y[i:i + 1], mask if mask.ndim == 2 else mask[i:i + 1])
        except ValueError as err:
            raise _batch_names(err) from err
        per_slice.append((A.to(device), y[i:i + 1]))
        maps.append(m)
    chunks = []
    for i in range(0, len(y), size):
        m = mask if mask.ndim == 2 else mask[i:i + size]
        A = CartesianMRI(m) if maps[0] is None else MultiCoilMRI(m, torch.cat(maps[i:i + size]))
        chunks.append((A.to(device), y[i:i + size]))
    return per_slice, chunks


def reconstruct_kspace(data: KSpaceStudyData, config: dict, device: torch.device) -> dict:
    """``{method: (x (S, h, w) magnitude numpy, parameters, seconds, iterations)}`` for each of
    ``mri_methods``, on the whole stack at once or in chunks of ``chunk_slices``.

    ``tv`` without ``lam`` runs slice by slice, each with its own default weight, the one ``recon mri
    --slice K`` uses (``recon.mri.default_mri_tv_lambda`` gives one weight per call: over a stack it
    would be shared by every slice).
    """
    per_slice, chunks = _operators(data, config["chunk_slices"] or data.slices, device)
    out = {}
    for method, params in config["mri_methods"].items():
        pairs = per_slice if method == "tv" and params.get("lam") is None else chunks
        runs = [reconstruct_mri(A, y, method, **params) for A, y in pairs]
        x = torch.cat([r.x.detach() for r in runs])[:, 0].abs()
        if data.crop is not None:
            x = center_crop(x, data.crop)
        out[method] = (x.float().cpu().numpy(), _merge([r.parameters for r in runs]), sum(r.seconds for r in runs),
                       max(r.iterations for r in runs))
    return out
