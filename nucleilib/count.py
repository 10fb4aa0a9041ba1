"""From probabilities to counted nuclei, one small named step at a time (numpy only).

The pipeline (:func:`labels_from_probabilities`), all its settings in one :class:`CountSettings`::

    probability --binarize--> mask --label_components--> instances --remove_small--> counted nuclei
                                   \\--split_touching / split_with_interior (watershed)--/

Touching nuclei form one component; a watershed on the distance transform cuts them apart, seeded by its
h-maxima (a peak must stand ``h`` pixels above the saddle to its neighbour, so the ragged outline of one
elongated nucleus does not split it). A model's nucleus *interior* channel, where there is one, weights the
distance map. :func:`classical_baseline` (Otsu + watershed) is what a user would otherwise pick.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import disk, h_maxima
from skimage.segmentation import find_boundaries, relabel_sequential, watershed

from nucleilib.data import label_components, normalize_image

DEFAULT_MIN_AREA: int = 10
"""Smallest nucleus kept, pixels: BBBC039's micronuclei are 12-20 px, while 1-9 px specks are almost always noise."""


@dataclass(frozen=True)
class CountSettings:
    """How probabilities become counted nuclei: every setting of :func:`labels_from_probabilities`, one object.

    Functions that take it also take keyword changes of single fields, e.g. ``count_nuclei(prob, min_area=30)``.
    ValueError for a ``threshold`` outside (0, 1) or a negative ``min_area``.

    Examples
    --------
    >>> settings = CountSettings(min_area=30)
    >>> replace(settings, split=False).split, settings.threshold
    (False, 0.5)
    """

    threshold: float = 0.5  # decision threshold on the probabilities (inclusive); 0.5 is logit >= 0
    min_area: int = DEFAULT_MIN_AREA  # smallest nucleus kept, pixels
    split: bool = True  # separate touching nuclei with a watershed
    connectivity: int = 8  # 8: pixels touching by a corner belong together (as in BBBC039's annotations); or 4
    min_distance: int = 3  # distance-map seeds closer than this (pixels) merge
    h: float = 1.0  # depth (pixels of distance) a distance-map peak needs to seed a nucleus; larger splits less
    smoothing: float = 1.0  # Gaussian sigma (pixels) of the distance map before seeding: no spurious ragged peaks

    def __post_init__(self) -> None:  # checked where the settings are made: before any image or model is read
        if not 0 < self.threshold < 1:  # NaN too
            raise ValueError(f"threshold must be between 0 and 1 (both excluded), got {self.threshold}")
        if not self.min_area >= 0:
            raise ValueError(f"min_area must be 0 or more, got {self.min_area}")


def _settings(settings: CountSettings | None, changes: dict, default: CountSettings = CountSettings()) -> CountSettings:
    """``settings`` (or ``default``) with the keyword ``changes`` applied; a misspelt name is a TypeError."""
    return replace(default if settings is None else settings, **changes)


def binarize(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Foreground mask (uint8 {0, 1}): the pixels whose probability is >= ``threshold``; NaN is a ValueError.

    Examples
    --------
    >>> binarize(np.array([0.1, 0.5, 0.9])).tolist()
    [0, 1, 1]
    """
    prob = np.asarray(prob)
    if not np.isfinite(threshold):
        raise ValueError(f"binarize: threshold must be finite, got {threshold}")
    if np.issubdtype(prob.dtype, np.floating) and np.isnan(prob).any():
        raise ValueError("binarize: the probability map contains NaN")
    return (prob >= threshold).astype(np.uint8)


def remove_small(labels: np.ndarray, min_area: int = DEFAULT_MIN_AREA) -> np.ndarray:
    """Drop instances smaller than ``min_area`` pixels and renumber the rest 1..n in the order of their ids (int32).

    ``labels`` is an integer label image >= 0, 0 = background; its ids need not be sequential.

    Examples
    --------
    >>> remove_small(np.array([[7, 7, 7, 0, 3]]), min_area=2).tolist()
    [[1, 1, 1, 0, 0]]
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"remove_small: labels must be integers, got dtype {labels.dtype}")
    if min_area < 0:
        raise ValueError(f"remove_small: min_area must be >= 0, got {min_area}")
    if labels.size == 0:
        return labels.astype(np.int32)
    if labels.min() < 0:
        raise ValueError("remove_small: labels must be >= 0 (0 = background)")
    ids, areas = np.unique(labels, return_counts=True)
    small = ids[areas < min_area]
    if len(small):
        labels = np.where(np.isin(labels, small), 0, labels)
    return relabel_sequential(labels)[0].astype(np.int32, copy=False)


