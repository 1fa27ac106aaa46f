"""Per-class Dice, HD95 (mm) and normalised surface Dice, the way segmentation papers report them.

Surfaces follow MONAI's convention: a class's surface voxels are the mask minus its
erosion by the 6-neighbourhood, with everything outside the volume counted as
background. Distances are Euclidean in millimetres using the *reference's* voxel
spacing: the distance from each surface voxel of one mask to the nearest surface
voxel of the other.

- Dice ``2|P∩R| / (|P| + |R|)``.
- HD95: the larger of the two directed 95th percentiles (linear interpolation) of
  those surface distances.
- NSD at tolerance τ: the fraction of both surfaces lying within τ of the other,
  ``(#{d(P→R) ≤ τ} + #{d(R→P) ≤ τ}) / (|∂P| + |∂R|)``.

Empty masks: both empty -> all three are NaN and the case is left out of that
class's mean (as nnU-Net does for Dice); exactly one empty -> Dice 0, NSD 0 and
HD95 = inf, kept out of the mean HD95 but counted in ``hd95_infinite``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to ``b``'s surface, and from ``b``'s to ``a``'s.

    Args:
        a, b: boolean masks of one shape, both non-empty.
        spacing: voxel size per array axis, in the arrays' axis order.
    """
    sa, sb = _surface(a), _surface(b)
    # crop to the union's bounding box: distances between surface voxels do not change
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(sa | sb))
    sa, sb = sa[box], sb[box]
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return to_b[sa], to_a[sb]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """``2|P∩R| / (|P| + |R|)`` of two boolean masks; NaN when both are empty."""
    total = int(pred.sum()) + int(ref.sum())
    return 2 * int((pred & ref).sum()) / total if total else math.nan


def class_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tolerance: float) -> dict:
    """Dice, HD95 and NSD of two boolean masks (see the module notes for empty masks)."""
    overlap = dice(pred, ref)
    if math.isnan(overlap):
        return {"dice": math.nan, "hd95": math.nan, "nsd": math.nan}
    if not pred.any() or not ref.any():
        return {"dice": overlap, "hd95": math.inf, "nsd": 0.0}
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    hd95 = max(float(np.percentile(d_pr, 95)), float(np.percentile(d_rp, 95)))
    nsd = (int((d_pr <= tolerance).sum()) + int((d_rp <= tolerance).sum())) / (d_pr.size + d_rp.size)
    return {"dice": overlap, "hd95": hd95, "nsd": nsd}


def drop_ignored(pred: np.ndarray, ref: np.ndarray, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and reference with the reference's ``ignore``-label voxels set to background in both
    (nnU-Net's ignore label: those voxels count for no class)."""
    ignored = ref == ignore
    return np.where(ignored, 0, pred).astype(pred.dtype), np.where(ignored, 0, ref).astype(ref.dtype)


def dice_per_class(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> list[float]:
    """Dice of classes 1..K-1 of two label volumes on the same grid (NaN where both are empty)."""
    return [dice(pred == k, ref == k) for k in range(1, num_classes)]


def mean_finite(values) -> float:
    """Mean of the finite values (NaN and inf left out, as documented above); NaN when none is."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def class_means(per_case: list[list[float]], num_classes: int) -> list[float]:
    """Each foreground class's mean over cases of its Dice (rows of :func:`dice_per_class`), NaN left out."""
    return [mean_finite(row[k] for row in per_case) for k in range(num_classes - 1)]


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], num_classes: int, tolerance: float) -> list[dict]:
    """Metrics for classes 1..K-1 of two label volumes on the same grid, each with ``in_reference``
    (the reference holds the class) and ``found`` (the prediction overlaps it)."""
    rows = []
    for k in range(1, num_classes):
        p, r = pred == k, ref == k
        rows.append({**class_metrics(p, r, spacing, tolerance), "in_reference": bool(r.any()), "found": bool((p & r).any())})
    return rows


def summarise(rows: list[dict], class_names: list[str]) -> dict:
    """Per-class means over cases (NaN and inf left out as documented), and the overall mean."""
    summary: dict = {"per_class": {}, "cases": len({r["case"] for r in rows})}
    for name in class_names[1:]:
        mine = [r for r in rows if r["class"] == name]
        entry = {}
        for key in ("dice", "hd95", "nsd"):
            entry[key] = mean_finite(r[key] for r in mine)
        entry["hd95_infinite"] = sum(1 for r in mine if r["hd95"] == math.inf)
        entry["both_empty"] = sum(1 for r in mine if math.isnan(r["dice"]))
        if mine and "in_reference" in mine[0]:  # rows of `evaluate`: cases holding the class, and found
            entry["present"] = sum(1 for r in mine if r["in_reference"])
            entry["found"] = sum(1 for r in mine if r["found"])
        summary["per_class"][name] = entry
    for key in ("dice", "hd95", "nsd"):
        summary[f"mean_{key}"] = mean_finite(e[key] for e in summary["per_class"].values())
    return summary


# nnU-Net v2's summary.json (nnunetv2/evaluation/evaluate_predictions.py), so its tools read our evaluations.
NNUNET_METRICS = ("Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref")


def nnunet_counts(pred: np.ndarray, ref: np.ndarray, num_classes: int, counted: int | None = None) -> dict[str, dict]:
    """nnU-Net's per-case metrics of labels 1..K-1: ``{"1": {"Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred",
    "n_ref"}, ...}``; Dice and IoU NaN when both masks are empty, as nnU-Net writes them. ``counted``: the
    voxels outside the ignore label (the TN count leaves the ignored ones out, as nnU-Net's does)."""
    out = {}
    for k in range(1, num_classes):
        p, r = pred == k, ref == k
        tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
        tn = (int(p.size) if counted is None else counted) - tp - fp - fn
        empty = tp + fp + fn == 0
        out[str(k)] = {"Dice": math.nan if empty else 2 * tp / (2 * tp + fp + fn), "IoU": math.nan if empty else tp / (tp + fp + fn),
                       "FP": fp, "TP": tp, "FN": fn, "TN": tn, "n_pred": fp + tp, "n_ref": fn + tp}  # fmt: skip
    return out


def nnunet_summary(per_case: list[dict]) -> dict:
    """nnU-Net's summary from ``[{"metrics": nnunet_counts(...), "prediction_file", "reference_file"}, ...]``:
    ``mean`` per label (NaN left out, nnU-Net's nanmean) and ``foreground_mean`` (the mean of the label means)."""
    labels = list(per_case[0]["metrics"]) if per_case else []
    mean = {}
    for k in labels:
        mean[k] = {}
        for m in NNUNET_METRICS:
            values = [c["metrics"][k][m] for c in per_case if not math.isnan(c["metrics"][k][m])]
            mean[k][m] = float(np.mean(values)) if values else math.nan
    foreground = {m: float(np.mean([mean[k][m] for k in labels])) if labels else math.nan for m in NNUNET_METRICS}
    return {"foreground_mean": foreground, "mean": mean, "metric_per_case": per_case}


def hd95_text(entry: dict, digits: int = 2) -> str:
    """A class's mean HD95 for a table: ``inf`` when every case it holds was missed (as metrics.csv says),
    ``n/a`` when no case holds it."""
    if math.isnan(entry["hd95"]):
        return "inf" if entry["hd95_infinite"] else "n/a"
    return f"{entry['hd95']:.{digits}f}"
