"""The residual-upsampling decoder: shapes, the block formula, parameters and FLOPs."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sam3dseg.model.decoder import ResidualUpBlock, SAM3DDecoder, image_path_input


@pytest.mark.parametrize("depth,h,w", [(2, 1, 1), (3, 3, 5), (5, 2, 7), (2, 6, 4)])
def test_output_shapes_coarse_to_fine(depth, h, w):
    dec = SAM3DDecoder(num_classes=3, in_channels=24, channels=(16, 8, 8, 4))
    outs = dec(torch.randn(2, 24, depth, h, w))
    assert len(outs) == 4
    assert [tuple(o.shape) for o in outs] == [(2, 3, depth, h * 2**lvl, w * 2**lvl) for lvl in (1, 2, 3, 4)]


def test_default_widths_follow_the_seed():
    dec = SAM3DDecoder(num_classes=2)
    assert dec.in_channels == 256 and dec.channels == (128, 64, 32, 16)
    convs = [m for m in dec.blocks.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(c.kernel_size == (3, 3, 3) for c in convs)  # W0, W1, W2 all 3×3×3


def _block_by_formula(block: ResidualUpBlock, g: torch.Tensor, act, per_slice_mode: str) -> torch.Tensor:
    """Seed §2.1 written out with functional ops, upsampling each slice in 2-D."""

    def conv(layer, x):
        return F.conv3d(x, layer.weight, padding=layer.padding)

    def norm(layer, x):
        return F.instance_norm(x, weight=layer.weight, bias=layer.bias, eps=layer.eps)

    r1 = norm(block.norm2, conv(block.conv2, act(norm(block.norm1, conv(block.conv1, g)))))
    r2 = norm(block.norm0, conv(block.conv0, g))
    y = act(r1 + r2)
    b, c, d, h, w = y.shape
    slices = y.transpose(1, 2).reshape(b * d, c, h, w)
    kwargs = {"align_corners": False} if per_slice_mode == "bilinear" else {}
    up = F.interpolate(slices, scale_factor=2, mode=per_slice_mode, **kwargs)
    return up.reshape(b, d, c, 2 * h, 2 * w).transpose(1, 2)


@pytest.mark.parametrize(
    "options,act,mode",
    [
        ({}, F.relu, "bilinear"),
        (
            {"shortcut_kernel": 1, "activation": "leaky_relu", "upsample": "nearest"},
            lambda x: F.leaky_relu(x, 0.01),
            "nearest",
        ),
    ],
)
def test_block_is_the_seed_formula(options, act, mode):
    block = ResidualUpBlock(6, 4, **options)
    with torch.no_grad():  # non-trivial affine norms
        for norm in (block.norm0, block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    g = torch.randn(2, 6, 3, 5, 4)
    expected = _block_by_formula(block, g, act, mode)
    assert torch.allclose(block(g), expected, atol=1e-5)


def test_depth_is_never_resampled():
    """Every level keeps the volume's slice count D (U_2x is in-plane only)."""
    dec = SAM3DDecoder(num_classes=2, in_channels=4, channels=(4, 4, 4, 4))
    outs = dec(torch.randn(1, 4, 7, 2, 2))
    assert all(o.shape[2] == 7 for o in outs)


def _closed_form_params(cin: int, widths: tuple[int, ...], k: int, shortcut: int) -> int:
    """Parameters from the block formula: W1 (27·Ci·Co), W2 (27·Co²), W0 (s³·Ci·Co),
    three affine IN (2·Co each), no conv bias; head ℓ: Co·K weights + K biases."""
    total, c_prev = 0, cin
    for c in widths:
        total += 27 * c_prev * c + 27 * c * c + shortcut**3 * c_prev * c + 3 * 2 * c
        total += c * k + k
        c_prev = c
    return total


@pytest.mark.parametrize(
    "cin,widths,k,shortcut",
    [(256, (128, 64, 32, 16), 14, 3), (256, (128, 64, 32, 16), 14, 1), (1024, (128, 64, 32, 16), 4, 3), (10, (7, 5, 3, 2), 2, 3)],
)
def test_parameter_count_closed_form(cin, widths, k, shortcut):
    dec = SAM3DDecoder(num_classes=k, in_channels=cin, channels=widths, shortcut_kernel=shortcut)
    assert dec.num_parameters() == _closed_form_params(cin, widths, k, shortcut)


def test_default_parameter_count_value():
    # 256 → 128 → 64 → 32 → 16, K = 14 (BTCV): the closed form evaluated by hand.
    # block 0: 27·256·128 + 27·128² + 27·256·128 + 768 = 2_212_608 ... summed with the rest:
    assert SAM3DDecoder(num_classes=14).num_parameters() == 2_212_608 + 553_344 + 138_432 + 34_656 + (
        128 * 14 + 14 + 64 * 14 + 14 + 32 * 14 + 14 + 16 * 14 + 14
    )


