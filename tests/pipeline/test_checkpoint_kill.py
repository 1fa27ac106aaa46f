"""Saving a checkpoint in an order that any kill leaves consistent: last.pt, best.pt and validation/ agree after a
kill at each write of an epoch's save, and the resumed run ends where an uninterrupted one does."""

import os
import shutil

import pytest
import torch
from helpers import TINY_RUN, make_cache

from sam3dseg.pipeline.config import load_run_config
from sam3dseg.pipeline.model_file import load_model_file
from sam3dseg.pipeline.postprocessing.postprocess import load_validation, validation_folder
from sam3dseg.pipeline.training.train import run_train

SETTINGS = [*TINY_RUN, "train.steps_per_epoch=4", "decoder.pixel_skip=false"]


class Killed(BaseException):
    """What a kill looks like to the code: nothing after it runs (not an Exception: no handler catches it)."""


def _config(epochs: int):
    return load_run_config(None, [*SETTINGS, f"train.epochs={epochs}"])


def _consistent(run, val_cases: int) -> None:
    """best.pt's epoch has its validation predictions, whole; last.pt's best Dice is best.pt's, or best.pt is the
    epoch a kill interrupted (ahead of last.pt, which the resumed run replays)."""
    if not (run / "best.pt").exists():
        assert not (run / "last.pt").exists()
        return
    best = load_model_file(run / "best.pt")
    assert len(list(validation_folder(run, best.epoch).glob("*.npz"))) == val_cases
    assert len(load_validation(run)) == val_cases
    last = load_model_file(run / "last.pt")
    if best.epoch <= last.epoch:
        assert last.best_dice == best.best_dice
    else:
        assert best.best_dice >= last.best_dice and best.epoch == last.epoch + 1


@pytest.fixture(scope="module")
def reference(generated_dataset, tmp_path_factory):
    """One epoch trained, and the same run continued to a second, uninterrupted; the second epoch must improve."""
    root = tmp_path_factory.mktemp("kill")
    make_cache(generated_dataset, root / "cache", image_size=32)
    run_train(root / "cache", root / "one", _config(1), progress=False, log=None)
    shutil.copytree(root / "one", root / "two")
    run_train(root / "cache", root / "two", _config(2), progress=False, log=None)
    history = load_model_file(root / "two" / "last.pt").history
    assert history[1]["val_dice"] > history[0]["val_dice"]  # the save under test writes a new best.pt
    return root


@pytest.mark.slow
def test_a_kill_at_each_write_leaves_the_checkpoints_consistent(reference, monkeypatch):
    root = reference
    final = load_model_file(root / "two" / "best.pt")
    writes = 0
    while True:
        run = root / f"killed_{writes}"
        shutil.copytree(root / "one", run)
        count = {"n": 0}
        real = os.replace

        def replace(src, dst, *args, **kwargs):  # every write commits by a rename: kill before the n-th
            if count["n"] == writes:
                raise Killed
            count["n"] += 1
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
        try:
            run_train(root / "cache", run, _config(2), progress=False, log=None)
            finished = True
        except Killed:
            finished = False
        monkeypatch.setattr(os, "replace", real)
        _consistent(run, len(final.split["val"]))
        run_train(root / "cache", run, _config(2), progress=False, log=None)  # resumed
        _consistent(run, len(final.split["val"]))
        best = load_model_file(run / "best.pt")
        assert best.epoch == final.epoch and best.best_dice == final.best_dice
        assert all(torch.equal(best.decoder[k], final.decoder[k]) for k in final.decoder)
        if finished:
            break
        writes += 1
    assert writes >= 5  # config.yaml, validation, best.pt, last.pt, log.csv, ... each killed once
