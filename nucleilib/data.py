"""Data as arrays (numpy only): normalization, connected components, tiling an axis, the train/validation/test
split, and the statistics of a data set. Files are :mod:`nucleilib.io`'s job, data sets :mod:`nucleilib.datasets`'.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import cv2
import numpy as np


def normalize_image(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Scale one image (any shape, any real dtype) to float32 [0, 1] between its ``low`` and ``high`` percentiles.

    Per-image percentiles make 8-bit, 16-bit (full or narrow range, e.g. 12-bit data stored as 110..4095)
    and float images look alike to a model. Values outside are clipped. When the percentiles coincide the
    maximum is the upper end; a constant image gives zeros. ValueError for an empty image or percentiles
    other than ``0 <= low < high <= 100``.

    Examples
    --------
    >>> ramp = np.arange(1001, dtype=np.uint16) + 300      # narrow 16-bit range 300..1300
    >>> out = normalize_image(ramp, low=0, high=100)
    >>> out.dtype, float(out[0]), float(out[500]), float(out[-1])
    (dtype('float32'), 0.0, 0.5, 1.0)
    >>> normalize_image(np.full((3, 3), 7, np.uint8)).max()
    np.float32(0.0)
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    values = np.asarray(image)
    if values.size == 0:
        raise ValueError("cannot normalize an empty image")
    values = values.astype(np.float32, copy=False)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        hi = float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    out = (values - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def normalize_batch(images: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """:func:`normalize_image` applied to each image of a batch (first axis); float32, the same shape.

    Examples
    --------
    >>> batch = np.stack([np.arange(4, dtype=np.uint8).reshape(2, 2), np.full((2, 2), 9, np.uint8)])
    >>> normalize_batch(batch, low=0, high=100)[:, 0, 1].tolist()
    [0.3333333432674408, 0.0]
    """
    images = np.asarray(images)
    out = np.empty(images.shape, np.float32)
    for index in range(len(images)):
        out[index] = normalize_image(images[index], low, high)
    return out


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[int, np.ndarray]:
    """Connected components of a 2-D mask: ``(count, int32 labels)``, 0 = background, components 1..count.

    Every nonzero pixel is foreground, so pass a *binarized* mask (a probability map is one big component).
    Components are numbered in raster order. ``connectivity`` 8 joins pixels touching by a corner, 4 only by
    an edge.

    Examples
    --------
    >>> diagonal_pair = np.array([[1, 0], [0, 1]], np.uint8)
    >>> label_components(diagonal_pair, 8)[0], label_components(diagonal_pair, 4)[0]
    (1, 2)
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"label_components: mask must be 2-D, got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"label_components: connectivity must be 4 or 8, got {connectivity}")
    binary = (mask != 0).astype(np.uint8)
    n_labels, labels = cv2.connectedComponents(binary, connectivity=connectivity, ltype=cv2.CV_32S)
    return int(n_labels) - 1, labels.astype(np.int32, copy=False)


def tile_starts(length: int, tile: int, overlap: int = 0) -> list[int]:
    """Starts of the fewest ``tile``-long windows covering ``0..length`` with at least ``overlap`` shared.

    ``ceil((length - overlap) / (tile - overlap))`` starts spread evenly from 0 to ``length - tile``
    (rounded); ``[0]`` when ``length <= tile``. ValueError unless ``0 <= overlap < tile``. The importers'
    tiling and prediction in tiles both use it.

    Examples
    --------
    >>> tile_starts(256, 128), tile_starts(520, 128), tile_starts(100, 128)
    ([0, 128], [0, 98, 196, 294, 392], [0])
    >>> tile_starts(900, 512, 64), tile_starts(1000, 512, 64)     # overlaps 124 px; 24 px would be too few
    ([0, 388], [0, 244, 488])
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"tile_starts: need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [int(start) for start in np.round(np.linspace(0, length - tile, count))]


def split_indices(n: int, seed: int = 0, fractions: tuple[float, ...] = (0.8, 0.1, 0.1)) -> tuple[np.ndarray, ...]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into three sorted int64 index arrays: train, validation, test.

    ``fractions`` (summing to 1) give train ``round(f_train * n)`` indices, validation ``round(f_val * n)``,
    test the rest.

    Examples
    --------
    >>> train, val, test = split_indices(10, seed=0)
    >>> len(train), len(val), len(test), sorted(np.concatenate([train, val, test]).tolist()) == list(range(10))
    (8, 1, 1, True)
    """
    if n < 0 or len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"need n >= 0 and three non-negative fractions summing to 1, got n={n}, {fractions}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = min(n, round(fractions[0] * n))
    n_val = min(n - n_train, round(fractions[1] * n))
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    return tuple(np.sort(part).astype(np.int64) for part in parts)


