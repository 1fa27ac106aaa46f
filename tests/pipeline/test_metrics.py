"""Dice, HD95 and NSD: hand-computed cases and agreement with MONAI on anisotropic grids."""

import json
import math

import numpy as np
import pytest

from sam3dseg.cli import main
from sam3dseg.data.volumes import Geometry, write_volume
from sam3dseg.pipeline.evaluation.evaluate import run_evaluate
from sam3dseg.pipeline.metrics import class_metrics, summarise


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_golden_shifted_box():
    """A 4×4×4 box and the same box one slice further along z, spacing 2.5 mm in z.

    Dice = 2·48/(64+64) = 0.75. Of a box's 56 surface voxels (64 minus the 2×2×2
    inside), 36 lie on the other's surface (0 mm), the 4 inner voxels of the
    overlapping end face are 1 mm (one x step) from the other's side, and the 16 of
    the face that sticks out are one slice, 2.5 mm, away. Sorted: 36 × 0, 4 × 1,
    16 × 2.5, so the 95th percentile is 2.5 mm; NSD at 1 mm = (40 + 40)/(56 + 56) = 5/7."""
    a = _box((8, 8, 8), (1, 2, 2), (5, 6, 6))
    b = _box((8, 8, 8), (2, 2, 2), (6, 6, 6))
    m = class_metrics(a, b, (2.5, 1.0, 1.0), tolerance=1.0)
    assert m["dice"] == pytest.approx(0.75)
    assert m["hd95"] == pytest.approx(2.5)
    assert m["nsd"] == pytest.approx(5 / 7)
    assert class_metrics(a, b, (2.5, 1.0, 1.0), tolerance=2.5)["nsd"] == pytest.approx(1.0)


def test_empty_conventions():
    empty, box = np.zeros((4, 4, 4), bool), _box((4, 4, 4), (1, 1, 1), (3, 3, 3))
    both = class_metrics(empty, empty, (1, 1, 1), 1.0)
    assert all(math.isnan(v) for v in both.values())
    one = class_metrics(empty, box, (1, 1, 1), 1.0)
    assert one == {"dice": 0.0, "hd95": math.inf, "nsd": 0.0}
    rows = [
        {"case": "a", "class": "x", **both},
        {"case": "b", "class": "x", **one},
        {"case": "c", "class": "x", "dice": 0.5, "hd95": 3.0, "nsd": 0.25},
    ]
    s = summarise(rows, ["background", "x"])["per_class"]["x"]
    assert s["dice"] == pytest.approx(0.25)  # (0 + 0.5) / 2: both-empty excluded
    assert s["hd95"] == pytest.approx(3.0) and s["hd95_infinite"] == 1 and s["both_empty"] == 1


def _blob(shape, rng):
    from scipy import ndimage

    return ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_monai(seed):
    monai_metrics = pytest.importorskip("monai.metrics")
    import torch

    rng = np.random.default_rng(seed)
    shape = (12, 20, 17)
    spacing = (3.0, 0.8, 1.1)
    pred, ref = _blob(shape, rng), _blob(shape, rng)
    assert pred.any() and ref.any()
    ours = class_metrics(pred, ref, spacing, tolerance=1.5)
    p = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
    r = torch.from_numpy(np.stack([~ref, ref])[None].astype(np.float32))
    dice = monai_metrics.compute_dice(p, r, include_background=False).item()
    hd95 = monai_metrics.compute_hausdorff_distance(p, r, percentile=95, spacing=spacing).item()
    nsd = monai_metrics.compute_surface_dice(p, r, class_thresholds=[1.5], spacing=spacing).item()
    assert ours["dice"] == pytest.approx(dice, abs=1e-6)
    assert ours["hd95"] == pytest.approx(hd95, abs=1e-3)
    assert ours["nsd"] == pytest.approx(nsd, abs=1e-3)


