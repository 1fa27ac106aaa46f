"""The CUDA path, measured on a GPU: encoder precisions, torch.compile, the decoder step, and the whole pipeline.

Part 1: ViT-B (random weights) at 1024² and 512² and LiteMedSAM's TinyViT at 256² (random
weights: the time does not depend on the values), through ``encode_slices`` in fp32 (TF32
off, as our fp32 means), bf16 (autocast) and int8 (``torch._int_mm``); seconds per slice, the
per-token cosine to fp32's features, peak GPU memory.
Part 2: ``torch.compile`` of ViT-B at 1024² in bf16: compile seconds, speed against eager.
Part 3: one decoder forward + backward on 2 crops of 32 slices × 32² tokens (ViT-B 512², whole planes), K = 14, fp32
against bf16 autocast (what ``train`` does on CUDA).
Part 4: ``sam3dseg cache``, ``train``, ``predict`` and ``evaluate`` on a generated dataset with
``--device cuda --encoder-precision auto``: that every stage runs there, its times and Dice.

Exits 1 when a part fails to run or bf16 features fall below a cosine of 0.999 to fp32's.

    python bench/gpu.py --out DIR [--parts encoders compile decoder pipeline]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from _shared import bench_encoder

from sam3dseg.common.files import write_json
from sam3dseg.model.encoder import encode_slices
from sam3dseg.pipeline.config import DecoderConfig
from sam3dseg.pipeline.model_file import build_decoder


def _timed(fn, repeats: int = 3) -> tuple[float, object]:
    out = fn()  # warm-up: kernels picked, memory allocated
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), out


def encoders() -> list[dict]:
    rows = []
    for name, size, batch in (("vit_b", 1024, 8), ("vit_b", 512, 16), ("lite_medsam", 256, 32)):
        slices = torch.rand(batch, size, size, device="cuda", generator=torch.Generator("cuda").manual_seed(0)) * 255
        reference = None
        for precision in ("fp32", "bf16", "int8"):
            try:
                torch.cuda.reset_peak_memory_stats()
                encoder = bench_encoder(name, size, precision).cuda()
                seconds, feats = _timed(lambda: encode_slices(encoder, slices, batch))
                row = {"encoder": name, "image_size": size, "batch": batch, "precision": precision,
                       "s_per_slice": seconds / batch, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip
                if reference is None:
                    reference = feats
                cos = F.cosine_similarity(reference.flatten(2), feats.flatten(2), dim=1)
                row.update(cos_mean=cos.mean().item(), cos_min=cos.min().item())
            except Exception as error:  # noqa: BLE001 - recorded, the other precisions still run
                row = {"encoder": name, "image_size": size, "precision": precision, "error": f"{type(error).__name__}: {error}"[:300]}
            print(json.dumps(row), flush=True)
            rows.append(row)
            encoder = None
            torch.cuda.empty_cache()
    return rows


def compiled() -> dict:
    encoder = bench_encoder("vit_b", 1024, "bf16").cuda()
    x = torch.randn(8, 3, 1024, 1024, device="cuda")

    def run(module):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return module(x)

    eager, _ = _timed(lambda: run(encoder))
    start = time.perf_counter()
    fast = torch.compile(encoder)
    run(fast)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    seconds, _ = _timed(lambda: run(fast))
    row = {"part": "compile", "eager_s": eager, "compiled_s": seconds, "compile_s": compile_s, "speedup": eager / seconds}
    print(json.dumps(row), flush=True)
    return row


def decoder_step() -> list[dict]:
    rows = []
    decoder = build_decoder(DecoderConfig(), 14, 256, 1).cuda()
    feats = torch.randn(2, 256, 32, 32, 32, device="cuda")  # ViT-B at 512²: a 32 × 32 token grid
    image = torch.rand(2, 1, 32, 512, 512, device="cuda")  # the image path's input
    for amp in (False, True):
        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                outs = decoder(feats, image)
            loss = sum(o.float().square().mean() for o in outs)
            loss.backward()
            return loss

        seconds, _ = _timed(step)
        rows.append({"part": "decoder", "amp": amp, "s_per_step": seconds, "batch": 2, "crop": [32, 32, 32]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def pipeline(work: Path, device: str = "cuda", cases: int = 12, epochs: int = 10) -> dict:
    from sam3dseg.data.synthetic import write_dataset

    data = write_dataset(work / "Dataset001_Gen", cases, "nnunet", seed=3, depth=(24, 32), size=(96, 128))
    cli = [sys.executable, "-m", "sam3dseg"]
    steps = {
        "cache": [*cli, "cache", "--dataset", str(data), "--out", str(work / "cache"), "--encoder", "vit_b", "--image-size", "256",
                  "--device", device, "--encoder-precision", "auto", "--quiet"],
        "train": [*cli, "train", "--cache", str(work / "cache"), "--out", str(work / "run"), "--quiet",
                  f"train.device={device}", f"train.epochs={epochs}", "train.steps_per_epoch=25", "train.crop_depth=16"],
        "predict": [*cli, "predict", "--model", str(work / "run" / "best.pt"), "--input", str(data / "imagesTr"),
                    "--out", str(work / "pred"), "--device", device, "--quiet"],
        "evaluate": [*cli, "evaluate", "--pred", str(work / "pred"), "--ref", str(data / "labelsTr"), "--out", str(work / "eval")],
    }  # fmt: skip
    row = {"part": "pipeline"}
    for stage, command in steps.items():
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        row[f"{stage}_s"] = time.perf_counter() - start
        if done.returncode:
            row[f"{stage}_error"] = (done.stdout + done.stderr)[-1500:]
            break
        row[f"{stage}_tail"] = (done.stdout + done.stderr)[-600:]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and the pipeline's files")
    parser.add_argument("--parts", nargs="+", default=["encoders", "compile", "decoder", "pipeline"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    torch.backends.cudnn.allow_tf32 = False
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    print(json.dumps(report), flush=True)
    failed = False
    parts = {"encoders": encoders, "compile": compiled, "decoder": decoder_step, "pipeline": lambda: pipeline(args.out / "work")}
    for name in args.parts:
        try:
            report[name] = parts[name]()
        except Exception:  # noqa: BLE001 - one part's failure is reported, the others still run
            report[name] = {"error": traceback.format_exc()[-2000:]}
            print(report[name]["error"], flush=True)
            failed = True
    write_json(args.out / "gpu.json", report)
    bf16 = [r for r in report.get("encoders", []) if r.get("precision") == "bf16"]
    if failed or any("error" in r or r["cos_min"] < 0.999 for r in bf16):
        print("FAIL: a part did not run, or bf16 features fell below cosine 0.999 to fp32's")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
