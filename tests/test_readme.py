"""The README's five-command walk-through, run as written (with a generated dataset, no checkpoint
and small sizes), and its expected output checked line by line, so the README cannot drift."""

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from helpers import load_script

from sam3dseg.cli import main
from sam3dseg.data.synthetic import write_dataset

README = Path(__file__).parents[1] / "README.md"
DOCS = Path(__file__).parents[1] / "docs"
# what the test changes so the walk-through runs in seconds: no checkpoint (random ViT-B), a small
# encoder input, a short training
SMALLER = {
    "--checkpoint sam_vit_b_01ec64.pth": "",
    "--image-size 1024": "--image-size 32",
    "--out runs/liver": "--out runs/liver train.steps_per_epoch=1 train.crop_depth=4 decoder.channels=[8,8,8,8]",
}


def _block(text: str, marker: str) -> list[str]:
    """The lines of the fenced block that follows ``marker``."""
    after = text[text.index(marker):]
    body = after[after.index("```"):].split("\n", 1)[1]
    return [line for line in body[: body.index("```")].splitlines() if line.strip()]


@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    commands = _block(text, "<!-- walkthrough")
    expected = _block(text, "<!-- expected output -->")
    assert len(commands) == 5 and all(c.startswith("sam3dseg ") for c in commands)

    root = write_dataset(tmp_path / "Dataset001_Liver", 8, "nnunet", seed=5, depth=(6, 9), size=(24, 32), modality="CT")
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    meta["labels"] = {"background": 0, "liver": 1, "tumour": 2}  # the README's classes
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    for case in ("case_006", "case_007"):  # held out, as imagesTs / labelsTs
        for kind, name in (("images", f"{case}_0000.nii.gz"), ("labels", f"{case}.nii.gz")):
            (root / f"{kind}Ts").mkdir(exist_ok=True)
            shutil.move(root / f"{kind}Tr" / name, root / f"{kind}Ts" / name)
    meta["numTraining"] = 6  # the held-out cases no longer count (`check` compares it with labelsTr)
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    output = []
    for command in commands:
        for written, small in SMALLER.items():
            command = command.replace(written, small)
        assert main(shlex.split(command)[1:]) == 0, command
        output += capsys.readouterr().out.splitlines()
    # each expected line matches an output line from its start, in the README's order: "liver …" must be a row of
    # evaluate's table after its header, not the word in an epoch line
    at = 0
    for line in expected:
        pieces = [re.escape(p.strip()) for p in line.split("…") if p.strip()]
        pattern = re.compile(r"\s*" + ".*".join(pieces))
        found = next((i for i in range(at, len(output)) if pattern.match(output[i])), None)
        assert found is not None, f"README line not in the output after line {at}: {line!r}\n" + "\n".join(output)
        at = found + 1


ROOT = Path(__file__).parents[1]
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
           "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15}  # fmt: skip


def _timings():
    module = load_script(ROOT / "bench" / "timings.py")
    return module, json.loads(module.RESULTS.read_text(encoding="utf-8"))


def test_the_readme_states_the_times_the_bench_measured():
    """docs/performance.md's "Measured times" table is bench/timings.py's table of bench/results/timings.json,
    verbatim, and every time the README and the commands' help promise is that measurement: the demo's
    minutes (rounded), `make demo` on a fresh clone, `analyze --quick` under a minute."""
    timings, results = _timings()
    text = README.read_text(encoding="utf-8")
    page = (DOCS / "performance.md").read_text(encoding="utf-8")
    assert timings.table(results) in page, "docs/performance.md's table differs from bench/results/timings.json: run bench/timings.py and paste its table"
    demo = results["fresh_clone"]
    said = re.search(r"`sam3dseg demo` takes about (\w+) minutes .* `make demo` on a fresh clone about (\w+)", text, re.S)
    assert said, "the README's quick start states the demo's time"
    assert (NUMBERS[said.group(1)], NUMBERS[said.group(2)]) == (round(demo["demo_seconds"] / 60), round(demo["make_demo_seconds"] / 60))
    assert f"on a {demo['machine']['cores']}-core CPU" in " ".join(text.split())  # the machine the file records
    quick = results["analyze"]["analyze_quick_seconds"]
    from sam3dseg.cli import EPILOG_ANALYZE

    method = (DOCS / "method.md").read_text(encoding="utf-8")  # its "claims, measured" section times analyze
    for where in (method, EPILOG_ANALYZE):
        assert ("under a minute" in where or "under one" in where) == (quick < 60), (quick, where[:80])


