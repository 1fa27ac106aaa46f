"""Post-processing decided on validation predictions: keep only the largest connected component, where it helps.

nnU-Net's rule, applied to the validation cases of one run or of several folds together:

1. **Whole foreground.** Keep the largest connected component of the union of the foreground
   classes (voxels outside it become background). Adopted when the mean foreground Dice rises
   and no class's mean Dice falls.
2. **Per class**, when there are several, in class order, each on top of the decisions
   before it: keep the largest component of that class. Adopted when that class's mean
   Dice rises.

Components are face-connected (``scipy.ndimage.label``'s default structure). A class's mean
Dice leaves out the cases where it is absent from both masks, as everywhere in sam3dseg.
Training decides this for its own validation cases at the end of a run, from the predictions
it kept of the best epoch (``RUN/validation/epoch_{E}/``); ``sam3dseg postprocess --runs ...`` decides
over several runs' validation cases together and records the decision in each run's model files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ...common.files import atomic_output, write_json
from ...common.runtime import Log, print_line
from ...errors import UserError, summarise
from ..metrics import class_means, dice_per_class, mean_finite
from ..model_file import load_model_file


def keep_largest(label: np.ndarray, classes: list[int]) -> np.ndarray:
    """``label`` with the voxels of ``classes`` outside the largest connected component of their union set to 0."""
    mask = np.isin(label, classes)
    components, count = ndimage.label(mask)
    if count <= 1:
        return label
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out = label.copy()
    out[mask & (components != sizes.argmax())] = 0
    return out


@dataclass
class Postprocess:
    """A decision: which largest-component steps to apply, and the validation Dice it rests on."""

    foreground: bool = False  # keep the largest component of all foreground together
    classes: list[int] = field(default_factory=list)  # then of each of these classes, in order
    dice_before: list[float] = field(default_factory=list)  # mean validation Dice per foreground class
    dice_after: list[float] = field(default_factory=list)
    cases: int = 0  # validation cases it was decided on

    def describe(self, class_names: list[str]) -> str:
        """The steps in words, classes by name: ``largest foreground component, largest component of kidney``."""
        steps = ["largest foreground component"] * self.foreground + [f"largest component of {class_names[k]}" for k in self.classes]
        return ", ".join(steps) if steps else "no post-processing"

    def apply(self, label: np.ndarray, num_classes: int) -> np.ndarray:
        """The post-processed ``label`` (any grid)."""
        if self.foreground:
            label = keep_largest(label, list(range(1, num_classes)))
        for k in self.classes:
            label = keep_largest(label, [k])
        return label

    def to_dict(self) -> dict:
        return {"foreground": self.foreground, "classes": list(self.classes), "dice_before": list(self.dice_before),
                "dice_after": list(self.dice_after), "cases": self.cases}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Postprocess:
        return cls(bool(d["foreground"]), [int(k) for k in d["classes"]], list(d["dice_before"]), list(d["dice_after"]), int(d["cases"]))


def _class_means(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> list[float]:
    return class_means([dice_per_class(pred, ref, num_classes) for pred, ref in pairs], num_classes)


def _rises(after: float, before: float) -> bool:
    return after == after and (before != before or after > before)  # NaN (absent everywhere) never rises


def decide(pairs: list[tuple[np.ndarray, np.ndarray]], class_names: list[str], log: Log = print_line) -> Postprocess:
    """nnU-Net's decision (module docstring) on ``(prediction, reference)`` label pairs; ``log`` gets one line per step."""
    k = len(class_names)
    before = current = _class_means(pairs, k)
    decision = Postprocess(cases=len(pairs), dice_before=before)
    trial = [(keep_largest(p, list(range(1, k))), r) for p, r in pairs]
    after = _class_means(trial, k)
    adopt = _rises(mean_finite(after), mean_finite(before)) and not any(a < b for a, b in zip(after, before) if a == a and b == b)
    log(f"largest foreground component: mean Dice {mean_finite(before):.4f} -> {mean_finite(after):.4f}, "
        f"{'applied' if adopt else 'not applied'}")  # fmt: skip
    if adopt:
        decision.foreground, pairs, current = True, trial, after
    for c in range(1, k) if k > 2 else []:
        trial = [(keep_largest(p, [c]), r) for p, r in pairs]
        after = _class_means(trial, k)
        adopt = _rises(after[c - 1], current[c - 1])
        log(f"largest {class_names[c]} component: its Dice {current[c - 1]:.4f} -> {after[c - 1]:.4f}, {'applied' if adopt else 'not applied'}")
        if adopt:
            decision.classes.append(c)
            pairs, current = trial, after
    decision.dice_after = current
    return decision


