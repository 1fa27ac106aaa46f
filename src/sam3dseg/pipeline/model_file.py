"""The model file (``RUN/last.pt``, ``RUN/best.pt``): one versioned record, written by training, read by prediction.

A model file carries everything prediction needs, so a model is rebuilt from the
file alone (nanoGPT's checkpoint dict): the run configuration, the decoder
weights, the class and channel names, the preprocessing, the identity of the
encoder whose features it was trained on (:class:`~sam3dseg.model.encoder.EncoderInfo`),
and, for resuming, the optimiser and schedule states and the history. On disk it
is a dict of tensors and plain types (``torch.save``), loaded ``weights_only``::

    {"format": "sam3dseg-model", "version": 5, "epoch", "decoder", "optimizer",
     "scheduler", "config", "class_names", "channel_names", "preprocess", "encoder",
     "feature_channels", "history", "best_dice", "split", "postprocess", "fingerprint"}

``fingerprint`` (the training data's spacing and intensity ranges, which ``predict`` compares
new input with) is absent from files written before it was kept, and reads as None.
``encoder`` is :meth:`EncoderInfo.to_dict`; records written before the encoder interface
have no ``stride`` / ``normalisation`` and read as SAM's ViT (16, ``sam``).

:func:`load_model_file` checks the marker and the version; a file of an older
version is brought up to date by the functions in ``_MIGRATIONS``, one version
step each, so that every model file ever written keeps loading.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..common.files import load_tensors, save_tensors, tensors_sha256, upgrade
from ..common.settings import from_dict, renamed, to_dict
from ..data.preprocess import PreprocessConfig
from ..errors import UserError
from ..model.decoder import SAM3DDecoder
from ..model.registry import EncoderInfo
from .config import DecoderConfig, RunConfig, resolve_grid_stride

MODEL_FORMAT = "sam3dseg-model"
MODEL_VERSION = 5


def _v1_to_v2(state: dict) -> dict:
    """Version 2 changed three defaults (the training recipe of bench/recipes.py). A version-1 file
    that leaves one of these keys out was trained with the old default, so it is written in."""
    config = state["config"]
    config.setdefault("decoder", {}).setdefault("image_path", False)
    config.setdefault("loss", {}).setdefault("dice", "joint")
    config.setdefault("train", {}).setdefault("foreground_fraction", 0.0)
    return state


def _v2_to_v3(state: dict) -> dict:
    """Version 3 records ``train.views``, the augmented views training drew among (the default, null,
    is resolved to the cache's number when training starts; earlier files were trained on
    originals), ``split``, the run's training and validation cases, and ``postprocess``, the
    post-processing decided on validation (both None in earlier files)."""
    state["config"].setdefault("train", {}).setdefault("views", 0)
    return state


def _v3_to_v4(state: dict) -> dict:
    """Version 4 records ``decoder.grid_stride``, the grid block 1 reads; earlier decoders read the encoder's own."""
    stride = state.get("encoder", {}).get("stride", 16)
    state["config"].setdefault("decoder", {}).setdefault("grid_stride", stride)
    return state


def _v4_to_v5(state: dict) -> dict:
    """Version 5 names two settings for what they are: ``decoder.image_path`` is ``decoder.pixel_skip`` (a skip
    connection from the pixels) and ``train.views`` is ``train.augmented_copies`` (not anatomical views)."""
    state["config"] = renamed(RunConfig, state["config"])
    return state


# version v -> function turning a v state dict into a v + 1 one.
_MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5}


def build_decoder(config: DecoderConfig, num_classes: int, in_channels: int, image_channels: int, stride: int = 16) -> SAM3DDecoder:
    """The decoder a run configuration describes, for ``num_classes`` classes, ``in_channels`` features,
    ``image_channels`` image channels (used with ``config.pixel_skip`` only) and an encoder of output ``stride``
    (``config.grid_stride`` auto resolved for it)."""
    joined = image_channels if config.pixel_skip else 0
    grid = resolve_grid_stride(config.grid_stride, stride)
    return SAM3DDecoder(num_classes, in_channels, config.channels, config.shortcut_kernel, config.activation, config.upsample, joined, stride, grid)


