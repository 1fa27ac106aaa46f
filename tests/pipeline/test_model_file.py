"""The model file: one record, written and read in one place, its version checked, old files kept loading."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_encoder, tiny_model_file

from sam3dseg.data.synthetic import make_case
from sam3dseg.errors import UserError
from sam3dseg.pipeline import model_file
from sam3dseg.pipeline.config import PredictConfig
from sam3dseg.pipeline.inference.predictor import Predictor
from sam3dseg.pipeline.model_file import MODEL_VERSION, ModelFile, load_model_file

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_round_trip(tmp_path):
    record = tiny_model_file(crop_depth=6)
    record.history, record.best_dice, record.epoch = [{"epoch": 1, "train_loss": 0.5}], 0.25, 1
    loaded = load_model_file(record.save(tmp_path / "m.pt"))
    assert loaded.config == record.config and loaded.preprocess == record.preprocess and loaded.encoder == record.encoder
    assert (loaded.class_names, loaded.channel_names, loaded.feature_channels) == (["background", "a", "b"], ["MR"], 32)
    assert (loaded.epoch, loaded.best_dice, loaded.history) == (1, 0.25, record.history)
    assert all(torch.equal(loaded.decoder[k], v) for k, v in record.decoder.items())
    assert torch.load(tmp_path / "m.pt", weights_only=True)["version"] == MODEL_VERSION


def test_a_file_written_by_version_1_still_loads_and_predicts_the_same():
    """tests/fixtures/model_v1.pt was written by `train` at commit 1723ee4 (tests/fixtures/make_model_v1.py),
    and model_v1_prediction.npz is what that code's Predictor made of generated case 4."""
    record = load_model_file(FIXTURES / "model_v1.pt")
    assert record.epoch == 1 and record.config.decoder.channels == (8, 8, 8, 8) and record.encoder.name == "tiny"
    assert not record.config.decoder.pixel_skip and record.config.loss.dice == "joint"  # the defaults of its day
    images, _, geometry = make_case(np.random.default_rng(4))
    labels, _ = Predictor(record, tiny_encoder(32), PredictConfig(window=4)).predict_array(images[0], geometry)
    assert np.array_equal(labels, np.load(FIXTURES / "model_v1_prediction.npz")["labels"])


def test_a_file_written_by_version_3_predicts_bit_identically_and_its_cache_keys_hold(tmp_path):
    """tests/fixtures/model_v3.pt, its prediction and its cache keys were written at commit b7ecca7, before the
    encoder interface (tests/fixtures/make_model_v3.py): the ViT path must give the same labels and the same
    probabilities, and caches of SAM's ViTs the same keys (so nothing is re-encoded).

    The probabilities are compared to 1e-6, not bit for bit: the same code gives bit-identical bytes on one CPU,
    but oneDNN picks other GEMM kernels on AVX-512/AMX than on AVX2 (a CI machine differed from the writer's by
    5e-8). bench/output_digest.py checks bytes on one machine; a changed computation moves them far more."""
    import json

    from sam3dseg.data.datasets import load_dataset
    from sam3dseg.data.preprocess import PreprocessConfig
    from sam3dseg.data.synthetic import write_dataset
    from sam3dseg.model.registry import EncoderInfo
    from sam3dseg.pipeline.caching.cache import case_key
    from sam3dseg.pipeline.inference.predict import predict_probabilities

    record = load_model_file(FIXTURES / "model_v3.pt")
    assert record.encoder.stride == 16 and record.encoder.normalisation == "sam" and record.config.decoder.pixel_skip
    assert record.build_decoder().scales == (2, 2, 2, 2)
    images, _, geometry = make_case(np.random.default_rng(4))
    predictor = Predictor(record, tiny_encoder(32), PredictConfig(window=4))
    expected = np.load(FIXTURES / "model_v3_prediction.npz")
    assert np.array_equal(predictor.predict_array(images[0], geometry)[0], expected["labels"])
    probabilities = predict_probabilities(predictor, images[0], geometry)
    assert probabilities.dtype == expected["probabilities"].dtype
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=0, atol=1e-6)
    ds = write_dataset(tmp_path / "ds", 3, "nnunet", seed=3)
    info = EncoderInfo.of(tiny_encoder(32), None)
    keys = {c.name: case_key(c, PreprocessConfig(), info) for c in load_dataset(ds).cases}
    assert keys == json.loads((FIXTURES / "model_v3_cache_keys.json").read_text())