@pytest.mark.parametrize("shortcut", [3, 1])
@pytest.mark.parametrize("depth,h,w", [(2, 3, 5), (4, 2, 2)])
def test_level_flops_match_flop_counter(shortcut, depth, h, w):
    dec = SAM3DDecoder(num_classes=3, in_channels=32, channels=(16, 8, 8, 4), shortcut_kernel=shortcut)
    with FlopCounterMode(display=False) as counter:
        dec(torch.randn(1, 32, depth, h, w))
    counts = counter.get_flop_counts()
    measured = [
        sum(counts[f"SAM3DDecoder.blocks.{i}"].values()) + sum(counts[f"SAM3DDecoder.heads.{i}"].values())
        for i in range(4)
    ]
    assert dec.level_flops(depth, h, w) == measured
    assert sum(measured) == counter.get_total_flops()


def test_wrong_feature_channels_are_refused():
    dec = SAM3DDecoder(num_classes=2, in_channels=512)
    with pytest.raises(ValueError, match=r"expects features \(B, 512, D, h, w\)"):
        dec(torch.randn(1, 256, 2, 2, 2))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="shortcut_kernel"):
        SAM3DDecoder(num_classes=2, shortcut_kernel=5)
    with pytest.raises(ValueError, match="activation"):
        SAM3DDecoder(num_classes=2, activation="gelu")
    with pytest.raises(ValueError, match="upsample"):
        SAM3DDecoder(num_classes=2, upsample="cubic")
    with pytest.raises(ValueError, match="num_classes"):
        SAM3DDecoder(num_classes=1)


def test_image_path_input_pads_with_the_encoders_grey_and_pools():
    volume = torch.arange(2 * 3 * 6 * 4, dtype=torch.float32).view(2, 3, 6, 4)  # C=2, D=3, H'=6, W'=4
    out = image_path_input(volume, 16)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 8, 8)
    assert torch.equal(out[..., :3, :2], F.avg_pool2d(volume.view(6, 1, 6, 4), 2).view(2, 3, 3, 2).round().to(torch.uint8))
    assert (out[..., 3:, :] == 114).all() and (out[..., :, 2:] == 114).all()  # mean of SAM's pixel means, 114.495
    with pytest.raises(ValueError, match="do not fit"):
        image_path_input(torch.zeros(1, 2, 20, 4), 16)


def test_image_path_joins_the_image_at_every_block():
    """Each block reads C_ℓ + C channels; the output depends on sub-token detail of the image only with the path."""
    torch.manual_seed(0)
    dec = SAM3DDecoder(num_classes=3, in_channels=8, channels=(8, 8, 4, 4), image_channels=2)
    assert [b.conv1.in_channels for b in dec.blocks] == [10, 10, 10, 6]
    features = torch.randn(1, 8, 3, 2, 2)
    image = torch.randint(0, 256, (1, 2, 3, 16, 16), dtype=torch.uint8)
    outs = dec(features, image)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 3, 2**lvl * 2, 2**lvl * 2) for lvl in (1, 2, 3, 4)]
    changed = image.clone()
    changed[0, 0, 1, 5, 6] = 255 - changed[0, 0, 1, 5, 6]  # one pixel of one slice, well inside a token
    assert not torch.allclose(dec(features, changed)[-1], outs[-1])
    with pytest.raises(ValueError, match="image path expects"):
        dec(features)
    with pytest.raises(ValueError, match="image path expects"):
        dec(features, image[..., :8, :8])
    assert SAM3DDecoder(3, 8, (8, 8, 4, 4)).image_channels == 0
    flops = dec.level_flops(3, 2, 2)
    plain = SAM3DDecoder(3, 8, (8, 8, 4, 4)).level_flops(3, 2, 2)
    assert all(a > b for a, b in zip(flops, plain))


