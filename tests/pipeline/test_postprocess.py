"""Post-processing: largest connected components, adopted only where the validation Dice says so."""

import json
import re

import numpy as np
import pytest
from helpers import TINY_RUN, make_cache, tiny_encoder, tiny_model_file

from sam3dseg.cli import main
from sam3dseg.pipeline.config import PredictConfig, load_run_config
from sam3dseg.pipeline.inference.predictor import Predictor
from sam3dseg.pipeline.model_file import load_model_file
from sam3dseg.pipeline.postprocessing.postprocess import Postprocess, decide, keep_largest, load_validation, save_validation
from sam3dseg.pipeline.training.train import run_train

CLASSES = ["background", "liver", "kidney"]


def _case(second_kidney: bool, predicted_island: bool) -> tuple[np.ndarray, np.ndarray]:
    """A (prediction, reference) pair on a 12 × 40 × 40 grid: a liver block predicted exactly; a kidney the
    reference may hold twice (two real components); a spurious liver island the prediction may add."""
    ref = np.zeros((12, 40, 40), np.uint8)
    ref[2:10, 4:20, 4:20] = 1
    ref[3:8, 26:34, 26:34] = 2
    if second_kidney:
        ref[3:8, 30:36, 12:18] = 2  # a second kidney component, apart from the first
    pred = ref.copy()
    if predicted_island:
        pred[1:3, 34:37, 2:5] = 1  # a small liver island, away from the liver
    return pred, ref


def test_keep_largest_removes_islands_of_the_classes_given():
    pred, _ = _case(False, True)
    assert np.count_nonzero(pred == 1) > np.count_nonzero(keep_largest(pred, [1]) == 1)
    kept = keep_largest(pred, [1])
    assert kept[1:3, 34:37, 2:5].max() == 0 and (kept[2:10, 4:20, 4:20] == 1).all()
    assert np.array_equal(kept == 2, pred == 2)  # other classes untouched
    # the union of the foreground: the kidney block is a separate component and smaller than the liver
    assert (keep_largest(pred, [1, 2]) == 2).sum() == 0
    assert keep_largest(np.zeros((3, 4, 4), np.uint8), [1]).sum() == 0


def test_an_island_in_the_predictions_is_removed_per_class():
    """Spurious liver islands in every validation case: keeping the largest liver component raises the
    liver's Dice, so it is adopted; the whole-foreground step would delete the (separate) kidney, lowering
    the kidney's Dice, so it is not."""
    pairs = [_case(False, True) for _ in range(3)]
    lines = []
    decision = decide(pairs, CLASSES, lines.append)
    assert decision.foreground is False and decision.classes == [1]
    assert decision.dice_after[0] > decision.dice_before[0] and decision.dice_after[1] == decision.dice_before[1] == 1.0
    assert lines[0].endswith("not applied") and lines[1].startswith("largest liver component") and lines[1].endswith("applied")
    assert decision.apply(pairs[0][0], 3)[1:3, 34:37, 2:5].max() == 0


def test_the_decision_flips_when_the_validation_data_say_so():
    """The same predictions, but the references hold the liver "island" too (it is real): keeping the
    largest liver component would now lower the liver's Dice, so it is not applied. Likewise two real
    kidneys found by the predictions: their step is not applied either."""
    pairs = []
    for _ in range(3):
        pred, ref = _case(False, True)
        ref[1:3, 34:37, 2:5] = 1
        pairs.append((pred, ref))
    decision = decide(pairs, CLASSES, lambda _: None)
    assert decision.foreground is False and decision.classes == []
    assert decision.dice_after == decision.dice_before == [1.0, 1.0]
    assert decide([_case(True, False)], CLASSES, lambda _: None).classes == []
    # one class only (the kidney left out): the whole-foreground step decides alone, and the island makes it worth it
    liver_only = [tuple(np.where(x == 1, 1, 0).astype(np.uint8) for x in _case(False, True))]
    assert decide(liver_only, CLASSES[:2], lambda _: None).foreground is True


