"""The embedding cache: keyed reuse, exact re-encoding, atomic and resumable writes."""

import shutil

import numpy as np
import pytest
import torch
from helpers import drop_images, free_port, make_cache, tiny_encoder

from sam3dseg.data.preprocess import PreprocessConfig
from sam3dseg.data.volumes import read_volume, write_volume
from sam3dseg.model.registry import EncoderInfo
from sam3dseg.pipeline.caching.cache import load_case
from sam3dseg.pipeline.caching.manifest import CacheManifest


class CountingEncoder:
    """Counts slices sent through an encoder's forward."""

    def __init__(self, encoder, monkeypatch):
        self.slices = 0
        original = type(encoder).forward

        def counted(module, x):
            self.slices += x.shape[0]
            return original(module, x)

        monkeypatch.setattr(type(encoder), "forward", counted)


def test_cache_contents(generated_dataset, tmp_path):
    make_cache(generated_dataset, tmp_path / "c")
    manifest = CacheManifest.read(tmp_path / "c")
    assert manifest.cases == [f"case_{i:03d}" for i in range(6)]
    assert manifest.feature_channels == 32 and manifest.encoder.image_size == 64
    case = load_case(tmp_path / "c", "case_000")
    d = case["label"].shape[0]
    assert case["features"].dtype == torch.float16 and case["features"].shape == (32, d, 4, 4)
    assert case["label"].dtype == torch.uint8 and max(case["label"].shape[1:]) == 64
    assert case["image"].dtype == torch.uint8 and case["image"].shape == (1, d, 32, 32)  # S/2 for the image path


def test_cache_without_images_gains_them_without_encoding(generated_dataset, tmp_path, monkeypatch):
    """A cache an older sam3dseg wrote (no images): the next run adds the images and encodes nothing;
    the result is byte-identical to a cache written today."""
    make_cache(generated_dataset, tmp_path / "new")
    make_cache(generated_dataset, tmp_path / "old")
    names = [f"case_{i:03d}" for i in range(6)]
    drop_images(tmp_path / "old", names)
    counter = CountingEncoder(tiny_encoder(), monkeypatch)
    summary = make_cache(generated_dataset, tmp_path / "old")
    assert counter.slices == 0 and summary["encoded"] == [] and summary["reused"] == names
    for name in names:
        for suffix in (".pt", ".json"):
            assert (tmp_path / "old" / "cases" / f"{name}{suffix}").read_bytes() == (tmp_path / "new" / "cases" / f"{name}{suffix}").read_bytes()


def test_predict_reads_the_image_the_cache_stored(generated_dataset, tmp_path):
    """The image path sees at prediction exactly the image training read from the cache."""
    from helpers import tiny_model_file

    from sam3dseg.data.datasets import load_dataset
    from sam3dseg.data.volumes import read_channels
    from sam3dseg.pipeline.inference.predictor import Predictor

    make_cache(generated_dataset, tmp_path / "c")
    case = load_dataset(generated_dataset).cases[2]
    predictor = Predictor(tiny_model_file(image_path=True), tiny_encoder())
    array, geometry = read_channels(list(case.images))
    encoded, _ = predictor.features(array[0], geometry)
    cached = load_case(tmp_path / "c", case.name)
    assert torch.equal(encoded.image, cached["image"])
    assert torch.allclose(encoded.features, cached["features"].float(), atol=2e-3)
    assert Predictor(tiny_model_file(), tiny_encoder()).features(array[0], geometry)[0].image is None


def test_second_run_encodes_nothing(generated_dataset, tmp_path, monkeypatch):
    make_cache(generated_dataset, tmp_path / "c")
    counter = CountingEncoder(tiny_encoder(), monkeypatch)
    summary = make_cache(generated_dataset, tmp_path / "c")
    assert counter.slices == 0 and summary["encoded"] == [] and len(summary["reused"]) == 6


