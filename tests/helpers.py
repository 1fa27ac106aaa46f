"""Helpers the tests share: tiny encoders, a cache built with one, a model file around a small decoder.

Importable from every test folder (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from sam3dseg.data.preprocess import PreprocessConfig
from sam3dseg.model.registry import EncoderInfo
from sam3dseg.model.vit import EncoderSpec, SAMImageEncoder
from sam3dseg.pipeline.config import load_run_config
from sam3dseg.pipeline.model_file import ModelFile, build_decoder

# A run that trains in a second: one epoch of two steps on 4-slice crops with a narrow decoder. Tests
# add or override keys after it (the last value of a key wins).
TINY_RUN = ["train.epochs=1", "train.steps_per_epoch=2", "train.crop_depth=4", "decoder.channels=[8,8,8,8]"]

TINY_SPEC = EncoderSpec(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, out_chans=32)


def tiny_encoder(image_size: int = 64, seed: int = 0) -> SAMImageEncoder:
    """A two-block SAM-structured encoder (one windowed, one global block) with 32 output channels."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SAMImageEncoder(TINY_SPEC, image_size=image_size, name="tiny")


def make_cache(dataset_dir, cache_dir, image_size: int = 64, seed: int = 0, preprocess=None, precision: str = "fp32", **kwargs):
    """Encode a dataset folder with the tiny encoder (in ``precision``); returns the build summary."""
    from sam3dseg.data.datasets import load_dataset
    from sam3dseg.model.registry import set_precision
    from sam3dseg.pipeline.caching.cache import build_cache

    enc = set_precision(tiny_encoder(image_size, seed), precision)
    info = EncoderInfo.of(enc, None)
    return build_cache(load_dataset(dataset_dir), cache_dir, enc, info, preprocess or PreprocessConfig(), progress=False, **kwargs)


def tiny_model_file(
    preprocess: PreprocessConfig = PreprocessConfig(),
    image_size: int = 64,
    crop_depth: int = 4,
    seed: int = 0,
    channels: tuple = ("MR",),
    image_path: bool = False,
) -> ModelFile:
    """A model file around an untrained small decoder (32 feature channels per image channel, K = 3)."""
    run = load_run_config(None, [*TINY_RUN, f"train.crop_depth={crop_depth}", f"decoder.pixel_skip={str(image_path).lower()}"])
    torch.manual_seed(seed)
    encoder = EncoderInfo.of(tiny_encoder(image_size), None)
    decoder = build_decoder(run.decoder, 3, 32 * len(channels), len(channels))
    return ModelFile(run, ["background", "a", "b"], list(channels), preprocess, encoder, 32 * len(channels), decoder.state_dict())


def drop_images(cache, names):
    """Make cached cases look as an older sam3dseg wrote them: no image in the record or its .json."""
    for name in names:
        path = cache / "cases" / f"{name}.pt"
        record = torch.load(path, weights_only=True)
        del record["image"]
        torch.save(record, path)
        meta = json.loads((cache / "cases" / f"{name}.json").read_text())
        del meta["image"]
        (cache / "cases" / f"{name}.json").write_text(json.dumps(meta))


def free_port() -> int:
    """A TCP port free on this machine now, for torchrun's rendezvous (a fixed one collides with anything
    else running here, another test session included)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_script(path: Path):
    """A script that is no package module (``bench/X.py``, ``docs/make_cli.py``) loaded by its path, with its own
    folder importable while it loads (the benches import ``_shared``)."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
