"""The SAM encoder against the official segment_anything code, checkpoints and freezing."""

import logging
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from sam_reference import official_encoder, randomize_

from sam3dseg.errors import CheckpointError, UserError
from sam3dseg.model.encoder import PIXEL_MEAN, PIXEL_STD, count_parameters, encode_slices, to_encoder_input
from sam3dseg.model.vit import SAMImageEncoder
from sam3dseg.model.registry import ENCODERS, build_encoder, load_checkpoint


def _official_like(spec, img_size):
    """The official encoder with a custom (tiny) spec."""
    keys = ("embed_dim", "depth", "num_heads", "global_attn_indexes", "window_size")
    return official_encoder("vit_b", img_size, **{k: v for k, v in asdict(spec).items() if k in keys})


def _save_whole_sam(encoder_state: dict, path, extra: dict | None = None):
    """Write a state dict the way an official SAM checkpoint is laid out."""
    state = {f"image_encoder.{k}": v for k, v in encoder_state.items()}
    # A few of the other SAM parts, which loading must ignore.
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128)
    state["mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    state.update(extra or {})
    torch.save(state, path)


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 256])  # grid 14 = one window; grid 16 needs padding to 28
def test_vit_b_matches_official(size, tmp_path):
    official = randomize_(official_encoder("vit_b", size), seed=size)
    ckpt = tmp_path / "sam_vit_b.pth"
    _save_whole_sam(official.state_dict(), ckpt)
    ours = build_encoder("vit_b", image_size=size, checkpoint=ckpt)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = official(x)
    got = ours(x)
    assert got.shape == (2, 256, size // 16, size // 16)
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 1.0  # a real signal, not two zero outputs


@pytest.mark.parametrize("size", [48, 80, 128])  # grids 3, 5, 8 with window 4: padded and exact
def test_tiny_encoder_matches_official(tiny_spec, size):
    official = randomize_(_official_like(tiny_spec, size), seed=1)
    ours = SAMImageEncoder(tiny_spec, image_size=size)
    ours.load_state_dict(official.state_dict())
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = official(x)
    assert (ours(x) - expected).abs().max().item() <= 1e-5


def test_mask_blocking_gives_same_result(tiny_spec, monkeypatch):
    """The query-blocked attention path equals the one-shot path."""
    ours = randomize_(SAMImageEncoder(tiny_spec, image_size=128), seed=2)
    x = torch.randn(2, 3, 128, 128)
    whole = ours(x)
    monkeypatch.setattr("sam3dseg.model.vit._MASK_BUDGET", 4 * 2 * 2 * 64 * 5)  # 5 query rows a block
    assert torch.allclose(ours(x), whole, atol=1e-6)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_parameter_counts_match_sam(name):
    with torch.device("meta"):
        ours = SAMImageEncoder(ENCODERS[name].spec, image_size=1024, name=name)
        official = official_encoder(name, 1024)
    assert count_parameters(ours) == count_parameters(official)
    assert [k for k, _ in ours.state_dict().items()] == [k for k, _ in official.state_dict().items()]


def test_known_parameter_counts():
    # SAM's published image-encoder sizes (paper / model card): ~89.7M, ~303M, ~632M.
    with torch.device("meta"):
        counts = {n: count_parameters(SAMImageEncoder(ENCODERS[n].spec, 1024)) for n in ("vit_b", "vit_l", "vit_h")}
    assert counts["vit_b"] == 89_670_912
    assert 300e6 < counts["vit_l"] < 310e6
    assert 630e6 < counts["vit_h"] < 640e6


def test_checkpoint_made_at_1024_loads_at_256(tiny_spec, tmp_path):
    source = randomize_(SAMImageEncoder(tiny_spec, image_size=1024), seed=3)
    ckpt = tmp_path / "enc.pth"
    torch.save(source.state_dict(), ckpt)  # encoder-only layout
    target = SAMImageEncoder(tiny_spec, image_size=256)
    load_checkpoint(target, ckpt)

    pos = source.pos_embed.permute(0, 3, 1, 2)
    expected = F.interpolate(pos, size=(16, 16), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.equal(target.pos_embed, expected)
    # Global block (index 1): tables of 2·64-1 rows resampled linearly to 2·16-1.
    table = source.blocks[1].attn.rel_pos_h
    resampled = F.interpolate(table.t()[None], size=31, mode="linear", align_corners=False)[0].t()
    assert target.blocks[1].attn.rel_pos_h.shape == (31, 16)
    assert torch.equal(target.blocks[1].attn.rel_pos_h, resampled)
    # Windowed block: its table depends on the window only and is copied unchanged.
    assert torch.equal(target.blocks[0].attn.rel_pos_w, source.blocks[0].attn.rel_pos_w)
    assert torch.equal(target.blocks[0].mlp.lin1.weight, source.blocks[0].mlp.lin1.weight)


def test_adapted_tables_equal_sam_runtime_interpolation(tiny_spec, tmp_path):
    """SAM interpolates a too-long rel-pos table linearly at run time; our load-time
    resampling of the global blocks' tables gives the very same attention bias."""
    modeling = pytest.importorskip("sam_reference").sam_modeling()
    source = randomize_(SAMImageEncoder(tiny_spec, image_size=1024), seed=4)
    ckpt = tmp_path / "enc.pth"
    torch.save(source.state_dict(), ckpt)
    target = SAMImageEncoder(tiny_spec, image_size=256)
    load_checkpoint(target, ckpt)
    get_rel_pos = modeling.image_encoder.get_rel_pos
    ours = get_rel_pos(16, 16, target.blocks[1].attn.rel_pos_w)
    sams = get_rel_pos(16, 16, source.blocks[1].attn.rel_pos_w)
    assert torch.equal(ours, sams)


def test_whole_sam_checkpoint_ignores_other_parts(tiny_spec, tmp_path):
    source = randomize_(SAMImageEncoder(tiny_spec, image_size=64), seed=5)
    ckpt = tmp_path / "sam.pth"
    _save_whole_sam(source.state_dict(), ckpt)
    target = SAMImageEncoder(tiny_spec, image_size=64)
    load_checkpoint(target, ckpt)
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), k


def test_nested_model_key_is_accepted(tiny_spec, tmp_path):
    source = randomize_(SAMImageEncoder(tiny_spec, image_size=64), seed=6)
    ckpt = tmp_path / "wrapped.pth"
    torch.save({"model": source.state_dict()}, ckpt)
    target = SAMImageEncoder(tiny_spec, image_size=64)
    load_checkpoint(target, ckpt)
    assert torch.equal(target.neck[0].weight, source.neck[0].weight)


def test_missing_and_unexpected_keys_are_named(tiny_spec, tmp_path):
    state = SAMImageEncoder(tiny_spec, image_size=64).state_dict()
    del state["blocks.1.mlp.lin2.bias"]
    state["blocks.7.attn.qkv.weight"] = torch.zeros(1)
    ckpt = tmp_path / "bad.pth"
    _save_whole_sam(state, ckpt)
    target = SAMImageEncoder(tiny_spec, image_size=64, name="tiny")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(target, ckpt)
    msg = str(err.value)
    assert "missing blocks.1.mlp.lin2.bias" in msg
    assert "unexpected blocks.7.attn.qkv.weight" in msg
    assert "tiny encoder" in msg and str(ckpt) in msg


def test_checkpoint_of_another_variant_is_refused(tiny_spec, tmp_path):
    wider = type(tiny_spec)(**{**asdict(tiny_spec), "embed_dim": 48, "num_heads": 3})
    ckpt = tmp_path / "wider.pth"
    torch.save(SAMImageEncoder(wider, image_size=64).state_dict(), ckpt)
    with pytest.raises(CheckpointError, match=r"embed_dim 32.*wrong shape.*file has embed_dim 48, depth 2"):
        load_checkpoint(SAMImageEncoder(tiny_spec, image_size=64), ckpt)


def test_not_a_checkpoint(tiny_spec, tmp_path):
    junk = tmp_path / "notes.pth"
    junk.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(SAMImageEncoder(tiny_spec, image_size=64), junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(SAMImageEncoder(tiny_spec, image_size=64), tmp_path / "absent.pth")


def test_truncated_checkpoint(tiny_spec, tmp_path):
    ckpt = tmp_path / "cut.pth"
    torch.save(SAMImageEncoder(tiny_spec, image_size=64).state_dict(), ckpt)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(SAMImageEncoder(tiny_spec, image_size=64), ckpt)


class _Payload:
    """Unpickling this would create a file; weights_only loading must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_never_run(tiny_spec, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pth"
    torch.save({"pos_embed": _Payload(marker)}, ckpt)
    with pytest.raises(CheckpointError):
        load_checkpoint(SAMImageEncoder(tiny_spec, image_size=64), ckpt)
    assert not marker.exists()


def test_frozen_by_construction(tiny_spec):
    enc = SAMImageEncoder(tiny_spec, image_size=32)
    assert not any(p.requires_grad for p in enc.parameters())
    parent = torch.nn.Sequential(enc)
    parent.train()
    assert not enc.training
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    out = enc(x)
    assert not out.requires_grad and out.grad_fn is None


def test_random_weights_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="sam3dseg"):
        with torch.device("meta"):
            build_encoder("vit_b", image_size=64)
    assert any("RANDOM weights" in r.getMessage() for r in caplog.records)


def test_bad_sizes_are_refused(tiny_spec):
    with pytest.raises(ValueError, match="multiple of 16"):
        SAMImageEncoder(tiny_spec, image_size=100)
    with pytest.raises(UserError, match="unknown encoder 'vit_x'; choose one of vit_b, vit_l, vit_h, medsam_vit_b, lite_medsam, mobile_sam"):
        build_encoder("vit_x")
    with pytest.raises(UserError, match="image_size 100 does not fit the vit_b encoder: give a positive multiple of 16"):
        build_encoder("vit_b", image_size=100)
    enc = SAMImageEncoder(tiny_spec, image_size=32)
    with pytest.raises(ValueError, match=r"expects \(N, 3, 32, 32\)"):
        enc(torch.zeros(1, 3, 48, 48))


def test_encoder_input_normalises_then_pads():
    grey = torch.tensor([[[0.0, 255.0, 100.0]]]).expand(1, 2, 3)  # (N=1, H=2, W=3)
    x = to_encoder_input(grey, 16)
    assert x.shape == (1, 3, 16, 16)
    for c in range(3):
        expected = (grey[0] - PIXEL_MEAN[c]) / PIXEL_STD[c]
        assert torch.allclose(x[0, c, :2, :3], expected)
    assert x[:, :, 2:].abs().max() == 0 and x[:, :, :, 3:].abs().max() == 0


def test_encode_slices_batches_like_one_pass(tiny_spec):
    enc = randomize_(SAMImageEncoder(tiny_spec, image_size=32), seed=7)
    slices = torch.rand(5, 32, 20) * 255
    whole = enc(to_encoder_input(slices, 32))
    assert torch.allclose(encode_slices(enc, slices, batch_size=2), whole, atol=1e-5)  # float32 rounding (1e-6 on torch 2.6)


@pytest.mark.slow
def test_vit_b_matches_official_at_1024(tmp_path):
    official = randomize_(official_encoder("vit_b", 1024), seed=1024)
    ckpt = tmp_path / "sam_vit_b.pth"
    _save_whole_sam(official.state_dict(), ckpt)
    ours = build_encoder("vit_b", image_size=1024, checkpoint=ckpt)
    # the whole checkpoint loads; the comparison runs blocks 0-2 of both (two windowed, global block 2: each kind
    # of block at SAM's own 64 × 64 grid, windows padded to 70) and the neck: the twelve cost a minute on 2 cores
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), official.state_dict().values()))
    ours.blocks, official.blocks = ours.blocks[:3], official.blocks[:3]
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        expected = official(x)
    assert (ours(x) - expected).abs().max().item() <= 1e-4
