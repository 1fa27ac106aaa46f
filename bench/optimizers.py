"""AdamW against the original SAM3D's SGD (Nesterov, momentum 0.99) with poly decay, on generated data.

Both train the same decoder from the same initialisation on the same cache (a
generated 3-class dataset encoded by a small random SAM-structured encoder at 128²)
with the same batches; only the optimiser and its learning rate differ. Printed per
epoch: training loss and held-out Dice; then, per optimiser, the first epoch whose
validation Dice reaches the threshold, and the final Dice. This is how SGD was first chosen as
``TrainConfig``'s optimiser; AdamW 1e-3 replaced it after ``bench/recipes.py --equal-time`` on real
encoders and real anatomy (docs/training.md).

    python bench/optimizers.py [--epochs 8] [--cases 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import make_cache  # noqa: E402

from sam3dseg.common.files import write_json  # noqa: E402
from sam3dseg.data.synthetic import write_dataset  # noqa: E402
from sam3dseg.pipeline.config import load_run_config  # noqa: E402
from sam3dseg.pipeline.training.train import run_train  # noqa: E402

CANDIDATES = {
    "adamw lr=1e-3": ["train.optimizer=adamw", "train.lr=1e-3"],
    "adamw lr=3e-3": ["train.optimizer=adamw", "train.lr=3e-3"],
    "sgd lr=1e-2 (original)": ["train.optimizer=sgd", "train.lr=1e-2", "train.momentum=0.99", "train.weight_decay=3e-5"],
    "sgd lr=3e-2": ["train.optimizer=sgd", "train.lr=3e-2", "train.momentum=0.99", "train.weight_decay=3e-5"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15, help="steps per epoch")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.85, help="validation Dice that counts as converged")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "ds", args.cases, "nnunet", seed=1)
        make_cache(tmp / "ds", tmp / "cache", image_size=128)  # the tests' small SAM-structured encoder
        common = [f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}", "train.crop_depth=8", "decoder.channels=[32,32,16,16]"]
        for name, overrides in CANDIDATES.items():
            start = time.perf_counter()
            run = run_train(tmp / "cache", tmp / name.replace(" ", "_"), load_run_config(None, common + overrides), progress=False, log=None)
            history = run["history"]
            reached = next((h["epoch"] for h in history if h["val_dice"] >= args.threshold), None)
            results[name] = {
                "loss": [round(h["train_loss"], 4) for h in history],
                "val_dice": [round(h["val_dice"], 4) for h in history],
                "epoch_reaching_threshold": reached,
                "final_dice": history[-1]["val_dice"],
                "seconds": time.perf_counter() - start,
            }
            print(f"{name:>24}: loss {results[name]['loss']}", flush=True)
            print(f"{'':>24}  Dice {results[name]['val_dice']}", flush=True)
    print(f"\nepoch reaching validation Dice {args.threshold} (of {args.epochs}), final Dice:")
    for name, r in results.items():
        print(f"{name:>24}: {r['epoch_reaching_threshold'] or 'never'}, {r['final_dice']:.4f}")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
