"""On-disk embedding cache: every case encoded once, keyed, atomic, resumable.

Layout of a cache folder::

    CACHE/manifest.json        settings and the list of cases (rewritten after each case)
    CACHE/cases/{case}.pt      {"features": fp16 (256·C, D', S/16, S/16), "label": uint8 (D', H', W'),
                                "transform": dict}  (tensors and plain types: loads weights_only)
    CACHE/cases/{case}.json    {"key": ..., ...}  written after the .pt: its presence marks the case done

A case's key hashes everything its features depend on: the bytes of its image and
label files, the preprocessing settings, the encoder name, size and checkpoint
hash. A later run re-encodes exactly the cases whose key changed. Each file is
written to a temporary name and renamed, and a killed run resumes where it
stopped; the bytes written do not depend on where it was stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import Case, Dataset
from .encoder import SAMImageEncoder, encode_slices
from .errors import UserError
from .io import atomic_output, load_tensors, read_channels, read_volume
from .preprocess import PreprocessConfig, preprocess_image, preprocess_label

CACHE_FORMAT = "sam3dseg-cache"
CACHE_VERSION = 1


@dataclass(frozen=True)
class EncoderInfo:
    """What identifies an encoder's features: name, input size, architecture, weights."""

    name: str
    image_size: int
    checkpoint: str | None  # path as given, for the record
    checkpoint_sha256: str  # of the checkpoint file, or of the weights themselves when random
    spec: dict

    @classmethod
    def of(cls, encoder: SAMImageEncoder, checkpoint: str | Path | None) -> EncoderInfo:
        digest = file_sha256(Path(checkpoint)) if checkpoint else weights_sha256(encoder)
        return cls(encoder.name, encoder.image_size, str(checkpoint) if checkpoint else None, digest, asdict(encoder.spec))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """Hash of a module's weights (names, shapes and values), for encoders without a file."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "weights:" + h.hexdigest()


def case_key(case: Case, preprocess: PreprocessConfig, encoder: EncoderInfo) -> str:
    """The hash a cached case is valid for."""
    parts = {
        "version": CACHE_VERSION,
        "images": [file_sha256(p) for p in case.images],
        "label": file_sha256(case.label) if case.label else None,
        "preprocess": asdict(preprocess),
        "encoder": {k: v for k, v in asdict(encoder).items() if k != "checkpoint"},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_tensors(obj: dict, path: Path) -> None:
    """``torch.save`` through memory, then an atomic write.

    Saving to a buffer also fixes the archive's inner folder name, which
    ``torch.save(path)`` would take from the (temporary) file name: the bytes then
    depend only on the content.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _atomic_write(path, buffer.getvalue())


def write_json(obj: dict, path: Path) -> None:
    _atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def load_case(cache: Path, name: str) -> dict:
    """One cached case: ``features`` (fp16), ``label`` (uint8 or absent), ``transform``."""
    path = Path(cache) / "cases" / f"{name}.pt"
    return load_tensors(path, "cached case", hint="; run `sam3dseg cache` again (delete the file if it is damaged)")


def read_manifest(cache: str | Path) -> dict:
    path = Path(cache) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{cache} is not a sam3dseg cache (no manifest.json): run `sam3dseg cache` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is corrupt: {err}") from err
    if manifest.get("format") != CACHE_FORMAT:
        raise UserError(f"{path} is not a sam3dseg cache manifest")
    return manifest


def load_case_arrays(case: Case, dataset: Dataset, preprocess: PreprocessConfig, image_size: int):
    """Read, check and preprocess one case: ``(C, D', H', W')`` image, label or None, transform."""
    image, geometry = read_channels(list(case.images))
    volume, transform = preprocess_image(image, geometry, dataset.channel_names, preprocess, image_size)
    label = None
    if case.label is not None:
        raw, g = read_volume(case.label)
        if raw.ndim != 3 or raw.shape != image.shape[1:]:
            raise UserError(f"case {case.name}: label {case.label} has shape {raw.shape}, image {image.shape[1:]}")
        if not g.matches(geometry):
            raise UserError(f"case {case.name}: label {case.label} and its image differ in spacing/origin/direction")
        if not np.array_equal(raw, np.round(raw)) or raw.min() < 0 or raw.max() >= dataset.num_classes:
            values = np.unique(raw)
            raise UserError(
                f"case {case.name}: label {case.label} has values {values[:10].tolist()}, "
                f"but dataset.json declares classes 0..{dataset.num_classes - 1}"
            )
        label = preprocess_label(raw.astype(np.uint8), transform)
    return volume, label, transform


def build_cache(
    dataset: Dataset,
    out: str | Path,
    encoder: SAMImageEncoder,
    info: EncoderInfo,
    preprocess: PreprocessConfig,
    slice_batch: int = 8,
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
    device = next(encoder.parameters()).device
    mine = dataset.cases[rank::world_size]
    encoded, reused = [], []
    bar = tqdm(mine, desc=f"cache[{rank}]" if world_size > 1 else "cache", unit="case", disable=not progress)
    for case in bar:
        key = case_key(case, preprocess, info)
        meta_path = cases_dir / f"{case.name}.json"
        if meta_path.is_file() and (cases_dir / f"{case.name}.pt").is_file():
            try:
                if json.loads(meta_path.read_text(encoding="utf-8")).get("key") == key:
                    reused.append(case.name)
                    continue
            except json.JSONDecodeError:
                pass  # a damaged record: encode again
        volume, label, transform = load_case_arrays(case, dataset, preprocess, info.image_size)
        start = time.perf_counter()
        feats = []
        for channel in torch.from_numpy(volume):  # (D', H', W') each: encoded separately
            f = encode_slices(encoder, channel.to(device), batch_size=slice_batch)  # (D', 256, g, g)
            feats.append(f.transpose(0, 1).to("cpu", torch.float16))
        record = {"features": torch.cat(feats).contiguous(), "transform": transform.to_dict()}
        if label is not None:
            record["label"] = torch.from_numpy(label)
        save_tensors(record, cases_dir / f"{case.name}.pt")
        write_json({"key": key, "slices": int(volume.shape[1]), "model_shape": list(transform.model_shape)}, meta_path)
        encoded.append(case.name)
        rate = volume.shape[0] * volume.shape[1] / (time.perf_counter() - start)
        bar.set_postfix(slices_per_s=f"{rate:.1f}")
        if on_case_done:
            on_case_done(case.name)
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank's cases are on disk before the manifest lists them
    if rank == 0:
        write_manifest(out, dataset, info, preprocess)
    return {"encoded": encoded, "reused": reused}


def write_manifest(out: Path, dataset: Dataset, info: EncoderInfo, preprocess: PreprocessConfig) -> None:
    manifest = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "dataset": str(dataset.root),
        "class_names": dataset.class_names,
        "channel_names": dataset.channel_names,
        "encoder": asdict(info),
        "preprocess": asdict(preprocess),
        "feature_channels": info.spec["out_chans"] * len(dataset.channel_names),
        "cases": [c.name for c in dataset.cases],
    }
    write_json(manifest, Path(out) / "manifest.json")
