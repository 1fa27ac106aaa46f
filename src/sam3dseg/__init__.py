"""sam3dseg: 3-D medical image segmentation with a frozen SAM encoder and a light 3-D decoder.

The public API, listed once::

    from sam3dseg import build_encoder, SAM3DDecoder, SAM3D, deep_supervision_loss  # the model
    from sam3dseg import load_dataset, run_cache, run_train, load_predictor, run_predict, run_evaluate  # the stages
    from sam3dseg import AttentionDecoder, run_analysis                               # the analysis

The analysis (``sam3dseg.analysis``) is loaded only when one of its names is used.
"""

from .data.datasets import load_dataset
from .data.preprocess import PreprocessConfig
from .data.volumes import Geometry, read_volume, write_volume
from .errors import CheckpointError, UserError
from .model.decoder import ResidualUpBlock, SAM3DDecoder
from .model.encoder import encode_slices, encode_volume
from .model.losses import (
    DEEP_SUPERVISION_WEIGHTS, DeepSupervisionLoss, cross_entropy, deep_supervision_loss, dice_loss, level_loss,
)
from .model.registry import ENCODERS, EncoderEntry, EncoderInfo, build_encoder, load_checkpoint, resolve_checkpoint
from .model.sam3d import SAM3D
from .model.tinyvit import TinyViTEncoder
from .model.vit import SAMImageEncoder
from .pipeline.caching.cache import build_cache, run_cache
from .pipeline.config import CacheConfig, PredictConfig, RunConfig, load_cache_config, load_run_config
from .pipeline.evaluation.evaluate import run_evaluate
from .pipeline.inference.predict import run_predict
from .pipeline.inference.predictor import Predictor, load_predictor
from .pipeline.model_file import ModelFile, load_model_file
from .pipeline.training.train import run_train

__version__ = "0.1.0"

_ANALYSIS = ("AttentionDecoder", "run_analysis")


def __getattr__(name: str):
    # The analysis wing loads on first use: `import sam3dseg` stays free of it.
    if name in _ANALYSIS:
        from . import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module 'sam3dseg' has no attribute {name!r}")


__all__ = [
    "AttentionDecoder",
    "CacheConfig",
    "CheckpointError",
    "DEEP_SUPERVISION_WEIGHTS",
    "DeepSupervisionLoss",
    "ENCODERS",
    "EncoderEntry",
    "EncoderInfo",
    "Geometry",
    "ModelFile",
    "PredictConfig",
    "Predictor",
    "PreprocessConfig",
    "ResidualUpBlock",
    "RunConfig",
    "SAM3D",
    "SAM3DDecoder",
    "SAMImageEncoder",
    "TinyViTEncoder",
    "UserError",
    "build_cache",
    "build_encoder",
    "cross_entropy",
    "deep_supervision_loss",
    "dice_loss",
    "encode_slices",
    "encode_volume",
    "level_loss",
    "load_cache_config",
    "load_checkpoint",
    "load_dataset",
    "load_model_file",
    "load_predictor",
    "load_run_config",
    "read_volume",
    "resolve_checkpoint",
    "run_analysis",
    "run_cache",
    "run_evaluate",
    "run_predict",
    "run_train",
    "write_volume",
]
