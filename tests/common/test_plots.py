"""Pictures: montages show the image as the model saw it, and the slices where each class is."""

import numpy as np

from sam3dseg.common.plots import pick_slices, save_montage


def test_each_class_gets_its_largest_slice():
    label = np.zeros((30, 8, 8), np.uint8)
    label[2:28, 2:6, 2:6] = 1  # a large organ
    label[17, 4, 4] = 2  # a one-voxel lesion on one slice only
    slices = pick_slices([label], 4)
    assert 17 in slices and len(slices) == 4
    assert pick_slices([np.zeros((5, 4, 4), np.uint8)], 3) == [0, 2, 4]  # no foreground: spread over all


def test_montage_window_sets_the_grey_levels(tmp_path):
    """With window (0, 255) a grey value v is drawn as v: the model's intensities, not a percentile stretch."""
    from matplotlib.image import imread

    image = np.full((3, 40, 40), 100.0, np.float32)
    image[:, :, 20:] = 150.0
    label = np.zeros((3, 40, 40), np.uint8)
    label[1, 30:35, 30:35] = 1
    counts = {}
    for name, window in (("model", (0, 255)), ("stretched", None)):
        png = imread(save_montage(tmp_path / f"{name}.png", image, label, window=window))
        rgb = (png[..., :3] * 255).round().astype(int)
        grey = rgb[(rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])][:, 0]
        counts[name] = np.bincount(grey, minlength=256)
    assert counts["model"][100] > 5000 and counts["model"][150] > 5000
    # 1-99 % percentiles map the halves to black and white (the few greys left are the text's edges)
    assert counts["stretched"][100] + counts["stretched"][150] < 100
