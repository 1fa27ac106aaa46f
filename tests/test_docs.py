"""The README and docs/ stay true to the code and to each other: the command reference is what the parser
prints, every link between the pages lands on a file and a heading that exist, the README keeps a newcomer's
order and length, and its results table is the one made from bench/results."""

import argparse
import json
import platform
import re
from pathlib import Path

import pytest
from helpers import load_script

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _options(text: str) -> dict[str, set[str]]:
    """Each command's section of cli.md (or of the reference text) -> the long options its help lists."""
    sections = re.split(r"^## (sam3dseg(?: \w+)?)$", text, flags=re.M)[1:]
    return {title: set(re.findall(r"(?<![\w-])--[a-z][\w-]*", body)) for title, body in zip(sections[::2], sections[1::2])}


def test_cli_reference_is_what_the_parser_prints():
    make = load_script(ROOT / "docs" / "make_cli.py")
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    made = make.reference()
    stated = re.search(r"argparse of Python (\d+\.\d+)", page)
    assert stated, "docs/cli.md names the Python whose argparse made it"
    if stated[1] == ".".join(platform.python_version_tuple()[:2]):
        assert page == made, "docs/cli.md differs from the parser: run python docs/make_cli.py"
    else:  # another argparse lays out the same help differently: compare what each command offers
        assert _options(page) == _options(made), "docs/cli.md lists other options than the parser: run python docs/make_cli.py"


def test_cli_reference_covers_every_command():
    from sam3dseg.cli import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert set(_options(page)) == {"sam3dseg"} | {f"sam3dseg {name}" for name in commands}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Commands"):].split("\n\n")[1]
    assert set(re.findall(r"^\| `sam3dseg (\w+)`", table, flags=re.M)) == set(commands), "the README's command table names every command once"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # a '#' in a code block is no heading
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    """Each relative link names a file of the repository, and its #anchor a heading of that file."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    if page.name == "README.md":
        assert len(links) >= 10, links  # the README points into docs/: the pattern still finds its links
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: {link} names no file"
        if anchor:
            assert anchor in _anchors(path), f"{page.name}: {link}: {path.name} has no heading #{anchor}"


def test_the_readme_is_a_newcomers_page():
    """At most about 250 lines, and the path install → demo → own data (predict, then evaluate) in that order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    order = ["## Install", "## Quick start", "## Your own data", "sam3dseg predict ", "sam3dseg evaluate ", "## Commands", "## Results"]
    places = [text.index(mark) for mark in order]
    assert places == sorted(places), dict(zip(order, places))


def test_the_results_table_is_made_from_bench_results():
    headline = load_script(ROOT / "bench" / "headline.py")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert headline.table() in text, "README's results table differs from bench/results: run python bench/headline.py and paste it"
    # every result file of the peer bench has its row: a new budget is not left out of the headline
    for path in (ROOT / "bench" / "results").glob("peer_nnunet_*s.json"):
        assert f"`bench/results/{path.name}`" in text


def test_the_train_step_ratios_are_the_benchs():
    """docs state the grid-stride step ratios bench/train_speed.py recorded (the ×1.28 once stated had no file)."""
    result = json.loads((ROOT / "bench" / "results" / "train_speed.json").read_text(encoding="utf-8"))
    step = {mode: s["median_step_s"] for mode, s in result["summary"].items()}
    ratio = {mode: f"×{s / step['vit_b']:.2f}" for mode, s in step.items()}
    pages = {name: _prose(name) for name in ("performance.md", "method.md", "training.md")}
    assert f"the default, 8, makes the step {ratio['lite_medsam@8']} ViT-B's ({step['lite_medsam@8']:.2f} s against {step['vit_b']:.2f} s)" in pages["performance.md"]
    assert f"the unpooled S/4 grid makes a training step cost {ratio['lite_medsam@4']} ViT-B's" in pages["performance.md"]
    assert f"(the write-up's decoder) {ratio['lite_medsam@16']}" in pages["performance.md"]
    assert f"a step {ratio['lite_medsam@8']} ViT-B's in `bench/train_speed.py`" in pages["method.md"]
    assert f"{ratio['lite_medsam@8']} ViT-B's, where the unpooled S/4 grid costs {ratio['lite_medsam@4']}" in pages["training.md"]
    assert result["ratio_default_to_vit_b"] <= result["goal"]


