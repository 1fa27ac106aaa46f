"""Checkpoints of the SAM family: read by path, reshaped to our modules' layout, checked key by key.

A file is read with ``weights_only=True`` (:func:`read_state_dict`), narrowed to the image encoder
(:func:`encoder_state_dict`), passed through its family's filter (:func:`vit_state` resamples SAM's
size-dependent tensors, :func:`tinyvit_state` folds TinyViT's BatchNorm) and loaded strictly
(:func:`load_state`): a file that does not fit raises ``CheckpointError`` naming the keys. Which
registry entry uses which filter, and the guess of the right ``--encoder`` in that message, belong to
:mod:`~sam3dseg.model.registry`.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from ..common.files import load_tensors
from ..errors import CheckpointError
from .tinyvit import TinyViTSpec, fuse_batchnorm
from .vit import SAMImageEncoder


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


def vit_state(state: dict[str, Tensor], encoder: nn.Module) -> dict[str, Tensor]:
    """SAM's layout (``image_encoder.*`` in a whole-model dict, or encoder-only) to ours, resized to the encoder's size."""
    return adapt_state_dict(encoder_state_dict(state), encoder)


def tinyvit_state(state: dict[str, Tensor], encoder: nn.Module) -> dict[str, Tensor]:
    """MobileSAM's / LiteMedSAM's layout to ours: the ``image_encoder.`` prefix dropped, the unused
    classifier (``norm_head``, ``head``, in ``mobile_sam.pt``) and BatchNorm counters left out,
    BatchNorm folded into the convolutions (:func:`~sam3dseg.model.tinyvit.fuse_batchnorm`).

    The attention-bias tables depend only on the window, so the same file loads at any size.
    """
    state = encoder_state_dict(state)
    unused = ("norm_head.", "head.")
    state = {k: v for k, v in state.items() if not k.startswith(unused) and not k.endswith("num_batches_tracked")}
    return fuse_batchnorm(state)


def load_state(encoder: nn.Module, state: dict[str, Tensor], path: str | Path, hint: str = "") -> None:
    """Load ``state`` (already in ``encoder``'s layout) strictly; ``path`` names the file in messages.

    Missing or unexpected keys, or shapes that do not fit, raise ``CheckpointError`` naming them,
    the architecture expected, and ``hint`` (which ``--encoder`` the file is for, where that can be told).
    """
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
            f"{path} does not fit the {encoder.name} encoder ({_architecture(encoder.spec)}): {'; '.join(parts)}.{hint}"
        )
    encoder.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()})


def _architecture(spec: object) -> str:
    if isinstance(spec, TinyViTSpec):
        return f"TinyViT, embed dims {list(spec.embed_dims)}, stride {spec.stride}"
    return f"ViT, embed_dim {spec.embed_dim}, depth {spec.depth}"


def _few(keys: list[str], n: int = 4) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
