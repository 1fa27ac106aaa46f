"""Pictures: matplotlib set up once (no screen needed), saved atomically; training curves; montages."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import atomic_output

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"]


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, chosen here once, on first use (not at import)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100, **savefig: object) -> Path:
    """Write a figure as PNG atomically, then close it (``savefig``: more options for ``Figure.savefig``)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, **savefig)
    pyplot().close(fig)
    return Path(path)


def save_curves(history: list[dict], path: str | Path, classes: list[str] = ()) -> Path:
    """Training loss and validation Dice per epoch, side by side (``RUN/curves.png``).

    The Dice panel shows the mean and, when ``classes`` are named, each foreground
    class (``val_dice_per_class``), so a class that is never found shows at 0.
    """
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(epochs, [h["train_loss"] for h in history], marker=".")
    ax[0].set(xlabel="epoch", ylabel="training loss (deep supervision)", title="loss")
    val = [(h["epoch"], h["val_dice"]) for h in history if h.get("val_dice") is not None]
    if val:
        ax[1].plot(*zip(*val), marker=".", color="black", label="mean")
        for k, name in enumerate(classes):
            per_class = [(h["epoch"], h["val_dice_per_class"][k]) for h in history if h.get("val_dice_per_class")]
            ax[1].plot(*zip(*per_class), marker=".", linewidth=1, color=COLOURS[k % len(COLOURS)], label=name)
        if classes:
            ax[1].legend(fontsize=7)
    ax[1].set(xlabel="epoch", ylabel="foreground Dice", title="validation Dice", ylim=(0, 1))
    fig.tight_layout()
    return save_figure(fig, path)


def pick_slices(labels: list[np.ndarray], count: int) -> list[int]:
    """Slice indices (axis 0): each class's largest slice in any of ``labels`` (so a small lesion is
    shown; more than ``count`` if there are more classes), then slices spread over the foreground."""
    depth = labels[0].shape[0]
    chosen = set()
    for k in sorted(set().union(*(np.unique(a).tolist() for a in labels)) - {0}):
        area = np.sum([(a == k).reshape(depth, -1).sum(1) for a in labels], axis=0)
        chosen.add(int(area.argmax()))
    busy = np.flatnonzero(np.any([(a > 0).reshape(depth, -1).any(1) for a in labels], axis=0))
    pool = busy if busy.size else np.arange(depth)
    for j in np.linspace(0, pool.size - 1, min(count, pool.size)):
        if len(chosen) >= count:
            break
        chosen.add(int(pool[round(j)]))
    return sorted(chosen)


def save_montage(
    path: str | Path,
    image: np.ndarray | None,
    pred: np.ndarray,
    ref: np.ndarray | None = None,
    class_names: list[str] | None = None,
    count: int = 6,
    title: str = "",
    aspect: float = 1.0,
    window: tuple[float, float] | None = None,
) -> Path:
    """Write ``count`` slices (along the array's first axis) as one PNG, atomically.

    Args:
        image: ``(z, y, x)`` grey image shown underneath (first channel), or None.
        window: grey values shown black and white; None: the image's 1st and 99th
            percentiles. Pass ``(0, 255)`` with an image in the model's intensities
            (:func:`sam3dseg.data.preprocess.model_intensities`) to show what the model saw.
        pred: ``(z, y, x)`` labels, drawn as solid contours.
        ref: ``(z, y, x)`` reference labels, drawn dashed.
        class_names: names by label value (legend).
        aspect: row spacing / column spacing, so anisotropic voxels look right.
    """
    from matplotlib.lines import Line2D

    plt = pyplot()

    path = Path(path)
    num_classes = int(max(pred.max(), ref.max() if ref is not None else 0)) + 1
    names = class_names or [f"class {k}" for k in range(num_classes)]
    slices = pick_slices([pred] + ([ref] if ref is not None else []), count)
    fig, axes = plt.subplots(1, len(slices), figsize=(2.6 * len(slices), 2.9), squeeze=False)
    if image is not None:
        lo, hi = window if window is not None else np.percentile(image, (1, 99))
    for ax, z in zip(axes[0], slices):
        if image is not None:
            ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
        else:
            ax.imshow(np.zeros(pred.shape[1:]), cmap="gray", vmin=0, vmax=1, aspect=aspect)
        for k in range(1, num_classes):
            colour = COLOURS[(k - 1) % len(COLOURS)]
            if (pred[z] == k).any():
                ax.contour(pred[z] == k, levels=[0.5], colors=[colour], linewidths=1.2)
            if ref is not None and (ref[z] == k).any():
                ax.contour(ref[z] == k, levels=[0.5], colors=[colour], linewidths=1.0, linestyles="dashed")
        ax.set_title(f"slice {z}", fontsize=8)
        ax.axis("off")
    handles = [Line2D([], [], color=COLOURS[(k - 1) % len(COLOURS)], label=names[k]) for k in range(1, min(num_classes, len(names)))]
    if ref is not None:
        handles += [Line2D([], [], color="k", label="prediction"), Line2D([], [], color="k", linestyle="dashed", label="reference")]
    fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, path)
