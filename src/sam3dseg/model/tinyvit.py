"""TinyViT, the image encoder of MobileSAM and LiteMedSAM, for inference (docs/method.md §1, step 2; D12).

``f_i = Enc(I_i) ∈ R^{256 × S/s × S/s}`` with a convolutional stage (MBConv blocks),
three windowed-attention stages and SAM's 256-channel neck, as in MobileSAM's
``tiny_vit_sam.py`` (and LiteMedSAM's copy of it). The two checkpoints differ in the stem:

- MobileSAM (``mobile_sam.pt``): two 3×3 stride-2 convolutions, output stride s = 16 at 1024²;
- LiteMedSAM (``lite_medsam.pth``): two 1×1 convolutions, output stride s = 4 at 256².

Parameter names follow the reference, except that every convolution + BatchNorm pair
(``X.c``, ``X.bn``) is one convolution with a bias here, BatchNorm folded in when a
checkpoint is loaded (:func:`fuse_batchnorm`): the encoder is frozen, so the batch
statistics never change, and the fused form saves a pass over the largest
activations. No timm is needed.

Two differences from the reference, neither changing a number beyond float rounding:

- The attention bias table is gathered from ``attention_biases`` at every call. The
  reference caches it when ``.train(False)`` is called, so calling ``.eval()`` before
  loading weights leaves it stale (18 % relative error); here there is no cache to go stale.
- The output grid follows the input (the reference hard-codes 64 × 64), so any side
  divisible by the stride works; windows are padded as in the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import linear
from .vit import FrozenEncoder, sam_neck


@dataclass(frozen=True)
class TinyViTSpec:
    """Hyper-parameters of a TinyViT image encoder (the 5M model of MobileSAM by default)."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    merge_strides: tuple[int, ...] = (2, 2, 1)  # of the PatchMerging after stages 1..3
    stem_stride: int = 4  # 4: MobileSAM's two 3×3 stride-2 convolutions; 1: LiteMedSAM's two 1×1
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256

    @property
    def stride(self) -> int:
        """Input pixels per output token along each axis."""
        return self.stem_stride * math.prod(self.merge_strides)


