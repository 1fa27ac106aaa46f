"""Are in-plane flips free on cached features? Encode a slice and its mirror image and compare.

For an in-plane flip to be exact on the cache (as depth flips are), the features of the flipped
slice would have to equal the flipped features of the slice. SAM's image encoder breaks that
symmetry in three places: the absolute position embedding, the signed relative-position tables
of its attention, and the window padding at the bottom/right. This measures how far off it is:
the cosine similarity, per token, between ``Enc(flip(I))`` and ``flip(Enc(I))`` (mean and 5th
percentile over tokens), left-right and up-down, on generated slices that fill the square input
and on slices padded at the bottom/right (a non-square scan).

Without ``--checkpoint`` the ViT-B weights are random (as everywhere here without one), so the
figure speaks for the architecture, not for SAM's trained weights: run it with a checkpoint to
decide for those. In-plane flips are therefore augmented views (encoded), not feature flips.

    python bench/flip_symmetry.py [--image-size 256] [--checkpoint sam_vit_b_01ec64.pth] [--json out.json]

Results: ``bench/results/flip_symmetry.json`` (docs/method.md and docs/usage.md quote it; tests/test_docs.py checks
that they do).

Far from 1, even before SAM's trained position embedding enters: the patch
embedding's kernels are not mirror-symmetric, so a token of a mirrored patch is another vector.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _shared import machine
from sam3dseg.common.files import write_json
from sam3dseg.data.synthetic import make_case
from sam3dseg.model.encoder import encode_slices
from sam3dseg.model.registry import build_encoder


def _slices(size: int, height: int, count: int) -> torch.Tensor:
    """``count`` generated slices resized to ``height × size`` grey values in [0, 255]."""
    out = []
    for seed in range(count):
        images, _, _ = make_case(np.random.default_rng(seed), size=(48, 64))
        volume = torch.from_numpy(np.ascontiguousarray(images[0])).float()
        plane = volume[volume.shape[0] // 2]
        plane = (plane - plane.min()) / (plane.max() - plane.min() + 1e-6) * 255
        out.append(F.interpolate(plane[None, None], size=(height, size), mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256, help="encoder input side (default 256)")
    parser.add_argument("--checkpoint", type=Path, help="a SAM ViT-B checkpoint (default: random weights)")
    parser.add_argument("--slices", type=int, default=3, help="generated slices (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.manual_seed(0)
    size = args.image_size
    encoder = build_encoder("vit_b", size, args.checkpoint).eval()
    grid = size // 16
    rows = []
    for layout, height in (("square", size), ("padded", size * 3 // 4)):
        x = _slices(size, height, args.slices)
        with torch.no_grad():
            base = encode_slices(encoder, x)  # (N, 256, g, g)
            for name, dim in (("left-right", -1), ("up-down", -2)):
                flipped = encode_slices(encoder, x.flip(dim))
                if layout == "padded" and name == "up-down":
                    # the image occupies the top 3/4 of the grid; compare the rows it covers
                    rows_used = height // 16
                    a, b = flipped[..., :rows_used, :], base[..., :rows_used, :].flip(-2)
                else:
                    a, b = flipped, base.flip(dim)
                cosine = F.cosine_similarity(a, b, dim=1).flatten()
                row = {"layout": layout, "flip": name, "mean": float(cosine.mean()),
                       "p5": float(torch.quantile(cosine, 0.05)), "tokens": int(cosine.numel())}  # fmt: skip
                rows.append(row)
                print(f"{layout:>7} {name:>10}: cosine per token mean {row['mean']:.3f}, 5th percentile {row['p5']:.3f}", flush=True)
    weights = args.checkpoint or "random weights"
    print(f"ViT-B at {size}² ({grid} × {grid} tokens), {weights}, {args.slices} slices")
    if args.json:
        write_json(args.json, {**machine(), "rows": rows, "image_size": size, "checkpoint": str(args.checkpoint)})


if __name__ == "__main__":
    main()
