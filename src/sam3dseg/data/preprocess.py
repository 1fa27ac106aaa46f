"""From a volume file's array to the model grid, and back (docs/method.md §D5, "Encoder input").

Steps, each recorded in a :class:`Transform` so a prediction maps back exactly:

1. **Reorient**: permute and flip the ``(z, y, x)`` array so that its axes run along
   the patient's anatomical axes (nearest to the direction cosines), with the
   slicing axis first: the result is ``(D, H, W)``. ``axial`` slices across S-I,
   ``coronal`` across A-P, ``sagittal`` across L-R. Exact (no interpolation).
2. **Intensities** to ``[0, 255]``: CT by a window (level/width), other modalities by
   a percentile clip, channel by channel.
3. **Resample** (optional) to a target spacing, then resize each slice so its longest
   side equals the encoder's ``image_size``. The zero padding to a square and SAM's
   pixel normalisation follow in the encoder input (:func:`sam3dseg.model.encoder.to_encoder_input`).

Labels are resampled by pixel-centre nearest neighbour with integer arithmetic, so
``restore_label(preprocess_label(y)) == y`` exactly whenever no axis is shrunk.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..common.settings import check_settings, one_of, setting, to_dict
from ..errors import UserError
from .volumes import Geometry

# Anatomical axis (LPS index: 0 = L-R, 1 = P-A, 2 = S-I) of the array axes (D, H, W), per slicing axis.
SLICING_AXES: dict[str, tuple[int, int, int]] = {
    "axial": (2, 1, 0),
    "coronal": (1, 2, 0),
    "sagittal": (0, 2, 1),
}


def _window_ok(v: tuple[float, float]) -> bool:
    return len(v) == 2 and v[1] > 0


def _percentiles_ok(v: tuple[float, float]) -> bool:
    return len(v) == 2 and 0 <= v[0] < v[1] <= 100


def _spacing_ok(v: tuple[float, float, float] | None) -> bool:
    return v is None or (len(v) == 3 and min(v) > 0)


@dataclass
class PreprocessConfig:
    """How volumes become encoder input; written into every cache and model file."""

    SECTION: ClassVar[str] = "preprocess"

    slicing_axis: str = one_of("axial", SLICING_AXES, "slices run across this anatomical axis", flag="--slicing-axis")
    target_spacing: tuple[float, float, float] | None = setting(
        None, "null or three numbers > 0 (D, H, W mm)", _spacing_ok,
        "resample to this spacing first; null keeps the file's", flag="--target-spacing",
    )  # fmt: skip
    intensity: str = one_of(
        "auto", ("auto", "ct", "percentile"), "CT window, percentile clip, or auto (CT window for CT channels)", flag="--intensity"
    )
    ct_window: tuple[float, float] = setting(
        (40.0, 400.0), "a level and a width > 0 (HU)", _window_ok, "CT window (soft tissue by default)", flag="--ct-window"
    )
    percentiles: tuple[float, float] = setting(
        (0.5, 99.5), "two numbers 0 <= low < high <= 100", _percentiles_ok, "intensity clip for non-CT channels"
    )

    def __post_init__(self) -> None:
        if self.target_spacing is not None:
            self.target_spacing = tuple(float(s) for s in self.target_spacing)
        self.ct_window = tuple(float(v) for v in self.ct_window)
        self.percentiles = tuple(float(v) for v in self.percentiles)
        check_settings(self)


@dataclass
class Transform:
    """Everything needed to map between a file's grid and the model grid."""

    original_shape: tuple[int, int, int]  # (z, y, x) of the file
    perm: tuple[int, int, int]  # array axes of the file taken as (D, H, W)
    flips: tuple[bool, bool, bool]  # then flipped along these of (D, H, W)
    oriented_shape: tuple[int, int, int]  # (D, H, W) after reorientation
    oriented_spacing: tuple[float, float, float]
    model_shape: tuple[int, int, int]  # (D', H', W') fed to the encoder, before padding
    geometry: Geometry

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Transform:
        fields = {k: tuple(v) for k, v in d.items() if k != "geometry"}
        fields["flips"] = tuple(bool(f) for f in fields["flips"])
        return cls(**fields, geometry=Geometry.from_dict(d["geometry"]))


