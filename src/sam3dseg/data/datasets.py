"""Dataset folders: the Medical Segmentation Decathlon layout and nnU-Net v2's raw layout.

Both have a ``dataset.json`` at the root. Told apart by their keys:

- MSD: ``training: [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``,
  ``labels: {"0": "background", ...}``, ``modality: {"0": "CT"}``. Several channels live
  in one 4-D image (BraTS).
- nnU-Net v2: ``channel_names: {"0": "T1"}``, ``labels: {"background": 0, ...}``,
  ``file_ending: ".nii.gz"``; images ``imagesTr/{case}_{XXXX}{ending}`` (one file per
  channel), labels ``labelsTr/{case}{ending}``; or, instead of the folders, the files listed
  under ``dataset: {case: {"images": [...], "label": ...}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.files import read_json
from ..errors import UserError
from .volumes import SUFFIXES, Geometry, case_name, channel_gaps, channel_groups, image_suffix, read_channels, read_volume


@dataclass(frozen=True)
class Case:
    """One training case: its image file(s) (one per channel, or one 4-D file) and label."""

    name: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass
class Dataset:
    """A dataset folder: its cases, class names (index = label value) and channel names."""

    root: Path
    cases: list[Case]
    class_names: list[str]
    channel_names: list[str]
    layout: str
    extra: dict = field(default_factory=dict)
    ignore_label: int | None = None  # nnU-Net's "ignore" label (the highest value): left out of loss and metrics
    test_cases: list[Case] = field(default_factory=list)  # imagesTs (MSD: 'test'), labels from labelsTs where present
    problems: list[str] = field(default_factory=list)  # what listing the training folders found: files without a case, counts
    test_problems: list[str] = field(default_factory=list)  # the same for the test folders (only `check` reads them)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_dataset(root: str | Path) -> Dataset:
    """Read ``root/dataset.json`` (MSD or nnU-Net v2) and list the training cases.

    Raises:
        UserError: no or malformed ``dataset.json``, a path that leaves ``root``,
            labels that are not 0..K-1. The files themselves are checked by
            :func:`check_cases`.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    meta_path = root / "dataset.json"
    meta = read_json(meta_path, f"no dataset.json in {root}: expected an MSD or nnU-Net v2 dataset folder")
    if "channel_names" in meta:
        dataset = _load_nnunet(root, meta, meta_path)
    elif "training" in meta and "modality" in meta:
        dataset = _load_msd(root, meta, meta_path)
    else:
        raise UserError(
            f"{meta_path} is neither MSD (needs 'training', 'labels', 'modality') "
            f"nor nnU-Net v2 (needs 'channel_names', 'labels', 'file_ending')"
        )
    if not dataset.cases:
        raise UserError(f"{meta_path} lists no training cases")
    expected = meta.get("numTraining")
    if isinstance(expected, int) and expected != len(dataset.cases):
        dataset.problems.append(f"{meta_path.name}: numTraining is {expected}, but {len(dataset.cases)} training case(s) were found")
    return dataset


def read_case(case: Case, dataset: Dataset) -> tuple[np.ndarray, Geometry, np.ndarray | None]:
    """Read one case with every check: ``(C, z, y, x)`` channels, their geometry, the raw label or None.

    Raises:
        UserError: on the first problem, naming the case: a missing or unreadable file,
            a channel count other than ``dataset.json``'s, channels or label on another
            grid, label values outside 0..K-1.
    """
    for path in (*case.images, *([case.label] if case.label is not None else [])):
        if not path.exists():
            raise UserError(f"case {case.name}: {'label' if path == case.label else 'image'} not found: {path}")
    try:
        image, geometry = read_channels(list(case.images))
        label = None if case.label is None else read_volume(case.label)
    except UserError as err:
        raise UserError(f"case {case.name}: {err}") from err
    if image.shape[0] != len(dataset.channel_names):
        raise UserError(
            f"case {case.name}: {image.shape[0]} image channel(s), but dataset.json declares "
            f"{len(dataset.channel_names)} ({', '.join(dataset.channel_names)})"
        )
    if label is None:
        return image, geometry, None
    raw, g = label
    if raw.ndim != 3 or raw.shape != image.shape[1:]:
        raise UserError(f"case {case.name}: label {case.label} has shape {raw.shape}, image {image.shape[1:]}")
    if not g.matches(geometry):
        raise UserError(f"case {case.name}: label {case.label} and its image differ in spacing/origin/direction")
    top = dataset.num_classes - 1 if dataset.ignore_label is None else dataset.ignore_label
    if not np.array_equal(raw, np.round(raw)) or raw.min() < 0 or raw.max() > top:
        values = np.unique(raw)
        raise UserError(
            f"case {case.name}: label {case.label} has values {values[:10].tolist()}, "
            f"but dataset.json declares classes 0..{top}"
        )
    return image, geometry, raw


