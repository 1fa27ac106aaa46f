"""The frozen SAM encoder applied slice by slice: registry, checkpoints, identity, encoding (docs/method.md §1).

Implements steps 1–3 of the method: slices ``I_i`` (grey value repeated to three
channels), ``f_i = Enc(I_i)`` with the frozen ViT of :mod:`sam3dseg.model.vit`, and
the stack ``F = [f_i]`` (:func:`encode_volume`). Official SAM checkpoints
(``sam_vit_b_01ec64.pth``, ViT-L, ViT-H) and MedSAM's ``medsam_vit_b.pth`` load by
path, ``weights_only``, with a strict key check; :class:`EncoderInfo` records which
encoder made a set of features so that cache, training and prediction agree.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.files import file_sha256, load_tensors
from ..common.settings import to_dict
from ..errors import CheckpointError, UserError
from .vit import EncoderSpec, SAMImageEncoder

log = logging.getLogger(__name__)

# SAM's pixel statistics for RGB input in [0, 255] (segment_anything/modeling/sam.py).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# Slices sent through the encoder at once, unless a command says otherwise.
SLICE_BATCH = 8

# The registry: a plain dict, name -> spec (segment_anything/build_sam.py's values).
ENCODERS: dict[str, EncoderSpec] = {
    "vit_b": EncoderSpec(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": EncoderSpec(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": EncoderSpec(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def build_encoder(
    name: str = "vit_b", image_size: int = 1024, checkpoint: str | Path | None = None, seed: int = 0
) -> SAMImageEncoder:
    """Build a frozen SAM image encoder, loading ``checkpoint`` if given.

    Args:
        name: ``vit_b``, ``vit_l`` or ``vit_h``.
        image_size: input side S, any multiple of 16. A checkpoint made at another
            size is adapted (see :func:`adapt_state_dict`).
        checkpoint: an official SAM checkpoint (whole model) or an encoder-only state
            dict. Without one the weights are random and a warning says so.
        seed: seeds the random initialisation, so that a run without a checkpoint
            gets the same encoder each time (cache, training and prediction must agree).

    Returns:
        The encoder; calling it on ``(N, 3, S, S)`` returns ``(N, 256, S/16, S/16)``.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = SAMImageEncoder(ENCODERS[name], image_size=image_size, name=name)
    if checkpoint is None:
        log.warning(
            "%s encoder has RANDOM weights (no --checkpoint given): features carry no "
            "pre-trained knowledge; pass a SAM or MedSAM checkpoint for real use",
            name,
        )
    else:
        load_checkpoint(encoder, checkpoint)
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


def load_checkpoint(encoder: SAMImageEncoder, path: str | Path) -> None:
    """Load an official-format checkpoint into ``encoder``, strictly.

    Missing or unexpected encoder keys, or shapes that do not fit after size
    adaptation, raise ``CheckpointError`` naming them and the architecture expected.
    """
    state = adapt_state_dict(encoder_state_dict(read_state_dict(path)), encoder)
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
            f"{path} does not fit the {encoder.name} encoder (embed_dim {encoder.spec.embed_dim}, "
            f"depth {encoder.spec.depth}): {'; '.join(parts)}.{_describe(state)}"
        )
    encoder.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()})


def _describe(state: dict[str, Tensor]) -> str:
    """A hint naming the architecture a state dict looks like, if it can tell."""
    patch = state.get("patch_embed.proj.weight")
    if patch is None:
        return " It does not look like a SAM image encoder."
    width = patch.shape[0]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    names = [n for n, s in ENCODERS.items() if (s.embed_dim, s.depth) == (width, depth)]
    guess = f" ({names[0]}?)" if names else ""
    return f" The file has embed_dim {width}, depth {depth}{guess}: choose the matching --encoder."


def _few(keys: list[str], n: int = 4) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def to_encoder_input(slices: Tensor, image_size: int) -> Tensor:
    """Grey slices in ``[0, 255]`` to SAM's input: ``(N, H, W) -> (N, 3, S, S)``.

    The grey value is repeated to three channels (method §1, step 1), normalised with
    SAM's per-channel pixel mean/std, and zero-padded at the bottom/right to ``S × S``,
    in that order, as SAM does (so the padding is the mean colour). Resizing the
    longest side to ``S`` is the caller's job (``preprocess``).
    """
    n, h, w = slices.shape
    if h > image_size or w > image_size:
        raise ValueError(f"slices of {h}×{w} do not fit the encoder's {image_size}×{image_size} input; resize first")
    mean = torch.tensor(PIXEL_MEAN, dtype=slices.dtype, device=slices.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=slices.dtype, device=slices.device).view(1, 3, 1, 1)
    x = (slices[:, None].expand(n, 3, h, w) - mean) / std
    return F.pad(x, (0, image_size - w, 0, image_size - h))


