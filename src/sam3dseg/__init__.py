"""sam3dseg: 3-D medical image segmentation with a frozen SAM encoder and a light 3-D decoder.

The public API, listed once::

    from sam3dseg import build_encoder, SAM3DDecoder, SAM3D, deep_supervision_loss
"""

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
from .model import SAM3D

__version__ = "0.1.0"

__all__ = [
    "ENCODERS",
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
