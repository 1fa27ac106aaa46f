"""Every setting whose default depends on another is resolved once all it depends on is known, whatever order
the settings arrive in (flags, --config, --recipe, --plan), and the resolved value is what cache.yaml, config.yaml
and the model file record. Through the command line, as a user meets them."""

import pytest
import torch
import yaml
from helpers import TINY_RUN, make_cache

from sam3dseg.cli import main
from sam3dseg.model import precision
from sam3dseg.model.precision import resolve_precision
from sam3dseg.pipeline.caching import cache as cache_module
from sam3dseg.pipeline.model_file import load_model_file


@pytest.fixture
def settings_only(monkeypatch):
    """`sam3dseg cache` up to the point where its settings are resolved and written (cache.yaml), without encoding:
    the encoder is built as the settings say, then the cases' checks pass and nothing is encoded."""
    built = {}

    def build_cache(dataset, out, encoder, info, *args, on_checked=None, **kwargs):
        built["encoder"] = encoder
        on_checked()
        return {"encoded": [], "reused": [], "views_encoded": 0}

    monkeypatch.setattr(cache_module, "build_cache", build_cache)
    return built


def _cache_yaml(generated_dataset, out, *flags) -> dict:
    assert main(["cache", "--dataset", str(generated_dataset), "--out", str(out), "--quiet", *flags]) == 0
    return yaml.safe_load((out / "cache.yaml").read_text())


def test_the_image_size_and_normalisation_follow_the_encoder(generated_dataset, tmp_path, settings_only):
    got = _cache_yaml(generated_dataset, tmp_path / "lite", "--encoder", "lite_medsam")
    assert (got["image_size"], got["normalisation"]) == (256, "minmax")  # its own 256, not ViT's 1024
    assert settings_only["encoder"].image_size == 256 and settings_only["encoder"].normalisation == "minmax"
    got = _cache_yaml(generated_dataset, tmp_path / "mobile", "--encoder", "mobile_sam")
    assert (got["image_size"], got["normalisation"]) == (1024, "sam")


def test_a_later_encoder_drops_the_size_an_earlier_source_chose_for_another(generated_dataset, tmp_path, settings_only):
    # a recipe sets vit_b at 512: alone it holds; a flag that changes the encoder takes that encoder's own size
    assert _cache_yaml(generated_dataset, tmp_path / "r", "--recipe", "synapse")["image_size"] == 512
    got = _cache_yaml(generated_dataset, tmp_path / "rl", "--recipe", "synapse", "--encoder", "lite_medsam")
    assert (got["image_size"], got["normalisation"]) == (256, "minmax")
    # ... unless the same source sets the size too
    assert _cache_yaml(generated_dataset, tmp_path / "rs", "--recipe", "synapse", "--encoder", "lite_medsam", "--image-size", "128")["image_size"] == 128
    # another cache's cache.yaml (lite_medsam, 256, minmax) with --encoder: that encoder's defaults
    got = _cache_yaml(generated_dataset, tmp_path / "c", "--config", str(tmp_path / "rl" / "cache.yaml"), "--encoder", "vit_b")
    assert (got["image_size"], got["normalisation"]) == (1024, "sam")
    # the same encoder again changes nothing: the file's size stays
    assert _cache_yaml(generated_dataset, tmp_path / "s", "--config", str(tmp_path / "rs" / "cache.yaml"), "--encoder", "lite_medsam")["image_size"] == 128
    # a plan made for vit_b, then --encoder lite_medsam
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"cache": {"encoder": "vit_b", "image_size": 64}, "run": {}}))
    assert _cache_yaml(generated_dataset, tmp_path / "p", "--plan", str(plan))["image_size"] == 64
    assert _cache_yaml(generated_dataset, tmp_path / "pl", "--plan", str(plan), "--encoder", "lite_medsam")["image_size"] == 256


def test_the_precision_follows_the_device(generated_dataset, tmp_path, settings_only, monkeypatch):
    got = _cache_yaml(generated_dataset, tmp_path / "a", "--encoder", "lite_medsam", "--device", "cpu")
    assert got["encoder_precision"] == resolve_precision("auto", torch.device("cpu")) != "auto"  # what this CPU computes best
    precision.native_bf16.cache_clear()
    monkeypatch.setattr(precision, "native_bf16", lambda: True)  # an AVX512-BF16 or AMX CPU
    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)
    assert _cache_yaml(generated_dataset, tmp_path / "b", "--encoder", "lite_medsam", "--image-size", "64")["encoder_precision"] == "bf16"
    assert settings_only["encoder"].precision == "bf16"


def test_bf16_where_the_cpu_has_none_is_one_line_and_nothing_is_written(generated_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: False)  # an AVX2-only CPU
    out = tmp_path / "cache"
    code = main(["cache", "--dataset", str(generated_dataset), "--out", str(out), "--encoder-precision", "bf16", "--device", "cpu",
                 "--image-size", "32", "--quiet"])  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if "WARNING" not in line]
    assert code == 2 and len(err) == 1 and "bf16" in err[0] and "use fp32 or int8" in err[0]
    assert not out.exists()


def test_train_records_the_crops_and_views_it_resolved(generated_dataset, tmp_path):
    make_cache(generated_dataset, tmp_path / "c", image_size=64)  # stride 16: a 4 × 4 token grid
    assert main(["train", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "r"), "--quiet", *TINY_RUN]) == 0
    written = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]
    assert (written["crop_tokens"], written["augmented_copies"]) == (2, 0)  # auto: half the grid; null: what the cache holds
    record = load_model_file(tmp_path / "r" / "best.pt").config.train
    assert (record.crop_tokens, record.augmented_copies) == (2, 0)



def test_a_flag_that_turns_a_setting_off_says_so(capsys):
    """`--no-postprocess` once read "apply the post-processing ... (--no-postprocess: raw)": the flag's help says
    what giving it does."""
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-postprocess leave out the post-processing the model's validation decided" in text
    assert "on without this flag" in text and "apply the post-processing" not in text