def _conv(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A reference ``Conv2d_BN`` with the BatchNorm folded in: a convolution with a bias."""
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=True)


def fuse_batchnorm(state: dict[str, Tensor], eps: float = 1e-5) -> dict[str, Tensor]:
    """Fold every ``X.c.weight`` + ``X.bn.*`` pair of a TinyViT state dict into ``X.weight``, ``X.bias``.

    ``BN(W * x) = (γ/σ) W * x + (β - μ γ/σ)`` with ``σ = √(var + eps)`` (eval-mode BatchNorm,
    eps 1e-5 as ``nn.BatchNorm2d``). Other keys pass through unchanged.
    """
    out = {k: v for k, v in state.items() if ".bn." not in k and not k.endswith(".c.weight")}
    for key in state:
        if not key.endswith(".c.weight"):
            continue
        p = key[: -len(".c.weight")]
        needed = [f"{p}.bn.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
        if not all(n in state for n in needed):
            out[key] = state[key]  # left for the strict key check to report
            continue
        gamma, beta, mean, var = (state[n].double() for n in needed)
        scale = gamma / torch.sqrt(var + eps)
        w = state[key]
        out[f"{p}.weight"] = (w.double() * scale[:, None, None, None]).to(w.dtype)
        out[f"{p}.bias"] = (beta - mean * scale).to(w.dtype)
    return out


# Rows of the MBConv stage computed at once. The stage runs at the stem's full resolution
# (256² for LiteMedSAM) with 4× expanded channels: one expanded activation is 64 MiB, so the
# whole-plane form streams memory five times per block. A band of rows keeps the expanded
# activation in cache: ×2 on this stage on a 2-core EPYC (bench/tinyvit.py), same numbers.
_MBCONV_ROWS = 16


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, 3×3 depthwise, 1×1 project, GELU after the sum: ``(B, C, H, W) -> same``.

    Computed in bands of :data:`_MBCONV_ROWS` rows, each with the one-row halo the 3×3
    depthwise convolution reads; every output value is computed exactly as on the whole plane.
    """

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = _conv(dim, hidden)
        self.conv2 = _conv(hidden, hidden, 3, groups=hidden)
        self.conv3 = _conv(hidden, dim)

    def _band(self, x: Tensor) -> Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        if height <= _MBCONV_ROWS:
            return F.gelu(self._band(x) + x)
        out = torch.empty_like(x)
        for start in range(0, height, _MBCONV_ROWS):
            stop = min(height, start + _MBCONV_ROWS)
            low, high = max(0, start - 1), min(height, stop + 1)  # the halo; the plane's edges stay zero-padded
            band = self._band(x[:, :, low:high])[:, :, start - low : start - low + stop - start]
            out[:, :, start:stop] = F.gelu(band + x[:, :, start:stop])
        return out


class PatchMerging(nn.Module):
    """1×1, 3×3 depthwise (stride 1 or 2), 1×1: ``(B, C, H, W) -> (B, C', H/s, W/s)``."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(dim, out_dim)
        self.conv2 = _conv(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = _conv(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class Attention(nn.Module):
    """Window self-attention with a learnt bias per head and |offset| (LeViT's attention bias).

    The reference's ``qkv`` output holds, per head, ``key_dim`` query, ``key_dim`` key and
    ``key_dim`` value channels (``attn_ratio`` 1), in that order. :class:`TinyViTBlock` runs
    the three steps (:meth:`project`, :meth:`attend`, ``proj``) itself, so that windows are
    cut and joined around the projections, not the tokens.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads, self.key_dim = num_heads, dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # One bias per head and distinct (|Δi|, |Δj|), numbered in the reference's order
        # of first appearance (row-major over query, then key positions).
        points = [(i, j) for i in range(window) for j in range(window)]
        offsets: dict[tuple[int, int], int] = {}
        idxs = [offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets)) for a in points for b in points]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(len(points), len(points)), persistent=False)

    def project(self, x: Tensor) -> Tensor:
        """``qkv(norm(x))``: ``(..., C) -> (..., 3C)``."""
        return linear(self.norm(x), self.qkv)

    def padding(self) -> Tensor:
        """``project`` of a zero token, ``(3C,)``: LayerNorm maps a zero vector to its bias."""
        return self.qkv(self.norm.bias)

    def attend(self, heads: Tensor) -> Tensor:
        """``heads: (B·heads, N, 3d)`` each window's projected tokens, head by head -> ``(B·heads, N, d)``
        (before ``proj``)."""
        n, d = heads.shape[1], self.key_dim
        q, k, v = heads.split(d, dim=-1)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # (heads, N, N), never cached
        # Windows hold at most a few hundred tokens, so the logits are small: q·kᵀ/√d, the bias
        # added in place (broadcast over windows, never copied per window), softmax, ·v. This beat
        # CPU SDPA with the bias as mask by ×1.5–2.7 on these shapes (2-core EPYC).
        logits = torch.bmm(q * d**-0.5, k.transpose(1, 2)).view(-1, self.num_heads, n, n)
        logits += bias
        return torch.bmm(torch.softmax(logits.view(-1, n, n), dim=-1), v)


