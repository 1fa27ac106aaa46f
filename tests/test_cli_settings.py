"""One way to give settings: on every command that has them, a setting given as its flag, as ``KEY=VALUE`` and in a
``--config`` file resolves to the same value (flags win over ``KEY=VALUE``, which wins over the file), and the
command records the value it ran with."""

import json
import shutil

import pytest
import yaml

from sam3dseg import cli
from sam3dseg.common.settings import to_dict

# command: (its required options, the setting as a flag, as KEY=VALUE, in a YAML file, how to read it back, its value)
CASES = {
    "anatomy": (["--out", "A"], ["--cases", "3"], "cases=3", {"cases": 3}, lambda c: c.cases, 3),
    "plan": (["--dataset", "D", "--out", "P"], ["--encoder", "lite_medsam"], "encoder=lite_medsam", {"encoder": "lite_medsam"},
             lambda c: c.encoder, "lite_medsam"),
    "cache": (["--dataset", "D", "--out", "C"], ["--ct-window", "50", "350"], "preprocess.ct_window=[50,350]",
              {"preprocess": {"ct_window": [50, 350]}}, lambda c: tuple(c.preprocess.ct_window), (50.0, 350.0)),
    "train": (["--cache", "C", "--out", "R"], ["--epochs", "7"], "train.epochs=7", {"train": {"epochs": 7}}, lambda c: c.train.epochs, 7),
    "predict": (["--model", "M", "-i", "I", "-o", "O"], ["--overlap", "0.25"], "overlap=0.25", {"overlap": 0.25}, lambda c: c.overlap, 0.25),
    "evaluate": (["--pred", "P", "--ref", "R"], ["--nsd-tolerance", "2"], "nsd_tolerance=2", {"nsd_tolerance": 2},
                 lambda c: c.nsd_tolerance, 2.0),
    "demo": (["--out", "X"], ["--epochs", "3"], "epochs=3", {"epochs": 3}, lambda c: c.epochs, 3),
}  # fmt: skip


def _resolve(argv: list[str]):
    args = cli._parser().parse_args(argv)
    cli._split_overrides(args)
    return cli.resolve_settings(args)


def test_every_command_with_settings_is_covered():
    assert set(CASES) == set(cli.SETTINGS)


@pytest.mark.parametrize("command", CASES)
def test_flag_key_value_and_config_file_resolve_alike(command, tmp_path):
    required, flag, key_value, data, read, value = CASES[command]
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    default = _resolve([command, *required])
    ways = [_resolve([command, *required, *flag]), _resolve([command, *required, key_value]), _resolve([command, *required, "--config", str(config)])]
    assert [read(c) for c in ways] == [value] * 3 and read(default) != value
    assert to_dict(ways[0]) == to_dict(ways[1]) == to_dict(ways[2])


@pytest.mark.parametrize("command", CASES)
def test_flags_win_over_key_value_over_the_file(command, tmp_path):
    required, flag, key_value, data, read, value = CASES[command]
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    default = read(_resolve([command, *required]))
    other = _resolve([command, *required, "--config", str(config), _key_value_of(key_value, default)])
    assert read(other) == default  # KEY=VALUE over the file
    assert read(_resolve([command, *required, "--config", str(config), _key_value_of(key_value, default), *flag])) == value


def _key_value_of(key_value: str, value) -> str:
    shown = json.dumps(list(value) if isinstance(value, tuple) else value)
    return f"{key_value.partition('=')[0]}={shown}"


def test_a_key_value_after_several_models_is_a_setting(tmp_path):
    """``--model A B overlap=0.25``: argparse hands the KEY=VALUE to --model; it is given back as a setting."""
    args = cli._parser().parse_args(["predict", "--model", "a.pt", "b.pt", "overlap=0.25", "-i", "in", "-o", "out"])
    cli._split_overrides(args)
    assert [str(m) for m in args.model] == ["a.pt", "b.pt"] and args.overrides == ["overlap=0.25"]
    assert cli.resolve_settings(args).overlap == 0.25


