"""The architecture holds: data flows one way, stages do not reach into each other, no cycles,
``import sam3dseg`` stays free of the analysis, and every benchmark still starts."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "sam3dseg"
BENCH = Path(__file__).parents[1] / "bench"

# Which top-level parts of the package each part may import (errors is below everything).
ALLOWED = {
    "common": {"common", "errors"},
    "data": {"common", "data", "errors"},
    "model": {"common", "model", "errors"},
    "pipeline": {"common", "data", "model", "pipeline", "errors"},
    "analysis": {"common", "model", "analysis", "errors"},
    "demo": {"common", "data", "model", "pipeline", "errors"},
    "cli": {"__init__", "common", "data", "pipeline", "analysis", "demo", "errors"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """``{module: modules of sam3dseg it imports}``, function-level imports included."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("sam3dseg"):
                    # `from . import analysis` names a module, not an attribute
                    subs = [f"{target}.{a.name}" for a in node.names if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).exists()]
                    found.update(subs or [target])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("sam3dseg"))
        graph[name] = {m for m in found if m != name}
    return graph


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_each_part_imports_only_what_lies_below_it():
    wrong = []
    for module, targets in _imports().items():
        part = _part(module)
        if part in ALLOWED:
            wrong += [f"{module} -> {t}" for t in targets if _part(t) not in ALLOWED[part]]
    assert not wrong, wrong


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_training_and_prediction_never_import_each_other():
    graph = _imports()
    training = {m for m in graph if m.startswith("sam3dseg.pipeline.training")}
    inference = {m for m in graph if m.startswith("sam3dseg.pipeline.inference")}
    assert training and inference
    for start in inference:
        assert not training & _reachable(graph, start), start
    for start in training:
        assert not inference & _reachable(graph, start), start
    assert not any("sam3dseg.cli" in targets for m, targets in graph.items() if m != "sam3dseg.__main__")


# The stages of pipeline/, one subpackage each, and the entry point each defines (run_<stage>), in flow order;
# beside them only modules that several stages share.
STAGES = {
    "planning": "run_plan",
    "caching": "run_cache",
    "training": "run_train",
    "postprocessing": "run_postprocess",
    "inference": "run_predict",
    "evaluation": "run_evaluate",
}
SHARED = {"config", "model_file", "windows", "metrics"}


def _defined(package: Path) -> dict[str, str]:
    """``{top-level function name: module file}`` of the modules under ``package``."""
    found = {}
    for path in package.rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef):
                found[node.name] = path.name
    return found


def test_pipeline_shows_the_stages_each_with_one_entry_point():
    pipeline = PACKAGE / "pipeline"
    packages = {p.name for p in pipeline.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in pipeline.glob("*.py")} - {"__init__"}
    assert packages == set(STAGES) and modules == SHARED, (packages, modules)
    for stage, entry in STAGES.items():
        defined = _defined(pipeline / stage)
        assert entry in defined, f"pipeline/{stage} has no {entry}"
        entries = sorted(n for n in defined if n.startswith("run_"))
        assert entries == [entry], f"pipeline/{stage}: one entry point named run_*, found {entries}"
        assert entry in (pipeline / stage / "__init__.py").read_text(encoding="utf-8")  # its docstring names it
    assert not [n for n in _defined(pipeline) if n.startswith("run_") and n not in STAGES.values()]


def test_shared_modules_are_used_by_several_stages():
    graph = _imports()
    for module in SHARED:
        users = {m.split(".")[2] for m, targets in graph.items() if f"sam3dseg.pipeline.{module}" in targets and m.count(".") >= 3}
        assert len(users & set(STAGES)) >= 2, f"pipeline/{module}.py serves {sorted(users)}: move it beside its stage"


def test_the_model_computes_and_never_searches_disks():
    """model/ reads a checkpoint by the path it is given; finding a recorded file again is the pipeline's."""
    for path in (PACKAGE / "model").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert ".is_file()" not in text and ".exists()" not in text and "UserError(f\"{source}" not in text, path.name


