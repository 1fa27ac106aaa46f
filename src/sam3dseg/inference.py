"""Predict new volumes: encode slices, decode in overlapping depth windows, map back exactly.

For one volume: preprocess as recorded in the model file, encode every slice with
the frozen encoder, run the decoder over depth windows whose finest-level softmax
outputs are blended with a Gaussian weight along depth, and stream the blended
model-grid slices back onto the file's grid (bilinear in-plane, linear along depth,
the same trilinear map as :func:`sam3dseg.preprocess.restore_probabilities`),
taking the argmax there. Only the slices that a window still covers are held at
model resolution, so memory does not grow with the number of slices beyond the
features and the uint8 result.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import file_sha256, weights_sha256
from .config import RunConfig, from_dict
from .decoder import SAM3DDecoder
from .encoder import ENCODERS, SAMImageEncoder, build_encoder, encode_slices
from .errors import UserError
from .io import Geometry
from .preprocess import PreprocessConfig, Transform, preprocess_image, unreorient
from .train import build_decoder, load_model_file, resolve_device


@dataclass
class PredictConfig:
    """How a volume is predicted; ``window=None`` takes the training crop depth."""

    window: int | None = None  # slices per decoder pass
    overlap: float = 0.5  # fraction of a window shared with the next
    flip_tta: bool = False  # also predict the depth-flipped volume and average
    slice_batch: int = 8  # slices per encoder batch
    device: str = "auto"


def gaussian_weights(window: int) -> Tensor:
    """Importance of each slice of a window, ``(window,)``: a Gaussian, σ = window/8, peak 1.

    Centre slices see the most context; the tails are clamped at 1e-3 so a border
    slice covered by one window only still gets its prediction.
    """
    centre, sigma = (window - 1) / 2, window / 8
    w = torch.exp(-((torch.arange(window) - centre) ** 2) / (2 * sigma**2))
    return (w / w.max()).clamp_min(1e-3)


def window_starts(depth: int, window: int, overlap: float) -> list[int]:
    """Start slices of windows covering ``0..depth-1``; the last one ends at the last slice."""
    if depth <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    starts = list(range(0, depth - window + 1, step))
    if starts[-1] != depth - window:
        starts.append(depth - window)
    return starts


class Predictor:
    """A trained decoder with its frozen encoder and recorded preprocessing."""

    def __init__(self, state: dict, encoder: SAMImageEncoder, config: PredictConfig | None = None) -> None:
        """
        Args:
            state: a model file's content (:func:`sam3dseg.train.load_model_file`).
            encoder: the encoder the model was trained on (see :func:`load_predictor`).
            config: window, overlap, test-time augmentation, device.
        """
        config = config or PredictConfig()
        run: RunConfig = from_dict(RunConfig, state["config"])
        self.device = resolve_device(config.device)
        self.config = config
        self.window = config.window or run.train.crop_depth
        if self.window < 1 or not 0 <= config.overlap < 1:
            raise UserError(f"window must be >= 1 and overlap in [0, 1), got {self.window} and {config.overlap}")
        self.class_names: list[str] = state["class_names"]
        self.channel_names: list[str] = state["channel_names"]
        self.preprocess = PreprocessConfig(**state["preprocess"])
        self.image_size = int(state["encoder"]["image_size"])
        self.encoder = encoder.to(self.device)
        self.decoder: SAM3DDecoder = build_decoder(run, len(self.class_names), state["feature_channels"])
        self.decoder.load_state_dict(state["decoder"])
        self.decoder.to(self.device).eval()
        self._weights = gaussian_weights(self.window).to(self.device)

    @torch.no_grad()
    def encode(self, volume: np.ndarray) -> Tensor:
        """``(C, D', H', W')`` grey values -> features ``(256·C, D', S/16, S/16)`` on the device."""
        feats = []
        for channel in torch.from_numpy(volume):
            f = encode_slices(self.encoder, channel.to(self.device), batch_size=self.config.slice_batch)
            feats.append(f.transpose(0, 1))
        return torch.cat(feats)

    @torch.no_grad()
    def _window_probs(self, features: Tensor, start: int) -> Tensor:
        """Softmax of the finest output for slices ``start .. start+window`` -> ``(K, n, S, S)``."""
        # A volume shorter than the window is decoded whole, unpadded: the decoder is fully
        # convolutional, and this keeps "window covers the volume" equal to one plain pass.
        chunk = features[:, start : start + self.window]
        probs = torch.softmax(self.decoder(chunk[None].float())[-1][0].float(), dim=0)
        if self.config.flip_tta:
            flipped = torch.softmax(self.decoder(chunk.flip(1)[None].float())[-1][0].float(), dim=0).flip(1)
            probs = (probs + flipped) / 2
        return probs

    @torch.no_grad()
    def model_slices(self, features: Tensor, valid_hw: tuple[int, int]) -> Iterator[Tensor]:
        """Blend the windows and yield each model-grid slice's class probabilities ``(K, H', W')`` in order."""
        depth = features.shape[1]
        h, w = valid_hw
        starts = window_starts(depth, self.window, self.config.overlap)
        acc: dict[int, Tensor] = {}
        weight: dict[int, float] = {}
        done = 0
        for i, start in enumerate(starts):
            probs = self._window_probs(features, start)[:, :, :h, :w]
            for j in range(probs.shape[1]):
                z, g = start + j, float(self._weights[j])
                acc[z] = acc[z] + g * probs[:, j] if z in acc else g * probs[:, j]
                weight[z] = weight.get(z, 0.0) + g
            final = starts[i + 1] if i + 1 < len(starts) else depth  # no later window reaches below this
            for z in range(done, final):
                yield acc.pop(z) / weight.pop(z)
            done = final

    @torch.no_grad()
    def predict_array(self, array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Transform]:
        """A read volume ``(z, y, x)`` or ``(C, z, y, x)`` -> uint8 labels on its own grid ``(z, y, x)``."""
        channels = 1 if array.ndim == 3 else array.shape[0]
        if channels != len(self.channel_names):
            raise UserError(
                f"the volume has {channels} channel(s) but the model was trained on {len(self.channel_names)} "
                f"({', '.join(self.channel_names)})"
            )
        volume, t = preprocess_image(array, geometry, self.channel_names, self.preprocess, self.image_size)
        features = self.encode(volume)
        slices = self.model_slices(features, t.model_shape[1:])
        oriented = _stream_to_grid(slices, t)
        return np.ascontiguousarray(unreorient(oriented, t)), t


