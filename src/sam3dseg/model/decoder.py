"""The light 3-D decoder: four residual-upsampling blocks with deep-supervision heads (method §2).

Block ℓ (method §2.1), for ``g(ℓ) ∈ R^{C_ℓ × D × H_ℓ × W_ℓ}``::

    r1     = IN( W2 * σ( IN( W1 * g(ℓ) ) ) )
    r2     = IN( W0 * g(ℓ) )
    g(ℓ+1) = U_2x( σ(r1 + r2) )

with ``*`` a 3×3×3 convolution, IN instance norm, σ the activation and ``U_2x``
linear interpolation ×2. ``g(0) = F`` is the stacked encoder output at ``H/16``;
``Ŷ(ℓ) = softmax(head_ℓ(g(ℓ)))`` for ℓ = 1..4, so ``Ŷ(4)`` is at full resolution.

The decoder follows the encoder's stride s (decision D12): it always has four blocks and
four supervised levels, and the last ``log2(s)`` blocks upsample, so ``Ŷ(4)`` is at the
encoder's input resolution. For SAM's ViTs (s = 16) every block upsamples: the method's
decoder exactly. For LiteMedSAM (s = 4) blocks 1 and 2 keep the S/4 grid
(``g(ℓ+1) = σ(r1 + r2)``, no ``U_2x``) and blocks 3 and 4 upsample.

A stride-4 encoder's S/4 grid makes block 1 (``C_0 = 256 → C_1 = 128`` at 3×3×3) cost 16 times what it
costs on ViT's S/16 grid. ``grid_stride`` (decision D13, ``decoder.grid_stride``) average-pools the features
in-plane to a coarser grid before block 1 and builds the blocks for that stride: ``grid_stride`` 16 is the
method's decoder exactly, on LiteMedSAM's features pooled 4 × 4; the image path keeps the fine detail.

The image path (not in the method; decision D10, ``decoder.pixel_skip``) joins the
preprocessed slices, average-pooled to each block's input grid, to that block's
input: ``g(ℓ) ← [g(ℓ), pool(I)]``. The decoder otherwise sees only 16-pixel tokens;
this gives it the grey values of structures smaller than a token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder import PIXEL_MEAN, PIXEL_STD, pad_square

Activation = Literal["relu", "leaky_relu"]
Upsample = Literal["linear", "nearest"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "leaky_relu")
UPSAMPLES: tuple[Upsample, ...] = ("linear", "nearest")
SHORTCUT_KERNELS = (3, 1)
# The image path's grid is S / IMAGE_STRIDE: the finest block input (block 4 reads S/2).
IMAGE_STRIDE = 2
NUM_BLOCKS = 4


def block_scales(stride: int, blocks: int = NUM_BLOCKS) -> tuple[int, ...]:
    """The in-plane factor of each block (1 or 2) for an encoder of output ``stride`` (decision D12):
    the last ``log2(stride)`` blocks upsample, so the decoder ends at the encoder's input resolution."""
    ups = stride.bit_length() - 1
    if stride < 1 or 2**ups != stride or ups > blocks:
        raise ValueError(f"the decoder's {blocks} blocks reach input resolution only for an encoder stride 1, 2, 4, ..., {2**blocks}; got {stride}")
    return (1,) * (blocks - ups) + (2,) * ups


def image_path_input(volume: Tensor, image_size: int) -> Tensor:
    """Preprocessed slices as the image path stores them: ``(C, D, H', W')`` in ``[0, 255]`` -> uint8 ``(C, D, S/2, S/2)``.

    Padded bottom/right to ``S × S`` with SAM's mean grey (where the encoder's
    padding lies, so the padding reads as the encoder's), then average-pooled
    2×2 to the finest grid a block reads, and rounded to uint8: a quarter of the
    bytes at full resolution, and exactly what :class:`LevelDecoder` pools further.
    """
    x = pad_square(volume.float(), image_size, value=sum(PIXEL_MEAN) / 3)
    x = F.avg_pool3d(x, (1, IMAGE_STRIDE, IMAGE_STRIDE))
    return x.round().clamp(0, 255).to(torch.uint8)


