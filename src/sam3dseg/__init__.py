"""sam3dseg: 3-D medical image segmentation with a frozen SAM encoder and a light 3-D decoder.

The public API, listed once::

    from sam3dseg import build_encoder, SAM3DDecoder, SAM3D, deep_supervision_loss  # the model
    from sam3dseg import load_dataset, build_cache, train, load_predictor           # the pipeline
    from sam3dseg import AttentionDecoder, run_analysis                               # the analysis
"""

from .analysis import run_analysis
from .attention import AttentionDecoder
from .cache import EncoderInfo, build_cache
from .config import RunConfig, load_run_config
from .dataset import load_dataset
from .decoder import ResidualUpBlock, SAM3DDecoder
from .encoder import ENCODERS, SAMImageEncoder, build_encoder, encode_slices, load_checkpoint
from .errors import CheckpointError, UserError
from .losses import (
    DEEP_SUPERVISION_WEIGHTS,
    DeepSupervisionLoss,
    cross_entropy,
    deep_supervision_loss,
    dice_loss,
    level_loss,
)
from .inference import PredictConfig, Predictor, load_predictor
from .io import Geometry, read_volume, write_volume
from .model import SAM3D
from .preprocess import PreprocessConfig
from .train import load_model_file, train

__version__ = "0.1.0"

__all__ = [
    "AttentionDecoder",
    "ENCODERS",
    "EncoderInfo",
    "Geometry",
    "PredictConfig",
    "Predictor",
    "PreprocessConfig",
    "RunConfig",
    "build_cache",
    "load_dataset",
    "load_model_file",
    "load_predictor",
    "load_run_config",
    "read_volume",
    "run_analysis",
    "train",
    "write_volume",
    "DEEP_SUPERVISION_WEIGHTS",
    "CheckpointError",
    "DeepSupervisionLoss",
    "ResidualUpBlock",
    "SAM3D",
    "SAM3DDecoder",
    "SAMImageEncoder",
    "UserError",
    "build_encoder",
    "cross_entropy",
    "deep_supervision_loss",
    "dice_loss",
    "encode_slices",
    "level_loss",
    "load_checkpoint",
]
