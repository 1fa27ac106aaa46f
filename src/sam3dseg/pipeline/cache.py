"""On-disk embedding cache: every case encoded once, keyed, atomic, resumable.

Layout of a cache folder::

    CACHE/cache.yaml           the settings of the run (CacheConfig): repeat it with --config
    CACHE/manifest.json        format version, encoder, preprocessing, classes and the list of cases
                               (written last, once every case is on disk)
    CACHE/cases/{case}.pt      {"features": fp16 (256·C, D', S/16, S/16), "label": uint8 (D', H', W'),
                                "image": uint8 (C, D', S/2, S/2), "transform": dict}
                               (tensors and plain types: loads weights_only)
    CACHE/cases/{case}.json    {"key": ..., "image": true, ...}  written after the .pt: its presence marks the case done

``image`` is the preprocessed volume for the decoder's image path
(:func:`~sam3dseg.model.decoder.image_path_input`), an eighth of the features' bytes. A
case cached by an older sam3dseg, without it, gains it on the next run without being
encoded again.
A case's key hashes everything its features depend on: the bytes of its image and
label files, the preprocessing settings, the encoder name, size and checkpoint
hash. A later run re-encodes exactly the cases whose key changed. Each file is
written to a temporary name and renamed, and a killed run resumes where it
stopped; the bytes written do not depend on where it was stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..common.files import file_sha256, load_tensors, read_json, save_tensors, write_json, write_text
from ..common.runtime import barrier, init_distributed, resolve_device
from ..common.settings import dump_yaml, to_dict
from ..data.datasets import Case, Dataset, load_dataset, read_case, require_valid
from ..data.preprocess import PreprocessConfig, preprocess_image, preprocess_label
from ..errors import UserError
from ..model.decoder import image_path_input
from ..model.encoder import SLICE_BATCH, EncoderInfo, build_encoder, encode_volume
from ..model.vit import SAMImageEncoder
from .config import CacheConfig

CACHE_FORMAT = "sam3dseg-cache"
CACHE_VERSION = 1


def case_key(case: Case, preprocess: PreprocessConfig, encoder: EncoderInfo) -> str:
    """The hash a cached case is valid for."""
    parts = {
        "version": CACHE_VERSION,
        "images": [file_sha256(p) for p in case.images],
        "label": file_sha256(case.label) if case.label else None,
        "preprocess": to_dict(preprocess),
        "encoder": {k: v for k, v in encoder.to_dict().items() if k != "checkpoint"},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load_case(cache: Path, name: str, mmap: bool = False) -> dict:
    """One cached case: ``features`` (fp16), ``label`` (uint8 or absent), ``image`` (uint8), ``transform``.

    ``mmap``: tensors mapped from the file, read as they are sliced (training reads crops).
    """
    path = Path(cache) / "cases" / f"{name}.pt"
    return load_tensors(path, "cached case", hint="; run `sam3dseg cache` again (delete the file if it is damaged)", mmap=mmap)


def read_manifest(cache: str | Path) -> dict:
    """A cache's ``manifest.json``, its marker and format version checked."""
    path = Path(cache) / "manifest.json"
    manifest = read_json(path, f"{cache} is not a sam3dseg cache (no manifest.json): run `sam3dseg cache` first")
    if manifest.get("format") != CACHE_FORMAT:
        raise UserError(f"{path} is not a sam3dseg cache manifest")
    version = manifest.get("version")
    if version != CACHE_VERSION:
        raise UserError(
            f"{path} has cache format version {version!r}; this sam3dseg reads version {CACHE_VERSION}: "
            "run `sam3dseg cache` again into a new folder"
        )
    return manifest


def load_case_arrays(case: Case, dataset: Dataset, preprocess: PreprocessConfig, image_size: int):
    """Read, check and preprocess one case: ``(C, D', H', W')`` image, label or None, transform."""
    image, geometry, raw = read_case(case, dataset)
    volume, transform = preprocess_image(image, geometry, dataset.channel_names, preprocess, image_size)
    label = None if raw is None else preprocess_label(raw.astype(np.uint8), transform)
    return volume, label, transform


