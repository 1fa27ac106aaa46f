"""Our SAM encoder against the official one, same weights, same run.

For each case (by default one 1024² slice and a batch of eight 256² slices) the
official ``segment_anything`` ``ImageEncoderViT`` (vit_b, random weights) is built,
its weights are loaded into ``sam3dseg``'s encoder, and the two are timed in turn
(A B A B ..., fp32, no autograd) so that drift of this shared machine hits both
alike. Prints per-case medians, the ratio official/ours (> 1: ours is faster) and
the largest absolute difference of the outputs; exits 1 if ours is slower at any
size or differs by more than 1e-4.

    python bench/encoder.py [--repeats 3] [--cases 1024x1 256x8] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _shared import alternate, machine, verdict  # noqa: E402
from sam_reference import official_encoder, randomize_  # noqa: E402

from sam3dseg.model.registry import ENCODERS  # noqa: E402
from sam3dseg.model.vit import SAMImageEncoder  # noqa: E402
from sam3dseg.common.files import write_json  # noqa: E402


def bench_case(size: int, batch: int, repeats: int, name: str = "vit_b") -> dict:
    official = randomize_(official_encoder(name, size), seed=size)
    ours = SAMImageEncoder(ENCODERS[name].spec, image_size=size, name=name)
    ours.load_state_dict(official.state_dict())
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    t_official, t_ours, diff, b = alternate(official, ours, x, repeats, warm=x[:1])
    med_ours, med_official = statistics.median(t_ours), statistics.median(t_official)
    return {
        "encoder": name,
        "image_size": size,
        "batch": batch,
        "repeats": repeats,
        "official_s": t_official,
        "ours_s": t_ours,
        "official_median_s": med_official,
        "ours_median_s": med_ours,
        "speedup": med_official / med_ours,
        "max_abs_diff": diff,
        "output_absmax": b.abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each encoder per case")
    parser.add_argument("--cases", nargs="+", default=["1024x1", "256x8"], help="SIZExBATCH, e.g. 1024x1")
    parser.add_argument("--encoder", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU")
    results = []
    for case in args.cases:
        size, batch = (int(v) for v in case.split("x"))
        r = bench_case(size, batch, args.repeats, args.encoder)
        results.append(r)
        print(
            f"{r['encoder']} {size}² × {batch}: official {r['official_median_s']:.2f} s, "
            f"ours {r['ours_median_s']:.2f} s (median of {args.repeats}), "
            f"speed-up ×{r['speedup']:.2f}, max |diff| {r['max_abs_diff']:.2e} "
            f"(outputs up to {r['output_absmax']:.2f})",
            flush=True,
        )
    if args.json:
        write_json(args.json, {**machine(), "results": results})
    verdict([f"ours slower at {r['image_size']}²" for r in results if r["speedup"] < 1.0]
            + [f"outputs differ by {r['max_abs_diff']:.1e} at {r['image_size']}²" for r in results if r["max_abs_diff"] > 1e-4],
            "ours is not slower at any size measured and matches to 1e-4")


if __name__ == "__main__":
    main()
