"""`predict` reads an input folder by the dataset reader's rule: nnU-Net's ``{case}_{XXXX}`` channel groups where
every case has its channels, one case per file under its own name otherwise (AMOS, TotalSegmentator)."""

import numpy as np
import pytest
from helpers import tiny_encoder, tiny_model_file

from sam3dseg.data.volumes import Geometry, write_volume
from sam3dseg.errors import UserError
from sam3dseg.pipeline.inference.predict import collect_inputs, run_predict
from sam3dseg.pipeline.inference.predictor import Predictor


def _folder(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).touch()
    return root


def _cases(found):
    return [(name, [p.name for p in paths]) for name, paths in found]


def test_amos_numbering_is_one_case_per_file(tmp_path):
    folder = _folder(tmp_path / "amos", ["amos_0001.nii.gz", "amos_0002.nii.gz", "amos_0600.nii.gz"])
    assert _cases(collect_inputs(folder, 1)) == [
        ("amos_0001", ["amos_0001.nii.gz"]), ("amos_0002", ["amos_0002.nii.gz"]), ("amos_0600", ["amos_0600.nii.gz"])
    ]  # fmt: skip
    assert collect_inputs(folder / "amos_0001.nii.gz", 1)[0][0] == "amos_0001"  # one file: its own name too


def test_totalsegmentator_style_one_file_per_scan(tmp_path):
    folder = _folder(tmp_path / "ts", ["s0011.nii.gz", "ct.nii.gz", "s0012_ct.nii.gz"])
    assert _cases(collect_inputs(folder, 1)) == [("ct", ["ct.nii.gz"]), ("s0011", ["s0011.nii.gz"]), ("s0012_ct", ["s0012_ct.nii.gz"])]


def test_nnunet_style_groups_channels_in_order(tmp_path):
    folder = _folder(tmp_path / "nn", ["b_0001.nii.gz", "a_0000.nii.gz", "b_0000.nii.gz", "a_0001.nii.gz"])
    assert _cases(collect_inputs(folder, 2)) == [("a", ["a_0000.nii.gz", "a_0001.nii.gz"]), ("b", ["b_0000.nii.gz", "b_0001.nii.gz"])]
    single = _folder(tmp_path / "one", ["liver_003_0000.nii.gz", "liver_004_0000.nii.gz"])
    assert _cases(collect_inputs(single, 1)) == [("liver_003", ["liver_003_0000.nii.gz"]), ("liver_004", ["liver_004_0000.nii.gz"])]
    assert collect_inputs(single / "liver_003_0000.nii.gz", 1)[0][0] == "liver_003"


def test_a_gap_or_an_extra_channel_is_one_line(tmp_path):
    gap = _folder(tmp_path / "gap", ["a_0000.nii.gz", "a_0002.nii.gz"])  # two files, but not channels 0 and 1
    with pytest.raises(UserError) as err:
        collect_inputs(gap, 2)
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and "no a_0001.nii.gz" in lines[1] and "a_0002.nii.gz is a channel beyond the model's 2" in lines[2]
    extra = _folder(tmp_path / "extra", ["a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"])
    with pytest.raises(UserError, match=r"^case a in .*: a_0002.nii.gz is a channel beyond the model's 2$"):
        collect_inputs(extra, 2)
    missing = _folder(tmp_path / "missing", ["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"])
    with pytest.raises(UserError, match=r"^case b in .*: no b_0001.nii.gz"):
        collect_inputs(missing, 2)


def test_amos_folder_predicts_one_segmentation_per_scan(tmp_path):
    rng = np.random.default_rng(0)
    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for name in ("amos_0001", "amos_0002"):
        write_volume(rng.uniform(0, 100, (6, 24, 24)).astype(np.float32), geometry, tmp_path / "in" / f"{name}.nii.gz")
    result = run_predict(Predictor(tiny_model_file(), tiny_encoder()), tmp_path / "in", tmp_path / "out", progress=False)
    assert sorted(result["written"]) == ["amos_0001", "amos_0002"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["amos_0001.nii.gz", "amos_0002.nii.gz"]
