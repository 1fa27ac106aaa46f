"""The demo's numbers: ``sam3dseg demo`` with LiteMedSAM's pretrained encoder and with a random ViT-B (the control).

Both runs use the same generated cases of the MNI152 brain (``sam3dseg anatomy``: eight training cases, two of
them validating, two test cases) and the same recipe (the demo's 12 × 50 steps at 96²), so the difference is
the encoder's features. For each run the file records the test cases' Dice per structure, the mean Dice,
HD95 and NSD, the best validation Dice and the stage times; :func:`table` renders docs/results.md's table from
it (``tests/test_docs.py`` checks the page holds it verbatim).

    python bench/demo.py --work DIR [--json bench/results/demo.json]   # about 10 minutes on a 2-core CPU
    python bench/demo.py --table bench/results/demo.json              # print the table of a result file

Exit status 1 when the pretrained run is not ahead of the random one in mean test Dice, or its mean is under
``--goal`` (default 0.6): the demo is the first thing a user runs, and its Dice is what they judge.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _shared import machine

RUNS = {"lite_medsam": "`lite_medsam` (pretrained)", "vit_b": "`vit_b` (random)"}


def run(work: Path) -> dict:
    """Both demo runs in ``work`` (the data is generated once and shared), their summaries."""
    from sam3dseg.common.files import read_json
    from sam3dseg.demo import DEMO_DATA, DemoConfig, run_demo

    runs = {}
    for encoder in RUNS:
        result = run_demo(work, None, DemoConfig(encoder=encoder), log=lambda line: None, progress=False)
        summary = result["summary"]
        runs[encoder] = {
            "per_class": {name: entry["dice"] for name, entry in summary["per_class"].items()},
            "mean_dice": summary["mean_dice"],
            "mean_hd95": summary["mean_hd95"],
            "mean_nsd": summary["mean_nsd"],
            "best_val_dice": result["best_val_dice"],
            "times": result["times"],
        }
        print(f"{encoder}: test mean Dice {summary['mean_dice']:.3f}, validation {result['best_val_dice']:.3f}, "
              f"{sum(result['times'].values()):.0f} s", flush=True)  # fmt: skip
    fractions = read_json(work / DEMO_DATA["brain"].folder / "dataset.json")["class_voxel_fraction"]
    config = DemoConfig().resolved()
    return {**machine(), "image_size": config.image_size, "epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch,
            "train_cases": config.train_cases, "test_cases": config.test_cases, "voxel_fraction": fractions, "runs": runs}  # fmt: skip


def table(result: dict) -> str:
    """docs/results.md's table: Dice per structure of each run on the test cases, with each structure's voxel share."""
    runs = result["runs"]
    lines = ["| structure | voxels | " + " | ".join(RUNS[r] for r in runs) + " |", "|---|---|" + "---|" * len(runs)]
    for name in next(iter(runs.values()))["per_class"]:
        dice = " | ".join(f"{r['per_class'][name]:.3f}" for r in runs.values())
        lines.append(f"| {name} | {100 * result['voxel_fraction'][name]:.2f} % | {dice} |")
    means = [f"{r['mean_dice']:.3f}" for r in runs.values()]
    lines.append("| **mean** (test) | | " + " | ".join([f"**{means[0]}**", *means[1:]]) + " |")
    lines.append("| validation (best epoch) | | " + " | ".join(f"{r['best_val_dice']:.3f}" for r in runs.values()) + " |")
    lines.append("| HD95, NSD@1mm (test means) | | "
                 + " | ".join(f"{r['mean_hd95']:.1f} mm, {r['mean_nsd']:.3f}" for r in runs.values()) + " |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="folder for the demo's data, caches, runs and predictions (required to run)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "demo.json", help="where the results go")
    parser.add_argument("--goal", type=float, default=0.6, help="the pretrained run's mean test Dice must reach this")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table of an existing result file and exit")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    if args.work is None:
        parser.error("--work is required to run")
    from sam3dseg.common.files import write_json

    result = run(args.work)
    write_json(args.json, result)
    print(table(result))
    ours, control = result["runs"]["lite_medsam"]["mean_dice"], result["runs"]["vit_b"]["mean_dice"]
    if ours <= control or ours < args.goal:
        print(f"FAIL: pretrained {ours:.3f} against random {control:.3f} (must be ahead, and at least {args.goal})")
        sys.exit(1)
    print(f"OK: pretrained {ours:.3f} against random {control:.3f}")


if __name__ == "__main__":
    main()
