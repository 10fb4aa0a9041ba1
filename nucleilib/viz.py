"""Figures for the chapters: image grids with outlines, training curves, and saving to ``figures/``.

Every ``*_figure`` or plotting function returns its matplotlib ``Figure``, so a notebook can show it and save it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from nucleilib.count import overlay
from nucleilib.io import project_root
from nucleilib.io import atomic_path


def save_figure(figure: Figure, name: str, dpi: int = 110) -> str:
    """Save a figure as ``figures/<name>`` (e.g. ``"01_grid.png"``) atomically: never a half-written PNG.

    The folder is ``figures/`` in the project (:func:`nucleilib.io.project_root`), or ``$NUCLEILIB_FIGURES``.
    Returns where the file was written, relative to the project when it lies inside it.

    Examples
    --------
    >>> import tempfile
    >>> from unittest import mock
    >>> fig = plt.figure()
    >>> with mock.patch.dict(os.environ, {"NUCLEILIB_FIGURES": tempfile.mkdtemp()}):  # restored afterwards
    ...     Path(save_figure(fig, "demo.png")).name
    'demo.png'
    >>> plt.close(fig)
    """
    path = Path(os.environ.get("NUCLEILIB_FIGURES") or project_root() / "figures") / name
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    try:
        return str(path.relative_to(project_root()))  # notebooks show this: no machine-specific folder
    except ValueError:
        return str(path)


def outline_rgb(image: np.ndarray, labels: np.ndarray | None = None,
                color: Sequence[float] = (1.0, 0.85, 0.0)) -> np.ndarray:
    """A 2-D image in [0, 1] as float32 RGB, with every labelled nucleus outlined in ``color`` (by
    :func:`nucleilib.count.overlay`; no outlines without ``labels``).

    Examples
    --------
    >>> labels = np.zeros((5, 5), int); labels[1:4, 1:4] = 1
    >>> rgb = outline_rgb(np.zeros((5, 5)), labels)
    >>> rgb.shape, bool(rgb[1, 1, 0] == 1.0), bool(rgb[2, 2, 0] == 0.0)
    ((5, 5, 3), True, True)
    """
    gray = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    return np.repeat(gray[..., None], 3, axis=-1) if labels is None else overlay(gray, labels, color)


def show_grid(images: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None = None,
              titles: Sequence[str] | None = None, ncols: int = 4, size: float = 2.6, cmap: str = "gray") -> Figure:
    """Show images in a grid, ``ncols`` per row and ``size`` inches each, with outlines where labels are given.

    ``images`` are 2-D (normalized to [0, 1] for outlines) or (1, H, W); ``labels`` holds instance labels per image
    (None entries: no outlines), ``titles`` one title per image; ``cmap`` colours the images without outlines.

    Examples
    --------
    >>> len(show_grid([np.zeros((4, 4))] * 3, ncols=2).axes)
    4
    """
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = np.squeeze(np.asarray(images[i]))
        if labels is not None and labels[i] is not None:
            ax.imshow(outline_rgb(image, np.squeeze(labels[i])))
        else:
            ax.imshow(image, cmap=cmap)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig


def plot_history(history: dict, title: str | None = None) -> Figure:
    """Training curves: loss (train and validation), validation Dice and learning rate per epoch.

    ``history`` holds per-epoch lists ``train_loss``, ``val_loss``, ``val_dice`` and ``lr``, as ``train.fit`` returns.

    Examples
    --------
    >>> h = {"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "val_dice": [0.3, 0.8], "lr": [1e-3, 5e-4]}
    >>> len(plot_history(h).axes)
    3
    """
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (ax_loss, ax_dice, ax_lr) = plt.subplots(1, 3, figsize=(12, 3.2))
    ax_loss.plot(epochs, history["train_loss"], label="train")
    ax_loss.plot(epochs, history["val_loss"], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_dice.plot(epochs, history["val_dice"], color="tab:green")
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    ax_lr.plot(epochs, history["lr"], color="tab:red")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate", yscale="log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def normalization_figure(candidates: dict[str, np.ndarray], bins: int = 64) -> Figure:
    """One column per normalization (name -> the 2-D image it produced): the image, and its histogram on [0, 1].

    Examples
    --------
    >>> len(normalization_figure({"a": np.zeros((4, 4)), "b": np.ones((4, 4))}).axes)
    4
    """
    fig, axes = plt.subplots(2, len(candidates), figsize=(3.2 * len(candidates), 5.6), squeeze=False)
    for column, (name, image) in enumerate(candidates.items()):
        axes[0, column].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(name)
        axes[0, column].axis("off")
        axes[1, column].hist(np.ravel(image), bins=bins, range=(0, 1), color="tab:blue", log=True)
        axes[1, column].set(xlabel="value after normalization", ylabel="pixels (log)")
    fig.tight_layout()
    return fig


def statistics_figure(labels: np.ndarray) -> Figure:
    """Histograms of nuclei per image and of nucleus area (pixels) over (N, H, W) instance labels.

    Examples
    --------
    >>> labels = np.zeros((2, 6, 6), int); labels[0, :2, :2] = 1; labels[1, 3:, 3:] = 5
    >>> len(statistics_figure(labels).axes)
    2
    """
    per_image, areas = [], []
    for image_labels in np.asarray(labels).reshape(-1, *np.shape(labels)[-2:]):
        sizes = np.bincount(image_labels.ravel())[1:]
        sizes = sizes[sizes > 0]
        per_image.append(len(sizes))
        areas.extend(sizes.tolist())
    fig, (ax_count, ax_area) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_count.hist(per_image, bins=range(0, max(per_image, default=0) + 2), color="tab:blue")
    ax_count.set(xlabel="nuclei per image", ylabel="images")
    ax_area.hist(areas, bins=np.logspace(0, np.log10(max(areas, default=10) + 1), 40), color="tab:orange")
    ax_area.set(xscale="log", xlabel="nucleus area (pixels)", ylabel="nuclei")
    fig.tight_layout()
    return fig


def unet_diagram(shapes: Sequence[tuple[str, tuple[int, ...]]]) -> Figure:
    """Draw the U shape from ``model.describe_shapes`` (``(name, (N, C, H, W))`` pairs in forward order).

    One box per level, its height following the image size and its width the number of channels (log scale), so
    the figure shows the trade the network makes: smaller images, more channels. Skips are arrows across.

    Examples
    --------
    >>> shapes = [("input", (1, 1, 8, 8)), ("padded input", (1, 1, 8, 8)), ("encoder 0", (1, 4, 8, 8)),
    ...           ("bottleneck", (1, 8, 4, 4)), ("decoder 0", (1, 4, 8, 8)), ("logits", (1, 1, 8, 8))]
    >>> len(unet_diagram(shapes).axes)
    1
    """
    from matplotlib.patches import FancyArrowPatch, Rectangle
    levels = [(name, shape) for name, shape in shapes if name.startswith(("encoder", "bottleneck", "decoder"))]
    top_size = levels[0][1][-1]
    fig, ax = plt.subplots(figsize=(11, 5))
    centres = {}
    for column, (name, (_, channels, height, width)) in enumerate(levels):
        level = int(np.log2(top_size // width))
        box_h = 0.5 + 2.5 * height / top_size
        box_w = 0.25 + 0.18 * np.log2(channels)
        x, y = column * 1.6, -level * 1.6
        colour = "tab:blue" if name.startswith("encoder") else "tab:purple" if name == "bottleneck" else "tab:green"
        ax.add_patch(Rectangle((x, y - box_h / 2), box_w, box_h, color=colour, alpha=0.75))
        ax.text(x + box_w / 2, y + box_h / 2 + 0.12, f"{channels} ch", ha="center", fontsize=8)
        ax.text(x + box_w / 2, y - box_h / 2 - 0.3, f"{height}x{width}", ha="center", fontsize=8)
        centres[name] = (x, y, box_w)
    for name, (x, y, box_w) in centres.items():
        if name.startswith("encoder") and name.replace("encoder", "decoder") in centres:
            x2, y2, _ = centres[name.replace("encoder", "decoder")]
            ax.add_patch(FancyArrowPatch((x + box_w, y), (x2, y2), arrowstyle="->", color="gray", linestyle="--",
                                         mutation_scale=12))
    ax.text(0, 2.45, "encoder: 2x(conv 3x3, BN, ReLU), then 2x2 max-pool", fontsize=9, color="tab:blue")
    ax.text(centres[levels[-1][0]][0] - 4.5, 2.45, "decoder: 2x2 up-conv, concatenate skip, 2x(conv 3x3)",
            fontsize=9, color="tab:green")
    ax.text(len(levels) * 0.8 - 1.5, 2.1, "dashed: skip connections (concatenation)", fontsize=9, color="gray")
    ax.set_xlim(-0.5, len(levels) * 1.6)
    ax.set_ylim(-(len(levels) // 2) * 1.6 - 1.5, 2.7)
    ax.axis("off")
    return fig


def labels_rgb(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D instance labels (ids >= 0) as float RGB: every nucleus its own random colour (seeded), background black.

    Random colours rather than a colour map: two touching nuclei with neighbouring ids would otherwise get nearly
    the same colour and look like one.

    Examples
    --------
    >>> rgb = labels_rgb(np.array([[0, 1], [2, 2]]))
    >>> rgb.shape, rgb[0, 0].tolist(), bool((rgb[1, 0] == rgb[1, 1]).all()), bool((rgb[0, 1] > 0).any())
    ((2, 2, 3), [0.0, 0.0, 0.0], True, True)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(f"labels_rgb: need 2-D integer labels >= 0, got shape {labels.shape}, dtype {labels.dtype}")
    ids, inverse = np.unique(labels, return_inverse=True)
    colours = np.random.default_rng(seed).uniform(0.25, 1.0, size=(len(ids), 3))
    colours[ids == 0] = 0.0
    return colours[inverse.reshape(labels.shape)]


def matching_figure(image: np.ndarray, true_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5,
                    title: str | None = None) -> Figure:
    """Matched, missed and false nuclei on one image (normalized to [0, 1]), in the colours of the metrics.

    Green: a predicted nucleus matched to a true one (TP); red: a true nucleus nobody matched (FN); yellow: a
    predicted nucleus that matches no true one (FP), by :func:`nucleilib.metrics.matched_pairs` at
    ``iou_threshold``. The title gives the counts unless ``title`` is given.

    Examples
    --------
    >>> t = np.zeros((8, 8), int); t[1:4, 1:4] = 1; t[5:7, 5:7] = 2
    >>> p = np.zeros((8, 8), int); p[1:4, 1:4] = 3
    >>> matching_figure(np.zeros((8, 8)), t, p).axes[0].get_title()
    'IoU >= 0.5: 1 matched (green), 1 missed (red), 0 false (yellow)'
    """
    from nucleilib.metrics import matched_pairs
    pairs = matched_pairs(true_labels, pred_labels, iou_threshold)
    missed_ids = sorted(set(np.unique(true_labels)) - {0} - {t for t, _, _ in pairs})
    false_ids = sorted(set(np.unique(pred_labels)) - {0} - {p for _, p, _ in pairs})
    outlines = ((np.where(np.isin(pred_labels, [p for _, p, _ in pairs]), pred_labels, 0), (0.1, 0.9, 0.1)),
                (np.where(np.isin(true_labels, missed_ids), true_labels, 0), (1.0, 0.15, 0.15)),
                (np.where(np.isin(pred_labels, false_ids), pred_labels, 0), (1.0, 0.9, 0.0)))
    rgb = outline_rgb(image)
    for labels, colour in outlines:
        rgb = overlay(rgb, labels, colour)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.imshow(rgb)
    ax.axis("off")
    ax.set_title(title or f"IoU >= {iou_threshold}: {len(pairs)} matched (green), {len(missed_ids)} missed (red), "
                 f"{len(false_ids)} false (yellow)", fontsize=9)
    return fig


def compare_curves(histories: dict[str, dict], key: str = "val_loss", baseline: float | None = None,
                   title: str | None = None) -> Figure:
    """Several trainings (name -> ``train.fit`` history) on the same axes: ``key`` per epoch and the learning rate.

    ``baseline`` draws a horizontal reference line, e.g. the loss of a constant prediction ("learned nothing").

    Examples
    --------
    >>> runs = {"a": {"val_loss": [1.0, 0.5], "lr": [1e-3, 1e-3]}, "b": {"val_loss": [1.2, 1.2], "lr": [1.0, 0.5]}}
    >>> len(compare_curves(runs, baseline=1.1).axes)
    2
    """
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1.6, 1]})
    for name, history in histories.items():
        epochs = np.arange(1, len(history[key]) + 1)
        (line,) = ax_loss.plot(epochs, history[key], marker="o", markersize=3, label=name)
        ax_lr.plot(epochs, history["lr"], marker="o", markersize=3, color=line.get_color(), label=name)
    if baseline is not None:
        ax_loss.axhline(baseline, color="gray", linestyle="--", label="constant prediction")
    ax_loss.set(xlabel="epoch", ylabel=key.replace("_", " "), yscale="log", title=key.replace("_", " "))
    ax_loss.legend(fontsize=8)
    ax_lr.set(xlabel="epoch", ylabel="learning rate", yscale="log", title="learning rate (lowered on plateau)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def lr_range_figure(result: dict, marks: dict[str, float] | None = None) -> Figure:
    """Loss against learning rate from ``train.lr_range_test``, with vertical lines at the ``marks`` (name -> rate).

    Examples
    --------
    >>> result = {"lr": [1e-4, 1e-3, 1e-2], "loss": [1.0, 0.8, 2.0], "smoothed": [1.0, 0.9, 1.3]}
    >>> len(lr_range_figure(result, {"x": 1e-3}).axes)
    1
    """
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.plot(result["lr"], result["loss"], color="tab:blue", alpha=0.35, label="loss per step")
    ax.plot(result["lr"], result["smoothed"], color="tab:blue", label="smoothed")
    for (name, lr), color in zip((marks or {}).items(), ["tab:green", "tab:orange", "tab:red", "tab:purple"]):
        ax.axvline(lr, color=color, linestyle="--", label=name)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def count_scatter(true_counts: Sequence[int], counts: dict[str, Sequence[int]]) -> Figure:
    """Counted against true nuclei per image, one marker style per method (name -> counts), with the diagonal.

    Examples
    --------
    >>> len(count_scatter([1, 5], {"naive": [0, 2], "fixed": [1, 5]}).axes)
    1
    """
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    top = max([max(true_counts, default=1)] + [max(c, default=1) for c in counts.values()]) + 1
    ax.plot([0, top], [0, top], color="gray", linewidth=1, label="counted = true")
    for (name, values), marker in zip(counts.items(), "oxs^v+"):
        ax.scatter(true_counts, values, marker=marker, s=22, alpha=0.75, label=name)
    ax.set(xlabel="true nuclei per image", ylabel="counted", xlim=(0, top), ylim=(0, top))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
