"""One window decoder: a whole volume's features decoded in overlapping depth windows, blended.

Used by ``sam3dseg predict`` and by validation during training, so the validation
Dice that picks ``best.pt`` measures the inference users get. The decoder runs
over windows of ``window`` slices (a volume no deeper than a window is decoded
whole, unpadded: the decoder is fully convolutional); consecutive windows share
``overlap`` of their slices, and each slice's finest-level softmax is the
Gaussian-weighted mean over the windows that cover it (nnU-Net's importance
weighting, along depth only). Slices are yielded in order as soon as no later
window reaches them, so only the windows in flight are held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn


def gaussian_weights(window: int) -> Tensor:
    """Importance of each slice of a window, ``(window,)``: a Gaussian, σ = window/8, peak 1.

    Centre slices see the most context; the tails are clamped at 1e-3 so a border
    slice covered by one window only still gets its prediction.
    """
    centre, sigma = (window - 1) / 2, window / 8
    w = torch.exp(-((torch.arange(window) - centre) ** 2) / (2 * sigma**2))
    return (w / w.max()).clamp_min(1e-3)


def window_starts(depth: int, window: int, overlap: float) -> list[int]:
    """Start slices of windows covering ``0..depth-1``; the last one ends at the last slice."""
    if depth <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    starts = list(range(0, depth - window + 1, step))
    if starts[-1] != depth - window:
        starts.append(depth - window)
    return starts


class WindowDecoder:
    """A decoder applied over blended depth windows (module docstring)."""

    def __init__(self, decoder: nn.Module, window: int, overlap: float = 0.5, flip_tta: bool = False) -> None:
        """
        Args:
            decoder: returns the level outputs ``[(B, K, d, ·, ·), ...]``, finest last.
            window: slices per decoder pass (>= 1).
            overlap: share of a window overlapping the next, in ``[0, 1)``.
            flip_tta: also decode each window flipped along depth and average.
        """
        self.decoder, self.window, self.overlap, self.flip_tta = decoder, window, overlap, flip_tta
        self.weights = gaussian_weights(window)

    @torch.no_grad()
    def window_probs(self, features: Tensor, start: int, image: Tensor | None = None) -> Tensor:
        """Softmax of the finest output for slices ``start .. start+window`` -> ``(K, n, S, S)``.

        ``image``: the ``(C, D, S/2, S/2)`` image of a decoder with the image path, else None.
        """
        inputs = [v[:, start : start + self.window][None] for v in (features, image) if v is not None]
        probs = self._probs(inputs)
        if self.flip_tta:
            probs = (probs + self._probs([v.flip(2) for v in inputs]).flip(1)) / 2
        return probs

    def _probs(self, inputs: list[Tensor]) -> Tensor:
        return torch.softmax(self.decoder(inputs[0].float(), *inputs[1:])[-1][0].float(), dim=0)

    @torch.no_grad()
    def slices(self, features: Tensor, valid_hw: tuple[int, int], image: Tensor | None = None) -> Iterator[Tensor]:
        """Class probabilities of each model-grid slice, in order: ``(C_f, D, g, g)`` -> ``(K, h, w)`` × D.

        ``valid_hw`` crops away the encoder's square padding (bottom/right); ``image``
        as in :meth:`window_probs`.
        """
        depth = features.shape[1]
        h, w = valid_hw
        starts = window_starts(depth, self.window, self.overlap)
        acc: dict[int, Tensor] = {}
        weight: dict[int, float] = {}
        done = 0
        for i, start in enumerate(starts):
            probs = self.window_probs(features, start, image)[:, :, :h, :w]
            for j in range(probs.shape[1]):
                z, g = start + j, float(self.weights[j])
                acc[z] = acc[z] + g * probs[:, j] if z in acc else g * probs[:, j]
                weight[z] = weight.get(z, 0.0) + g
            final = starts[i + 1] if i + 1 < len(starts) else depth  # no later window reaches below this
            for z in range(done, final):
                yield acc.pop(z) / weight.pop(z)
            done = final

    @torch.no_grad()
    def labels(self, features: Tensor, valid_hw: tuple[int, int], image: Tensor | None = None) -> Tensor:
        """The argmax of :meth:`slices` on the model grid: ``(D, h, w)`` int64 on the features' device."""
        return torch.stack([p.argmax(0) for p in self.slices(features, valid_hw, image)])