def _stream_to_grid(slices: Iterator[Tensor], t: Transform) -> np.ndarray:
    """Model-grid probability slices (in order) -> argmax labels on the oriented grid ``(D, H, W)``.

    In-plane: bilinear to ``(H, W)``; along depth: linear with ``align_corners=False``,
    i.e. output slice z reads model position ``(z + 0.5)·D'/D - 0.5``. Together that is
    the trilinear map of ``restore_probabilities``, computed two slices at a time.
    """
    d_model = t.model_shape[0]
    d, h, w = t.oriented_shape
    out = np.zeros((d, h, w), dtype=np.uint8)
    held: dict[int, Tensor] = {}
    source = iter(slices)
    next_index = 0

    def get(j: int) -> Tensor:
        nonlocal next_index
        while next_index <= j:
            s = next(source)
            if s.shape[-2:] != (h, w):
                s = F.interpolate(s[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            held[next_index] = s
            next_index += 1
        return held[j]

    scale = d_model / d
    for z in range(d):
        pos = max((z + 0.5) * scale - 0.5, 0.0)
        j0 = min(int(math.floor(pos)), d_model - 1)
        j1 = min(j0 + 1, d_model - 1)
        frac = pos - j0
        p = get(j0) if frac == 0 or j1 == j0 else (1 - frac) * get(j0) + frac * get(j1)
        out[z] = p.argmax(0).to(torch.uint8).cpu().numpy()
        for old in [k for k in held if k < j0]:
            del held[old]
    return out


def load_predictor(model: str | Path, checkpoint: str | Path | None = None, config: PredictConfig | None = None) -> Predictor:
    """Rebuild the encoder a model was trained on, check it is the same one, and wrap both.

    Raises:
        UserError: not a sam3dseg model file; the SAM checkpoint is missing or is not
            the one the model's features came from.
    """
    state = load_model_file(model)
    info = state["encoder"]
    if info["name"] not in ENCODERS:
        raise UserError(f"{model} was trained on a custom encoder ({info['name']}); use the Python API")
    recorded = info["checkpoint_sha256"]
    if recorded.startswith("weights:"):  # trained on a random (seeded) encoder
        if checkpoint is not None:
            raise UserError(f"{model} was trained with a random encoder; --checkpoint would give other features")
        encoder = build_encoder(info["name"], info["image_size"])
        if weights_sha256(encoder) != recorded:
            raise UserError(f"cannot rebuild the random encoder {model} was trained with (different torch version?)")
    else:
        path = Path(checkpoint) if checkpoint else Path(info["checkpoint"] or "")
        if not path.is_file():
            raise UserError(
                f"{model} was trained on features of {info['checkpoint']}; pass that SAM checkpoint with --checkpoint"
            )
        if file_sha256(path) != recorded:
            raise UserError(f"{path} is not the checkpoint {model} was trained with (sha256 differs)")
        encoder = build_encoder(info["name"], info["image_size"], path)
    return Predictor(state, encoder, config)


def collect_inputs(path: str | Path, num_channels: int) -> list[tuple[str, list[Path]]]:
    """Cases to predict under ``path``: ``(name, channel files)``.

    A file is one case; so is a DICOM series folder. In a folder of images, files named
    ``{case}_{XXXX}.ext`` (nnU-Net) are grouped into one case per name, channel by
    channel; other files are one case each.
    """
    import re

    from .io import SUFFIXES, image_suffix

    path = Path(path)
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if path.is_file():
        return [(path.name[: -len(image_suffix(path))] if image_suffix(path) else path.stem, [path])]
    files = sorted(p for p in path.iterdir() if p.is_file() and image_suffix(p))
    if not files:
        if any(p.suffix.lower() == ".dcm" for p in path.iterdir()):
            return [(path.name, [path])]
        raise UserError(f"no images ({', '.join(SUFFIXES)}) in {path}")
    stems = [(p, p.name[: -len(image_suffix(p))]) for p in files]
    pattern = re.compile(r"^(.*)_(\d{4})$")
    if all(pattern.match(s) for _, s in stems):
        cases: dict[str, list[Path]] = {}
        for p, s in stems:
            cases.setdefault(pattern.match(s).group(1), []).append(p)
        for name, paths in cases.items():
            if len(paths) != num_channels:
                raise UserError(f"case {name} in {path} has {len(paths)} channel file(s), the model needs {num_channels}")
        return list(cases.items())
    return [(s, [p]) for p, s in stems]


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check a file can be written there."""
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test"):
            pass
    except OSError as err:
        raise UserError(f"cannot write to output folder {folder}: {err.strerror or err}") from err
    return folder


def predict_probabilities(predictor: Predictor, array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Class probabilities on the file's grid ``(K, z, y, x)`` (float32, the whole volume in memory)."""
    from .preprocess import restore_probabilities

    volume, t = preprocess_image(array, geometry, predictor.channel_names, predictor.preprocess, predictor.image_size)
    features = predictor.encode(volume)
    probs = torch.stack(list(predictor.model_slices(features, t.model_shape[1:])), dim=1)
    return restore_probabilities(probs.cpu(), t)