def test_every_figure_names_a_bench_that_exists_and_its_file():
    """docs/performance.md's table: each command's script exists, and each result file it names is there."""
    text = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    table = text[text.index("| figure | command | result file |"):].split("\n\n")[0].splitlines()[2:]
    assert len(table) >= 10
    for row in table:
        _, command, result = [c.strip() for c in row.strip("|").split("|")]
        script = re.search(r"bench/(\w+)\.py", command)[1]
        assert (ROOT / "bench" / f"{script}.py").is_file(), row
        if result != "none yet":
            files = sorted((ROOT / "bench" / "results").glob(re.search(r"bench/results/([^`]+)", result)[1].replace("{set}", "*").replace("{budget}", "*")))
            assert files, row


# Tables a bench renders from its result file (its ``table(result)``), and the page that quotes each verbatim.
TABLES = [
    ("cpu_speed", "table", "cpu_speed.json", "performance.md"),
    ("predict_ct", "table", "predict_ct.json", "performance.md"),
    ("precision_dice", "table", "precision_dice.json", "performance.md"),
    ("crops", "table", "crops.json", "performance.md"),
    ("tinyvit", "per_slice_table", "tinyvit.json", "performance.md"),
    ("demo", "table", "demo.json", "results.md"),
]


def _result(name: str) -> dict:
    return json.loads((ROOT / "bench" / "results" / name).read_text(encoding="utf-8"))


def _prose(page: str) -> str:
    """A docs page with its line breaks and runs of spaces made single spaces, so a figure can be searched for."""
    return " ".join((ROOT / "docs" / page).read_text(encoding="utf-8").split())


@pytest.mark.parametrize("bench, function, result, page", TABLES)
def test_each_table_is_its_benchs(bench, function, result, page):
    """A figure in a table is its result file's: the page holds the bench's table of that file verbatim (the CT's
    read + preprocess + write once said 0.7 s where the file's stages sum to 0.6)."""
    made = getattr(load_script(ROOT / "bench" / f"{bench}.py"), function)(_result(result))
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    assert made in text, f"docs/{page} differs from bench/results/{result}: run bench/{bench}.py's table and paste it"
    assert f"`bench/results/{result}`" in text  # the page names its source


def test_the_onnx_and_gpu_prose_quote_their_files():
    """The ONNX Runtime comparison and the GPU figures in docs/performance.md are onnx_peer.json's and gpu.json's."""
    prose = _prose("performance.md")
    onnx = {r["image_size"]: r for r in _result("onnx_peer.json")["results"]}
    for size in (512, 1024):
        r = onnx[size]
        assert f"×{r['speedup']:.2f}" in prose and f"{r['ours_median_s']:.2f} s against {r['onnxruntime_median_s']:.2f} s" in prose, size
    assert f"ONNX Runtime {onnx[512]['onnxruntime'].rsplit('.', 1)[0]}" in prose
    gpu = _result("gpu.json")
    s = {(e["encoder"], e["image_size"], e["precision"]): e.get("s_per_slice") for e in gpu["encoders"]}
    assert f"On an {gpu['gpu']}" in prose
    assert (f"ViT-B at 1024² takes {s['vit_b', 1024, 'fp32']:.3f} s a slice in fp32 (TF32 off), {s['vit_b', 1024, 'bf16']:.3f} s in "
            f"bf16 (×{s['vit_b', 1024, 'fp32'] / s['vit_b', 1024, 'bf16']:.1f}) and {s['vit_b', 1024, 'int8']:.3f} s in int8") in prose
    at512 = " / ".join(f"{1000 * s['vit_b', 512, p]:.1f}" for p in ("fp32", "bf16", "int8"))
    assert f"at 512², {at512} ms" in prose
    assert f"LiteMedSAM at 256², {1000 * s['lite_medsam', 256, 'fp32']:.1f} ms fp32 and {1000 * s['lite_medsam', 256, 'bf16']:.1f} ms bf16" in prose
    run, steps = gpu["pipeline"], {d["amp"]: d["s_per_step"] for d in gpu["decoder"]}
    assert (f"cache {run['cache_s']:.0f} s, 10 epochs of training {run['train_s']:.0f} s, predict {run['predict_s']:.0f} s, "
            f"Dice {run['evaluate_mean_dice']:.3f}") in prose
    assert f"took {steps[False]:.2f} s in fp32 and {steps[True]:.2f} s under bf16 autocast" in prose


