"""Which decoder for a stride-4 encoder (decision D12): three designs on LiteMedSAM's features, same steps, same data.

LiteMedSAM's TinyViT gives a 256-channel grid at S/4, where SAM's ViT gives S/16. The designs,
all with four blocks, the default widths and four supervised levels weighted (1, 2, 4, 8)/15:

- ``keep-first`` (the default): blocks 1 and 2 keep the S/4 grid, blocks 3 and 4 upsample;
- ``keep-last``: blocks 1 and 2 upsample to S, blocks 3 and 4 run at S (4× their FLOPs);
- ``pool-16``: the features average-pooled 4 × 4 to S/16 and the method's decoder unchanged
  (all four blocks upsample), throwing away the finer grid.

A generated dataset (``write_dataset``, 10 cases) is cached with ``lite_medsam`` at 64²; each
design trains on 8 cases (depth crops of 8 slices, whole planes, batch 2, SGD as ``train``'s
default, per-class Dice + CE, image path off) and is scored on the other 2 (held-out mean
foreground Dice of the finest output), for each seed. Prints Dice, time per step and decoder
FLOPs per slice; exits 1 when the default is not within 0.02 of the best mean Dice.

    python bench/stride_decoder.py [--steps 150] [--seeds 2] [--designs keep-first pool-16 ...]

Status. Run here (2-core AMD EPYC, torch 2.13, 150 steps, 2 seeds; keep-first while the test
suite shared the machine, the others alone):

| design | held-out Dice (2 seeds) | decoder GFLOP per slice (forward, 64²) | s per step |
|---|---|---|---|
| keep-first (default: blocks 1–2 at S/4, 3–4 upsample) | 0.938 ± 0.006 | 1.56 | 1.30 (machine shared) |
| keep-last (blocks 1–2 upsample, 3–4 at S) | 0.948 ± 0.002 | 3.68 | 3.04 |
| pool-16 (features pooled to S/16, the method's decoder) | 0.841 ± 0.008 | 0.28 | 0.27 |

The default is within 0.02 of the best (exit 0): keep-last's +0.010 is within two seed
deviations and costs 2.4× the FLOPs; at equal wall time the default gets 2.3× the steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _shared import machine
from sam3dseg.common.files import write_json
from sam3dseg.data.datasets import load_dataset
from sam3dseg.data.preprocess import PreprocessConfig
from sam3dseg.data.synthetic import write_dataset
from sam3dseg.model.decoder import SAM3DDecoder
from sam3dseg.model.losses import DeepSupervisionLoss, per_class_dice_loss
from sam3dseg.model.registry import EncoderInfo, build_encoder, resolve_checkpoint
from sam3dseg.pipeline.caching.cache import build_cache, load_case
from sam3dseg.pipeline.caching.manifest import CacheManifest

DESIGNS = ("keep-first", "keep-last", "pool-16")
LABELS = {
    "keep-first": "keep-first (default: blocks 1–2 at S/4, 3–4 upsample)",
    "keep-last": "keep-last (blocks 1–2 upsample, 3–4 at S)",
    "pool-16": "pool-16 (features pooled to S/16, the method's decoder)",
}
SIZE = 64


def _decoder(design: str, classes: int) -> SAM3DDecoder:
    dec = SAM3DDecoder(classes, 256, stride=16 if design == "pool-16" else 4)
    if design == "keep-last":
        dec.scales = (2, 2, 1, 1)  # level_flops reads these
        for block, scale in zip(dec.blocks, dec.scales):
            block.scale = scale
    return dec


def _features(design: str, f: torch.Tensor) -> torch.Tensor:
    return F.avg_pool3d(f, (1, 4, 4)) if design == "pool-16" else f


def _padded(label: torch.Tensor) -> torch.Tensor:
    return F.pad(label, (0, SIZE - label.shape[-1], 0, SIZE - label.shape[-2]))


def run(design: str, cases: list[dict], val: list[dict], classes: int, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    dec = _decoder(design, classes)
    opt = torch.optim.SGD(dec.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    loss_fn = DeepSupervisionLoss(dice=per_class_dice_loss)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        feats, labels = [], []
        for _ in range(2):
            case = cases[int(torch.randint(len(cases), (1,), generator=g))]
            d = case["features"].shape[1]
            z = int(torch.randint(max(1, d - 8 + 1), (1,), generator=g))
            f = case["features"][:, z : z + 8].float()
            y = _padded(case["label"][z : z + 8].long())
            if f.shape[1] < 8:
                f, y = F.pad(f, (0, 0, 0, 0, 0, 8 - f.shape[1])), F.pad(y, (0, 0, 0, 0, 0, 8 - y.shape[0]))
            feats.append(f), labels.append(y)
        for group in opt.param_groups:
            group["lr"] = 1e-2 * (1 - step / steps) ** 0.9
        loss = loss_fn(dec(_features(design, torch.stack(feats))), torch.stack(labels))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 12)
        opt.step()
    per_step = (time.perf_counter() - start) / steps
    dec.eval()
    dice = []
    with torch.no_grad():
        for case in val:
            pred = dec(_features(design, case["features"][None].float()))[-1][0].argmax(0)
            d, h, w = case["label"].shape
            pred, ref = pred[:, :h, :w], case["label"].long()
            for k in range(1, classes):
                p, r = pred == k, ref == k
                if r.any() or p.any():
                    dice.append(2 * (p & r).sum().item() / (p.sum() + r.sum()).item())
    return {"dice": statistics.mean(dice), "s_per_step": per_step}


def table(result: dict) -> str:
    """docs/performance.md's table: each design's held-out Dice (mean ± deviation over seeds), FLOPs and step time."""
    lines = [f"| design | held-out Dice ({result['seeds']} seeds) | decoder GFLOP per slice (forward, {result['size']}²) | s per step |",
             "|---|---|---|---|"]  # fmt: skip
    for design, runs in result["runs"].items():
        dice = [r["dice"] for r in runs]
        step = statistics.mean(r["s_per_step"] for r in runs)
        lines.append(f"| {LABELS[design]} | {statistics.mean(dice):.3f} ± {statistics.pstdev(dice):.3f} | {result['gflop_per_slice'][design]:.2f} | {step:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS, help="the designs to run (the exit check needs keep-first)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        ds = write_dataset(Path(tmp) / "ds", 10, "nnunet", seed=7)
        encoder = build_encoder("lite_medsam", image_size=SIZE)
        info = EncoderInfo.of(encoder, resolve_checkpoint("lite_medsam", None))
        build_cache(load_dataset(ds), Path(tmp) / "cache", encoder, info, PreprocessConfig(), progress=False)
        manifest = CacheManifest.read(Path(tmp) / "cache")
        loaded = [load_case(Path(tmp) / "cache", n) for n in manifest.cases]
        classes = len(manifest.class_names)
        results, gflops = {}, {}
        for design in args.designs:
            runs = [run(design, loaded[:8], loaded[8:], classes, args.steps, seed) for seed in range(args.seeds)]
            flops = sum(_decoder(design, classes).level_flops(1, *(((4, 4) if design == "pool-16" else (16, 16)))))
            results[design] = runs
            gflops[design] = flops / 1e9
            dice = [r["dice"] for r in runs]
            print(f"{design:<11} held-out Dice {statistics.mean(dice):.3f} ± {statistics.pstdev(dice):.3f} "
                  f"({', '.join(f'{v:.3f}' for v in dice)}), {statistics.mean(r['s_per_step'] for r in runs):.3f} s/step, "
                  f"{flops / 1e9:.2f} GFLOP per slice forward", flush=True)  # fmt: skip
    if args.json:
        write_json(args.json, {**machine(), "steps": args.steps, "seeds": args.seeds, "size": SIZE, "runs": results, "gflop_per_slice": gflops})
    print(table({"seeds": args.seeds, "size": SIZE, "runs": results, "gflop_per_slice": gflops}))
    if "keep-first" not in results:
        return
    best = max(statistics.mean(r["dice"] for r in v) for v in results.values())
    default = statistics.mean(r["dice"] for r in results["keep-first"])
    if default < best - 0.02:
        print(f"DEFAULT NOT BEST: keep-first {default:.3f} against {best:.3f}")
        sys.exit(1)
    print(f"OK: the default (keep-first) {default:.3f} is within 0.02 of the best {best:.3f}")


if __name__ == "__main__":
    main()
