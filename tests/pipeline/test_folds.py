"""Cross-validation folds: nnU-Net's splits, made once and then read as they are; fold=all."""

import json
import re

import pytest
from helpers import TINY_RUN, make_cache

from sam3dseg.cli import main
from sam3dseg.errors import UserError
from sam3dseg.pipeline.config import load_run_config
from sam3dseg.pipeline.model_file import load_model_file
from sam3dseg.pipeline.training.folds import make_splits, select_cases
from sam3dseg.pipeline.training.train import run_train

SMALL = TINY_RUN
NAMES = [f"case_{i:03d}" for i in range(6)]


@pytest.mark.parametrize(("n", "k"), [(6, 5), (10, 5), (23, 5), (7, 3), (4, 2)])
def test_splits_are_nnunets(n, k):
    """Disjoint validation sets that cover every case once, training = the rest, sorted, deterministic,
    and the same membership as nnU-Net's call, sklearn's KFold(k, shuffle=True, random_state=12345)
    on the sorted names."""
    from sklearn.model_selection import KFold

    names = [f"c{i:02d}" for i in reversed(range(n))]  # given unsorted
    splits = make_splits(names, k)
    assert splits == make_splits(sorted(names), k) and len(splits) == k
    assert sorted(n for s in splits for n in s["val"]) == sorted(names)
    for s in splits:
        assert s["train"] == sorted(set(names) - set(s["val"])) and s["val"] == sorted(s["val"])
    reference = [sorted(sorted(names)[i] for i in val) for _, val in KFold(k, shuffle=True, random_state=12345).split(sorted(names))]
    assert [s["val"] for s in splits] == reference


@pytest.fixture
def cache(generated_dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("folds") / "cache"
    make_cache(generated_dataset, path, image_size=32)
    return path


def test_a_fold_writes_the_splits_once_and_trains_on_them(cache, tmp_path):
    result = run_train(cache, tmp_path / "f1", load_run_config(None, [*SMALL, "train.fold=1", "train.num_folds=3"]), progress=False)
    splits = json.loads((cache / "splits_final.json").read_text(encoding="utf-8"))
    assert splits == make_splits(NAMES, 3)
    assert (result["train_cases"], result["val_cases"]) == (splits[1]["train"], splits[1]["val"])
    record = load_model_file(tmp_path / "f1" / "best.pt")
    assert record.config.train.fold == 1 and record.split == splits[1]
    # the file is read as it is from now on: another num_folds does not remake it
    assert select_cases(cache, NAMES, 2, 5, 0.2) == (splits[2]["train"], splits[2]["val"], 3)
    assert json.loads((cache / "splits_final.json").read_text(encoding="utf-8")) == splits


def test_a_users_splits_are_honoured(cache, tmp_path):
    mine = [{"train": NAMES[2:], "val": NAMES[:2]}, {"train": ["case_005", "case_000"], "val": ["case_003"]}]
    (cache / "splits_final.json").write_text(json.dumps(mine), encoding="utf-8")
    said = []
    result = run_train(cache, tmp_path / "f1", load_run_config(None, [*SMALL, "train.fold=1"]), progress=False, log=said.append)
    assert result["train_cases"] == ["case_000", "case_005"] and result["val_cases"] == ["case_003"]
    # the file's 2 folds are the run's, recorded and said (train.num_folds=5, the default, shapes only a new file)
    assert load_model_file(tmp_path / "f1" / "best.pt").config.train.num_folds == 2
    assert any(line.startswith("using the 2 folds of") for line in said)
    assert json.loads((cache / "splits_final.json").read_text(encoding="utf-8")) == mine


def test_fold_all_trains_on_every_case_without_validation(cache, tmp_path, capsys):
    code = main(["train", "--cache", str(cache), "--out", str(tmp_path / "all"), "--quiet", *SMALL, "train.fold=all"])
    assert code == 0
    assert "no validation cases (train.fold=all)" in capsys.readouterr().out
    record = load_model_file(tmp_path / "all" / "best.pt")
    assert record.split == {"train": NAMES, "val": []} and record.history[-1]["val_dice"] is None
    assert not (cache / "splits_final.json").exists()  # fold=all needs no splits


@pytest.mark.parametrize(
    ("splits", "fold", "message"),
    [
        (None, "7", "train.fold=7 but .*splits_final.json has 5 folds: give 0..4 or all"),
        (None, "-1", r"train.fold \(--fold\) must be null, an integer >= 0 or all, got -1"),
        (None, "some", r"train.fold \(--fold\) must be null, an integer >= 0 or all, got 'some'"),
        ("{broken", "0", "splits_final.json is not valid JSON"),
        ('{"train": []}', "0", "is not a list of .*nnU-Net's splits_final.json"),
        ('[{"train": ["case_000"], "val": "case_001"}]', "0", "is not a list of"),
        ('[{"train": ["case_000", "case_099", "liver_7"], "val": ["case_001"]}]', "0", "fold 0 names case.s. the cache does not hold: case_099, liver_7"),
        ('[{"train": [], "val": ["case_001"]}]', "0", "fold 0 has no training cases"),
    ],
)
def test_bad_folds_and_splits_are_one_line_exit_2(cache, tmp_path, capsys, splits, fold, message):
    if splits is not None:
        (cache / "splits_final.json").write_text(splits, encoding="utf-8")
    code = main(["train", "--cache", str(cache), "--out", str(tmp_path / "run"), "--quiet", *SMALL, f"train.fold={fold}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_too_few_cases_for_the_folds(cache):
    with pytest.raises(UserError, match="7 folds need at least 7 cases; the cache has 6"):
        select_cases(cache, NAMES, 0, 7, 0.2)
    assert not (cache / "splits_final.json").exists()
