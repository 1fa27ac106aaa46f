"""A training step with LiteMedSAM's features at 256² against one with ViT-B's at 256²: the goal is within 1.5×.

LiteMedSAM's TinyViT gives a 64 × 64 token grid at 256² (stride 4) where ViT-B gives 16 × 16 (stride 16).
The decoder's block 1 (256 → 128 channels, 3×3×3) on that grid made a step with the default recipe cost
about 5× ViT-B's (100 against 18.6 GFLOP forward per crop). ``decoder.grid_stride`` average-pools the
features to a coarser grid before block 1 (method D14); this script times one step of ``sam3dseg train``'s
default recipe (batch 2, 16 slices, crops of half the token grid, image path, per-class Dice + CE with deep
supervision, AdamW, gradient clipping) for:

- ``vit_b``: ViT-B's 16 × 16 grid (the reference);
- ``lite_medsam@4``: LiteMedSAM's grid as it is (the decoder before D14);
- ``lite_medsam@8``, ``lite_medsam@16``: pooled 2 × 2 (block 1 at S/8) and 4 × 4 (the write-up's decoder).

The features are random (a step's cost does not depend on their values), stored as ``sam3dseg cache``
stores them (fp16, with the uint8 image of the image path) and drawn by the training sampler
(:func:`~sam3dseg.pipeline.training.samples.sample_batch`), so reading the crop from disk is timed too. Each mode
runs in its own process, the modes alternated over ``--rounds`` (A B C D A B C D); the figure is the
median step. Exits 1 when the default (``grid_stride`` auto) is slower than ``--goal`` × ViT-B's step.

    python bench/train_speed.py [--steps 6] [--rounds 2] [--json bench/results/train_speed.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _shared import cpu_name
from sam3dseg.common.files import save_tensors, write_json
from sam3dseg.model.losses import LossConfig, build_loss
from sam3dseg.pipeline.config import AUTO_GRID, DecoderConfig, TrainConfig, resolve_crop_tokens, resolve_grid_stride
from sam3dseg.pipeline.model_file import build_decoder
from sam3dseg.pipeline.training.samples import CaseStore, Sampling, sample_batch

SIZE = 256
MODES = {"vit_b": (16, 16), "lite_medsam@4": (4, 4), "lite_medsam@8": (4, 8), "lite_medsam@16": (4, 16)}  # (encoder stride, grid stride)


def _child(mode: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    stride, grid_stride = MODES[mode]
    grid, t = SIZE // stride, TrainConfig()
    depth = t.crop_depth * 3
    with tempfile.TemporaryDirectory() as tmp:
        cases = Path(tmp) / "cases"
        cases.mkdir()
        label = torch.zeros(depth, SIZE, SIZE, dtype=torch.uint8)
        for k in range(1, args.classes):  # a block per class, so every class has voxels to centre crops on
            label[:, (k * 17) % 200 : (k * 17) % 200 + 40, (k * 29) % 200 : (k * 29) % 200 + 40] = k
        record = {"features": torch.randn(256, depth, grid, grid).half(), "label": label,
                  "image": torch.randint(0, 256, (1, depth, SIZE // 2, SIZE // 2), dtype=torch.uint8)}  # fmt: skip
        save_tensors(record, cases / "case.pt")
        write_json(cases / "case.json", {"key": "bench"})
        store = CaseStore(tmp)
        tokens = resolve_crop_tokens(t.crop_tokens, grid)
        spec = Sampling(t.batch_size, t.crop_depth, SIZE, t.flip_depth, t.foreground_fraction, True, tokens)
        decoder = build_decoder(DecoderConfig(grid_stride=grid_stride), args.classes, 256, 1, stride)
        loss_fn = build_loss(LossConfig())
        optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        times = []
        for step in range(args.steps + 1):  # the first step warms up
            start = time.perf_counter()
            batch = sample_batch(store, ["case"], spec, generator)
            loss = loss_fn([o.float() for o in decoder(batch.features, batch.images)], batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), t.grad_clip)
            optimizer.step()
            if step:
                times.append(time.perf_counter() - start)
        flops = sum(decoder.level_flops(t.crop_depth, tokens, tokens))
    return {"mode": mode, "step_s": times, "forward_gflop_per_crop": flops / 1e9, "crop_tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per mode, alternated")
    parser.add_argument("--classes", type=int, default=13, help="K (the CT set: 12 organs + background)")
    parser.add_argument("--goal", type=float, default=1.5, help="the default's step over ViT-B's: exit 1 above it (default 1.5)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args)))
        return
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--classes", str(args.classes)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {m: {"median_step_s": statistics.median(t for r in rs for t in r["step_s"]),
                   "forward_gflop_per_crop": rs[0]["forward_gflop_per_crop"]} for m, rs in runs.items()}  # fmt: skip
    reference = summary["vit_b"]["median_step_s"]
    default = f"lite_medsam@{resolve_grid_stride(AUTO_GRID, 4)}"
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads; a step of the default recipe at {SIZE}², K={args.classes}")
    for mode, s in summary.items():
        mark = " (default)" if mode == default else ""
        print(f"{mode:>15}{mark:<10}: {s['median_step_s']:.2f} s/step, ×{s['median_step_s'] / reference:.2f} ViT-B's; "
              f"decoder forward {s['forward_gflop_per_crop']:.1f} GFLOP per crop")  # fmt: skip
    ratio = summary[default]["median_step_s"] / reference
    if args.json:
        write_json(args.json, {"cpu": cpu_name(), "threads": torch.get_num_threads(), "size": SIZE, "classes": args.classes, "runs": runs, "summary": summary,
                               "default": default, "ratio_default_to_vit_b": ratio, "goal": args.goal})  # fmt: skip
    if ratio > args.goal:
        print(f"ABOVE GOAL: the default's step is ×{ratio:.2f} ViT-B's (goal ≤ ×{args.goal:g})")
        sys.exit(1)
    print(f"goal met: ×{ratio:.2f} ≤ ×{args.goal:g}")


if __name__ == "__main__":
    main()