def _touching(labels: np.ndarray) -> int:
    """Number of nuclei touching another nucleus (8-neighbourhood contact)."""
    touched: set[int] = set()
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = labels[max(dy, 0) :, max(dx, 0) : labels.shape[1] + min(dx, 0)]
        b = labels[: labels.shape[0] - dy, max(-dx, 0) : labels.shape[1] - max(dx, 0)]
        contact = (a != b) & (a > 0) & (b > 0)
        touched.update(np.unique(a[contact]).tolist())
        touched.update(np.unique(b[contact]).tolist())
    return len(touched)


def _axis_ratios(labels: np.ndarray) -> np.ndarray:
    """Major/minor axis ratio of each nucleus from second moments (bincount, vectorised)."""
    flat = labels.ravel()
    ys, xs = np.indices(labels.shape)
    n = np.bincount(flat)
    present = np.flatnonzero(n)
    present = present[present > 0]
    if present.size == 0:
        return np.zeros(0)
    sums = [np.bincount(flat, weights=w.ravel(), minlength=len(n)) for w in (ys, xs, ys * ys, xs * xs, ys * xs)]
    count = n[present].astype(np.float64)
    my, mx = sums[0][present] / count, sums[1][present] / count
    vyy = sums[2][present] / count - my**2 + 1 / 12  # + 1/12: variance of a unit pixel
    vxx = sums[3][present] / count - mx**2 + 1 / 12
    vxy = sums[4][present] / count - my * mx
    half_trace, root = (vyy + vxx) / 2, np.sqrt(((vyy - vxx) / 2) ** 2 + vxy**2)
    return np.sqrt((half_trace + root) / np.maximum(half_trace - root, 1e-6))


def _laplacian_noise(image: np.ndarray) -> float:
    """Immerkaer's noise sigma: mean absolute response of a Laplacian-difference kernel."""
    if min(image.shape) < 3:
        return 0.0
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(image.astype(np.float32), -1, kernel)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


