"""Reading and writing volumes with their geometry."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sam3dseg.errors import UserError
from sam3dseg.data.volumes import Geometry, read_volume, write_volume

# A rotated, permuted frame: columns are the index axes' directions.
DIRECTION = tuple(np.array([[0, 0, 1], [0.8, -0.6, 0], [0.6, 0.8, 0]], dtype=float).ravel())
GEOMETRY = Geometry(spacing=(0.7, 1.3, 2.5), origin=(-12.5, 30.25, 101.0), direction=DIRECTION)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry(tmp_path, suffix):
    array = np.random.default_rng(0).integers(0, 5, size=(7, 9, 11)).astype(np.int16)
    path = write_volume(array, GEOMETRY, tmp_path / f"vol{suffix}")
    back, geometry = read_volume(path)
    assert back.shape == (7, 9, 11) and np.array_equal(back, array)
    assert np.allclose(geometry.spacing, GEOMETRY.spacing, atol=1e-5)
    assert np.allclose(geometry.origin, GEOMETRY.origin, atol=1e-4)
    assert np.allclose(geometry.direction, GEOMETRY.direction, atol=1e-5)
    assert geometry.matches(GEOMETRY)
    assert [p.name for p in tmp_path.iterdir()] == [f"vol{suffix}"]  # no temporary left behind


def _write_dicom_series(array: np.ndarray, geometry: Geometry, folder):
    """One file per slice with the position/orientation tags a scanner writes."""
    folder.mkdir()
    volume = sitk.GetImageFromArray(array)
    volume.SetSpacing(geometry.spacing)
    volume.SetOrigin(geometry.origin)
    volume.SetDirection(geometry.direction)
    d = geometry.direction
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(array.shape[0]):
        s = volume[:, :, z]
        position = volume.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in [
            ("0008|0060", "CT"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.2"),
            ("0020|0037", orientation),
            ("0020|0032", "\\".join(str(v) for v in position)),
            ("0020|0013", str(z + 1)),
            ("0028|0030", f"{geometry.spacing[1]}\\{geometry.spacing[0]}"),
            ("0018|0050", str(geometry.spacing[2])),
        ]:
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(s)


def test_dicom_series_matches_nifti(tmp_path):
    geometry = Geometry((0.8, 0.9, 2.0), (10.0, -20.0, 5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    array = np.random.default_rng(1).integers(-1000, 1000, size=(5, 12, 10)).astype(np.int16)
    nifti = write_volume(array, geometry, tmp_path / "ct.nii.gz")
    _write_dicom_series(array, geometry, tmp_path / "dicom")
    a, ga = read_volume(nifti)
    b, gb = read_volume(tmp_path / "dicom")
    assert np.array_equal(a, b)
    assert ga.matches(gb)


def test_four_d_nifti_reads_as_channels(tmp_path):
    arr = np.random.default_rng(2).random((3, 4, 5, 6)).astype(np.float32)  # (C, z, y, x)
    image = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in arr])
    sitk.WriteImage(image, str(tmp_path / "mr4d.nii.gz"))
    back, _ = read_volume(tmp_path / "mr4d.nii.gz")
    assert back.shape == (3, 4, 5, 6) and np.allclose(back, arr)


def test_bad_files_get_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="image not found"):
        read_volume(tmp_path / "absent.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="cannot read .*junk.nii.gz"):
        read_volume(junk)
    good = write_volume(np.zeros((8, 16, 16), np.float32), GEOMETRY, tmp_path / "good.nii")
    cut = tmp_path / "cut.nii"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(UserError, match="cannot read .*cut.nii"):
        read_volume(cut)


@pytest.mark.parametrize("shape,dims", [((16, 16), 2), ((2, 3, 4, 5, 6), 5)])
def test_wrong_dimensionality(tmp_path, shape, dims):
    image = sitk.Image(list(reversed(shape)), sitk.sitkFloat32)
    path = tmp_path / f"img{dims}d.nii.gz"
    sitk.WriteImage(image, str(path))
    with pytest.raises(UserError, match=f"is a {dims}-D image"):
        read_volume(path)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(image, name, useCompression=False):
        open(name, "wb").write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(RuntimeError):
        write_volume(np.zeros((2, 2, 2), np.uint8), GEOMETRY, tmp_path / "seg.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name,case",
    [("liver_003_0000.nii.gz", "liver_003_0000"), ("CT.NII.GZ", "CT"), ("a.nhdr", "a"), ("b.MHD", "b"), ("scan.mha", "scan"), ("x.nii", "x")],
)
def test_one_case_naming_rule(name, case):
    from sam3dseg.data.volumes import case_name

    assert case_name(Path(name)) == case


def test_channel_part_and_series_folders(tmp_path):
    from sam3dseg.data.volumes import case_name, split_channel

    assert split_channel("liver_003_0001") == ("liver_003", 1) and split_channel("liver_003") == ("liver_003", None)
    series = tmp_path / "1.2.840.113619.2"
    series.mkdir()
    assert case_name(series) == "1.2.840.113619.2"  # a series folder keeps its dots
