"""Library calls leave the caller's global state as they found it: the random generator, matplotlib's backend."""

import subprocess
import sys

import torch
from helpers import TINY_RUN, make_cache

from sam3dseg.pipeline.config import load_run_config
from sam3dseg.pipeline.training.train import run_train


def test_training_leaves_the_global_generator_alone(generated_dataset, tmp_path):
    make_cache(generated_dataset, tmp_path / "c", image_size=32)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    run_train(tmp_path / "c", tmp_path / "r", load_run_config(None, TINY_RUN), progress=False, log=None)
    assert torch.equal(torch.rand(3), expected)


def test_pictures_never_switch_a_notebooks_matplotlib_backend(tmp_path):
    """A user's interactive session keeps its backend, and pyplot is never imported, after curves and a montage."""
    script = f"""
import sys, matplotlib, numpy as np
matplotlib.use("svg")  # stands for a notebook's inline backend
from sam3dseg.common.plots import save_curves
from sam3dseg.data.pictures import save_case_montage
from sam3dseg.data.volumes import Geometry
save_curves([{{"epoch": 1, "train_loss": 1.0, "val_dice": 0.5, "val_dice_per_class": [0.5]}}], r"{tmp_path}/c.png", ["a"])
g = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
label = np.zeros((4, 8, 8), np.uint8); label[1:3, 2:6, 2:6] = 1
save_case_montage(r"{tmp_path}/m.png", np.random.rand(4, 8, 8), "MR", g, label, label, ["background", "a"], "x")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
