"""``sam3dseg plan``: a dataset's fingerprint and the settings it suggests, as nnU-Net plans from its data.

The fingerprint reads every case once: spacings and sizes (in the slicing orientation, ``(D, H, W)``),
per-channel intensity statistics of the foreground (up to 10,000 voxels per case, evenly spaced),
and how often each class occurs. The plan proposes from it:

- ``preprocess.target_spacing``: the median spacing; for an anisotropic dataset (the coarsest
  axis more than 3 × the others' spacing and under a third of their size) that axis takes the
  10th percentile instead, as nnU-Net does;
- ``preprocess.intensity``: for a CT first channel, a window over the foreground's 0.5–99.5
  percentiles (nnU-Net's clip) instead of the fixed 40/400; percentiles otherwise;
- ``encoder`` (the one asked for, ``vit_b`` by default) and ``image_size``: the median in-plane
  extent at that spacing, rounded up to a multiple of 16, at most the size the encoder was
  trained at (1024 for SAM's ViTs and mobile_sam, 256 for lite_medsam);
- ``train.crop_depth`` (16, or the median depth if smaller), ``train.crop_tokens`` (the original
  SAM3D's 176² crop in the encoder's tokens, 176 / stride: 11 at stride 16, 44 at stride 4, when
  the token grid is larger; else left to its default, half the grid), ``train.batch_size`` 2 (nnU-Net's):
  while a step's memory, estimated from ``bench/crops.py``'s measurements, fits in half this
  machine's memory; otherwise batch 1, then fewer slices.

``plan.yaml`` has the sections ``cache`` and ``run`` of a recipe: ``sam3dseg cache --plan`` and
``sam3dseg train --plan`` start from it, explicit options still winning.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...common.files import write_json, write_text
from ...common.settings import dump_yaml, read_yaml
from ...data.datasets import Dataset, read_case
from ...data.preprocess import PreprocessConfig, plan_transform, reorient
from ...errors import UserError
from ...model.registry import encoder_entry

# The original SAM3D's in-plane training crop (Synapse, 176²), in pixels.
CROP_PIXELS = 176

SAMPLES_PER_CASE = 10_000


def fingerprint(dataset: Dataset, slicing_axis: str = "axial", progress: bool = True) -> dict:
    """Spacings, sizes, foreground intensities per channel and class frequencies of every case."""
    from tqdm import tqdm

    spacings, sizes, samples = [], [], [[] for _ in dataset.channel_names]
    voxels = np.zeros(dataset.num_classes, np.int64)
    cases_with = np.zeros(dataset.num_classes, np.int64)
    config = PreprocessConfig(slicing_axis=slicing_axis)
    for case in tqdm(dataset.cases, desc="fingerprint", unit="case", disable=not progress):
        image, geometry, label = read_case(case, dataset)
        t = plan_transform(image.shape[1:], geometry, config, 1024)
        spacings.append(t.oriented_spacing)
        sizes.append(t.oriented_shape)
        if label is None:
            continue
        label = label.astype(np.int64)
        if dataset.ignore_label is not None:
            label = np.where(label == dataset.ignore_label, -1, label)
        counts = np.bincount(label[label >= 0].ravel(), minlength=dataset.num_classes)
        voxels += counts
        cases_with += counts > 0
        foreground = np.flatnonzero(reorient(label, t) > 0)
        picked = foreground[np.linspace(0, len(foreground) - 1, min(SAMPLES_PER_CASE, len(foreground))).astype(np.int64)] if len(foreground) else foreground
        for c, channel in enumerate(reorient(image, t)):
            samples[c].append(channel.ravel()[picked])
    intensities = {}
    for name, parts in zip(dataset.channel_names, samples):
        values = np.concatenate(parts) if parts else np.zeros(0)
        if values.size:
            intensities[name] = {
                "mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values)),
                "min": float(values.min()), "max": float(values.max()),
                "percentile_00_5": float(np.percentile(values, 0.5)), "percentile_99_5": float(np.percentile(values, 99.5)),
            }  # fmt: skip
    total = max(int(voxels.sum()), 1)
    return {
        "cases": len(dataset.cases),
        "slicing_axis": slicing_axis,
        "spacings": [list(s) for s in spacings],  # (D, H, W) mm, per case
        "sizes": [list(s) for s in sizes],  # (D, H, W) voxels, per case
        "channels": list(dataset.channel_names),
        "foreground_intensities": intensities,  # per channel
        "classes": {n: {"voxel_fraction": float(v / total), "cases": int(c)} for n, v, c in zip(dataset.class_names, voxels, cases_with)},
    }


def target_spacing(spacings: np.ndarray, sizes: np.ndarray) -> list[float]:
    """nnU-Net's choice: the median spacing; the coarse axis of an anisotropic dataset takes its 10th percentile."""
    target = np.percentile(spacings, 50, axis=0)
    size = np.percentile(sizes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    if target[worst] > 3 * max(target[others]) and size[worst] * 3 < min(size[others]):
        coarse = float(np.percentile(spacings[:, worst], 10))
        target[worst] = max(coarse, max(target[others]) + 1e-5)
    return [round(float(s), 5) for s in target]


# Resident memory of one training step per crop slice (batch 1, default decoder, CPU), measured by
# bench/crops.py (docs/performance.md, "Numbers to plan with"): with 11 × 11-token crops, and on whole planes by size.
STEP_GIB_PER_SLICE_CROPPED = 0.1
STEP_GIB_PER_SLICE_WHOLE = {256: 0.14, 512: 0.28, 1024: 0.6}


def machine_memory_gib() -> float:
    """This machine's physical memory."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def fit_to_memory(crop_depth: int, image_size: int, crop_tokens: int | None, memory_gib: float) -> tuple[int, int, float]:
    """Batch 2 (nnU-Net's) and ``crop_depth`` while a step's estimated memory stays within half the machine's;
    else batch 1, then fewer slices. Returns the batch, the crop depth and the step's estimated GiB."""
    per_slice = STEP_GIB_PER_SLICE_CROPPED if crop_tokens else next(v for s, v in STEP_GIB_PER_SLICE_WHOLE.items() if image_size <= s or s == 1024)
    budget = memory_gib / 2
    batch = 2 if 2 * crop_depth * per_slice <= budget else 1
    depth = crop_depth if batch == 2 else max(1, min(crop_depth, int(budget / per_slice)))
    return batch, depth, round(batch * depth * per_slice, 2)


def make_plan(fp: dict, memory_gib: float | None = None, encoder: str = "vit_b") -> dict:
    """The settings the fingerprint suggests for ``encoder``, as a recipe's ``cache`` and ``run`` sections
    (module docstring), crop and batch fitted to ``memory_gib`` (default: this machine's)."""
    entry = encoder_entry(encoder)
    spacings, sizes = np.asarray(fp["spacings"], float), np.asarray(fp["sizes"], float)
    spacing = target_spacing(spacings, sizes)
    resampled = np.median(sizes * spacings / np.asarray(spacing), axis=0)  # (D, H, W) at the target spacing
    image_size = int(min(entry.default_image_size, 16 * math.ceil(max(resampled[1], resampled[2]) / 16)))
    preprocess: dict = {"slicing_axis": fp["slicing_axis"], "target_spacing": spacing}
    first = fp["channels"][0]
    stats = fp["foreground_intensities"].get(first)
    if first.strip().upper() == "CT" and stats:
        lo, hi = stats["percentile_00_5"], stats["percentile_99_5"]
        preprocess |= {"intensity": "ct", "ct_window": [round((lo + hi) / 2, 2), round(max(hi - lo, 1.0), 2)]}
    else:
        preprocess |= {"intensity": "percentile"}
    grid, crop = image_size // entry.stride, CROP_PIXELS // entry.stride
    # the original's crop where the grid is larger; else no key: train.crop_tokens' default (half the grid)
    tokens = {"crop_tokens": crop} if grid > crop else {}
    memory = machine_memory_gib() if memory_gib is None else memory_gib
    # both are crops: the cropped step's memory (whole planes only with train.crop_tokens=null)
    batch, depth, step_gib = fit_to_memory(int(min(16, max(1, round(resampled[0])))), image_size, crop, memory)
    train = {"crop_depth": depth, **tokens, "batch_size": batch}
    about = f"machine memory {memory:.1f} GiB; a training step needs about {step_gib} GiB (estimate from bench/crops.py, at stride 16)"
    cache = {"encoder": encoder, "image_size": image_size, "preprocess": preprocess}
    return {"about": about, "cache": cache, "run": {"train": train}}


def run_plan(dataset: Dataset, out: str | Path, slicing_axis: str = "axial", progress: bool = True, encoder: str = "vit_b") -> dict:
    """Write ``out/fingerprint.json`` and ``out/plan.yaml`` for ``encoder``; returns the plan."""
    encoder_entry(encoder)  # an unknown name is one line before any case is read
    if not dataset.cases:
        raise UserError(f"{dataset.root} has no cases to plan from")
    fp = fingerprint(dataset, slicing_axis, progress)
    plan = make_plan(fp, encoder=encoder)
    write_json(Path(out) / "fingerprint.json", fp)
    header = "# sam3dseg plan: settings proposed from fingerprint.json; use with `sam3dseg cache --plan` and `sam3dseg train --plan`\n"
    write_text(Path(out) / "plan.yaml", header + dump_yaml(plan))
    return plan


def read_plan(path: str | Path) -> dict:
    """A ``plan.yaml`` (sections ``cache`` and ``run``)."""
    plan = read_yaml(path, f"plan file not found: {path} (sam3dseg plan writes one)")
    if not set(plan) <= {"about", "cache", "run"}:
        raise UserError(f"{path} must hold the sections cache and run (a plan.yaml of sam3dseg plan)")
    return plan
