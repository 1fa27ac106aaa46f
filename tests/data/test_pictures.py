"""Montages: one rule for every command. A CT is shown through a soft-tissue window that tells fat
from air, whatever window the model read; predict and evaluate draw a case the same way."""

import json

import numpy as np
import pytest
from helpers import tiny_encoder, tiny_model_file
from matplotlib.image import imread

import sam3dseg.data.pictures as pictures
from sam3dseg.cli import main
from sam3dseg.data.preprocess import PreprocessConfig
from sam3dseg.data.volumes import Geometry, write_volume
from sam3dseg.pipeline.inference.predict import FolderOutputs, run_predict
from sam3dseg.pipeline.inference.predictor import Predictor

GEOMETRY = Geometry((0.8, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """A CT slab: air (-1000 HU) around a body of fat (-100 HU) holding an organ (60 HU), labelled 1."""
    hu = np.full((6, 48, 48), -1000.0, np.float32)
    hu[:, 8:40, 8:40] = -100.0
    hu[:, 18:30, 18:30] = 60.0
    label = np.zeros(hu.shape, np.uint8)
    label[:, 18:30, 18:30] = 1
    return hu, label


def _greys(png_path, rows, cols) -> np.ndarray:
    png = imread(png_path)[..., :3]
    return png[rows, cols].mean(axis=-1)


def test_a_ct_montage_shows_fat_and_air_at_different_grey_levels(tmp_path):
    """The model's own window (here the narrow 96.5/135 a plan proposed, 29..164 HU) maps fat and air both
    to black; the picture uses the soft-tissue window: air black, fat dark grey, tissue lighter."""
    hu, label = _phantom()
    window, words = pictures.display_window(hu, "CT")
    assert window == (-160.0, 240.0) and "soft-tissue" in words
    drawn = {}

    def capture(path, image, *args, **kwargs):
        drawn.update(image=image, window=kwargs["window"], title=kwargs["title"])
        return path

    pictures_save = pictures.save_montage
    try:
        pictures.save_montage = capture
        pictures.save_case_montage(tmp_path / "a.png", hu, "CT", GEOMETRY, label, None, ["background", "organ"], "a")
    finally:
        pictures.save_montage = pictures_save
    lo, hi = drawn["window"]
    shown = np.clip((drawn["image"] - lo) / (hi - lo), 0, 1)  # the grey matplotlib draws, 0 black .. 1 white
    air, fat, organ = (float(np.median(shown[hu_mask])) for hu_mask in (drawn["image"] == -1000, drawn["image"] == -100, drawn["image"] == 60))
    assert air == 0.0 and 0.1 < fat < 0.3 and organ > fat + 0.3
    assert "soft-tissue window L40 W400" in drawn["title"]

    # and in the written file: air, fat and tissue each have their own grey (the panels' pixels)
    path = pictures.save_case_montage(tmp_path / "b.png", hu, "CT", GEOMETRY, np.zeros_like(label), None, ["background", "organ"], "b")
    rgb = np.round(imread(path)[..., :3] * 255).astype(int)
    grey = rgb[(rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])][:, 0]
    counts = np.bincount(grey, minlength=256)
    for hu_value in (-1000, -100, 60):
        level = round(np.clip((hu_value + 160) / 400, 0, 1) * 255)
        assert counts[max(0, level - 1) : level + 2].sum() > 500, hu_value


def test_predict_and_evaluate_draw_a_case_identically(tmp_path, monkeypatch):
    """The same CT case drawn by `predict --png` and by `evaluate --png --images`: same image, window,
    orientation and words (evaluate adds the reference's contours)."""
    hu, label = _phantom()
    write_volume(hu, GEOMETRY, tmp_path / "images" / "a_0000.nii.gz")
    write_volume(label, GEOMETRY, tmp_path / "ref" / "a.nii.gz")
    drawn = []
    monkeypatch.setattr(pictures, "save_montage", lambda path, image, pred, ref, *a, **k: drawn.append((image, pred, k)) or path)
    # a model that read CT through a narrow window of its own
    model = tiny_model_file(PreprocessConfig(intensity="ct", ct_window=(96.5, 135.0)), channels=("CT",))
    run_predict(Predictor(model, tiny_encoder()), tmp_path / "images", tmp_path / "pred", FolderOutputs(png=True), progress=False)
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}, "channel_names": {"0": "CT"}}), encoding="utf-8")
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--labels", str(labels)]
    assert main([*args, "--png", "--images", str(tmp_path / "images"), "--quiet"]) == 0
    (image_p, pred_p, kw_p), (image_e, pred_e, kw_e) = drawn
    assert np.array_equal(image_p, image_e) and np.array_equal(pred_p, pred_e)
    assert kw_p["window"] == kw_e["window"] == (-160.0, 240.0)
    assert kw_p["aspect"] == kw_e["aspect"] and kw_p["title"] == kw_e["title"] == "a · CT soft-tissue window L40 W400"


def test_other_modalities_use_their_percentiles(tmp_path):
    image = np.linspace(0, 1000, 6 * 20 * 20, dtype=np.float32).reshape(6, 20, 20)
    (lo, hi), words = pictures.display_window(image, "T2")
    assert lo == pytest.approx(np.percentile(image, 0.5)) and hi == pytest.approx(np.percentile(image, 99.5))
    assert "T2" in words


def test_panels_show_where_the_classes_are_and_the_styles_differ(tmp_path):
    """Panels skip a structure's specks (its first and last slices), each class keeps its largest slice,
    and prediction (filled) and reference (dashed) are told apart in the saved pixels."""
    from sam3dseg.common.plots import pick_slices, save_montage

    label = np.zeros((40, 64, 64), np.uint8)
    for z in range(5, 35):  # a sphere-ish organ: specks at its tips
        r = int(14 * np.sqrt(max(0.0, 1 - ((z - 20) / 15) ** 2)))
        label[z, 32 - r : 32 + r, 32 - r : 32 + r] = 1
    label[8, 10:12, 10:12] = 2  # a small lesion on one slice
    slices = pick_slices([label], 6)
    area = (label > 0).reshape(40, -1).sum(1)
    assert 8 in slices and all(area[z] >= area.max() / 3 for z in slices if z != 8)
    image = np.full(label.shape, 100.0, np.float32)
    path = save_montage(tmp_path / "m.png", image, label, np.roll(label, 6, axis=2), ["bg", "organ", "lesion"], window=(0, 255))
    png = imread(path)[..., :3]
    assert png.shape[1] >= 1800  # 6 panels of 3.2 in at 100 dpi
    red = (png[..., 0] > 0.6) & (png[..., 1] < 0.35)  # the organ's colour, #e6194b, on the edges and dashes
    tinted = (png[..., 0] > png[..., 1] + 0.08) & ~red  # the translucent fill
    assert red.sum() > 500 and tinted.sum() > 5 * red.sum() / 10
