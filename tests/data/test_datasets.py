"""MSD and nnU-Net v2 dataset folders."""

import json
import shutil
from pathlib import Path

import pytest

from sam3dseg.data.datasets import check_cases, load_dataset
from sam3dseg.errors import UserError
from sam3dseg.data.synthetic import write_dataset


def test_nnunet_layout(generated_dataset):
    ds = load_dataset(generated_dataset)
    assert ds.layout == "nnunet"
    assert [c.name for c in ds.cases] == [f"case_{i:03d}" for i in range(6)]
    assert ds.class_names == ["background", "class1", "class2"] and ds.channel_names == ["MR"]
    assert ds.cases[0].images[0].name == "case_000_0000.nii.gz"


def test_msd_layout(tmp_path):
    ds = load_dataset(write_dataset(tmp_path / "Task01", 2, "msd"))
    assert ds.layout == "msd" and [c.name for c in ds.cases] == ["case_000", "case_001"]
    assert ds.cases[1].label.name == "case_001.nii.gz"


def test_multichannel_nnunet(tmp_path):
    ds = load_dataset(write_dataset(tmp_path / "Dataset002_Two", 2, "nnunet", channels=4))
    assert len(ds.cases[0].images) == 4 and ds.channel_names == ["MR"] * 4


@pytest.fixture
def msd(tmp_path):
    return write_dataset(tmp_path / "Task02", 2, "msd")


def _edit(root, change):
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


def test_malformed_json(msd):
    (msd / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="dataset.json is not valid JSON"):
        load_dataset(msd)


def test_no_dataset_json(tmp_path):
    with pytest.raises(UserError, match="no dataset.json"):
        load_dataset(tmp_path)


def test_unknown_layout(msd):
    (msd / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(UserError, match="neither MSD .* nor nnU-Net v2"):
        load_dataset(msd)


def test_path_outside_dataset_is_refused(msd):
    _edit(msd, lambda m: m["training"][0].update(image="../../etc/passwd"))
    with pytest.raises(UserError, match="points outside the dataset folder"):
        load_dataset(msd)


def test_missing_image_and_label(msd):
    (msd / "labelsTr" / "case_001.nii.gz").unlink()
    problems = check_cases(load_dataset(msd), progress=False)
    assert len(problems) == 1 and problems[0].startswith("case case_001: label not found")
    shutil.rmtree(msd / "imagesTr")
    problems = check_cases(load_dataset(msd), progress=False)
    assert [p.split(":")[0] for p in problems] == [f"case {c.name}" for c in load_dataset(msd).cases]
    assert "image not found" in problems[0] and "image not found" in problems[1]


def test_label_values_must_be_contiguous(msd):
    _edit(msd, lambda m: m.update(labels={"0": "background", "2": "tumour"}))
    with pytest.raises(UserError, match="label values must be 0..K-1"):
        load_dataset(msd)


def test_nnunet_region_labels_are_refused(generated_dataset, tmp_path):
    root = shutil.copytree(generated_dataset, tmp_path / "copy")
    _edit(root, lambda m: m.update(labels={"background": 0, "whole": [1, 2]}))
    with pytest.raises(UserError, match="region-based labels are not supported"):
        load_dataset(root)


def test_nnunet_files_listed_under_dataset(generated_dataset, tmp_path):
    """nnU-Net v2 lets dataset.json list its files under "dataset" instead of imagesTr/labelsTr: read them,
    relative to the folder or absolute, and the cases equal those of the folder layout."""
    folders = load_dataset(generated_dataset)
    root = tmp_path / "Dataset009_Listed"
    (root / "scans").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    meta = json.loads((generated_dataset / "dataset.json").read_text(encoding="utf-8"))
    meta["dataset"] = {}
    for i, case in enumerate(folders.cases):
        image = shutil.copy(case.images[0], root / "scans" / f"{case.name}_img.nii.gz")
        label = shutil.copy(case.label, (elsewhere if i % 2 else root / "scans") / f"{case.name}_seg.nii.gz")
        meta["dataset"][case.name] = {"images": [f"scans/{Path(image).name}"],
                                      "label": str(label) if i % 2 else f"scans/{Path(label).name}"}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    listed = load_dataset(root)
    assert [c.name for c in listed.cases] == [c.name for c in folders.cases] and listed.class_names == folders.class_names
    for a, b in zip(listed.cases, folders.cases):
        assert a.images[0].read_bytes() == b.images[0].read_bytes() and a.label.read_bytes() == b.label.read_bytes()
    assert not check_cases(listed, progress=False)
    meta["dataset"]["case_000"] = {"label": "scans/case_000_seg.nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(UserError, match="dataset entry 'case_000' needs 'images'"):
        load_dataset(root)
    meta["dataset"]["case_000"] = {"images": ["../outside.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(UserError, match="points outside the dataset folder"):
        load_dataset(root)


def test_nnunet_ignore_label(generated_dataset, tmp_path):
    """An "ignore" label (nnU-Net's: the highest value) is no class: the classes leave it out, label files may
    hold it; anywhere but the highest value it is refused."""
    root = shutil.copytree(generated_dataset, tmp_path / "ds")
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    meta["labels"]["ignore"] = 3
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    ds = load_dataset(root)
    assert ds.class_names == ["background", "class1", "class2"] and ds.ignore_label == 3 and ds.num_classes == 3
    from sam3dseg.data.volumes import read_volume, write_volume

    label, geometry = read_volume(ds.cases[0].label)
    label[0] = 3
    write_volume(label, geometry, ds.cases[0].label)
    assert not check_cases(ds, progress=False)
    meta["labels"] = {"background": 0, "ignore": 1, "a": 2}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(UserError, match="the 'ignore' label must have the highest value"):
        load_dataset(root)