def _pooled_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, C, d, S/2, S/2)`` uint8 or float -> SAM-normalised ``(B, C, d, h, w)`` float, average-pooled to ``size``."""
    factor = image.shape[-1] // size[-1]
    x = image.float()
    if factor > 1:
        x = F.avg_pool3d(x, (1, factor, factor))
    return (x - sum(PIXEL_MEAN) / 3) / (sum(PIXEL_STD) / 3)


def activation_layer(name: Activation) -> nn.Module:
    """σ: ReLU (the method) or LeakyReLU 0.01 (the original SAM3D code), in place."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)  # nnU-Net's slope, as the original SAM3D
    raise ValueError(f"activation must be 'relu' or 'leaky_relu', got {name!r}")


def _conv(cin: int, cout: int, kernel: int) -> nn.Conv3d:
    # No bias: every convolution here feeds an instance norm, which subtracts the
    # per-channel mean and with it any constant bias.
    return nn.Conv3d(cin, cout, kernel, padding=kernel // 2, bias=False)


def instance_norm(channels: int) -> nn.InstanceNorm3d:
    """IN of the block equations."""
    # Affine IN (learnable scale and shift per channel), as nnU-Net and SAM3D use.
    return nn.InstanceNorm3d(channels, eps=1e-5, affine=True)


class ResidualUpBlock(nn.Module):
    """One decoder block, ``g(ℓ) -> g(ℓ+1)`` (method §2.1): ``(B, C_in, D, h, w) -> (B, C_out, D, 2h, 2w)``
    (``scale`` 2; with ``scale`` 1, decision D12, the same block without ``U_2x``: ``(B, C_out, D, h, w)``).

    ``W1: C_in → C_out`` and ``W2: C_out → C_out`` form the residual branch ``r1``;
    ``W0: C_in → C_out`` the shortcut ``r2``. The method (docs/method.md) has a 3×3×3 ``W0``; the original
    SAM3D code a 1×1×1 one (``shortcut_kernel=1``). Depth is never resampled: the
    method's ×2 linear interpolation acts in-plane only (method §2.1, decision D4), so the slice
    count D of the volume is kept at every level.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        shortcut_kernel: int = 3,
        activation: Activation = "relu",
        upsample: Upsample = "linear",
        scale: int = 2,
    ) -> None:
        super().__init__()
        # the same tuples the settings' rules use (pipeline/config.py): one list of what is allowed
        if scale not in (1, 2):
            raise ValueError(f"scale must be 1 or 2, got {scale}")
        if shortcut_kernel not in SHORTCUT_KERNELS:
            raise ValueError(f"shortcut_kernel must be one of {SHORTCUT_KERNELS}, got {shortcut_kernel}")
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {upsample!r}")
        self.conv1, self.norm1 = _conv(in_channels, out_channels, 3), instance_norm(out_channels)  # W1
        self.conv2, self.norm2 = _conv(out_channels, out_channels, 3), instance_norm(out_channels)  # W2
        self.conv0, self.norm0 = _conv(in_channels, out_channels, shortcut_kernel), instance_norm(out_channels)  # W0
        self.act = activation_layer(activation)
        self.upsample, self.scale = upsample, scale

    def residual(self, g: Tensor) -> Tensor:
        """``r1 = IN(W2 * σ(IN(W1 * g)))``, the method's φ(g): ``(B, C_in, D, h, w) -> (B, C_out, D, h, w)``."""
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(g)))))

    def shortcut(self, g: Tensor) -> Tensor:
        """``r2 = IN(W0 * g)``: ``(B, C_in, D, h, w) -> (B, C_out, D, h, w)``."""
        return self.norm0(self.conv0(g))

    def forward(self, g: Tensor) -> Tensor:
        if g.device.type == "cpu":
            # oneDNN's 3-D convolutions read channels-last input ×1.4–2.2 faster on this decoder's narrow
            # levels (AMD EPYC): a window's inference and a training step ran 15–20 % faster, same numbers.
            g = g.contiguous(memory_format=torch.channels_last_3d)
        y = self.act(self.residual(g) + self.shortcut(g))
        return upsample_in_plane(y, self.upsample) if self.scale == 2 else y


