"""Reading and writing volumes with their geometry (SimpleITK).

One contract, after nnU-Net v2's reader/writer: :func:`read_volume` returns
``(array, geometry)``, :func:`write_volume` takes an array and that geometry back.
Arrays are in numpy (SimpleITK) order ``(z, y, x)``, channels first for multi-channel
images ``(C, z, y, x)``; ``Geometry`` keeps spacing, origin and direction in ITK's
own ``(x, y, z)`` terms so that a written file carries exactly the input's header.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) and DICOM series (a folder).
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.files import atomic_output
from ..common.settings import to_dict
from ..errors import UserError, summarise

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Where a ``(z, y, x)`` voxel grid lies in physical space, in ITK's ``(x, y, z)`` terms."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3×3, row-major, columns are the index axes' directions

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))

    def physical_points(self, index_xyz) -> np.ndarray:
        """Continuous voxel indices ``(..., 3)`` in ITK's ``(x, y, z)`` order to patient coordinates in mm (ITK's
        LPS): origin + direction · (spacing ⊙ index), as ``TransformContinuousIndexToPhysicalPoint``."""
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        return np.asarray(self.origin) + (np.asarray(index_xyz, dtype=np.float64) * np.asarray(self.spacing)) @ direction.T

    def matches(self, other: Geometry, tol: float = 1e-4) -> bool:
        """Same grid placement within ``tol`` (relative for spacing, absolute mm for origin)."""
        return (
            np.allclose(self.spacing, other.spacing, rtol=tol, atol=0)
            and np.allclose(self.origin, other.origin, atol=max(tol, tol * max(map(abs, self.origin), default=0)))
            and np.allclose(self.direction, other.direction, atol=tol)
        )


def check_finite(array: np.ndarray, what: str) -> None:
    """Refuse NaN or Inf intensities, naming the file."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise UserError(f"{what} has {bad} NaN/Inf voxel(s); fix or mask them before use")


def read_channels(paths: list[Path]) -> tuple[np.ndarray, Geometry]:
    """Read one case's channel files (or one 4-D file) into ``(C, z, y, x)``.

    Refuses NaN/Inf intensities and channels that do not share one grid.
    """
    channels, geometry = [], None
    for path in paths:
        array, g = read_volume(path)
        check_finite(array, str(path))
        if geometry is not None and (array.shape[-3:] != channels[0].shape or not g.matches(geometry)):
            raise UserError(f"{path} does not share the grid of {paths[0]}")
        geometry = geometry or g
        channels.extend(array if array.ndim == 4 else array[None])
    return np.stack(channels), geometry


def _sitk():
    import SimpleITK as sitk  # imported on use: keeps `import sam3dseg` light

    return sitk


def image_suffix(path: Path) -> str:
    """The format suffix of ``path`` as written (``.nii.gz`` counts as one), or '' for none we know.

    Matched without regard to case (``.NII.GZ`` is NIfTI too).
    """
    name = path.name.lower()
    suffix = next((s for s in SUFFIXES if name.endswith(s)), "")
    return path.name[len(path.name) - len(suffix) :] if suffix else ""


_CHANNEL = re.compile(r"^(.*)_(\d{4})$")


def case_name(path: Path) -> str:
    """The one naming rule: a file's name without its image suffix; a DICOM series folder its name.

    ``liver_003_0000.nii.gz`` -> ``liver_003_0000`` (see :func:`split_channel` for
    the nnU-Net channel part), ``CT.NRRD`` -> ``CT``.
    """
    suffix = image_suffix(path)
    if suffix:
        return path.name[: len(path.name) - len(suffix)]
    return path.name if path.is_dir() else path.stem  # a series folder's name may hold dots


def split_channel(name: str) -> tuple[str, int | None]:
    """nnU-Net's ``{case}_{XXXX}`` -> ``(case, channel)``; any other name -> ``(name, None)``."""
    match = _CHANNEL.match(name)
    return (match.group(1), int(match.group(2))) if match else (name, None)


def channel_groups(paths: Iterable[Path]) -> tuple[dict[str, dict[int, Path]], list[Path]]:
    """nnU-Net's naming rule for image folders: files ``{case}_{XXXX}`` grouped by case, keyed by channel number
    (cases in name order), and the files whose names carry no channel part, apart."""
    groups: dict[str, dict[int, Path]] = {}
    loose = []
    for path in sorted(paths):
        name, channel = split_channel(case_name(path))
        if channel is None:
            loose.append(path)
        else:
            groups.setdefault(name, {})[channel] = path
    return dict(sorted(groups.items())), loose


def channel_gaps(channels: Iterable[int], num_channels: int) -> tuple[list[int], list[int]]:
    """The channel numbers a case's files lack of ``0..num_channels-1``, and those beyond them."""
    have = set(channels)
    return sorted(set(range(num_channels)) - have), sorted(have - set(range(num_channels)))


def _nifti_layout(header: bytes) -> tuple[int, int, str | None] | None:
    """``(voxel data offset, voxel bytes, numpy float dtype or None)`` of a NIfTI-1/2 header."""
    for endian in "<>":
        size = struct.unpack(endian + "i", header[:4])[0]
        if size == 348 and len(header) >= 348:
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            dim = struct.unpack(endian + "8h", header[40:56])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if size == 540 and len(header) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dim = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    voxels = 1
    for n in dim[1 : 1 + max(0, min(dim[0], 7))]:
        voxels *= max(int(n), 1)
    floats = {16: endian + "f4", 64: endian + "f8"}.get(datatype)
    return max(offset, size), voxels * bitpix // 8, floats


