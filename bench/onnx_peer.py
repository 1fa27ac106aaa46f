"""The peer a CPU user would pick instead: SAM's ViT-B exported to ONNX and run by ONNX Runtime, same weights, same run.

For each size (512² and 1024², one slice) the official ``segment_anything`` ViT-B encoder
(random weights, the tests' reference) is exported with ``torch.onnx.export`` (the
TorchScript exporter: no onnxscript needed) and loaded in an ONNX Runtime CPU session with
every graph optimisation and as many threads as torch uses; its weights are loaded into
``sam3dseg``'s fp32 encoder; the two are timed in turn (A B A B ...). Prints the medians, the
ratio ONNX Runtime / ours (> 1: ours is faster) and the largest difference of the outputs.
Exits 1 when ours is slower at any size, or the outputs differ by more than 1e-3.

Needs the bench extra (``pip install -e ".[bench]"``: onnx and onnxruntime, neither needs torch).

    python bench/onnx_peer.py [--sizes 512 1024] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from _shared import cpu_name, interleaved, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sam_reference import official_encoder, randomize_  # noqa: E402

from sam3dseg.common.files import write_json  # noqa: E402
from sam3dseg.model.registry import ENCODERS  # noqa: E402
from sam3dseg.model.vit import SAMImageEncoder  # noqa: E402


def bench_size(size: int, repeats: int, folder: Path) -> dict:
    import onnxruntime as ort

    official = randomize_(official_encoder("vit_b", size), seed=size).eval()
    ours = SAMImageEncoder(ENCODERS["vit_b"].spec, image_size=size, name="vit_b")
    ours.load_state_dict(official.state_dict())
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    path = folder / f"vit_b_{size}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on SAM's Python-side shape arithmetic
        torch.onnx.export(official, (x,), str(path), dynamo=False, input_names=["x"], output_names=["features"], opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    outputs = {}

    def run_ort():
        outputs["ort"] = session.run(None, feed)[0]

    def run_ours():
        with torch.no_grad():
            outputs["ours"] = ours(x).numpy()

    times = interleaved({"onnxruntime": run_ort, "ours": run_ours}, repeats)
    med_ort, med_ours = statistics.median(times["onnxruntime"]), statistics.median(times["ours"])
    return {"image_size": size, "onnxruntime_s": times["onnxruntime"], "ours_s": times["ours"], "onnxruntime_median_s": med_ort,
            "ours_median_s": med_ours, "speedup": med_ort / med_ours, "max_abs_diff": float(abs(outputs["ort"] - outputs["ours"]).max()),
            "onnxruntime": ort.__version__}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        sys.exit('onnxruntime is not installed: pip install -e ".[bench]"')

    print(f"{cpu_name()}, {torch.get_num_threads()} threads, fp32, torch {torch.__version__}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            r = bench_size(size, args.repeats, Path(folder))
            results.append(r)
            print(f"ViT-B {size}²: ONNX Runtime {r['onnxruntime']} {r['onnxruntime_median_s']:.2f} s, ours {r['ours_median_s']:.2f} s "
                  f"(median of {args.repeats}): ours x{r['speedup']:.2f} faster, max |diff| {r['max_abs_diff']:.1e}", flush=True)  # fmt: skip
    if args.json:
        write_json(args.json, {"cpu": cpu_name(), "threads": torch.get_num_threads(), "results": results})
    verdict([f"ours slower than ONNX Runtime at {r['image_size']}²" for r in results if r["speedup"] < 1.0]
            + [f"outputs differ by {r['max_abs_diff']:.1e} at {r['image_size']}²" for r in results if r["max_abs_diff"] > 1e-3],
            "ours is at least as fast as ONNX Runtime at every size, same outputs to 1e-3")


if __name__ == "__main__":
    main()