def test_the_speed_section_states_what_cpu_speed_measured():
    """docs/performance.md's CPU-speed prose quotes bench/results/cpu_speed.json: each share of the GEMM rate, and the
    range of bf16's shares and speed-ups (they once said 97 % / 93 % where the file said 69 % / 70 %)."""
    rows = json.loads((ROOT / "bench" / "results" / "cpu_speed.json").read_text(encoding="utf-8"))["rows"]
    share = {(r["case"], r["precision"]): round(100 * r["share"]) for r in rows if "share" in r}
    text = (DOCS / "performance.md").read_text(encoding="utf-8")
    speed = text[text.index("## Speed"):]
    prose = " ".join(speed.split())
    stated = re.search(r"runs at (\d+) % of the fp32 GEMM rate measured in the same run at 512² and (\d+) % at 1024²", prose)
    assert stated and (int(stated[1]), int(stated[2])) == (share["vit_b 512²", "fp32"], share["vit_b 1024²", "fp32"])
    assert f"TinyViT stays at {share['lite_medsam 256²', 'fp32']} %" in prose
    bf16 = [r for r in rows if r["precision"] == "bf16" and r["case"] != "decoder"]
    low, high = min(round(100 * r["share"]) for r in bf16), max(round(100 * r["share"]) for r in bf16)
    gains = [r["speedup_vs_fp32"] for r in bf16]
    assert f"bf16 reaches {low}–{high} % of that CPU's bf16 GEMM rate" in prose
    vit_1024 = next(r for r in rows if (r["case"], r["precision"]) == ("vit_b 1024²", "fp32"))["s_per_slice"]
    on_avx2 = {(r["image_size"], r["batch"]): r for r in json.loads((ROOT / "bench" / "results" / "encoder.json").read_text(encoding="utf-8"))["results"]}
    limits = " ".join(README.read_text(encoding="utf-8").split())
    assert (f"encodes ViT-B in {vit_1024:.1f} s a slice with AVX512-BF16 (`bench/results/cpu_speed.json`) and "
            f"{on_avx2[1024, 1]['ours_median_s']:.1f} s with AVX2 only (`bench/results/encoder.json`)") in limits
    assert "`bench/results/cpu_speed.json`, an AMD EPYC with AVX512-BF16" in prose  # the file's machine ("native bf16: True")
    assert "native bf16: True" in json.loads((ROOT / "bench" / "results" / "cpu_speed.json").read_text(encoding="utf-8"))["machine"]
    assert f"×{min(gains):.2f}–{max(gains):.2f} over fp32" in prose


def test_the_encoder_table_is_the_registry():
    """Every row of the README's encoder table states the registry's stride, default size and normalisation, and
    every registered encoder has a row."""
    from sam3dseg.model.registry import ENCODERS

    text = README.read_text(encoding="utf-8")
    table = text[text.index("| name | architecture | stride |"):].split("\n\n")[0].splitlines()[2:]
    words = {"SAM's mean/std": "sam", "min-max per slice": "minmax"}
    named = set()
    for row in table:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`(\w+)`", cells[0])
        for name in names:
            entry = ENCODERS[name]
            assert (int(cells[2]), int(cells[3]), words[cells[4]]) == (entry.stride, entry.default_image_size, entry.normalisation), name
        named.update(names)
    assert named == set(ENCODERS)
    # the defaults the cache's --image-size help states are the registry's too
    import dataclasses

    from sam3dseg.pipeline.config import CacheConfig

    help_text = next(f for f in dataclasses.fields(CacheConfig) if f.name == "image_size").metadata["rule"].help
    stated = re.findall(r"(\d+) for ([\w', ]+?)(?:\)|,| and \d)", help_text)
    assert len(stated) >= 2, help_text
    for size, names in stated:
        for name in re.findall(r"\b(vit_b|vit_l|vit_h|medsam_vit_b|lite_medsam|mobile_sam)\b", names):
            assert ENCODERS[name].default_image_size == int(size), name


def test_the_readme_states_the_torch_floor_of_pyproject():
    floor = re.search(r'"torch>=([\d.]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))[1]
    assert f"sam3dseg asks for `torch>={floor}`" in " ".join(README.read_text(encoding="utf-8").split())


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "bench" / "results").glob("peer_nnunet_*.json")))
def test_the_headline_table_is_the_peer_bench(name):
    """docs/results.md's "sam3dseg beside nnU-Net" tables are bench/peer_nnunet.py's tables of its result files, verbatim,
    and the prose states the budget and the machine each file records."""
    peer = load_script(ROOT / "bench" / "peer_nnunet.py")
    result = json.loads((ROOT / "bench" / "results" / name).read_text(encoding="utf-8"))
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    assert peer.table(result) in text, "docs/results.md's table differs from the result: run bench/peer_nnunet.py --table FILE and paste it"
    section = text[text.index("## sam3dseg beside nnU-Net"):]
    assert f"{result['budget_s'] / 60:.0f} minutes" in section and result["machine"]["cpu"]["cpu"] in section
