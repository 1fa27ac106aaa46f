"""``sam3dseg evaluate``: score a folder of predictions against a folder of references.

Writes ``metrics.csv`` (case, class, Dice, HD95, NSD), ``sam3dseg_summary.json`` (our summary:
per-class means, cases holding and finding each class, standard JSON) and ``summary.json`` in
nnU-Net v2's layout (``metric_per_case``, ``mean`` per label, ``foreground_mean``; NaN written as
nnU-Net writes it), so nnU-Net's tools read it and the two tools' summaries do not overwrite
each other with different layouts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...common.files import write_csv, write_json, write_text
from ...common.runtime import Log, print_line
from ...data.datasets import read_channel_names, read_class_names
from ...data.pictures import save_case_montage
from ...data.volumes import Geometry, case_name, image_suffix, read_volume
from ...errors import UserError
from ..config import EvaluateConfig
from ..metrics import case_metrics, drop_ignored, hd95_text, nnunet_counts, nnunet_summary, summarise
from .html_report import REPORT, case_entry, write_html_report


def _pairs(pred_dir: Path, ref_dir: Path, strict: bool) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """``(case, prediction, reference)`` for every reference with a prediction of the same file name,
    and the names of references without one (refused with ``strict``)."""
    for d, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not d.is_dir():
            raise UserError(f"{what} folder not found: {d}")
    refs = {p.name: p for p in sorted(ref_dir.iterdir()) if p.is_file() and image_suffix(p)}
    if not refs:
        raise UserError(f"no reference segmentations in {ref_dir}")
    missing = [n for n in refs if not (pred_dir / n).is_file()]
    if missing and (strict or len(missing) == len(refs)):
        raise UserError(
            f"{len(missing)} of {len(refs)} reference(s) have no prediction in {pred_dir} "
            f"(file names must match), e.g. {missing[0]}"
        )
    pairs = [(case_name(p), pred_dir / n, p) for n, p in refs.items() if n not in missing]
    return pairs, [case_name(refs[n]) for n in missing]


def _image_path(folder: Path, case: str) -> Path:
    """The case's image in ``folder``: ``{case}_0000`` (nnU-Net) or ``{case}``, with an image suffix."""
    found = [p for p in sorted(folder.iterdir()) if image_suffix(p) and case_name(p) in (f"{case}_0000", case)]
    if not found:
        raise UserError(f"no image for case {case} in {folder} (expected {case}_0000 or {case} with an image suffix)")
    return found[0]


def _read_pair(pred_path: Path, ref_path: Path, ignore: int | None) -> tuple[np.ndarray, np.ndarray, Geometry, int | None]:
    """A prediction and its reference on one grid, nnU-Net's ignore label dropped from both (those voxels
    count for no class), the reference's geometry, and how many voxels count (None without the label)."""
    pred, pred_geometry = read_volume(pred_path)
    ref, geometry = read_volume(ref_path)
    if pred.shape != ref.shape:
        raise UserError(f"prediction {pred_path} has shape {pred.shape}, reference {ref_path} {ref.shape}")
    if not pred_geometry.matches(geometry):  # same shape on another grid: voxel-wise scores would compare other places
        raise UserError(
            f"prediction {pred_path} lies on another grid than its reference {ref_path} (spacing {pred_geometry.spacing} "
            f"against {geometry.spacing}, origin {pred_geometry.origin} against {geometry.origin}, or the direction): "
            "resample one onto the other first"
        )
    if ignore is None:
        return pred, ref, geometry, None
    counted = int((ref != ignore).sum())
    pred, ref = drop_ignored(pred, ref, ignore)
    return pred, ref, geometry, counted


