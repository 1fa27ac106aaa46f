"""Pictures: matplotlib figures without pyplot (no screen, no global backend), saved atomically; training curves; montages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .files import atomic_output

if TYPE_CHECKING:  # matplotlib loads on first use
    from matplotlib.axes import Axes

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"]


def class_rgb(k: int) -> tuple[int, int, int]:
    """Class ``k``'s (1 and up) colour in the montages, as 0..255 integers (the viewers' and DICOM files' too)."""
    hex_colour = COLOURS[(k - 1) % len(COLOURS)]
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8), **kwargs):
    """``(figure, axes)`` like ``pyplot.subplots``, but a bare :class:`matplotlib.figure.Figure`: no pyplot, no
    backend chosen or switched, so a notebook's own matplotlib set-up is left as it was (PNG is drawn by Agg
    whatever the backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig, path: str | Path, dpi: int = 100, **savefig: object) -> Path:
    """Write a figure as PNG atomically (``savefig``: more options for ``Figure.savefig``)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **savefig)
    return Path(path)


def save_curves(history: list[dict], path: str | Path, classes: list[str] = ()) -> Path:
    """Training loss and validation Dice per epoch, side by side (``RUN/curves.png``).

    The Dice panel shows the mean and, when ``classes`` are named, each foreground
    class (``val_dice_per_class``), so a class that is never found shows at 0.
    """
    epochs = [h["epoch"] for h in history]
    fig, ax = subplots(1, 2, figsize=(9, 3.5))
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
    shown; more than ``count`` if there are more classes), then slices spread over those holding at
    least a third of the largest slice's foreground (so no panel shows a speck at an organ's tip)."""
    depth = labels[0].shape[0]
    chosen = set()
    for k in sorted(set().union(*(np.unique(a).tolist() for a in labels)) - {0}):
        area = np.sum([(a == k).reshape(depth, -1).sum(1) for a in labels], axis=0)
        chosen.add(int(area.argmax()))
    area = np.sum([(a > 0).reshape(depth, -1).sum(1) for a in labels], axis=0)
    busy = np.flatnonzero(area >= area.max() / 3) if area.max() > 0 else np.arange(depth)
    for j in np.linspace(0, busy.size - 1, min(count, busy.size)):
        if len(chosen) >= count:
            break
        chosen.add(int(busy[round(j)]))
    return sorted(chosen)


def _zoom(labels: list[np.ndarray], shape: tuple[int, int]) -> tuple[slice, slice]:
    """The in-plane region to show: the labels' bounding box with a margin of its own size (at least 16
    pixels) on each side; the whole plane when that is more than half of it or there is no label."""
    found = np.any([(a > 0).any(0) for a in labels], axis=0)
    if not found.any():
        return slice(None), slice(None)
    box = []
    for axis in (0, 1):
        hits = np.flatnonzero(found.any(1 - axis))
        lo, hi = int(hits[0]), int(hits[-1]) + 1
        margin = max(16, hi - lo)
        box.append((max(0, lo - margin), min(shape[axis], hi + margin)))
    if (box[0][1] - box[0][0]) * (box[1][1] - box[1][0]) > 0.5 * shape[0] * shape[1]:
        return slice(None), slice(None)
    return slice(*box[0]), slice(*box[1])


def _draw_labels(ax: Axes, p: np.ndarray, r: np.ndarray | None, num_classes: int, aspect: float) -> None:
    """One panel's labels ``(y, x)``: each class of the prediction ``p`` filled (translucent) with a solid edge, of the
    reference ``r`` a dashed line over a white one, in the class's colour."""
    from matplotlib.colors import to_rgba

    for k in range(1, num_classes):
        colour = COLOURS[(k - 1) % len(COLOURS)]
        if (p == k).any():
            fill = np.zeros((*p.shape, 4))
            fill[p == k] = to_rgba(colour, 0.35)
            ax.imshow(fill, interpolation="nearest", aspect=aspect)
            ax.contour(p == k, levels=[0.5], colors=[colour], linewidths=1.2)
        if r is not None and (r == k).any():
            ax.contour(r == k, levels=[0.5], colors=["white"], linewidths=2.6)
            ax.contour(r == k, levels=[0.5], colors=[colour], linewidths=2.0, linestyles=[(0, (3, 2))])


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

    Prediction and reference read apart at the saved size: the prediction is filled (translucent)
    with a solid edge, the reference a thick dashed line over a white one; each class has its
    colour. Panels show the slices where the classes are (:func:`pick_slices`), zoomed in on the
    labels when they fill little of the plane.

    Args:
        image: ``(z, y, x)`` grey image shown underneath (first channel), or None.
        window: grey values shown black and white; None: the image's 1st and 99th percentiles
            (:func:`sam3dseg.data.pictures.display_window` chooses one per modality).
        pred: ``(z, y, x)`` labels.
        ref: ``(z, y, x)`` reference labels, or None.
        class_names: names by label value (legend).
        aspect: row spacing / column spacing, so anisotropic voxels look right.
    """
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    labels = [pred] + ([ref] if ref is not None else [])
    num_classes = int(max(a.max() for a in labels)) + 1
    names = class_names or [f"class {k}" for k in range(num_classes)]
    slices = pick_slices(labels, count)
    rows, cols = _zoom([a[slices] for a in labels], pred.shape[1:])
    fig, axes = subplots(1, len(slices), figsize=(3.2 * len(slices), 3.7), squeeze=False)
    if image is not None:
        lo, hi = window if window is not None else np.percentile(image, (1, 99))
    for ax, z in zip(axes[0], slices):
        if image is not None:
            ax.imshow(image[z][rows, cols], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
        else:
            ax.imshow(np.zeros(pred[z][rows, cols].shape), cmap="gray", vmin=0, vmax=1, aspect=aspect)
        _draw_labels(ax, pred[z][rows, cols], ref[z][rows, cols] if ref is not None else None, num_classes, aspect)
        ax.set_title(f"slice {z}", fontsize=9)
        ax.axis("off")
    handles = [Patch(facecolor=to_rgba(COLOURS[(k - 1) % len(COLOURS)], 0.35), edgecolor=COLOURS[(k - 1) % len(COLOURS)], label=names[k])
               for k in range(1, min(num_classes, len(names)))]  # fmt: skip
    if ref is not None:
        handles += [Patch(facecolor=(0, 0, 0, 0.2), edgecolor="k", label="prediction (filled)"),
                    Line2D([], [], color="k", linewidth=2.0, linestyle=(0, (3, 2)), label="reference (dashed)")]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=max(1, min(len(handles), 8)), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save_figure(fig, path)
