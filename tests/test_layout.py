"""The architecture holds: data flows one way, stages do not reach into each other, no cycles,
``import sam3dseg`` stays free of the analysis, and every benchmark still starts."""

import ast
import json
import os
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
    assert "sam3dseg.pipeline.train" not in _reachable(graph, "sam3dseg.pipeline.predict")
    assert "sam3dseg.pipeline.predict" not in _reachable(graph, "sam3dseg.pipeline.train")
    assert not any("sam3dseg.cli" in targets for m, targets in graph.items() if m != "sam3dseg.__main__")


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
