"""Augmented views: the label follows the image under every transform; each view is fixed by (case, view)."""

import re

import numpy as np
import pytest

from sam3dseg.common.settings import load_settings
from sam3dseg.data.augment import AugmentConfig, augment_view, view_seed
from sam3dseg.errors import UserError

LEVELS = (40.0, 100.0, 160.0, 220.0)  # the image's grey value for label 0, 1, 2, 3


def _phantom(depth: int = 3, shape: tuple[int, int] = (96, 80)) -> tuple[np.ndarray, np.ndarray]:
    """A volume whose grey value *is* its label (``LEVELS``): discs of radius 4 to 9 pixels, a different
    layout per slice, in a plane that is not square. Returns ``(1, D, H, W)`` float32 and ``(D, H, W)`` uint8."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.zeros((depth, *shape), np.uint8)
    for d in range(depth):
        for k in (1, 2, 3, 1, 2, 3):
            cy, cx, r = rng.uniform(14, shape[0] - 14), rng.uniform(14, shape[1] - 14), rng.uniform(4, 9)
            label[d][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return np.asarray(LEVELS, np.float32)[label][None], label


def _alignment(image: np.ndarray, label: np.ndarray) -> float:
    """Mean Dice over classes 1..3 between ``label`` and the image read back as labels (nearest level)."""
    read = np.abs(image[0][..., None] - np.asarray(LEVELS)).argmin(-1)
    return float(np.mean([2 * ((read == k) & (label == k)).sum() / ((read == k).sum() + (label == k).sum()) for k in (1, 2, 3)]))


SPATIAL = {
    "rotation": dict(rotation=30.0, scale=(1.0, 1.0), elastic=0.0),
    "scale": dict(rotation=0.0, scale=(0.7, 1.4), elastic=0.0),
    "elastic": dict(rotation=0.0, scale=(1.0, 1.0), elastic=0.05),
    "mirror": dict(rotation=0.0, scale=(1.0, 1.0), elastic=0.0, mirror=True),
    "all": dict(mirror=True),
}


@pytest.mark.parametrize("name", list(SPATIAL))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_label_moves_with_the_image(name, seed):
    """Each spatial transform alone and all together: the moved label agrees with the moved image
    better than the same label moved one pixel in any of the 8 directions (by 0.03 Dice at least),
    so a label off by one pixel fails; and the map did move it. (The image's edges are bilinear
    mixes of two grey levels, so even an exact label reads back at Dice 0.88-0.94.)"""
    volume, label = _phantom()
    config = AugmentConfig(intensity_probability=0.0, **SPATIAL[name])
    image, moved = augment_view(volume, label, seed, config)
    assert image.shape == volume.shape and image.dtype == np.float32 and moved.shape == label.shape and moved.dtype == np.uint8
    aligned = _alignment(image, moved)
    assert aligned >= 0.85
    for dy, dx in [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]:
        assert _alignment(image, np.roll(moved, (dy, dx), axis=(-2, -1))) < aligned - 0.03, (dy, dx)
    if name != "mirror":  # (a mirror draw may flip nothing)
        assert not np.array_equal(moved, label)
    assert set(np.unique(moved)) <= {0, 1, 2, 3}
    # every slice gets the same in-plane map: a volume of identical slices stays one
    same = np.repeat(volume[:, :1], 3, axis=1), np.repeat(label[:1], 3, axis=0)
    image_same, moved_same = augment_view(*same, seed, config)
    assert all(np.array_equal(moved_same[0], moved_same[d]) for d in range(3))
    assert np.allclose(image_same[0, 0], image_same[0, 2], atol=1e-4)


def test_intensity_changes_leave_the_label_and_keep_the_range():
    """Gamma, contrast, brightness, noise, blur and low resolution (all drawn) change the image only:
    the label is exactly the one the spatial map alone gives (the same seed draws the same map), and
    grey values stay in [0, 255]."""
    volume, label = _phantom()
    spatial_only = augment_view(volume, label, 7, AugmentConfig(intensity_probability=0.0))
    image, moved = augment_view(volume, label, 7, AugmentConfig(intensity_probability=1.0))
    assert np.array_equal(moved, spatial_only[1])
    assert not np.allclose(image, spatial_only[0])
    assert image.min() >= 0 and image.max() <= 255
    # monotone in the grey value up to noise: brighter classes stay brighter on average
    means = [image[0][moved == k].mean() for k in range(4)]
    assert means == sorted(means)


def test_a_view_is_fixed_by_its_case_and_index():
    volume, label = _phantom()
    config = AugmentConfig(intensity_probability=0.5)
    a = augment_view(volume, label, view_seed("case_001", 1), config)
    b = augment_view(volume.copy(), label.copy(), view_seed("case_001", 1), config)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for other in (view_seed("case_001", 2), view_seed("case_002", 1)):
        assert not np.array_equal(augment_view(volume, label, other, config)[1], a[1])
    assert view_seed("case_001", 1) == view_seed("case_001", 1) != view_seed("case_0011", 1)  # not a prefix hash
    assert len({view_seed(f"case_{i:03d}", v) for i in range(50) for v in range(1, 5)}) == 200


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["augment.copies=-1"], "augment.copies (--augmented-copies) must be an integer >= 0, got -1"),
        (["augment.views=-1"], "augment.copies (--augmented-copies) must be an integer >= 0, got -1"),  # its old name
        (["augment.scale=[1.4,0.7]"], "augment.scale must be two numbers 0 < low <= high"),
        (["augment.rotation=200"], "augment.rotation must be a number in [0, 180]"),
        (["augment.intensity_probability=1.5"], "augment.intensity_probability must be a number in [0, 1]"),
    ],
)
def test_bad_settings_are_one_line(overrides, message):
    from sam3dseg.pipeline.config import CacheConfig

    with pytest.raises(UserError, match=re.escape(message)) as err:
        load_settings(CacheConfig, None, overrides)
    assert "\n" not in str(err.value)