def test_the_prose_quotes_the_tinyvit_crops_and_streaming_files():
    """Figures in sentences are their files' too: TinyViT against its reference, a step at 1024² with and without
    crops, the memory of streaming 10 and 100 cases."""
    performance = _prose("performance.md")
    usage = _prose("usage.md")
    r = _result("tinyvit.json")["reference"]
    assert f"runs ×{r['speedup']:.2f} faster than the reference" in performance
    assert f"256²: {r['ours_median_s']:.2f} s against {r['reference_median_s']:.2f} s" in performance
    crops = _result("crops.json")
    by = {(x["size"], x["crop_tokens"]): x for x in crops["rows"]}
    crop, whole = by[1024, 11], by[1024, None]
    assert (f"at 1024² one step on {crops['depth']} slices takes {crop['seconds']:.2f} s and {crop['peak_mib']:.0f} MiB with "
            f"`crop_tokens=11` against {whole['seconds']:.1f} s and {whole['peak_mib'] / 1024:.1f} GiB on whole planes") in usage
    streaming = _result("streaming.json")
    rows = {x["cases"]: x for x in streaming["rows"]}
    assert (f"+{rows[10]['anon_mib']:.0f} MiB with 10 cached cases, +{rows[100]['anon_mib']:.0f} MiB with 100, whose files take "
            f"{100 * streaming['case_mib']:.0f} MiB") in usage


def test_the_flip_cosines_are_the_benchs():
    """The cosine range of flipped features against features of flipped slices, in the method and the usage pages."""
    means = [r["mean"] for r in _result("flip_symmetry.json")["rows"]]
    stated = f"{min(means):.2f}–{max(means):.2f} per token"
    for page in ("method.md", "usage.md"):
        assert stated in _prose(page), page


def test_the_encoder_comparison_is_the_benchs():
    """Our ViT-B against segment_anything's: each speed-up, time and the largest difference, as encoder.json has them."""
    prose = _prose("performance.md")
    result = _result("encoder.json")
    r = {(x["image_size"], x["batch"]): x for x in result["results"]}
    one, eight = r[1024, 1], r[256, 8]
    assert (f"ours ×{one['speedup']:.2f} at 1024² (one slice: {one['ours_median_s']:.1f} s against {one['official_median_s']:.1f} s) "
            f"and ×{eight['speedup']:.2f} at 256² (eight slices: {eight['ours_median_s']:.1f} s against {eight['official_median_s']:.1f} s)") in prose
    assert f"the same numbers to {max(x['max_abs_diff'] for x in result['results']):.1e}" in prose


def test_the_cached_step_against_the_encoder_on_the_fly_is_the_benchs():
    prose = _prose("performance.md")
    result = _result("train_step.json")
    m = result["summary"]
    assert (f"{m['cached']['median_step_s']:.1f} s per cached step against {m['on-the-fly']['median_step_s']:.1f} s with our encoder on "
            f"the fly ({m['official']['median_step_s']:.1f} s with the official one), ×{result['speedup']:.1f}") in prose
    assert f"the encoder adds {m['on-the-fly']['median_step_s'] - m['cached']['median_step_s']:.0f} s a step" in prose


def test_the_demo_prose_is_the_benchs():
    """What docs/results.md says of the demo's two runs: the structures the pretrained features help most, the steps."""
    prose = _prose("results.md")
    result = _result("demo.json")
    ours, control = result["runs"]["lite_medsam"]["per_class"], result["runs"]["vit_b"]["per_class"]
    assert (f"({ours['hippocampus']:.2f} and {ours['amygdala']:.2f} against {control['hippocampus']:.2f} and "
            f"{control['amygdala']:.2f})") in prose
    assert f"same {result['epochs']} × {result['steps_per_epoch']} steps of the default recipe at {result['image_size']}²" in prose


