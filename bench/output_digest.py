"""Digest of what the pipeline writes, to prove a refactor changed no output byte.

Runs the command line on a small generated dataset (random ViT-B at 64², so no
checkpoint is needed): ``cache`` → ``train`` → ``predict`` (labels, and again with
``--probabilities``), all from the ``last.pt`` of a short run, and prints the
SHA-256 of every cached case file, of the ``last.pt`` decoder weights, and of every
prediction. Run it on two commits and compare:

    python bench/output_digest.py --work /tmp/a --json before.json      # on the old commit
    python bench/output_digest.py --work /tmp/b --against before.json   # on the new one

With ``--against`` it exits 1 when any digest differs. ``best.pt`` is left out on
purpose: which epoch it holds depends on the validation Dice, which a refactor may
change (the window decoder); ``last.pt``'s weights may not change. The run folder's
timing columns are left out for the same reason.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

from sam3dseg.cli import main as sam3dseg_main


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_dataset(root: Path) -> Path:
    try:
        from sam3dseg.data.synthetic import write_dataset
    except ImportError:  # the layout before the data/ subpackage
        from sam3dseg.synthetic import write_dataset
    return write_dataset(root, 6, "nnunet", seed=5)


def _decoder_digest(path: Path) -> str:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    for name, tensor in sorted(state["decoder"].items()):
        buffer.write(name.encode())
        buffer.write(tensor.contiguous().numpy().tobytes())
    return _sha(buffer.getvalue())


def run(work: Path) -> dict[str, str]:
    """Run the pipeline under ``work`` (emptied first) and return ``{file: sha256}``."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    # The path is part of the cache manifest, so both runs use the same name inside work.
    dataset = _write_dataset(work / "Dataset005_Digest")
    steps = [
        ["cache", "--dataset", str(dataset), "--out", str(work / "cache"), "--image-size", "64", "--quiet"],
        ["train", "--cache", str(work / "cache"), "--out", str(work / "run"), "--quiet",
         "train.epochs=2", "train.steps_per_epoch=3", "train.crop_depth=8", "decoder.channels=[16,16,8,8]"],
        ["predict", "--model", str(work / "run" / "last.pt"), "--input", str(dataset / "imagesTr"),
         "--out", str(work / "pred"), "--quiet"],
        ["predict", "--model", str(work / "run" / "last.pt"), "--input", str(dataset / "imagesTr"),
         "--out", str(work / "pred_tta_probs"), "--quiet", "--tta", "--probabilities", "--window", "4"],
    ]  # fmt: skip
    for argv in steps:
        if sam3dseg_main(argv) != 0:
            raise SystemExit(f"sam3dseg {' '.join(argv)} failed")
    digests = {}
    for path in sorted((work / "cache" / "cases").iterdir()):
        digests[f"cache/cases/{path.name}"] = _sha(path.read_bytes())
    digests["run/last.pt:decoder"] = _decoder_digest(work / "run" / "last.pt")
    for folder in ("pred", "pred_tta_probs"):
        for path in sorted((work / folder).iterdir()):
            if not path.name.startswith("."):
                digests[f"{folder}/{path.name}"] = _sha(path.read_bytes())
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied and reused)")
    parser.add_argument("--json", type=Path, help="write the digests here")
    parser.add_argument("--against", type=Path, help="digests of another commit; exit 1 if any differs")
    args = parser.parse_args()
    digests = run(args.work)
    if args.json:
        args.json.write_text(json.dumps(digests, indent=2) + "\n", encoding="utf-8")
    for name, digest in digests.items():
        print(f"{digest[:16]}  {name}")
    if args.against:
        before = json.loads(args.against.read_text(encoding="utf-8"))
        differ = sorted(k for k in set(before) | set(digests) if before.get(k) != digests.get(k))
        print(f"{len(digests) - len(differ)} of {len(set(before) | set(digests))} outputs byte-identical to {args.against}")
        if differ:
            print("DIFFERENT: " + ", ".join(differ))
            sys.exit(1)


if __name__ == "__main__":
    main()
