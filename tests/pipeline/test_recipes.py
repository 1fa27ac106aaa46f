"""The paper's recipes: each loads, sets what the original used, and trains a step on data of its kind."""

import pytest
from helpers import TINY_RUN, make_cache

from sam3dseg.cli import main
from sam3dseg.data.synthetic import write_dataset
from sam3dseg.pipeline.config import load_cache_config, load_run_config
from sam3dseg.pipeline.model_file import load_model_file
from sam3dseg.pipeline.planning.recipes import RECIPES, load_recipe
from sam3dseg.pipeline.training.train import run_train

CHANNELS = {"synapse": ("CT", 1), "acdc": ("MR", 1), "brats": ("MR", 4), "lung": ("CT", 1)}


def test_recipes_set_what_the_original_used():
    """The facts read from the original code: SGD 1e-2 Nesterov 0.99, wd 3e-5, poly 0.9, 1000 × 250, clip 12, fp32,
    soft Dice without background, three supervised outputs 4:2:1, 1×1×1 shortcut, LeakyReLU, nearest upsampling,
    a third of crops on foreground; the crops of each dataset."""
    crops = {"synapse": (64, 11, 2), "acdc": (16, 10, 4), "brats": (64, 4, 2), "lung": (34, 12, 2)}
    for name in RECIPES:
        c = load_run_config(None, None, name)
        t = c.train
        assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.poly_power, t.epochs, t.steps_per_epoch) == ("sgd", 0.01, 0.99, 3e-5, 0.9, 1000, 250)
        assert (t.grad_clip, t.amp, t.foreground_fraction, t.fold, t.num_folds) == (12.0, False, 0.33, 0, 5)
        assert (c.loss.dice, c.loss.include_background, c.loss.weights) == ("per_class", False, (0.0, 1.0, 2.0, 4.0))
        assert (c.decoder.shortcut_kernel, c.decoder.activation, c.decoder.upsample) == (1, "leaky_relu", "nearest")
        assert (t.crop_depth, t.crop_tokens, t.batch_size) == crops[name]
        cache = load_cache_config(None, None, name)
        assert 16 * t.crop_tokens <= cache.image_size and cache.preprocess.target_spacing is not None
        assert load_recipe(name)["differs"] and load_recipe(name)["paper"]
    # the settings reach what trains: the decoder, the loss and the optimiser built from a recipe are the original's
    import torch

    from sam3dseg.model.losses import build_loss
    from sam3dseg.pipeline.model_file import build_decoder
    from sam3dseg.pipeline.training.train import _make_optimizer

    c = load_run_config(None, None, "synapse")
    decoder = build_decoder(c.decoder, 14, 256, 1)
    assert all(b.conv0.kernel_size == (1, 1, 1) and b.upsample == "nearest" for b in decoder.blocks)
    assert all(isinstance(b.act, torch.nn.LeakyReLU) for b in decoder.blocks) and decoder.image_channels == 0
    assert build_loss(c.loss).weights == (0.0, 1.0, 2.0, 4.0)  # 4:2:1 on three outputs, the coarsest not supervised
    optimizer = _make_optimizer(decoder.parameters(), c)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and (group["lr"], group["momentum"], group["nesterov"]) == (0.01, 0.99, True)
    # explicit settings still win over the recipe
    assert load_run_config(None, ["train.epochs=3"], "synapse").train.epochs == 3
    assert load_cache_config(None, {"image_size": 256}, "synapse").image_size == 256


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_trains_a_step_on_data_of_its_kind(name, tmp_path, monkeypatch):
    """Generated data with the recipe's channel count and modality, cached at the smallest size its crop fits,
    one step with the recipe's crop shape, batch and loss (a narrow decoder, to keep it quick): the step's batch
    has the recipe's shape, its loss is a finite positive number, and the model file records the recipe."""
    import math

    import sam3dseg.pipeline.training.train as training

    modality, channels = CHANNELS[name]
    recipe = load_run_config(None, None, name)
    ds = write_dataset(tmp_path / "ds", 3, "nnunet", channels=channels, modality=modality, seed=2, depth=(12, 14), size=(40, 48))
    make_cache(ds, tmp_path / "cache", image_size=16 * (recipe.train.crop_tokens + 1))
    shapes = []
    step = training._Stepper.step
    monkeypatch.setattr(training._Stepper, "step", lambda self, batch: shapes.append(tuple(batch.features.shape)) or step(self, batch))
    config = load_run_config(None, [*TINY_RUN, "train.steps_per_epoch=1", "train.fold=all",
                                    f"train.crop_depth={recipe.train.crop_depth}"], name)  # fmt: skip
    result = run_train(tmp_path / "cache", tmp_path / "run", config, progress=False, log=None)
    t = recipe.train
    assert shapes == [(t.batch_size, 32 * channels, t.crop_depth, t.crop_tokens, t.crop_tokens)]
    loss = result["history"][0]["train_loss"]
    assert math.isfinite(loss) and loss > 0
    written = load_model_file(tmp_path / "run" / "last.pt").config
    assert (written.train.optimizer, written.train.lr, written.loss.weights) == (t.optimizer, t.lr, recipe.loss.weights)


def test_recipes_command_and_unknown_recipe(capsys, tmp_path):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: " in out for name in RECIPES) and "79.56" in out and "differs from the original" in out
    for command in (["train", "--cache", str(tmp_path), "--out", str(tmp_path / "r")], ["cache", "--dataset", str(tmp_path), "--out", str(tmp_path / "c")]):
        assert main([*command, "--recipe", "liver"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["sam3dseg: error: unknown recipe 'liver'; recipes: synapse, acdc, brats, lung (sam3dseg recipes lists them)"]
