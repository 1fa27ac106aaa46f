"""One training step on cached features against the same step with the encoder run on the fly.

The original SAM3D runs the frozen ViT-B on every slice of every crop at every step;
sam3dseg encodes each case once (``sam3dseg cache``) and trains the decoder on the
stored features. At the original's Synapse crop (64 × 176 × 176, ViT-B at 176²,
K = 14 classes) this script times, in one run:

- ``cached``: a batch drawn from a real cache folder (fp16 features, the code path
  ``sam3dseg train`` uses), decoder forward/backward, deep-supervision loss, AdamW step;
- ``on-the-fly``: the same crop's 64 slices through our ViT-B (no autograd, it is
  frozen), then the same decoder step;
- ``official``: the same, with the official ``segment_anything`` ViT-B, which is what
  the original SAM3D runs (needs the ``[test]`` extra).

Each mode runs in its own process (A B A ...), so its peak resident memory
(``ru_maxrss``) is its own; the step time is the median over the timed steps.

    python bench/train_step.py [--steps 2] [--depth 64] [--size 176] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _shared import machine
from sam3dseg.common.files import save_tensors, write_json
from sam3dseg.model.decoder import SAM3DDecoder
from sam3dseg.model.encoder import encode_volume, to_encoder_input
from sam3dseg.model.losses import deep_supervision_loss
from sam3dseg.model.registry import build_encoder
from sam3dseg.pipeline.training.samples import CaseStore, Sampling, sample_batch


def _child(mode: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    grid = args.size // 16
    total_depth = args.depth + 32
    decoder = SAM3DDecoder(num_classes=args.classes)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-3)
    volume = torch.rand(total_depth, args.size, args.size) * 255  # one case, grey values
    label = torch.randint(0, args.classes, (total_depth, args.size, args.size), dtype=torch.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        if mode == "cached":
            (cache / "cases").mkdir()
            features = torch.randn(256, total_depth, grid, grid).half()  # as `sam3dseg cache` stores them
            save_tensors({"features": features, "label": label}, cache / "cases" / "case.pt")
            write_json(cache / "cases" / "case.json", {"key": "bench"})
            store = CaseStore(cache)
        elif mode == "on-the-fly":
            encoder = build_encoder("vit_b", image_size=args.size)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from sam_reference import official_encoder

            official = official_encoder("vit_b", args.size)

            @torch.no_grad()
            def run_official(slices: torch.Tensor) -> torch.Tensor:
                return torch.cat([official(to_encoder_input(b, args.size)) for b in slices.split(8)])

        times = []
        generator = torch.Generator().manual_seed(0)
        for step in range(args.steps + 1):  # the first step warms up
            start = time.perf_counter()
            if mode == "cached":
                batch = sample_batch(store, ["case"], Sampling(1, args.depth, args.size), generator)
                feats, labels = batch.features, batch.labels
            else:
                s = int(torch.randint(total_depth - args.depth + 1, (1,), generator=generator))
                slices = volume[s : s + args.depth]
                if mode == "on-the-fly":
                    feats = encode_volume(encoder, slices[None])[None]  # (1, 256, D, g, g)
                else:
                    feats = run_official(slices).transpose(0, 1)[None]
                labels = label[s : s + args.depth].long()[None]
            loss = deep_supervision_loss(decoder(feats), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step:
                times.append(time.perf_counter() - start)
            print(f"  {mode} step {step}{' (warm-up)' if not step else ''}: {time.perf_counter() - start:.2f} s", file=sys.stderr, flush=True)
    return {"mode": mode, "step_s": times, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process (after one warm-up)")
    parser.add_argument("--depth", type=int, default=64, help="crop depth D")
    parser.add_argument("--size", type=int, default=176, help="crop side H = W = encoder input size")
    parser.add_argument("--classes", type=int, default=14, help="K (Synapse/BTCV: 13 organs + background)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per mode, alternated")
    parser.add_argument("--goal", type=float, default=10.0, help="speed-up to reach; exit 1 below it (default 10)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=["cached", "on-the-fly", "official"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args)))
        return

    passthrough = ["--steps", str(args.steps), "--depth", str(args.depth), "--size", str(args.size), "--classes", str(args.classes)]
    runs: dict[str, list[dict]] = {"cached": [], "on-the-fly": [], "official": []}
    for _ in range(args.rounds):
        for mode in runs:
            out = subprocess.run([sys.executable, __file__, "--child", mode, *passthrough], check=True, capture_output=True, text=True)
            sys.stderr.write(out.stderr)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {}
    for mode, results in runs.items():
        summary[mode] = {
            "median_step_s": statistics.median(t for r in results for t in r["step_s"]),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
        }
    ratio = summary["on-the-fly"]["median_step_s"] / summary["cached"]["median_step_s"]
    ratio_official = summary["official"]["median_step_s"] / summary["cached"]["median_step_s"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU; crop {args.depth}×{args.size}×{args.size}, K={args.classes}")
    for mode, s in summary.items():
        print(f"{mode:>10}: {s['median_step_s']:.2f} s/step (median), peak RSS {s['peak_rss_mib']:.0f} MiB")
    print(f"speed-up of training on cached features: ×{ratio:.2f} against our encoder on the fly, "
          f"×{ratio_official:.2f} against the official one (the original SAM3D); goal ≥ {args.goal:g}")
    if args.json:
        result = {**machine(), "runs": runs, "summary": summary, "speedup": ratio, "speedup_official": ratio_official}
        write_json(args.json, result)
    if ratio < args.goal:
        print(f"BELOW GOAL: ×{ratio:.2f} < ×{args.goal:g} (the decoder's own step bounds it; docs/performance.md, 'Speed')")
        sys.exit(1)


if __name__ == "__main__":
    main()
