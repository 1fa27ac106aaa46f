"""The frozen SAM encoder applied slice by slice (docs/method.md §1).

Implements steps 1–3 of the method: slices ``I_i`` (grey value repeated to three
channels), ``f_i = Enc(I_i)`` with a frozen image encoder, and the stack ``F = [f_i]``
(:func:`encode_volume`). :class:`Encoder` is what the pipeline asks of an encoder module;
which encoders exist and how they are built is :mod:`~sam3dseg.model.registry`.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    encoder's ``precision`` (:func:`~sam3dseg.model.registry.set_precision`): a ``bf16`` encoder under bf16 autocast on
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
