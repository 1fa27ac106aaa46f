"""What the training data looked like, recorded so that prediction can tell when an input does not.

The cache records, per case, the file's spacing and each channel's robust intensity range
(0.5th-99.5th percentile); its manifest combines them (:func:`combine`) and training copies
that into the model files. :func:`differences` compares a new volume with it: the modality
its file names (DICOM's Modality, MetaImage's ``Modality``), its intensity range and its
spacing. A model meets data unlike its training data silently otherwise (a brain MR model
run on a CT predicts something, exit 0); nnU-Net users know the failure as "wrong
modality" only after looking at the output.
"""

from __future__ import annotations

import numpy as np

from .preprocess import PreprocessConfig
from .volumes import Geometry

PERCENTILES = (0.5, 99.5)
SPACING_FACTOR = 2.0  # an axis more than this far from the training spacing (either way) is "far"

_MR_NAMES = {"MR", "MRI", "FLAIR", "ADC", "DWI", "SWI", "PD", "T1", "T2", "T1W", "T2W", "T1GD", "T1CE", "T1C"}


def intensity_range(channel: np.ndarray) -> list[float]:
    """The 0.5th and 99.5th percentile of one channel, from every second voxel along each axis."""
    sample = channel[::2, ::2, ::2] if channel.ndim == 3 else channel
    lo, hi = np.percentile(sample, PERCENTILES)
    return [float(lo), float(hi)]


def volume_stats(image: np.ndarray, geometry: Geometry) -> dict:
    """One case's record: ``{"spacing": [x, y, z] mm, "intensity": [[lo, hi] per channel]}`` of a ``(C, z, y, x)`` image."""
    return {"spacing": [float(s) for s in geometry.spacing], "intensity": [intensity_range(c) for c in image]}


def combine(stats: list[dict]) -> dict | None:
    """The training data's record from its cases': how many, the median spacing (axes sorted, so the
    record does not depend on how each file is oriented) and, per channel, the lowest low and the
    highest high. None without any case."""
    if not stats:
        return None
    spacing = np.median([sorted(s["spacing"]) for s in stats], axis=0)
    channels = len(stats[0]["intensity"])
    intensity = [[min(s["intensity"][c][0] for s in stats), max(s["intensity"][c][1] for s in stats)] for c in range(channels)]
    return {"cases": len(stats), "spacing": [round(float(v), 5) for v in spacing], "intensity": intensity}


def modality_kind(name: str) -> str | None:
    """``"CT"``, ``"MR"`` or None (unknown) for a channel or file modality name."""
    upper = name.strip().upper().replace("-", "").replace(" ", "")
    if upper == "CT":
        return "CT"
    if upper in _MR_NAMES or upper.startswith(("T1", "T2", "MR")):
        return "MR"
    return None


def differences(
    record: dict | None, channel_names: list[str], preprocess: PreprocessConfig, image: np.ndarray, geometry: Geometry,
    modality: str | None = None,
) -> list[str]:
    """How a ``(C, z, y, x)`` image (with the modality its file names, if any) differs from the training data
    ``record`` (:func:`combine`; None for models trained before it was kept: only the modality is compared).

    Returns one short clause per difference, empty when it looks alike:

    - the file's modality is CT and the model's first channel is not (under ``intensity: auto`` the
      model reads a CT channel by name), or the other way round;
    - a channel's 0.5-99.5 % range reaches more than the whole training range beyond it, or holds
      negative values where the training data had none (HU fed to an MR model);
    - an axis's spacing more than :data:`SPACING_FACTOR` times off the training median (axes sorted).
    """
    found = []
    trained_ct = preprocess.intensity == "ct" or (preprocess.intensity == "auto" and modality_kind(channel_names[0]) == "CT")
    kind = modality_kind(modality) if modality else None
    if kind is not None and (kind == "CT") != trained_ct:
        found.append(f"the file says {modality}, the model was trained on {'CT' if trained_ct else channel_names[0]}")
    if record is None:
        return found
    for name, channel, (lo, hi) in zip(channel_names, image, record["intensity"]):
        a, b = intensity_range(channel)
        span = max(hi - lo, 1e-6)
        if a < lo - span or b > hi + span or (lo >= 0 and a < -0.05 * span):
            found.append(f"{name} intensities {a:g}..{b:g} (0.5-99.5 %), training {lo:g}..{hi:g}")
    spacing = sorted(geometry.spacing)
    if any(max(s / t, t / s) > SPACING_FACTOR for s, t in zip(spacing, record["spacing"])):
        shown = " × ".join(f"{s:.3g}" for s in spacing)
        trained = " × ".join(f"{s:.3g}" for s in record["spacing"])
        found.append(f"spacing {shown} mm, training about {trained} mm")
    return found
