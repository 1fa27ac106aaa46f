"""Training samples from the embedding cache: depth crops, depth flips, padded labels.

Augmentation is limited to what is exact on cached features. The encoder sees
every slice on its own, so reversing the slice order of the features is exactly
the features of the reversed volume: depth flips are free and exact. In-plane
flips, rotations or intensity changes alter what the encoder sees and so would
need the encoder again (online augmentation: ~1 s per 256² slice on a CPU, the
cost the cache exists to avoid) or K augmented views stored per case at cache
time (K× the disk and encoding time, and only K fixed draws). Neither is done
yet; depth crops and flips are.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .cache import load_case


@dataclass
class Batch:
    features: torch.Tensor  # (B, C_f, d, g, g) float32
    labels: torch.Tensor  # (B, d, S, S) int64, padded with background like the encoder input


class CaseStore:
    """Cached cases by name, kept in memory up to ``capacity`` at a time (least recently used out)."""

    def __init__(self, cache: str | Path, capacity: int = 64) -> None:
        self.cache, self.capacity = Path(cache), capacity
        self._items: OrderedDict[str, dict] = OrderedDict()

    def __getitem__(self, name: str) -> dict:
        if name in self._items:
            self._items.move_to_end(name)
        else:
            self._items[name] = load_case(self.cache, name)
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return self._items[name]


def padded_label(label: torch.Tensor, image_size: int) -> torch.Tensor:
    """``(D, H', W')`` -> ``(D, S, S)``, background below/right, as the encoder input is padded."""
    d, h, w = label.shape
    return F.pad(label.long(), (0, image_size - w, 0, image_size - h))


def crop_depth(features: torch.Tensor, label: torch.Tensor, start: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices ``start .. start+depth`` of ``(C, D, g, g)`` features and ``(D, S, S)`` labels,
    padded at the end (zero features, background labels) when the volume is shorter."""
    f = features[:, start : start + depth]
    y = label[start : start + depth]
    missing = depth - f.shape[1]
    if missing > 0:
        f = F.pad(f, (0, 0, 0, 0, 0, missing))
        y = F.pad(y, (0, 0, 0, 0, 0, missing))
    return f, y


def sample_batch(
    store: CaseStore,
    names: list[str],
    batch_size: int,
    depth: int,
    image_size: int,
    generator: torch.Generator,
    flip: bool = True,
    part: slice = slice(None),
) -> Batch:
    """Draw a batch: case, crop start and flip per sample, all from ``generator``.

    Every rank of a data-parallel run draws the same global batch and builds only
    ``part`` of it, so N ranks see exactly the samples one process would.
    """
    picks = torch.randint(len(names), (batch_size,), generator=generator).tolist()
    offsets = torch.rand(batch_size, generator=generator).tolist()
    flips = (torch.rand(batch_size, generator=generator) < 0.5).tolist()
    feats, labels = [], []
    for i in range(batch_size)[part]:
        case = store[names[picks[i]]]
        total = case["features"].shape[1]
        start = int(offsets[i] * (max(total - depth, 0) + 1))
        f, y = crop_depth(case["features"], padded_label(case["label"], image_size), start, depth)
        if flip and flips[i]:
            f, y = f.flip(1), y.flip(0)
        feats.append(f.float())
        labels.append(y)
    return Batch(torch.stack(feats), torch.stack(labels))
