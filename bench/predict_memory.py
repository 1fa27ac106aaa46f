"""Peak memory of prediction against the number of slices: streamed labels vs whole probabilities.

``sam3dseg predict`` streams: only the depth windows in flight are held at model
resolution, and blended slices go straight to the file's grid as labels. The
``--probabilities`` path instead holds the whole ``(K, D', S, S)`` probability volume.
Each configuration runs in its own process and reports its peak resident memory
(``ru_maxrss``), for a short and a long volume; the growth from short to long is
what "bounded" is about (the input volume and the features grow with D in both).

A small SAM-structured encoder keeps the run short; the decoder and the windows are
the real ones.

    python bench/predict_memory.py [--depths 100 600] [--size 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from sam3dseg.common.files import write_json
from sam3dseg.data.preprocess import PreprocessConfig
from sam3dseg.data.volumes import Geometry
from sam3dseg.model.registry import EncoderInfo
from sam3dseg.model.vit import EncoderSpec, SAMImageEncoder
from sam3dseg.pipeline.config import PredictConfig, load_run_config
from sam3dseg.pipeline.inference.predict import predict_probabilities
from sam3dseg.pipeline.inference.predictor import Predictor
from sam3dseg.pipeline.model_file import ModelFile, build_decoder


def _child(mode: str, depth: int, size: int) -> dict:
    torch.manual_seed(0)
    spec = EncoderSpec(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, out_chans=32)
    encoder = SAMImageEncoder(spec, image_size=size, name="small")
    run = load_run_config(None, ["train.crop_depth=16"])
    decoder = build_decoder(run.decoder, 3, 32, 1)
    model = ModelFile(run, ["background", "a", "b"], ["CT"], PreprocessConfig(), EncoderInfo.of(encoder, None), 32, decoder.state_dict())
    predictor = Predictor(model, encoder, PredictConfig(window=16, overlap=0.5))
    volume = np.random.default_rng(0).normal(0, 300, size=(depth, size, size)).astype(np.float32)
    geometry = Geometry((1.0, 1.0, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    if mode == "streamed":
        labels, _ = predictor.predict_array(volume, geometry)
    else:
        labels = predict_probabilities(predictor, volume, geometry).argmax(0)
    assert labels.shape == volume.shape
    return {"mode": mode, "depth": depth, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[100, 600])
    parser.add_argument("--size", type=int, default=128, help="slice side = encoder input size")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.size)))
        return
    results = []
    for depth in args.depths:
        for mode in ("streamed", "probabilities"):
            cmd = [sys.executable, __file__, "--size", str(args.size), "--child", mode, str(depth)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{r['mode']:>13}, {depth:4d} slices of {args.size}²: peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    for mode in ("streamed", "probabilities"):
        peaks = [r["peak_rss_mib"] for r in results if r["mode"] == mode]
        print(f"{mode:>13}: +{peaks[-1] - peaks[0]:.0f} MiB from {args.depths[0]} to {args.depths[-1]} slices")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
