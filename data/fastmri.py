"""Reader for the public fastMRI HDF5 files (knee and brain, multi- and single-coil).

fastMRI layout (one volume per file; https://fastmri.org/dataset)::

    /kspace              complex64 (slices, coils, H, W) multi-coil, or (slices, H, W) single-coil
    /ismrmrd_header      XML bytes, ISMRMRD schema (namespace http://www.ismrm.org/ISMRMRD)
    /reconstruction_rss  float32 (slices, h, w), optional: multi-coil reference
    /reconstruction_esc  float32 (slices, h, w), optional: single-coil reference
    /mask                (W,), optional: the sampled columns (challenge test files, whose
                         k-space is zero in the other columns)
    root attributes      acquisition (e.g. "CORPD_FBK"), max, norm, patient_id; test files
                         also acceleration and num_low_frequency

Conventions, and what ``read_fastmri`` returns:

* fastMRI stores k-space centred like our layout (data/mri.py): the DC sample at
  ``(H // 2, W // 2)``, and fastMRI's ``ifft2c`` (ifftshift, orthonormal inverse FFT,
  fftshift) is ``operators.fourier.ifft2c``. The k-space is returned unshifted and unscaled,
  with an explicit coil axis: ``(slices, coils, H, W)`` complex64, ``coils = 1`` for single-coil.
* H is the readout, sampled with 2x oversampling (e.g. 640 rows for a 320-row field of view);
  W is the phase encode (e.g. 368), the axis a column mask skips. In the header, matrix ``x``
  is H and ``y`` is W.
* The reference is the root-sum-of-squares over coils of ``ifft2c(kspace)`` (or the emulated
  single-coil image), cropped to its central ``h x w`` (usually 320 x 320, the header's recon
  matrix). It is returned as stored, so it is smaller than the k-space grid: compare with
  ``center_crop(image, reference.shape[-2:])`` of a full-grid reconstruction, or first drop the
  readout oversampling with ``remove_readout_oversampling(kspace, axis=-2)`` (data/mri.py), which
  keeps the central H/2 image rows and leaves ``center_crop`` only the columns.
* The mask is the file's column mask repeated over the rows, else the positions where any coil
  is nonzero (so zero-padded edge columns count as unsampled); the k-space is zeroed outside it.

The file is opened lazily, only the requested slices are read, and it is closed before
``read_fastmri`` returns or raises.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from data.hdf5 import Slices, _check_read, _fail, _selection, _take, open_hdf5
from data.mri import _sampling_mask

__all__ = ["FastMRIData", "ISMRMRDHeader", "read_fastmri", "parse_ismrmrd_header", "center_crop"]

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
#: Reference datasets in order of preference: multi-coil, single-coil.
REFERENCES = {4: ("reconstruction_rss",), 3: ("reconstruction_esc", "reconstruction_rss")}
_Array = TypeVar("_Array")


@dataclass(frozen=True)
class ISMRMRDHeader:
    """The parts of an ISMRMRD header a reconstruction needs: ``(x, y, z)`` matrix sizes and fields
    of view (mm) of the encoded (acquired) and the reconstructed space; ``x`` is the readout."""

    encoded_matrix: tuple[int, int, int]
    encoded_fov_mm: tuple[float, float, float]
    recon_matrix: tuple[int, int, int]
    recon_fov_mm: tuple[float, float, float]

    @property
    def recon_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the reference image: the recon matrix's ``(x, y)``."""
        return self.recon_matrix[0], self.recon_matrix[1]


@dataclass
class FastMRIData:
    """One fastMRI volume, or the requested slices of it (conventions in the module docstring).

    Attributes:
        kspace: ``(slices, coils, H, W)`` complex64; ``(coils, H, W)`` for an int ``slices``.
        mask: ``(slices, H, W)`` bool; ``(H, W)`` for an int ``slices``.
        reference: ``(slices, h, w)`` float32 as stored (``(h, w)`` for an int ``slices``), or None.
        reference_name: the dataset the reference came from, or None.
        header: the parsed ``ismrmrd_header``, or None when the file has none.
        attrs: the root attributes (strings decoded, numpy scalars as Python numbers).
        num_slices: how many slices the file holds (the returned arrays may hold fewer).
        source: the file's path.
    """

    kspace: np.ndarray
    mask: np.ndarray
    reference: np.ndarray | None = None
    reference_name: str | None = None
    header: ISMRMRDHeader | None = None
    attrs: dict = field(default_factory=dict)
    num_slices: int = 0
    source: str = ""

    @property
    def fully_sampled(self) -> bool:
        return bool(self.mask.all())


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # "{http://www.ismrm.org/ISMRMRD}encoding" -> "encoding"


