"""What the encoder's precision costs in Dice, on real anatomy with LiteMedSAM's pretrained weights.

The demo's data (MNI152 T1 with FreeSurfer's subcortical labels, ``sam3dseg demo``) is cached
by ``lite_medsam`` in fp32, bf16 and int8 (``--encoder-precision``); a model is trained with the
demo's settings on the fp32 features and one on the int8 features (``--trained bf16`` adds one
on bf16's). The held-out test cases are predicted by the fp32 model from features of every
precision, and by each other model from its own, and scored. Prints a table, writes JSON, and
exits 1 when a lower precision costs more than ``--tolerance`` mean Dice against fp32's (the
docs/performance.md's "Encoder precision" quotes the figures; the default stays fp32 where they say it costs).

    python bench/precision_dice.py --out DIR [--trained fp32 int8] [--test-cases 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _shared import cpu_name

from sam3dseg.common.files import write_json
from sam3dseg.demo import DemoConfig, build_dataset
from sam3dseg.model.precision import PRECISIONS, cpu_bf16, describe_cpu, native_bf16
from sam3dseg.pipeline.caching.cache import run_cache
from sam3dseg.pipeline.config import CacheConfig, PredictConfig, load_run_config
from sam3dseg.pipeline.evaluation.evaluate import run_evaluate
from sam3dseg.pipeline.inference.predict import FolderOutputs, run_predict
from sam3dseg.pipeline.inference.predictor import load_predictor
from sam3dseg.pipeline.training.train import run_train


def table(result: dict) -> str:
    """docs/performance.md's table: the test mean Dice, and the smallest structure's, of each pair of the
    precision a model was trained on and the one its features were predicted from."""
    lines = ["| model trained on | predicting from | test mean Dice | accumbens |", "|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['trained_on']} features | {r['predicted_from']} | {r['mean_dice']:.3f} | {r['per_class']['accumbens']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="work folder (dataset, caches, runs, predictions)")
    parser.add_argument("--trained", nargs="+", default=["fp32", "int8"], choices=PRECISIONS, help="precisions a model is trained on")
    parser.add_argument("--test-cases", type=int, default=4, help="held-out cases scored")
    parser.add_argument("--tolerance", type=float, default=0.01, help="largest mean-Dice loss against fp32 called free")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    demo = DemoConfig(test_cases=args.test_cases).resolved()  # the brain demo's sizes
    data = build_dataset(args.out / "Dataset901_Anatomy", demo)
    report = {"cpu": cpu_name(), "native_bf16": native_bf16(), "encoder": "lite_medsam", "image_size": demo.image_size,
              "train_cases": demo.train_cases, "test_cases": demo.test_cases, "cache_s": {}, "runs": []}  # fmt: skip
    # bf16 only where this CPU computes it at all (an AVX2-only CPU refuses it at the door: sam3dseg's rule)
    computable = [p for p in PRECISIONS if p != "bf16" or cpu_bf16()]
    if computable != list(PRECISIONS):
        print(f"bf16 left out: {describe_cpu()} has no bf16 arithmetic", flush=True)
    for precision in computable:
        start = time.perf_counter()
        config = CacheConfig(encoder="lite_medsam", image_size=demo.image_size, encoder_precision=precision)
        run_cache(data, args.out / f"cache_{precision}", config, progress=False)  # reused when already made
        report["cache_s"][precision] = time.perf_counter() - start
    settings = [f"train.epochs={demo.epochs}", f"train.steps_per_epoch={demo.steps_per_epoch}", f"train.seed={demo.seed}",
                "train.val_fraction=0.25"]  # fmt: skip
    for trained in args.trained:
        run = args.out / f"run_{trained}"
        if not (run / "best.pt").is_file():
            run_train(args.out / f"cache_{trained}", run, load_run_config(None, settings), log=None)
        for features in computable if trained == "fp32" else [trained]:
            predictor = load_predictor(run / "best.pt", None, PredictConfig(encoder_precision=features))
            preds = args.out / f"pred_{trained}_{features}"
            start = time.perf_counter()
            run_predict(predictor, data / "imagesTs", preds, FolderOutputs(overwrite=True), progress=False, log=None)
            seconds = time.perf_counter() - start
            scores = run_evaluate(preds, data / "labelsTs", args.out / f"eval_{trained}_{features}", data / "dataset.json", progress=False, log=None)
            row = {"trained_on": trained, "predicted_from": features, "mean_dice": scores["mean_dice"], "predict_s": seconds,
                   "per_class": {k: v["dice"] for k, v in scores["per_class"].items()}}  # fmt: skip
            report["runs"].append(row)
            print(f"trained on {trained:<5} predicted from {features:<5} mean Dice {row['mean_dice']:.4f}  "
                  + " ".join(f"{k} {v:.3f}" for k, v in row["per_class"].items()), flush=True)  # fmt: skip
    if args.json:
        write_json(args.json, report)
    print(table(report))
    base = next(r["mean_dice"] for r in report["runs"] if r["trained_on"] == r["predicted_from"] == "fp32")
    costly = [r for r in report["runs"] if base - r["mean_dice"] > args.tolerance]
    print(f"{report['cpu']}, {torch.get_num_threads()} threads; encoding the dataset: "
          + ", ".join(f"{p} {s:.0f} s" for p, s in report["cache_s"].items()))  # fmt: skip
    if costly:
        print("COSTS: " + "; ".join(f"trained on {r['trained_on']}, from {r['predicted_from']}: {r['mean_dice'] - base:+.4f}" for r in costly))
        sys.exit(1)
    print(f"OK: no precision loses more than {args.tolerance} mean Dice against fp32's {base:.4f}")


if __name__ == "__main__":
    main()
