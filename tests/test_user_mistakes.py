"""What a new user trips on: outputs that are files, cases without labels, half-made folders, models
meeting data unlike their training data, library messages cut mid-sentence. Each mistake: one line,
exit 2 (or one warning), and nothing left behind."""

import shutil

import numpy as np
import pytest
import torch
from helpers import tiny_encoder, tiny_model_file

from sam3dseg.cli import main
from sam3dseg.data.volumes import Geometry, read_volume, write_volume
from sam3dseg.errors import UserError, summarise
from sam3dseg.pipeline.config import PredictConfig
from sam3dseg.pipeline.inference.predict import run_predict
from sam3dseg.pipeline.inference.predictor import Predictor
from sam3dseg.pipeline.model_file import load_model_file


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err.strip().splitlines()
    return [line for line in err if not line.startswith("sam3dseg: WARNING")]


def _tree(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- 1. --out naming a file: every command, at the door ---------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["anatomy"],
        ["plan", "--dataset", "DS"],
        ["cache", "--dataset", "DS"],
        ["train", "--cache", "CACHE"],
        ["predict", "--model", "M.pt", "--input", "IN"],
        ["evaluate", "--pred", "P", "--ref", "R"],
        ["demo"],
        ["analyze", "--quick"],
    ],
)
@pytest.mark.parametrize("below", [False, True])
def test_out_naming_a_file_is_refused_before_any_work(command, below, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file the user already has", encoding="utf-8")
    before = _tree(tmp_path)
    out = "taken/sub" if below else "taken"
    assert main([*command, "--out", out]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith(f"sam3dseg: error: --out {out}")
    assert ("taken is a file, not a folder" if below else "is a file; give a folder") in err[0]
    assert _tree(tmp_path) == before


def test_evaluate_raw_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "raw").write_text("x", encoding="utf-8")
    assert main(["evaluate", "--pred", str(tmp_path), "--ref", str(tmp_path), "--raw", str(tmp_path / "raw")]) == 2
    assert "--raw" in _errors(capsys)[0]


# --- 2, 3. check: every case problem, training and test folders alike -----------------------------


def test_check_reports_every_problem_of_both_folder_pairs(generated_dataset, tmp_path, capsys):
    ds = shutil.copytree(generated_dataset, tmp_path / "ds")
    (ds / "labelsTr" / "case_002.nii.gz").unlink()  # an image without its label
    (ds / "imagesTr" / "case_003_0000.nii.gz").rename(ds / "imagesTr" / "case_003_000.nii.gz")  # misnamed
    image, geometry = read_volume(ds / "imagesTr" / "case_000_0000.nii.gz")
    nan = image.astype(np.float32)
    nan[:] = np.nan
    write_volume(nan, geometry, ds / "imagesTs" / "test_a_0000.nii.gz")  # an all-NaN test image
    write_volume(image, geometry, ds / "imagesTs" / "test_b_0000.nii.gz")  # its label missing from labelsTs
    write_volume(read_volume(ds / "labelsTr" / "case_000.nii.gz")[0], geometry, ds / "labelsTs" / "test_a.nii.gz")

    assert main(["check", "--dataset", str(ds), "--quiet"]) == 2
    text = "\n".join(_errors(capsys))
    expected = [
        "case case_002: imagesTr/case_002_0000.nii.gz has no label labelsTr/case_002.nii.gz",
        "imagesTr/case_003_000.nii.gz is not named {case}_{XXXX}.nii.gz",
        "dataset.json: numTraining is 6, but 5 training case(s) were found",
        "case case_003: image not found",
        "test case test_a: ",
        "NaN/Inf voxel",
        "test case test_b: label not found",
    ]
    for line in expected:
        assert line in text, line
    assert text.startswith("sam3dseg: error: 6 problems in the dataset")


def test_check_reads_the_test_folders_and_counts_them(generated_dataset, tmp_path, capsys):
    ds = shutil.copytree(generated_dataset, tmp_path / "ds")
    (ds / "imagesTs").mkdir()
    shutil.copy(ds / "imagesTr" / "case_000_0000.nii.gz", ds / "imagesTs" / "new_0000.nii.gz")
    assert main(["check", "--dataset", str(ds), "--quiet"]) == 0
    assert "6 training case(s) and 1 test case(s), no problems" in capsys.readouterr().out


def test_a_test_folder_problem_is_checks_not_caches(generated_dataset, tmp_path, capsys):
    """A label in labelsTs without its image: `check` reports it; `cache`, which reads only the training
    cases, is not held up by it."""
    from sam3dseg.data.datasets import check_cases, load_dataset

    ds = shutil.copytree(generated_dataset, tmp_path / "ds")
    (ds / "imagesTs").mkdir()
    (ds / "labelsTs").mkdir()
    shutil.copy(ds / "labelsTr" / "case_000.nii.gz", ds / "labelsTs" / "lonely.nii.gz")
    dataset = load_dataset(ds)
    assert check_cases(dataset, progress=False) == []
    assert check_cases(dataset, progress=False, test=True) == ["test case lonely: labelsTs/lonely.nii.gz has no image in imagesTs"]
    assert main(["check", "--dataset", str(ds), "--quiet"]) == 2


def test_check_of_a_missing_folder_says_so(tmp_path, capsys):
    assert main(["check", "--dataset", str(tmp_path / "DOES_NOT_EXIST")]) == 2
    assert _errors(capsys) == [f"sam3dseg: error: dataset folder not found: {tmp_path / 'DOES_NOT_EXIST'}"]


# --- 4. a failed run leaves nothing it created ---------------------------------------------------


def test_cache_of_an_invalid_dataset_creates_nothing(generated_dataset, tmp_path, capsys):
    ds = shutil.copytree(generated_dataset, tmp_path / "ds")
    (ds / "imagesTr" / "case_004_0000.nii.gz").write_bytes(b"not an image")
    assert main(["cache", "--dataset", str(ds), "--out", str(tmp_path / "cache"), "--image-size", "32", "--quiet"]) == 2
    assert "case case_004: cannot read" in _errors(capsys)[0]
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("bad", ["nan", "2d"])
def test_predict_failing_on_its_first_case_creates_no_folder(bad, generated_dataset, tmp_path):
    image, geometry = read_volume(generated_dataset / "imagesTr" / "case_000_0000.nii.gz")
    if bad == "nan":
        image = image.astype(np.float32)
        image[0, 0, 0] = np.nan
        write_volume(image, geometry, tmp_path / "in.nii.gz")
    else:
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(image[0]), str(tmp_path / "in.nii.gz"))
    with pytest.raises(UserError, match="NaN/Inf" if bad == "nan" else "2-D image"):
        run_predict(Predictor(tiny_model_file(), tiny_encoder()), tmp_path / "in.nii.gz", tmp_path / "out" / "deeper", progress=False)
    assert not (tmp_path / "out").exists()


