"""Training crops: foreground sampling places the configured share of crops on a class the case holds."""

import pytest
import torch

from sam3dseg.common.files import save_tensors
from sam3dseg.pipeline.samples import MAX_LOCATIONS, CaseStore, Sampling, class_locations, sample_batch


@pytest.fixture
def rare_cache(tmp_path):
    """Two cases of 40 slices: one holds a rare class 2 on slices 30-31 only (8 voxels), the other
    also a large class 1 on slices 0-19."""
    for name, large in (("rare_only", False), ("rare_and_large", True)):
        label = torch.zeros(40, 32, 32, dtype=torch.uint8)
        label[30:32, 10:12, 10:12] = 2
        if large:
            label[:20, 4:28, 4:28] = 1
        save_tensors({"features": torch.zeros(2, 40, 2, 2).half(), "label": label}, tmp_path / "cases" / f"{name}.pt")
    return CaseStore(tmp_path)


def _share_holding(store, name, fraction, k=2, draws=60):
    spec = Sampling(batch_size=50, depth=4, image_size=32, flip=True, foreground_fraction=fraction)
    hits = total = 0
    for seed in range(draws):
        batch = sample_batch(store, [name], spec, torch.Generator().manual_seed(seed))
        hits += int((batch.labels == k).flatten(1).any(1).sum())
        total += len(batch.labels)
    return hits / total


@pytest.mark.parametrize("fraction", [1 / 3, 0.5, 1.0])
def test_the_share_of_crops_holding_a_rare_class_is_at_least_the_fraction(rare_cache, fraction):
    assert _share_holding(rare_cache, "rare_only", fraction) >= fraction
    # two classes present: the rare one is drawn half the time
    assert _share_holding(rare_cache, "rare_and_large", fraction) >= fraction / 2


def test_without_foreground_sampling_the_rare_class_is_mostly_missed(rare_cache):
    assert _share_holding(rare_cache, "rare_only", 0.0) < 0.2  # 5 of 37 crop starts hold slices 30-31


def test_foreground_sampling_is_seeded(rare_cache):
    spec = Sampling(batch_size=8, depth=4, image_size=32, foreground_fraction=0.5)
    a = sample_batch(rare_cache, ["rare_only", "rare_and_large"], spec, torch.Generator().manual_seed(7))
    b = sample_batch(rare_cache, ["rare_only", "rare_and_large"], spec, torch.Generator().manual_seed(7))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.features, b.features)


def test_class_locations():
    label = torch.zeros(3, 4, 4, dtype=torch.uint8)
    label[1, 2, 3] = 1
    label[2, 0, 0] = 3
    locations = class_locations(label)
    assert sorted(locations) == [1, 3] and locations[1].tolist() == [[1, 2, 3]] and locations[3].tolist() == [[2, 0, 0]]
    big = torch.ones(30, 30, 30, dtype=torch.uint8)
    kept = class_locations(big)[1]
    assert len(kept) == MAX_LOCATIONS and kept[0].tolist() == [0, 0, 0] and kept[-1].tolist() == [29, 29, 29]
