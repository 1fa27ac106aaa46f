"""Training samples from the embedding cache: views, depth crops, in-plane token crops, depth flips, padded labels.

Augmentation on cached features is limited to what is exact. The encoder sees every
slice on its own, so reversing the slice order of the features is exactly the
features of the reversed volume: depth flips are free and exact. In-plane flips are
not (``bench/flip_symmetry.py``: the features of a mirrored slice have a cosine of
about 0.7 per token with the mirrored features); they, rotations and intensity
changes alter what the encoder sees and so need the encoder again: online (0.3 s per
256² slice on this CPU, the cost the cache exists to avoid) or, as here, as augmented
views encoded at cache time (``sam3dseg cache --augmented-copies K``, :mod:`sam3dseg.data.augment`),
among which each sample draws.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...common.runtime import return_large_buffers_to_the_os
from ...model.encoder import pad_square
from ..caching.cache import load_case


@dataclass
class Batch:
    features: torch.Tensor  # (B, C_f, d, g, g) float32
    labels: torch.Tensor  # (B, d, S, S) int64, padded with background like the encoder input
    images: torch.Tensor | None = None  # (B, C, d, S/2, S/2) uint8, for the decoder's image path


# Voxels kept per class and case for foreground sampling (evenly spaced in scan order).
MAX_LOCATIONS = 10_000


def class_locations(label: torch.Tensor, ignore: int | None = None) -> dict[int, torch.Tensor]:
    """Where each foreground class lies: ``(D, H, W)`` labels -> ``{k: (n, 3) int64 (d, h, w)}``.

    Classes absent from the label (and nnU-Net's ``ignore`` label) are left out; a class with more than
    :data:`MAX_LOCATIONS` voxels keeps that many, evenly spaced in scan order
    (deterministic, so resuming replays the same crops).
    """
    out = {}
    for k in torch.unique(label).tolist():
        if k == 0 or k == ignore:
            continue
        idx = (label == k).nonzero()
        if len(idx) > MAX_LOCATIONS:
            idx = idx[torch.linspace(0, len(idx) - 1, MAX_LOCATIONS).long()]
        out[int(k)] = idx
    return out


class CaseStore:
    """Cached cases by name, memory-mapped from disk: a crop reads only its own pages, so resident
    memory does not grow with the number of cases (the page cache keeps what is read often).

    Items are cases by name (``store[name]``) or their augmented views (``store[name, v]``,
    v >= 1; view 0 is the case). At most ``capacity`` files are held open at a time (least
    recently used closed). Class locations (:func:`class_locations`) are computed once per
    case or view, on first use, and kept (they are small: at most ``MAX_LOCATIONS`` voxels per class).
    """

    def __init__(self, cache: str | Path, capacity: int = 256, ignore: int | None = None) -> None:
        return_large_buffers_to_the_os()  # or the heap grows by a crop's buffers with every case read
        self.cache, self.capacity, self.ignore = Path(cache), capacity, ignore
        self._items: OrderedDict[tuple[str, int], dict] = OrderedDict()
        self._locations: dict[tuple[str, int], dict[int, torch.Tensor]] = {}

    def locations(self, item: str | tuple[str, int]) -> dict[int, torch.Tensor]:
        """Foreground voxels of a case (or view) by class (model grid, ``(d, h, w)`` rows)."""
        key = _item_key(item)
        if key not in self._locations:
            self._locations[key] = class_locations(self[key]["label"], self.ignore)
        return self._locations[key]

    def __getitem__(self, item: str | tuple[str, int]) -> dict:
        key = _item_key(item)
        if key in self._items:
            self._items.move_to_end(key)
        else:
            self._items[key] = load_case(self.cache, key[0], mmap=True, view=key[1])
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return self._items[key]


def _item_key(item: str | tuple[str, int]) -> tuple[str, int]:
    return (item, 0) if isinstance(item, str) else item


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's batch draws: distinct per (``train.seed``, epoch), so a resumed run draws what an
    uninterrupted one would (as :func:`~sam3dseg.data.augment.view_seed` fixes each view)."""
    return seed * 1_000_003 + epoch


def padded_label(label: torch.Tensor, image_size: int) -> torch.Tensor:
    """``(D, H', W')`` -> ``(D, S, S)``, background below/right, as the encoder input is padded (dtype kept)."""
    return pad_square(label, image_size)


def crop_depth(volume: torch.Tensor, start: int, depth: int) -> torch.Tensor:
    """Slices ``start .. start+depth`` along the third-last axis (``(C, D, h, w)`` features or images,
    ``(D, S, S)`` labels), zero-padded at the end (zero features, background labels) when the volume is shorter."""
    out = volume[..., start : start + depth, :, :]
    missing = depth - out.shape[-3]
    return F.pad(out, (0, 0, 0, 0, 0, missing)) if missing > 0 else out


@dataclass(frozen=True)
class Sampling:
    """How training crops are drawn."""

    batch_size: int
    depth: int  # slices per crop
    image_size: int  # S, the side labels are padded to
    flip: bool = True  # flip along depth with probability 1/2
    foreground_fraction: float = 0.0  # share of crops placed on a voxel of a class the case holds
    image: bool = False  # also crop the cached image (the decoder's image path)
    tokens: int | None = None  # in-plane window of N × N tokens (sN × sN pixels, s the encoder's stride: 16, or 4 for lite_medsam); None: whole planes
    views: int = 0  # augmented views per case to draw among, beside the original


def sample_batch(store: CaseStore, names: list[str], spec: Sampling, generator: torch.Generator, part: slice = slice(None)) -> Batch:
    """Draw a batch: case (and, with ``spec.views = K``, one of its original and K views, uniformly),
    crop start and flip per sample, all from ``generator``.

    With ``spec.foreground_fraction = p`` each crop is, with probability p, placed so
    that it holds a voxel of a foreground class drawn uniformly among those the case
    contains (nnU-Net's oversampling; it uses p = 1/3), the voxel drawn uniformly from
    that class's locations (:meth:`CaseStore.locations`); other crops start uniformly
    at random. With p = 0 no further numbers are drawn, so runs without it are
    unchanged. With ``spec.tokens = N`` each crop is also cut to an N × N window of the
    token grid (and the matching sN × sN labels, sN/2 × sN/2 image, s the encoder's stride), placed uniformly or,
    for a foreground crop, centred on the drawn voxel where the grid allows. Every rank
    of a data-parallel run draws the same global batch and builds only ``part`` of it,
    so N ranks see exactly the samples one process would.
    """
    n = spec.batch_size
    picks = torch.randint(len(names), (n,), generator=generator).tolist()
    offsets = torch.rand(n, generator=generator).tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    forced, which = [False] * n, [(0.0, 0.0)] * n
    if spec.foreground_fraction > 0:
        forced = (torch.rand(n, generator=generator) < spec.foreground_fraction).tolist()
        which = torch.rand(n, 2, generator=generator).tolist()  # the class, then the voxel
    corners = torch.rand(n, 2, generator=generator).tolist() if spec.tokens else [(0.0, 0.0)] * n
    views = torch.randint(spec.views + 1, (n,), generator=generator).tolist() if spec.views else [0] * n
    feats, labels, images = [], [], []
    for i in range(n)[part]:
        name = (names[picks[i]], views[i])
        case = store[name]
        total, grid = case["features"].shape[1], case["features"].shape[-1]
        start = int(offsets[i] * (max(total - spec.depth, 0) + 1))
        window = None
        if spec.tokens:
            free = grid - spec.tokens + 1
            window = (int(corners[i][0] * free), int(corners[i][1] * free))
        if forced[i]:
            start, window = _on_foreground(store.locations(name), which[i], total, spec, grid, start, window)
        crops = [case["features"], case["label"]] + ([case["image"]] if spec.image else [])
        crops = [crop_depth(v, start, spec.depth) for v in crops]  # slices first: only they are read
        crops[1] = padded_label(crops[1], spec.image_size)
        if window is not None:
            crops = [crop_tokens(v, window, spec.tokens, grid) for v in crops]
        if spec.flip and flips[i]:
            crops = [v.flip(-3) for v in crops]
        feats.append(crops[0].float())
        labels.append(crops[1].long())  # after the crop: a whole uint8 plane is padded, only the crop widened
        if spec.image:
            images.append(crops[2])
    return Batch(torch.stack(feats), torch.stack(labels), torch.stack(images) if spec.image else None)


def crop_tokens(volume: torch.Tensor, corner: tuple[int, int], tokens: int, grid: int) -> torch.Tensor:
    """The in-plane window of ``tokens × tokens`` tokens whose first token is ``corner`` (row, column),
    cut from anything on a multiple of the ``grid × grid`` token grid: ``(..., g, g)`` features,
    ``(..., S, S)`` labels, ``(..., S/2, S/2)`` images."""
    scale = volume.shape[-1] // grid  # pixels per token on this volume's grid
    (ty, tx), side = corner, tokens * scale
    return volume[..., ty * scale : ty * scale + side, tx * scale : tx * scale + side]


def _on_foreground(
    locations: dict[int, torch.Tensor], draw: tuple[float, float], total: int, spec: Sampling, grid: int, start: int,
    window: tuple[int, int] | None,
) -> tuple[int, tuple[int, int] | None]:
    """A crop start (and in-plane window) whose crop holds the drawn voxel, centred on it where the volume allows."""
    if not locations:
        return start, window  # a case without foreground: a random crop
    classes = sorted(locations)
    voxels = locations[classes[min(int(draw[0] * len(classes)), len(classes) - 1)]]
    z, y, x = (int(v) for v in voxels[min(int(draw[1] * len(voxels)), len(voxels) - 1)])
    start = min(max(z - spec.depth // 2, 0), max(total - spec.depth, 0))
    if window is not None:
        per_token = spec.image_size // grid
        window = tuple(min(max(c // per_token - spec.tokens // 2, 0), grid - spec.tokens) for c in (y, x))
    return start, window
