"""The whole pipeline as one module: slicing, frozen encoder, stacking, decoder (method §1–§2).

``I --slicing--> {I_i} --Enc--> F = [f_i] --decoder--> Ŷ(1..4)``
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .decoder import SAM3DDecoder, image_path_input
from .encoder import SLICE_BATCH, Encoder, encode_volume


class SAM3D(nn.Module):
    """A frozen SAM encoder run slice by slice and a trainable 3-D decoder.

    Only the decoder has trainable parameters; ``model.decoder.parameters()`` is what
    an optimiser takes.
    """

    def __init__(self, encoder: Encoder, decoder: SAM3DDecoder, slice_batch: int = SLICE_BATCH) -> None:
        """
        Args:
            encoder: from :func:`sam3dseg.build_encoder`.
            decoder: its ``in_channels`` must be ``256 ×`` the number of image channels.
            slice_batch: slices sent through the encoder at once.
        """
        super().__init__()
        self.encoder, self.decoder, self.slice_batch = encoder, decoder, slice_batch

    @torch.no_grad()
    def encode(self, volume: Tensor) -> Tensor:
        """Slice, encode and stack (method §1): ``(B, C, D, H, W) -> F: (B, 256·C, D, S/s, S/s)``, s the encoder's stride.

        ``volume`` holds grey values in ``[0, 255]`` with ``max(H, W) <= S`` (the
        encoder's ``image_size``); each slice is repeated to three channels,
        normalised as the encoder's checkpoint was trained and zero-padded to ``S × S`` (:func:`sam3dseg.model.encoder.to_encoder_input`).
        Each of the C image channels (MR sequences) is encoded on its own and the
        features are concatenated, as the original SAM3D does.
        """
        if volume.ndim != 5:
            raise ValueError(f"volume must be (B, C, D, H, W), got shape {tuple(volume.shape)}")
        return torch.stack([encode_volume(self.encoder, v, self.slice_batch) for v in volume])

    def forward(self, volume: Tensor) -> list[Tensor]:
        """``(B, C, D, H, W)`` in ``[0, 255]`` -> logits for ℓ = 1..4, ``(B, K, D, S·2^ℓ/16, S·2^ℓ/16)`` at stride 16
        (decision D12 for other strides; ``Ŷ(4)`` always at S).

        A decoder with the image path (decision D10) also reads the slices themselves,
        padded and pooled as the cache stores them (:func:`~sam3dseg.model.decoder.image_path_input`).
        """
        features = self.encode(volume)
        if features.shape[1] != self.decoder.in_channels:
            raise ValueError(
                f"{volume.shape[1]} image channel(s) give {features.shape[1]} feature channels, "
                f"but the decoder was built for {self.decoder.in_channels} "
                f"({self.decoder.in_channels // self.encoder.out_channels} channel(s))"
            )
        if self.decoder.image_channels:
            image = torch.stack([image_path_input(v, self.encoder.image_size) for v in volume]).to(features.device)
            return self.decoder(features, image)
        return self.decoder(features)