VALIDATION = "validation"  # RUN/validation/epoch_{E:04d}/{case}.npz: "prediction" and "reference", uint8, model grid


def validation_folder(run: Path, epoch: int) -> Path:
    """Where epoch ``epoch``'s validation predictions are kept: one folder per epoch, so the best epoch's stay whole
    until ``best.pt`` names a newer one (:func:`save_validation`)."""
    return Path(run) / VALIDATION / f"epoch_{epoch:04d}"


def save_validation(run: Path, predictions: dict[str, tuple[np.ndarray, np.ndarray]], epoch: int) -> None:
    """Keep epoch ``epoch``'s validation predictions with their references, in that epoch's own folder.

    Training writes them before ``best.pt`` (which names the epoch: the commit), then ``last.pt``, then drops
    the other epochs' folders (:func:`prune_validation`): a kill at any point leaves ``best.pt``'s epoch whole.
    """
    folder = validation_folder(run, epoch)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (pred, ref) in predictions.items():
        with atomic_output(folder / f"{name}.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, prediction=pred.astype(np.uint8), reference=ref.astype(np.uint8))


def prune_validation(run: Path, keep: int) -> None:
    """Remove every epoch's validation predictions but epoch ``keep``'s (and the flat files of older runs)."""
    import shutil

    root = Path(run) / VALIDATION
    for path in root.iterdir() if root.is_dir() else []:
        if path.is_dir() and path != validation_folder(run, keep):
            shutil.rmtree(path)
        elif path.is_file() and path.suffix == ".npz":
            path.unlink()


def load_validation(run: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(prediction, reference)`` pairs kept of the epoch the run's ``best.pt`` holds (a run written before
    epochs had folders: the flat ``validation/*.npz``)."""
    best = Path(run) / "best.pt"
    folder = validation_folder(run, load_model_file(best).epoch) if best.is_file() else None
    if folder is None or not folder.is_dir():
        folder = Path(run) / VALIDATION
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise UserError(f"{run} has no validation predictions of its best epoch ({VALIDATION}/): train it with validation cases (a fold) first")
    pairs = []
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as z:
                pairs.append((z["prediction"], z["reference"]))
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"cannot read {path}: {summarise(err)}") from err
    return pairs


def record_decision(run: Path, decision: Postprocess) -> None:
    """Write ``decision`` into the run's model files (``best.pt``, ``last.pt``) and ``RUN/postprocessing.json``."""
    for name in ("best.pt", "last.pt"):
        path = Path(run) / name
        if path.is_file():
            record = load_model_file(path)
            record.postprocess = decision.to_dict()
            record.save(path)
    write_json(Path(run) / "postprocessing.json", decision.to_dict())


def run_postprocess(runs: list[Path], log: Log = print_line) -> Postprocess:
    """``sam3dseg postprocess``: one decision over the validation cases of all ``runs`` (e.g. the folds of a
    cross-validation), recorded in each run's model files."""
    names = None
    pairs = []
    for run in runs:
        path = Path(run) / "best.pt"
        if not path.is_file():
            raise UserError(f"{run} holds no best.pt: give run folders written by `sam3dseg train`")
        classes = load_model_file(path).class_names
        if names is not None and classes != names:
            raise UserError(f"{run} has classes {', '.join(classes)}; {runs[0]} has {', '.join(names)}: the runs must share their classes")
        names = classes
        pairs += load_validation(run)
    log(f"post-processing, decided on {len(pairs)} validation case(s) of {len(runs)} run(s):")
    decision = decide(pairs, names, lambda line: log("  " + line))
    for run in runs:
        record_decision(run, decision)
    log(f"recorded in {len(runs)} run(s): {decision.describe(names)}")
    return decision
