"""Export: what ``sam3dseg predict`` writes for other tools, beside (or instead of) each label map.

- :func:`write_masks`: one file per structure, TotalSegmentator's layout ``OUT/{case}/{structure}.nii.gz``;
- :func:`structure_statistics`: per structure its voxels, volume, intensities, bounding box and centroid
  (TotalSegmentator's ``--statistics``); :func:`write_statistics_table` gathers a folder's into JSON and CSV;
- :func:`write_slicer_segmentation`: a 3D Slicer ``.seg.nrrd`` (segment names, label values, colours in its
  header) and :func:`itksnap_labels`, an ITK-SNAP label description file for the label map;
- :func:`write_dicom_seg`: a DICOM Segmentation of a DICOM series, referencing it (highdicom).

The colours are the montages' (:data:`~sam3dseg.common.plots.COLOURS`, class k takes colour k - 1).
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

import numpy as np

from ...common.files import atomic_output, read_json, write_csv, write_json, write_text
from ...common.plots import class_rgb
from ...data.volumes import Geometry, write_volume
from ...errors import UserError

PERCENTILES = (5, 25, 50, 75, 95)
STATISTICS = "_statistics.json"  # a case's statistics: OUT/{case}_statistics.json
SIDES = {"left": "Left", "right": "Right", "l": "Left", "r": "Right"}
# class names whose SNOMED CT keyword in pydicom's code dictionary is not their own words run together
ALIASES = {"brainstem": "BrainStem", "kidneys": "Kidney", "lungs": "Lung", "ventricles": "BrainVentricle",
           "caudate": "CaudateNucleus", "pallidum": "GlobusPallidus", "accumbens": "NucleusAccumbens",
           "white_matter": "CerebralWhiteMatter", "grey_matter": "CerebralGrayMatter"}
# codes of findings (not anatomy): their category is Morphologically Abnormal Structure, not Anatomical Structure
FINDINGS = {"Tumor", "Neoplasm", "Edema", "Necrosis", "Lesion", "Cyst", "Nodule", "Mass"}


def structure_statistics(label: np.ndarray, image: np.ndarray, geometry: Geometry, names: list[str]) -> dict[str, dict]:
    """Each structure's (class 1..K-1 of ``names``) statistics in ``label`` ``(z, y, x)`` over ``image``
    (the input's first channel, its own values: HU for CT).

    ``voxels``; ``volume_ml`` = voxels × the voxel's volume; the image inside it: ``mean``, ``std`` (population),
    ``min``, ``max`` and ``p5`` .. ``p95``; ``bbox_index`` (first and last voxel index, ITK's ``(x, y, z)``) and
    ``centroid_mm`` (the voxels' mean position in patient coordinates). A structure not predicted has
    ``voxels`` 0 and ``volume_ml`` 0, the rest null.
    """
    from scipy import ndimage

    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    boxes = ndimage.find_objects(label.astype(np.int32), max_label=len(names) - 1)
    result = {}
    for k, name in enumerate(names[1:], start=1):
        mask = label == k
        voxels = int(mask.sum())
        entry: dict = {"voxels": voxels, "volume_ml": voxels * voxel_ml}
        if not voxels:
            result[name] = entry | dict.fromkeys(["mean", "std", "min", "max", *(f"p{p}" for p in PERCENTILES), "bbox_index", "centroid_mm"])
            continue
        values = image[mask].astype(np.float64)
        entry |= {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()), "max": float(values.max())}
        entry |= {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}
        first, last = _bounds(boxes[k - 1])
        entry["bbox_index"] = {"min": first, "max": last}
        entry["centroid_mm"] = geometry.physical_points(np.asarray(ndimage.center_of_mass(mask))[::-1]).tolist()
        result[name] = entry
    return result


def write_case_statistics(out: Path, case: str, statistics: dict) -> Path:
    """``out/{case}_statistics.json``."""
    return write_json(out / f"{case}{STATISTICS}", statistics)


def write_statistics_table(out: Path, cases: list[str]) -> tuple[Path, Path]:
    """Gather the ``{case}_statistics.json`` of ``cases`` in ``out`` into ``statistics.json`` (case ->
    structure -> statistics) and ``statistics.csv`` (a row per case and structure; bounding box and
    centroid as columns)."""
    table = {case: read_json(out / f"{case}{STATISTICS}") for case in cases if (out / f"{case}{STATISTICS}").is_file()}
    columns = ["case", "structure", "voxels", "volume_ml", "mean", "std", "min", *(f"p{p}" for p in PERCENTILES), "max"]
    columns += [f"bbox_{e}_{a}" for e in ("min", "max") for a in "xyz"] + [f"centroid_{a}_mm" for a in "xyz"]
    rows = []
    for case, structures in table.items():
        for name, s in structures.items():
            row = {"case": case, "structure": name, **{c: s.get(c) for c in columns[2:11]}}
            box, centre = s.get("bbox_index"), s.get("centroid_mm")
            for e in ("min", "max"):
                row |= {f"bbox_{e}_{a}": box[e][i] if box else None for i, a in enumerate("xyz")}
            row |= {f"centroid_{a}_mm": centre[i] if centre else None for i, a in enumerate("xyz")}
            rows.append(row)
    return write_json(out / "statistics.json", table), write_csv(out / "statistics.csv", rows, columns)


def write_masks(folder: Path, label: np.ndarray, geometry: Geometry, names: list[str], suffix: str = ".nii.gz") -> Path:
    """``folder/{structure}{suffix}``, a 0/1 uint8 mask per structure (class 1..K-1), on the label's grid.
    The folder is written whole under a temporary name, then renamed into place (a replaced one is
    removed first)."""
    with atomic_output(folder) as tmp:
        tmp.mkdir()
        for k, name in enumerate(names[1:], start=1):
            write_volume((label == k).astype(np.uint8), geometry, tmp / f"{name}{suffix}")
        if folder.is_dir():
            shutil.rmtree(folder)
    return folder


def _bounds(box: tuple[slice, ...]) -> tuple[list[int], list[int]]:
    """A ``find_objects`` box of a ``(z, y, x)`` array as its first and last voxel index in ITK's ``(x, y, z)``."""
    return [box[a].start for a in (2, 1, 0)], [box[a].stop - 1 for a in (2, 1, 0)]


def _extent(box: tuple[slice, ...] | None) -> str:
    """Slicer's ``SegmentN_Extent``: first and last voxel index along x, y, z (``0 -1 0 -1 0 -1``: empty)."""
    if box is None:
        return "0 -1 0 -1 0 -1"
    first, last = _bounds(box)
    return " ".join(f"{a} {b}" for a, b in zip(first, last))


def write_slicer_segmentation(path: Path, label: np.ndarray, geometry: Geometry, names: list[str]) -> Path:
    """A 3D Slicer segmentation ``path`` (``.seg.nrrd``): the label map as one layer, and per class 1..K-1
    the header fields Slicer reads as a named segment (``SegmentN_ID``, ``_Name``, ``_LabelValue``,
    ``_Layer``, ``_Color`` as r g b in 0..1, ``_Extent``), written by SimpleITK's NRRD writer."""
    from scipy import ndimage

    if not str(path).endswith(".seg.nrrd"):
        raise ValueError(f"a Slicer segmentation is a .seg.nrrd file, not {path}")
    boxes = ndimage.find_objects(label.astype(np.int32), max_label=len(names) - 1)
    header = {"Segmentation_MasterRepresentation": "Binary labelmap",
              "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
              "Segmentation_ReferenceImageExtentOffset": "0 0 0"}  # fmt: skip
    for i, name in enumerate(names[1:]):
        k = i + 1
        fields = {"ID": f"Segment_{k}", "Name": name, "NameAutoGenerated": "0", "LabelValue": str(k), "Layer": "0",
                  "Color": " ".join(f"{c / 255:.6g}" for c in class_rgb(k)), "ColorAutoGenerated": "0",
                  "Extent": _extent(boxes[i]), "Tags": "|"}  # fmt: skip
        header |= {f"Segment{i}_{key}": value for key, value in fields.items()}
    return write_volume(label.astype(np.uint8), geometry, path, header)


def itksnap_labels(names: list[str]) -> str:
    """ITK-SNAP's label description file for ``names`` (``Segmentation > Import Label Descriptions``)."""
    lines = ["################################################", "# ITK-SnAP Label Description File",
             "# written by sam3dseg: the classes of the model, the colours of its montages",
             "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL", "################################################",
             f'{0:5d} {0:5d} {0:4d} {0:4d} {0:8g} {0:2d} {0:2d}    "Clear Label"']  # fmt: skip
    for k, name in enumerate(names[1:], start=1):
        r, g, b = class_rgb(k)
        lines.append(f'{k:5d} {r:5d} {g:4d} {b:4d} {1:8g} {1:2d} {1:2d}    "{name}"')
    return "\n".join(lines) + "\n"


def write_itksnap_labels(out: Path, names: list[str]) -> Path:
    """``out/itksnap_labels.txt``."""
    return write_text(out / "itksnap_labels.txt", itksnap_labels(names))


def anatomy_code(name: str):
    """``(category, type, side, generic)``: SNOMED CT codes for a class name from pydicom's code dictionary
    (the DICOM CID tables). The whole name first (``left_ventricle`` -> Left ventricle), then without a side
    word, the side as a modifier (``kidney_right`` -> Anatomical Structure, Kidney, Right). A name without a
    code is ``Tissue``/``Tissue`` with ``generic`` True (the segment's label keeps the name)."""
    from pydicom.sr.codedict import codes

    words = name.lower().replace("-", "_").replace(" ", "_").split("_")
    side = next((SIDES[w] for w in (words[0], words[-1]) if w in SIDES and len(words) > 1), None)
    tries = [(words, None)] + ([([w for w in words if w not in SIDES], side)] if side else [])
    for parts, modifier in tries:
        keyword = ALIASES.get("_".join(parts), "".join(w.capitalize() for w in parts))
        try:
            code = getattr(codes.SCT, keyword)
        except AttributeError:
            continue
        category = codes.SCT.MorphologicallyAbnormalStructure if keyword in FINDINGS else codes.SCT.AnatomicalStructure
        return category, code, None if modifier is None else getattr(codes.SCT, modifier), False
    return codes.SCT.Tissue, codes.SCT.Tissue, None, True


def dicom_series_files(folder: Path) -> list[Path]:
    """The files of the one DICOM series in ``folder``, in the order SimpleITK stacks them into ``(z, y, x)``."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if len(series) != 1:
        raise UserError(f"{folder} holds {len(series)} DICOM series; a DICOM SEG needs a folder with one")
    return [Path(f) for f in reader.GetGDCMSeriesFileNames(str(folder), series[0])]


def require_highdicom() -> None:
    """Refuse ``--output-type dicom-seg`` in one line, before any work, where highdicom is not installed."""
    try:
        import highdicom  # noqa: F401
    except ImportError as err:
        raise UserError(f"--output-type dicom-seg needs highdicom: pip install 'sam3dseg[dicom]' ({err})") from None


def write_dicom_seg(path: Path, label: np.ndarray, source: Path, names: list[str], description: str) -> Path:
    """A DICOM Segmentation ``path`` of ``label`` ``(z, y, x)``, predicted on the DICOM series in ``source``.

    One segment per class 1..K-1 (binary, frames without it omitted), named as the class, with its montage
    colour and its SNOMED CT codes (:func:`anatomy_code`), algorithm ``sam3dseg`` (automatic); the SEG
    references the series (study, frame of reference, each frame's source instance), written by highdicom.
    """
    require_highdicom()
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    try:
        version = metadata.version("sam3dseg")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"

    sources = [pydicom.dcmread(f) for f in dicom_series_files(source)]
    if label.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise UserError(f"the segmentation of {source} has shape {label.shape}, the series {len(sources)} × {sources[0].Rows} × {sources[0].Columns}")
    algorithm = hd.AlgorithmIdentificationSequence(name="sam3dseg", family=codes.cid7162.ArtificialIntelligence, version=version)
    segments = []
    for k, name in enumerate(names[1:], start=1):
        category, kind, side, _ = anatomy_code(name)
        segment = hd.seg.SegmentDescription(
            segment_number=k, segment_label=name, segmented_property_category=category, segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*class_rgb(k)),
        )  # fmt: skip
        if side is not None:  # laterality: the type's modifier (highdicom takes no argument for it)
            modifier = hd.sr.CodedConcept(side.value, side.scheme_designator, side.meaning)
            segment.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        segments.append(segment)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=label.astype(np.uint8), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="sam3dseg", manufacturer_model_name="sam3dseg",
        software_versions=version, device_serial_number="none", series_description=description[:64],
    )  # fmt: skip
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return path