@dataclass
class ModelFile:
    """A trained (or training) model, as written to and read from disk."""

    config: RunConfig
    class_names: list[str]
    channel_names: list[str]
    preprocess: PreprocessConfig
    encoder: EncoderInfo
    feature_channels: int
    decoder: dict[str, Tensor]  # the decoder's state dict
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_dice: float = -1.0
    optimizer: dict | None = None  # for resuming
    scheduler: dict | None = None
    split: dict[str, list[str]] | None = None  # {"train": [...], "val": [...]}: the cases of the run (train.fold)
    postprocess: dict | None = None  # the decision of pipeline.postprocessing (Postprocess.to_dict), once made
    fingerprint: dict | None = None  # the training data's spacing and intensity ranges (data.fingerprint.combine)

    def build_decoder(self) -> SAM3DDecoder:
        """The decoder with these weights loaded (on the CPU, in training mode)."""
        decoder = build_decoder(self.config.decoder, len(self.class_names), self.feature_channels, len(self.channel_names), self.encoder.stride)
        decoder.load_state_dict(self.decoder)
        return decoder

    def to_state(self) -> dict:
        """The on-disk dict (module docstring): tensors and plain types only."""
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "epoch": self.epoch,
            "decoder": self.decoder,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "config": to_dict(self.config),
            "class_names": list(self.class_names),
            "channel_names": list(self.channel_names),
            "preprocess": to_dict(self.preprocess),
            "encoder": self.encoder.to_dict(),
            "feature_channels": self.feature_channels,
            "history": self.history,
            "best_dice": self.best_dice,
            "split": self.split,
            "postprocess": self.postprocess,
            "fingerprint": self.fingerprint,
        }

    def digest(self) -> str:
        """SHA-256 of what predictions depend on: the decoder's weights, the settings, classes, channels,
        preprocessing, encoder and post-processing decision (not the optimiser, history or epoch)."""
        keys = ("config", "class_names", "channel_names", "preprocess", "encoder", "feature_channels", "postprocess")
        state = self.to_state()
        settings = json.dumps({k: state[k] for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(f"{tensors_sha256(self.decoder)}{settings}".encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (same bytes for the same content)."""
        return save_tensors(self.to_state(), path)

    @classmethod
    def from_state(cls, state: dict, source: str = "model file") -> ModelFile:
        """Read back a dict written by :meth:`to_state` (after :func:`migrate`); ``source`` names it in messages."""
        try:
            return cls(
                config=from_dict(RunConfig, state["config"]),
                class_names=list(state["class_names"]),
                channel_names=list(state["channel_names"]),
                preprocess=from_dict(PreprocessConfig, state["preprocess"], "preprocess."),
                encoder=EncoderInfo.from_dict(state["encoder"]),
                feature_channels=int(state["feature_channels"]),
                decoder=state["decoder"],
                epoch=int(state.get("epoch", 0)),
                history=list(state.get("history", [])),
                best_dice=float(state.get("best_dice", -1.0)),
                optimizer=state.get("optimizer"),
                scheduler=state.get("scheduler"),
                split=state.get("split"),
                postprocess=state.get("postprocess"),
                fingerprint=state.get("fingerprint"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{source} is damaged: a sam3dseg model file without a valid {err} entry") from err


def migrate(state: dict, source: str = "model file") -> dict:
    """Bring a model-file dict of any version this code knows up to :data:`MODEL_VERSION`."""
    return upgrade(state, MODEL_VERSION, _MIGRATIONS, "model format", source)


def load_model_file(path: str | Path) -> ModelFile:
    """A ``last.pt`` / ``best.pt``, loaded ``weights_only``, its marker and version checked.

    Raises:
        UserError: not a readable file, not a sam3dseg model file, or a format
            version this code does not know.
    """
    state = load_tensors(path, "sam3dseg model file")
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise UserError(f"{path} is not a sam3dseg model file (no '{MODEL_FORMAT}' marker)")
    return ModelFile.from_state(migrate(state, str(path)), str(path))
