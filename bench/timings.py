"""The times the README promises, measured on this machine and written to ``bench/results/timings.json``.

docs/performance.md's "Measured times" table is :func:`table` of that file, quoted verbatim, and
``tests/test_readme.py`` checks the table and every "about N minutes" it states against it, so the
README and docs cannot promise what a user will not see. Each section is optional; the file keeps the
sections not re-run. The machine (CPU, cores) and its load (the 1-minute load average before the
section ran) are recorded beside every figure.

- ``--fresh-clone``: ``git clone`` of this checkout into a temporary folder, then ``make demo``
  there: creating the virtual environment and installing included, as a new user runs it; the
  demo's own stage times are read from its summary.
- ``--analyze``: ``sam3dseg analyze --quick``.
- ``--costs``: what a view and an ensemble cost, in one process, A B A B, ViT-B (random weights;
  the time does not depend on them) at 256² on three generated cases:

  * a view against its case, per encoded slice: the cache built without views, then the same
    cache given ``--views 2`` (only the views are encoded; MONAI imported before the clock starts).
    Goal: a view's slice costs at most 1.5 × a case's.
  * an ensemble of three models against one: each volume is encoded once, so three models should
    cost one model plus two more decoder passes (the decoder's share measured in the same run as
    one model's time less the encoding). Goal: at most 1.5 × that.

  Exits 1 when a goal fails.

    python bench/timings.py [--fresh-clone] [--analyze] [--costs] [--json bench/results/timings.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "timings.json"
GOAL = 1.5


def machine() -> dict:
    """The CPU and cores, and the 1-minute load average now (how busy the machine was)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded by file (tests/test_readme.py)
    from _shared import cpu_name, describe_cpu

    return {"cpu": cpu_name(), "kind": describe_cpu(), "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}


def _run(command: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def fresh_clone_demo() -> dict:
    """``make demo`` on a fresh clone of this checkout (its committed state)."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "sam3dseg"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
        record = {"machine": machine()}
        seconds, out = _run(["make", "demo"], repo)
    line = next(x for x in out.splitlines() if x.strip().startswith("time "))
    stages = {name: float(value) for name, value in re.findall(r"(\w+) (\d+) s", line.split("(total")[0])}
    return {**record, "make_demo_seconds": round(seconds), "demo_stage_seconds": stages,
            "demo_seconds": round(sum(stages.values())), "setup_seconds": round(seconds - sum(stages.values()))}  # fmt: skip


def analyze_quick() -> dict:
    record = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        seconds, _ = _run([sys.executable, "-m", "sam3dseg", "analyze", "--quick", "--quiet", "--out", str(Path(tmp) / "a")], ROOT)
    return {**record, "analyze_quick_seconds": round(seconds)}


def costs() -> dict:
    """Views and ensembles (module docstring), A B A B in this process."""
    import monai  # noqa: F401  (imported once, before any clock: a command pays it once)

    from sam3dseg.data.augment import AugmentConfig
    from sam3dseg.data.datasets import load_dataset
    from sam3dseg.data.preprocess import PreprocessConfig
    from sam3dseg.data.synthetic import write_dataset
    from sam3dseg.data.volumes import read_channels
    from sam3dseg.model.registry import EncoderInfo, build_encoder
    from sam3dseg.pipeline.caching.cache import build_cache
    from sam3dseg.pipeline.config import load_run_config
    from sam3dseg.pipeline.inference.predict import FolderOutputs, run_predict
    from sam3dseg.pipeline.inference.predictor import load_predictor
    from sam3dseg.pipeline.training.train import run_train

    record = {"machine": machine(), "encoder": "vit_b at 256, random weights"}
    encoder = build_encoder("vit_b", 256, None)
    info = EncoderInfo.of(encoder, None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = load_dataset(write_dataset(tmp / "ds", 3, "nnunet", seed=0, depth=(16, 17), size=(96, 97)))
        case_s, view_s, slices = [], [], 0
        for rep in range(2):
            start = time.perf_counter()
            build_cache(data, tmp / f"cache{rep}", encoder, info, PreprocessConfig(), progress=False)
            # the slices encoded, as the cache records them (across the slicing axis, which need not be z)
            slices = sum(json.loads((tmp / f"cache{rep}" / "cases" / f"{c.name}.json").read_text())["slices"] for c in data.cases)
            case_s.append((time.perf_counter() - start) / slices)
            start = time.perf_counter()
            build_cache(data, tmp / f"cache{rep}", encoder, info, PreprocessConfig(), AugmentConfig(copies=2), progress=False)
            view_s.append((time.perf_counter() - start) / (2 * slices))
        views = {"case_s_per_slice": min(case_s), "view_s_per_slice": min(view_s), "ratio": min(view_s) / min(case_s)}

        runs = []
        for seed in range(3):
            settings = ["train.epochs=1", "train.steps_per_epoch=2", f"train.seed={seed}"]
            run_train(tmp / "cache0", tmp / f"run{seed}", load_run_config(None, settings), progress=False, log=None)
            runs.append(tmp / f"run{seed}" / "best.pt")
        one, three = load_predictor(runs[0]), load_predictor(runs)
        inputs = tmp / "ds" / "imagesTr"
        encode, t1, t3 = [], [], []
        for rep in range(2):
            start = time.perf_counter()
            for case in data.cases:
                array, geometry = read_channels(list(case.images))
                one.features(array[0], geometry)
            encode.append(time.perf_counter() - start)
            for predictor, times in ((one, t1), (three, t3)):
                start = time.perf_counter()
                run_predict(predictor, inputs, tmp / "pred", FolderOutputs(overwrite=True), progress=False)
                times.append(time.perf_counter() - start)
        decoder = max(min(t1) - min(encode), 0.0)
        expected = min(t1) + 2 * decoder
        ensemble = {"one_model_s": min(t1), "three_models_s": min(t3), "encode_s": min(encode), "decoder_s": decoder,
                    "expected_three_s": expected, "ratio": min(t3) / expected}  # fmt: skip
    return {**record, "cases": len(data.cases), "slices": slices, "views": views, "ensemble": ensemble}


def table(results: dict) -> str:
    """docs/performance.md's "Measured times" table, from ``timings.json``."""
    rows = ["| what | measured | machine (1-min load before) |", "|---|---|---|"]

    def where(section: dict) -> str:
        m = section["machine"]
        return f"{m.get('kind', m['cpu'])}, {m['cores']} cores (load {m['load_1min']:g})"  # files older than 2026-12-05 have no kind

    if "fresh_clone" in results:
        r = results["fresh_clone"]
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["demo_stage_seconds"].items())
        rows.append(f"| `make demo` on a fresh clone | {r['make_demo_seconds']} s: set-up {r['setup_seconds']} s, "
                    f"demo {r['demo_seconds']} s ({stages}) | {where(r)} |")  # fmt: skip
    if "analyze" in results:
        r = results["analyze"]
        rows.append(f"| `sam3dseg analyze --quick` | {r['analyze_quick_seconds']} s | {where(r)} |")
    if "costs" in results:
        r = results["costs"]
        v, e = r["views"], r["ensemble"]
        rows.append(f"| a view against its case, per slice ({r['encoder']}) | {v['view_s_per_slice']:.2f} s against "
                    f"{v['case_s_per_slice']:.2f} s: ×{v['ratio']:.2f} | {where(r)} |")  # fmt: skip
        rows.append(f"| `predict` with 3 models against 1 ({r['cases']} cases, {r['slices']} slices) | {e['three_models_s']:.1f} s "
                    f"against {e['one_model_s']:.1f} s (encoding {e['encode_s']:.1f} s, decoder {e['decoder_s']:.1f} s): "
                    f"×{e['ratio']:.2f} of one model plus two decoder passes | {where(r)} |")  # fmt: skip
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh-clone", action="store_true", help="time `make demo` on a fresh clone (about 8 minutes)")
    parser.add_argument("--analyze", action="store_true", help="time `sam3dseg analyze --quick`")
    parser.add_argument("--costs", action="store_true", help="views and ensembles against their goals (a few minutes)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="results file, updated section by section")
    args = parser.parse_args()
    results = json.loads(args.json.read_text(encoding="utf-8")) if args.json.is_file() else {}
    failed = []
    if args.fresh_clone:
        results["fresh_clone"] = fresh_clone_demo()
    if args.analyze:
        results["analyze"] = analyze_quick()
    if args.costs:
        results["costs"] = costs()
        for what in ("views", "ensemble"):
            if results["costs"][what]["ratio"] > GOAL:
                failed.append(f"{what}: ×{results['costs'][what]['ratio']:.2f} > ×{GOAL}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.json)
    print(table(results))
    if failed:
        print("goal failed: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