@pytest.mark.slow
def test_each_command_records_the_value_it_was_given(vit_b_model, generated_dataset, tmp_path):
    """train, plan, predict and evaluate run with a setting given one way each, and their records hold it."""
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": 2}}), encoding="utf-8")
    cache = vit_b_model.parents[1] / "c"
    run = tmp_path / "run"
    tiny = [o for o in ("train.steps_per_epoch=2", "train.crop_depth=4", "decoder.channels=[8,8,8,8]")]
    assert cli.main(["train", "--cache", str(cache), "--out", str(run), "--config", str(config), "--quiet", *tiny]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["epochs"] == 2

    assert cli.main(["plan", "--dataset", str(generated_dataset), "--out", str(tmp_path / "plan"), "encoder=lite_medsam", "--quiet"]) == 0
    assert yaml.safe_load((tmp_path / "plan" / "plan.yaml").read_text(encoding="utf-8"))["cache"]["encoder"] == "lite_medsam"

    images = tmp_path / "images"
    images.mkdir()
    case = sorted((generated_dataset / "imagesTr").iterdir())[0]
    shutil.copy(case, images / case.name)
    preds = tmp_path / "preds"
    assert cli.main(["predict", "--model", str(vit_b_model), "-i", str(images), "-o", str(preds), "--overlap", "0.25", "--quiet"]) == 0
    assert json.loads((preds / "predict.json").read_text(encoding="utf-8"))["overlap"] == 0.25

    refs = tmp_path / "refs"
    refs.mkdir()
    label = case.name.replace("_0000", "")
    shutil.copy(generated_dataset / "labelsTr" / label, refs / label)
    assert cli.main(["evaluate", "--pred", str(preds), "--ref", str(refs), "--out", str(tmp_path / "ev"), "predict.nsd_tolerance=2"]) == 2
    assert cli.main(["evaluate", "--pred", str(preds), "--ref", str(refs), "--out", str(tmp_path / "ev"), "evaluate.nsd_tolerance=2", "--quiet"]) == 0
    assert json.loads((tmp_path / "ev" / "sam3dseg_summary.json").read_text(encoding="utf-8"))["nsd_tolerance_mm"] == 2


@pytest.mark.parametrize(
    "argv,read,value,note",
    [
        (["cache", "--dataset", "D", "--out", "C", "--views", "2"], lambda c: c.augment.copies, 2, "--views is now --augmented-copies"),
        (["cache", "--dataset", "D", "--out", "C", "augment.views=2"], lambda c: c.augment.copies, 2, "augment.views is now augment.copies"),
        (["train", "--cache", "C", "--out", "R", "decoder.image_path=false"], lambda c: c.decoder.pixel_skip, False,
         "decoder.image_path is now decoder.pixel_skip"),
        (["train", "--cache", "C", "--out", "R", "--config", "{file}"], lambda c: c.train.augmented_copies, 1, "train.views is now train.augmented_copies"),
    ],
)  # fmt: skip
def test_old_names_still_work_with_a_one_line_note(argv, read, value, note, tmp_path, caplog):
    file = tmp_path / "old.yaml"
    file.write_text("train:\n  views: 1\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        config = _resolve([a.format(file=file) for a in argv])
    assert read(config) == value
    assert [r.getMessage() for r in caplog.records] == [f"{note} (the old name still works)"]


def test_old_and_new_name_together_are_refused(tmp_path):
    file = tmp_path / "both.yaml"
    file.write_text("decoder:\n  image_path: false\n  pixel_skip: true\n", encoding="utf-8")
    with pytest.raises(cli.UserError, match="decoder.image_path and decoder.pixel_skip are one setting"):
        _resolve(["train", "--cache", "C", "--out", "R", "--config", str(file)])
