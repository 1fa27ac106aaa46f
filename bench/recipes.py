"""Which training recipe segments best: the Dice form × foreground sampling × the image path, measured.

Trains every combination of ``loss.dice`` (``joint``, the write-up's §5.1 form; ``per_class``,
nnU-Net's soft Dice without background) and ``train.foreground_fraction`` (0 or 1/3), and the
two Dice forms with ``decoder.pixel_skip`` on, on generated datasets, several seeds each,
with everything else equal, and reports the held-out Dice per class (the validation cases
of each run, at the last epoch, decoded as ``predict`` decodes):

- ``small``: small, low-contrast structures, K = 6 (each class about 1 % of the voxels,
  blobs of about one 16-pixel token);
- ``large``: two large ellipsoid classes (the test suite's generated data);
- ``mni152``: the demo's brain data (grey and white matter; needs nilearn).

The encoder is a small random SAM-structured one (as in the tests), so the comparison is
about the decoder's training, at a cost this CPU can pay (about 14 minutes for the whole
table with 3 seeds). Exit status 1 when the default recipe (``sam3dseg train``'s defaults)
trails the best combination on any dataset by more than ``--tolerance``.

    python bench/recipes.py [--seeds 3] [--datasets small large mni152] [--json out.json] [--crops | --augmented-copies]

``--crops`` compares whole planes with token crops; ``--augmented-copies`` compares caches with K = 0, 2
and 4 augmented views per case (``sam3dseg cache --augmented-copies K``) and prints their cost.

``--augmented-copies`` (2 seeds, about 50 minutes with the 4×-step variants): its exit status compares the default
(K=0) only with the variants of the same steps; the 4×-step variants are reported, not held against it (they cost
more).

``--equal-time SECONDS`` (real encoders: ``--encoders lite_medsam vit_b``; ``anatomy`` is the demo's nine
subcortical structures; ``--normalisation`` adds LiteMedSAM on SAM's mean/std; ``--work DIR`` keeps data and
caches): ``--equal-time 75 --datasets anatomy --normalisation`` takes about an hour with the caches,
``--equal-time 10`` on small, large and mni152 about 12 minutes each.

The tables these runs gave, the machine, and the defaults chosen on them: docs/training.md (one copy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _shared import cpu_name  # noqa: E402
from helpers import make_cache  # noqa: E402

from sam3dseg.common.files import write_json
from sam3dseg.data.synthetic import write_dataset
from sam3dseg.pipeline.config import DecoderConfig, LossConfig, TrainConfig, load_run_config
from sam3dseg.pipeline.training.train import run_train

VARIANTS = {
    "joint": ["loss.dice=joint", "train.foreground_fraction=0", "decoder.pixel_skip=false"],
    "joint + fg 1/3": ["loss.dice=joint", "train.foreground_fraction=0.33", "decoder.pixel_skip=false"],
    "per_class": ["loss.dice=per_class", "train.foreground_fraction=0", "decoder.pixel_skip=false"],
    "per_class + fg 1/3": ["loss.dice=per_class", "train.foreground_fraction=0.33", "decoder.pixel_skip=false"],
    "joint + image": ["loss.dice=joint", "train.foreground_fraction=0", "decoder.pixel_skip=true"],
    "per_class + fg 1/3 + image": ["loss.dice=per_class", "train.foreground_fraction=0.33", "decoder.pixel_skip=true"],
}
# --crops: the default recipe on whole planes against 2 × 2-token windows (a 4 × 4 grid at 64²), with
# the same steps and with 4× the steps (the same pixels seen: each crop is a quarter of a plane).
# "STEPS×4" multiplies the dataset's steps per epoch.
CROP_VARIANTS = {
    "whole planes": ["train.crop_tokens=null"],
    "crop_tokens=2": ["train.crop_tokens=2"],
    "crop_tokens=2, 4× steps": ["train.crop_tokens=2", "STEPS×4"],
}
# --augmented-copies: the default recipe on caches with K = 0, 2, 4 augmented views per case (one cache with 4
# views, trained with train.augmented_copies = K), the same steps, and K = 0 and 4 with 4× the steps (where
# augmentation has more to prevent); the encoding time and disk of each K beside.
VIEW_VARIANTS = {
    "K=0": ["train.augmented_copies=0"], "K=2": ["train.augmented_copies=2"], "K=4": ["train.augmented_copies=4"],
    "K=0, 4× steps": ["train.augmented_copies=0", "STEPS×4"], "K=4, 4× steps": ["train.augmented_copies=4", "STEPS×4"],
}  # fmt: skip
# --equal-time: every variant trains for the same optimiser seconds (its own s/step measured first), on
# caches made by real encoders (--encoders). Each variant changes one thing from the defaults (AdamW 1e-3,
# crops of half the token grid, image path, per-class Dice); "VIEWS" marks a variant that needs a cache
# with 2 augmented views per case (made once per dataset and encoder).
TIME_VARIANTS = {
    "default": [],
    "no image path": ["decoder.pixel_skip=false"],
    "whole planes": ["train.crop_tokens=null"],
    "sgd 1e-2": ["train.optimizer=sgd", "train.lr=1e-2"],
    "sgd 1e-2, whole planes (before)": ["train.optimizer=sgd", "train.lr=1e-2", "train.crop_tokens=null"],
    "joint Dice": ["loss.dice=joint"],
    "views K=2": ["train.augmented_copies=2", "VIEWS"],
}
# image size, crop depth, epochs, steps per epoch, per dataset
DATASETS = {"small": (64, 8, 8, 50), "large": (64, 8, 5, 15), "mni152": (64, 16, 6, 15), "anatomy": (96, 16, 6, 20)}


def _make(name: str, root: Path) -> Path:
    from sam3dseg.data.anatomy import SUBCORTICAL, AnatomyConfig, write_anatomy_dataset

    if name == "anatomy":  # the nine subcortical structures of the demo, cropped to them, 2 mm
        return write_anatomy_dataset(root, AnatomyConfig(structures=list(SUBCORTICAL), cases=10, seed=5))
    if name == "small":
        return write_dataset(root, 10, "nnunet", num_classes=6, seed=11, depth=(12, 16), size=(48, 64), small=True)
    if name == "large":
        return write_dataset(root, 10, "nnunet", seed=1)
    # grey and white matter of the whole brain (FreeSurfer's labels on MNI152), 2 mm
    return write_anatomy_dataset(root, AnatomyConfig(structures=["grey_matter", "white_matter"], cases=10, margin=None))


def _cache_views(data: Path, cache: Path, size: int) -> dict[str, list[float]]:
    """Build the cache with 0, then 2, then 4 views (each run adds two); per K the build time so far and
    the MiB on disk of the originals and views 1..K."""
    from sam3dseg.data.augment import AugmentConfig

    out, seconds = {}, 0.0
    for k in (0, 2, 4):
        start = time.perf_counter()
        make_cache(data, cache, image_size=size, augment=AugmentConfig(copies=k))
        seconds += time.perf_counter() - start
        files = [*(cache / "cases").glob("*.pt"), *(f for v in range(1, k + 1) for f in (cache / "views" / str(v)).glob("*.pt"))]
        out[f"K={k}"] = [seconds, sum(f.stat().st_size for f in files) / 2**20]
    return out


def _default_variant() -> str:
    loss, t, d = LossConfig(), TrainConfig(), DecoderConfig()
    return f"{loss.dice}{' + fg 1/3' if t.foreground_fraction > 0 else ''}{' + image' if d.pixel_skip else ''}"


def _train_seconds(cache: Path, out: Path, overrides: list[str], steps: int, epochs: int) -> tuple[float, list[float]]:
    """Train ``epochs`` × ``steps``, validating once at the end; (optimiser seconds, held-out Dice per class)."""
    config = load_run_config(None, [*overrides, f"train.epochs={epochs}", f"train.steps_per_epoch={steps}",
                                    f"train.val_interval={epochs}"])  # fmt: skip
    history = run_train(cache, out, config, progress=False, log=None)["history"]
    return sum(h["train_seconds"] for h in history), history[-1]["val_dice_per_class"]


def _seconds_per_step(cache: Path, out: Path, overrides: list[str]) -> float:
    """A variant's optimiser seconds per step, from 10 steps (the run's own timing: no set-up, no validation)."""
    return _train_seconds(cache, out, overrides, 10, 1)[0] / 10


def equal_time(args: argparse.Namespace) -> None:
    """--equal-time: encoder × dataset × variant × seed, each variant given the same optimiser seconds."""
    from sam3dseg.data.augment import AugmentConfig
    from sam3dseg.pipeline.caching.cache import run_cache
    from sam3dseg.pipeline.config import CacheConfig

    variants = {v: TIME_VARIANTS[v] for v in args.variants}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)  # data and caches (kept with --work); runs always in tmp
        for dataset in args.datasets:
            size, depth, epochs, _ = DATASETS[dataset]
            data = work / dataset / "data"
            data = data if (data / "dataset.json").is_file() else _make(dataset, data)
            for encoder in args.encoders:
                caches = {}
                for norm in ["auto"] + (["sam"] if args.normalisation and encoder == "lite_medsam" else []):
                    cache = work / dataset / f"cache_{encoder}_{norm}"
                    views = 2 if any("VIEWS" in o for o in variants.values()) and norm == "auto" else 0
                    start = time.perf_counter()
                    run_cache(data, cache, CacheConfig(encoder=encoder, image_size=size, normalisation=norm,
                                                               augment=AugmentConfig(copies=views)), progress=False)  # fmt: skip
                    print(f"{dataset:>7} {encoder}: cache ({norm} normalisation, {views} views) in "
                          f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
                    caches[norm] = cache
                runs = {f"{v}": (caches["auto"], o) for v, o in variants.items()}
                if "sam" in caches:
                    runs["default, SAM's normalisation"] = (caches["sam"], [])
                common = [f"train.crop_depth={depth}", "train.augmented_copies=0"]
                for variant, (cache, overrides) in runs.items():
                    overrides = [o for o in overrides if o != "VIEWS"]
                    out = Path(tmp) / dataset / f"run_{encoder}_{''.join(c if c.isalnum() else '_' for c in variant)}"
                    per_step = _seconds_per_step(cache, out / "calibrate", [*common, *overrides])
                    steps = max(int(args.equal_time / per_step / epochs), 1)
                    cell = results.setdefault(dataset, {}).setdefault(encoder, {}).setdefault(variant, [])
                    for seed in range(args.seeds):
                        seconds, dice = _train_seconds(cache, out / str(seed), [*common, *overrides, f"train.seed={seed}"], steps, epochs)
                        cell.append({"dice": dice, "steps": steps * epochs, "s_per_step": per_step, "seconds": seconds})
                        mean = statistics.fmean(x for x in dice if x == x)
                        print(f"{dataset:>7} {encoder:<11} {variant:<30} seed {seed}: held-out Dice {mean:.3f} "
                              f"({' '.join(f'{x:.2f}' for x in dice)}), {steps * epochs} steps at {per_step:.2f} s, "
                              f"{seconds:.0f} s of steps", flush=True)  # fmt: skip
            names = _class_names(data)
            results[dataset]["classes"] = names

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}; {args.equal_time:g} s of optimiser "
          f"steps per run; held-out mean foreground Dice, mean ± sd over {args.seeds} seeds (steps per run)")  # fmt: skip
    failed = []
    for dataset, by_encoder in results.items():
        names = by_encoder["classes"]
        for encoder, by_variant in ((e, v) for e, v in by_encoder.items() if e != "classes"):
            print(f"\n{dataset}, {encoder}")
            print("| variant | mean | " + " | ".join(names) + " | steps | s of steps |")
            print("|---|---|" + "---|" * len(names) + "---|---|")
            means = {}
            for variant, runs in by_variant.items():
                per_run = [statistics.fmean(x for x in r["dice"] if x == x) for r in runs]
                means[variant] = statistics.fmean(per_run)
                sd = statistics.stdev(per_run) if len(per_run) > 1 else 0.0
                per_class = []
                for k in range(len(names)):
                    values = [r["dice"][k] for r in runs if r["dice"][k] == r["dice"][k]]
                    per_class.append(f"{statistics.fmean(values):.2f}" if values else "absent")
                print(f"| {variant} | {means[variant]:.3f} ± {sd:.3f} | " + " | ".join(per_class)
                      + f" | {runs[0]['steps']} | {statistics.fmean(r['seconds'] for r in runs):.0f} |")
            best = max(means, key=means.get)
            if "default" in means and means["default"] < means[best] - args.tolerance:
                failed.append(f"{dataset}/{encoder}: default {means['default']:.3f} < '{best}' {means[best]:.3f}")
    if args.json:
        write_json(args.json, {"results": results, "seconds": args.equal_time, "seeds": args.seeds, "cpu": cpu_name()})
    if failed:
        print("DEFAULT NOT BEST: " + "; ".join(failed))
        sys.exit(1)


def _class_names(data: Path) -> list[str]:
    from sam3dseg.data.datasets import load_dataset

    return load_dataset(data).class_names[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per combination (default 3)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--tolerance", type=float, default=0.05, help="how far the default may trail the best (default 0.05)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--crops", action="store_true", help="compare whole planes with in-plane token crops instead")
    parser.add_argument("--augmented-copies", action="store_true", help="compare K = 0, 2, 4 augmented views per case instead")
    parser.add_argument("--equal-time", type=float, metavar="SECONDS",
                        help="compare TIME_VARIANTS at equal optimiser seconds on real encoders (--encoders) instead")
    parser.add_argument("--encoders", nargs="+", default=["lite_medsam", "vit_b"], help="--equal-time: encoders (random vit_b is the control)")
    parser.add_argument("--variants", nargs="+", default=list(TIME_VARIANTS), choices=list(TIME_VARIANTS), help="--equal-time: variants")
    parser.add_argument("--work", type=Path, help="--equal-time: keep the data and caches here and reuse them")
    parser.add_argument("--normalisation", action="store_true", help="--equal-time: also lite_medsam's default on SAM's normalisation")
    args = parser.parse_args()
    if args.equal_time:
        return equal_time(args)
    variants = CROP_VARIANTS if args.crops else VIEW_VARIANTS if args.augmented_copies else VARIANTS
    costs: dict[str, dict[str, list[float]]] = {}  # --augmented-copies: dataset -> [seconds, MiB] per K

    results: dict[str, dict[str, list[list[float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            size, depth, epochs, steps = DATASETS[dataset]
            cache = Path(tmp) / dataset / "cache"
            data = _make(dataset, Path(tmp) / dataset / "data")
            if args.augmented_copies:
                costs[dataset] = _cache_views(data, cache, size)
            else:
                make_cache(data, cache, image_size=size)  # the tests' small encoder
            results[dataset] = {}
            for variant, overrides in variants.items():
                runs = []
                for seed in range(args.seeds):
                    start = time.perf_counter()
                    factor = 4 if "STEPS×4" in overrides else 1
                    config = load_run_config(None, [
                        *(o for o in overrides if o != "STEPS×4"), f"train.seed={seed}", f"train.epochs={epochs}",
                        f"train.steps_per_epoch={steps * factor}", f"train.crop_depth={depth}", "train.val_interval=100",
                        "decoder.channels=[32,32,16,16]",
                    ])  # fmt: skip
                    out = Path(tmp) / dataset / f"run_{''.join(c if c.isalnum() else '_' for c in variant)}_{seed}"
                    history = run_train(cache, out, config, progress=False, log=None)["history"]
                    runs.append(history[-1]["val_dice_per_class"])
                    mean = statistics.fmean(x for x in runs[-1] if x == x)
                    print(f"{dataset:>7} {variant:<26} seed {seed}: held-out Dice {mean:.3f} "
                          f"({' '.join(f'{x:.2f}' for x in runs[-1])}) in {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
                results[dataset][variant] = runs

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; held-out mean foreground Dice, mean ± sd over {args.seeds} seeds")
    print("| dataset | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    failed = []
    default = "whole planes" if args.crops else "K=0" if args.augmented_copies else _default_variant()
    for dataset, by_variant in results.items():
        means = {}
        cells = []
        for variant, runs in by_variant.items():
            per_run = [statistics.fmean(x for x in r if x == x) for r in runs]
            means[variant] = statistics.fmean(per_run)
            sd = statistics.stdev(per_run) if len(per_run) > 1 else 0.0
            cells.append(f"{means[variant]:.3f} ± {sd:.3f}")
        print(f"| {dataset} | " + " | ".join(cells) + " |")
        # the goal: no variant of the same training cost beats the default (the views' extra steps cost more)
        rivals = [v for v in means if not (args.augmented_copies and "STEPS×4" in variants[v])]
        best = max(rivals, key=means.get)
        if means[default] < means[best] - args.tolerance:
            failed.append(f"{dataset}: default '{default}' {means[default]:.3f} < best '{best}' {means[best]:.3f}")
    for dataset, by_variant in results.items():
        classes = len(next(iter(by_variant.values()))[0])
        print(f"\n{dataset}: held-out Dice per class, mean ± sd over seeds (NaN-free runs)")
        print("| variant | " + " | ".join(f"class {k}" for k in range(1, classes + 1)) + " |")
        print("|---|" + "---|" * classes)
        for variant, runs in by_variant.items():
            cells = []
            for k in range(classes):
                values = [r[k] for r in runs if r[k] == r[k]]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):.2f} ± {sd:.2f}" if values else "absent")
            print(f"| {variant} | " + " | ".join(cells) + " |")
    if args.augmented_copies:
        print("\nCost of the views: cache build (the small encoder: scale by docs/performance.md's encode time per slice) and disk")
        print("| dataset | " + " | ".join(f"{k}: s, MiB" for k in costs[args.datasets[0]]) + " |")
        print("|---|" + "---|" * len(costs[args.datasets[0]]))
        for dataset, per_k in costs.items():
            print(f"| {dataset} | " + " | ".join(f"{t:.1f} s, {mib:.1f}" for t, mib in per_k.values()) + " |")
    print(f"\ndefault recipe: {default}")
    if args.json:
        write_json(args.json, {"results": results, "default": default, "seeds": args.seeds, "costs": costs})
    if failed:
        print("DEFAULT NOT BEST: " + "; ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
