"""Training reads crops, not cases: resident memory with 10 and with 100 cached cases.

Writes synthetic cached cases straight to disk (the cache's own format: fp16 features
``(256, D, g, g)``, uint8 label and image; encoding real ones would take hours here), then, in a
forked process per case count, draws ``--batches`` training batches the way ``train`` does
(``CaseStore`` memory-maps each case; ``sample_batch`` slices the crop) and records the largest
anonymous resident memory (``RssAnon``: what the process itself holds) after each batch, and the
file-backed pages it had mapped in (``RssFile``: page cache the kernel may drop at will).

Exit status 1 when the anonymous peak with 100 cases exceeds 1.2 × that with 10 cases
(+ 16 MiB of allocator slack).

    python bench/streaming.py [--image-size 256] [--depth 48] [--batches 60] [--json out.json]

Results: ``bench/results/streaming.json`` (docs/usage.md quotes it; tests/test_docs.py checks that
it does). Before, with cases memory-mapped but glibc's adjustable mmap threshold left on, the same
run grew from +214 MiB to +788 MiB (the heap pinned by each newly opened case: see
``return_large_buffers_to_the_os``); with cases loaded whole (the earlier ``CaseStore``) it would
hold every case read, up to its capacity.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _shared import machine
from sam3dseg.analysis.memory_probe import in_forked_child, status_kib


def _write_cases(folder: Path, count: int, size: int, depth: int) -> dict:
    import torch

    from sam3dseg.common.files import save_tensors

    g = size // 16
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        label = torch.zeros(depth, size, size, dtype=torch.uint8)
        label[depth // 3 : depth // 2, size // 4 : size // 2, size // 4 : size // 2] = 1
        record = {
            "features": torch.randn(256, depth, g, g, generator=generator).half(),
            "image": torch.randint(0, 256, (1, depth, size // 2, size // 2), generator=generator, dtype=torch.uint8),
            "label": label,
        }
        save_tensors(record, folder / "cases" / f"case_{i:03d}.pt")
    return {}


def _draw(folder: str, count: int, size: int, batches: int) -> dict:
    import torch

    from sam3dseg.pipeline.training.samples import CaseStore, Sampling, sample_batch

    store = CaseStore(folder)
    names = [f"case_{i:03d}" for i in range(count)]
    spec = Sampling(batch_size=2, depth=16, image_size=size, foreground_fraction=0.33, image=True)
    generator = torch.Generator().manual_seed(0)
    before = status_kib("RssAnon")
    peak_anon = peak_file = 0
    for _ in range(batches):
        batch = sample_batch(store, names, spec, generator)
        del batch
        peak_anon = max(peak_anon, status_kib("RssAnon") - before)
        peak_file = max(peak_file, status_kib("RssFile"))
    return {"cases": count, "anon_mib": peak_anon / 1024, "file_mib": peak_file / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256, help="S of the synthetic cache (default 256)")
    parser.add_argument("--depth", type=int, default=48, help="slices per case (default 48)")
    parser.add_argument("--batches", type=int, default=60, help="batches drawn per run (default 60)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        written = in_forked_child(_write_cases, Path(tmp), 100, args.image_size, args.depth)
        if "error" in written:
            sys.exit(f"writing the cases: {written['error']}")
        case_mib = (Path(tmp) / "cases" / "case_000.pt").stat().st_size / 2**20
        for count in (10, 100):
            row = in_forked_child(_draw, tmp, count, args.image_size, args.batches)
            if "error" in row:
                sys.exit(f"{count} cases: {row['error']}")
            rows.append(row)
            print(f"{count:>3} cases ({count * case_mib:6.0f} MiB on disk): anonymous peak +{row['anon_mib']:6.1f} MiB, "
                  f"file pages mapped {row['file_mib']:6.1f} MiB", flush=True)  # fmt: skip
    ten, hundred = rows[0]["anon_mib"], rows[1]["anon_mib"]
    print(f"{args.batches} batches of 2 × 16 slices at {args.image_size}²; a case is {case_mib:.1f} MiB on disk")
    if args.json:
        from sam3dseg.common.files import write_json

        write_json(args.json, {**machine(), "rows": rows, "case_mib": case_mib})
    if hundred > 1.2 * ten + 16:
        print(f"GOAL MISSED: anonymous memory grows from {ten:.1f} MiB (10 cases) to {hundred:.1f} MiB (100 cases)")
        sys.exit(1)


if __name__ == "__main__":
    main()