class MLP(nn.Module):
    """Pre-norm MLP: LayerNorm, Linear, GELU, Linear: ``(..., C) -> (..., C)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return linear(linear(self.norm(x), self.fc1, "gelu"), self.fc2)


class TinyViTBlock(nn.Module):
    """Window attention, a 3×3 depthwise convolution, an MLP: ``(B, H, W, C) -> (B, H, W, C)``."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.local_conv = _conv(dim, dim, local_conv_size, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        s = self.window
        ph, pw = -h % s, -w % s
        hp, wp = h + ph, w + pw
        # The reference pads the grid to whole windows with zero tokens, which take part in
        # attention. A zero token's projection is a constant (Attention.padding), so the real
        # tokens are projected and the padding filled with it: the same numbers, without
        # projecting the padding (20 % of the tokens at 64² with 14² windows).
        qkv = self.attn.project(x)
        if ph or pw:
            full = self.attn.padding().to(qkv.dtype).expand(b, hp, wp, 3 * c).clone()
            full[:, :h, :w] = qkv
            qkv = full
        # Windows and heads in one copy each way: (B, H, W, 3C) -> (B·windows·heads, s², 3d) -> (B, H, W, C).
        m, d, nh, nw = self.attn.num_heads, self.attn.key_dim, hp // s, wp // s
        heads = qkv.view(b, nh, s, nw, s, m, 3 * d).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, s * s, 3 * d)
        out = self.attn.attend(heads).view(b, nh, nw, m, s, s, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, c)
        x = x + linear(out[:, :h, :w], self.attn.proj)  # proj per token: the padding's outputs are never used
        # (B, H, W, C) viewed as (B, C, H, W) is channels-last memory: no copy either way.
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """Stage 1: MBConv blocks, then a PatchMerging: ``(B, C, H, W) -> (B, C', H/s, W/s)``."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 2..4: TinyViT blocks, then a PatchMerging unless last: ``(B, C, H, W) -> (B, C', H/s, W/s)``."""

    def __init__(self, dim: int, depth: int, block: dict, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, **block) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # tokens channels-last for attention and the MLP
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    """The stem: two convolutions with GELU between: ``(N, 3, S, S) -> (N, C_1, S/stem, S/stem)``."""

    def __init__(self, dim: int, stem_stride: int) -> None:
        super().__init__()
        if stem_stride not in (1, 4):
            raise ValueError(f"stem_stride must be 1 (LiteMedSAM) or 4 (MobileSAM), got {stem_stride}")
        kernel, stride = (1, 1) if stem_stride == 1 else (3, 2)
        self.seq = nn.Sequential(_conv(3, dim // 2, kernel, stride), nn.GELU(), _conv(dim // 2, dim, kernel, stride))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class TinyViTEncoder(FrozenEncoder):
    """A frozen TinyViT image encoder: ``(N, 3, S, S) -> (N, 256, S/s, S/s)`` with s = ``spec.stride``.

    Frozen as :class:`~sam3dseg.model.vit.SAMImageEncoder` is: no gradients, always in eval
    mode. Build it with :func:`sam3dseg.model.encoder.build_encoder`.
    """

    def __init__(self, spec: TinyViTSpec, image_size: int = 1024, name: str = "custom") -> None:
        """
        Args:
            spec: architecture.
            image_size: side S of the square input; a positive multiple of ``spec.stride``.
            name: registry name, used in messages.
        """
        super().__init__()
        if image_size <= 0 or image_size % spec.stride:
            raise ValueError(f"image_size must be a positive multiple of {spec.stride}, got {image_size}")
        self.spec, self.image_size, self.name = spec, image_size, name
        dims = spec.embed_dims
        self.patch_embed = PatchEmbed(dims[0], spec.stem_stride)
        merges = [PatchMerging(dims[i], dims[i + 1], s) for i, s in enumerate(spec.merge_strides)] + [None]
        self.layers = nn.ModuleList([ConvLayer(dims[0], spec.depths[0], spec.mbconv_expand_ratio, merges[0])])
        for i in range(1, len(dims)):
            block = dict(num_heads=spec.num_heads[i], window=spec.window_sizes[i], mlp_ratio=spec.mlp_ratio,
                         local_conv_size=spec.local_conv_size)  # fmt: skip
            self.layers.append(BasicLayer(dims[i], spec.depths[i], block, merges[i]))
        self.neck = sam_neck(dims[-1], spec.out_chans)
        self._freeze()

    @property
    def stride(self) -> int:
        return self.spec.stride

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``x: (N, 3, S, S)`` normalised slices -> ``(N, 256, S/s, S/s)`` features.

        On a CPU the slices run one at a time: TinyViT's channels are narrow, so its stages are
        bound by memory traffic, and a batch's activations leave the cache (LiteMedSAM at 256²,
        2-core EPYC: 1.3 s a slice at batch 8 against 0.77 s one by one; same numbers).
        """
        self._check_input(x)
        if x.device.type == "cpu" and x.shape[0] > 1:
            return torch.cat([self(one) for one in x.split(1)])
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
