"""nnU-Net's workflow end to end on generated data: 3 folds -> post-processing -> ensemble predict -> evaluate."""

import json
import shutil

import numpy as np
import pytest
from helpers import make_cache, tiny_encoder

from sam3dseg.data.synthetic import write_dataset
from sam3dseg.pipeline.config import PredictConfig, load_run_config
from sam3dseg.pipeline.evaluation.evaluate import run_evaluate
from sam3dseg.pipeline.inference.predict import run_predict
from sam3dseg.pipeline.inference.predictor import Predictor
from sam3dseg.pipeline.model_file import load_model_file
from sam3dseg.pipeline.postprocessing.postprocess import run_postprocess
from sam3dseg.pipeline.training.train import run_train


@pytest.mark.slow
def test_three_folds_postprocessing_ensemble_evaluate(tmp_path):
    """Nine training cases in three folds, two unseen test cases. Every stage's Dice is printed (run with -s):
    each fold's validation Dice, the post-processing decided over all folds, each fold alone and the ensemble
    on the test cases. The ensemble is at least as good as the mean of the folds alone, and good."""
    data = write_dataset(tmp_path / "all", 11, "nnunet", seed=21)
    train_ds, test = tmp_path / "Dataset003_Train", tmp_path / "test"
    shutil.copytree(data, train_ds)
    for folder in ("images", "labels"):
        (test / folder).mkdir(parents=True)
    for case in ("case_009", "case_010"):  # held out of every fold
        shutil.move(train_ds / "imagesTr" / f"{case}_0000.nii.gz", test / "images" / f"{case}_0000.nii.gz")
        shutil.move(train_ds / "labelsTr" / f"{case}.nii.gz", test / "labels" / f"{case}.nii.gz")
    meta = json.loads((train_ds / "dataset.json").read_text(encoding="utf-8"))
    (train_ds / "dataset.json").write_text(json.dumps({**meta, "numTraining": 9}), encoding="utf-8")  # without the held-out two
    make_cache(train_ds, tmp_path / "cache", image_size=64)
    runs = [tmp_path / f"fold_{k}" for k in range(3)]
    stages = {}
    for k, run in enumerate(runs):
        config = load_run_config(None, [f"train.fold={k}", "train.num_folds=3", "train.epochs=3", "train.steps_per_epoch=15",
                                        "train.crop_depth=8", "decoder.channels=[32,32,16,16]"])  # fmt: skip
        stages[f"fold {k} validation"] = run_train(tmp_path / "cache", run, config, progress=False, log=None)["best_dice"]
    assert sorted(n for r in runs for n in load_model_file(r / "best.pt").split["val"]) == [f"case_{i:03d}" for i in range(9)]

    decision = run_postprocess(runs, log=lambda _: None)
    stages["post-processing (all folds)"] = f"{decision.to_dict()}"
    members = [load_model_file(r / "best.pt") for r in runs]
    for k, member in enumerate(members):
        out = tmp_path / f"pred_{k}"
        run_predict(Predictor(member, tiny_encoder(64)), test / "images", out, progress=False)
        stages[f"fold {k} alone, test"] = run_evaluate(out, test / "labels", out, progress=False, log=None)["mean_dice"]
    for name, post in (("ensemble, test, raw", False), ("ensemble, test, post-processed", True)):
        out = tmp_path / name.replace(", ", "_").replace(" ", "_")
        run_predict(Predictor(members, tiny_encoder(64), PredictConfig(postprocess=post)), test / "images", out, progress=False)
        stages[name] = run_evaluate(out, test / "labels", out, progress=False, log=None)["mean_dice"]
    for stage, value in stages.items():
        print(f"{stage:<34} {value if isinstance(value, str) else f'{value:.4f}'}")
    alone = [stages[f"fold {k} alone, test"] for k in range(3)]
    assert stages["ensemble, test, raw"] >= np.mean(alone) - 0.01
    assert stages["ensemble, test, post-processed"] >= 0.8