def _seed_peaks(relief: np.ndarray, mask: np.ndarray, settings: CountSettings) -> tuple[np.ndarray, np.ndarray]:
    """The relief smoothed by ``settings.smoothing`` and its h-maxima (boolean)."""
    if settings.smoothing > 0:
        relief = ndi.gaussian_filter(relief, settings.smoothing)
    peaks = h_maxima(relief, settings.h) > 0 if relief.max() > settings.h else np.zeros_like(mask)
    return relief, peaks


def _flood(relief: np.ndarray, seeds: np.ndarray, mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Watershed of ``-relief`` from the seeds inside the mask; a component without a seed keeps its own id."""
    labels = watershed(-relief, markers=seeds, mask=mask).astype(np.int32)
    missing = mask & (labels == 0)
    if missing.any():
        extra = label_components(missing, connectivity)[1]
        labels = np.where(extra > 0, extra + labels.max(), labels).astype(np.int32)
    return remove_small(labels, 0)


def split_touching(mask: np.ndarray, settings: CountSettings | None = None, **changes) -> np.ndarray:
    """Split touching nuclei in a 2-D mask: a watershed on its distance transform, seeded by the h-maxima.

    Seeds closer than ``min_distance`` merge first (each peak is dilated by half that distance). Uses ``h``,
    ``smoothing``, ``min_distance`` and ``connectivity`` of ``settings`` (default :class:`CountSettings`, with
    keyword ``changes``). Returns int32 labels 1..n; every mask pixel is labelled.

    Examples
    --------
    >>> yy, xx = np.mgrid[:20, :34]
    >>> two_discs = ((yy - 10) ** 2 + (xx - 10) ** 2 <= 64) | ((yy - 10) ** 2 + (xx - 23) ** 2 <= 64)
    >>> label_components(two_discs)[0], int(split_touching(two_discs).max())
    (1, 2)
    """
    settings = _settings(settings, changes)
    mask = np.asarray(mask) != 0
    if mask.ndim != 2:
        raise ValueError(f"split_touching: mask must be 2-D, got shape {mask.shape}")
    distance = ndi.distance_transform_edt(mask)
    _, peaks = _seed_peaks(distance, mask, settings)
    if settings.min_distance > 1:
        peaks = cv2.dilate(peaks.astype(np.uint8), disk(settings.min_distance // 2).astype(np.uint8)) > 0
        peaks &= mask
    return _flood(distance, label_components(peaks, 8)[1], mask, settings.connectivity)


def split_with_interior(mask: np.ndarray, interior_prob: np.ndarray, settings: CountSettings | None = None,
                        **changes) -> np.ndarray:
    """Split touching nuclei with the model's interior channel: a watershed on an interior-weighted distance map.

    The distance transform of the mask is multiplied by ``0.25 + P(interior)``: where the network sees the
    boundary between two nuclei the interior probability drops, so the map dips there even when the mask has no
    waist. Seeds are the h-maxima of the (smoothed) map, and the watershed floods it. Uses ``h``, ``smoothing``
    and ``connectivity`` of ``settings``. Returns int32 labels 1..n.

    Examples
    --------
    >>> mask = np.zeros((12, 30), bool); mask[2:10, 2:28] = True          # one bar, no waist at all...
    >>> interior = mask * 0.9; interior[:, 14:16] = 0.0                   # ...but the network sees two nuclei
    >>> int(split_with_interior(mask, interior).max()), int(split_touching(mask).max())
    (2, 1)
    """
    settings = _settings(settings, changes)
    mask = np.asarray(mask) != 0
    weighted = ndi.distance_transform_edt(mask) * (0.25 + np.asarray(interior_prob, dtype=np.float64))
    weighted, peaks = _seed_peaks(weighted, mask, settings)
    return _flood(weighted, label_components(peaks & mask, 8)[1], mask, settings.connectivity)


def labels_from_probabilities(prob: np.ndarray, settings: CountSettings | None = None, **changes) -> np.ndarray:
    """Instance labels (int32, 1..n) from the model's (C, H, W) or (H, W) probabilities.

    Channel 0 is the foreground probability, thresholded by :func:`binarize`. With ``split``: if a channel 1
    (nucleus interior) exists, the watershed runs on the interior-weighted distance map
    (:func:`split_with_interior`), otherwise on the distance transform (:func:`split_touching`); without it,
    connected components. Instances smaller than ``min_area`` are removed last. ``settings`` default to
    :class:`CountSettings`; keyword ``changes`` replace single fields.

    Examples
    --------
    >>> prob = np.zeros((2, 6, 12)); prob[0, 1:5, 1:11] = 0.9     # one blob in the foreground...
    >>> prob[1, 2:4, 2:4] = prob[1, 2:4, 8:10] = 0.9              # ...with two interior seeds
    >>> int(labels_from_probabilities(prob, min_area=1).max())
    2
    >>> int(labels_from_probabilities(prob, CountSettings(min_area=1, split=False)).max())
    1
    """
    settings = _settings(settings, changes)
    prob = np.asarray(prob)
    if prob.ndim == 2:
        prob = prob[None]
    if prob.ndim != 3:
        raise ValueError(f"labels_from_probabilities: prob must be (C, H, W) or (H, W), got shape {prob.shape}")
    mask = binarize(prob[0], settings.threshold)
    if not settings.split:
        labels = label_components(mask, settings.connectivity)[1]
    elif prob.shape[0] >= 2:
        labels = split_with_interior(mask, prob[1], settings)
    else:
        labels = split_touching(mask, settings)
    return remove_small(labels, settings.min_area)


def count_nuclei(prob: np.ndarray, settings: CountSettings | None = None, **changes) -> tuple[int, np.ndarray]:
    """The number of nuclei and the labels of :func:`labels_from_probabilities` (same arguments).

    Examples
    --------
    >>> prob = np.zeros((8, 8)); prob[1:4, 1:4] = prob[5:8, 5:8] = 0.8
    >>> count_nuclei(prob, min_area=4)[0]
    2
    """
    labels = labels_from_probabilities(prob, settings, **changes)
    return int(labels.max()), labels


def classical_baseline(image: np.ndarray, settings: CountSettings | None = None, sigma: float = 0.5,
                       **changes) -> np.ndarray:
    """Nuclei without a model: Otsu threshold + distance-transform watershed (scikit-image); int32 labels.

    Steps: normalize the 2-D image (any dtype, bright nuclei on a dark background), smooth it with a Gaussian of
    ``sigma`` pixels (noise would otherwise speckle the mask), threshold at Otsu's value, fill holes, split touching
    nuclei (:func:`split_touching`), remove specks. ``settings`` (all but ``threshold``) default to
    ``CountSettings(h=0.5)``: ``sigma=0.5`` and ``h=0.5`` were chosen on the training split of the real images.

    Examples
    --------
    >>> image = np.full((40, 40), 10, np.uint16)
    >>> image[5:15, 5:15] = image[25:35, 20:32] = 200
    >>> int(classical_baseline(image).max()), int(classical_baseline(image, split=False, min_area=200).max())
    (2, 0)
    """
    settings = _settings(settings, changes, CountSettings(h=0.5))
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"classical_baseline: image must be 2-D, got shape {image.shape}")
    normalized = normalize_image(image).astype(np.float32)
    smooth = gaussian(normalized, sigma=sigma) if sigma > 0 else normalized
    if float(smooth.max()) == float(smooth.min()):  # constant image: nothing to find
        return np.zeros(image.shape, np.int32)
    mask = ndi.binary_fill_holes(smooth > threshold_otsu(smooth))
    if settings.split:
        labels = split_touching(mask, settings)
    else:
        labels = label_components(mask, settings.connectivity)[1]
    return remove_small(labels, settings.min_area)


def overlay(image: np.ndarray, labels: np.ndarray, color: tuple = (255, 64, 0)) -> np.ndarray:
    """The image in RGB with the outline of every labelled nucleus in ``color``: the one outline drawing.

    The (H, W) gray or (H, W, 3) RGB image is drawn as it is, no contrast stretch: pass uint8 for an 8-bit picture,
    floats in [0, 1] and a float colour for matplotlib. An outline is a nucleus's own boundary pixels. Returns a new
    (H, W, 3) array of the image's dtype.

    Examples
    --------
    >>> labels = np.zeros((5, 5), int); labels[1:4, 1:4] = 1
    >>> rgb = overlay(np.zeros((5, 5), np.uint8), labels)
    >>> rgb.shape, rgb[1, 1].tolist(), rgb[2, 2].tolist()     # outline pixel, inside pixel
    ((5, 5, 3), [255, 64, 0], [0, 0, 0])
    """
    image, labels = np.asarray(image), np.asarray(labels)
    if image.ndim not in (2, 3) or image.shape[:2] != labels.shape or image.shape[2:] not in ((), (3,)):
        raise ValueError(f"overlay: need a 2-D or RGB image and labels of the same shape, got {image.shape} "
                         f"and {labels.shape}")
    rgb = image.copy() if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    rgb[find_boundaries(labels, mode="inner")] = color
    return rgb