def _check_nifti(path: Path) -> None:
    """Refuse a truncated NIfTI file or one with NaN/Inf voxels.

    ITK's NIfTI reader does neither: it fills missing voxels and turns NaN into 0
    without a word, so the file is scanned here first (one streaming pass).
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    total, bad, layout, pending = 0, 0, None, b""
    try:
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                if layout is None:
                    pending += chunk
                    if len(pending) < 540 and len(chunk):
                        continue
                    layout = _nifti_layout(pending[:540]) or (0, 0, None)
                    chunk, pending = pending, b""
                start = max(0, layout[0] - total)
                total += len(chunk)
                if layout[2] and start < len(chunk):
                    data = pending + chunk[start:]
                    item = np.dtype(layout[2]).itemsize
                    usable = len(data) - len(data) % item
                    bad += int((~np.isfinite(np.frombuffer(data[:usable], layout[2]))).sum())
                    pending = data[usable:]
    except (EOFError, OSError, zlib.error) as err:
        raise UserError(f"cannot read {path}: truncated or corrupt compressed file ({err})") from err
    if layout and layout[1] and total < layout[0] + layout[1]:
        raise UserError(f"cannot read {path}: truncated NIfTI file ({total} of {layout[0] + layout[1]} bytes)")
    if bad:
        raise UserError(f"{path} has {bad} NaN/Inf voxel(s); fix or mask them before use")


def sitk_reason(err: RuntimeError) -> str:
    """SimpleITK's reason for a failure, summarised: its ``ERROR`` line (the lines before name C++ sources)."""
    lines = str(err).strip().splitlines()
    reason = next((line for line in lines if "ERROR" in line), lines[-1] if lines else "")
    return summarise(RuntimeError(reason.split("ERROR:")[-1].strip()))


def read_volume(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a 3-D image (or 4-D: channels last in the file) with its geometry.

    Returns:
        ``array`` ``(z, y, x)`` for one channel or ``(C, z, y, x)`` for several, and
        the geometry of the 3-D grid.

    Raises:
        UserError: missing or unreadable file, or not 3-D / 4-D.
    """
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise UserError(f"image not found: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise UserError(f"{path} is a folder without a DICOM series")
            if len(series) > 1:
                raise UserError(f"{path} holds {len(series)} DICOM series; point at a folder with one")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            if image_suffix(path).lower() in (".nii", ".nii.gz"):
                _check_nifti(path)
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise UserError(f"cannot read {path}: unreadable or truncated image ({sitk_reason(err)})") from err

    dim = image.GetDimension()
    if dim == 4:
        # 4-D NIfTI (MSD BraTS: x, y, z, sequence): the last axis is the channel.
        size = list(image.GetSize())
        channels = []
        for c in range(size[3]):
            channels.append(sitk.Extract(image, size[:3] + [0], [0, 0, 0, c]))
        array = np.stack([sitk.GetArrayFromImage(ch) for ch in channels])
        image = channels[0]
    elif dim == 3:
        if image.GetNumberOfComponentsPerPixel() > 1:
            array = np.moveaxis(sitk.GetArrayFromImage(image), -1, 0)  # vector pixels -> channels
        else:
            array = sitk.GetArrayFromImage(image)
    else:
        raise UserError(f"{path} is a {dim}-D image; sam3dseg needs 3-D volumes (or 4-D with channels)")
    geometry = Geometry(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))
    return array, geometry


def file_modality(path: str | Path) -> str | None:
    """The modality a file states in its header, or None: DICOM's Modality (0008,0060) of a series
    folder's first file, MetaImage's ``Modality`` (``MET_MOD_CT`` -> ``CT``). NIfTI and NRRD state none."""
    sitk = _sitk()
    path = Path(path)
    if path.is_dir():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
        key, path = "0008|0060", Path(files[0]) if files else None
    else:
        key = "Modality"
    if path is None:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if not reader.HasMetaDataKey(key):
        return None
    value = reader.GetMetaData(key).strip().removeprefix("MET_MOD_")
    return None if value.upper() in ("", "UNKNOWN") else value


def write_volume(array: np.ndarray, geometry: Geometry, path: str | Path, header: dict[str, str] | None = None) -> Path:
    """Write a ``(z, y, x)`` array with ``geometry`` to ``path``, atomically; ``header``: further key/value fields
    for formats that keep them (NRRD's ``key:=value`` lines, e.g. 3D Slicer's segment fields).

    Written by :func:`~sam3dseg.common.files.atomic_output`: in a hidden folder beside ``path``, synced, then
    renamed into place (a ``.mhd``'s or ``.nhdr``'s data file before the header), so ``path`` is either
    absent or complete, never half-written.
    """
    sitk = _sitk()
    path = Path(path)
    if array.ndim != 3:
        raise ValueError(f"write_volume takes a (z, y, x) array, got shape {array.shape}")
    suffix = image_suffix(path).lower()
    if not suffix:
        raise UserError(f"cannot tell the format of {path}: use one of {', '.join(SUFFIXES)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    for key, value in (header or {}).items():
        image.SetMetaData(key, value)
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=suffix in (".nii.gz", ".nrrd", ".mha"))
    return path