def upsample_in_plane(y: Tensor, mode: Upsample) -> Tensor:
    """``U_2x``: ``(B, C, D, h, w) -> (B, C, D, 2h, 2w)``, linear or nearest, depth kept."""
    if mode == "linear":
        # Trilinear with depth factor 1 is the identity along D (align_corners=False
        # maps slice d onto d exactly), so this is bilinear ×2 in-plane per slice.
        return F.interpolate(y, scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)
    return F.interpolate(y, scale_factor=(1, 2, 2), mode="nearest")


class LevelDecoder(nn.Module):
    """Four blocks ``g(ℓ) -> g(ℓ+1)`` and a 1×1×1 head per level: the contract every decoder here keeps.

    Subclasses pass ``make_block(C_ℓ, C_ℓ+1, scale)``, which builds a module ``(B, C_ℓ, D, h, w)
    -> (B, C_ℓ+1, D, scale·h, scale·w)``, the scales from :func:`block_scales` of ``grid_stride``
    (the encoder's ``stride`` unless pooled); this class owns the heads and the forward pass, so
    the method's conv decoder and the attention baseline (:mod:`sam3dseg.analysis.attention`)
    take the same input and return the same four outputs. With ``image_channels = C > 0``
    (the image path) block ℓ is built for ``C_ℓ + C`` input channels and ``forward``
    takes the image too.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        channels: tuple[int, ...],
        make_block: Callable[[int, int, int], nn.Module],
        image_channels: int = 0,
        stride: int = 16,
        grid_stride: int | None = None,
    ) -> None:
        super().__init__()
        grid_stride = stride if grid_stride is None else grid_stride
        if grid_stride < stride or grid_stride % stride:
            raise ValueError(f"grid_stride must be the encoder's stride {stride} times a power of two, got {grid_stride}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be >= 2, got {num_classes}")
        if len(channels) != 4:
            raise ValueError(f"channels must give the four widths C_1..C_4, got {channels}")
        if image_channels < 0:
            raise ValueError(f"image_channels must be >= 0, got {image_channels}")
        self.num_classes, self.in_channels, self.channels = num_classes, in_channels, tuple(channels)
        self.image_channels, self.stride, self.grid_stride = image_channels, stride, grid_stride
        self.pool = grid_stride // stride  # in-plane average pooling of the features before block 1 (1: none)
        self.scales = block_scales(grid_stride)
        widths = (in_channels, *channels)
        # Blocks before heads: the order random initialisation draws in.
        self.blocks = nn.ModuleList(make_block(widths[i] + image_channels, widths[i + 1], s) for i, s in enumerate(self.scales))
        self.heads = nn.ModuleList(nn.Conv3d(c, num_classes, kernel_size=1) for c in channels)

    @property
    def widths(self) -> tuple[int, ...]:
        """``(C_0, C_1, …, C_4)``."""
        return (self.in_channels, *self.channels)

    def forward(self, features: Tensor, image: Tensor | None = None) -> list[Tensor]:
        """``features: (B, C_in, D, h, w)`` -> ``[(B, K, D, h·f_ℓ, w·f_ℓ) for ℓ = 1..4]``, ``f_ℓ`` the product
        of the first ℓ block scales (``2^ℓ`` at stride 16; ``f_4`` = the stride).

        ``image``: with the image path, ``(B, C, D, h·s/2, w·s/2)`` from :func:`image_path_input`.
        """
        if features.ndim != 5 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"decoder expects features (B, {self.in_channels}, D, h, w), got {tuple(features.shape)}"
            )
        if features.shape[-1] % self.pool or features.shape[-2] % self.pool:
            raise ValueError(f"the decoder pools its {tuple(features.shape[-2:])} token grid by {self.pool}: give a grid divisible by it")
        if self.image_channels:
            b, _, d, h, w = features.shape
            expected = (b, self.image_channels, d, h * self.stride // IMAGE_STRIDE, w * self.stride // IMAGE_STRIDE)
            if image is None or tuple(image.shape) != expected:
                got = None if image is None else tuple(image.shape)
                raise ValueError(f"the decoder's image path expects an image {expected}, got {got}")
        outputs = []
        g = F.avg_pool3d(features, (1, self.pool, self.pool)) if self.pool > 1 else features
        for block, head in zip(self.blocks, self.heads):
            if self.image_channels:
                g = torch.cat([g, _pooled_image(image, g.shape[-2:]).to(g.dtype)], dim=1)
            g = block(g)
            outputs.append(head(g))
        return outputs

    def num_parameters(self) -> int:
        """Number of trainable parameter elements."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class SAM3DDecoder(LevelDecoder):
    """Four residual-upsampling blocks and a 1×1×1 head per level (method §2).

    ``forward(F)`` with ``F: (B, C_in, D, h, w)`` returns the logits of
    ``Ŷ(1), …, Ŷ(4)`` in the method's order ℓ = 1..4 (coarse → fine), shaped
    ``(B, K, D, h·2^ℓ, w·2^ℓ)`` for an encoder of stride 16 (other strides: decision D12,
    ``Ŷ(4)`` at the encoder's input resolution). Softmax is left to the loss / prediction.

    Defaults follow the method (3×3×3 shortcut, ReLU, linear upsampling); the original
    SAM3D code is ``shortcut_kernel=1, activation="leaky_relu", upsample="nearest"``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        channels: tuple[int, ...] = (128, 64, 32, 16),
        shortcut_kernel: int = 3,
        activation: Activation = "relu",
        upsample: Upsample = "linear",
        image_channels: int = 0,
        stride: int = 16,
        grid_stride: int | None = None,
    ) -> None:
        """
        Args:
            num_classes: K, background included.
            in_channels: C_0; 256 per encoded image channel (256·C for C modalities).
            channels: C_1..C_4, the widths of g(1)..g(4).
            shortcut_kernel: kernel of W0, 3 (the method) or 1 (original SAM3D).
            activation: σ, ``relu`` (the method) or ``leaky_relu`` (original).
            upsample: U_2x, ``linear`` (the method) or ``nearest`` (original).
            image_channels: the image path's channels (the volume's C), 0 for none (the method).
            stride: the encoder's output stride (16 for SAM's ViTs, 4 for LiteMedSAM).
            grid_stride: the stride of the grid block 1 reads (None: ``stride``): the features are
                average-pooled in-plane by ``grid_stride / stride`` first, and the blocks that upsample
                are those of :func:`block_scales` for ``grid_stride``.
        """
        super().__init__(
            num_classes,
            in_channels,
            channels,
            lambda cin, cout, scale: ResidualUpBlock(cin, cout, shortcut_kernel, activation, upsample, scale),
            image_channels,
            stride,
            grid_stride,
        )
        self.shortcut_kernel = shortcut_kernel

    def level_flops(self, depth: int, height: int, width: int) -> list[int]:
        """Analytic FLOPs of the convolutions per level, ℓ = 1..4, for features ``(·, ·, D, h, w)`` (the encoder's grid).

        Level ℓ counts block ℓ (W1, W2, W0 at the block's input grid, ``D × h·2^(ℓ-1) × w·2^(ℓ-1)``
        at stride 16) and head ℓ (at the block's output grid, ``D × h·2^ℓ × w·2^ℓ``). One
        multiply-add is 2 FLOPs, the convention of ``torch.utils.flop_counter``; biases,
        norms, activations and interpolation are not counted (they are O(voxels·C),
        not O(voxels·C²)).
        """
        k0 = self.shortcut_kernel**3
        widths = self.widths
        flops = []
        voxels_in = depth * (height // self.pool) * (width // self.pool)  # block 1 reads the pooled grid
        for i, scale in enumerate(self.scales):
            cin, cout = widths[i] + self.image_channels, widths[i + 1]
            block_macs = voxels_in * (27 * cin * cout + 27 * cout * cout + k0 * cin * cout)
            head_macs = scale**2 * voxels_in * cout * self.num_classes
            flops.append(2 * (block_macs + head_macs))
            voxels_in *= scale**2
        return flops