def check_cases(dataset: Dataset, cases: list[Case] | None = None, progress: bool = True, test: bool = False) -> list[str]:
    """Every problem, one line each: what listing the folders found (:attr:`Dataset.problems`, and with
    ``test`` :attr:`Dataset.test_problems`), then :func:`read_case`'s checks on every training case (or
    ``cases``) and, with ``test``, every test case.

    nnU-Net's ``--verify_dataset_integrity``: run before any encoding, so a problem in
    the last case does not surface after hours of work on the first ones.
    """
    from tqdm import tqdm

    problems = list(dataset.problems) + (list(dataset.test_problems) if test else [])
    todo = [(c, "") for c in (dataset.cases if cases is None else cases)] + [(c, "test ") for c in dataset.test_cases if test]
    for case, kind in tqdm(todo, desc="check", unit="case", disable=not progress, leave=False):
        try:
            read_case(case, dataset)
        except UserError as err:
            problems.append(f"{kind}{err}")
    return problems


def require_valid(dataset: Dataset, cases: list[Case] | None = None, progress: bool = True, test: bool = False) -> None:
    """:func:`check_cases`, raising one error that lists every problem."""
    problems = check_cases(dataset, cases, progress, test)
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        listed = "\n".join(f"  {p}" for p in problems)
        raise UserError(f"{len(problems)} problems in the dataset {dataset.root}:\n{listed}")


def _inside(root: Path, relative: str, meta_path: Path) -> Path:
    """``root / relative``, refusing paths that leave ``root`` (``..``, absolute, links)."""
    if not isinstance(relative, str) or not relative:
        raise UserError(f"{meta_path}: expected a file path, got {relative!r}")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UserError(f"{meta_path}: path {relative!r} points outside the dataset folder {root}")
    return path


def _class_names(labels: dict, meta_path: Path, by_name: bool) -> tuple[list[str], int | None]:
    """Class names indexed by label value (values exactly 0..K-1) and nnU-Net's ``ignore`` label, if any:
    the highest value, named ``ignore``, left out of the class names."""
    if not isinstance(labels, dict) or not labels:
        raise UserError(f"{meta_path}: 'labels' must be a non-empty object")
    try:
        pairs = {int(v): str(k) for k, v in labels.items()} if by_name else {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError) as err:
        raise UserError(
            f"{meta_path}: 'labels' values must be integers (region-based labels are not supported): {err}"
        ) from err
    if sorted(pairs) != list(range(len(pairs))):
        raise UserError(f"{meta_path}: label values must be 0..K-1, got {sorted(pairs)}")
    names = [pairs[i] for i in range(len(pairs))]
    ignore = None
    if "ignore" in names:
        ignore = names.index("ignore")
        if ignore != len(names) - 1:
            raise UserError(f"{meta_path}: the 'ignore' label must have the highest value (nnU-Net's rule), got {ignore}")
        names = names[:-1]
    if len(names) < 2:
        raise UserError(f"{meta_path}: need background and at least one foreground class")
    return names, ignore


def _names_in_order(mapping: dict, key: str, meta_path: Path) -> list[str]:
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"{meta_path}: '{key}' must be a non-empty object")
    try:
        return [str(mapping[k]) for k in sorted(mapping, key=int)]
    except ValueError as err:
        raise UserError(f"{meta_path}: '{key}' keys must be channel indices 0, 1, ...") from err


def _load_msd(root: Path, meta: dict, meta_path: Path) -> Dataset:
    channels = _names_in_order(meta["modality"], "modality", meta_path)
    classes, ignore = _class_names(meta.get("labels"), meta_path, by_name=False)
    training = meta["training"]
    if not isinstance(training, list):
        raise UserError(f"{meta_path}: 'training' must be a list")
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            raise UserError(f"{meta_path}: training entry {i} needs an 'image'")
        image = _inside(root, entry["image"], meta_path)
        label = _inside(root, entry["label"], meta_path) if entry.get("label") else None
        cases.append(Case(case_name(image), (image,), label))
    dataset = Dataset(root, cases, classes, channels, "msd", ignore_label=ignore)
    test = meta.get("test", [])
    if not isinstance(test, list):
        raise UserError(f"{meta_path}: 'test' must be a list of image paths")
    images = [_inside(root, entry if isinstance(entry, str) else (entry or {}).get("image"), meta_path) for entry in test]
    labels = root / "labelsTs"
    dataset.test_cases = [Case(case_name(i), (i,), labels / i.name if labels.is_dir() else None) for i in images]
    return dataset


