"""sam3dseg beside nnU-Net v2 at equal wall time, on the same generated cases, scored by one code path.

The user's alternative for abdominal organs is nnU-Net. This bench gives both systems the same cases of
``sam3dseg anatomy`` (``--set ct``: the abdominal CT, twelve organs; ``--set brain``: the MNI152
template, nine subcortical structures) and the same wall time ``--budget``:

- **sam3dseg**: ``cache`` (LiteMedSAM at its own 256² unless ``--image-size``), then ``train`` with the
  default recipe on every training case (``train.fold=all``, as nnU-Net's fold ``all``: no case held out for
  validation, so no post-processing decided and the last epoch predicts), plus any ``--setting``. The cache
  counts against the budget; so does a calibration run (two epochs of 8 steps) from whose second epoch's
  timing the bench sets ``VALIDATIONS`` epochs (fewer on a small budget; without validation cases an epoch
  ends in a checkpoint) of as many steps as fill what is left, so that the learning-rate schedule ends with
  the budget (the poly schedule runs by step: the epochs' length sets when checkpoints happen, not the
  learning rate). A run slower than calibrated is stopped at the budget, and its last epoch done predicts.
- **nnU-Net v2** (``NNUNET``, pinned, in its own virtual environment that this script makes, the CPU torch
  pinned by a constraint): ``nnUNetv2_plan_and_preprocess`` (not counted, as the issue asks), then
  ``nnUNetv2_train DATASET 3d_fullres all`` with nnU-Net's default trainer but for epochs of 25 iterations
  instead of 250 and a checkpoint after each (``nnUNetTrainer_sam3dsegBench``, written into that
  environment), stopped when the budget is spent; the last checkpoint predicts with nnU-Net's defaults. On
  two CPU cores an epoch of 250 iterations takes hours and nnU-Net writes its first model at the end of one:
  with the default epochs there would be nothing to predict with. Mirroring is nnU-Net's default on the brain
  set (left and right are one class there) and off on the CT set (left/right organs are classes, as
  TotalSegmentator trains nnU-Net).

Both predict the test cases (imagesTs), timed per case, and both are scored by
:func:`sam3dseg.pipeline.evaluation.evaluate.run_evaluate` against labelsTs: Dice and HD95 per structure.
Results go to ``--json`` (default ``bench/results/peer_nnunet_{set}_{budget}s.json``) with the machine,
the budget, the seeds and each system's time line; docs/results.md quotes their tables, and the README's results table (bench/headline.py) is made from them.

    python bench/peer_nnunet.py --set ct --budget 1800 --work /tmp/peer [--systems sam3dseg nnunet] [--device cpu]

The systems run ``python -m sam3dseg``, which imports the installed package: with an editable install that is
the working tree, so an edit during a run changes (or breaks) the rest of it. To go on working meanwhile, run a
copy: ``cp -r src bench SNAP/ && PYTHONPATH=SNAP/src python SNAP/bench/peer_nnunet.py ...``.

``--device cuda`` runs both on a GPU (the nnU-Net environment then needs a CUDA torch: ``--torch``).
The exit status is 0 when both systems ran (whichever wins, and also when nnU-Net has no model at the budget);
1 when one of them failed to run. ``--table`` prints the table of an existing result file and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from _shared import cpu_name, describe_cpu
from sam3dseg.common.files import read_json, write_json

NNUNET = "nnunetv2==2.8.1"
TORCH = "torch==2.13.0"
TRAINER = "nnUNetTrainer_sam3dsegBench"
SETS = {  # dataset folder, anatomy options, nnU-Net mirroring
    "ct": ("Dataset902_CT", ["--source", "ct", "--cases", "8", "--test-cases", "3"], False),
    "brain": ("Dataset901_Anatomy", ["--source", "brain", "--cases", "8", "--test-cases", "3"], True),
}
ROOT = Path(__file__).resolve().parents[1]
# sam3dseg's share of the budget: calibration by two epochs of 8 steps, timed by the second (the first steps read
# the cases from disk: timed by them the estimate was 1.75 s a step against 1.52 s in the run, and 200 s of a
# 1800 s budget went unused), 8 epochs (each ends in a checkpoint; with validation cases, as before train.fold=all,
# 13 validations of an epoch of 50 steps took 13 × 19 s), 98 % of what is left (the process's start, the saves)
CALIBRATION_STEPS, VALIDATIONS, MIN_STEPS, FILL = 8, 8, 20, 0.98

TRAINER_CODE = '''"""Written by sam3dseg's bench/peer_nnunet.py: nnU-Net's default trainer with short epochs, so that a run
stopped by wall time leaves a model (its checkpoint after every epoch); network, loss, augmentation and
learning-rate schedule are nnU-Net's own."""
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