def test_changed_weights_or_size_re_encode_everything(generated_dataset, tmp_path):
    make_cache(generated_dataset, tmp_path / "c")
    assert len(make_cache(generated_dataset, tmp_path / "c", seed=1)["encoded"]) == 6  # other weights
    assert len(make_cache(generated_dataset, tmp_path / "c", seed=1, image_size=32)["encoded"]) == 6
    assert len(make_cache(generated_dataset, tmp_path / "c", seed=1, image_size=32, preprocess=PreprocessConfig(slicing_axis="coronal"))["encoded"]) == 6


def test_a_cache_never_mixes_precisions(generated_dataset, tmp_path):
    """Features computed in int8 (or bf16) differ from fp32's: another precision is another key, so every case is
    encoded again and the manifest names the one precision all cases share."""
    make_cache(generated_dataset, tmp_path / "c")
    assert len(make_cache(generated_dataset, tmp_path / "c", precision="int8")["encoded"]) == 6
    assert CacheManifest.read(tmp_path / "c").encoder.precision == "int8"
    assert make_cache(generated_dataset, tmp_path / "c", precision="int8")["encoded"] == []
    assert len(make_cache(generated_dataset, tmp_path / "c", precision="bf16")["encoded"]) == 6
    assert len(make_cache(generated_dataset, tmp_path / "c")["encoded"]) == 6
    info = CacheManifest.read(tmp_path / "c").encoder
    assert info.precision == "fp32" and "precision" not in info.identity()  # fp32's key is the one older caches have


def test_changed_case_re_encodes_only_that_case(generated_dataset, tmp_path):
    ds = shutil.copytree(generated_dataset, tmp_path / "ds")
    make_cache(ds, tmp_path / "c")
    path = ds / "imagesTr" / "case_002_0000.nii.gz"
    array, geometry = read_volume(path)
    write_volume(array + 1, geometry, path)
    assert make_cache(ds, tmp_path / "c")["encoded"] == ["case_002"]


def test_checkpoint_hash_is_part_of_the_key(tmp_path):
    enc = tiny_encoder()
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(enc.state_dict(), a)
    torch.save({k: v + 1 for k, v in enc.state_dict().items()}, b)
    assert EncoderInfo.of(enc, a).checkpoint_sha256 != EncoderInfo.of(enc, b).checkpoint_sha256


def test_kill_and_resume_gives_identical_bytes(generated_dataset, tmp_path):
    make_cache(generated_dataset, tmp_path / "whole")

    def killer(name):
        if name == "case_002":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_cache(generated_dataset, tmp_path / "resumed", on_case_done=killer)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "resumed" / "cases").glob("*.pt")) == ["case_000.pt", "case_001.pt", "case_002.pt"]
    summary = make_cache(generated_dataset, tmp_path / "resumed")
    assert summary["reused"] == ["case_000", "case_001", "case_002"]
    for f in sorted((tmp_path / "whole" / "cases").iterdir()):
        assert f.read_bytes() == (tmp_path / "resumed" / "cases" / f.name).read_bytes(), f.name
    assert not list((tmp_path / "resumed" / "cases").glob(".*"))  # no temporaries left


def test_sharded_ranks_cover_all_cases(generated_dataset, tmp_path):
    s0 = make_cache(generated_dataset, tmp_path / "c", rank=0, world_size=2)
    s1 = make_cache(generated_dataset, tmp_path / "c", rank=1, world_size=2)
    assert s0["encoded"] == ["case_000", "case_002", "case_004"]
    assert s1["encoded"] == ["case_001", "case_003", "case_005"]


def test_multichannel_features_concatenate(tmp_path):
    from sam3dseg.data.synthetic import write_dataset

    ds = write_dataset(tmp_path / "ds", 1, "nnunet", channels=2, depth=(4, 5), size=(20, 24))
    make_cache(ds, tmp_path / "c")
    case = load_case(tmp_path / "c", "case_000")
    assert case["features"].shape[0] == 64
    assert not torch.equal(case["features"][:32], case["features"][32:])


