"""SAM's ViT image encoder: its modules, with SAM's parameter names (docs/method.md §1, step 2).

``f_i = Enc(I_i) ∈ R^{256 × H/16 × W/16}``: a ViT with 16×16 patches, windowed
attention with decomposed relative positions, global-attention blocks and a
256-channel neck, as in ``segment_anything/modeling/image_encoder.py``. Parameter
names equal SAM's, so an official checkpoint loads key for key
(:mod:`sam3dseg.model.encoder` builds, loads and runs it).

No torchvision, timm or segment_anything is needed. The one deliberate difference
from SAM's code is how attention is computed (see :class:`Attention`): the result
is the same to float rounding, but the ``T × T`` attention matrix of the global
blocks is never written to memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import linear


@dataclass(frozen=True)
class EncoderSpec:
    """Hyper-parameters of one SAM image encoder; the defaults are shared by all three."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = 256


class PatchEmbed(nn.Module):
    """Non-overlapping ``p × p`` patches to tokens: ``(N, 3, S, S) -> (N, S/p, S/p, C)``."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class LayerNorm2d(nn.Module):
    """Layer norm over the channel axis of ``(N, C, H, W)`` (SAM's neck norm, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MLP(nn.Module):
    """Two linear layers with GELU between them: ``(..., C) -> (..., C)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return linear(linear(x, self.lin1, "gelu"), self.lin2)



class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative positions (MViTv2, as in SAM).

    For query token ``(i, j)`` and key token ``(i', j')`` the logit is
    ``q·k / √d + q·R_h[i - i'] + q·R_w[j - j']``. SAM materialises the whole
    ``T × T`` logit matrix, adds the two bias terms to it, then takes the softmax and
    the product with V as three separate passes over that matrix. Here the bias is
    built for a block of queries at a time and handed to the fused
    ``scaled_dot_product_attention`` as an additive mask: the same logits (equal to
    float rounding), but the ``T × T`` matrix never exists at once. On the
    ViT-B global blocks at 1024² (T = 4096) that is ≈3× faster on a CPU and bounds
    the attention memory by ``_MASK_BUDGET`` instead of ``4·heads·T²`` bytes.
    """

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int]) -> None:
        """
        Args:
            dim: token width C.
            num_heads: heads; head width is ``C / num_heads``.
            grid: ``(h, w)`` of the token grid the block attends over (the window, or the
                whole image for global blocks); sets the relative-position table lengths
                ``2h - 1`` and ``2w - 1``.
        """
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, head_dim))

    def forward(self, x: Tensor, window_size: int = 0) -> Tensor:
        """``x: (B, h, w, C) -> (B, h, w, C)``; attention within ``window_size²`` windows if > 0.

        The grid is padded to whole windows after the ``qkv`` projection, not before
        as in SAM: a padded token of SAM is a zero vector, whose projection is exactly
        ``qkv.bias``, so padding the projected tokens with that bias gives the same
        numbers without projecting the padding (at 256² that is 2/3 of the tokens).
        ``proj`` likewise runs only on the real tokens.
        """
        qkv = linear(x, self.qkv)
        if window_size:
            h, w = x.shape[1:3]
            windows, padded = _window_partition(qkv, window_size, fill=self.qkv.bias)
            out = _window_unpartition(self._attend(windows), window_size, padded, (h, w))
        else:
            out = self._attend(qkv)
        return linear(out, self.proj)

    def _attend(self, qkv: Tensor) -> Tensor:
        """Attention over each grid: ``qkv: (B, h, w, 3C) -> (B, h, w, C)``.

        Computed in groups of (grid, head) pairs and blocks of query rows small enough that
        their additive mask (``_MASK_BUDGET`` bytes) stays in the CPU's cache between being
        written and being read by the attention kernel: memory traffic, not arithmetic, is
        what the mask costs.
        """
        b, h, w, c3 = qkv.shape
        n, nh, c = h * w, self.num_heads, c3 // 3
        # (B, heads, T, d) views of q, k, v; the kernel reads them strided, without a copy.
        q, k, v = qkv.view(b, n, 3, nh, c // nh).permute(2, 0, 3, 1, 4).unbind(0)
        # Bias terms q·R_h[i - i'] and q·R_w[j - j']: (B, heads, T, h) and (B, heads, T, w).
        grid_q = q.unflatten(2, (h, w))
        rel_h = torch.einsum("bmhwc,hkc->bmhwk", grid_q, _rel_table(self.rel_pos_h, h)).flatten(2, 3)
        rel_w = torch.einsum("bmhwc,wkc->bmhwk", grid_q, _rel_table(self.rel_pos_w, w)).flatten(2, 3)

        out = q.new_empty(b, n, nh, c // nh)  # heads next to channels: (B, h, w, C) is a view of it
        heads_out = out.permute(0, 2, 1, 3)  # (B, heads, T, d) view
        pairs = max(1, _MASK_BUDGET // (4 * n * n))  # (grid, head) pairs whose whole mask fits
        grids, heads = (pairs // nh, nh) if pairs >= nh else (1, pairs)
        rows = n if pairs > 1 else max(1, min(n, _MASK_BUDGET // (4 * n)))
        for g in range(0, b, grids):
            for m in range(0, nh, heads):
                for r in range(0, n, rows):
                    at = (slice(g, g + grids), slice(m, m + heads), slice(r, r + rows))
                    heads_out[at] = F.scaled_dot_product_attention(
                        q[at], k[at[:2]], v[at[:2]], attn_mask=_bias(rel_h[at], rel_w[at])
                    )
        return out.view(b, h, w, c)


# Bytes of additive attention mask built at once (fp32): small enough to stay in the cache until the
# kernel reads it, large enough that the per-call overhead is negligible. ViT-B, 2-core AMD EPYC: a
# global block at 1024² took 0.53–0.57 s with 4–16 MiB, 0.83 s with 64 MiB, 0.63 s with 1 MiB.
_MASK_BUDGET = 16 * 2**20


def _bias(rel_h: Tensor, rel_w: Tensor) -> Tensor:
    """``(B, m, t, h)`` and ``(B, m, t, w)`` -> additive mask ``(B, m, t, h·w)``; key ``i'·w + j'``."""
    b, m, t, h = rel_h.shape
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, m, t, h * rel_w.shape[-1])


def _rel_table(rel_pos: Tensor, size: int) -> Tensor:
    """Relative-position table ``(2·size - 1, d)`` to the pairwise form ``(size, size, d)``.

    Entry ``[i, i']`` is ``rel_pos[i - i' + size - 1]``.
    """
    if rel_pos.shape[0] != 2 * size - 1:
        raise ValueError(
            f"relative-position table has {rel_pos.shape[0]} rows, a {size}-token axis needs {2 * size - 1}"
        )
    idx = torch.arange(size, device=rel_pos.device)
    return rel_pos[idx[:, None] - idx[None, :] + size - 1]


class Block(nn.Module):
    """Pre-norm transformer block; windowed (``window_size > 0``) or global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, (window_size, window_size) if window_size else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, h, w, C) -> (B, h, w, C)``."""
        x = x + self.attn(self.norm1(x), self.window_size)
        return x + self.mlp(self.norm2(x))


def _window_partition(x: Tensor, size: int, fill: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """``(B, h, w, C)`` -> windows ``(B·nW, size, size, C)`` and the padded ``(h', w')``.

    The grid is padded at the bottom/right to a multiple of ``size`` with the vector
    ``fill`` ``(C,)``; padded tokens take part in attention, as in SAM. Each token is
    copied once, straight to its window (no padded copy of the grid first).
    """
    b, h, w, c = x.shape
    hp, wp = h + (-h % size), w + (-w % size)
    windows = x.new_empty(b, hp // size, wp // size, size, size, c)
    if hp != h:
        windows[:, -1] = fill
    if wp != w:
        windows[:, :, -1] = fill
    for grid, window in _window_views(x, windows, size):
        window.copy_(grid)
    return windows.flatten(0, 2), (hp, wp)


def _window_unpartition(windows: Tensor, size: int, padded: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`_window_partition`: ``(B·nW, size, size, C) -> (B, h, w, C)``, the padding dropped."""
    hp, wp = padded
    b = windows.shape[0] // (hp * wp // size // size)
    windows = windows.view(b, hp // size, wp // size, size, size, -1)
    x = windows.new_empty(b, *hw, windows.shape[-1])
    for grid, window in _window_views(x, windows, size):
        grid.copy_(window)
    return x


def _window_views(grid: Tensor, windows: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    """Matching views of a token grid ``(B, h, w, C)`` and its windows ``(B, nH, nW, size, size, C)``, each
    pair ``(B, I, J, r, c, C)``: the whole windows, then the part-filled last row, column and corner."""
    def runs(n: int) -> list[tuple[int, int, int]]:  # (first token, end token, tokens per window)
        whole = n - n % size
        return [(0, whole, size)] * (whole > 0) + [(whole, n, n - whole)] * (n > whole)

    pairs = []
    for r0, r1, rs in runs(grid.shape[1]):
        for c0, c1, cs in runs(grid.shape[2]):
            g = grid[:, r0:r1, c0:c1].unflatten(1, (-1, rs)).unflatten(3, (-1, cs)).permute(0, 1, 3, 2, 4, 5)
            i, j = r0 // size, c0 // size
            pairs.append((g, windows[:, i : i + g.shape[1], j : j + g.shape[2], :rs, :cs]))
    return pairs


def sam_neck(in_dim: int, out_chans: int) -> nn.Sequential:
    """SAM's neck, shared by every SAM-family encoder: 1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d
    (no biases): ``(N, in_dim, h, w) -> (N, out_chans, h, w)``."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_chans, kernel_size=1, bias=False),
        LayerNorm2d(out_chans),
        nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_chans),
    )


class FrozenEncoder(nn.Module):
    """What every image encoder here shares: frozen by construction (call :meth:`_freeze` at the end of
    ``__init__``: no parameter requires a gradient), in eval mode whatever ``train()`` is asked, and
    a checked ``(N, 3, S, S)`` input. Subclasses set ``spec`` (with ``out_chans``), ``image_size``, ``name``."""

    normalisation = "sam"  # how its input is normalised (build_encoder sets the registry's)
    spec: object
    image_size: int
    name: str

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    @property
    def out_channels(self) -> int:
        return self.spec.out_chans

    def train(self, mode: bool = True) -> FrozenEncoder:
        # The encoder is frozen: a parent's .train() must not switch it (nor would it
        # matter numerically today, but a future dropout or norm would).
        return super().train(False)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            raise ValueError(f"{self.name} encoder expects (N, 3, {self.image_size}, {self.image_size}), got {tuple(x.shape)}")


class SAMImageEncoder(FrozenEncoder):
    """SAM's ViT image encoder, frozen: ``(N, 3, S, S) -> (N, 256, S/16, S/16)``.

    Frozen by construction: every parameter has ``requires_grad=False``, the module
    stays in eval mode whatever ``train()`` is asked, and ``forward`` runs without
    autograd. Build it with :func:`build_encoder`.
    """

    def __init__(self, spec: EncoderSpec, image_size: int = 1024, name: str = "custom") -> None:
        """
        Args:
            spec: architecture (see ``ENCODERS``).
            image_size: side S of the square input; any multiple of the patch size.
            name: registry name, used in messages.
        """
        super().__init__()
        if image_size <= 0 or image_size % spec.patch_size:
            raise ValueError(f"image_size must be a positive multiple of {spec.patch_size}, got {image_size}")
        self.spec, self.image_size, self.name = spec, image_size, name
        grid = image_size // spec.patch_size
        self.patch_embed = PatchEmbed(spec.patch_size, spec.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, spec.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                spec.embed_dim,
                spec.num_heads,
                spec.mlp_ratio,
                0 if i in spec.global_attn_indexes else spec.window_size,
                (grid, grid),
            )
            for i in range(spec.depth)
        )
        self.neck = sam_neck(spec.embed_dim, spec.out_chans)
        self._freeze()

    @property
    def patch_size(self) -> int:
        return self.spec.patch_size

    @property
    def stride(self) -> int:
        """Input pixels per output token: the patch size."""
        return self.spec.patch_size

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``x: (N, 3, S, S)`` SAM-normalised slices -> ``(N, 256, S/16, S/16)`` features."""
        self._check_input(x)
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
