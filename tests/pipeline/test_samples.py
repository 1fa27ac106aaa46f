"""Training crops: foreground sampling places the configured share of crops on a class the case holds."""

import pytest
import torch

from sam3dseg.common.files import save_tensors
from sam3dseg.pipeline.training.samples import MAX_LOCATIONS, CaseStore, Sampling, class_locations, sample_batch


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


@pytest.fixture
def coded_cache(tmp_path):
    """A case whose features, labels and image all say where they are: token (i, j) of a 6 × 6 grid
    (S = 96) has features (i, j), its 16 × 16 label pixels the value 6i + j, its 8 × 8 image pixels 6i + j."""
    grid, depth = 6, 10
    i, j = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    code = (grid * i + j).to(torch.uint8)
    features = torch.stack([i, j]).float()[:, None].expand(2, depth, grid, grid).half()
    label = code.repeat_interleave(16, 0).repeat_interleave(16, 1)[None].expand(depth, -1, -1).contiguous()
    image = code.repeat_interleave(8, 0).repeat_interleave(8, 1)[None, None].expand(1, depth, -1, -1).contiguous()
    save_tensors({"features": features, "label": label, "image": image}, tmp_path / "cases" / "coded.pt")
    return CaseStore(tmp_path)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_token_crops_keep_features_labels_and_image_aligned(coded_cache, fraction):
    spec = Sampling(batch_size=16, depth=4, image_size=96, foreground_fraction=fraction, image=True, tokens=3)
    corners = set()
    for seed in range(10):
        batch = sample_batch(coded_cache, ["coded"], spec, torch.Generator().manual_seed(seed))
        assert batch.features.shape[-2:] == (3, 3) and batch.labels.shape[-2:] == (48, 48)
        assert batch.images.shape[-2:] == (24, 24)
        for f, y, im in zip(batch.features, batch.labels, batch.images):
            expected = (6 * f[0] + f[1]).long()  # (d, 3, 3)
            assert torch.equal(y, expected.repeat_interleave(16, -2).repeat_interleave(16, -1))
            assert torch.equal(im[0].long(), expected.repeat_interleave(8, -2).repeat_interleave(8, -1))
            corners.add((int(f[0, 0, 0, 0]), int(f[1, 0, 0, 0])))
    assert len(corners) > 4  # windows move over the grid


def test_a_one_token_shift_is_caught(coded_cache):
    """The alignment check above is sharp: labels cut one token off do not match."""
    from sam3dseg.pipeline.training.samples import crop_tokens

    case = coded_cache["coded"]
    f = crop_tokens(case["features"], (1, 2), 3, 6)
    y = crop_tokens(case["label"], (1, 3), 3, 6)
    assert not torch.equal(y.long(), (6 * f[0] + f[1]).long().repeat_interleave(16, -2).repeat_interleave(16, -1))


def test_foreground_token_crops_hold_the_rare_class(rare_cache):
    spec = Sampling(batch_size=50, depth=4, image_size=32, foreground_fraction=1.0, tokens=1)
    batch = sample_batch(rare_cache, ["rare_only"], spec, torch.Generator().manual_seed(0))
    assert batch.labels.shape[-2:] == (16, 16) and (batch.labels == 2).flatten(1).any(1).all()


@pytest.fixture
def viewed_cache(tmp_path):
    """One case and two views of it, each recognisable: every feature, label and image value is the view's index."""
    for view in range(3):
        record = {
            "features": torch.full((2, 8, 2, 2), float(view)).half(),
            "label": torch.full((8, 32, 32), view, dtype=torch.uint8),
            "image": torch.full((1, 8, 16, 16), view, dtype=torch.uint8),
        }
        save_tensors(record, tmp_path / ("cases/case.pt" if view == 0 else f"views/{view}/case.pt"))
    return CaseStore(tmp_path)


def test_samples_draw_among_the_original_and_its_views(viewed_cache):
    """With views = 2 every crop comes whole from one of the three, each about a third of the time;
    with views = 1 view 2 is never read; with views = 0 only the original, and the draws of the
    original's crops are the same as before views existed (no extra numbers drawn)."""
    def drawn(views, seed=0):
        spec = Sampling(batch_size=300, depth=4, image_size=32, image=True, views=views)
        batch = sample_batch(viewed_cache, ["case"], spec, torch.Generator().manual_seed(seed))
        which = batch.features.flatten(1)[:, 0]
        for values in (batch.features, batch.labels, batch.images):  # one view per sample, all three parts
            assert torch.equal(values.flatten(1).float(), which[:, None].expand(-1, values[0].numel()))
        return which.long().bincount(minlength=3).tolist()

    counts = drawn(2)
    assert all(70 <= c <= 130 for c in counts), counts
    assert drawn(1)[2] == 0 and min(drawn(1)[:2]) > 100
    assert drawn(0) == [300, 0, 0]
    spec = Sampling(batch_size=4, depth=4, image_size=32)
    generator = torch.Generator().manual_seed(5)
    sample_batch(viewed_cache, ["case"], spec, generator)
    after_views_0 = torch.rand(1, generator=generator)
    reference = torch.Generator().manual_seed(5)
    torch.randint(1, (4,), generator=reference), torch.rand(4, generator=reference), torch.rand(4, generator=reference)
    assert torch.equal(after_views_0, torch.rand(1, generator=reference))  # picks, offsets, flips: nothing else drawn