def _orientation(direction: tuple[float, ...]) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For each ITK index axis (x, y, z): the anatomical axis it runs along and whether backwards.

    The assignment maximises the summed |cosine| over the six permutations, so an
    oblique scan still gets one distinct anatomical axis per index axis.
    """
    m = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))  # m[anat, index axis]
    best = max(itertools.permutations(range(3)), key=lambda p: sum(m[p[c], c] for c in range(3)))
    signs = np.asarray(direction, dtype=float).reshape(3, 3)
    return tuple(best), tuple(bool(signs[best[c], c] < 0) for c in range(3))


def _reorientation(geometry: Geometry, slicing_axis: str) -> tuple[list[int], list[bool], list[float]]:
    """Array axes taken as ``(D, H, W)``, their flips and their spacings, for ``slicing_axis``."""
    anatomy, backwards = _orientation(geometry.direction)
    perm, flips, spacing = [], [], []
    for anat in SLICING_AXES[slicing_axis]:
        index_axis = anatomy.index(anat)  # ITK index axis c is numpy axis 2 - c
        perm.append(2 - index_axis)
        flips.append(backwards[index_axis])
        spacing.append(float(geometry.spacing[index_axis]))
    return perm, flips, spacing


def plan_transform(shape: tuple[int, int, int], geometry: Geometry, config: PreprocessConfig, image_size: int) -> Transform:
    """Decide the reorientation and the model grid for a ``(z, y, x)`` volume."""
    perm, flips, spacing = _reorientation(geometry, config.slicing_axis)
    oriented = tuple(int(shape[a]) for a in perm)

    if config.target_spacing is None:
        grid = [float(n) for n in oriented]
    else:
        grid = [n * s / t for n, s, t in zip(oriented, spacing, config.target_spacing)]
    scale = image_size / max(grid[1], grid[2])
    model = (
        max(1, round(grid[0])),
        min(image_size, max(1, round(grid[1] * scale))),
        min(image_size, max(1, round(grid[2] * scale))),
    )
    return Transform(tuple(int(s) for s in shape), tuple(perm), tuple(flips), oriented, tuple(spacing), model, geometry)


def reorient(array: np.ndarray, t: Transform) -> np.ndarray:
    """``(..., z, y, x)`` -> ``(..., D, H, W)``."""
    lead = array.ndim - 3
    out = array.transpose(*range(lead), *(lead + a for a in t.perm))
    flip_axes = tuple(lead + i for i, f in enumerate(t.flips) if f)
    return np.flip(out, flip_axes) if flip_axes else out


def anatomical_view(
    arrays: list[np.ndarray | None], geometry: Geometry, slicing_axis: str = "axial"
) -> tuple[list[np.ndarray | None], float]:
    """``(z, y, x)`` arrays reoriented to ``(D, H, W)`` with slices across ``slicing_axis`` (for pictures),
    and the in-plane aspect (row spacing / column spacing) that shows them undistorted."""
    perm, flips, spacing = _reorientation(geometry, slicing_axis)
    flip_axes = tuple(i for i, f in enumerate(flips) if f)

    def view(a: np.ndarray) -> np.ndarray:
        a = a.transpose(perm)
        return np.ascontiguousarray(np.flip(a, flip_axes) if flip_axes else a)

    return [None if a is None else view(a) for a in arrays], spacing[1] / spacing[2]


def unreorient(array: np.ndarray, t: Transform) -> np.ndarray:
    """Inverse of :func:`reorient`: ``(..., D, H, W)`` -> ``(..., z, y, x)``."""
    lead = array.ndim - 3
    flip_axes = tuple(lead + i for i, f in enumerate(t.flips) if f)
    out = np.flip(array, flip_axes) if flip_axes else array
    inverse = np.argsort(t.perm)
    return out.transpose(*range(lead), *(lead + int(a) for a in inverse))


def model_intensities(x: np.ndarray, modality: str, config: PreprocessConfig) -> np.ndarray:
    """Intensities of one channel to ``[0, 255]`` (float32), as the model sees them (decision D5):
    the CT window for CT, the percentile clip otherwise. Pictures use it too."""
    use_ct = config.intensity == "ct" or (config.intensity == "auto" and modality.strip().upper() == "CT")
    if use_ct:
        level, width = config.ct_window
        lo, hi = level - width / 2, level + width / 2
    else:
        lo, hi = np.percentile(x, config.percentiles)
    if hi <= lo:  # a constant image: map it to mid-grey rather than divide by zero
        return np.full(x.shape, 127.5, dtype=np.float32)
    return ((np.clip(x, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.float32)


def _resample_image(volume: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``(C, D, H, W)`` -> ``(C, D', H', W')``: linear along D, antialiased bilinear in-plane."""
    c, d, h, w = volume.shape
    if d != shape[0]:
        flat = volume.permute(0, 2, 3, 1).reshape(1, c * h * w, d)
        volume = F.interpolate(flat, size=shape[0], mode="linear", align_corners=False)
        volume = volume.reshape(c, h, w, shape[0]).permute(0, 3, 1, 2)
    if (h, w) != tuple(shape[1:]):
        # antialias matters when a large slice (512²) shrinks to a small encoder (256²)
        volume = F.interpolate(volume, size=shape[1:], mode="bilinear", align_corners=False, antialias=True)
    return volume


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Pixel-centre nearest neighbour, in integers: source of output i is ⌊(2i+1)·n_in / (2·n_out)⌋."""
    return ((2 * np.arange(n_out) + 1) * n_in) // (2 * n_out)


def _resample_label(label: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    for axis, n_out in enumerate(shape):
        if label.shape[axis] != n_out:
            label = np.take(label, _nearest_indices(label.shape[axis], n_out), axis=axis)
    return label


def preprocess_image(
    array: np.ndarray, geometry: Geometry, modalities: list[str], config: PreprocessConfig, image_size: int
) -> tuple[np.ndarray, Transform]:
    """A read volume to encoder-ready slices.

    Args:
        array: ``(z, y, x)`` or ``(C, z, y, x)`` as :func:`sam3dseg.data.volumes.read_volume` returns.
        geometry: its geometry.
        modalities: one name per channel (``"CT"`` selects the CT window under ``auto``).
        config: the preprocessing settings.
        image_size: the encoder's input side S.

    Returns:
        ``(C, D', H', W')`` float32 grey values in ``[0, 255]`` with ``max(H', W') = S``,
        and the transform that maps model-grid results back onto the file's grid.
    """
    if array.ndim == 3:
        array = array[None]
    if len(modalities) != array.shape[0]:
        raise UserError(f"volume has {array.shape[0]} channel(s) but the dataset declares {len(modalities)}")
    t = plan_transform(array.shape[1:], geometry, config, image_size)
    oriented = reorient(array, t)
    normalised = np.stack([model_intensities(ch, m, config) for ch, m in zip(oriented, modalities)])
    volume = _resample_image(torch.from_numpy(normalised), t.model_shape)
    return volume.clamp_(0, 255).numpy(), t


def preprocess_label(label: np.ndarray, t: Transform) -> np.ndarray:
    """A ``(z, y, x)`` label volume onto the model grid ``(D', H', W')`` (nearest, exact)."""
    if tuple(label.shape) != t.original_shape:
        raise UserError(f"label shape {tuple(label.shape)} differs from the image's {t.original_shape}")
    return np.ascontiguousarray(_resample_label(reorient(label, t), t.model_shape))


def restore_label(label: np.ndarray, t: Transform) -> np.ndarray:
    """A model-grid label ``(D', H', W')`` back onto the file's grid ``(z, y, x)``."""
    return np.ascontiguousarray(unreorient(_resample_label(label, t.oriented_shape), t))


def to_file_grid(slices: Iterator[torch.Tensor], t: Transform) -> Iterator[torch.Tensor]:
    """Model-grid class scores, slice by slice ``(K, H', W')`` in order -> the oriented file grid's slices
    ``(K, H, W)`` in order: bilinear in-plane, linear along depth with ``align_corners=False`` (output slice
    z reads model position ``(z + 0.5)·D'/D - 0.5``), which together is one trilinear map, computed two
    model slices at a time so that a long volume never sits whole at both resolutions. The one map from
    the model's grid back to the file's, for labels (predict's streaming path) and probabilities alike."""
    d_model = t.model_shape[0]
    d, h, w = t.oriented_shape
    held: dict[int, torch.Tensor] = {}
    source = iter(slices)
    next_index = 0

    def get(j: int) -> torch.Tensor:
        nonlocal next_index
        while next_index <= j:
            s = next(source)
            if s.shape[-2:] != (h, w):
                s = F.interpolate(s[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            held[next_index] = s
            next_index += 1
        return held[j]

    scale = d_model / d
    for z in range(d):
        pos = max((z + 0.5) * scale - 0.5, 0.0)
        j0 = min(int(math.floor(pos)), d_model - 1)
        j1 = min(j0 + 1, d_model - 1)
        frac = pos - j0
        yield get(j0) if frac == 0 or j1 == j0 else (1 - frac) * get(j0) + frac * get(j1)
        for old in [k for k in held if k < j0]:
            del held[old]


def restore_probabilities(probs: torch.Tensor, t: Transform) -> np.ndarray:
    """Model-grid class scores ``(K, D', H', W')`` back onto the file's grid ``(K, z, y, x)``
    (:func:`to_file_grid`, then the reorientation undone).

    Interpolated linearly (scores, not labels, so the argmax is taken on the
    original grid at full detail).
    """
    k = probs.shape[0]
    oriented = torch.stack(list(to_file_grid(iter(probs.float().unbind(1)), t)), dim=1)
    return np.ascontiguousarray(unreorient(oriented.numpy(), t)).reshape(k, *t.original_shape)
