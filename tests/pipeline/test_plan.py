"""sam3dseg plan: the fingerprint of a dataset with known spacings and intensities, and what it proposes."""

import json

import numpy as np
import pytest
import yaml

from sam3dseg.cli import main
from sam3dseg.data.volumes import Geometry, write_volume
from sam3dseg.pipeline.config import load_cache_config, load_run_config
from sam3dseg.pipeline.planning.plan import target_spacing

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


def _known_dataset(root, modality="CT", z_spacings=(2.0, 2.5, 3.0, 3.5, 5.0)):
    """Axial cases, (x, y) spacing 0.8 mm, z spacing per case as given, 12 × 40 × 36 voxels; foreground (class 1)
    a block of uniform intensities 100..300, background -1000."""
    rng = np.random.default_rng(0)
    values = []
    for i, sz in enumerate(z_spacings):
        image = np.full((12, 40, 36), -1000.0, np.float32)
        label = np.zeros((12, 40, 36), np.uint8)
        label[3:9, 10:30, 8:28] = 1
        image[label == 1] = rng.uniform(100, 300, int(label.sum()))
        values.append(image[label == 1])
        geometry = Geometry((0.8, 0.8, sz), (0.0, 0.0, 0.0), IDENTITY)
        write_volume(image, geometry, root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_volume(label, geometry, root / "labelsTr" / f"case_{i:03d}.nii.gz")
    meta = {"channel_names": {"0": modality}, "labels": {"background": 0, "organ": 1}, "numTraining": len(z_spacings), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return np.concatenate(values)


def test_plan_proposes_the_expected_spacing_window_and_size(tmp_path, capsys):
    values = _known_dataset(tmp_path / "ds")
    assert main(["plan", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "plan"), "--quiet"]) == 0
    fp = json.loads((tmp_path / "plan" / "fingerprint.json").read_text(encoding="utf-8"))
    assert fp["cases"] == 5 and fp["spacings"][0] == pytest.approx([2.0, 0.8, 0.8]) and fp["sizes"][0] == [12, 40, 36]
    stats = fp["foreground_intensities"]["CT"]
    assert stats["percentile_00_5"] == pytest.approx(np.percentile(values, 0.5), rel=1e-5)  # every voxel (< 10,000 per case)
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(values, 99.5), rel=1e-5)
    assert fp["classes"]["organ"]["cases"] == 5 and fp["classes"]["organ"]["voxel_fraction"] == pytest.approx(6 * 20 * 20 / (12 * 40 * 36))
    plan = yaml.safe_load((tmp_path / "plan" / "plan.yaml").read_text(encoding="utf-8"))
    pre = plan["cache"]["preprocess"]
    assert pre["target_spacing"] == [3.0, 0.8, 0.8]  # the median; not anisotropic enough for the 10th percentile
    lo, hi = np.percentile(values, [0.5, 99.5])
    assert pre["intensity"] == "ct" and pre["ct_window"] == pytest.approx([(lo + hi) / 2, hi - lo], abs=0.01)
    assert plan["cache"]["image_size"] == 48  # 40 rows at 0.8 mm, rounded up to 16
    # 12 slices × (2.0..5.0) / 3.0: median 12; a 3 × 3 token grid: crop_tokens left to its default, half the grid
    assert plan["run"]["train"] == {"crop_depth": 12, "batch_size": 2}
    out = capsys.readouterr().out
    assert "target spacing 3 × 0.8 × 0.8 mm, CT window" in out and "crops 12 slices × half the token grid, batch 2" in out
    # cache and train take it; explicit options still win
    cache = load_cache_config(None, {"image_size": 64}, plan=tmp_path / "plan" / "plan.yaml")
    assert cache.image_size == 64 and cache.preprocess.target_spacing == (3.0, 0.8, 0.8) and cache.preprocess.intensity == "ct"
    assert load_run_config(None, None, plan=tmp_path / "plan" / "plan.yaml").train.crop_depth == 12
    assert load_run_config(None, ["train.crop_depth=4"], plan=tmp_path / "plan" / "plan.yaml").train.crop_depth == 4
    assert main(["train", "--cache", str(tmp_path), "--out", str(tmp_path / "r"), "--plan", str(tmp_path / "nothing.yaml")]) == 2
    assert "plan file not found" in capsys.readouterr().err


def test_mr_plans_percentiles_and_anisotropic_spacing_takes_the_10th_percentile(tmp_path):
    _known_dataset(tmp_path / "ds", modality="T2", z_spacings=(4.0, 4.5, 5.0, 6.0, 7.0))
    main(["plan", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "plan"), "--quiet"])
    plan = yaml.safe_load((tmp_path / "plan" / "plan.yaml").read_text(encoding="utf-8"))
    assert plan["cache"]["preprocess"]["intensity"] == "percentile" and "ct_window" not in plan["cache"]["preprocess"]
    # 5.0 mm > 3 × 0.8 mm, but 12 slices × 3 is not under 36 voxels: nnU-Net keeps the median
    assert plan["cache"]["preprocess"]["target_spacing"] == [5.0, 0.8, 0.8]
    spacings = np.array([[s, 0.8, 0.8] for s in (4.0, 4.5, 5.0, 6.0, 7.0)])
    sizes = np.array([[10, 200, 200]] * 5)  # few slices, large planes: anisotropic in spacing and in voxels
    assert target_spacing(spacings, sizes) == [pytest.approx(np.percentile(spacings[:, 0], 10)), 0.8, 0.8]


def test_crop_and_batch_fit_the_machines_memory():
    """Batch 2 and 16 slices while a step's estimated memory fits in half the machine's; batch 1, then fewer slices."""
    from sam3dseg.pipeline.planning.plan import fit_to_memory

    assert fit_to_memory(16, 1024, 11, 24.0) == (2, 16, 3.2)  # 16 slices × 2 × 0.1 GiB with crops
    assert fit_to_memory(16, 1024, None, 24.0) == (1, 16, 9.6)  # whole 1024² planes: 0.6 GiB a slice
    assert fit_to_memory(16, 1024, None, 8.0) == (1, 6, 3.6)  # then fewer slices
    assert fit_to_memory(16, 256, None, 24.0)[0] == 2


def test_plan_follows_the_encoder(tmp_path):
    """The image size is capped at the size the encoder was trained at, and the token crop is 176 px in its tokens."""
    from sam3dseg.pipeline.planning.plan import make_plan

    fp = {"spacings": [[1.0, 1.0, 1.0]] * 3, "sizes": [[40, 512, 512]] * 3, "slicing_axis": "axial", "channels": ["MR"], "foreground_intensities": {}}
    vit, lite = make_plan(fp, 24.0), make_plan(fp, 24.0, encoder="lite_medsam")
    assert (vit["cache"]["encoder"], vit["cache"]["image_size"], vit["run"]["train"]["crop_tokens"]) == ("vit_b", 512, 11)
    assert (lite["cache"]["encoder"], lite["cache"]["image_size"], lite["run"]["train"]["crop_tokens"]) == ("lite_medsam", 256, 44)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(lite))
    assert load_cache_config(None, None, plan=tmp_path / "plan.yaml").encoder == "lite_medsam"
    assert main(["plan", "--dataset", str(tmp_path), "--out", str(tmp_path / "p"), "--encoder", "vit_x"]) == 2
