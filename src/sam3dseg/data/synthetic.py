"""Generated multi-class volumes, written as NIfTI datasets, for tests and quick trials.

Each case is drawn in an anatomically aligned frame (axes S-I, P-A, L-R), then
stored with a random spacing and a random axis permutation/flip (a non-identity
direction), so that reading and reorienting it exercises the whole geometry path.
Classes are ellipsoids with their own mean intensity and texture, over a textured,
noisy background.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.files import write_json
from .volumes import Geometry, write_volume


def _blob_volume(shape: tuple[int, int, int], num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image and label in the aligned frame ``(D, H, W)``; the image is float32 on a 0..1000 scale."""
    d, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    label = np.zeros(shape, dtype=np.uint8)
    image = 200 + 40 * np.sin(xx / 3.0 + rng.uniform(0, 6)) * np.sin(yy / 4.0)  # background texture
    for k in range(1, num_classes):
        # class k lives in its own band of the H axis, so classes never overlap
        band = (k - 1) / (num_classes - 1), k / (num_classes - 1)
        centre = [
            rng.uniform(0.4, 0.6) * d,
            (band[0] + rng.uniform(0.4, 0.6) * (band[1] - band[0])) * h,
            rng.uniform(0.35, 0.65) * w,
        ]
        radii = [max(rng.uniform(0.3, 0.45) * d, 2.0), rng.uniform(0.3, 0.45) * h / (num_classes - 1), rng.uniform(0.2, 0.3) * w]
        inside = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1
        label[inside] = k
        # distinct mean and stripe frequency per class
        image = np.where(inside, 200 + 250 * k + 30 * np.cos((xx + yy) * (0.5 + 0.4 * k)), image)
    image = image + rng.normal(0, 25, size=shape)
    return image.astype(np.float32), label


def _small_structures(shape: tuple[int, int, int], num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_blob_volume`, but each class is two small blobs (radius 4-6 voxels in-plane,
    2-3 slices deep: 1-2 % of the voxels) of low contrast against a textured background."""
    d, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    label = np.zeros(shape, dtype=np.uint8)
    image = 200 + 40 * np.sin(xx / 3.0 + rng.uniform(0, 6)) * np.sin(yy / 4.0)
    for k in range(1, num_classes):
        for _ in range(2):
            centre = rng.uniform(0.2, 0.8, size=3) * np.array(shape)
            radii = [rng.uniform(2.0, 3.0), rng.uniform(4.0, 6.0), rng.uniform(4.0, 6.0)]
            inside = sum(((c - m) / r) ** 2 for c, m, r in zip((zz, yy, xx), centre, radii)) <= 1
            label[inside] = k
            image = np.where(inside, 230 + 45 * k, image)  # a step of 45 against noise σ 25 and texture ±40
    image = image + rng.normal(0, 25, size=shape)
    return image.astype(np.float32), label


def _random_pose(array: np.ndarray, spacing_dhw: tuple[float, float, float], rng: np.random.Generator):
    """Store an aligned ``(D, H, W)`` = (S, P, L) array under a random axis order and flips.

    Returns the ``(z, y, x)`` file array, its geometry, and the ``(perm, flips)`` used,
    such that ``file = flip(aligned.transpose(perm), flips)``.
    """
    perm = tuple(int(p) for p in rng.permutation(3))
    flips = tuple(bool(f) for f in rng.integers(0, 2, size=3))
    out = array.transpose(perm)
    out = np.flip(out, [a for a in range(3) if flips[a]])
    # aligned numpy axis a runs along anatomical axis 2 - a (S=2, P=1, L=0) at spacing_dhw[a]
    direction = np.zeros((3, 3))
    spacing, origin = [0.0] * 3, np.zeros(3)
    for a_new in range(3):
        a_old = perm[a_new]
        anat, index_axis = 2 - a_old, 2 - a_new
        sign = -1.0 if flips[a_new] else 1.0
        direction[anat, index_axis] = sign
        spacing[index_axis] = spacing_dhw[a_old]
        if flips[a_new]:  # voxel 0 now lies at the far end of this axis
            origin[anat] += (out.shape[a_new] - 1) * spacing_dhw[a_old]
    geometry = Geometry(tuple(spacing), tuple(origin - 100.0), tuple(direction.ravel()))
    return np.ascontiguousarray(out), geometry, (perm, flips)


def make_case(
    rng: np.random.Generator,
    num_classes: int = 3,
    channels: int = 1,
    depth: tuple[int, int] = (10, 16),
    size: tuple[int, int] = (40, 64),
    small: bool = False,
) -> tuple[list[np.ndarray], np.ndarray, Geometry]:
    """One generated case: per-channel ``(z, y, x)`` images, the label and the geometry.

    ``small``: small, low-contrast structures (:func:`_small_structures`) instead of large ellipsoids.
    """
    shape = (int(rng.integers(*depth)), int(rng.integers(*size)), int(rng.integers(*size)))
    spacing = (float(rng.uniform(1.5, 3.0)), float(rng.uniform(0.6, 1.2)), float(rng.uniform(0.6, 1.2)))
    image, label = (_small_structures if small else _blob_volume)(shape, num_classes, rng)
    images = [image * (1 + 0.3 * c) + 50 * c for c in range(channels)]  # channels differ in contrast
    pose_seed = int(rng.integers(1 << 31))  # one pose for the label and every channel
    label_file, geometry, _ = _random_pose(label, spacing, np.random.default_rng(pose_seed))
    files = [_random_pose(im, spacing, np.random.default_rng(pose_seed))[0] for im in images]
    return files, label_file, geometry


def write_dataset(
    root: str | Path,
    num_cases: int = 6,
    layout: str = "nnunet",
    num_classes: int = 3,
    channels: int = 1,
    modality: str = "MR",
    seed: int = 0,
    depth: tuple[int, int] = (10, 16),
    size: tuple[int, int] = (40, 64),
    small: bool = False,
) -> Path:
    """Write a generated dataset in the nnU-Net v2 (``nnunet``) or MSD (``msd``) layout.

    Several channels are written as separate nnU-Net files (``{case}_{XXXX}``); the
    generated MSD layout is single-channel.
    """
    if layout not in ("nnunet", "msd"):
        raise ValueError(f"layout must be nnunet or msd, got {layout!r}")
    if layout == "msd" and channels != 1:
        raise ValueError("the generated MSD layout is single-channel; use layout='nnunet' for several")
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    class_names = ["background"] + [f"class{k}" for k in range(1, num_classes)]
    training = []
    for i in range(num_cases):
        name = f"case_{i:03d}"
        images, label, geometry = make_case(rng, num_classes, channels, depth, size, small)
        write_volume(label, geometry, root / "labelsTr" / f"{name}.nii.gz")
        if layout == "nnunet":
            for c, im in enumerate(images):
                write_volume(im, geometry, root / "imagesTr" / f"{name}_{c:04d}.nii.gz")
        else:
            write_volume(images[0], geometry, root / "imagesTr" / f"{name}.nii.gz")
            training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    if layout == "nnunet":
        meta = {
            "channel_names": {str(c): modality for c in range(channels)},
            "labels": {n: k for k, n in enumerate(class_names)},
            "numTraining": num_cases,
            "file_ending": ".nii.gz",
        }
    else:
        meta = {
            "name": "generated",
            "modality": {"0": modality},
            "labels": {str(k): n for k, n in enumerate(class_names)},
            "numTraining": num_cases,
            "training": training,
        }
    write_json(root / "dataset.json", meta)
    return root
