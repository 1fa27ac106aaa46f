"""A 3-D self-attention decoder: the baseline the method compares against (method §3).

It keeps the conv decoder's contract (:class:`sam3dseg.model.decoder.LevelDecoder`): the same
input ``F``, the same four blocks ``g(ℓ) -> g(ℓ+1)`` with the same in-plane ``U_2x``,
the same 1×1×1 heads, so outputs match :class:`~sam3dseg.model.decoder.SAM3DDecoder`'s
shapes exactly. Only the mixing step differs: where the method's block mixes
neighbours with 3×3×3 convolutions, this one lets every one of the block's
``T = D·h·w`` positions attend to all others::

    q, k, v = W_q g, W_k g, W_v g                    (1×1×1, C_in -> d)
    r1      = IN( W_o · softmax(q kᵀ / √d) v )        (W_o: 1×1×1, d -> C_out)
    r2      = IN( W_s g )                             (1×1×1 projection, C_in -> C_out)
    g(ℓ+1)  = U_2x( σ(r1 + r2) )

Every other layer is pointwise (1×1×1), so attention is the block's only spatial
mixing and the cost comparison isolates ``softmax(QKᵀ/√d)V`` against ``W * g``.
The baseline is for measuring cost and gradients; it has no position encoding
and is not meant to segment well.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.decoder import Activation, LevelDecoder, Upsample, activation_layer, instance_norm, upsample_in_plane

AttentionKernel = Literal["sdpa", "explicit"]


def explicit_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q kᵀ / √d) v`` written out (method §3): ``(B, T, d)`` each -> ``(B, T, d)``.

    Materialises the ``(B, T, T)`` score matrix, and autograd keeps the softmax
    output for the backward pass: memory ``O(T²)``.
    """
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return torch.softmax(scores, dim=-1) @ v


def fused_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The same ``softmax(q kᵀ / √d) v`` through PyTorch's ``scaled_dot_product_attention``.

    The fused kernels (flash / memory-efficient, on CPU and GPU) never store the
    score matrix, so memory grows like ``O(T)`` although the FLOPs stay ``O(T² d)``.
    """
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)


class AttentionUpBlock(nn.Module):
    """``g(ℓ) -> g(ℓ+1)`` with full self-attention over all ``D·h·w`` positions (module docstring).

    ``(B, C_in, D, h, w) -> (B, C_out, D, 2h, 2w)``, one attention head of width ``dim``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dim: int = 32,
        kernel: AttentionKernel = "sdpa",
        activation: Activation = "relu",
        upsample: Upsample = "linear",
    ) -> None:
        super().__init__()
        if kernel not in ("sdpa", "explicit"):
            raise ValueError(f"kernel must be 'sdpa' or 'explicit', got {kernel!r}")
        self.dim, self.kernel, self.upsample = dim, kernel, upsample
        # No bias before IN (it would be subtracted); q, k, v keep theirs.
        self.qkv = nn.Conv3d(in_channels, 3 * dim, kernel_size=1)  # W_q, W_k, W_v
        self.proj, self.norm1 = nn.Conv3d(dim, out_channels, 1, bias=False), instance_norm(out_channels)  # W_o
        self.skip, self.norm0 = nn.Conv3d(in_channels, out_channels, 1, bias=False), instance_norm(out_channels)  # W_s
        self.act = activation_layer(activation)

    def mix(self, g: Tensor) -> Tensor:
        """``softmax(q kᵀ/√d) v`` over all positions: ``(B, C_in, D, h, w) -> (B, d, D, h, w)``."""
        b, _, d, h, w = g.shape
        # Feature dim contiguous: the fused SDPA kernels need a unit last stride and
        # otherwise fall back, silently, to the math path that stores the T×T scores.
        tokens = self.qkv(g).flatten(2).transpose(1, 2).contiguous()  # (B, T, 3d)
        q, k, v = tokens.chunk(3, dim=-1)  # (B, T, d) each
        attend = fused_attention if self.kernel == "sdpa" else explicit_attention
        return attend(q, k, v).transpose(1, 2).reshape(b, self.dim, d, h, w)

    def forward(self, g: Tensor) -> Tensor:
        r1 = self.norm1(self.proj(self.mix(g)))
        r2 = self.norm0(self.skip(g))
        return upsample_in_plane(self.act(r1 + r2), self.upsample)


class AttentionDecoder(LevelDecoder):
    """The self-attention baseline: :class:`AttentionUpBlock` ×4 and the conv decoder's heads.

    ``forward(F)`` with ``F: (B, C_in, D, h, w)`` returns logits
    ``[(B, K, D, h·2^ℓ, w·2^ℓ) for ℓ = 1..4]``, as :class:`~sam3dseg.model.decoder.SAM3DDecoder`.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        channels: tuple[int, ...] = (128, 64, 32, 16),
        dim: int = 32,
        kernel: AttentionKernel = "sdpa",
        activation: Activation = "relu",
        upsample: Upsample = "linear",
    ) -> None:
        """
        Args:
            num_classes: K, background included.
            in_channels, channels: C_0 and C_1..C_4, as the conv decoder.
            dim: d, the query/key/value width of every block.
            kernel: ``sdpa`` (fused, O(T) memory) or ``explicit`` (O(T²) memory).
            activation, upsample: σ and U_2x, as the conv decoder.
        """
        super().__init__(
            num_classes,
            in_channels,
            channels,
            lambda cin, cout, scale: AttentionUpBlock(cin, cout, dim, kernel, activation, upsample),
        )
        self.dim, self.kernel = dim, kernel