def build_cache(
    dataset: Dataset,
    out: str | Path,
    encoder: SAMImageEncoder,
    info: EncoderInfo,
    preprocess: PreprocessConfig,
    slice_batch: int = SLICE_BATCH,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    on_case_done: Callable[[str], None] | None = None,
) -> dict:
    """Encode every case of ``dataset`` not yet cached under the current key.

    With ``world_size > 1`` rank r encodes cases r, r + world, ...; rank 0 writes the
    manifest. Returns a summary ``{"encoded": [...], "reused": [...]}``.
    """
    from tqdm import tqdm

    out = Path(out)
    cases_dir = out / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    encoded, reused, todo = [], [], []
    for case in dataset.cases[rank::world_size]:
        if not all(p.exists() for p in (*case.images, *([case.label] if case.label else []))):
            todo.append((case, None, None))  # require_valid names the missing file
            continue
        key = case_key(case, preprocess, info)
        meta = _read_meta(cases_dir / f"{case.name}.json") if (cases_dir / f"{case.name}.pt").is_file() else None
        if meta is not None and meta.get("key") == key and meta.get("image"):
            reused.append(case.name)
        else:
            todo.append((case, key, meta))
    require_valid(dataset, [case for case, _, _ in todo], progress)  # every problem, before any encoding
    bar = tqdm(todo, desc=f"cache[{rank}]" if world_size > 1 else "cache", unit="case", disable=not progress)
    for case, key, meta in bar:
        meta_path = cases_dir / f"{case.name}.json"
        volume, label, transform = load_case_arrays(case, dataset, preprocess, info.image_size)
        image = image_path_input(torch.from_numpy(volume), info.image_size)
        if meta is not None and meta.get("key") == key:  # cached before images were stored: add the image only
            features = load_case(out, case.name)["features"]
            reused.append(case.name)
        else:
            start = time.perf_counter()
            features = encode_volume(encoder, torch.from_numpy(volume), slice_batch).to("cpu", torch.float16)  # (256·C, D', g, g)
            encoded.append(case.name)
            bar.set_postfix(slices_per_s=f"{volume.shape[0] * volume.shape[1] / (time.perf_counter() - start):.1f}")
        record = {"features": features.contiguous(), "image": image, "transform": transform.to_dict()}
        if label is not None:
            record["label"] = torch.from_numpy(label)
        save_tensors(record, cases_dir / f"{case.name}.pt")
        shape = {"model_shape": list(transform.model_shape), "slices": int(volume.shape[1])}
        write_json(meta_path, {"key": key, "image": True, **shape})
        if on_case_done:
            on_case_done(case.name)
    if world_size > 1:
        barrier()  # every rank's cases are on disk before the manifest lists them
    if rank == 0:
        write_manifest(out, dataset, info, preprocess)
    return {"encoded": encoded, "reused": reused}


def _read_meta(path: Path) -> dict | None:
    """A case's ``.json`` record, or None when it is missing or damaged (the case is encoded again)."""
    try:
        return read_json(path) if path.is_file() else None
    except UserError:
        return None


def write_manifest(out: Path, dataset: Dataset, info: EncoderInfo, preprocess: PreprocessConfig) -> None:
    manifest = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "dataset": str(dataset.root),
        "class_names": dataset.class_names,
        "channel_names": dataset.channel_names,
        "encoder": info.to_dict(),
        "preprocess": to_dict(preprocess),
        "feature_channels": info.spec["out_chans"] * len(dataset.channel_names),
        "cases": [c.name for c in dataset.cases],
    }
    write_json(Path(out) / "manifest.json", manifest)


def run_cache(dataset: str | Path, out: str | Path, config: CacheConfig, progress: bool = True) -> dict:
    """``sam3dseg cache``: build the encoder ``config`` describes and cache every case of ``dataset``.

    Writes ``out/cache.yaml`` (the resolved settings, to repeat the run with
    ``--config``). Under ``torchrun`` the cases are shared out across the processes.
    Returns :func:`build_cache`'s summary with ``rank``, ``world`` and ``random``
    (no checkpoint) added.
    """
    data = load_dataset(dataset)
    rank, world = init_distributed()
    encoder = build_encoder(config.encoder, config.image_size, config.checkpoint).to(resolve_device(config.device, world))
    info = EncoderInfo.of(encoder, config.checkpoint)
    if rank == 0:
        write_text(Path(out) / "cache.yaml", dump_yaml(config))
    summary = build_cache(data, out, encoder, info, config.preprocess, config.slice_batch, rank, world, progress)
    return {**summary, "rank": rank, "world": world, "random": config.checkpoint is None}
