"""A case as a picture: one rule for every montage ``predict``, ``evaluate`` and the demo write.

The image is shown as a radiologist would look at it, whatever the model read: a CT through
the soft-tissue window (level 40, width 400: -160..240 HU, so fat at -100 HU is dark grey,
air black and bone white; the model's own window, often much narrower, hides the body wall),
anything else between its 0.5th and 99.5th percentiles. Slices across the axial plane, in
anatomical orientation with the voxels' aspect; the title names the window. The same case
gives the same picture from every command.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.plots import save_montage
from .fingerprint import modality_kind
from .preprocess import anatomical_view
from .volumes import Geometry

CT_WINDOW = (40.0, 400.0)  # level, width in HU: the soft-tissue window
PERCENTILES = (0.5, 99.5)


def display_window(image: np.ndarray, modality: str) -> tuple[tuple[float, float], str]:
    """The grey values shown black and white for ``image`` of ``modality``, and the words for the title."""
    if modality_kind(modality) == "CT":
        level, width = CT_WINDOW
        return (level - width / 2, level + width / 2), f"CT soft-tissue window L{level:g} W{width:g}"
    lo, hi = (float(v) for v in np.percentile(image, PERCENTILES))
    return (lo, hi if hi > lo else lo + 1), f"{modality}, grey {PERCENTILES[0]:g}-{PERCENTILES[1]:g} %"


def save_case_montage(
    path: str | Path,
    image: np.ndarray | None,
    modality: str,
    geometry: Geometry,
    pred: np.ndarray,
    ref: np.ndarray | None,
    class_names: list[str],
    title: str,
) -> Path:
    """Write a case's montage: ``image`` (the first channel as read, ``(z, y, x)``, or None for contours on
    black) with the prediction ``pred`` (filled, solid edge) and the reference ``ref`` (dashed), all on the
    file's grid; slices where the classes are (:func:`~sam3dseg.common.plots.pick_slices`)."""
    (shown, p, r), aspect = anatomical_view([image, pred, ref], geometry, "axial")
    window, words = display_window(image, modality) if image is not None else (None, "")
    label = f"{title} · {words}" if words else title
    return save_montage(path, shown, p, r, class_names, title=label, aspect=aspect, window=window)
