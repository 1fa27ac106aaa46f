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