def test_stride_four_decoder_keeps_four_levels_and_ends_at_input_resolution():
    """Decision D12: for a stride-4 encoder (lite_medsam) blocks 1 and 2 keep the grid, 3 and 4 upsample."""
    from sam3dseg.model.decoder import block_scales

    assert block_scales(16) == (2, 2, 2, 2) and block_scales(4) == (1, 1, 2, 2) and block_scales(8) == (1, 2, 2, 2)
    with pytest.raises(ValueError, match="stride 1, 2, 4"):
        block_scales(12)
    with pytest.raises(ValueError, match="stride 1, 2, 4"):
        block_scales(32)
    dec = SAM3DDecoder(num_classes=3, in_channels=8, channels=(8, 8, 4, 4), image_channels=1, stride=4)
    features = torch.randn(2, 8, 3, 5, 4)  # a 20 × 16 input at stride 4
    image = torch.randint(0, 256, (2, 1, 3, 10, 8), dtype=torch.uint8)  # S/2, as the cache stores it
    outs = dec(features, image)
    assert [tuple(o.shape[-2:]) for o in outs] == [(5, 4), (5, 4), (10, 8), (20, 16)]
    assert [b.scale for b in dec.blocks] == [1, 1, 2, 2]
    # a block that keeps its grid is the formula without U_2x
    block = dec.blocks[0]
    g = torch.randn(1, 9, 2, 3, 3)
    assert torch.allclose(block(g), block.act(block.residual(g) + block.shortcut(g)))
    # its FLOPs: levels 1 and 2 at the input grid, the heads at each block's output grid
    with FlopCounterMode(display=False) as counter:
        dec(features[:1], image[:1])
    assert sum(dec.level_flops(3, 5, 4)) == counter.get_total_flops()


def test_stride_sixteen_is_the_default_and_unchanged():
    torch.manual_seed(3)
    default = SAM3DDecoder(num_classes=3, in_channels=8, channels=(8, 8, 4, 4))
    torch.manual_seed(3)
    explicit = SAM3DDecoder(num_classes=3, in_channels=8, channels=(8, 8, 4, 4), stride=16)
    x = torch.randn(1, 8, 2, 2, 2)
    assert all(torch.equal(a, b) for a, b in zip(default(x), explicit(x)))
    assert default.scales == (2, 2, 2, 2)


def test_grid_stride_pools_the_features_and_sixteen_is_the_methods_decoder():
    """Method D14: ``grid_stride`` average-pools a stride-4 encoder's grid before block 1. At 16 it is the
    write-up's decoder (every block upsamples) on the pooled features, weight for weight; at 8 block 1 keeps
    the S/8 grid. Outputs keep their sizes at the input resolution, and the FLOPs count the pooled grid."""
    import torch.nn.functional as F

    features = torch.randn(2, 8, 3, 8, 4)  # a 32 × 16 input at stride 4
    image = torch.randint(0, 256, (2, 1, 3, 16, 8), dtype=torch.uint8)
    torch.manual_seed(5)
    pooled = SAM3DDecoder(3, 8, (8, 8, 4, 4), image_channels=1, stride=4, grid_stride=16)
    torch.manual_seed(5)
    method = SAM3DDecoder(3, 8, (8, 8, 4, 4), image_channels=1, stride=16)
    assert pooled.scales == method.scales == (2, 2, 2, 2) and pooled.pool == 4
    # ViT's image path for the pooled grid: (S/16 tokens) · 16 / 2 = the same S/2 image
    for a, b in zip(pooled(features, image), method(F.avg_pool3d(features, (1, 4, 4)), image)):
        assert torch.allclose(a, b, atol=1e-6)
    eight = SAM3DDecoder(3, 8, (8, 8, 4, 4), image_channels=1, stride=4, grid_stride=8)
    outs = eight(features, image)
    assert eight.scales == (1, 2, 2, 2) and [tuple(o.shape[-2:]) for o in outs] == [(4, 2), (8, 4), (16, 8), (32, 16)]
    with FlopCounterMode(display=False) as counter:
        eight(features[:1], image[:1])
    assert sum(eight.level_flops(3, 8, 4)) == counter.get_total_flops()
    unpooled = SAM3DDecoder(3, 8, (8, 8, 4, 4), image_channels=1, stride=4)
    assert unpooled.pool == 1 and unpooled.level_flops(3, 8, 4)[0] == 4 * eight.level_flops(3, 8, 4)[0]  # block 1 on a quarter of the grid
    with pytest.raises(ValueError, match="divisible by it"):
        eight(torch.randn(1, 8, 3, 5, 4), torch.zeros(1, 1, 3, 10, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="grid_stride must be the encoder's stride 4 times a power of two"):
        SAM3DDecoder(3, 8, stride=4, grid_stride=2)


def test_grid_stride_auto_follows_the_encoder():
    from sam3dseg.errors import UserError
    from sam3dseg.pipeline.config import AUTO_GRID, resolve_grid_stride

    assert resolve_grid_stride(AUTO_GRID, 16) == 16 and resolve_grid_stride(AUTO_GRID, 4) == 8
    assert resolve_grid_stride(16, 4) == 16 and resolve_grid_stride(16, 16) == 16
    with pytest.raises(UserError, match="finer than the encoder's stride 16"):
        resolve_grid_stride(8, 16)
