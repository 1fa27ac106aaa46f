"""Training the decoder on cached features: loop, validation, checkpoints, resume, DDP.

Each epoch draws its batches from a generator seeded by ``(seed, epoch)``, and
``RUN/last.pt`` is written (atomically) after every epoch with the decoder,
optimiser and schedule states. A run killed at any point restarts from the last
finished epoch and, replaying that epoch's draws, reaches the same weights as a
run that was never stopped.

Data parallel: under ``torchrun`` (``WORLD_SIZE > 1``) every rank draws the same
global batch and computes its share; DistributedDataParallel averages gradients,
which equals the one-process gradient because the loss is a per-sample mean.
"""

from __future__ import annotations

import csv
import math
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .cache import read_manifest, save_tensors
from .config import RunConfig, dump_yaml, from_dict, to_dict
from .data import CaseStore, crop_depth, sample_batch
from .decoder import SAM3DDecoder
from .errors import UserError
from .io import atomic_output, load_tensors
from .losses import DeepSupervisionLoss
from .metrics import dice

MODEL_FORMAT = "sam3dseg-model"
MODEL_VERSION = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA GPU is available")
    return torch.device(name)


def split_cases(names: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Training and validation names: the last ``ceil(fraction·N)`` (sorted) are held out."""
    names = sorted(names)
    n_val = math.ceil(val_fraction * len(names)) if len(names) > 1 else 0
    n_val = min(n_val, len(names) - 1)
    return names[: len(names) - n_val], names[len(names) - n_val :]


def build_decoder(config: RunConfig, num_classes: int, in_channels: int) -> SAM3DDecoder:
    d = config.decoder
    return SAM3DDecoder(num_classes, in_channels, d.channels, d.shortcut_kernel, d.activation, d.upsample)


def dice_per_class(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> list[float]:
    """Foreground Dice per class 1..K-1 of two label volumes; NaN where both are empty."""
    pred, label = pred.cpu().numpy(), label.cpu().numpy()
    return [dice(pred == k, label == k) for k in range(1, num_classes)]


@torch.no_grad()
def predict_cached(decoder: SAM3DDecoder, features: torch.Tensor, depth: int, device: torch.device) -> torch.Tensor:
    """Argmax of the finest output over a whole cached volume, in non-overlapping depth windows.

    ``features (C, D, g, g)`` -> labels ``(D, S, S)`` on the padded model grid.
    """
    total = features.shape[1]
    out = []
    for start in range(0, total, depth):
        f, _ = crop_depth(features, torch.zeros(total, 1, 1), start, depth)
        logits = decoder(f[None].float().to(device))[-1][0]
        out.append(logits.argmax(0)[: min(depth, total - start)].cpu())
    return torch.cat(out)


def validate(decoder, store: CaseStore, names: list[str], config: RunConfig, image_size: int, num_classes: int, device) -> dict:
    """Mean foreground Dice per class over the validation cases (model grid, padding excluded)."""
    decoder.eval()
    per_case = []
    for name in names:
        case = store[name]
        pred = predict_cached(decoder, case["features"], config.train.crop_depth, device)
        h, w = case["label"].shape[1:]
        per_case.append(dice_per_class(pred[:, :h, :w], case["label"].long(), num_classes))
    decoder.train()
    per_class = []
    for k in range(num_classes - 1):
        vals = [c[k] for c in per_case if not math.isnan(c[k])]
        per_class.append(sum(vals) / len(vals) if vals else float("nan"))
    valid = [v for v in per_class if not math.isnan(v)]
    return {"dice_per_class": per_class, "dice": sum(valid) / len(valid) if valid else float("nan")}


def _poly(total_steps: int, power: float):
    return lambda step: (1 - min(step, total_steps) / total_steps) ** power


def _make_optimizer(params, config: RunConfig) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=True, weight_decay=t.weight_decay)
    raise UserError(f"train.optimizer must be adamw or sgd, got {t.optimizer!r}")


def init_distributed() -> tuple[int, int]:
    """``(rank, world size)``; joins the process group when started by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # generous: ranks wait at barriers while others encode or validate on a CPU
        dist.init_process_group(backend, timeout=timedelta(hours=6))
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _save_plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(epochs, [h["train_loss"] for h in history], marker=".")
    ax[0].set(xlabel="epoch", ylabel="training loss (deep supervision)", title="loss")
    val = [(h["epoch"], h["val_dice"]) for h in history if h.get("val_dice") is not None]
    if val:
        ax[1].plot(*zip(*val), marker=".", color="tab:green")
    ax[1].set(xlabel="epoch", ylabel="mean foreground Dice", title="validation Dice", ylim=(0, 1))
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _write_log(history: list[dict], path: Path) -> None:
    keys = ["epoch", "train_loss", "val_dice", "lr", "seconds"]
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def load_model_file(path: str | Path) -> dict:
    """A ``last.pt`` / ``best.pt`` written by :func:`train`, loaded ``weights_only``."""
    obj = load_tensors(path, "sam3dseg model file")
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise UserError(f"{path} is not a sam3dseg model file (no '{MODEL_FORMAT}' marker)")
    return obj


def train(cache: str | Path, out: str | Path, config: RunConfig, progress: bool = True, stop_after_steps: int | None = None) -> dict:
    """Train a decoder on a cache; write ``out/{config.yaml,last.pt,best.pt,log.csv,curves.png}``.

    Resumes from ``out/last.pt`` when it exists (same configuration required).
    ``stop_after_steps`` interrupts the run after that many optimiser steps in this
    call (for tests of resuming). Returns the run summary.
    """
    from tqdm import tqdm

    rank, world = init_distributed()
    cache, out = Path(cache), Path(out)
    manifest = read_manifest(cache)
    t = config.train
    if t.batch_size % world:
        raise UserError(f"train.batch_size={t.batch_size} must be divisible by the {world} processes")
    device = resolve_device(t.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    num_classes = len(manifest["class_names"])
    image_size = manifest["encoder"]["image_size"]
    train_names, val_names = split_cases(manifest["cases"], t.val_fraction)
    if not train_names:
        raise UserError(f"cache {cache} has no training cases")
    store = CaseStore(cache)
    for name in train_names + val_names:
        if "label" not in store[name]:
            raise UserError(f"cached case {name} has no label; training needs labelled cases")

    torch.manual_seed(t.seed)
    decoder = build_decoder(config, num_classes, manifest["feature_channels"]).to(device)
    model = torch.nn.parallel.DistributedDataParallel(decoder) if world > 1 else decoder
    optimizer = _make_optimizer(decoder.parameters(), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _poly(t.epochs * t.steps_per_epoch, t.poly_power))
    loss_fn = DeepSupervisionLoss(config.loss.weights, config.loss.target_mode)
    use_amp = t.amp and device.type == "cuda"

    history, best, start_epoch = [], -1.0, 0
    last = out / "last.pt"
    if last.exists():
        state = load_model_file(last)
        if state["config"] != to_dict(config):
            raise UserError(f"{out} holds a run with another configuration; use a new --out or the same config")
        decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best_dice"], state["epoch"]
        if rank == 0 and progress:
            print(f"resuming {out} after epoch {start_epoch}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")

    def record(epoch: int) -> dict:
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "epoch": epoch,
            "decoder": decoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "config": to_dict(config),
            "class_names": manifest["class_names"],
            "channel_names": manifest["channel_names"],
            "preprocess": manifest["preprocess"],
            "encoder": manifest["encoder"],
            "feature_channels": manifest["feature_channels"],
            "history": history,
            "best_dice": best,
        }

    part = slice(rank * (t.batch_size // world), (rank + 1) * (t.batch_size // world))
    steps_done = 0
    decoder.train()
    for epoch in range(start_epoch, t.epochs):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
        losses = []
        bar = tqdm(range(t.steps_per_epoch), desc=f"epoch {epoch + 1}/{t.epochs}", disable=not progress or rank != 0, leave=False)
        for _ in bar:
            if stop_after_steps is not None and steps_done >= stop_after_steps:
                raise KeyboardInterrupt(f"stopped after {steps_done} steps (test hook)")
            batch = sample_batch(store, train_names, t.batch_size, t.crop_depth, image_size, generator, t.flip_depth, part)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                outputs = model(batch.features.to(device))
            loss = loss_fn([o.float() for o in outputs], batch.labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            steps_done += 1
            value = loss.detach()
            if world > 1:
                dist.all_reduce(value)
                value /= world
            losses.append(value.item())
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        entry = {
            "epoch": epoch + 1,
            "train_loss": sum(losses) / len(losses),
            "lr": scheduler.get_last_lr()[0],
            "val_dice": None,
        }
        if val_names and ((epoch + 1) % t.val_interval == 0 or epoch + 1 == t.epochs):
            result = validate(decoder, store, val_names, config, image_size, num_classes, device)
            entry["val_dice"], entry["val_dice_per_class"] = result["dice"], result["dice_per_class"]
        entry["seconds"] = time.perf_counter() - start
        history.append(entry)
        improved = entry["val_dice"] is not None and entry["val_dice"] > best
        if improved:
            best = entry["val_dice"]
        if rank == 0:
            state = record(epoch + 1)
            save_tensors(state, last)
            if improved or not val_names:
                save_tensors(state, out / "best.pt")
            _write_log(history, out / "log.csv")
            _save_plot(history, out / "curves.png")
            if progress:
                dice = f", val Dice {entry['val_dice']:.4f}" if entry["val_dice"] is not None else ""
                print(f"epoch {epoch + 1}/{t.epochs}: loss {entry['train_loss']:.4f}{dice} ({entry['seconds']:.1f} s)", flush=True)
    if world > 1:
        dist.barrier()
    return {"history": history, "best_dice": best, "train_cases": train_names, "val_cases": val_names, "out": str(out)}


def config_from_model(state: dict) -> RunConfig:
    """The run configuration stored in a model file."""
    return from_dict(RunConfig, state["config"])


__all__ = ["train", "load_model_file", "build_decoder", "split_cases", "validate", "config_from_model"]
