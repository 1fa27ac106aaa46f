"""The self-attention baseline: same contract as the conv decoder, the formula, its FLOPs and memory."""

import pytest
import torch
import torch.nn.functional as F

from sam3dseg.analysis.measurements import count_flops
from sam3dseg.analysis.attention import AttentionDecoder, AttentionUpBlock
from sam3dseg.model.decoder import SAM3DDecoder
from sam3dseg.analysis.memory_probe import measure_peak_memory


@pytest.mark.parametrize("depth,h,w", [(2, 1, 1), (3, 3, 5), (4, 2, 3)])
@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
def test_same_output_shapes_as_conv_decoder(depth, h, w, kernel):
    widths = dict(in_channels=24, channels=(16, 8, 8, 4))
    features = torch.randn(2, 24, depth, h, w)
    conv = SAM3DDecoder(3, **widths)(features)
    attention = AttentionDecoder(3, dim=8, kernel=kernel, **widths)(features)
    assert [o.shape for o in attention] == [o.shape for o in conv]
    assert [tuple(o.shape) for o in conv] == [(2, 3, depth, h * 2**lvl, w * 2**lvl) for lvl in (1, 2, 3, 4)]


def test_sdpa_and_explicit_kernels_agree():
    torch.manual_seed(0)
    sdpa = AttentionDecoder(3, in_channels=16, channels=(8, 8, 4, 4), dim=8, kernel="sdpa")
    explicit = AttentionDecoder(3, in_channels=16, channels=(8, 8, 4, 4), dim=8, kernel="explicit")
    explicit.load_state_dict(sdpa.state_dict())
    # the attention step itself, in float32 on the fused kernel
    g = torch.randn(1, 16, 3, 4, 5)
    torch.testing.assert_close(sdpa.blocks[0].mix(g), explicit.blocks[0].mix(g), atol=1e-6, rtol=1e-5)
    # the whole decoder in float64 (float32 rounding is amplified by instance norms on tiny grids)
    features = torch.randn(1, 16, 3, 2, 3, dtype=torch.float64)
    for a, b in zip(sdpa.double()(features), explicit.double()(features)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_block_is_softmax_attention_over_all_positions():
    torch.manual_seed(1)
    block = AttentionUpBlock(6, 4, dim=5, kernel="sdpa")
    with torch.no_grad():
        for norm in (block.norm0, block.norm1):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    g = torch.randn(2, 6, 3, 2, 4)
    # by hand: every one of the D·h·w = 24 positions attends to all 24
    x = g.flatten(2).transpose(1, 2)  # (B, T, C)
    wq, wk, wv = block.qkv.weight.flatten(1).chunk(3)
    bq, bk, bv = block.qkv.bias.chunk(3)
    q, k, v = x @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv
    a = torch.softmax(q @ k.transpose(1, 2) / 5**0.5, dim=-1) @ v  # (B, T, d)
    mixed = (a @ block.proj.weight.flatten(1).T).transpose(1, 2).reshape(2, 4, 3, 2, 4)
    skip = torch.einsum("oc,bcdhw->bodhw", block.skip.weight.flatten(1), g)

    def norm(layer, t):
        return F.instance_norm(t, weight=layer.weight, bias=layer.bias, eps=layer.eps)

    y = F.relu(norm(block.norm1, mixed) + norm(block.norm0, skip))
    expected = F.interpolate(y, scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)
    torch.testing.assert_close(block(g), expected, atol=1e-5, rtol=1e-5)


def test_attention_flops_closed_form():
    """flop_counter on the baseline = Σ_ℓ [4 T_ℓ² d (QKᵀ, AV) + 2 T_ℓ (3 d C_ℓ + d C' + C_ℓ C')] + heads."""
    depth, size, dim, k = 3, 64, 32, 3
    with torch.device("meta"):
        model = AttentionDecoder(k, dim=dim, kernel="explicit")
    widths = model.widths
    expected = 0
    for level in range(4):
        tokens = depth * (size // 2 ** (4 - level)) ** 2
        cin, cout = widths[level], widths[level + 1]
        expected += 4 * tokens**2 * dim + 2 * tokens * (3 * dim * cin + dim * cout + cin * cout)
        expected += 2 * 4 * tokens * cout * k  # head at the upsampled grid
    assert count_flops(model, depth, size, backward=False) == expected


@pytest.mark.slow
def test_fused_attention_does_not_store_the_score_matrix():
    """Explicit softmax keeps the T×T matrix for backward; SDPA's fused path does not (needs contiguous q, k, v)."""
    depth, size = 2, 64
    tokens = depth * (size // 2) ** 2  # finest level: T = 2·32² = 2048
    score_mib = tokens**2 * 4 / 2**20  # 16 MiB
    configs = [{"decoder": kind, "depth": depth, "size": size, "backward": True, "dim": 16} for kind in ("explicit", "sdpa")]
    explicit, sdpa = measure_peak_memory(configs)
    assert explicit["saved_mib"] >= score_mib
    assert sdpa["saved_mib"] < score_mib / 4
    assert explicit["peak_mib"] > sdpa["peak_mib"] + score_mib
