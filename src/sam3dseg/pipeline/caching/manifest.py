"""The cache's record, ``CACHE/manifest.json``: typed, versioned and migrated, as :mod:`.model_file` is for models.

Written last by ``sam3dseg cache`` (its presence marks a complete cache), read by training::

    {"format": "sam3dseg-cache", "version": 2, "dataset", "class_names", "ignore_label", "channel_names",
     "encoder", "preprocess", "feature_channels", "cases", "views", "augment", "fingerprint"}

Version 1 is every manifest written before this record. Fields were added to it without a version step and read
with a default where absent: ``ignore_label`` (None), ``views`` (0), ``augment`` (the defaults), ``fingerprint``
(None). Version 2 writes every field; :func:`_v1_to_v2` fills them in. :meth:`CacheManifest.read` is the one
reader: a bad field is one line naming the file and the field, where it is read, not somewhere later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...common.files import read_json, upgrade, write_json
from ...common.settings import from_dict, to_dict
from ...data.augment import AugmentConfig
from ...data.preprocess import PreprocessConfig
from ...errors import UserError
from ...model.registry import EncoderInfo

MANIFEST_FORMAT = "sam3dseg-cache"
MANIFEST_VERSION = 2


def _v1_to_v2(state: dict) -> dict:
    """Version 2 writes the fields version 1 left out when it was written before them."""
    state.setdefault("ignore_label", None)
    state.setdefault("views", 0)
    state.setdefault("augment", {**to_dict(AugmentConfig()), "copies": state["views"]})
    state.setdefault("fingerprint", None)
    return state


_MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2}


def _names(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(n, str) and n for n in v)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# field -> (check, what is allowed): the plain fields; encoder, preprocess and augment are checked by their own
# records' rules
_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "dataset": (lambda v: isinstance(v, str), "the dataset folder's path"),
    "class_names": (_names, "a list of class names"),
    "ignore_label": (lambda v: v is None or _count(v), "null or a label value"),
    "channel_names": (_names, "a list of channel names"),
    "feature_channels": (lambda v: _count(v) and v > 0, "a positive integer"),
    "cases": (lambda v: isinstance(v, list) and all(isinstance(n, str) and n for n in v), "a list of case names"),
    "views": (_count, "an integer >= 0 (augmented copies per labelled case)"),
    "fingerprint": (lambda v: v is None or isinstance(v, dict), "null or a mapping"),
}


@dataclass
class CacheManifest:
    """What a cache holds: the dataset it came from, classes and channels, the encoder and preprocessing its
    features were made with, the cases, the augmented copies per labelled case and the training data's
    fingerprint (spacing and intensity ranges, which prediction compares new input with)."""

    dataset: str
    class_names: list[str]
    channel_names: list[str]
    encoder: EncoderInfo
    preprocess: PreprocessConfig
    feature_channels: int
    cases: list[str]
    ignore_label: int | None = None  # nnU-Net's ignore label in the cached labels (one past the classes)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    fingerprint: dict | None = None

    @property
    def views(self) -> int:
        """Augmented copies of every labelled case (written as ``views`` too, for a reader that wants the count)."""
        return self.augment.copies

    def to_dict(self) -> dict:
        return {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "dataset": self.dataset, "class_names": self.class_names,
            "ignore_label": self.ignore_label, "channel_names": self.channel_names, "encoder": self.encoder.to_dict(),
            "preprocess": to_dict(self.preprocess), "feature_channels": self.feature_channels, "cases": self.cases,
            "views": self.views, "augment": to_dict(self.augment), "fingerprint": self.fingerprint,
        }  # fmt: skip

    def write(self, cache: str | Path) -> None:
        write_json(Path(cache) / "manifest.json", self.to_dict())

    @classmethod
    def read(cls, cache: str | Path) -> CacheManifest:
        """``CACHE/manifest.json``, its marker and version checked, an older version migrated, every field checked."""
        path = Path(cache) / "manifest.json"
        state = read_json(path, f"{cache} is not a sam3dseg cache (no manifest.json): run `sam3dseg cache` first")
        if not isinstance(state, dict) or state.get("format") != MANIFEST_FORMAT:
            raise UserError(f"{path} is not a sam3dseg cache manifest")
        state = upgrade(state, MANIFEST_VERSION, _MIGRATIONS, "cache format", str(path),
                        newer="upgrade sam3dseg to use it, or cache again into a new folder with this one")  # fmt: skip
        for name, (check, allowed) in _FIELDS.items():
            if name not in state or not check(state[name]):
                got = f"got {state[name]!r}" if name in state else "absent"
                raise UserError(f"{path}: {name} must be {allowed}, {got}; run `sam3dseg cache` again into a new folder")
        try:
            encoder = EncoderInfo.from_dict(state["encoder"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{path}: encoder is not a valid encoder record ({err!r} missing or wrong)") from err
        try:
            preprocess = from_dict(PreprocessConfig, state.get("preprocess"), "preprocess.")
            augment = from_dict(AugmentConfig, state["augment"], "augment.")
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
        if state["views"] != augment.copies:  # written from one number: two that differ mean a damaged file
            raise UserError(f"{path}: views ({state['views']}) must equal augment.copies ({augment.copies}); run `sam3dseg cache` again into a new folder")
        return cls(
            state["dataset"], state["class_names"], state["channel_names"], encoder, preprocess, state["feature_channels"],
            state["cases"], state["ignore_label"], augment, state["fingerprint"],
        )  # fmt: skip