def _levels(norm: np.ndarray, label: np.ndarray, sizes: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    """Intensity measures of one image with nuclei and background: levels, contrast, noise, spread."""
    foreground = label > 0
    # background away from nuclei edges (3 px) so blur at the borders does not count as noise
    near = cv2.dilate(foreground.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    background = norm[~near] if (~near).any() else norm[~foreground]
    fg_level, bg_level = float(np.median(norm[foreground])), float(np.median(background))
    noise = float(1.4826 * np.median(np.abs(background - bg_level)))
    means = np.bincount(label.ravel(), weights=norm.ravel())[ids] / sizes[ids]
    return {"foreground_level": fg_level, "background_level": bg_level, "contrast": fg_level - bg_level,
            "noise": noise, "snr": (fg_level - bg_level) / max(noise, 1e-3),
            "brightness_cv": float(means.std() / max(means.mean(), 1e-6))}


def dataset_stats(images: np.ndarray | Sequence[np.ndarray], labels: np.ndarray | Sequence[np.ndarray]) -> dict:
    """Statistics of a labelled data set, to compare synthetic with real data side by side.

    ``images`` and their instance ``labels``: (N, H, W) or (N, 1, H, W) arrays, or lists of 2-D arrays of
    any sizes. Each image is normalized with :func:`normalize_image` first, so raw and normalized input give
    the same numbers. Nucleus sizes are pooled over all nuclei; per-image measures are the median over
    images. Nuclei cut by image borders count as they are.

    Returns
    -------
    dict of str to float
        ``n_images``; ``nuclei_total``; ``nuclei_per_image_min/median/max``; ``area_p5/p50/p95`` (pixels);
        ``radius_median`` (sqrt(area / pi) of the median area); ``axis_ratio_median`` (major/minor axis);
        ``touching_fraction`` (nuclei touching another); ``foreground_fraction``; ``foreground_level`` and
        ``background_level`` (median normalized intensity inside and outside nuclei); ``contrast`` (their
        difference); ``brightness_cv`` (spread of the mean intensity of the nuclei of an image); ``noise``
        (robust std of the background, 1.4826 x MAD); ``noise_laplacian`` (Immerkaer's estimate over the
        whole image); ``snr`` (contrast / noise).

    Examples
    --------
    >>> image = np.full((20, 20), 100, np.uint16); labels = np.zeros((20, 20), np.int32)
    >>> image[2:6, 2:6] = 900; labels[2:6, 2:6] = 1                      # one 4x4 nucleus
    >>> image[10:13, 10:13] = 500; labels[10:13, 10:13] = 2             # one 3x3 nucleus
    >>> stats = dataset_stats([image], [labels])
    >>> stats["nuclei_per_image_median"], stats["area_p50"], stats["background_level"], stats["touching_fraction"]
    (2.0, 12.5, 0.0, 0.0)
    """
    images_list = [np.asarray(image).squeeze() for image in images]
    labels_list = [np.asarray(label).squeeze() for label in labels]
    if len(images_list) != len(labels_list) or not images_list:
        raise ValueError(f"need the same positive number of images and labels, got {len(images_list)} and "
                         f"{len(labels_list)}")
    per_image: dict[str, list[float]] = defaultdict(list)
    areas, ratios, touching = [], [], 0
    for image, label in zip(images_list, labels_list):
        if image.shape != label.shape or image.ndim != 2:
            raise ValueError(f"image {image.shape} and labels {label.shape} must be the same 2-D shape")
        label = label.astype(np.int64)
        norm = normalize_image(image)
        sizes = np.bincount(label.ravel())
        ids = np.flatnonzero(sizes[1:]) + 1
        areas.extend(sizes[ids].tolist())
        ratios.extend(_axis_ratios(label).tolist())
        touching += _touching(label)
        measures = {"count": len(ids), "foreground_fraction": float((label > 0).mean()),
                    "noise_laplacian": _laplacian_noise(norm)}
        if len(ids) and not (label > 0).all():
            measures.update(_levels(norm, label, sizes, ids))
        for key, value in measures.items():
            per_image[key].append(value)
    return _summary(per_image, areas, ratios, touching)


def _summary(per_image: dict[str, list[float]], areas: list, ratios: list, touching: int) -> dict[str, float]:
    """The statistics of :func:`dataset_stats` from its per-image and per-nucleus measures."""
    area = np.asarray(areas, np.float64) if areas else np.full(1, np.nan)
    counts, total = np.asarray(per_image["count"], np.float64), sum(per_image["count"])
    stats = {"n_images": float(len(counts)), "nuclei_total": float(counts.sum()),
             "nuclei_per_image_min": float(counts.min()), "nuclei_per_image_median": float(np.median(counts)),
             "nuclei_per_image_max": float(counts.max()), "area_p5": float(np.percentile(area, 5)),
             "area_p50": float(np.percentile(area, 50)), "area_p95": float(np.percentile(area, 95)),
             "radius_median": float(np.sqrt(np.percentile(area, 50) / np.pi)),
             "axis_ratio_median": float(np.median(ratios)) if ratios else float("nan"),
             "touching_fraction": float(touching / total) if total else 0.0}
    medians = ("foreground_fraction", "foreground_level", "background_level", "contrast", "brightness_cv", "noise",
               "noise_laplacian", "snr")  # over the images that have them
    return stats | {key: float(np.median(per_image[key])) if per_image[key] else float("nan") for key in medians}
