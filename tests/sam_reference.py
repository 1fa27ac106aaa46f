"""Load the official ``segment_anything`` modeling code as a numerical reference.

``segment_anything/__init__.py`` imports its predictor, which needs torchvision
(not importable with the CPU torch here). The modeling files themselves need only
torch, so a stub package object pointing at the installed folder lets them import
without running that ``__init__``. Used by the tests and ``bench/encoder.py``;
sam3dseg itself never imports segment_anything.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from functools import partial
from pathlib import Path

import torch


def sam_modeling() -> types.ModuleType:
    """Return ``segment_anything.modeling`` imported through a package stub."""
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None or spec.origin is None:
            raise ImportError("segment-anything is not installed (it is in the [test] extra)")
        stub = types.ModuleType("segment_anything")
        stub.__path__ = [str(Path(spec.origin).parent)]
        sys.modules["segment_anything"] = stub
    import segment_anything.modeling as modeling

    return modeling


# segment_anything/build_sam.py's encoder settings, by name.
SAM_SETTINGS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def official_encoder(name: str = "vit_b", img_size: int = 1024, **override) -> torch.nn.Module:
    """The official ``ImageEncoderViT`` built exactly as ``build_sam_vit_*`` builds it."""
    settings = dict(
        img_size=img_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=14,
        out_chans=256,
        **SAM_SETTINGS[name],
    )
    return sam_modeling().ImageEncoderViT(**{**settings, **override}).eval()


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values in place.

    SAM zero-initialises the position tables, which would hide any mistake in how
    they are used, so they get a large spread here; norm weights stay near 1.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "pos" in name:
                p.copy_(0.5 * noise)
            elif p.ndim == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)
    return module