def _with(tmp_path, **changes):
    state = tiny_model_file().to_state()
    state.update(changes)
    path = tmp_path / "m.pt"
    torch.save({k: v for k, v in state.items() if v is not ...}, path)
    return path


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"version": MODEL_VERSION + 1}, f"was written by a newer sam3dseg (model format version {MODEL_VERSION + 1}"),
        ({"version": "one"}, "has an unknown model format version 'one'"),
        ({"version": ...}, "has an unknown model format version None"),
        ({"class_names": ...}, "is damaged"),
        ({"format": "other"}, "is not a sam3dseg model file"),
    ],
)
def test_unknown_versions_and_damage_are_one_line(tmp_path, changes, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as err:
        load_model_file(_with(tmp_path, **changes))
    assert "\n" not in str(err.value)


def test_version_1_files_keep_the_defaults_they_were_trained_with(tmp_path, monkeypatch):
    """Version 2 changed three defaults; a version-1 file without those keys reads with the old ones
    (_MIGRATIONS[1]), version 3 adds train.views (0 before), and every file goes through the migration
    of each version step."""
    state = tiny_model_file().to_state()
    state["version"] = 1
    del state["config"]["decoder"]["pixel_skip"], state["config"]["loss"]["dice"], state["config"]["train"]["foreground_fraction"]
    del state["config"]["train"]["augmented_copies"], state["config"]["decoder"]["grid_stride"]
    torch.save(state, tmp_path / "v1.pt")
    record = load_model_file(tmp_path / "v1.pt")
    assert (record.config.decoder.pixel_skip, record.config.loss.dice, record.config.train.foreground_fraction) == (False, "joint", 0.0)
    assert record.build_decoder().image_channels == 0
    assert record.config.train.augmented_copies == 0  # version 3 records the copies drawn among; earlier files drew none

    assert record.config.decoder.grid_stride == 16  # version 4 records the grid block 1 reads: the encoder's before

    def v5_to_v6(state: dict) -> dict:
        return {**state, "class_names": [n.upper() for n in state["class_names"]]}

    monkeypatch.setattr(model_file, "MODEL_VERSION", 6)
    monkeypatch.setattr(model_file, "_MIGRATIONS", {**model_file._MIGRATIONS, 5: v5_to_v6})
    assert load_model_file(tmp_path / "v1.pt").class_names == ["BACKGROUND", "A", "B"]


def test_a_version_4_file_reads_the_old_names_of_renamed_settings(tmp_path):
    """Version 5 renamed decoder.image_path (to pixel_skip) and train.views (to augmented_copies): a version-4
    file holds the old names and loads with its values under the new ones, no note printed (nothing to fix)."""
    record = tiny_model_file(image_path=False)
    state = record.to_state()
    state["version"] = 4
    config = state["config"]
    config["decoder"]["image_path"] = config["decoder"].pop("pixel_skip")
    config["train"]["views"] = config["train"].pop("augmented_copies")
    config["train"]["views"] = 3
    torch.save(state, tmp_path / "v4.pt")
    loaded = load_model_file(tmp_path / "v4.pt").config
    assert (loaded.decoder.pixel_skip, loaded.train.augmented_copies) == (False, 3)


def test_a_version_3_file_of_a_stride_4_encoder_keeps_its_unpooled_decoder(tmp_path):
    """Files written before decoder.grid_stride read the encoder's own grid: a LiteMedSAM model of version 3
    rebuilds the decoder it was trained as (no pooling, blocks 1 and 2 at S/4), not today's auto (8)."""
    from dataclasses import replace

    record = tiny_model_file()
    record.encoder = replace(record.encoder, stride=4)
    record.decoder = model_file.build_decoder(replace(record.config.decoder, grid_stride=4), 3, 32, 1, 4).state_dict()
    state = record.to_state()
    state["version"] = 3
    del state["config"]["decoder"]["grid_stride"]
    torch.save(state, tmp_path / "v3.pt")
    decoder = load_model_file(tmp_path / "v3.pt").build_decoder()
    assert decoder.grid_stride == 4 and decoder.pool == 1 and decoder.scales == (1, 1, 2, 2)


def test_the_record_rebuilds_its_decoder():
    record: ModelFile = tiny_model_file()
    decoder = record.build_decoder()
    assert decoder.in_channels == 32 and decoder.num_classes == 3
    assert all(torch.equal(decoder.state_dict()[k], v) for k, v in record.decoder.items())