GEOMETRY = Geometry((1.1, 0.8, 3.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_evaluate_command(tmp_path, capsys):
    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        ref = _blob((12, 20, 17), rng).astype(np.uint8) + _blob((12, 20, 17), rng)
        write_volume(ref, GEOMETRY, tmp_path / "ref" / f"{name}.nii.gz")
        write_volume(np.roll(ref, 1, axis=2), GEOMETRY, tmp_path / "pred" / f"{name}.nii.gz")
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}), encoding="utf-8")
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--labels", str(labels), "--png", "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "pred" / "sam3dseg_summary.json").read_text(encoding="utf-8"))
    assert set(summary["per_class"]) == {"liver", "tumour"} and summary["cases"] == 2
    rows = (tmp_path / "pred" / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "case,class,dice,hd95,nsd" and len(rows) == 5
    assert (tmp_path / "pred" / "a_vs_reference.png").is_file()


def test_summary_json_is_in_nnunets_layout(tmp_path):
    """summary.json is nnU-Net v2's (evaluate_predictions.py, as documented there): "metric_per_case" with
    prediction and reference files and per-label counts, "mean" per label (NaN left out), "foreground_mean"
    the mean of the label means; its Dice agrees exactly with ours; NaN for a label both masks lack, as
    nnU-Net writes it (Python's json reads it back)."""
    rng = np.random.default_rng(6)
    cases = {}
    for name in ("a", "b"):
        ref = _blob((10, 16, 14), rng).astype(np.uint8)
        pred = np.roll(ref, 1, axis=1)
        if name == "a":
            ref[0, :3, :3], pred[0, 0, 0] = 2, 2  # class 2 only in case a
        cases[name] = (pred, ref)
        write_volume(ref, GEOMETRY, tmp_path / "ref" / f"{name}.nii.gz")
        write_volume(pred, GEOMETRY, tmp_path / "pred" / f"{name}.nii.gz")
    ours = run_evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "pred", progress=False, log=None)
    nnunet = json.loads((tmp_path / "pred" / "summary.json").read_text(encoding="utf-8"))
    assert set(nnunet) == {"foreground_mean", "mean", "metric_per_case"} and set(nnunet["mean"]) == {"1", "2"}
    for entry, name in zip(nnunet["metric_per_case"], ("a", "b")):
        assert entry["prediction_file"] == str(tmp_path / "pred" / f"{name}.nii.gz")
        assert entry["reference_file"] == str(tmp_path / "ref" / f"{name}.nii.gz")
        pred, ref = cases[name]
        for k in ("1", "2"):
            m = entry["metrics"][k]
            p, r = pred == int(k), ref == int(k)
            assert (m["TP"], m["FP"], m["FN"], m["TN"]) == ((p & r).sum(), (p & ~r).sum(), (~p & r).sum(), (~p & ~r).sum())
            assert (m["n_pred"], m["n_ref"]) == (p.sum(), r.sum())
            assert m["Dice"] == pytest.approx(2 * m["TP"] / (2 * m["TP"] + m["FP"] + m["FN"])) if r.any() or p.any() else math.isnan(m["Dice"])
    assert math.isnan(nnunet["metric_per_case"][1]["metrics"]["2"]["Dice"])  # both empty in case b
    assert nnunet["mean"]["2"]["Dice"] == nnunet["metric_per_case"][0]["metrics"]["2"]["Dice"]  # the NaN left out
    assert nnunet["mean"]["1"]["Dice"] == pytest.approx(ours["per_class"]["class1"]["dice"], abs=1e-12)
    assert nnunet["foreground_mean"]["Dice"] == pytest.approx((nnunet["mean"]["1"]["Dice"] + nnunet["mean"]["2"]["Dice"]) / 2)
    assert nnunet["foreground_mean"]["Dice"] == pytest.approx(ours["mean_dice"], abs=1e-12)


def test_the_ignore_label_counts_for_no_class(tmp_path):
    """A reference with nnU-Net's ignore label (dataset.json "ignore": 3): whatever the prediction holds
    there, the scores are those of the other voxels, in our summary and nnU-Net's (TN leaves them out)."""
    rng = np.random.default_rng(8)
    ref = _blob((10, 16, 14), rng).astype(np.uint8) + _blob((10, 16, 14), rng)
    pred = ref.copy()
    ref_with_ignore = ref.copy()
    ref_with_ignore[:, :4] = 3
    pred[:, :4] = rng.integers(0, 3, pred[:, :4].shape)  # anything where the reference is ignored
    write_volume(ref_with_ignore, GEOMETRY, tmp_path / "ref" / "a.nii.gz")
    write_volume(pred, GEOMETRY, tmp_path / "pred" / "a.nii.gz")
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}}), encoding="utf-8")
    summary = run_evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "pred", labels, progress=False, log=None)
    assert set(summary["per_class"]) == {"a", "b"}
    assert (ref[:, 4:] == 1).any() and (ref[:, 4:] == 2).any()
    assert summary["per_class"]["a"]["dice"] == summary["per_class"]["b"]["dice"] == 1.0  # exact outside the ignored part
    nnunet = json.loads((tmp_path / "pred" / "summary.json").read_text(encoding="utf-8"))
    m = nnunet["metric_per_case"][0]["metrics"]["1"]
    assert m["FP"] == m["FN"] == 0 and m["TP"] + m["TN"] == ref[:, 4:].size


