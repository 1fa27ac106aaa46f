"""Every option checked at the door: one place per rule, one line per mistake, nothing done before."""

import dataclasses
import re

import pytest

from sam3dseg.cli import main
from sam3dseg.common.settings import describe, from_dict
from sam3dseg.data.anatomy import AnatomyConfig
from sam3dseg.data.augment import AugmentConfig
from sam3dseg.data.preprocess import PreprocessConfig
from sam3dseg.demo import DemoConfig
from sam3dseg.errors import UserError
from sam3dseg.pipeline.config import CacheConfig, PredictConfig, RunConfig, TrainConfig

SETTINGS = [CacheConfig, PreprocessConfig, AugmentConfig, RunConfig, PredictConfig, DemoConfig, AnatomyConfig]


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_setting_has_a_rule_that_its_default_passes(cls):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or f.name in ("decoder", "loss", "train", "preprocess", "augment"):
            continue
        assert "rule" in f.metadata, f"{cls.__name__}.{f.name} has no rule"
    cls()  # the defaults pass their own rules
    assert describe(cls)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "decoder.activation=foo"], "decoder.activation must be one of relu, leaky_relu, got 'foo'"),
        (["train", "train.epochs=0"], "train.epochs (--epochs) must be a positive integer, got 0"),
        (["train", "train.batch_size=0"], "train.batch_size must be a positive integer, got 0"),
        (["train", "train.val_fraction=1"], "train.val_fraction must be a number in [0, 1), got 1.0"),
        (["train", "train.lr=-1"], "train.lr must be a number > 0, got -1.0"),
        (["train", "train.device=gpu"], "train.device (--device) must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["train", "--device", "gpu"], "train.device (--device) must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["train", "--epochs", "0"], "train.epochs (--epochs) must be a positive integer, got 0"),
        (["train", "decoder.channels=[8,8,8]"], "decoder.channels must be four positive integers, got (8, 8, 8)"),
        (["train", "decoder.shortcut_kernel=5"], "decoder.shortcut_kernel must be one of 3, 1, got 5"),
        (["train", "loss.weights=[1,2]"], "loss.weights must be four numbers >= 0 with a positive sum"),
        (["train", "loss.target_mode=max"], "loss.target_mode must be one of average, nearest, got 'max'"),
        (["train", "train.epochs=[1"], "the value is not valid YAML"),
        (["train", "loss.dice=dice"], "loss.dice must be one of joint, per_class, got 'dice'"),
        (["train", "loss.smooth=-1"], "loss.smooth must be a number >= 0, got -1.0"),
        (["train", "train.foreground_fraction=1.5"], "train.foreground_fraction must be a number in [0, 1], got 1.5"),
        (["cache", "--ct-window", "40", "0"], "preprocess.ct_window (--ct-window) must be a level and a width > 0 (HU), got (40.0, 0.0)"),
        (["cache", "--image-size", "40"], "image_size (--image-size) 40 does not fit the vit_b encoder: give a positive multiple of 16 (its default is 1024)"),
        (["cache", "--image-size", "42"], "image_size (--image-size) must be null (the encoder's default) or a positive multiple of 4"),
        (["cache", "--encoder", "lite_medsam", "--image-size", "130"], "must be null (the encoder's default) or a positive multiple of 4"),
        (["cache", "--encoder", "lite_medsam", "--image-size", "132", "--checkpoint", "/no/file"], "checkpoint (--checkpoint) must be null or an existing file"),
        (["cache", "--encoder", "vit_x"], "encoder (--encoder) must be one of vit_b, vit_l, vit_h, medsam_vit_b, lite_medsam, mobile_sam, got 'vit_x'"),
        (["cache", "--slice-batch", "0"], "slice_batch (--slice-batch) must be a positive integer, got 0"),
        (["cache", "--checkpoint", "missing.pth"], "checkpoint (--checkpoint) must be null or an existing file"),
        (["cache", "--slicing-axis", "oblique"], "preprocess.slicing_axis (--slicing-axis) must be one of axial, coronal, sagittal"),
        (["cache", "--target-spacing", "1", "0", "1"], "preprocess.target_spacing (--target-spacing) must be null or three numbers > 0"),
        (["cache", "--device", "tpu"], "device (--device) must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["predict", "--window", "0"], "predict.window (--window) must be null (the training crop depth) or a positive integer, got 0"),
        (["predict", "--overlap", "1"], "predict.overlap (--overlap) must be a number in [0, 1), got 1.0"),
        (["predict", "--slice-batch", "-2"], "predict.slice_batch (--slice-batch) must be a positive integer, got -2"),
        (["demo", "--epochs", "0"], "epochs (--epochs) must be a positive integer, got 0"),
        (["evaluate", "--nsd-tolerance", "-1"], "evaluate.nsd_tolerance (--nsd-tolerance) must be a number >= 0, got -1.0"),
        # the same keys as KEY=VALUE on every command with settings (after an option of several values, too)
        (["predict", "overlap=1"], "predict.overlap (--overlap) must be a number in [0, 1), got 1.0"),
        (["predict", "predict.window=0"], "predict.window (--window) must be null"),
        (["evaluate", "nsd_tolerance=-1"], "evaluate.nsd_tolerance (--nsd-tolerance) must be a number >= 0, got -1.0"),
        (["demo", "epochs=0"], "epochs (--epochs) must be a positive integer, got 0"),
        (["cache", "preprocess.slicing_axis=oblique"], "preprocess.slicing_axis (--slicing-axis) must be one of axial, coronal, sagittal"),
        (["anatomy", "cases=0"], "cases (--cases) must be"),
        (["plan", "encoder=vit_x"], "encoder (--encoder) must be one of"),
        (["predict", "windows=2"], "windows"),
    ],
)
def test_bad_option_is_one_line_before_any_work(argv, message, tmp_path, capsys):
    """Paths point nowhere: the option must be refused before any of them is looked at."""
    paths = {
        "train": ["--cache", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")],
        "cache": ["--dataset", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")],
        "predict": ["--model", str(tmp_path / "m.pt"), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")],
        "demo": ["--out", str(tmp_path / "demo")],
        "evaluate": ["--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r")],
        "anatomy": ["--out", str(tmp_path / "a")],
        "plan": ["--dataset", str(tmp_path / "nothing"), "--out", str(tmp_path / "plan")],
    }[argv[0]]
    assert main([argv[0], *paths, *argv[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sam3dseg: error: ") and message in err[0], err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_python_construction_is_checked_too():
    with pytest.raises(UserError, match="train.epochs \\(--epochs\\) must be a positive integer, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(UserError, match=r"preprocess.percentiles must be two numbers 0 <= low < high <= 100"):
        PreprocessConfig(percentiles=(99, 1))
    with pytest.raises(UserError, match=r"train.epochs \(--epochs\) must be an integer, got 2.5"):
        from_dict(RunConfig, {"train": {"epochs": 2.5}})
    with pytest.raises(UserError, match="unknown config key"):
        from_dict(RunConfig, {"train": {"epoch": 2}})


def test_train_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    described = describe(RunConfig)
    for key, default, allowed, meaning in described:
        assert key in out and allowed in out
        assert meaning.strip() and meaning in out, f"{key} has no help line"
    # every field of every section is described (a key added without a rule and help fails here)
    config = RunConfig()
    fields = {f"{s.name}.{f.name}" for s in dataclasses.fields(config) for f in dataclasses.fields(getattr(config, s.name))}
    assert fields == {key for key, *_ in described}
    assert re.search(r"train\.epochs +50\n", out) and re.search(r"train\.steps_per_epoch +50\n", out)


@pytest.mark.parametrize(
    "argv,kind",
    [(["predict", "--window", "two"], "int"), (["cache", "--target-spacing", "1", "a", "1"], "float"),
     (["anatomy", "--cases", "1.5"], "int"), (["evaluate", "--nsd-tolerance", "one"], "float")],
)
def test_option_types_come_from_the_settings_fields(argv, kind, capsys):
    """argparse converts each option by its field's annotation (no type restated in the CLI): text that is not
    a number is refused by argparse, one line, exit 2."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and f"invalid {kind} value" in capsys.readouterr().err