MIRROR = {mirror}


class {trainer}(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 5
        self.save_every = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, patch, axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not MIRROR:  # left and right organs are classes: no mirroring in training or at inference
            axes = None
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, patch, axes
'''


def run(cmd: list[str], log: Path, env: dict | None = None, timeout: float | None = None) -> tuple[float, bool]:
    """Run ``cmd`` with its output appended to ``log``; the seconds it took and whether it finished in
    ``timeout`` (a run past it is stopped: its process group gets SIGINT, then SIGKILL)."""
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return time.perf_counter() - start, False
    if code:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {code}); see {log}")
    return time.perf_counter() - start, True


def sam3dseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "sam3dseg", *args]


def make_dataset(name: str, work: Path, log: Path) -> Path:
    folder, options, _ = SETS[name]
    root = work / folder
    run(sam3dseg("anatomy", "--out", str(root), *options), log)
    return root


def score(pred: Path, data: Path, out: Path) -> dict:
    """Dice and HD95 per structure and their means, by sam3dseg's evaluation (one code path for both systems)."""
    from sam3dseg.pipeline.evaluation.evaluate import hd95_text, run_evaluate

    summary = run_evaluate(pred, data / "labelsTs", out, data / "dataset.json", log=None)
    per = {name: {"dice": e["dice"], "hd95": hd95_text(e, 1)} for name, e in summary["per_class"].items()}
    mean_hd95 = summary["mean_hd95"]
    return {"mean_dice": summary["mean_dice"], "mean_hd95": None if mean_hd95 != mean_hd95 else mean_hd95, "per_class": per}


def run_sam3dseg(data: Path, work: Path, budget: float, args: argparse.Namespace, log: Path) -> dict:
    """Cache, calibrate, train to fill the budget, predict the test cases, score."""
    cache, run_dir, pred = work / "sam3dseg_cache", work / "sam3dseg_run", work / "sam3dseg_pred"
    size = ["--image-size", str(args.image_size)] if args.image_size else []
    shutil.rmtree(cache, ignore_errors=True)  # the cache resumes: one left from an earlier run would cost nothing
    cache_s, _ = run(sam3dseg("cache", "--dataset", str(data), "--out", str(cache), "--encoder", args.encoder, *size,
                              "--device", args.device, "--quiet"), log)  # fmt: skip
    common = [f"train.seed={args.seed}", f"train.device={args.device}", "train.fold=all", *args.setting]
    calib = work / "sam3dseg_calibration"
    shutil.rmtree(calib, ignore_errors=True)
    calib_s, _ = run(sam3dseg("train", "--cache", str(cache), "--out", str(calib), "--quiet", "train.epochs=2",
                              f"train.steps_per_epoch={CALIBRATION_STEPS}", *common), log)  # fmt: skip
    entry = last_record(calib).history[1]  # the first epoch's steps also read every case from disk, once a run
    step_s = entry["train_seconds"] / CALIBRATION_STEPS
    val_s = entry["seconds"] - entry["train_seconds"]
    left = FILL * (budget - cache_s - calib_s)
    epochs, steps = fill(left, step_s, val_s)
    if steps < MIN_STEPS:
        return {"cache_s": cache_s, "calibration_s": calib_s, "failed": f"the budget is spent before one epoch of {MIN_STEPS} steps ({left:.0f} s left)"}
    shutil.rmtree(run_dir, ignore_errors=True)
    # stopped at the budget like nnU-Net when the steps run slower than calibrated (the brain run's went from 1.05 to
    # 1.84 s a step and took 2401 s of 1800 before this guard): the last epoch done by then predicts
    train_s, finished = run(sam3dseg("train", "--cache", str(cache), "--out", str(run_dir), "--quiet", f"train.epochs={epochs}",
                                     f"train.steps_per_epoch={steps}", *common), log, timeout=budget - cache_s - calib_s)  # fmt: skip
    record = last_record(run_dir)
    done = record.epoch if record else 0
    stopped = {} if finished else {"stopped": f"stopped at the budget after epoch {done} of {epochs}"}
    if not done:
        return {"cache_s": cache_s, "calibration_s": calib_s, "train_s": train_s, "failed": "no epoch done within the budget"}
    shutil.rmtree(pred, ignore_errors=True)
    predict_s, _ = run(sam3dseg("predict", "--model", str(run_dir / "last.pt"), "--input", str(data / "imagesTs"),
                                "--out", str(pred), "--device", args.device, "--quiet"), log)  # fmt: skip
    tests = len(list((data / "labelsTs").glob("*.nii.gz")))
    return {
        **run_timing(record),
        "encoder": args.encoder, "image_size": args.image_size or "the encoder's own", "settings": common[2:],
        "cache_s": cache_s, "calibration_s": calib_s, "train_s": train_s, "epochs": epochs, "steps_per_epoch": steps,
        "steps": done * steps, "step_s": step_s, "validation_s": val_s, "used_s": cache_s + calib_s + train_s, **stopped,
        "predict_s_per_case": predict_s / tests, "scores": score(pred, data, work / "sam3dseg_eval"),
    }  # fmt: skip


def fill(left: float, step_s: float, val_s: float) -> tuple[int, int]:
    """(epochs, steps per epoch) that fill ``left`` seconds with steps of ``step_s`` and a validation of ``val_s``
    after each epoch: ``VALIDATIONS`` epochs, fewer where an epoch would hold under ``MIN_STEPS`` steps."""
    epochs = max(1, min(VALIDATIONS, int(left // (MIN_STEPS * step_s + val_s))))
    return epochs, int((left / epochs - val_s) // step_s)


def last_record(run_dir: Path):
    """A run's ``last.pt`` (its epochs done and their history: train keeps it there), None before its first epoch."""
    from sam3dseg.pipeline.model_file import load_model_file

    return load_model_file(run_dir / "last.pt") if (run_dir / "last.pt").is_file() else None


def run_timing(record) -> dict:
    """A run's own seconds a step and a validation (the calibration's are estimates), from its ``last.pt`` record."""
    history, steps = record.history, record.config.train.steps_per_epoch
    train_s = sum(e["train_seconds"] for e in history) / len(history)  # an epoch's steps
    return {"run_step_s": train_s / steps, "run_validation_s": sum(e["seconds"] for e in history) / len(history) - train_s}


def ensure_nnunet(venv: Path, torch_spec: str, mirror: bool, log: Path) -> Path:
    """nnU-Net in its own environment (made once; torch pinned by a constraint so pip never resolves another),
    its trainer lookup made importable on the CPU torch, and this bench's trainer written into it."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / "nnUNetv2_train").is_file():
        run([sys.executable, "-m", "venv", str(venv)], log)
        run([str(python), "-m", "pip", "install", "--quiet", torch_spec], log)
        constraint = venv / "constraint.txt"
        constraint.write_text(torch_spec + "\n")
        run([str(python), "-m", "pip", "install", "--quiet", "-c", str(constraint), NNUNET], log)
    package = Path(subprocess.run([str(python), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                                  check=True, capture_output=True, text=True).stdout.strip())  # fmt: skip
    trainers = package / "training" / "nnUNetTrainer"
    # nnU-Net finds a trainer by importing every module under this folder; primus imports timm -> torchvision,
    # whose compiled ops do not load with the CPU torch. Left out of the lookup (this environment is the bench's own).
    shutil.rmtree(trainers / "primus", ignore_errors=True)
    (trainers / "variants" / "sam3dseg_bench").mkdir(exist_ok=True)
    (trainers / "variants" / "sam3dseg_bench" / "__init__.py").write_text("")
    (trainers / "variants" / "sam3dseg_bench" / f"{TRAINER}.py").write_text(TRAINER_CODE.format(mirror=mirror, trainer=TRAINER))
    return venv / "bin"


def run_nnunet(data: Path, work: Path, budget: float, args: argparse.Namespace, log: Path) -> dict:
    """Plan and preprocess (not counted), train for the budget, predict with the last checkpoint, score."""
    mirror = SETS[args.set][2]
    bin_dir = ensure_nnunet(args.nnunet_venv, args.torch, mirror, log)
    raw, pre, results = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    for d in (raw, pre, results):
        d.mkdir(parents=True, exist_ok=True)
    if not (raw / data.name).exists():
        (raw / data.name).symlink_to(data.resolve(), target_is_directory=True)
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(results)}
    dataset_id = data.name[len("Dataset") : len("Dataset") + 3]
    plan_s, _ = run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", "3d_fullres", "-np", "2"], log, env)
    plans = read_json(pre / data.name / "nnUNetPlans.json")["configurations"]["3d_fullres"]
    out = results / data.name / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_all"
    shutil.rmtree(out, ignore_errors=True)
    train_s, finished = run([str(bin_dir / "nnUNetv2_train"), dataset_id, "3d_fullres", "all", "-tr", TRAINER, "-device", args.device],
                            log, env, timeout=budget)  # fmt: skip
    checkpoints = [c for c in ("checkpoint_final.pth", "checkpoint_latest.pth") if (out / c).is_file()]
    epochs = _nnunet_epochs(out)
    result = {"patch_size": plans["patch_size"], "batch_size": plans["batch_size"], "plan_preprocess_s": plan_s,
              "train_s": train_s, "stopped_by_budget": not finished, "epochs_done": epochs,
              "iterations_done": epochs * 25, "mirroring": mirror, "checkpoint": checkpoints[0] if checkpoints else None}  # fmt: skip
    if not checkpoints:  # an outcome, not a failure of the bench
        return {**result, "no_model": "no checkpoint within the budget: nnU-Net writes one at the end of an epoch"}
    pred = work / "nnunet_pred"
    shutil.rmtree(pred, ignore_errors=True)
    predict_s, _ = run([str(bin_dir / "nnUNetv2_predict"), "-i", str(data / "imagesTs"), "-o", str(pred), "-d", dataset_id,
                        "-c", "3d_fullres", "-f", "all", "-tr", TRAINER, "-chk", checkpoints[0], "-device", args.device,
                        "-npp", "1", "-nps", "1", "--disable_progress_bar"], log, env)  # fmt: skip
    tests = len(list((data / "labelsTs").glob("*.nii.gz")))
    return {**result, "predict_s_per_case": predict_s / tests, "scores": score(pred, data, work / "nnunet_eval")}


def _nnunet_epochs(out: Path) -> int:
    """Epochs nnU-Net finished, from its training log ("Epoch N" lines; the last started may not have ended)."""
    logs = sorted(out.glob("training_log_*.txt"))
    if not logs:
        return 0
    ended = [line for line in logs[-1].read_text().splitlines() if "Epoch time:" in line]
    return len(ended)


def table(result: dict) -> str:
    """The Markdown table of a result: a row per structure and the means, a column pair per system (a system
    without a model at the budget shows why), then each system's time line."""
    systems = [s for s in ("sam3dseg", "nnunet") if s in result]
    scored = [s for s in systems if "scores" in result[s]]
    names = list(result[scored[0]]["scores"]["per_class"]) if scored else []
    head = {"sam3dseg": "sam3dseg", "nnunet": "nnU-Net 3d_fullres"}
    lines = ["| structure | " + " | ".join(f"{head[s]} Dice | HD95 mm" for s in systems) + " |", "|---|" + "---|---|" * len(systems)]
    for name in [*names, "mean"]:
        cells = []
        for s in systems:
            if "scores" not in result[s]:
                cells.append("no model | –")
                continue
            sc = result[s]["scores"]
            if name == "mean":
                cells.append(f"**{sc['mean_dice']:.3f}** | " + ("n/a" if sc["mean_hd95"] is None else f"{sc['mean_hd95']:.1f}"))
            else:
                cells.append(f"{sc['per_class'][name]['dice']:.3f} | {sc['per_class'][name]['hd95']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for s in systems:
        lines.append(f"- {head[s]}: {_time_line(result[s])}")
    return "\n".join(lines)


def _time_line(r: dict) -> str:
    if "failed" in r:
        return r["failed"]
    if "cache_s" in r and "train_s" in r:
        settings = r.get("settings", [])  # results before train.fold=all have none: they validated every epoch
        epochs = r["steps"] // r["steps_per_epoch"]
        extra = [x for x in settings if x != "train.fold=all"]
        if "train.fold=all" in settings:
            what = f"{epochs} epochs on every training case, none held out"
        else:
            what = f"{epochs} validations of {r['run_validation_s']:.0f} s"
        return (f"cache {r['cache_s']:.0f} s + calibration {r['calibration_s']:.0f} s + training {r['train_s']:.0f} s "
                f"({r['steps']} steps of {r['run_step_s']:.2f} s, {what}; calibrated at {r['step_s']:.2f} s a step)"
                f"{' with ' + ', '.join(extra) if extra else ''}{'; ' + r['stopped'] if 'stopped' in r else ''}; "
                f"predict {r['predict_s_per_case']:.0f} s a case")  # fmt: skip
    if "plan_preprocess_s" in r:
        done = f"{r['epochs_done']} epochs of 25 iterations ({r['iterations_done']} iterations)"
        line = f"plan and preprocess {r['plan_preprocess_s']:.0f} s (not counted) + training {r['train_s']:.0f} s: {done}, patch {r['patch_size']}, batch {r['batch_size']}"
        return line + (f"; predict {r['predict_s_per_case']:.0f} s a case" if "predict_s_per_case" in r else f"; {r.get('no_model')}")
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=list(SETS), default="ct", help="the generated cases (default ct)")
    parser.add_argument("--budget", type=float, default=1800, help="seconds of wall time each system gets (default 1800)")
    parser.add_argument("--work", type=Path, help="folder for the data, caches, runs and predictions (required to run)")
    parser.add_argument("--systems", nargs="+", choices=["sam3dseg", "nnunet"], default=["sam3dseg", "nnunet"])
    parser.add_argument("--encoder", default="lite_medsam", help="sam3dseg's encoder (default lite_medsam)")
    parser.add_argument("--image-size", type=int, help="sam3dseg's encoder input side (default: the encoder's own)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for both systems (default cpu)")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a further sam3dseg train setting, e.g. decoder.grid_stride=4 (repeatable; recorded in the result)")
    parser.add_argument("--seed", type=int, default=0, help="sam3dseg's training seed (the data's seed is the generator's 0)")
    parser.add_argument("--nnunet-venv", type=Path, default=ROOT / ".venv-nnunet", help="nnU-Net's environment, made if absent")
    parser.add_argument("--torch", default=TORCH, help=f"the torch nnU-Net's environment pins (default {TORCH}, the CPU wheel here)")
    parser.add_argument("--json", type=Path, help="where the result goes (default bench/results/peer_nnunet_{set}_{budget}s.json)")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table of this result file and exit")
    args = parser.parse_args()
    if args.table:
        print(table(read_json(args.table)))
        return
    if args.work is None:
        parser.error("--work is required to run the bench")
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "peer_nnunet.log"
    data = make_dataset(args.set, args.work, log)
    target = args.json or ROOT / "bench" / "results" / f"peer_nnunet_{args.set}_{int(args.budget)}s.json"
    result = read_json(target) if target.is_file() else {}
    result.update({"set": args.set, "budget_s": args.budget, "device": args.device, "data": read_json(data / "dataset.json")["generator"]})
    result.setdefault("machine", {})[args.device] = {"cpu": cpu_name(), "kind": describe_cpu(), "cores": os.cpu_count(), "torch": torch.__version__}
    failed = False
    for system in args.systems:
        print(f"{system}: {args.budget:.0f} s on {args.set} ({log})", flush=True)
        try:
            fn = run_sam3dseg if system == "sam3dseg" else run_nnunet
            result[system] = {**fn(data, args.work, args.budget, args, log), "when": time.strftime("%Y-%m-%d %H:%M")}
        except (RuntimeError, subprocess.CalledProcessError) as err:
            result[system] = {"failed": str(err)}
        failed |= "failed" in result[system]
        print(json.dumps({k: v for k, v in result[system].items() if k != "scores"}, default=str), flush=True)
    write_json(target, result)
    print(table(result))
    print(f"written {target}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
