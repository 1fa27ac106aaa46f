"""The one atomic writer, the one JSON policy, the one JSON reader."""

import json
import math
import os
import stat

import pytest

from sam3dseg.common import files
from sam3dseg.common.files import atomic_output, read_json, write_json, write_text
from sam3dseg.errors import UserError


def test_atomic_output_renames_and_flushes_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    target = tmp_path / "sub" / "scan.nii.gz"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".nii.gz") and tmp != target
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    assert [p for p in synced if p.endswith(".nii.gz")] and str(target.parent) in synced  # the file, then its folder
    assert sorted(p.name for p in target.parent.iterdir()) == ["scan.nii.gz"]


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("killed")
    assert target.read_text(encoding="utf-8") == "old"  # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_json_is_standard_whatever_the_floats(tmp_path):
    path = write_json(tmp_path / "s.json", {"nan": math.nan, "inf": math.inf, "neg": -math.inf, "list": [1.5, math.nan]})

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    loaded = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    assert loaded == {"nan": None, "inf": "inf", "neg": "-inf", "list": [1.5, None]}
    assert list(loaded) == ["nan", "inf", "neg", "list"]  # insertion order kept
    assert read_json(path) == loaded


@pytest.mark.parametrize(
    "content,message",
    [(None, "file not found"), ("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object")],
)
def test_read_json_refuses_with_one_line(tmp_path, content, message):
    path = tmp_path / "x.json"
    if content is not None:
        write_text(path, content)
    with pytest.raises(UserError, match=message) as err:
        read_json(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_permissions_open_would_give(tmp_path, umask):
    """mkstemp's 0600 is not kept: a file written atomically gets 0666 & ~umask, as open() gives."""
    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_output(tmp_path / "b.nii.gz") as tmp:
            tmp.write_bytes(b"y")
        (tmp_path / "plain.txt").write_text("z")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("a.txt", "b.nii.gz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
