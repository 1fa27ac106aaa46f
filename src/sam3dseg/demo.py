"""The one-command demo: a small real-image brain dataset, then cache → train → predict → evaluate.

Data: the MNI152 2009c T1 template with its grey- and white-matter probability maps,
which the ``nilearn`` package ships inside itself (nothing is downloaded). Cases are
made from it by random smooth deformations, contrast/gamma changes, a smooth bias
field and noise, at 2 mm; labels are background / grey matter / white matter. Eight
cases train (two of them held out for validation) and two more, never seen in
training, are predicted and scored.

What the numbers mean: every case is a deformation of one template, so this
measures whether the pipeline learns and maps results back correctly, not how well
it segments real patients. With no ``--checkpoint`` the encoder is random; with a
SAM checkpoint the features are SAM's.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common.files import write_json
from .common.settings import check_settings, non_negative_int, positive_int
from .data.volumes import Geometry, write_volume
from .errors import UserError
from .pipeline.config import device_setting, image_size_setting

CLASS_NAMES = ["background", "grey_matter", "white_matter"]


@dataclass
class DemoConfig:
    """Sizes chosen so that ``make demo`` ends within about 12 minutes on a 2-core CPU."""

    train_cases: int = positive_int(8, "generated training cases, of which the last 2 (by name) validate")
    test_cases: int = positive_int(2, "generated test cases, predicted and scored")
    image_size: int = image_size_setting(128, "encoder input side")
    epochs: int = positive_int(12, "training epochs", flag="--epochs")
    steps_per_epoch: int = positive_int(20, "optimiser steps per epoch")
    crop_depth: int = positive_int(16, "slices per training crop")
    seed: int = non_negative_int(0, "seed of the data and the training")
    device: str = device_setting(flag="--device")

    def __post_init__(self) -> None:
        check_settings(self)


def _template_file(name: str) -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise UserError("the demo needs the nilearn package (pip install 'sam3dseg[demo]'); it ships the MNI152 template")
    path = Path(spec.origin).parent / "datasets" / "data" / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise UserError(f"this nilearn version does not ship {path.name}")
    return path


def load_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1, grey-matter and white-matter maps at 2 mm, ``(z, y, x)``, float32 in [0, 1]."""
    import SimpleITK as sitk

    def read(name: str) -> np.ndarray:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(_template_file(name)))).astype(np.float32) / 255.0
        z, y, x = (s - s % 2 for s in a.shape)
        a = a[:z, :y, :x]
        return a.reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5))  # 1 mm -> 2 mm

    return read("t1"), read("gm"), read("wm")


