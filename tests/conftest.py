import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # for sam_reference

from sam3dseg.encoder import EncoderSpec


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_spec() -> EncoderSpec:
    """Two blocks (one windowed, one global), width 32: SAM's structure at toy size."""
    return EncoderSpec(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4)


def tiny_encoder(image_size: int = 64, seed: int = 0):
    """A two-block SAM-structured encoder with 32 output channels (fast on CPU)."""
    from sam3dseg.encoder import SAMImageEncoder

    spec = EncoderSpec(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, out_chans=32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SAMImageEncoder(spec, image_size=image_size, name="tiny")


def make_cache(dataset_dir, cache_dir, image_size: int = 64, seed: int = 0, preprocess=None, **kwargs):
    """Encode a dataset folder with the tiny encoder; returns the build summary."""
    from sam3dseg.cache import EncoderInfo, build_cache
    from sam3dseg.dataset import load_dataset
    from sam3dseg.preprocess import PreprocessConfig

    enc = tiny_encoder(image_size, seed)
    info = EncoderInfo.of(enc, None)
    return build_cache(load_dataset(dataset_dir), cache_dir, enc, info, preprocess or PreprocessConfig(), progress=False, **kwargs)


@pytest.fixture(scope="session")
def generated_dataset(tmp_path_factory):
    """Six generated single-channel cases in the nnU-Net v2 layout (read-only: copy to modify)."""
    from sam3dseg.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("gen") / "Dataset001_Gen", 6, "nnunet", seed=3)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """Ten generated cases, the tiny encoder at 128², a decoder trained 3 × 15 steps.

    Returns a dict with the dataset, cache and run folders and the training result.
    """
    from sam3dseg.config import load_run_config
    from sam3dseg.synthetic import write_dataset
    from sam3dseg.train import train

    root = tmp_path_factory.mktemp("trained")
    ds = write_dataset(root / "ds", 10, "nnunet", seed=1)
    make_cache(ds, root / "cache", image_size=128)
    config = load_run_config(
        None, ["train.epochs=3", "train.steps_per_epoch=15", "train.crop_depth=8", "decoder.channels=[32,32,16,16]"]
    )
    result = train(root / "cache", root / "run", config, progress=False)
    return {"dataset": ds, "cache": root / "cache", "run": root / "run", "result": result, "config": config}
