import os

import pytest
import torch
from helpers import make_cache

from sam3dseg.model.vit import EncoderSpec

# Under pytest-xdist (`make test` runs `-n auto`) the workers share the cores: each takes its share of
# threads, so two workers on two cores do not each start two and contend.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_spec() -> EncoderSpec:
    """Two blocks (one windowed, one global), width 32: SAM's structure at toy size."""
    return EncoderSpec(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4)


@pytest.fixture(scope="session")
def generated_dataset(tmp_path_factory):
    """Six generated single-channel cases in the nnU-Net v2 layout (read-only: copy to modify)."""
    from sam3dseg.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("gen") / "Dataset001_Gen", 6, "nnunet", seed=3)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """Ten generated cases, the tiny encoder at 128², a decoder trained 3 × 15 steps.

    Returns a dict with the dataset, cache and run folders and the training result.
    """
    from sam3dseg.data.synthetic import write_dataset
    from sam3dseg.pipeline.config import load_run_config
    from sam3dseg.pipeline.training.train import run_train

    root = tmp_path_factory.mktemp("trained")
    ds = write_dataset(root / "ds", 10, "nnunet", seed=1)
    make_cache(ds, root / "cache", image_size=128)
    config = load_run_config(
        None, ["train.epochs=3", "train.steps_per_epoch=15", "train.crop_depth=8", "decoder.channels=[32,32,16,16]"]
    )
    result = run_train(root / "cache", root / "run", config, progress=False)
    return {"dataset": ds, "cache": root / "cache", "run": root / "run", "result": result, "config": config}


@pytest.fixture(scope="session")
def vit_b_model(generated_dataset, tmp_path_factory):
    """A model file made by the command line (cache with vit_b at 32², a tiny run): for `sam3dseg predict`."""
    from helpers import TINY_RUN

    from sam3dseg.cli import main

    root = tmp_path_factory.mktemp("vitb")
    assert main(["cache", "--dataset", str(generated_dataset), "--out", str(root / "c"), "--image-size", "32", "--quiet"]) == 0
    assert main(["train", "--cache", str(root / "c"), "--out", str(root / "run"), "--quiet", *TINY_RUN]) == 0
    return root / "run" / "best.pt"


def pytest_report_header(config):
    """The hardware the suite ran on, in its output: the hardware tests test what this CPU does."""
    from sam3dseg.model.precision import describe_cpu

    return f"sam3dseg hardware: {describe_cpu()}, torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}"