# --- 5. a model meeting data unlike its training data --------------------------------------------


def _mr_model():
    """A model whose training data (as the cache recorded it) was MR-like: 1 mm, intensities 0..800."""
    model = tiny_model_file()
    model.fingerprint = {"cases": 5, "spacing": [1.0, 1.0, 1.0], "intensity": [[0.0, 800.0]]}
    return model


def _ct_case() -> tuple[np.ndarray, Geometry]:
    rng = np.random.default_rng(0)
    hu = np.full((12, 40, 40), -1000.0, np.float32)
    hu[:, 8:32, 8:32] = rng.normal(40, 20, (12, 24, 24))
    return hu, Geometry((0.8, 0.8, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_predict_warns_in_one_line_naming_what_differs(tmp_path):
    hu, geometry = _ct_case()
    write_volume(hu, geometry, tmp_path / "ct.nii.gz")
    said = []
    run_predict(Predictor(_mr_model(), tiny_encoder()), tmp_path / "ct.nii.gz", tmp_path / "out", progress=False, log=said.append)
    warnings = [line for line in said if line.startswith("warning: case ct does not look like")]
    assert len(warnings) == 1 and len(said) == 1
    assert "MR intensities -1000.." in warnings[0] and "training 0..800" in warnings[0]
    assert "spacing 0.8 × 0.8 × 5 mm, training about 1 × 1 × 1 mm" in warnings[0]
    assert (tmp_path / "out" / "ct.nii.gz").is_file()  # still predicted

    with pytest.raises(UserError, match="case ct does not look like .*--strict refuses it"):
        run_predict(Predictor(_mr_model(), tiny_encoder(), PredictConfig(strict=True)), tmp_path / "ct.nii.gz", tmp_path / "strict", progress=False)
    assert not (tmp_path / "strict").exists()


def test_predict_is_silent_on_data_like_the_training_data(tmp_path):
    rng = np.random.default_rng(1)
    mr = rng.uniform(0, 780, (12, 40, 40)).astype(np.float32)
    write_volume(mr, Geometry((1.1, 0.9, 1.2), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)), tmp_path / "mr.nii.gz")
    said = []
    run_predict(Predictor(_mr_model(), tiny_encoder(), PredictConfig(strict=True)), tmp_path / "mr.nii.gz", tmp_path / "out",
                   progress=False, log=said.append)  # fmt: skip
    assert said == [] and (tmp_path / "out" / "mr.nii.gz").is_file()


def test_the_modality_a_file_states_is_compared(tmp_path):
    """MetaImage states its modality; a CT file given to a model trained on MR is named, even without a
    recorded fingerprint (models written before it was kept)."""
    hu, geometry = _ct_case()
    write_volume(hu, geometry, tmp_path / "plain.mha")
    text = (tmp_path / "plain.mha").read_bytes().replace(b"NDims = 3\n", b"NDims = 3\nModality = MET_MOD_CT\n")
    (tmp_path / "ct.mha").write_bytes(text)
    from sam3dseg.data.volumes import file_modality

    assert file_modality(tmp_path / "ct.mha") == "CT" and file_modality(tmp_path / "plain.mha") is None
    predictor = Predictor(tiny_model_file(), tiny_encoder(), PredictConfig(strict=True))  # no fingerprint
    with pytest.raises(UserError, match="the file says CT, the model was trained on MR"):
        run_predict(predictor, tmp_path / "ct.mha", tmp_path / "out", progress=False)


@pytest.mark.slow
def test_training_records_its_datas_fingerprint(trained_tiny):
    """The cache's manifest combines its cases' spacing and intensity ranges; the model files carry them."""
    import json

    manifest = json.loads((trained_tiny["cache"] / "manifest.json").read_text(encoding="utf-8"))
    record = load_model_file(trained_tiny["run"] / "best.pt").fingerprint
    assert record == manifest["fingerprint"] and record["cases"] == 10
    lows = []
    for path in sorted((trained_tiny["dataset"] / "imagesTr").iterdir()):
        image, _ = read_volume(path)
        lows.append(np.percentile(image[::2, ::2, ::2], 0.5))
    assert record["intensity"][0][0] == pytest.approx(min(lows))


# --- 7. library messages summarised, never cut mid-word ------------------------------------------


def test_a_non_model_file_is_named_in_one_whole_sentence(tmp_path, capsys):
    torch.save({"weights": np.zeros(3)}, tmp_path / "numpy.pt")  # a pickle a weights-only load refuses
    (tmp_path / "notes.pt").write_text("hello", encoding="utf-8")
    for name, why in (("numpy.pt", "holds pickled Python objects"), ("notes.pt", "not written by torch.save")):
        assert main(["predict", "--model", str(tmp_path / name), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
        (line,) = _errors(capsys)
        assert why in line and "Re-running" not in line and "weights_only` …" not in line
        assert line.endswith(("weights_only)", ")"))


def test_summarise_keeps_the_first_sentence_and_whole_words():
    long = "Weights only load failed. This file can still be loaded, to do so you have two options"
    assert summarise(RuntimeError(long)) == "Weights only load failed"
    words = "word " * 80
    short = summarise(ValueError(words), limit=50)
    assert short.endswith(" …") and all(w == "word" for w in short[:-2].split())
    assert summarise(KeyError()) == "KeyError"


# --- 10. small mismatches ---------------------------------------------------------------------------


def test_without_monai_the_error_comes_before_any_warning(generated_dataset, tmp_path, capsys, monkeypatch):
    """`cache --views K` without MONAI ends at the door: no RANDOM-weights warning first, no folder."""
    import sam3dseg.pipeline.caching.cache as cache

    def missing() -> str:
        raise UserError("augmented views (--views above 0) need MONAI: pip install 'sam3dseg[views]'")

    monkeypatch.setattr(cache, "require_monai", missing)
    args = ["cache", "--dataset", str(generated_dataset), "--out", str(tmp_path / "c"), "--image-size", "32", "--augmented-copies", "2"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sam3dseg: error: augmented views (--views above 0) need MONAI: pip install 'sam3dseg[views]'"
    ]
    assert not (tmp_path / "c").exists()


def test_evaluate_checks_every_image_before_it_draws(generated_dataset, tmp_path, capsys):
    """`evaluate --png --images DIR` with one case's image missing: one line, exit 2, no --out folder."""
    ref = generated_dataset / "labelsTr"
    images = tmp_path / "images"
    images.mkdir()
    for name in ("case_000", "case_001", "case_002", "case_003", "case_004"):  # case_005 has none
        shutil.copy(generated_dataset / "imagesTr" / f"{name}_0000.nii.gz", images)
    args = ["evaluate", "--pred", str(ref), "--ref", str(ref), "--out", str(tmp_path / "scores"), "--png", "--images", str(images)]
    assert main(args) == 2
    assert _errors(capsys) == [f"sam3dseg: error: no image for case case_005 in {images} (expected case_005_0000 or case_005 with an image suffix)"]
    assert not (tmp_path / "scores").exists()
