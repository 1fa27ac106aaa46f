"""The inference stage: segment every case of a folder (:func:`run_predict`), planned, then executed.

For one volume (:class:`~sam3dseg.pipeline.inference.predictor.Predictor`): preprocess as recorded in the
model file, encode every slice with the frozen encoder, run the decoder over depth windows whose
finest-level softmax outputs are blended with a Gaussian weight along depth, and stream the blended
model-grid slices back onto the file's grid (bilinear in-plane, linear along depth, the one
model-to-file map, :func:`sam3dseg.data.preprocess.to_file_grid`), taking the argmax there. Only the
slices that a window still covers are held at model resolution, so memory does not grow with the
number of slices beyond the features and the uint8 result.

For a folder: :func:`plan_prediction` finds the cases and those a killed run finished, and refuses what
cannot be met, before any volume is read (a :class:`PredictPlan`); :func:`run_predict` executes it, reading
the next case and writing the last one while this one is predicted. What is written beside each
segmentation for other tools is :mod:`~sam3dseg.pipeline.inference.export`.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...common.files import atomic_output, check_output_folder, read_json, write_json
from ...common.runtime import Log, barrier, is_main_process, print_line
from ...common.settings import changed_settings, describe_changes
from ...data.pictures import save_case_montage
from ...data.preprocess import restore_probabilities
from ...data.volumes import (
    SUFFIXES, Geometry, case_name, channel_gaps, channel_groups, file_modality, image_suffix, read_channels, split_channel,
    write_volume,
)
from ...errors import UserError
from .export import (
    STATISTICS, require_highdicom, structure_statistics, write_case_statistics, write_dicom_seg, write_itksnap_labels,
    write_masks, write_slicer_segmentation, write_statistics_table,
)
from .predictor import Predictor

RECORD = "predict.json"  # OUT/predict.json: what made the folder's segmentations (Predictor.record)


def collect_inputs(path: str | Path, num_channels: int) -> list[tuple[str, list[Path]]]:
    """Cases to predict under ``path``: ``(name, channel files)``, by the dataset reader's rule.

    A file is one case (``liver_003_0000.nii.gz`` predicts as ``liver_003``: nnU-Net's channel 0 of a
    one-file case; any other name is kept whole); so is a DICOM series folder. A folder is read as
    nnU-Net names its images (:func:`~sam3dseg.data.volumes.channel_groups`) when every file is named
    ``{case}_{XXXX}`` and every case has its channel ``_0000``: then each case must have exactly the
    channels ``0000..K-1`` the model needs (a gap or an extra is one line each). Otherwise (``amos_0001``,
    ``amos_0002``: AMOS's own numbering; ``s0011.nii.gz``, ``ct.nii.gz``) each file is a case under its
    own name.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if path.is_file():
        name, channel = split_channel(case_name(path))
        return [(name if channel == 0 else case_name(path), [path])]
    files = sorted(p for p in path.iterdir() if p.is_file() and image_suffix(p))
    if not files:
        if any(p.suffix.lower() == ".dcm" for p in path.iterdir()):
            return [(case_name(path), [path])]
        raise UserError(f"no images ({', '.join(SUFFIXES)}) in {path}")
    groups, loose = channel_groups(files)
    if loose or any(0 not in channels for channels in groups.values()):
        return [(case_name(p), [p]) for p in files]
    problems = []
    for name, channels in groups.items():
        missing, extra = channel_gaps(channels, num_channels)
        ending = image_suffix(next(iter(channels.values())))
        wanted = f"the model reads {num_channels} channel(s), 0000..{num_channels - 1:04d}"
        problems += [f"case {name} in {path}: no {name}_{c:04d}{ending} ({wanted})" for c in missing]
        problems += [f"case {name} in {path}: {channels[c].name} is a channel beyond the model's {num_channels}" for c in extra]
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        raise UserError(f"{len(problems)} problems with the input files:\n" + "\n".join(f"  {p}" for p in problems))
    return [(name, [channels[c] for c in range(num_channels)]) for name, channels in groups.items()]


def write_nnunet_probabilities(out: Path, name: str, probs: np.ndarray, geometry: Geometry) -> None:
    """nnU-Net v2's exported probabilities: ``{name}.npz`` with ``probabilities`` ``(K, z, y, x)`` float32 (the
    layout its SimpleITK reader gives) and ``{name}.pkl``, the properties its writer needs (``sitk_stuff``:
    spacing, origin, direction; ``spacing`` in array order). ``nnUNetv2_ensemble`` averages such files with
    nnU-Net's own (it reads dataset.json and plans.json from the first folder: put nnU-Net's first)."""
    import pickle  # written only: sam3dseg never loads a pickle

    with atomic_output(out / f"{name}.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, probabilities=probs.astype(np.float32))
    properties = {
        "sitk_stuff": {"spacing": tuple(geometry.spacing), "origin": tuple(geometry.origin), "direction": tuple(geometry.direction)},
        "spacing": list(geometry.spacing)[::-1],
    }
    with atomic_output(out / f"{name}.pkl") as tmp, open(tmp, "wb") as f:
        pickle.dump(properties, f)


def predict_probabilities(predictor: Predictor, array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Class probabilities on the file's grid ``(K, z, y, x)`` (float32, the whole volume in memory)."""
    encoded, t = predictor.features(array, geometry)
    probs = torch.stack(list(predictor.model_slices(encoded, t.model_shape[1:])), dim=1)
    return restore_probabilities(probs.cpu(), t)


OUTPUT_TYPES = ("image", "dicom-seg")


@dataclass
class FolderOutputs:
    """What :func:`run_predict` writes for each case: its segmentation (``output_type``) and what is asked
    for beside it."""

    probabilities: bool = False  # {case}_probabilities.npy, (K, z, y, x) float16
    npz: bool = False  # nnU-Net's {case}.npz (float32 "probabilities", (K, z, y, x)) and {case}.pkl (properties)
    png: bool = False  # {case}.png, a montage with contours
    masks: bool = False  # {case}/{structure}{ext}: a 0/1 mask per structure (TotalSegmentator's layout)
    statistics: bool = False  # {case}_statistics.json, gathered into statistics.json and statistics.csv
    viewer: bool = False  # {case}.seg.nrrd (3D Slicer) and itksnap_labels.txt (ITK-SNAP)
    output_type: str = "image"  # the label map in the input's format (NIfTI for DICOM), or dicom-seg: {case}.dcm
    overwrite: bool = False  # replace the folder's segmentations, whatever made them

    def __post_init__(self) -> None:
        if self.output_type not in OUTPUT_TYPES:
            raise UserError(f"--output-type {self.output_type}: use one of {', '.join(OUTPUT_TYPES)}")

    def target(self, out: Path, name: str, source: Path) -> Path:
        """A case's segmentation: ``{name}.dcm`` (a DICOM SEG), else ``{name}`` with the input's suffix
        (``.nii.gz`` for a DICOM series)."""
        return out / f"{name}{'.dcm' if self.output_type == 'dicom-seg' else image_suffix(source) or '.nii.gz'}"

    def files(self, out: Path, name: str, target: Path) -> list[Path]:
        """Every file a finished case ``name`` has in ``out``: what is asked for beside it, then its segmentation."""
        extras = [f"{name}_probabilities.npy"] * self.probabilities + [f"{name}.npz", f"{name}.pkl"] * self.npz + [f"{name}.png"] * self.png
        extras += [name] * self.masks + [f"{name}{STATISTICS}"] * self.statistics + [f"{name}.seg.nrrd"] * self.viewer
        return [out / e for e in extras] + [target]


def _segmentation_file(path: Path) -> bool:
    """A file in an output folder that is a case's segmentation (a label map, or a DICOM SEG; not the viewer's
    ``.seg.nrrd`` beside one)."""
    return path.is_file() and not path.name.endswith(".seg.nrrd") and bool(image_suffix(path) or path.name.endswith(".dcm"))


def process_share(part: tuple[int, int] = (0, 1), rank: int = 0, world: int = 1) -> tuple[int, int]:
    """:func:`run_predict`'s ``share`` for job ``part = (i, n)`` (0-based) of ``n`` and ``torchrun`` rank
    ``rank`` of ``world``: the job's cases ``i, i + n, ...`` dealt to its ranks in turn."""
    return part[0] + part[1] * rank, part[1] * world


def _plan_cases(
    out: Path, cases: list[tuple[str, list[Path]]], record: dict, outputs: FolderOutputs, log: Log | None
) -> tuple[list, list[str]]:
    """``(todo, done)``: the cases to predict ``(name, paths, target)`` and those this same run finished (every file
    it asks for is there). Segmentations in ``out`` that another model or other settings made, or that no record
    names, are refused in one line unless ``outputs.overwrite``."""
    targets = [(name, paths, outputs.target(out, name, paths[0])) for name, paths in cases]
    present = sorted(p.name for p in out.iterdir() if _segmentation_file(p)) if out.is_dir() else []
    if outputs.overwrite:
        kept = sorted(set(present) - {t.name for *_, t in targets})
        if kept and log is not None:
            log(f"warning: --overwrite replaces this run's cases only; {len(kept)} other segmentation(s) in {out} "
                f"({kept[0]}, ...) stay, and predict.json no longer describes them")  # fmt: skip
        return targets, []
    if present:
        try:
            recorded = read_json(out / RECORD) if (out / RECORD).is_file() else None
        except UserError:
            recorded = None
        if recorded != record:
            made = "no record of what made them" if recorded is None else "they were made by " + _record_difference(recorded, record)
            raise UserError(
                f"{out} holds {len(present)} segmentation(s) ({present[0]}, ...) and {made}: give a new --out, or --overwrite "
                "to replace them (a killed run resumes when run again with the same models and settings)"
            )
    done = [name for name, _, target in targets if all(p.exists() for p in outputs.files(out, name, target))]
    return [t for t in targets if t[0] not in done], done


def _record_difference(recorded: dict, record: dict) -> str:
    """``another model`` or ``other settings (window: 16 there, 8 now)``: how two records differ."""
    if not isinstance(recorded, dict) or recorded.get("format") != record["format"]:
        return "another version of sam3dseg"
    if recorded.get("models") != record["models"]:
        return "other model file(s)"
    return f"other settings ({describe_changes(changed_settings(recorded, record))})"


def _write_case(
    out: Path, name: str, label: np.ndarray, image: np.ndarray, geometry: Geometry, source: Path, target: Path,
    outputs: FolderOutputs, names: list[str],
) -> str:
    """Write a case's files, each atomically, its segmentation last (when it is there the case is done);
    returns the case's name. ``image`` is the input's first channel, for the statistics."""
    suffix = image_suffix(source) or ".nii.gz"
    if outputs.masks:
        write_masks(out / name, label, geometry, names, suffix)
    if outputs.statistics:
        write_case_statistics(out, name, structure_statistics(label, image, geometry, names))
    if outputs.viewer:
        write_slicer_segmentation(out / f"{name}.seg.nrrd", label, geometry, names)
    if outputs.output_type == "dicom-seg":
        write_dicom_seg(target, label, source, names, f"sam3dseg {name}")
    else:
        write_volume(label, geometry, target)
    return name


@dataclass(frozen=True)
class PredictPlan:
    """What :func:`run_predict` will do, decided and checked before any volume is read: a value to inspect."""

    out: Path
    cases: list[tuple[str, list[Path]]]  # every input case (the folder's statistics table lists them)
    todo: list[tuple[str, list[Path], Path]]  # this process's cases to predict: name, input files, segmentation
    skipped: list[str]  # this process's cases this same run finished before
    record: dict  # what makes the segmentations (Predictor.record), written as predict.json


def plan_prediction(
    predictor: Predictor, inputs: str | Path, out: str | Path, outputs: FolderOutputs, share: tuple[int, int] = (0, 1),
    log: Log | None = print_line,
) -> PredictPlan:
    """The cases under ``inputs`` and, of this process's share, those to predict into ``out`` (see
    :func:`run_predict`); refuses a request that cannot be met (DICOM SEG of files, another run's folder)."""
    cases = collect_inputs(inputs, len(predictor.channel_names))
    if outputs.output_type == "dicom-seg" and not all(paths[0].is_dir() for _, paths in cases):
        first = next(paths[0] for _, paths in cases if not paths[0].is_dir())
        raise UserError(f"--output-type dicom-seg needs DICOM series as input (a DICOM SEG references its source images); {first} is a file")
    if outputs.output_type == "dicom-seg":
        require_highdicom()
    out = check_output_folder(out, "output folder")  # created with the first file written: a failed first case leaves nothing
    record = predictor.record()
    todo, skipped = _plan_cases(out, cases[share[0] :: share[1]], record, outputs, log)
    return PredictPlan(out, cases, todo, skipped, record)


def _check_like_training(predictor: Predictor, name: str, array: np.ndarray, geometry: Geometry, modality: str | None, log: Log | None) -> None:
    """A case unlike the training data is warned of, or refused under ``--strict`` (before anything of it is written)."""
    unlike = predictor.unlike_training(array, geometry, modality)
    if unlike:
        text = f"case {name} does not look like the model's training data: {'; '.join(unlike)}"
        if predictor.config.strict:
            raise UserError(f"{text} (--strict refuses it; without it the case is predicted with a warning)")
        if log is not None:
            log(f"warning: {text}; the segmentation may be poor (--strict refuses such cases)")


def _predict_case(predictor: Predictor, out: Path, name: str, array: np.ndarray, geometry: Geometry, outputs: FolderOutputs) -> np.ndarray:
    """One read case's label map ``(z, y, x)``, with the files written beside the prediction itself (probabilities,
    nnU-Net's npz, the montage)."""
    if outputs.probabilities or outputs.npz:
        probs = predict_probabilities(predictor, array, geometry)
        label = probs.argmax(0).astype(np.uint8)
        if outputs.probabilities:
            with atomic_output(out / f"{name}_probabilities.npy") as tmp:
                np.save(tmp, probs.astype(np.float16))
        if outputs.npz:
            write_nnunet_probabilities(out, name, probs, geometry)
    else:
        label, _ = predictor.predict_array(array, geometry)
    label = predictor.finish(label)
    if outputs.png:
        first = array if array.ndim == 3 else array[0]
        save_case_montage(out / f"{name}.png", first, predictor.modality, geometry, label, None, predictor.class_names, name)
    return label


def run_predict(
    predictor: Predictor, inputs: str | Path, out: str | Path, outputs: FolderOutputs | None = None, progress: bool = True,
    log: Log | None = print_line, share: tuple[int, int] = (0, 1),
) -> dict:
    """Segment every case under ``inputs`` into ``out/{case}{ext}`` (the input's format and exact geometry).

    A case unlike the model's training data (:meth:`Predictor.unlike_training`) is predicted with a
    warning on ``log``, or refused under the predictor's ``config.strict``. ``out/predict.json`` records what
    made the segmentations (:meth:`Predictor.record`): run again with the same models and settings, a killed
    run resumes (a case is done when its segmentation, written last and atomically, and every file asked
    for beside it are there); segmentations another run made are refused unless ``outputs.overwrite``
    replaces them. Returns ``{"written": [...], "skipped": [...], "out": out}``.

    ``share = (i, n)``: this process predicts cases ``i, i + n, ...`` of the input's (sorted) cases, so that
    processes (``torchrun`` ranks, ``--part`` jobs: :func:`process_share`) fill one folder, each case written
    once; each resumes its own. The folder's statistics table is written after a barrier by rank 0, and by each
    ``--part`` job when it ends, from the cases finished by then (a run of the whole folder once all parts are
    done rewrites it with every case, predicting nothing again).
    """
    from tqdm import tqdm

    outputs = outputs or FolderOutputs()
    plan = plan_prediction(predictor, inputs, out, outputs, share, log)
    out, todo, written = plan.out, plan.todo, []
    # Reading the next case and writing the last one overlap the prediction of this one: one thread each,
    # one case ahead and one behind at most, so memory holds three cases whatever the folder's size.
    with ThreadPoolExecutor(1, "sam3dseg-read") as reader, ThreadPoolExecutor(1, "sam3dseg-write") as writer:
        reading = reader.submit(read_channels, todo[0][1]) if todo else None
        writing: Future | None = None
        desc = "predict" if share == (0, 1) else f"predict[{share[0]}/{share[1]}]"
        for i, (name, paths, target) in enumerate(tqdm(todo, desc=desc, unit="case", disable=not progress)):
            array, geometry = reading.result()
            reading = reader.submit(read_channels, todo[i + 1][1]) if i + 1 < len(todo) else None
            array = array[0] if array.shape[0] == 1 else array
            _check_like_training(predictor, name, array, geometry, file_modality(paths[0]), log)
            if i == 0:  # before this process's first file: what made what follows (a resumed run checks it)
                write_json(out / RECORD, plan.record)
                if outputs.viewer:
                    write_itksnap_labels(out, predictor.class_names)
            label = _predict_case(predictor, out, name, array, geometry, outputs)
            if writing is not None:
                written.append(writing.result())
            first = array if array.ndim == 3 else array[0]
            writing = writer.submit(_write_case, out, name, label, first, geometry, paths[0], target, outputs, predictor.class_names)
        if writing is not None:
            written.append(writing.result())
    barrier()  # every rank's cases are written before rank 0 gathers them (no-op in one process)
    if outputs.statistics and is_main_process() and any((out / f"{name}{STATISTICS}").is_file() for name, _ in plan.cases):
        write_statistics_table(out, [name for name, _ in plan.cases])  # the input's cases, by the folder's files
    return {"written": written, "skipped": plan.skipped, "out": out}
