"""Reorientation, intensities, resizing, and the exact way back for labels."""

import numpy as np
import pytest
import torch

from sam3dseg.errors import UserError
from sam3dseg.data.volumes import Geometry
from sam3dseg.data.preprocess import (
    PreprocessConfig,
    reorient,
    plan_transform,
    preprocess_image,
    preprocess_label,
    restore_label,
    restore_probabilities,
)
from sam3dseg.data.synthetic import _random_pose


@pytest.mark.parametrize("seed", range(6))
def test_reorientation_undoes_any_pose(seed):
    """A volume stored under a random axis order and flips comes back to the aligned frame."""
    aligned = np.random.default_rng(seed).random((5, 7, 9))  # (S, P, L)
    stored, geometry, _ = _random_pose(aligned, (2.0, 0.8, 0.9), np.random.default_rng(100 + seed))
    t = plan_transform(stored.shape, geometry, PreprocessConfig(), 64)
    assert np.array_equal(reorient(stored, t), aligned)
    assert t.oriented_spacing == (2.0, 0.8, 0.9)


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("shape", [(7, 13, 11), (5, 31, 4), (12, 3, 17)])
@pytest.mark.parametrize("target_spacing", [None, (0.5, 0.4, 0.3)])
def test_label_round_trip_is_exact(axis, shape, target_spacing):
    rng = np.random.default_rng(sum(shape))
    label = rng.integers(0, 4, size=shape).astype(np.uint8)  # arbitrary, not smooth
    _, geometry, _ = _random_pose(np.zeros(shape), (2.5, 0.7, 1.1), rng)
    config = PreprocessConfig(slicing_axis=axis, target_spacing=target_spacing)
    t = plan_transform(shape, geometry, config, image_size=64)
    model = preprocess_label(label, t)
    assert model.shape == t.model_shape and max(model.shape[1:]) == 64
    assert np.array_equal(restore_label(model, t), label)


def test_model_grid_follows_spacing_and_size():
    geometry = Geometry((0.5, 0.5, 3.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))  # x, y, z
    t = plan_transform((20, 40, 80), geometry, PreprocessConfig(target_spacing=(1.5, 1.0, 1.0)), 128)
    assert t.oriented_shape == (20, 40, 80) and t.oriented_spacing == (3.0, 0.5, 0.5)
    # depth 20·3/1.5 = 40; in-plane 40×80 at 0.5 mm -> 20×40 at 1 mm -> longest side 128
    assert t.model_shape == (40, 64, 128)


def test_transform_serialises():
    geometry = Geometry((0.5, 0.6, 3.0), (1, 2, 3), (0, 1, 0, 1, 0, 0, 0, 0, -1))
    t = plan_transform((9, 10, 11), geometry, PreprocessConfig(), 32)
    assert type(t).from_dict(t.to_dict()) == t


def test_ct_window_and_percentile():
    geometry = Geometry((1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    hu = np.array([-1000, -160, 40, 240, 3000], dtype=np.float32).reshape(1, 1, 5).repeat(2, 0)
    out, _ = preprocess_image(hu, geometry, ["CT"], PreprocessConfig(ct_window=(40, 400)), 5)
    assert np.allclose(out[0, 0, 0], [0, 0, 127.5, 255, 255])
    mr = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    out, _ = preprocess_image(mr, geometry, ["T1"], PreprocessConfig(percentiles=(0, 100)), 10)
    assert out.min() == 0 and out.max() == 255
    flat, _ = preprocess_image(np.ones((3, 4, 4), np.float32), geometry, ["T2"], PreprocessConfig(), 4)
    assert np.all(flat == 127.5)


def test_restore_probabilities_without_resize_is_exact():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, size=(4, 6, 8)).astype(np.uint8)
    _, geometry, _ = _random_pose(np.zeros((4, 6, 8)), (2, 1, 1), rng)
    t = plan_transform(label.shape, geometry, PreprocessConfig(), image_size=max(label.shape))
    t.model_shape = t.oriented_shape  # no resizing at all
    onehot = torch.nn.functional.one_hot(torch.from_numpy(preprocess_label(label, t)).long(), 3).permute(3, 0, 1, 2)
    probs = restore_probabilities(onehot.float(), t)
    assert probs.shape == (3, 4, 6, 8) and np.array_equal(probs.argmax(0), label)


@pytest.mark.parametrize("model_shape", [(5, 7, 9), (11, 3, 4), (4, 6, 8)])
def test_the_model_to_file_map_is_pytorchs_trilinear(model_shape):
    """`to_file_grid`, the one map back to the file's grid (streamed, two model slices at a time), equals
    `F.interpolate(..., mode="trilinear", align_corners=False)` on the whole volume, up to float rounding."""
    from sam3dseg.data.preprocess import to_file_grid

    rng = np.random.default_rng(1)
    _, geometry, _ = _random_pose(np.zeros((4, 6, 8)), (2, 1, 1), rng)
    t = plan_transform((4, 6, 8), geometry, PreprocessConfig(), image_size=8)
    t.model_shape = model_shape  # deeper, shallower and equal depths; larger and smaller planes
    scores = torch.rand(3, *model_shape, generator=torch.Generator().manual_seed(0))
    streamed = torch.stack(list(to_file_grid(iter(scores.unbind(1)), t)), dim=1)
    whole = torch.nn.functional.interpolate(scores[None], size=t.oriented_shape, mode="trilinear", align_corners=False)[0]
    assert streamed.shape == whole.shape and torch.allclose(streamed, whole, atol=1e-6)


def test_bad_settings():
    with pytest.raises(UserError, match="slicing_axis"):
        PreprocessConfig(slicing_axis="oblique")
    with pytest.raises(UserError, match="target_spacing"):
        PreprocessConfig(target_spacing=(1, 0, 1))