def test_the_decoder_flops_are_level_flops():
    """The decoder FLOPs the pages state are what the code counts: `level_flops` of the default decoder (image path,
    K = 13) for LiteMedSAM's grid unpooled and pooled, ViT-B's at 256² and 1024², and the default crops; and
    ``torch.utils.flop_counter`` on the seed's decoder at the train_step bench's crop (meta tensors: no arithmetic)."""
    import dataclasses

    import torch

    from sam3dseg.model.decoder import SAM3DDecoder
    from sam3dseg.pipeline.config import DecoderConfig
    from sam3dseg.pipeline.model_file import build_decoder

    def gflop(grid_stride, stride: int, depth: int, tokens: int) -> float:
        decoder = build_decoder(dataclasses.replace(DecoderConfig(), grid_stride=grid_stride), 13, 256, 1, stride)
        return sum(decoder.level_flops(depth, tokens, tokens)) / 1e9

    performance, method = _prose("performance.md"), _prose("method.md")
    assert (f"a whole plane of its unpooled S/4 grid takes {gflop(4, 4, 1, 64):.1f} GFLOP per slice (its first block, at the 64² grid, "
            f"is most of it), {gflop('auto', 4, 1, 64):.1f} with the default `decoder.grid_stride` 8, against "
            f"{gflop('auto', 16, 1, 16):.1f} at ViT-B 256² and {gflop('auto', 16, 1, 64):.1f} at 1024²") in performance
    crop, vit = gflop(4, 4, 16, 32), gflop("auto", 16, 16, 8)  # the default half-grid crops of 16 slices
    assert f"64 × 64 tokens: {crop:.1f} GFLOP forward per crop against {vit:.1f}" in performance
    assert f"{crop:.0f} GFLOP forward for a default crop (16 slices × 32 × 32 tokens, K = 13) against {vit:.1f}" in method
    assert f"8 for a stride-4 encoder ({gflop('auto', 4, 16, 32):.1f} GFLOP;" in method

    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        decoder = SAM3DDecoder(num_classes=14)  # bench/train_step.py's decoder, crop 64 × 176² at stride 16
        sum(level.sum() for level in decoder(torch.zeros(1, 256, 64, 11, 11))).backward()
    step = _result("train_step.json")["summary"]
    cached, added = step["cached"]["median_step_s"], step["on-the-fly"]["median_step_s"] - step["cached"]["median_step_s"]
    total = counter.get_total_flops() / 1e9
    assert (f"so ×10 needs a cached step of at most {added / 9:.1f} s, and the seed's decoder spends about the same FLOPs at "
            f"every level, {total:.0f} GFLOP forward + backward for this crop with 14 classes (`torch.utils.flop_counter`), "
            f"which its 3-D convolutions run at {total / cached:.0f} GFLOP/s here; ×10 would take them to at least "
            f"{total / (added / 9):.0f} GFLOP/s") in performance
    gemm = next(r["gemm_gflops"] for r in _result("cpu_speed.json")["rows"] if r["precision"] == "fp32")
    assert f"matrix-product rate measured on a 2-core AMD EPYC ({gemm:.0f} GFLOP/s, `bench/results/cpu_speed.json`)" in performance


def test_the_stride_decoder_figures_agree_across_pages():
    """The three decoder designs of docs/performance.md's table (Dice, GFLOP, s a step) are the ones method.md and
    the prose beside the table quote: one measurement, stated alike everywhere."""
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    rows = re.findall(r"^ *\| (keep-first|keep-last|pool-16) [^|]*\| ([\d.]+ ± [\d.]+) \| ([\d.]+) \| ([\d.]+)", page, flags=re.M)
    design = {name: (dice, float(gflop), float(step)) for name, dice, gflop, step in rows}
    assert set(design) == {"keep-first", "keep-last", "pool-16"}
    (first, first_gflop, first_step), (last, last_gflop, last_step), (pool, _, _) = (design[k] for k in ("keep-first", "keep-last", "pool-16"))
    mean = {k: float(v[0].split(" ±")[0]) for k, v in design.items()}
    performance, method = _prose("performance.md"), _prose("method.md")
    assert f"(−{mean['keep-first'] - mean['pool-16']:.2f} at 64², equal steps)" in performance
    assert (f"Upsampling first is {mean['keep-last'] - mean['keep-first']:.3f} better at equal steps, within two seed deviations, "
            f"for {last_gflop / first_gflop:.1f}× the FLOPs and {last_step / first_step:.1f}× the time per step") in performance
    assert f"scored {last} against the default's {first} at equal steps for {last_gflop / first_gflop:.1f}× the FLOPs" in method
    assert f"the features average-pooled to S/16 before the write-up's decoder scored {pool}" in method
    assert f"(`bench/stride_decoder.py`: {mean['keep-first']:.3f} against {mean['pool-16']:.3f} for pooling to S/16 at 64²)" in method