def _load_nnunet(root: Path, meta: dict, meta_path: Path) -> Dataset:
    channels = _names_in_order(meta["channel_names"], "channel_names", meta_path)
    classes, ignore = _class_names(meta.get("labels"), meta_path, by_name=True)
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or image_suffix(Path(f"x{ending}")) != ending:
        raise UserError(f"{meta_path}: 'file_ending' must be one of {', '.join(SUFFIXES)}, got {ending!r}")
    if "dataset" in meta:
        return Dataset(root, _listed_cases(root, meta["dataset"], meta_path), classes, channels, "nnunet", ignore_label=ignore)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not labels_dir.is_dir():
        raise UserError(f"{root} has no labelsTr folder (nor a 'dataset' list in {meta_path.name})")
    if not images_dir.is_dir():
        raise UserError(f"{root} has no imagesTr folder")
    dataset = Dataset(root, [], classes, channels, "nnunet", ignore_label=ignore)
    dataset.cases = _folder_cases(dataset, images_dir, labels_dir, ending, required=True)
    if (root / "imagesTs").is_dir():
        dataset.test_cases = _folder_cases(dataset, root / "imagesTs", root / "labelsTs", ending, required=False)
    return dataset


def _folder_cases(dataset: Dataset, images_dir: Path, labels_dir: Path, ending: str, required: bool) -> list[Case]:
    """nnU-Net's folder pair: ``images/{case}_{XXXX}{ending}``, one per channel, and ``labels/{case}{ending}``.

    Training cases are the labels (``required``); test cases are the images, with their label where
    ``labels_dir`` exists. Every image file that belongs to no case (no label, a channel the dataset
    does not declare, a name without ``_XXXX``) and every test label without its image files is added to
    ``dataset.problems`` (``test_problems`` for the test pair): nnU-Net refuses such folders, and a file
    left out silently is a case lost.
    """
    root, n = dataset.root, len(dataset.channel_names)
    problems = dataset.problems if required else dataset.test_problems
    meta_path = root / "dataset.json"
    found = [p for p in images_dir.iterdir() if image_suffix(p)]
    groups, loose = channel_groups(p for p in found if p.name.endswith(ending))
    for path in sorted(loose + [p for p in found if not p.name.endswith(ending)]):
        problems.append(f"{images_dir.name}/{path.name} is not named {{case}}_{{XXXX}}{ending} (nnU-Net's rule: "
                        f"case name, channel number, then the dataset's file_ending)")  # fmt: skip
    labelled = {case_name(p) for p in labels_dir.glob(f"*{ending}")} if labels_dir.is_dir() else set()
    names = sorted(labelled) if required else sorted(groups)
    cases = []
    for name in names:
        images = tuple(_inside(root, f"{images_dir.name}/{name}_{c:04d}{ending}", meta_path) for c in range(n))
        label = _inside(root, f"{labels_dir.name}/{name}{ending}", meta_path) if labels_dir.is_dir() else None
        cases.append(Case(name, images, label))
    known = set(names)
    for name, channels in groups.items():
        extra = channel_gaps(channels, n)[1]
        if name not in known:
            problems.append(f"case {name}: {images_dir.name}/{next(iter(channels.values())).name} has no label {labels_dir.name}/{name}{ending}")
        elif extra:
            problems.append(f"case {name}: {images_dir.name}/{channels[extra[0]].name} is a channel beyond the {n} dataset.json declares")
    if not required and labels_dir.is_dir():
        for name in sorted(labelled - set(groups)):
            problems.append(f"test case {name}: {labels_dir.name}/{name}{ending} has no image in {images_dir.name}")
    return cases


def _listed_cases(root: Path, listed: dict, meta_path: Path) -> list[Case]:
    """nnU-Net v2's ``"dataset": {case: {"images": [one path per channel], "label": path}}``: paths relative to
    the dataset folder (kept inside it) or absolute (the user's explicit choice; no $VARIABLES expanded)."""
    if not isinstance(listed, dict) or not listed:
        raise UserError(f"{meta_path}: 'dataset' must be a non-empty object of cases")

    def resolve(path: object) -> Path:
        return Path(path) if isinstance(path, str) and Path(path).is_absolute() else _inside(root, path, meta_path)

    cases = []
    for name in sorted(listed):
        entry = listed[name]
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or not entry["images"]:
            raise UserError(f"{meta_path}: dataset entry {name!r} needs 'images' (a list of paths, one per channel)")
        label = resolve(entry["label"]) if entry.get("label") else None
        cases.append(Case(str(name), tuple(resolve(i) for i in entry["images"]), label))
    return cases


def read_channel_names(meta_path: str | Path) -> list[str]:
    """Channel names in order from an MSD (``modality``) or nnU-Net v2 (``channel_names``) ``dataset.json``;
    empty for a file that names none (a labels-only file given to ``evaluate --labels``)."""
    meta_path = Path(meta_path)
    meta = read_json(meta_path, f"labels file not found: {meta_path}")
    key = next((k for k in ("channel_names", "modality") if k in meta), None)
    return _names_in_order(meta[key], key, meta_path) if key else []


def read_class_names(meta_path: str | Path) -> tuple[list[str], int | None]:
    """Class names (index = label value) from an MSD or nnU-Net v2 ``dataset.json``, and its ``ignore`` label or None."""
    meta_path = Path(meta_path)
    labels = read_json(meta_path, f"labels file not found: {meta_path}").get("labels")
    by_name = isinstance(labels, dict) and not all(str(k).isdigit() for k in labels)
    return _class_names(labels, meta_path, by_name=by_name)
