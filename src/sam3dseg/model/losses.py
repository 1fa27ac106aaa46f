"""CE + Dice per level and the deep-supervision sum (method §5).

Per level (method §5.1), with ``Ŷ = softmax(logits)`` and one-hot (or soft) ``Y``::

    L_CE   = - Σ_{k,n} Y_kn ln Ŷ_kn
    L_Dice = 1 - 2 Σ_{k,n} Y_kn Ŷ_kn / ( Σ_{k,n} Y_kn² + Σ_{k,n} Ŷ_kn² )
    L(ℓ)   = L_CE + L_Dice

and the total (method §5.2) ``L_tot = Σ_ℓ α_ℓ L(ℓ)`` with ``(α4, α3, α2, α1) = (8, 4, 2, 1) / 15``.

Decisions where the method is silent (docs/method.md, "Decisions"):

- CE is *averaged* over voxels instead of summed: a sum grows with the crop and
  would drown the Dice term, which is a ratio in [0, 1]. The factor is a positive
  constant per crop size, so minimisers are unchanged.
- Dice is one ratio over classes and voxels jointly, background included, with the
  squared denominator, exactly as written. Because every voxel's target sums to 1
  over classes, ``Σ Y² ≥ N/K > 0``: the ratio is always defined, no smoothing term.
- Both terms are computed per sample and averaged over the batch, so a sample's
  loss does not depend on what else is in its batch (data-parallel training then
  averages the same quantity as one large batch).
- ``Y(ℓ)``, the label on level ℓ's coarser grid, is the one-hot label
  average-pooled in-plane (soft targets; the method's ``Y²`` and ``KL(Y‖Ŷ)`` allow
  them). Nearest-neighbour subsampling is the option.
- The joint Dice is dominated by the background on small structures (decision D9), so the
  default Dice term is :func:`per_class_dice_loss`, nnU-Net's soft Dice per class
  (``loss.dice=per_class``); the method's joint form, :func:`dice_loss`, is
  ``loss.dice=joint``. With ``batch_dice`` the per-class value depends on the whole
  batch, so a data-parallel run no longer equals one process exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.settings import check_settings, non_negative_number, one_of, refuse_unused, setting, switch

# α_ℓ for ℓ = 1..4 (coarse → fine), the decoder's output order; Σ α_ℓ = 1 (method §5.2).
DEEP_SUPERVISION_WEIGHTS: tuple[float, ...] = (1 / 15, 2 / 15, 4 / 15, 8 / 15)

TargetMode = Literal["average", "nearest"]
TARGET_MODES: tuple[TargetMode, ...] = ("average", "nearest")
DiceForm = Literal["joint", "per_class"]
DICE_FORMS: tuple[DiceForm, ...] = ("joint", "per_class")
DiceLoss = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """``L_CE = -Σ_k Y_kn ln Ŷ_kn``, averaged over voxels n and the batch.

    Args:
        logits: ``(B, K, *spatial)``.
        target: ``(B, K, *spatial)``, probabilities over K (one-hot or soft); zero where ignored.
        mask: ``(B, 1, *spatial)``, the share of each voxel that counts (nnU-Net's ignore label):
            the average is then over the voxels that count, per sample.
    """
    per_voxel = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
    if mask is None:
        return per_voxel.mean()
    return (per_voxel.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1e-8)).mean()


def dice_loss(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """``L_Dice = 1 - 2 Σ Y Ŷ / (Σ Y² + Σ Ŷ²)`` over classes and voxels jointly, per sample, batch mean.

    Args:
        logits: ``(B, K, *spatial)``.
        target: ``(B, K, *spatial)``, probabilities over K.
        mask: ``(B, 1, *spatial)`` share of each voxel that counts; the prediction is weighted by it.
    """
    probs = torch.softmax(logits, dim=1)
    probs = (probs if mask is None else probs * mask).flatten(1)
    target = target.flatten(1)
    overlap = (target * probs).sum(dim=1)
    energy = (target * target).sum(dim=1) + (probs * probs).sum(dim=1)
    return (1 - 2 * overlap / energy).mean()


def per_class_dice_loss(
    logits: Tensor, target: Tensor, include_background: bool = False, batch_dice: bool = False, smooth: float = 1e-5,
    mask: Tensor | None = None,
) -> Tensor:
    """``1 - mean_k (2 Σ_n Y_kn Ŷ_kn + s) / (Σ_n Y_kn + Σ_n Ŷ_kn + s)``: a soft Dice per class, averaged.

    nnU-Net's soft Dice (``MemoryEfficientSoftDiceLoss``; the original SAM3D trains with
    it), written as a loss in [0, 1]: each class counts alike whatever its size, so a
    small organ weighs as much as the liver (decision D9). The method's form is
    :func:`dice_loss`.

    Args:
        logits: ``(B, K, *spatial)``.
        target: ``(B, K, *spatial)``, probabilities over K.
        include_background: also score class 0.
        batch_dice: sum over the batch before the ratio (one Dice per class for the
            whole batch) instead of one per sample and class.
        smooth: ``s``, added to numerator and denominator (a class absent from both
            scores 1).
        mask: ``(B, 1, *spatial)`` share of each voxel that counts (nnU-Net multiplies the
            prediction by its ignore mask the same way).
    """
    probs = torch.softmax(logits, dim=1)
    if mask is not None:
        probs = probs * mask
    if not include_background:
        probs, target = probs[:, 1:], target[:, 1:]
    axes = tuple(range(2, probs.ndim))
    overlap, predicted, present = (probs * target).sum(axes), probs.sum(axes), target.sum(axes)  # (B, K') each
    if batch_dice:
        overlap, predicted, present = overlap.sum(0), predicted.sum(0), present.sum(0)
    return 1 - ((2 * overlap + smooth) / (present + predicted + smooth).clamp_min(1e-8)).mean()


def level_loss(logits: Tensor, target: Tensor, dice: DiceLoss = per_class_dice_loss, mask: Tensor | None = None) -> Tensor:
    """``L(ℓ) = L_CE + L_Dice`` (method §5.1) for one level: ``(B, K, …)`` each -> scalar.

    ``dice``: nnU-Net's per-class soft Dice by default (decision D9), or :func:`dice_loss`, the method's joint form;
    ``mask`` (``(B, 1, …)``) leaves ignored voxels out of both terms.
    """
    if mask is None:
        return cross_entropy(logits, target) + dice(logits, target)
    return cross_entropy(logits, target, mask) + dice(logits, target, mask=mask)


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """Integer labels ``(B, D, H, W)`` in ``[0, K)`` -> float one-hot ``(B, K, D, H, W)``."""
    if labels.dtype.is_floating_point:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), found values in [{lo}, {hi}]")
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


def level_target(target: Tensor, factor: int, mode: TargetMode = "average") -> Tensor:
    """Bring a full-resolution target ``(B, K, D, H, W)`` to a grid ``factor`` times coarser in-plane.

    ``average`` pools each ``factor × factor`` patch (soft targets); ``nearest`` keeps
    its top-left voxel, the same voxel nearest-neighbour resizing picks.
    """
    if factor == 1:
        return target
    if mode == "average":
        return F.avg_pool3d(target, kernel_size=(1, factor, factor))
    if mode == "nearest":
        return target[..., ::factor, ::factor]
    raise ValueError(f"target mode must be 'average' or 'nearest', got {mode!r}")


def deep_supervision_loss(
    logits: Sequence[Tensor],
    labels: Tensor,
    weights: Sequence[float] = DEEP_SUPERVISION_WEIGHTS,
    target_mode: TargetMode = "average",
    dice: DiceLoss = per_class_dice_loss,
    ignore: bool = False,
) -> Tensor:
    """``L_tot = Σ_ℓ α_ℓ L(ℓ)`` (method §5.2).

    Args:
        logits: the decoder's outputs in order ℓ = 1..L, each ``(B, K, D, H_ℓ, W_ℓ)``;
            the last is at the labels' resolution.
        labels: integer labels ``(B, D, H, W)`` in ``[0, K)``.
        weights: α_ℓ in the same order as ``logits``; default ``(1, 2, 4, 8) / 15``.
        target_mode: how ``Y(ℓ)`` is made from the labels (see :func:`level_target`).
        dice: the Dice term of every level: :func:`per_class_dice_loss` by default (decision D9),
            :func:`dice_loss` for the method's joint form.
        ignore: label value K (one past the classes) is nnU-Net's ignore label: those voxels
            count in neither term, at any level (a coarse voxel counts by its share of others).

    Returns:
        The scalar total loss.
    """
    if len(logits) != len(weights):
        raise ValueError(f"{len(logits)} outputs but {len(weights)} weights")
    b, k, d, h, w = logits[-1].shape
    if labels.shape != (b, d, h, w):
        raise ValueError(f"labels {tuple(labels.shape)} do not match the finest output grid {(b, d, h, w)}")
    target = one_hot(labels, k + ignore)
    total = logits[-1].new_zeros(())
    for level_logits, alpha in zip(logits, weights):
        lh, lw = level_logits.shape[-2:]
        factor = h // lh
        if level_logits.shape[:3] != (b, k, d) or (lh * factor, lw * factor) != (h, w):
            raise ValueError(f"output {tuple(level_logits.shape)} is not an in-plane subsampling of {(h, w)}")
        level = level_target(target, factor, target_mode)
        mask = 1 - level[:, k:] if ignore else None  # the share of each voxel not ignored
        total = total + alpha * level_loss(level_logits, level[:, :k], dice, mask)
    return total


class DeepSupervisionLoss(nn.Module):
    """The deep-supervision sum as a module: weights, target mode and Dice term held, per-level loss plain.

    ``loss(logits, labels)`` equals ``deep_supervision_loss(logits, labels, weights, target_mode, dice, ignore)``.
    """

    def __init__(
        self, weights: Sequence[float] = DEEP_SUPERVISION_WEIGHTS, target_mode: TargetMode = "average", dice: DiceLoss = per_class_dice_loss,
        ignore: bool = False,
    ) -> None:
        super().__init__()
        self.weights, self.target_mode, self.dice, self.ignore = tuple(weights), target_mode, dice, ignore

    def forward(self, logits: Sequence[Tensor], labels: Tensor) -> Tensor:
        return deep_supervision_loss(logits, labels, self.weights, self.target_mode, self.dice, self.ignore)


@dataclass
class LossConfig:
    """Deep-supervision weights α_ℓ (ℓ = 1..4, coarse → fine) and how level targets are made."""

    SECTION: ClassVar[str] = "loss"

    weights: tuple[float, ...] = setting(
        DEEP_SUPERVISION_WEIGHTS,
        "four numbers >= 0 with a positive sum",
        lambda v: len(v) == 4 and min(v) >= 0 and sum(v) > 0,
        "α_1..α_4, coarse to fine (the method: 1, 2, 4, 8 over 15)",
    )
    target_mode: str = one_of("average", TARGET_MODES, "Y(ℓ): one-hot label average-pooled or nearest-subsampled")
    # per_class by default, departing from the method's joint form (method §5.1, decision D9):
    # the joint Dice scores an all-background prediction as its voxel accuracy, and with it small
    # classes were never found (bench/recipes.py; docs/training.md).
    dice: str = one_of(
        "per_class", DICE_FORMS, "per_class: nnU-Net's soft Dice per class; joint: the method's Dice over classes and voxels (method §5.1)"
    )
    include_background: bool = switch(False, "per_class only: also score the background class")
    batch_dice: bool = switch(False, "per_class only: one Dice per class over the whole batch")
    smooth: float = non_negative_number(1e-5, "per_class only: added to the Dice numerator and denominator")

    def __post_init__(self) -> None:
        check_settings(self)
        refuse_unused(self, ("include_background", "batch_dice", "smooth"), self.dice == "per_class",
                      "with loss.dice=joint (it sets the per_class Dice)")  # fmt: skip


def build_loss(config: LossConfig, ignore: bool = False) -> DeepSupervisionLoss:
    """The deep-supervised loss a run configuration describes (method §5, decision D9); ``ignore``: the labels
    hold nnU-Net's ignore label (the value one past the classes), left out of the loss."""
    if config.dice == "joint":
        dice = dice_loss
    else:
        dice = partial(per_class_dice_loss, include_background=config.include_background, batch_dice=config.batch_dice, smooth=config.smooth)
    return DeepSupervisionLoss(config.weights, config.target_mode, dice, ignore)