def test_no_import_cycle():
    graph = _imports()
    # the package's __init__ re-exports the API: leave it out, as every module's parent
    graph = {m: {t for t in ts if t != "sam3dseg"} for m, ts in graph.items() if m != "sam3dseg"}
    cycles = [m for m in graph if m in _reachable(graph, m)]
    assert not cycles, cycles


@pytest.mark.slow
def test_import_sam3dseg_leaves_the_analysis_unloaded():
    code = (
        "import sys, sam3dseg\n"
        "assert not [m for m in sys.modules if m.startswith('sam3dseg.analysis')], 'analysis imported'\n"
        "assert sam3dseg.AttentionDecoder.__module__ == 'sam3dseg.analysis.attention'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


BENCHES = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))
# Runs each bench as ``python bench/X.py --help`` would, one after another in one fresh interpreter (one start
# of torch, not one a script: 18 of them took a minute on 2 cores); prints {script: [exit code, stdout, error]}.
HELP_ALL = """
import contextlib, io, json, runpy, sys, traceback
bench, scripts, done = sys.argv[1], sys.argv[2:], {}
sys.path.insert(0, bench)
for script in scripts:
    out, code, error = io.StringIO(), 0, ""
    sys.argv = [f"{bench}/{script}", "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit:
        code = exit.code or 0
    except BaseException:
        code, error = 1, traceback.format_exc()
    done[script] = [code, out.getvalue(), error]
print(json.dumps(done))
"""


@pytest.fixture(scope="module")
def bench_help() -> dict[str, list]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(
        [sys.executable, "-c", HELP_ALL, str(BENCH), *BENCHES], capture_output=True, encoding="utf-8", env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHES)
def test_benchmark_starts(script, bench_help):
    """``bench/X.py --help`` runs: a benchmark cannot rot unseen when the package moves."""
    code, out, error = bench_help[script]
    assert code == 0 and "usage:" in out, error[-2000:]


def _bench_options(path: Path) -> tuple[set[str], set[str], set[str]]:
    """A bench's parser, read from its source: the option strings it defines, their ``args`` attributes, and the
    ``args.NAME`` it reads."""
    options, dests, read = set(), set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            options |= {n for n in names if n.startswith("-")}
            dest = next((k.value.value for k in node.keywords if k.arg == "dest"), None)
            first = next((n for n in names if n.startswith("--")), names[0])
            dests.add(dest or first.lstrip("-").replace("-", "_"))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args":
            read.add(node.attr)
    return options, dests, read


@pytest.mark.parametrize("script", BENCHES)
def test_a_bench_reads_only_the_options_it_defines(script):
    """``args.views`` outlived the rename of ``--views`` to ``--augmented-copies`` and broke ``recipes.py --crops``."""
    _, dests, read = _bench_options(BENCH / script)
    assert read <= dests, sorted(read - dests)


def test_the_docs_name_only_options_the_benches_define():
    """Every ``bench/X.py --option`` the README, docs/ and the benches' own docstrings show is an option of X's parser."""
    pages = [BENCH.parent / "README.md", *sorted((BENCH.parent / "docs").glob("*.md")), *sorted(BENCH.glob("*.py"))]
    wrong = []
    for page in pages:
        for script, args in re.findall(r"bench/(\w+)\.py((?: +-[-\w]+(?: +[\w/.{}]+)*)+)", page.read_text(encoding="utf-8")):
            options = _bench_options(BENCH / f"{script}.py")[0]
            wrong += [f"{page.name}: bench/{script}.py {o}" for o in re.findall(r"(?<![\w-])--?[a-z][\w-]*", args) if o not in options]
    assert not wrong, wrong


def test_no_function_is_over_sixty_lines():
    """A function a reader cannot see whole on one screen is doing more than one job (the house's rule)."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
