"""The cache's manifest as a record: typed fields, a version, migrations from every version written so far
(committed fixtures), one reader that refuses a bad file in one line naming the field."""

import json
from pathlib import Path

import pytest

from sam3dseg.data.augment import AugmentConfig
from sam3dseg.errors import UserError
from sam3dseg.pipeline.caching.manifest import MANIFEST_VERSION, CacheManifest

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _cache(tmp_path: Path, state: dict) -> Path:
    (tmp_path / "c").mkdir(exist_ok=True)
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(state), encoding="utf-8")
    return tmp_path / "c"


def test_the_first_version_1_form_reads_with_the_defaults_of_its_day(tmp_path):
    """Written before ignore_label, views, augment and fingerprint, and before the encoder record had a stride."""
    m = CacheManifest.read(_cache(tmp_path, json.loads((FIXTURES / "manifest_v1_first.json").read_text(encoding="utf-8"))))
    assert (m.cases, m.class_names, m.channel_names, m.feature_channels) == (["case_000", "case_001"], ["background", "class1", "class2"], ["CT"], 32)
    assert (m.ignore_label, m.views, m.augment, m.fingerprint) == (None, 0, AugmentConfig(), None)
    assert (m.encoder.name, m.encoder.stride, m.encoder.normalisation, m.encoder.precision) == ("vit_b", 16, "sam", "fp32")


def test_the_last_version_1_form_keeps_every_field(tmp_path):
    """The last manifest written under version 1: every field, and the augment section under its old key (views)."""
    state = json.loads((FIXTURES / "manifest_v1_last.json").read_text(encoding="utf-8"))
    m = CacheManifest.read(_cache(tmp_path, state))
    assert (m.ignore_label, m.views, m.augment.copies, m.augment.rotation) == (3, 2, 2, 20.0)
    assert m.fingerprint == state["fingerprint"] and (m.encoder.stride, m.encoder.precision) == (4, "bf16")


def test_written_and_read_back_is_the_same_record(tmp_path):
    state = json.loads((FIXTURES / "manifest_v1_last.json").read_text(encoding="utf-8"))
    m = CacheManifest.read(_cache(tmp_path, state))
    m.write(tmp_path / "again")
    written = json.loads((tmp_path / "again" / "manifest.json").read_text(encoding="utf-8"))
    assert written["version"] == MANIFEST_VERSION and CacheManifest.read(tmp_path / "again") == m


@pytest.mark.parametrize(
    "change,message",
    [
        ({"version": MANIFEST_VERSION + 1}, f"was written by a newer sam3dseg (cache format version {MANIFEST_VERSION + 1}"),
        ({"version": "1"}, "has an unknown cache format version '1'"),
        ({"format": "other"}, "is not a sam3dseg cache manifest"),
        ({"cases": "case_000"}, "cases must be a list of case names, got 'case_000'"),
        ({"class_names": []}, "class_names must be a list of class names, got []"),
        ({"feature_channels": 0}, "feature_channels must be a positive integer, got 0"),
        ({"views": -1}, "views must be an integer >= 0"),
        ({"dataset": None}, "dataset must be the dataset folder's path, got None"),
        ({"encoder": {"name": "vit_b"}}, "encoder is not a valid encoder record"),
        ({"preprocess": {"slicing_axis": "oblique"}}, "preprocess.slicing_axis (--slicing-axis) must be one of axial"),
        ({"augment": {"copies": -2}}, "augment.copies (--augmented-copies) must be an integer >= 0"),
        ({"views": 1}, "views (1) must equal augment.copies (2)"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_field(change, message, tmp_path):
    state = {**json.loads((FIXTURES / "manifest_v1_last.json").read_text(encoding="utf-8")), **change}
    with pytest.raises(UserError) as err:
        CacheManifest.read(_cache(tmp_path, state))
    assert message in str(err.value) and "\n" not in str(err.value) and "manifest.json" in str(err.value)


def test_a_missing_field_is_named(tmp_path):
    state = json.loads((FIXTURES / "manifest_v1_last.json").read_text(encoding="utf-8"))
    state["version"] = MANIFEST_VERSION
    del state["channel_names"]
    with pytest.raises(UserError, match="channel_names must be a list of channel names, absent"):
        CacheManifest.read(_cache(tmp_path, state))