def test_evaluate_refuses_mismatched_shapes_and_missing_files(tmp_path, capsys):
    write_volume(np.zeros((4, 5, 6), np.uint8), GEOMETRY, tmp_path / "ref" / "a.nii.gz")
    write_volume(np.zeros((4, 5, 7), np.uint8), GEOMETRY, tmp_path / "pred" / "a.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has shape (4, 5, 7), reference" in err[0]
    write_volume(np.zeros((4, 5, 6), np.uint8), GEOMETRY, tmp_path / "ref" / "b.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--quiet", "--strict"]) == 2
    assert "1 of 2 reference(s) have no prediction" in capsys.readouterr().err
    assert not (tmp_path / "pred" / "metrics.csv").exists()


def test_evaluate_refuses_a_label_the_dataset_does_not_name(tmp_path, capsys):
    """A prediction with label 3 scored against a dataset.json of three classes: one line naming both files and the
    dataset.json, exit 2, nothing written."""
    ref = np.zeros((4, 5, 6), np.uint8)
    ref[1:3, 1:4, 2:5] = 2
    write_volume(ref, GEOMETRY, tmp_path / "ref" / "a.nii.gz")
    write_volume(np.where(ref == 2, 3, 0).astype(np.uint8), GEOMETRY, tmp_path / "pred" / "a.nii.gz")
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}), encoding="utf-8")
    command = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--labels", str(labels), "--quiet"]
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"holds label 3, but {labels} names 3 classes" in err[0] and "a.nii.gz" in err[0]
    assert not (tmp_path / "pred" / "metrics.csv").exists()

def test_evaluate_refuses_a_prediction_on_another_grid(tmp_path, capsys):
    """Same shape, other spacing or origin: the voxels are other places, so the scores would mean nothing."""
    from sam3dseg.data.volumes import Geometry

    ref = np.zeros((4, 5, 6), np.uint8)
    ref[1:3, 1:4, 1:5] = 1
    write_volume(ref, GEOMETRY, tmp_path / "ref" / "a.nii.gz")
    moved = Geometry(GEOMETRY.spacing, tuple(o + 5.0 for o in GEOMETRY.origin), GEOMETRY.direction)
    write_volume(ref, moved, tmp_path / "pred" / "a.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lies on another grid than its reference" in err[0]
    write_volume(ref, GEOMETRY, tmp_path / "pred" / "a.nii.gz")  # the reference's own grid: scored
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--quiet"]) == 0


def test_evaluate_scores_the_cases_it_has_and_says_which_are_missing(tmp_path, capsys):
    rng = np.random.default_rng(1)
    ref = _blob((12, 20, 17), rng).astype(np.uint8)
    for name in ("a", "b", "c"):
        write_volume(ref, GEOMETRY, tmp_path / "ref" / f"{name}.nii.gz")
    write_volume(ref, GEOMETRY, tmp_path / "pred" / "b.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "left out 2 reference(s) without a prediction" in out and "a, c" in out
    assert "class1" in out and "(1 case(s))" in out  # the table, although --quiet
    summary = json.loads((tmp_path / "pred" / "sam3dseg_summary.json").read_text(encoding="utf-8"))
    assert summary["cases"] == 1 and summary["missing_predictions"] == ["a", "c"]
    assert summary["per_class"]["class1"]["dice"] == 1.0


def test_summary_flags_a_class_never_found(tmp_path, capsys):
    """The mean HD95 looks fine when it only averages found classes: the table says per class how
    many cases found it and marks a class no case found."""
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        ref = _blob((12, 20, 17), rng).astype(np.uint8)
        ref[2:4, 2:4, 2:4] = 2
        write_volume(ref, GEOMETRY, tmp_path / "ref" / f"{name}.nii.gz")
        write_volume(np.where(ref == 2, 0, ref).astype(np.uint8), GEOMETRY, tmp_path / "pred" / f"{name}.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("class2"))
    assert "0/2" in line and "NEVER FOUND" in line
    assert line.split()[2] == "inf"  # its HD95, as metrics.csv has it per case (not nan)
    assert "2/2" in next(x for x in out.splitlines() if x.startswith("class1"))
    assert "never found: class2" in out
    summary = json.loads((tmp_path / "pred" / "sam3dseg_summary.json").read_text(encoding="utf-8"))
    assert (summary["per_class"]["class2"]["present"], summary["per_class"]["class2"]["found"]) == (2, 0)




def test_a_never_found_class_reads_inf_in_every_table():
    """The evaluate table and the demo's summary show a class every case missed as HD95 `inf` (what
    metrics.csv holds per case), a class no case holds as `n/a`, never `nan`."""
    from sam3dseg.pipeline.evaluation.evaluate import hd95_text

    assert hd95_text({"hd95": float("nan"), "hd95_infinite": 2}) == "inf"
    assert hd95_text({"hd95": float("nan"), "hd95_infinite": 0}) == "n/a"
    assert hd95_text({"hd95": 3.14159, "hd95_infinite": 1}, 1) == "3.1"