# --- bad input, through the command line: one line, exit 2 -------------------------


def _broken_copy(generated_dataset, tmp_path, edit):
    ds = shutil.copytree(generated_dataset, tmp_path / "ds")
    edit(ds)
    return ds


def _cli_cache(ds, tmp_path, capsys):
    from sam3dseg.cli import main

    code = main(["cache", "--dataset", str(ds), "--out", str(tmp_path / "c"), "--image-size", "32", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if not line.startswith("sam3dseg: WARNING")]


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_2d(path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Image([16, 16], sitk.sitkFloat32), str(path))


def _rewrite(ds, name, change):
    path = ds / name
    array, geometry = read_volume(path)
    array, geometry = change(array, geometry)
    write_volume(array, geometry, path)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda ds: (ds / "imagesTr" / "case_001_0000.nii.gz").unlink(), "case case_001: image not found"),
        (lambda ds: (ds / "labelsTr" / "case_001.nii.gz").write_bytes(b"garbage"), "cannot read .*case_001.nii.gz"),
        (
            lambda ds: _rewrite(ds, "labelsTr/case_000.nii.gz", lambda a, g: (a[:, :, :-1], g)),
            "case case_000: label .* has shape",
        ),
        (
            lambda ds: _rewrite(ds, "labelsTr/case_000.nii.gz", lambda a, g: (a, type(g)(tuple(s * 2 for s in g.spacing), g.origin, g.direction))),
            "differ in spacing/origin/direction",
        ),
        (lambda ds: _rewrite(ds, "labelsTr/case_000.nii.gz", lambda a, g: (a + 3, g)), "declares classes 0..2"),
        (
            lambda ds: _rewrite(ds, "imagesTr/case_000_0000.nii.gz", lambda a, g: (np.where(a > 500, np.nan, a).astype(np.float32), g)),
            "has .* NaN/Inf voxel",
        ),
        (lambda ds: (ds / "dataset.json").write_text("{broken", encoding="utf-8"), "dataset.json is not valid JSON"),
        (lambda ds: _truncate(ds / "imagesTr" / "case_003_0000.nii.gz"), "cannot read .*case_003_0000.nii.gz: truncated"),
        (lambda ds: _write_2d(ds / "imagesTr" / "case_001_0000.nii.gz"), "is a 2-D image"),
        (lambda ds: (ds / "labelsTr" / "case_009.nii.gz").symlink_to("/etc/hostname"), "points outside the dataset folder"),
    ],
    ids=[
        "missing-image", "unreadable-label", "shape-mismatch", "geometry-mismatch", "label-values", "nan",
        "malformed-json", "truncated-image", "2d-image", "outside-path",
    ],  # fmt: skip
)
def test_bad_input_one_line_exit_2(generated_dataset, tmp_path, capsys, edit, message):
    ds = _broken_copy(generated_dataset, tmp_path, edit)
    code, lines = _cli_cache(ds, tmp_path, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("sam3dseg: error: ")
    import re

    assert re.search(message, lines[0]), lines[0]


def test_msd_four_d_and_nnunet_channels_give_the_same_features(tmp_path):
    """BraTS-style: MSD stores the sequences in one 4-D file, nnU-Net in one file each."""
    import json

    import SimpleITK as sitk

    from sam3dseg.data.synthetic import write_dataset

    nn = write_dataset(tmp_path / "nn", 1, "nnunet", channels=2, depth=(4, 5), size=(20, 24))
    msd = tmp_path / "msd"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    channels = [sitk.ReadImage(str(nn / "imagesTr" / f"case_000_{c:04d}.nii.gz")) for c in range(2)]
    sitk.WriteImage(sitk.JoinSeries(channels), str(msd / "imagesTr" / "case_000.nii.gz"))
    shutil.copy(nn / "labelsTr" / "case_000.nii.gz", msd / "labelsTr" / "case_000.nii.gz")
    meta = {
        "modality": {"0": "MR", "1": "MR"},
        "labels": {"0": "background", "1": "class1", "2": "class2"},
        "training": [{"image": "./imagesTr/case_000.nii.gz", "label": "./labelsTr/case_000.nii.gz"}],
    }
    (msd / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    make_cache(nn, tmp_path / "c_nn")
    make_cache(msd, tmp_path / "c_msd")
    a, b = load_case(tmp_path / "c_nn", "case_000"), load_case(tmp_path / "c_msd", "case_000")
    assert a["features"].shape[0] == 64
    assert torch.equal(a["features"], b["features"]) and torch.equal(a["label"], b["label"])


@pytest.mark.slow
def test_torchrun_cache_shares_cases_out(generated_dataset, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "sam3dseg", "cache", "--dataset", str(generated_dataset), "--out", str(tmp_path / "c"),
        "--image-size", "32", "--quiet",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[rank 0] cache" in done.stdout and "[rank 1] cache" in done.stdout
    assert done.stdout.count("3 case(s) encoded") == 2
    assert len(CacheManifest.read(tmp_path / "c").cases) == 6
    assert len(list((tmp_path / "c" / "cases").glob("*.pt"))) == 6


def test_damaged_cached_case_is_explained(generated_dataset, tmp_path):
    from sam3dseg.errors import UserError

    make_cache(generated_dataset, tmp_path / "c")
    path = tmp_path / "c" / "cases" / "case_001.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match=r"case_001.pt is not a readable cached case: .*run `sam3dseg cache` again") as err:
        load_case(tmp_path / "c", "case_001")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="cached case not found: .*case_404.pt"):
        load_case(tmp_path / "c", "case_404")


@pytest.mark.slow
def test_cache_yaml_repeats_the_run(generated_dataset, tmp_path, capsys):
    from sam3dseg.cli import main
    from sam3dseg.pipeline.config import load_cache_config

    out = tmp_path / "c"
    base = ["cache", "--dataset", str(generated_dataset), "--out", str(out), "--quiet"]
    assert main([*base, "--image-size", "32", "--ct-window", "50", "350", "--intensity", "ct"]) == 0
    config = load_cache_config(out / "cache.yaml")
    assert config.image_size == 32 and config.preprocess.ct_window == (50.0, 350.0) and config.preprocess.intensity == "ct"
    capsys.readouterr()
    assert main([*base, "--config", str(out / "cache.yaml")]) == 0
    assert "0 case(s) encoded, 6 already cached" in capsys.readouterr().out
    assert main([*base, "--config", str(out / "cache.yaml"), "--image-size", "48"]) == 0  # a flag overrides the file
    assert "6 case(s) encoded" in capsys.readouterr().out and load_cache_config(out / "cache.yaml").image_size == 48


def test_a_cache_of_a_newer_format_version_is_refused_in_one_line(generated_dataset, tmp_path, capsys):
    import json

    from sam3dseg.cli import main
    from sam3dseg.pipeline.caching.manifest import MANIFEST_VERSION

    make_cache(generated_dataset, tmp_path / "c", image_size=32)
    path = tmp_path / "c" / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    assert manifest["version"] == MANIFEST_VERSION
    path.write_text(json.dumps({**manifest, "version": MANIFEST_VERSION + 1}), encoding="utf-8")
    assert main(["train", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"was written by a newer sam3dseg (cache format version {MANIFEST_VERSION + 1}" in err[0], err


def test_every_problem_is_reported_before_any_encoding(generated_dataset, tmp_path, capsys, monkeypatch):
    """Three cases with three different problems: `cache` names all three and encodes nothing;
    `sam3dseg check` reports the same without an encoder."""
    from sam3dseg.cli import main
    from sam3dseg.model.vit import SAMImageEncoder

    ds = shutil.copytree(generated_dataset, tmp_path / "ds")
    (ds / "imagesTr" / "case_001_0000.nii.gz").unlink()
    _rewrite(ds, "labelsTr/case_003.nii.gz", lambda a, g: (a + 3, g))
    _truncate(ds / "imagesTr" / "case_005_0000.nii.gz")
    slices = []
    original = SAMImageEncoder.forward
    monkeypatch.setattr(SAMImageEncoder, "forward", lambda m, x: slices.append(len(x)) or original(m, x))
    code, lines = _cli_cache(ds, tmp_path, capsys)
    assert code == 2 and slices == []
    assert lines[0].startswith(f"sam3dseg: error: 3 problems in the dataset {ds}")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["case case_001", "case case_003", "case case_005"]
    assert "image not found" in lines[1] and "declares classes 0..2" in lines[2] and "truncated" in lines[3]
    assert not (tmp_path / "c" / "cases").exists() or not list((tmp_path / "c" / "cases").iterdir())

    assert main(["check", "--dataset", str(ds), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[1:] == lines[1:]
    assert main(["check", "--dataset", str(generated_dataset), "--quiet"]) == 0
    assert "6 training case(s), no problems" in capsys.readouterr().out


# Augmented views (--views K). Two generated cases keep these fast; every case of the dataset gets views.
def _two_cases(generated_dataset, tmp_path):
    from sam3dseg.data.synthetic import write_dataset

    return write_dataset(tmp_path / "Dataset002_Two", 2, "nnunet", seed=4)


def test_views_are_the_augmented_cases_encoded(generated_dataset, tmp_path):
    """View v of a case holds exactly augment_view(case, seed(case, v)): its features are the encoder's
    on the augmented slices, its image and label the augmented ones (so they stay aligned)."""
    from sam3dseg.data.augment import AugmentConfig, augment_view, view_seed
    from sam3dseg.data.datasets import load_dataset
    from sam3dseg.model.decoder import image_path_input
    from sam3dseg.model.encoder import encode_volume
    from sam3dseg.pipeline.caching.cache import load_case_arrays

    ds = _two_cases(generated_dataset, tmp_path)
    augment = AugmentConfig(copies=2)
    summary = make_cache(ds, tmp_path / "c", augment=augment)
    assert summary["views_encoded"] == 4 and len(summary["encoded"]) == 2
    manifest = CacheManifest.read(tmp_path / "c")
    assert manifest.views == 2 and manifest.augment.rotation == 30.0
    case = load_dataset(ds).cases[1]
    volume, label, *_ = load_case_arrays(case, load_dataset(ds), PreprocessConfig(), 64)
    original = load_case(tmp_path / "c", case.name)
    for v in (1, 2):
        view = load_case(tmp_path / "c", case.name, view=v)
        image, moved = augment_view(volume, label, view_seed(case.name, v), augment)
        assert torch.equal(view["label"], torch.from_numpy(moved))
        assert torch.equal(view["image"], image_path_input(torch.from_numpy(image), 64))
        assert torch.equal(view["features"], encode_volume(tiny_encoder(), torch.from_numpy(image)).half())
        assert view["features"].shape == original["features"].shape and not torch.equal(view["label"], original["label"])
    assert not (tmp_path / "c" / "views" / "3").exists()


def test_views_are_reused_resumed_and_reproduced_byte_for_byte(generated_dataset, tmp_path, monkeypatch):
    """A second run encodes nothing; a run killed after the first case resumes to the same bytes as
    one never stopped (and as a cache built in another folder); more views encode only the new ones;
    other augmentation settings re-encode the views but not the originals."""
    from sam3dseg.data.augment import AugmentConfig

    ds = _two_cases(generated_dataset, tmp_path)
    make_cache(ds, tmp_path / "whole", augment=AugmentConfig(copies=2))

    def killer(name):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_cache(ds, tmp_path / "resumed", augment=AugmentConfig(copies=2), on_case_done=killer)
    assert sorted(p.name for p in (tmp_path / "resumed").rglob("*.pt")) == ["case_000.pt"] * 3  # the case and its two views
    counter = CountingEncoder(tiny_encoder(), monkeypatch)
    summary = make_cache(ds, tmp_path / "resumed", augment=AugmentConfig(copies=2))
    assert summary["encoded"] == ["case_001"] and summary["views_encoded"] == 2
    files = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*") if p.is_file())
    assert len(files) == 13  # 2 × (case + 2 views) × (.pt + .json), manifest
    for f in files:
        assert (tmp_path / "whole" / f).read_bytes() == (tmp_path / "resumed" / f).read_bytes(), f
    assert not [p for p in (tmp_path / "resumed").rglob(".*")]  # no temporaries left

    counter.slices = 0
    assert make_cache(ds, tmp_path / "whole", augment=AugmentConfig(copies=2))["views_encoded"] == 0 and counter.slices == 0
    summary = make_cache(ds, tmp_path / "whole", augment=AugmentConfig(copies=3))
    assert summary["views_encoded"] == 2 and summary["encoded"] == []  # view 3 of each case only
    summary = make_cache(ds, tmp_path / "whole", augment=AugmentConfig(copies=3, rotation=10.0))
    assert summary["views_encoded"] == 6 and summary["encoded"] == []


def test_views_without_monai_say_how_to_install_it(generated_dataset, tmp_path, monkeypatch):
    import sys

    from sam3dseg.data.augment import AugmentConfig
    from sam3dseg.errors import UserError

    monkeypatch.setitem(sys.modules, "monai", None)  # import monai now raises ImportError
    with pytest.raises(UserError, match=r"need MONAI: pip install 'sam3dseg\[augment\]'"):
        make_cache(_two_cases(generated_dataset, tmp_path), tmp_path / "c", augment=AugmentConfig(copies=1))
    assert make_cache(_two_cases(generated_dataset, tmp_path), tmp_path / "c")["views_encoded"] == 0  # views 0 needs no MONAI


def test_negative_views_are_one_line_exit_2(generated_dataset, tmp_path, capsys):
    from sam3dseg.cli import main

    code = main(["cache", "--dataset", str(generated_dataset), "--out", str(tmp_path / "c"), "--augmented-copies", "-1", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == ["sam3dseg: error: augment.copies (--augmented-copies) must be an integer >= 0, got -1"]
    assert not (tmp_path / "c").exists()


def test_the_plan_is_a_value_made_without_encoding(generated_dataset, tmp_path, monkeypatch):
    """plan_cache says which cases build_cache will encode, from the keys alone: after one image changes, that case
    is to encode and the rest are reused; nothing is encoded or written to find that out."""
    from sam3dseg.data.augment import AugmentConfig
    from sam3dseg.data.datasets import load_dataset
    from sam3dseg.pipeline.caching import cache as cache_module
    from sam3dseg.pipeline.caching.cache import plan_cache

    ds = tmp_path / "ds"
    shutil.copytree(generated_dataset, ds)
    make_cache(ds, tmp_path / "c")
    path = ds / "imagesTr" / "case_002_0000.nii.gz"
    array, geometry = read_volume(path)
    write_volume(array + 1, geometry, path)
    monkeypatch.setattr(cache_module, "_encode", lambda *a, **k: pytest.fail("planning encoded"))
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*"))
    info = CacheManifest.read(tmp_path / "c").encoder
    plan = plan_cache(load_dataset(ds), tmp_path / "c", info, PreprocessConfig(), AugmentConfig())
    assert [(w.case.name, w.original, w.views) for w in plan.work] == [("case_002", "encode", [])]
    assert plan.reused == [f"case_{i:03d}" for i in range(6) if i != 2]
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*")) == before
    half = plan_cache(load_dataset(ds), tmp_path / "c", info, PreprocessConfig(), AugmentConfig(), rank=1, world_size=2)
    assert [w.case.name for w in half.work] == [] and half.reused == ["case_001", "case_003", "case_005"]