def encode_slices(encoder: SAMImageEncoder, slices: Tensor, batch_size: int = SLICE_BATCH, amp: bool = True) -> Tensor:
    """Encode grey slices in batches: ``(N, H, W)`` in ``[0, 255]`` -> ``(N, 256, S/16, S/16)``.

    Runs on ``slices.device``. On CUDA with ``amp`` the encoder runs under bf16
    autocast (features returned in fp32); on CPU never, since bf16 matrix products
    are orders of magnitude slower than fp32 on CPUs without AMX.
    """
    use_amp = amp and slices.device.type == "cuda"
    feats = []
    for start in range(0, slices.shape[0], batch_size):
        x = to_encoder_input(slices[start : start + batch_size].float(), encoder.image_size)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            feats.append(encoder(x).float())
    return torch.cat(feats) if feats else slices.new_zeros(0, encoder.out_channels, *([encoder.image_size // encoder.patch_size] * 2))


def count_parameters(module: nn.Module) -> int:
    """Total number of parameter elements, trainable or not."""
    return sum(p.numel() for p in module.parameters())


def encode_volume(encoder: SAMImageEncoder, volume: Tensor, batch_size: int = SLICE_BATCH) -> Tensor:
    """Slice, encode and stack (docs/method.md §1): ``(C, D, H, W)`` grey values -> ``F: (256·C, D, S/16, S/16)``.

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
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return _RANDOM + h.hexdigest()


@dataclass(frozen=True)
class EncoderInfo:
    """What identifies an encoder's features: name, input size, architecture, weights.

    Recorded in every cache and model file; two sets of features can be mixed only
    when their records agree (the path of the checkpoint aside).
    """

    name: str
    image_size: int
    checkpoint: str | None  # path as given, for the record
    checkpoint_sha256: str  # of the checkpoint file, or of the weights themselves when random
    spec: dict

    @classmethod
    def of(cls, encoder: SAMImageEncoder, checkpoint: str | Path | None) -> EncoderInfo:
        digest = file_sha256(Path(checkpoint)) if checkpoint else weights_sha256(encoder)
        return cls(encoder.name, encoder.image_size, str(checkpoint) if checkpoint else None, digest, to_dict(encoder.spec))

    @classmethod
    def from_dict(cls, d: dict) -> EncoderInfo:
        return cls(d["name"], int(d["image_size"]), d.get("checkpoint"), d["checkpoint_sha256"], dict(d.get("spec", {})))

    def to_dict(self) -> dict:
        return to_dict(self)

    @property
    def random(self) -> bool:
        """True for an encoder with random (seeded) weights, no checkpoint file."""
        return self.checkpoint_sha256.startswith(_RANDOM)

    def rebuild(self, checkpoint: str | Path | None = None, source: str = "the model") -> SAMImageEncoder:
        """Build this encoder again and check it is the same one (``source`` names the file in messages).

        ``checkpoint`` overrides the recorded path (the file must have the recorded hash).

        Raises:
            UserError: a custom encoder; a checkpoint given for a random encoder; the
                checkpoint missing or another file; a random encoder that cannot be
                rebuilt bit for bit.
        """
        if self.name not in ENCODERS:
            raise UserError(f"{source} was made with a custom encoder ({self.name}); use the Python API")
        if self.random:
            if checkpoint is not None:
                raise UserError(f"{source} was trained with a random encoder; --checkpoint would give other features")
            encoder = build_encoder(self.name, self.image_size)
            if weights_sha256(encoder) != self.checkpoint_sha256:
                raise UserError(f"cannot rebuild the random encoder {source} was trained with (different torch version?)")
            return encoder
        path = Path(checkpoint) if checkpoint else Path(self.checkpoint or "")
        if not path.is_file():
            raise UserError(f"{source} was trained on features of {self.checkpoint}; pass that SAM checkpoint with --checkpoint")
        if file_sha256(path) != self.checkpoint_sha256:
            raise UserError(f"{path} is not the checkpoint {source} was trained with (sha256 differs)")
        return build_encoder(self.name, self.image_size, path)
