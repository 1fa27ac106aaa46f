"""The whole model: slicing, per-channel encoding, stacking, decoding; the Python API example of docs/architecture.md."""

import re
from pathlib import Path

import pytest
import torch
from sam_reference import randomize_

from sam3dseg import SAM3D, SAM3DDecoder, deep_supervision_loss
from sam3dseg.model.encoder import to_encoder_input
from sam3dseg.model.vit import SAMImageEncoder


@pytest.fixture
def tiny_model(tiny_spec):
    enc = randomize_(SAMImageEncoder(tiny_spec, image_size=32), seed=11)
    dec = SAM3DDecoder(num_classes=3, in_channels=2 * 256, channels=(8, 8, 4, 4))
    return SAM3D(enc, dec, slice_batch=3)


def test_encode_slices_each_channel_and_stacks_along_depth(tiny_model):
    volume = torch.rand(2, 2, 4, 32, 24) * 255  # (B, C, D, H, W), W < S: padded
    feats = tiny_model.encode(volume)
    assert feats.shape == (2, 512, 4, 2, 2)
    enc = tiny_model.encoder
    for b in range(2):
        for c in range(2):
            for d in range(4):
                f = enc(to_encoder_input(volume[b, c, d][None], 32))[0]
                assert torch.allclose(feats[b, 256 * c : 256 * (c + 1), d], f, atol=1e-5)


def test_forward_with_the_image_path_reads_the_slices(tiny_model):
    """A decoder with the image path gets each volume's slices as the cache stores them."""
    from sam3dseg.model.decoder import image_path_input

    torch.manual_seed(0)
    dec = SAM3DDecoder(num_classes=3, in_channels=2 * 256, channels=(8, 8, 4, 4), image_channels=2)
    model = SAM3D(tiny_model.encoder, dec, slice_batch=3)
    volume = torch.rand(2, 2, 3, 32, 24) * 255
    outs = model(volume)
    expected = dec(model.encode(volume), torch.stack([image_path_input(v, 32) for v in volume]))
    assert all(torch.equal(a, b) for a, b in zip(outs, expected))


def test_forward_trains_only_the_decoder(tiny_model):
    volume = torch.rand(1, 2, 3, 32, 32) * 255
    outs = tiny_model(volume)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 3, 4, 4), (1, 3, 3, 8, 8), (1, 3, 3, 16, 16), (1, 3, 3, 32, 32)]
    loss = deep_supervision_loss(outs, torch.randint(0, 3, (1, 3, 32, 32)))
    loss.backward()
    assert all(p.grad is None for p in tiny_model.encoder.parameters())
    assert all(p.grad is not None for p in tiny_model.decoder.parameters())


def test_channel_mismatch_is_explained(tiny_model):
    with pytest.raises(ValueError, match="1 image channel.*built for 512 \\(2 channel"):
        tiny_model(torch.rand(1, 1, 2, 32, 32))


@pytest.mark.slow
def test_api_example_runs():
    readme = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(code, "architecture.md", "exec"), namespace)
    assert [tuple(o.shape)[-2:] for o in namespace["logits"]] == [(32, 32), (64, 64), (128, 128), (256, 256)]