def _first_channel(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The first channel of the image at ``path``, which must lie on the segmentation's grid ``shape``."""
    array, _ = read_volume(path)
    first = array if array.ndim == 3 else array[0]
    if first.shape != shape:
        raise UserError(f"image {path} has shape {first.shape}, the segmentation {shape}")
    return first


@dataclass(frozen=True)
class _Cases:
    """What one evaluation scores: (case, prediction, reference) triples, each case's image where one is shown, the
    class names, nnU-Net's ignore label (None without one) and the dataset.json they came from (None: from the files)."""

    pairs: list[tuple[str, Path, Path]]
    shown: dict[str, Path]
    class_names: list[str]
    ignore: int | None
    labels: str | Path | None


def _classes(labels: str | Path | None, pairs: list[tuple[str, Path, Path]]) -> tuple[list[str], int | None]:
    """The class names (``labels``' dataset.json, else ``class{k}`` up to the largest label the files hold: one
    extra pass) and nnU-Net's ignore label (None without one)."""
    if labels:
        return read_class_names(labels)
    top = max(max(int(read_volume(p)[0].max()), int(read_volume(r)[0].max())) for _, p, r in pairs)
    return ["background"] + [f"class{k}" for k in range(1, top + 1)], None


def _score(cases: _Cases, tolerance: float, progress: bool) -> tuple[list[dict], list[dict]]:
    """Each case's metrics per class (rows of ``metrics.csv``) and nnU-Net's counts per case (its summary.json)."""
    from tqdm import tqdm

    rows, nnunet_cases, class_names = [], [], cases.class_names
    for case, pred_path, ref_path in tqdm(cases.pairs, desc="evaluate", unit="case", disable=not progress):
        pred, ref, geometry, counted = _read_pair(pred_path, ref_path, cases.ignore)
        top = max(int(pred.max()), int(ref.max()))
        if top >= len(class_names):
            raise UserError(f"{pred_path} or {ref_path} holds label {top}, but {cases.labels} names {len(class_names)} classes")
        spacing = tuple(reversed(geometry.spacing))  # (x, y, z) -> array order (z, y, x)
        for name, m in zip(class_names[1:], case_metrics(pred, ref, spacing, len(class_names), tolerance)):
            rows.append({"case": case, "class": name, **m})
        counts = nnunet_counts(pred, ref, len(class_names), counted)
        nnunet_cases.append({"metrics": counts, "prediction_file": str(pred_path), "reference_file": str(ref_path)})
    return rows, nnunet_cases


def _draw(out_dir: Path, title: str, cases: _Cases, summary: dict, rows: list[dict], config: EvaluateConfig) -> None:
    """The montages (``config.png``) and the HTML report (``config.html``), drawn once every case has scored (each case
    read again rather than held: a failure writes nothing, memory stays one case beside the page's encoded volumes)."""
    modality = ([*read_channel_names(cases.labels), "MR"] if cases.labels else ["MR"])[0]  # the first channel's, for the pictures
    viewed = []
    for case, pred_path, ref_path in cases.pairs if config.png or config.html else ():
        pred, ref, geometry, _ = _read_pair(pred_path, ref_path, cases.ignore)
        image = _first_channel(cases.shown[case], pred.shape) if case in cases.shown else None
        if config.png:
            save_case_montage(out_dir / f"{case}_vs_reference.png", image, modality, geometry, pred, ref, cases.class_names, case)
        if config.html:
            viewed.append(case_entry(case, pred, ref, geometry, image, modality))
    if config.html:
        write_html_report(out_dir / REPORT, title, summary, rows, cases.class_names, viewed)


def run_evaluate(
    pred_dir: str | Path,
    ref_dir: str | Path,
    out_dir: str | Path,
    labels: str | Path | None = None,
    config: EvaluateConfig | None = None,
    images: str | Path | None = None,
    progress: bool = True,
    log: Log | None = print_line,
) -> dict:
    """Metrics per case and class -> ``out/metrics.csv``, ``out/sam3dseg_summary.json``, ``out/summary.json``
    (nnU-Net's layout); the table to ``log``.

    Cases are the reference files that have a prediction of the same name; the others
    are listed (``summary["missing_predictions"]``) and left out, or refused with
    ``config.strict``. ``progress`` shows the bar; ``log`` takes the table (None: silence, for
    callers that report their own summary). With ``config.png`` and ``images`` (a folder of the cases' images,
    ``{case}_0000`` or ``{case}``) the montages draw both on the image, shown by
    :func:`~sam3dseg.data.pictures.save_case_montage`'s rule for the modality ``labels`` names. Returns the summary (per-class means, overall means,
    per class how many cases hold it and in how many the prediction found it).
    """
    pred_dir, ref_dir, out_dir = Path(pred_dir), Path(ref_dir), Path(out_dir)
    config = config or EvaluateConfig()
    pairs, missing = _pairs(pred_dir, ref_dir, config.strict)
    if images is not None and not Path(images).is_dir():
        raise UserError(f"folder of images not found: {images}")
    shown = {case: _image_path(Path(images), case) for case, *_ in pairs} if (config.png or config.html) and images is not None else {}
    cases = _Cases(pairs, shown, *_classes(labels, pairs), labels)
    rows, nnunet_cases = _score(cases, config.nsd_tolerance, progress)
    summary = summarise(rows, cases.class_names)
    summary["nsd_tolerance_mm"] = config.nsd_tolerance
    summary["missing_predictions"] = missing
    _draw(out_dir, f"sam3dseg evaluation of {pred_dir.name}", cases, summary, rows, config)

    write_csv(out_dir / "metrics.csv", rows, ["case", "class", "dice", "hd95", "nsd"])
    write_json(out_dir / "sam3dseg_summary.json", summary)
    # nnU-Net's own file: its layout, keys sorted, NaN as Python's json writes it (nnU-Net reads it so)
    write_text(out_dir / "summary.json", json.dumps(nnunet_summary(nnunet_cases), sort_keys=True, indent=4) + "\n")
    if log is not None:
        if missing:
            log(f"left out {len(missing)} reference(s) without a prediction in {pred_dir}: {', '.join(missing)} (--strict refuses)")
        log(format_table(summary, len(pairs)))
    return summary


def format_table(summary: dict, cases: int) -> str:
    """The per-class means as a fixed-width table, with how many cases found each class."""
    tol = summary["nsd_tolerance_mm"]
    lines = [f"{'class':<16}{'Dice':>8}{'HD95 mm':>10}{f'NSD@{tol:g}mm':>12}{'found':>8}  ({cases} case(s))"]
    never = [n for n, e in summary["per_class"].items() if e.get("present") and not e.get("found")]
    for name, e in summary["per_class"].items():
        notes = ["NEVER FOUND"] * (name in never) + [f"{e['hd95_infinite']} one-sided empty"] * bool(e["hd95_infinite"])
        note = f"  [{'; '.join(notes)}]" if notes else ""
        found = f"{e.get('found', 0)}/{e.get('present', 0)}"
        lines.append(f"{name:<16}{e['dice']:>8.4f}{hd95_text(e):>10}{e['nsd']:>12.4f}{found:>8}{note}")
    lines.append(f"{'mean':<16}{summary['mean_dice']:>8.4f}{summary['mean_hd95']:>10.2f}{summary['mean_nsd']:>12.4f}")
    if never:
        lines.append(f"never found: {', '.join(never)} (the mean HD95 covers found classes only)")
    return "\n".join(lines)


__all__ = ["run_evaluate", "format_table", "hd95_text"]