def test_the_brain_hour_prose_is_the_peer_files():
    """What results.md says of the brain set at an hour: each margin over nnU-Net, the gains over 30 minutes, the steps
    and iterations, as the two peer files have them."""
    prose = _prose("results.md")
    hour, half = _result("peer_nnunet_brain_3600s.json"), _result("peer_nnunet_brain_1800s.json")
    ours, theirs = hour["sam3dseg"]["scores"]["per_class"], hour["nnunet"]["scores"]["per_class"]
    before = half["sam3dseg"]["scores"]["per_class"]
    assert all(ours[k]["dice"] > theirs[k]["dice"] for k in ours), "sam3dseg leads on every structure"
    assert [k for k in theirs if theirs[k]["dice"] > 0] == ["ventricles", "brainstem"]
    margin = {k: ours[k]["dice"] - theirs[k]["dice"] for k in ("ventricles", "brainstem")}
    assert f"by {margin['ventricles']:.2f} on the ventricles and {margin['brainstem']:.2f} on the brainstem" in prose
    assert f"{hour['sam3dseg']['steps']} against {half['sam3dseg']['steps']} at 30 minutes" in prose
    for name in ("accumbens", "pallidum", "hippocampus"):
        assert f"{name} {before[name]['dice']:.3f} → {ours[name]['dice']:.3f}" in prose, name
    worst = (max(float(s["hd95"]) for s in before.values()), max(float(s["hd95"]) for s in ours.values()))
    assert f"its largest HD95 went from {worst[0]:.1f} mm to {worst[1]:.1f}" in prose
    nnunet = hour["nnunet"]
    assert (f"nnU-Net had {nnunet['epochs_done']} epochs of 25 iterations ({nnunet['iterations_done']} iterations of a 56 × 56 × 48 "
            f"patch, batch 2, about {nnunet['train_s'] / nnunet['iterations_done']:.0f} s an iteration") in prose
    assert f"with HD95s of {float(theirs['ventricles']['hd95']):.1f} and {float(theirs['brainstem']['hd95']):.1f} mm" in prose


def test_the_readme_says_what_each_budget_found():
    """The README's sentence under the results table counts what the peer files found at 30 minutes and at an hour."""
    names = ("peer_nnunet_ct_1800s.json", "peer_nnunet_brain_1800s.json", "peer_nnunet_ct_3600s.json", "peer_nnunet_brain_3600s.json")
    found = {}  # file -> (structures found, structures)
    for name in names:
        scores = _result(name)["sam3dseg"]["scores"]["per_class"].values()
        found[name] = (sum(s["dice"] > 0 for s in scores), len(scores))
    assert found["peer_nnunet_ct_1800s.json"] == (11, 12)
    assert found["peer_nnunet_brain_1800s.json"] == (9, 9)
    assert all(found[n][0] == found[n][1] for n in ("peer_nnunet_ct_3600s.json", "peer_nnunet_brain_3600s.json"))
    nnunet = _result("peer_nnunet_brain_3600s.json")["nnunet"]["scores"]["per_class"]
    assert sum(s["dice"] > 0 for s in nnunet.values()) == 2
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert ("on the brain, after an hour, one that finds two of nine structures); sam3dseg, which trains only a decoder on cached "
            "features, finds 11 of the 12 organs and all nine structures in 30 minutes, and every one in an hour.") in readme