def _element(root: ET.Element, path: str, source: str) -> ET.Element:
    node = root
    for name in path.split("/"):
        found = next((child for child in node if _local(child.tag) == name), None)
        if found is None:
            raise ValueError(f"{source}: missing element <{path}> in the ISMRMRD header")
        node = found
    return node


def _triple(root: ET.Element, path: str, kind: type, source: str) -> tuple:
    values = []
    for axis in "xyz":
        text = _element(root, f"{path}/{axis}", source).text
        try:
            values.append(kind((text or "").strip()))
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise ValueError(f"{source}: element <{path}/{axis}>: expected {expected}, got {text!r}") from None
    return tuple(values)


def parse_ismrmrd_header(xml: bytes | str, source: str = "ismrmrd_header") -> ISMRMRDHeader:
    """Parse matrix sizes and fields of view from ISMRMRD XML, with or without its namespace.

    Args:
        xml: the header, as stored in a fastMRI file's ``ismrmrd_header`` dataset.
        source: names the header in error messages.

    Example:
        >>> xml = ('<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
        ...        '<encodedSpace><matrixSize><x>640</x><y>368</y><z>1</z></matrixSize>'
        ...        '<fieldOfView_mm><x>280</x><y>161</y><z>4.5</z></fieldOfView_mm></encodedSpace>'
        ...        '<reconSpace><matrixSize><x>320</x><y>320</y><z>1</z></matrixSize>'
        ...        '<fieldOfView_mm><x>140</x><y>140</y><z>3</z></fieldOfView_mm></reconSpace>'
        ...        '</encoding></ismrmrdHeader>')
        >>> h = parse_ismrmrd_header(xml); h.encoded_matrix, h.recon_shape, h.encoded_fov_mm
        ((640, 368, 1), (320, 320), (280.0, 161.0, 4.5))
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise ValueError(f"{source}: not valid XML ({err})") from None
    if _local(root.tag) != "ismrmrdHeader":
        raise ValueError(f"{source}: expected the root element <ismrmrdHeader>, got <{_local(root.tag)}>")
    space = "encoding/{}/{}"
    return ISMRMRDHeader(_triple(root, space.format("encodedSpace", "matrixSize"), int, source),
                         _triple(root, space.format("encodedSpace", "fieldOfView_mm"), float, source),
                         _triple(root, space.format("reconSpace", "matrixSize"), int, source),
                         _triple(root, space.format("reconSpace", "fieldOfView_mm"), float, source))


def center_crop(image: _Array, shape: tuple[int, int]) -> _Array:
    """The central ``(h, w)`` of the last two axes of a numpy array or torch tensor (a view).

    The centre pixel ``(H // 2, W // 2)`` lands on ``(h // 2, w // 2)``, as in our centred FFTs;
    fastMRI's ``center_crop`` starts at ``(H - h) // 2``, which is the same unless ``H`` is even
    and ``h`` odd (never in their 640 x 368 -> 320 x 320 crop).

    Example:
        >>> import numpy as np
        >>> x = np.zeros((2, 6, 5)); x[:, 3, 2] = 1.0
        >>> y = center_crop(x, (4, 3)); y.shape, float(y[0, 2, 1])
        ((2, 4, 3), 1.0)
    """
    size = tuple(shape)
    if len(size) != 2 or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in size):
        raise ValueError(f"shape: expected two positive integers (h, w), got {shape!r}")
    if len(image.shape) < 2 or size[0] > image.shape[-2] or size[1] > image.shape[-1]:
        raise ValueError(f"shape: the crop {size} does not fit in the image's last two axes {tuple(image.shape[-2:])}")
    h, w = int(size[0]), int(size[1])
    top, left = image.shape[-2] // 2 - h // 2, image.shape[-1] // 2 - w // 2
    return image[..., top:top + h, left:left + w]


def _kspace(f: h5py.File, path: Path) -> h5py.Dataset:
    if "kspace" not in f or not isinstance(f["kspace"], h5py.Dataset):
        raise _fail(path, "missing dataset 'kspace' (expected complex64 (slices, coils, H, W) multi-coil or "
                          "(slices, H, W) single-coil: the fastMRI layout, see data/fastmri.py)")
    ds = f["kspace"]
    if ds.dtype.kind != "c" or ds.ndim not in (3, 4) or 0 in ds.shape:
        raise _fail(path, f"dataset 'kspace': expected complex (slices, coils, H, W) or (slices, H, W), "
                          f"got shape {ds.shape} dtype {ds.dtype}")
    return ds


def _column_mask(f: h5py.File, shape: tuple, path: Path) -> np.ndarray | None:
    """The file's ``(W,)`` column mask as an ``(H, W)`` array, or None."""
    if "mask" not in f:
        return None
    ds = f["mask"]
    if not isinstance(ds, h5py.Dataset) or ds.shape != shape[-1:] or ds.dtype.kind not in "biuf":
        found = f"shape {ds.shape} dtype {ds.dtype}" if isinstance(ds, h5py.Dataset) else "a group"
        raise _fail(path, f"dataset 'mask': expected a real (W,) = {shape[-1:]} column mask, got {found}")
    _check_read(ds, "mask", path, None, 8)
    columns = np.asarray(ds[()])
    if not np.all(np.isfinite(columns)):
        raise _fail(path, "dataset 'mask' contains NaN or Inf values")
    return np.broadcast_to(columns, shape[-2:])


def _reference(f: h5py.File, kshape: tuple, index, path: Path) -> tuple[str | None, np.ndarray | None]:
    """The preferred reference dataset present, checked against the k-space's slices, or (None, None)."""
    name = next((n for n in REFERENCES[len(kshape)] if n in f), None)
    if name is None:
        return None, None
    ds = f[name]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 3 or ds.shape[0] != kshape[0] or ds.dtype.kind not in "iuf":
        found = f"has shape {ds.shape} dtype {ds.dtype}" if isinstance(ds, h5py.Dataset) else "is a group"
        raise _fail(path, f"dataset '{name}' {found}, expected real (slices, h, w) "
                          f"with slices = {kshape[0]} as in 'kspace'")
    _check_read(ds, name, path, index, 4)
    reference = _take(ds, index)
    if not np.all(np.isfinite(reference)):
        raise _fail(path, f"dataset '{name}' contains NaN or Inf values")
    return name, reference.astype(np.float32)


def _header(f: h5py.File, path: Path) -> ISMRMRDHeader | None:
    if "ismrmrd_header" not in f:
        return None
    ds, raw = f["ismrmrd_header"], None
    if isinstance(ds, h5py.Dataset):
        _check_read(ds, "ismrmrd_header", path)
        raw = ds[()]
    raw = raw.item() if isinstance(raw, np.ndarray) and raw.size == 1 else raw
    if not isinstance(raw, (bytes, str)):
        raise _fail(path, f"dataset 'ismrmrd_header': expected XML text, got {type(raw).__name__}")
    return parse_ismrmrd_header(raw, f"{path}: dataset 'ismrmrd_header'")


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def read_fastmri(path: str | os.PathLike, slices: Slices = None) -> FastMRIData:
    """Read a fastMRI file (layout and conventions in the module docstring).

    Args:
        path: a fastMRI ``.h5`` file.
        slices: which slices to read (only those are read from disk): None for all, an int for one
            (its axis dropped), a slice or a list of ints (the axis kept, in the order given).

    Returns:
        ``FastMRIData``: k-space ``(slices, coils, H, W)`` as stored, mask, reference as stored.

    Example:
        >>> import h5py, numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "file1000000.h5")
        >>> with h5py.File(p, "w") as f:
        ...     f["kspace"] = np.ones((3, 4, 16, 12), np.complex64)
        ...     f["reconstruction_rss"] = np.ones((3, 8, 8), np.float32)
        ...     f.attrs["acquisition"] = "CORPD_FBK"
        >>> d = read_fastmri(p, slices=1)
        >>> d.kspace.shape, d.mask.shape, d.reference.shape, d.num_slices, d.attrs["acquisition"]
        ((4, 16, 12), (16, 12), (8, 8), 3, 'CORPD_FBK')
    """
    path = Path(path)
    with open_hdf5(path, "HDF5 file (fastMRI layout)") as f:
        ds = _kspace(f, path)
        index = _selection(slices, ds.shape[0], path)
        _check_read(ds, "kspace", path, index, 20)  # complex64 copy, masked copy and magnitudes
        k = _take(ds, index)
        if not np.all(np.isfinite(k)):
            raise _fail(path, "dataset 'kspace' contains NaN or Inf values")
        columns = _column_mask(f, ds.shape, path)
        name, reference = _reference(f, ds.shape, index, path)
        header = _header(f, path)
        attrs = {key: _attr(value) for key, value in f.attrs.items()}
        shape = ds.shape
    k = (k if len(shape) == 4 else np.expand_dims(k, -3)).astype(np.complex64)
    mask = _sampling_mask(k, columns, index, path)
    return FastMRIData(k * mask[..., None, :, :], mask, reference, name, header, attrs, shape[0], str(path))