def test_predict_applies_the_recorded_decision_unless_told_not_to():
    record = tiny_model_file()
    record.postprocess = Postprocess(classes=[1]).to_dict()
    pred, _ = _case(False, True)
    assert Predictor(record, tiny_encoder()).finish(pred)[1:3, 34:37, 2:5].max() == 0
    assert np.array_equal(Predictor(record, tiny_encoder(), PredictConfig(postprocess=False)).finish(pred), pred)
    assert np.array_equal(Predictor(tiny_model_file(), tiny_encoder()).finish(pred), pred)  # none decided


@pytest.fixture(scope="module")
def two_folds(generated_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("pp")
    make_cache(generated_dataset, root / "cache", image_size=32)
    small = [*TINY_RUN, "train.num_folds=3"]
    for fold in (0, 1):
        run_train(root / "cache", root / f"f{fold}", load_run_config(None, [*small, f"train.fold={fold}"]), progress=False, log=None)
    return root


def test_training_decides_on_its_validation_cases(two_folds):
    run = two_folds / "f0"
    record = load_model_file(run / "best.pt")
    pairs = load_validation(run)
    assert len(pairs) == len(record.split["val"]) == 2
    expected = decide(pairs, record.class_names, lambda _: None)
    assert record.postprocess == expected.to_dict() == json.loads((run / "postprocessing.json").read_text(encoding="utf-8"))
    assert load_model_file(run / "last.pt").postprocess == record.postprocess


def test_postprocess_command_decides_over_all_runs(two_folds, capsys, tmp_path):
    runs = [two_folds / "f0", two_folds / "f1"]
    assert main(["postprocess", "--runs", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert "decided on 4 validation case(s) of 2 run(s)" in out and "recorded in 2 run(s)" in out
    pooled = decide(load_validation(runs[0]) + load_validation(runs[1]), CLASSES, lambda _: None).to_dict()
    assert all(load_model_file(r / "best.pt").postprocess == pooled for r in runs)
    assert pooled["cases"] == 4
    assert f"recorded in 2 run(s): {Postprocess.from_dict(pooled).describe(CLASSES)}" in out


    # bad input: a folder that is no run, a run without validation predictions
    assert main(["postprocess", "--runs", str(tmp_path)]) == 2
    assert "holds no best.pt" in capsys.readouterr().err
    save_validation(tmp_path / "r", {}, 1)
    (tmp_path / "r" / "best.pt").write_bytes((runs[0] / "best.pt").read_bytes())
    assert main(["postprocess", "--runs", str(tmp_path / "r")]) == 2
    assert "has no validation predictions" in capsys.readouterr().err


def test_a_decision_names_its_classes():
    decision = Postprocess(foreground=True, classes=[2])
    assert decision.describe(["background", "liver", "kidney"]) == "largest foreground component, largest component of kidney"
    assert Postprocess().describe(["background", "liver"]) == "no post-processing"


def test_evaluate_reports_the_mean_with_and_without_postprocessing(tmp_path, capsys):
    from sam3dseg.data.volumes import Geometry, write_volume

    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    pred, ref = _case(False, True)
    write_volume(ref, geometry, tmp_path / "ref" / "a.nii.gz")
    write_volume(pred, geometry, tmp_path / "raw" / "a.nii.gz")
    write_volume(Postprocess(classes=[1]).apply(pred, 3), geometry, tmp_path / "post" / "a.nii.gz")
    code = main(["evaluate", "--pred", str(tmp_path / "post"), "--ref", str(tmp_path / "ref"), "--raw", str(tmp_path / "raw"), "--quiet"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and out.startswith("post-processing: mean Dice ") and "class1 " in out and "-> 1.0000" in out
    without, with_ = (float(x) for x in re.findall(r"mean Dice ([0-9.]+) without .*, ([0-9.]+) with", out)[0])
    assert with_ == 1.0 and without < 1.0
