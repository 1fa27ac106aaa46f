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
        assert tmp.parent.parent == target.parent and tmp.name == target.name and tmp != target
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
def test_outputs_get_the_permissions_open_would_give(tmp_path, umask, monkeypatch):
    """A file written atomically gets 0666 & ~umask, as open() gives, and the process's umask is never touched
    (setting it, even to read it back, races with predict's writer thread)."""
    old = os.umask(umask)

    def no_umask(mask):
        raise AssertionError("the process umask was changed")

    monkeypatch.setattr(os, "umask", no_umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_output(tmp_path / "b.nii.gz") as tmp:
            tmp.write_bytes(b"y")
        (tmp_path / "plain.txt").write_text("z")
    finally:
        monkeypatch.undo()
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("a.txt", "b.nii.gz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


@pytest.mark.parametrize("suffix, data", [(".mhd", ".raw"), (".nhdr", ".raw")])
def test_multi_file_formats_are_written_whole_data_first(tmp_path, monkeypatch, suffix, data):
    """MetaImage and detached NRRD: header and data under their final names (the header names its data file),
    synced, the data renamed into place before the header; a failure leaves neither."""
    import numpy as np

    from sam3dseg.data.volumes import Geometry, read_volume, write_volume

    geometry = Geometry((1.0, 1.0, 2.0), (3.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    array = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    renamed = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(os.path.basename(b)), real(a, b)))
    write_volume(array, geometry, tmp_path / f"seg{suffix}")
    assert renamed == [f"seg{data}", f"seg{suffix}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"seg{data}", f"seg{suffix}"])  # no temporaries
    back, g = read_volume(tmp_path / f"seg{suffix}")
    assert np.array_equal(back, array) and g.matches(geometry)
    assert f"seg{data}" in (tmp_path / f"seg{suffix}").read_text(errors="ignore")

    def killed(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_volume(array, geometry, tmp_path / f"other{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"seg{data}", f"seg{suffix}"])


def test_only_a_bad_file_becomes_not_a_model_file(tmp_path, monkeypatch):
    """Unreadable or unpicklable bytes are one line; running out of memory while loading stays a MemoryError."""
    import torch

    from sam3dseg.common.files import load_tensors, save_tensors

    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("junk.pt", "empty.pt"):
        with pytest.raises(UserError, match="is not a readable model file"):
            load_tensors(tmp_path / name, "model file")
    torch.save({"obj": UserError("x")}, tmp_path / "pickled.pt")  # an object: only a full unpickler would load it
    with pytest.raises(UserError, match="pickled Python objects"):
        load_tensors(tmp_path / "pickled.pt", "model file")
    save_tensors({"w": torch.ones(2)}, tmp_path / "good.pt")

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(torch, "load", out_of_memory)
    with pytest.raises(MemoryError):
        load_tensors(tmp_path / "good.pt", "model file")