def _smooth_field(shape: tuple[int, ...], coarse: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in about [-1, 1]: noise on a coarse grid, interpolated up."""
    import torch
    import torch.nn.functional as F

    grid = torch.from_numpy(rng.uniform(-1, 1, size=(1, 1, coarse, coarse, coarse)).astype(np.float32))
    return F.interpolate(grid, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def make_case(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One deformed, re-contrasted template: image (float32) and labels (uint8)."""
    from scipy import ndimage

    shape = t1.shape
    coords = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    warped = [c + 3.0 * _smooth_field(shape, 5, rng) for c in coords]  # up to ~3 voxels (6 mm)
    warp = lambda a: ndimage.map_coordinates(a, warped, order=1, mode="nearest")  # noqa: E731
    t1w, gmw, wmw = warp(t1), warp(gm), warp(wm)
    label = np.zeros(shape, dtype=np.uint8)
    label[(gmw > 0.5) & (gmw >= wmw)] = 1
    label[(wmw > 0.5) & (wmw > gmw)] = 2
    gamma = rng.uniform(0.7, 1.4)
    bias = np.exp(0.25 * _smooth_field(shape, 3, rng))
    image = (np.clip(t1w, 0, None) ** gamma) * bias * rng.uniform(0.7, 1.3) * 1000
    image = image + rng.normal(0, 15, size=shape)
    return image.astype(np.float32), label


def build_dataset(root: Path, config: DemoConfig) -> Path:
    """Write the demo dataset (nnU-Net v2 layout; test cases in imagesTs/labelsTs). Skips if present."""
    root = Path(root)
    if (root / "dataset.json").is_file():
        return root
    t1, gm, wm = load_template()
    rng = np.random.default_rng(config.seed)
    geometry = Geometry((2.0, 2.0, 2.0), (-98.0, -134.0, -72.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(config.train_cases + config.test_cases):
        image, label = make_case(t1, gm, wm, rng)
        split = "Tr" if i < config.train_cases else "Ts"
        write_volume(image, geometry, root / f"images{split}" / f"brain_{i:03d}_0000.nii.gz")
        write_volume(label, geometry, root / f"labels{split}" / f"brain_{i:03d}.nii.gz")
    meta = {
        "name": "MNI152 demo",
        "description": "deformations of the MNI152 2009c template shipped with nilearn",
        "channel_names": {"0": "T1"},
        "labels": {name: k for k, name in enumerate(CLASS_NAMES)},
        "numTraining": config.train_cases,
        "file_ending": ".nii.gz",
    }
    write_json(root / "dataset.json", meta)
    return root


@contextmanager
def _timed(times: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    times[stage] = time.perf_counter() - start


def _montages(data: Path, preds: Path, names: list[str], predictor) -> Path | None:
    """A montage per predicted test case on the image as the model saw it, prediction solid and
    reference dashed; the last one's path."""
    from .common.plots import save_montage
    from .data.preprocess import anatomical_view, model_intensities
    from .data.volumes import read_volume

    montage = None
    for name in names:
        array, geometry = read_volume(data / "imagesTs" / f"{name}_0000.nii.gz")
        label, reference = read_volume(preds / f"{name}.nii.gz")[0], read_volume(data / "labelsTs" / f"{name}.nii.gz")[0]
        shown = model_intensities(array, predictor.channel_names[0], predictor.preprocess)
        (img, seg, ref), aspect = anatomical_view([shown, label, reference], geometry, predictor.preprocess.slicing_axis)
        title = f"{name}: prediction (solid), reference (dashed)"
        montage = save_montage(preds / f"{name}.png", img, seg, ref, CLASS_NAMES, title=title, aspect=aspect, window=(0, 255))
    return montage


def run_demo(out: str | Path, checkpoint: str | Path | None = None, config: DemoConfig | None = None) -> dict:
    """Dataset → cache → train → predict → evaluate under ``out``; prints and returns a summary."""
    from .pipeline.cache import run_cache
    from .pipeline.config import CacheConfig, PredictConfig, load_run_config
    from .pipeline.evaluate import evaluate_folders
    from .pipeline.predict import load_predictor, predict_folder
    from .pipeline.train import train

    config = config or DemoConfig()
    cache_config = CacheConfig(image_size=config.image_size, checkpoint=checkpoint and str(checkpoint), device=config.device)
    out, times = Path(out), {}
    if checkpoint is None:
        print(
            "\n*** sam3dseg demo: NO SAM CHECKPOINT GIVEN, THE ENCODER HAS RANDOM WEIGHTS. ***\n"
            "*** The run shows the pipeline working end to end; pass --checkpoint sam_vit_b_01ec64.pth\n"
            "*** (or MedSAM's medsam_vit_b.pth) to use real SAM features.\n",
            flush=True,
        )
    with _timed(times, "dataset"):
        data = build_dataset(out / "Dataset900_MNI152demo", config)
    with _timed(times, "cache"):
        run_cache(data, out / "cache", cache_config)
    with _timed(times, "train"):
        settings = [f"epochs={config.epochs}", f"steps_per_epoch={config.steps_per_epoch}", f"crop_depth={config.crop_depth}",
                    f"seed={config.seed}", f"device={config.device}", "val_fraction=0.25"]  # fmt: skip
        result = train(out / "cache", out / "run", load_run_config(None, [f"train.{s}" for s in settings]))
    with _timed(times, "predict"):
        predictor = load_predictor(out / "run" / "best.pt", checkpoint, PredictConfig(device=config.device))
        preds = out / "predictions"
        written = predict_folder(predictor, data / "imagesTs", preds, progress=False)["written"]
        montage = _montages(data, preds, written, predictor)
    with _timed(times, "evaluate"):
        summary = evaluate_folders(preds, data / "labelsTs", out / "evaluation", data / "dataset.json", quiet=True)

    lines = [
        "",
        "sam3dseg demo summary",
        f"  encoder     vit_b at {config.image_size}², {'RANDOM weights' if checkpoint is None else checkpoint}",
        f"  data        {config.train_cases} training cases ({len(result['val_cases'])} validate), {config.test_cases} test cases, 2 mm",
        f"  validation  best mean Dice {result['best_dice']:.3f}",
        "  test cases  " + ", ".join(f"{k} Dice {v['dice']:.3f}" for k, v in summary["per_class"].items())
        + f"; HD95 {summary['mean_hd95']:.1f} mm, NSD@1mm {summary['mean_nsd']:.3f}",
        "  time        " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f" (total {sum(times.values()):.0f} s)",
        f"  files       dataset {data}",
        f"              model   {out / 'run' / 'best.pt'} (curves: {out / 'run' / 'curves.png'})",
        f"              output  {preds} (montage: {montage})",
        f"              scores  {out / 'evaluation' / 'metrics.csv'}, {out / 'evaluation' / 'sam3dseg_summary.json'}",
    ]
    print("\n".join(lines), flush=True)
    return {"times": times, "summary": summary, "best_val_dice": result["best_dice"], "montage": str(montage)}
