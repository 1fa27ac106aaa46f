"""`evaluate --html`: one offline page with the scores and a NiiVue slice viewer, checked in a real headless Chromium."""

import json
import re
import shutil
import subprocess

import pytest

from sam3dseg.cli import main
from sam3dseg.data.volumes import read_volume, write_volume
from sam3dseg.pipeline.evaluation.html_report import REPORT, niivue_module_text


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium here (apt-get install chromium; .ci/run installs it)")


def headless(page, *flags: str, budget_ms: int = 30000) -> subprocess.CompletedProcess:
    """Chromium, headless, on ``page`` with WebGL by SwiftShader (no GPU here), its console on stderr; waits up
    to ``budget_ms`` of the page's virtual time for its scripts."""
    command = [_browser(), "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
               "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}", *flags, page.as_uri()]  # fmt: skip
    return subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=180)


@pytest.fixture(scope="module")
def evaluated(generated_dataset, tmp_path_factory):
    """Three generated cases scored against themselves with one class eroded, --html with their images."""
    from scipy import ndimage

    root = tmp_path_factory.mktemp("html")
    (root / "ref").mkdir()
    for case in ("case_000", "case_001", "case_002"):
        label, geometry = read_volume(generated_dataset / "labelsTr" / f"{case}.nii.gz")
        pred = label.copy()
        pred[(label == 2) & ~ndimage.binary_erosion(label == 2)] = 0  # the reference's class 2 less its border
        write_volume(pred, geometry, root / "pred" / f"{case}.nii.gz")
        shutil.copy(generated_dataset / "labelsTr" / f"{case}.nii.gz", root / "ref")
    args = ["evaluate", "--pred", str(root / "pred"), "--ref", str(root / "ref"), "--labels", str(generated_dataset / "dataset.json"),
            "--images", str(generated_dataset / "imagesTr"), "--html", "--quiet"]  # fmt: skip
    assert main(args) == 0
    return root


def test_the_page_holds_the_scores_and_the_viewer_offline(evaluated):
    page = (evaluated / "pred" / REPORT).read_text(encoding="utf-8")
    summary = json.loads((evaluated / "pred" / "sam3dseg_summary.json").read_text(encoding="utf-8"))
    for name, entry in summary["per_class"].items():  # the table states what sam3dseg_summary.json says
        assert re.search(rf"{name}</td><td>{entry['dice']:.3f}</td>", page), name
    assert f"<td>{summary['mean_dice']:.3f}</td>" in page
    assert niivue_module_text() in page and "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # nothing fetched
    assert page.count("<option>") == 3


def test_the_page_draws_in_headless_chromium(evaluated, tmp_path):
    """The page loads with no console error, both canvases draw non-black pixels, the tables show the scores."""
    page = evaluated / "pred" / REPORT
    run = headless(page, "--dump-dom")
    dom = run.stdout
    assert 'data-viewer="ready"' in dom, (re.findall(r'<pre id="errors">(.*?)</pre>', dom, re.S), run.stderr[-3000:])
    assert 'data-errors="0"' in dom
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line and ("rror" in line or "Uncaught" in line)]
    assert console == []
    drawn = {m[0]: int(m[1]) for m in re.findall(r'<canvas id="(pred|ref)"[^>]*data-drawn="(\d+)"', dom)}
    assert drawn.keys() == {"pred", "ref"} and min(drawn.values()) > 1000, drawn
    shot = tmp_path / "report.png"
    headless(page, f"--screenshot={shot}", "--window-size=1000,1400")
    assert shot.is_file() and shot.stat().st_size > 10_000
