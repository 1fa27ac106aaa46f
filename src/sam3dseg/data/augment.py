"""Augmented copies of a preprocessed case, made once at cache time (``sam3dseg cache --augmented-copies K``).

The cache makes training fast by encoding every slice once, so the encoder never sees an
augmented image during training. A *view* brings augmentation back at a fixed cost: K
copies of each labelled case, each changed in-plane by one random map, are encoded
beside the original, and training draws among them (:mod:`sam3dseg.pipeline.training.samples`).

A view is nnU-Net's training augmentation (as the original SAM3D used it, read from its
code) applied to the preprocessed volume ``(C, D, H, W)``, grey values in ``[0, 255]``:

- **spatial**, always, one in-plane map for every slice (depth is left alone, so the
  slices stay a volume): rotation by up to ±``rotation`` degrees, scaling by a factor in
  ``scale`` along each in-plane axis, and an elastic deformation (control points every
  eighth of the plane, offsets up to ``elastic`` of its side); optional mirroring. The
  label follows by the same map, nearest neighbour; outside the plane is background and
  black.
- **intensity**, each with probability ``intensity_probability``, image only: gamma
  (0.7–1.5), contrast (×0.75–1.25 about the mean), brightness (×0.75–1.25), Gaussian
  noise (σ up to 5 % of the range), Gaussian blur (σ 0.5–1 pixel, in-plane) and
  low-resolution simulation (down to 0.5–1 of the size, nearest, then back, bilinear).

The transforms are MONAI's (``pip install 'sam3dseg[augment]'``: it needs only numpy and
torch); MONAI draws the two in-plane scale factors independently, where nnU-Net's
default ties them. Each view is seeded by its case name and index
(:func:`view_seed`), so it is the same on every run and machine with the same MONAI.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..common.settings import check_settings, fraction, non_negative_int, setting, switch
from ..errors import UserError


@dataclass
class AugmentConfig:
    """How a cached view is made from its case (see the module docstring)."""

    SECTION: ClassVar[str] = "augment"
    RENAMED: ClassVar[dict[str, str]] = {"views": "copies"}  # a radiologist's views are anatomical planes

    copies: int = non_negative_int(0, "augmented copies encoded per labelled case, beside the original", flag="--augmented-copies")
    rotation: float = setting(30.0, "a number in [0, 180]", lambda v: 0 <= v <= 180, "in-plane rotation up to ± this many degrees")
    scale: tuple[float, float] = setting(
        (0.7, 1.4), "two numbers 0 < low <= high", lambda v: len(v) == 2 and 0 < v[0] <= v[1], "in-plane scale factor range, per axis"
    )
    elastic: float = setting(
        0.03, "a number in [0, 0.25]", lambda v: 0 <= v <= 0.25, "elastic offsets up to this share of the plane's side (0: none)"
    )
    mirror: bool = switch(False, "also mirror each in-plane axis with probability 1/2 (off: left and right labels stay apart)")
    intensity_probability: float = fraction(0.3, "probability of each intensity change (gamma, contrast, brightness, noise, blur, low resolution)")

    def __post_init__(self) -> None:
        self.scale = tuple(float(v) for v in self.scale)
        check_settings(self)


def view_seed(case: str, view: int) -> int:
    """The seed of view ``view`` of case ``case``: a hash, so it does not depend on the case's place in the dataset."""
    return int.from_bytes(hashlib.sha256(f"{case}\0{view}".encode()).digest()[:4], "little")


def require_monai() -> str:
    """MONAI's version, or a UserError that says how to install it."""
    try:
        import monai
    except ImportError:
        raise UserError("augmented copies (--augmented-copies above 0) need MONAI: pip install 'sam3dseg[augment]' (or pip install monai)") from None
    return monai.__version__


def _transforms(config: AugmentConfig, plane: tuple[int, int]):
    """The MONAI pipeline on ``{"image": (C·D, H, W), "label": (D, H, W)}`` float32 tensors."""
    from monai.transforms import (
        Compose,
        Rand2DElasticd,
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandScaleIntensityFixedMeand,
        RandSimulateLowResolutiond,
    )

    side, p = max(plane), config.intensity_probability
    low, high = config.scale
    both = ["image", "label"]
    spatial = [
        Rand2DElasticd(
            keys=both, prob=1.0, spacing=max(side / 8, 2.0), magnitude_range=(0.0, config.elastic * side),
            rotate_range=math.radians(config.rotation), scale_range=((low - 1, high - 1), (low - 1, high - 1)),
            mode=["bilinear", "nearest"], padding_mode="zeros",
        ),
    ]  # fmt: skip
    if config.mirror:
        spatial += [RandFlipd(keys=both, prob=0.5, spatial_axis=0), RandFlipd(keys=both, prob=0.5, spatial_axis=1)]
    intensity = [
        RandAdjustContrastd(keys="image", prob=p, gamma=(0.7, 1.5)),
        RandScaleIntensityFixedMeand(keys="image", prob=p, factors=0.25),
        RandScaleIntensityd(keys="image", prob=p, factors=0.25),
        RandGaussianNoised(keys="image", prob=p, std=0.05 * 255),
        RandGaussianSmoothd(keys="image", prob=p, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0)),
        RandSimulateLowResolutiond(keys="image", prob=p, zoom_range=(0.5, 1.0), upsample_mode="bilinear"),
    ]
    return Compose(spatial + intensity)


def augment_view(volume: np.ndarray, label: np.ndarray, seed: int, config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """One augmented view of a preprocessed case.

    Args:
        volume: ``(C, D, H, W)`` float32 grey values in ``[0, 255]`` (:func:`~sam3dseg.data.preprocess.preprocess_image`).
        label: ``(D, H, W)`` uint8 on the same grid.
        seed: the view's seed (:func:`view_seed`).
        config: the transforms' ranges and probabilities.

    Returns:
        The view's ``(C, D, H, W)`` float32 volume, clipped to ``[0, 255]``, and its ``(D, H, W)``
        uint8 label, moved by the same in-plane map.
    """
    require_monai()
    c, d, h, w = volume.shape
    pipeline = _transforms(config, (h, w))
    pipeline.set_random_state(seed=seed)
    # Slices (and channels) as the channels of one 2-D image: every slice gets the same in-plane map.
    data = {"image": torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).reshape(c * d, h, w),
            "label": torch.from_numpy(label.astype(np.float32))}  # fmt: skip
    out = pipeline(data)
    image = torch.as_tensor(out["image"]).float().clamp_(0, 255).reshape(c, d, h, w)
    moved = torch.as_tensor(out["label"]).round().to(torch.uint8)
    return image.numpy(), moved.numpy()
