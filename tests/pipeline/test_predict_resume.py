"""A killed `predict` resumes, but another model's or other settings' segmentations are never kept silently:
OUT/predict.json records what made them, and anything else is refused in one line unless --overwrite."""

import json

import numpy as np
import pytest
from helpers import tiny_encoder, tiny_model_file

from sam3dseg.data.volumes import Geometry, write_volume
from sam3dseg.errors import UserError
from sam3dseg.pipeline.config import PredictConfig
from sam3dseg.pipeline.inference.predict import RECORD, FolderOutputs, run_predict
from sam3dseg.pipeline.inference.predictor import Predictor


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for name in ("a", "b"):
        write_volume(rng.uniform(0, 100, (6, 24, 24)).astype(np.float32), geometry, tmp_path / "in" / f"{name}_0000.nii.gz")
    return tmp_path / "in"


def _predict(inputs, out, seed=0, outputs=None, logged=None, **config):
    predictor = Predictor(tiny_model_file(seed=seed), tiny_encoder(), PredictConfig(**config))
    return run_predict(predictor, inputs, out, outputs, progress=False, log=(logged.append if logged is not None else None))


def test_the_same_run_resumes_where_it_stopped(inputs, tmp_path):
    out = tmp_path / "out"
    assert sorted(_predict(inputs, out)["written"]) == ["a", "b"]
    record = json.loads((out / RECORD).read_text())
    assert record["window"] == [4] and record["encoder_precision"] == "fp32" and len(record["models"]) == 1  # resolved values
    (out / "b.nii.gz").unlink()  # killed before b's segmentation was written
    stamp = (out / "a.nii.gz").stat().st_mtime_ns
    result = _predict(inputs, out)
    assert result["written"] == ["b"] and result["skipped"] == ["a"] and (out / "a.nii.gz").stat().st_mtime_ns == stamp
    # asking for a montage too: the cases that lack it are predicted again
    assert sorted(_predict(inputs, out, outputs=FolderOutputs(png=True))["written"]) == ["a", "b"]
    assert (out / "a.png").is_file() and (out / "b.png").is_file()


@pytest.mark.parametrize(
    "change, words",
    [({"seed": 1}, "other model file(s)"), ({"window": 2}, "window: [4] there, [2] now"), ({"flip_tta": True}, "flip_tta: False there, True now")],
)
def test_another_model_or_other_settings_are_refused_in_one_line(inputs, tmp_path, change, words):
    out = tmp_path / "out"
    _predict(inputs, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError) as err:
        _predict(inputs, out, **change)
    assert "\n" not in str(err.value) and words in str(err.value) and "--overwrite" in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched


def test_segmentations_of_no_record_are_refused_and_overwrite_replaces(inputs, tmp_path):
    out = tmp_path / "out"
    _predict(inputs, out)
    (out / RECORD).unlink()  # what an older sam3dseg, or another tool, left
    with pytest.raises(UserError, match="no record of what made them"):
        _predict(inputs, out)
    write_volume(np.zeros((2, 2, 2), np.uint8), Geometry((1.0,) * 3, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1)), out / "other.nii.gz")
    logged = []
    result = _predict(inputs, out, seed=1, outputs=FolderOutputs(overwrite=True), logged=logged)
    assert sorted(result["written"]) == ["a", "b"]
    assert json.loads((out / RECORD).read_text())["models"] == [tiny_model_file(seed=1).digest()]
    assert any("other.nii.gz" in line and "stay" in line for line in logged)  # not silent
    assert _predict(inputs, out, seed=1)["skipped"] == ["a", "b"]  # and that run now resumes


def test_the_plan_is_a_value_made_before_any_volume_is_read(inputs, tmp_path, monkeypatch):
    """plan_prediction lists what run_predict will do, from the folder alone: every case of a new folder, then only
    the one a killed run left out, each process its share; no volume is read and nothing written to plan."""
    from sam3dseg.pipeline.inference import predict as predict_module
    from sam3dseg.pipeline.inference.predict import plan_prediction

    predictor = Predictor(tiny_model_file(), tiny_encoder())
    out = tmp_path / "out"
    fresh = plan_prediction(predictor, inputs, out, FolderOutputs(), log=None)
    assert [(name, target.name) for name, _, target in fresh.todo] == [("a", "a.nii.gz"), ("b", "b.nii.gz")]
    assert fresh.skipped == [] and fresh.record == predictor.record() and not out.exists()
    _predict(inputs, out)
    (out / "b.nii.gz").unlink()
    monkeypatch.setattr(predict_module, "read_channels", lambda *a: pytest.fail("planning read a volume"))
    resumed = plan_prediction(predictor, inputs, out, FolderOutputs(), log=None)
    assert [name for name, *_ in resumed.todo] == ["b"] and resumed.skipped == ["a"]
    second = plan_prediction(predictor, inputs, out, FolderOutputs(), share=(1, 2), log=None)
    assert [name for name, *_ in second.todo] == ["b"] and second.skipped == [] and [n for n, _ in second.cases] == ["a", "b"]
