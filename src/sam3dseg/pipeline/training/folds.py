"""Cross-validation folds in nnU-Net's ``splits_final.json``: which cases a run trains and validates on.

``train.fold = k`` reads fold k of ``CACHE/splits_final.json``, a JSON list with one
``{"train": [...], "val": [...]}`` per fold, the layout nnU-Net v2 writes. On first use the
file is made as nnU-Net makes it: the sorted case names split by a k-fold shuffle seeded with
12345 (the same membership as ``sklearn.model_selection.KFold(k, shuffle=True,
random_state=12345)``, nnU-Net's call), each list written sorted. An existing file is used as
it is, so a user's own splits or nnU-Net's own file work unchanged. ``train.fold = all`` trains
on every case without validation; ``train.fold = null`` keeps the simple hold-out of the last
``train.val_fraction`` of the names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...common.files import read_json, write_json
from ...errors import UserError

SPLITS_FILE = "splits_final.json"
SPLIT_SEED = 12345  # nnU-Net's


def make_splits(names: list[str], num_folds: int, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """``num_folds`` folds of ``names``: shuffled with ``seed``, cut in consecutive parts (the first
    ``n % num_folds`` one longer), each part a fold's validation set, the rest its training set."""
    names = sorted(names)
    if len(names) < num_folds:
        raise UserError(f"{num_folds} folds need at least {num_folds} cases; the cache has {len(names)}")
    order = np.arange(len(names))
    np.random.RandomState(seed).shuffle(order)
    sizes = [len(names) // num_folds + (i < len(names) % num_folds) for i in range(num_folds)]
    bounds = np.cumsum([0, *sizes])
    splits = []
    for i in range(num_folds):
        val = {names[j] for j in order[bounds[i] : bounds[i + 1]]}
        splits.append({"train": [n for n in names if n not in val], "val": sorted(val)})
    return splits


def read_splits(path: Path, names: list[str]) -> list[dict[str, list[str]]]:
    """A ``splits_final.json``, checked: a list of ``{"train", "val"}`` lists of case names, all in ``names``."""
    splits = read_json(path, f"{path} not found", top=(list, dict))  # (an object gets the layout message below)
    ok = isinstance(splits, list) and splits and all(
        isinstance(s, dict) and {"train", "val"} <= set(s) and all(isinstance(s[k], list) and all(isinstance(n, str) for n in s[k]) for k in ("train", "val"))
        for s in splits
    )  # fmt: skip
    if not ok:
        raise UserError(f"{path} is not a list of {{\"train\": [case names], \"val\": [case names]}} (nnU-Net's splits_final.json)")
    known = set(names)
    for i, s in enumerate(splits):
        unknown = sorted(set(s["train"] + s["val"]) - known)
        if unknown:
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise UserError(f"{path}: fold {i} names case(s) the cache does not hold: {', '.join(unknown[:3])}{more}")
        if not s["train"]:
            raise UserError(f"{path}: fold {i} has no training cases")
    return splits


def select_cases(
    cache: Path, names: list[str], fold: int | str | None, num_folds: int, val_fraction: float
) -> tuple[list[str], list[str], int | None]:
    """The training and validation case names of a run (module docstring), and how many folds the splits
    file holds (None without folds): an existing file's count wins over ``num_folds``, which only shapes a
    file made on first use. Writes the splits file on first use."""
    names = sorted(names)
    if fold is None:
        n_val = min(math.ceil(val_fraction * len(names)) if len(names) > 1 else 0, len(names) - 1)
        return names[: len(names) - n_val], names[len(names) - n_val :], None
    if fold == "all":
        return names, [], None
    path = Path(cache) / SPLITS_FILE
    if not path.is_file():
        write_json(path, make_splits(names, num_folds))
    splits = read_splits(path, names)
    if fold >= len(splits):
        raise UserError(f"train.fold={fold} but {path} has {len(splits)} folds: give 0..{len(splits) - 1} or all")
    return sorted(splits[fold]["train"]), sorted(splits[fold]["val"]), len(splits)
