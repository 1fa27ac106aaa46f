"""Training the decoder on cached features: set-up, resume, epochs, validation, model files; DDP.

Each epoch draws its batches from a generator seeded by ``(seed, epoch)``, and
``RUN/last.pt`` is written (atomically) after every epoch with the decoder,
optimiser and schedule states. A run killed at any point restarts from the last
finished epoch and, replaying that epoch's draws, reaches the same weights as a
run that was never stopped.

Validation decodes each held-out case with the same window decoder as
``sam3dseg predict`` (:class:`~sam3dseg.pipeline.windows.WindowDecoder`, default
window and overlap) and scores it on the model grid; the best mean foreground
Dice picks ``best.pt``.

Data parallel: under ``torchrun`` (``WORLD_SIZE > 1``) every rank draws the same
global batch and computes its share; DistributedDataParallel averages gradients,
which equals the one-process gradient because the loss is a per-sample mean.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ...common.files import write_csv, write_text
from ...common.plots import save_curves
from ...common.runtime import Log, barrier, init_distributed, print_line, resolve_device
from ...common.settings import changed_settings, describe_changes, dump_yaml, to_dict
from ...errors import UserError, summarise
from ...model.decoder import SAM3DDecoder
from ...model.losses import DeepSupervisionLoss, build_loss
from ...model.registry import EncoderInfo
from ..caching.manifest import CacheManifest
from ..config import PredictConfig, RunConfig, TrainConfig, resolve_crop_tokens, resolve_grid_stride
from ..metrics import class_means, dice_per_class, drop_ignored, mean_finite
from ..model_file import ModelFile, build_decoder, load_model_file
from ..postprocessing.postprocess import VALIDATION, decide, load_validation, prune_validation, record_decision, save_validation
from ..windows import WindowDecoder
from .folds import SPLITS_FILE, select_cases
from .samples import Batch, CaseStore, Sampling, epoch_seed, sample_batch


@torch.no_grad()
def validate(
    decoder: SAM3DDecoder, store: CaseStore, names: list[str], window: int, num_classes: int, device: torch.device, ignore: int | None = None
) -> dict:
    """Mean foreground Dice per class over the validation cases, decoded as ``predict`` decodes.

    Scored on the model grid, the encoder's square padding excluded, and the voxels of the
    ``ignore`` label (nnU-Net's) left out of prediction and reference alike. Returns
    ``{"dice_per_class": [K-1 values], "dice": their mean, "predictions": {name: (prediction,
    reference)}}`` (Dice NaN where a class is absent from every case; uint8 labels).
    """
    decoder.eval()
    windows = WindowDecoder(decoder, window, PredictConfig().overlap)
    per_case, predictions = [], {}
    for name in names:
        case = store[name]
        label = case["label"].numpy()
        image = case["image"].to(device) if decoder.image_channels else None
        pred = windows.labels(case["features"].to(device), label.shape[1:], image).cpu().numpy().astype(np.uint8)
        if ignore is not None:
            pred, label = drop_ignored(pred, label, ignore)
        per_case.append(dice_per_class(pred, label, num_classes))
        predictions[name] = (pred, label)
    decoder.train()
    per_class = class_means(per_case, num_classes)
    return {"dice_per_class": per_class, "dice": mean_finite(per_class), "predictions": predictions}


def _poly(total_steps: int, power: float):
    return lambda step: (1 - min(step, total_steps) / total_steps) ** power


def _make_optimizer(params, config: RunConfig) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=True, weight_decay=t.weight_decay)


@dataclass
class _Data:
    """The cache as training sees it."""

    manifest: CacheManifest
    store: CaseStore
    train_names: list[str]
    val_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.manifest.class_names)

    image: bool  # the decoder's image path reads the cached images
    views: int  # augmented views the cache holds per labelled case
    folds: int | None  # folds in the cache's splits_final.json when train.fold names one

    @property
    def ignore(self) -> int | None:
        """nnU-Net's ignore label in the cached labels (one past the classes), or None."""
        return self.manifest.ignore_label

    @property
    def encoder(self) -> EncoderInfo:
        return self.manifest.encoder

    @property
    def image_size(self) -> int:
        return self.manifest.encoder.image_size

    @classmethod
    def open(cls, cache: Path, t: TrainConfig, image: bool) -> _Data:
        manifest = CacheManifest.read(cache)
        train_names, val_names, folds = select_cases(cache, manifest.cases, t.fold, t.num_folds, t.val_fraction)
        if not train_names:
            raise UserError(f"cache {cache} has no training cases")
        store = CaseStore(cache, ignore=manifest.ignore_label)
        for name in train_names + val_names:
            if "label" not in store[name]:
                raise UserError(f"cached case {name} has no label; training needs labelled cases")
            if image and "image" not in store[name]:
                raise UserError(
                    f"cached case {name} has no image (cached by an older sam3dseg) and decoder.pixel_skip needs it: "
                    f"run `sam3dseg cache --dataset {manifest.dataset} --out {cache}` again (it adds the images "
                    "without encoding again), or train with decoder.pixel_skip=false"
                )
        return cls(manifest, store, train_names, val_names, image, manifest.views, folds)

    def model_file(self, config: RunConfig, decoder: SAM3DDecoder) -> ModelFile:
        m = self.manifest
        return ModelFile(
            config=config,
            class_names=m.class_names,
            channel_names=m.channel_names,
            preprocess=m.preprocess,
            encoder=m.encoder,
            feature_channels=m.feature_channels,
            decoder=decoder.state_dict(),
            split={"train": list(self.train_names), "val": list(self.val_names)},
            fingerprint=m.fingerprint,
        )


def _log_columns(classes: list[str]) -> list[str]:
    return ["epoch", "train_loss", "val_dice", *[f"val_dice_{c}" for c in classes], "lr", "seconds"]


def _log_rows(history: list[dict], classes: list[str]) -> list[dict]:
    """History entries with the per-class validation Dice as columns ``val_dice_{class}``."""
    return [{**h, **dict(zip([f"val_dice_{c}" for c in classes], h.get("val_dice_per_class") or []))} for h in history]


def _dice_text(entry: dict, classes: list[str]) -> str:
    """``, val Dice 0.61 (liver 0.93, kidney 0.00 NOT FOUND, ...)``, or '' for an epoch without validation.

    A class no validation case contains is "absent"; a class present but never
    predicted scores 0 and is called out, so it shows during training.
    """
    if entry["val_dice"] is None:
        return ""
    parts = []
    for name, value in zip(classes, entry["val_dice_per_class"]):
        parts.append(f"{name} absent" if math.isnan(value) else f"{name} {value:.3f}" + (" NOT FOUND" if value == 0 else ""))
    return f", val Dice {entry['val_dice']:.4f} ({', '.join(parts)})"


def _resume(record: ModelFile, path: Path, decoder, optimizer, scheduler, say: Log) -> bool:
    """Load ``path`` (``last.pt``) into the training state if it exists; True if it did.

    The configuration must be the run's own, but for ``train.epochs``: a run given more epochs
    continues from its last weights, the poly schedule recomputed for the new total.
    """
    if not path.exists():
        return False
    state = load_model_file(path)
    differ = changed_settings(to_dict(state.config), to_dict(record.config))
    before, now = differ.get("train.epochs", (0, 0))
    if set(differ) == {"train.epochs"} and now > before:
        say(f"continuing {path.parent} from epoch {state.epoch} to {now} (it was trained for {before}): "
            f"the learning-rate schedule is recomputed for {now} epochs")  # fmt: skip
    elif differ:
        raise UserError(
            f"{path.parent} holds a run with another configuration ({describe_changes(differ)}); "
            "use a new --out, or the run's own settings (its config.yaml) to resume it (more train.epochs continue it)"
        )
    decoder.load_state_dict(state.decoder)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    record.history, record.best_dice, record.epoch = state.history, state.best_dice, state.epoch
    return True


def _initial_weights(path: str, record: ModelFile, decoder: SAM3DDecoder) -> None:
    """Load ``train.init_from``'s decoder weights, which must exist and fit: same classes, channels and decoder shape."""
    if not Path(path).is_file():
        raise UserError(f"train.init_from={path}: no such model file; give a run's best.pt or last.pt, or null")
    source = load_model_file(path)
    for what, theirs, ours in (
        ("classes", source.class_names, record.class_names),
        ("image channels", source.channel_names, record.channel_names),
        ("feature channels", source.feature_channels, record.feature_channels),
    ):
        if theirs != ours:
            raise UserError(f"train.init_from={path} has {what} {theirs}; this cache has {ours}: a model to start from must match")
    try:
        decoder.load_state_dict(source.decoder)
    except RuntimeError as err:
        raise UserError(f"train.init_from={path} has another decoder shape (decoder settings differ): {summarise(err)}") from None


@dataclass
class _Stepper:
    """One optimiser step: forward (bf16 autocast on CUDA only), deep-supervised loss, backward, clip, update."""

    decoder: SAM3DDecoder
    model: torch.nn.Module  # the decoder, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: DeepSupervisionLoss
    device: torch.device
    config: TrainConfig
    world: int

    def step(self, batch: Batch) -> float:
        """Train on ``batch``; the loss averaged over the processes."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.amp and self.device.type == "cuda"):
            images = () if batch.images is None else (batch.images.to(self.device),)
            outputs = self.model(batch.features.to(self.device), *images)
        loss = self.loss_fn([o.float() for o in outputs], batch.labels.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        value = loss.detach()
        if self.world > 1:
            dist.all_reduce(value)
            value /= self.world
        return value.item()


def _train_epoch(stepper: _Stepper, data: _Data, epoch: int, part: slice, show: bool) -> float:
    """The epoch's steps on batches drawn from a generator seeded by ``(seed, epoch)``; the mean loss."""
    from tqdm import tqdm

    t = stepper.config
    spec = Sampling(t.batch_size, t.crop_depth, data.image_size, t.flip_depth, t.foreground_fraction, data.image, t.crop_tokens, t.augmented_copies)
    generator = torch.Generator().manual_seed(epoch_seed(t.seed, epoch))
    losses = []
    bar = tqdm(range(t.steps_per_epoch), desc=f"epoch {epoch + 1}/{t.epochs}", disable=not show, leave=False)
    # One thread reads the next batch from disk while this one computes; it alone uses the
    # generator and the store, in order, so the draws are those of a plain loop.
    with ThreadPoolExecutor(max_workers=1) as reader:
        draw = partial(sample_batch, data.store, data.train_names, spec, generator, part)
        upcoming = reader.submit(draw)
        for step in bar:
            batch = upcoming.result()
            if step + 1 < t.steps_per_epoch:
                upcoming = reader.submit(draw)
            losses.append(stepper.step(batch))
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    return sum(losses) / len(losses)


@dataclass
class _Run:
    """A training run in progress: what every step of :func:`train` reads and updates."""

    out: Path
    config: RunConfig  # resolved on the cache (crops, views, folds)
    data: _Data
    rank: int
    stepper: _Stepper  # the decoder, its optimiser and schedule, the device, the processes
    record: ModelFile  # what last.pt / best.pt hold

    @property
    def t(self) -> TrainConfig:
        return self.config.train


def run_train(
    cache: str | Path,
    out: str | Path,
    config: RunConfig,
    progress: bool = True,
    log: Log | None = print_line,
) -> dict:
    """Train a decoder on a cache; write ``out/{config.yaml,last.pt,best.pt,log.csv,curves.png}``.

    Resumes from ``out/last.pt`` when it exists (same configuration required).
    ``progress`` shows the step bars; ``log`` takes the facts (resuming, one line per
    epoch), ``None`` for silence. Returns the run summary. The steps are numbered below.
    """
    rank, world = init_distributed()
    say = log if log is not None and rank == 0 else (lambda _: None)
    config, data = _check(Path(cache), config, world, say)  # 1. the run against its cache and processes
    run = _build(Path(out), config, data, rank, world)  # 2. decoder, optimiser, schedule, loss, record
    _start(run, say)  # 3. resume, or start from train.init_from; config.yaml
    for epoch in range(run.record.epoch, run.t.epochs):
        entry, predictions = _epoch(run, epoch, progress)  # 4. train one epoch, validate
        _save(run, entry, predictions, say)  # 5. model files, log.csv, curves.png
    _decide_postprocessing(run, say)  # 6. on the best epoch's validation predictions
    if world > 1:
        barrier()
    return {"history": run.record.history, "best_dice": run.record.best_dice, "train_cases": data.train_names,
            "val_cases": data.val_names, "out": str(out)}  # fmt: skip


def _check(cache: Path, config: RunConfig, world: int, say: Log) -> tuple[RunConfig, _Data]:
    """The run against its environment, before any work: the batch against the processes, the cache's
    cases, crops against its token grid, views against what it holds. ``auto`` crops, ``null`` views and
    an existing splits file's fold count are resolved here, so config.yaml and the model files record the
    numbers used."""
    t = config.train
    if t.batch_size % world:
        raise UserError(f"train.batch_size={t.batch_size} must be divisible by the {world} processes")
    data = _Data.open(cache, t, config.decoder.pixel_skip)
    grid = data.encoder.grid
    if data.folds is not None and data.folds != t.num_folds:
        say(f"using the {data.folds} folds of {cache / SPLITS_FILE} (train.num_folds={t.num_folds} shapes only a file made on first use)")
    t = replace(t, crop_tokens=resolve_crop_tokens(t.crop_tokens, grid), augmented_copies=data.views if t.augmented_copies is None else t.augmented_copies,
                num_folds=data.folds or t.num_folds)  # fmt: skip
    decoder = replace(config.decoder, grid_stride=resolve_grid_stride(config.decoder.grid_stride, data.encoder.stride))
    if t.crop_tokens is not None and t.crop_tokens > grid:
        raise UserError(
            f"train.crop_tokens={t.crop_tokens} is larger than the cache's token grid of {grid} × {grid} "
            f"(image size {data.image_size}); give 1..{grid}, or null for whole planes"
        )
    pool = decoder.grid_stride // data.encoder.stride
    if grid % pool or (t.crop_tokens or grid) % pool:
        raise UserError(
            f"decoder.grid_stride={decoder.grid_stride} pools the encoder's {grid} × {grid} token grid by {pool}: "
            f"the grid and train.crop_tokens={t.crop_tokens} must be divisible by {pool} (image size a multiple of "
            f"{pool * data.encoder.stride}); give other crops or decoder.grid_stride={data.encoder.stride}"
        )
    if t.augmented_copies > data.views:
        raise UserError(
            f"train.augmented_copies={t.augmented_copies} but cache {cache} holds {data.views} augmented copies per case: give 0..{data.views}, "
            f"or run `sam3dseg cache --augmented-copies {t.augmented_copies}` with the cache's settings first"
        )
    return replace(config, train=t, decoder=decoder), data


def _build(out: Path, config: RunConfig, data: _Data, rank: int, world: int) -> _Run:
    """The decoder (seeded by ``train.seed``), its optimiser, poly schedule and loss, and the record to save."""
    t = config.train
    device = resolve_device(t.device, world)
    channels = (data.manifest.feature_channels, len(data.manifest.channel_names))
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's global generator left as it was
        torch.manual_seed(t.seed)
        decoder = build_decoder(config.decoder, data.num_classes, *channels, data.encoder.stride).to(device)
    model = torch.nn.parallel.DistributedDataParallel(decoder) if world > 1 else decoder
    optimizer = _make_optimizer(decoder.parameters(), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _poly(t.epochs * t.steps_per_epoch, t.poly_power))
    stepper = _Stepper(decoder, model, optimizer, scheduler, build_loss(config.loss, data.ignore is not None), device, t, world)
    return _Run(out, config, data, rank, stepper, data.model_file(config, decoder))


def _start(run: _Run, say: Log) -> None:
    """Resume from ``out/last.pt`` (same configuration), or load ``train.init_from``'s weights; write config.yaml."""
    s = run.stepper
    if _resume(run.record, run.out / "last.pt", s.decoder, s.optimizer, s.scheduler, say):
        say(f"resuming {run.out} after epoch {run.record.epoch} of {run.t.epochs}")
        best = run.out / "best.pt"
        if run.data.val_names and best.is_file():  # killed after best.pt, before last.pt: its epoch is the best so far
            run.record.best_dice = max(run.record.best_dice, load_model_file(best).best_dice)
    elif run.t.init_from is not None:
        _initial_weights(run.t.init_from, run.record, s.decoder)
        say(f"starting from the decoder weights of {run.t.init_from}")
    if run.rank == 0:
        write_text(run.out / "config.yaml", dump_yaml(run.config))
    s.decoder.train()


def _epoch(run: _Run, epoch: int, progress: bool) -> tuple[dict, dict | None]:
    """One epoch's steps, then validation when it is due: the history entry, and the validation
    predictions when this epoch is the best so far (else None)."""
    t, data, record, s = run.t, run.data, run.record, run.stepper
    part = slice(run.rank * (t.batch_size // s.world), (run.rank + 1) * (t.batch_size // s.world))
    start = time.perf_counter()
    loss = _train_epoch(s, data, epoch, part, progress and run.rank == 0)
    entry = {"epoch": epoch + 1, "train_loss": loss, "lr": s.scheduler.get_last_lr()[0], "val_dice": None,
             "train_seconds": time.perf_counter() - start}  # fmt: skip
    result = None
    if data.val_names and ((epoch + 1) % t.val_interval == 0 or epoch + 1 == t.epochs):
        result = validate(s.decoder, data.store, data.val_names, t.crop_depth, data.num_classes, s.device, data.ignore)
        entry["val_dice"], entry["val_dice_per_class"] = result["dice"], result["dice_per_class"]
    entry["seconds"] = time.perf_counter() - start
    record.history.append(entry)
    if not (entry["val_dice"] is not None and entry["val_dice"] > record.best_dice):
        return entry, None
    record.best_dice = entry["val_dice"]
    return entry, result["predictions"]


def _save(run: _Run, entry: dict, predictions: dict | None, say: Log) -> None:
    """After an epoch (on rank 0): last.pt, best.pt when it improved (or without validation cases), the best
    epoch's validation predictions, log.csv and curves.png; one line on the epoch."""
    if run.rank != 0:
        return
    record, s = run.record, run.stepper
    record.epoch, record.decoder = entry["epoch"], s.decoder.state_dict()
    record.optimizer, record.scheduler = s.optimizer.state_dict(), s.scheduler.state_dict()
    # In this order, so that a kill between any two writes leaves the three consistent: the new best epoch's
    # validation predictions in their own folder (the last best's stay whole), then best.pt naming that epoch,
    # then last.pt carrying its Dice, then the older folders dropped. A kill before last.pt resumes from the
    # epoch before, whose best Dice _start takes from best.pt.
    if predictions is not None:  # the best epoch's predictions, for deciding the post-processing
        save_validation(run.out, predictions, record.epoch)
    if predictions is not None or not run.data.val_names:
        record.save(run.out / "best.pt")
    record.save(run.out / "last.pt")
    if predictions is not None:
        prune_validation(run.out, record.epoch)
    classes = record.class_names[1:]
    write_csv(run.out / "log.csv", _log_rows(record.history, classes), _log_columns(classes))
    save_curves(record.history, run.out / "curves.png", classes)
    say(f"epoch {entry['epoch']}/{run.t.epochs}: loss {entry['train_loss']:.4f}{_dice_text(entry, classes)} ({entry['seconds']:.1f} s)")


def _decide_postprocessing(run: _Run, say: Log) -> None:
    """Keep the largest connected component where it helps, decided on the best epoch's validation predictions
    (:mod:`~sam3dseg.pipeline.postprocessing.postprocess`), recorded in the model files."""
    if run.rank == 0 and run.data.val_names and (run.out / VALIDATION).is_dir():
        say("post-processing, decided on the validation cases (keep the largest connected component where it helps):")
        record_decision(run.out, decide(load_validation(run.out), run.record.class_names, lambda line: say("  " + line)))
