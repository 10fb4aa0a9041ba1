"""Losses for binary segmentation (on logits), and the training targets made from instance labels.

Targets have one channel per output "head": ``"mask"`` is 1 on every nucleus pixel; ``"interior"`` is each
nucleus without its outer 1-2 pixel rim. Touching nuclei share a border in the mask but their interiors are
apart, so the interiors can seed a watershed that splits them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from nucleilib.model import probabilities_from_logits

HEADS = ("mask", "interior")


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy between ``(N, C, H, W)`` logits and a target of the same shape in [0, 1].

    Examples
    --------
    >>> round(bce_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).item(), 4)  # -log(0.5)
    0.6931
    """
    return F.binary_cross_entropy_with_logits(logits, target)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss, ``1 - Dice`` on probabilities, averaged over channels.

    Per channel, over the whole batch: ``Dice = (2 * sum(p * t) + eps) / (sum(p) + sum(t) + eps)``.
    ``eps`` keeps the loss defined (and zero) when both prediction and target are empty.

    Examples
    --------
    >>> target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    >>> round(dice_loss(40 * (2 * target - 1), target).item(), 6)  # perfect logits
    0.0
    >>> round(dice_loss(torch.zeros(1, 1, 2, 2), target).item(), 4)  # p = 0.5: 1 - (2*1 + 1) / (2 + 2 + 1)
    0.4
    """
    probabilities = probabilities_from_logits(logits)
    dims = [0] + list(range(2, probabilities.ndim))  # everything except channels
    intersection = (probabilities * target).sum(dims)
    total = probabilities.sum(dims) + target.sum(dims)
    dice = (2 * intersection + eps) / (total + eps)
    return 1 - dice.mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`bce_loss` plus :func:`dice_loss`: per-pixel accuracy and region overlap together.

    Examples
    --------
    >>> round(bce_dice_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).item(), 4)  # 0.6931 + 1 - 5/7
    0.9789
    """
    return bce_loss(logits, target) + dice_loss(logits, target)


def targets_from_labels(labels: np.ndarray, heads: Sequence[str] = ("mask",)) -> np.ndarray:
    """Training targets ``(N, C, H, W)`` float32 from instance labels, one channel per head.

    ``"mask"`` is ``labels > 0``. ``"interior"`` keeps the pixels of each nucleus that have no
    pixel of another label (or background) within 2 px (a 5x5 square) for nuclei with an equivalent
    radius ``sqrt(area / pi) >= 4`` px, within 1 px (3x3) for smaller ones. A nucleus that this
    would delete keeps its centre pixel (the one farthest from its border). Square neighbourhoods
    guarantee that interiors of different nuclei are never 8-connected, so connected components of
    the interior channel separate touching nuclei. The image border does not count as boundary.

    ``labels`` are ``(N, H, W)`` or ``(H, W)`` non-negative integers (0: background); ``heads`` names the channels
    in order. Returns float32 ``(N, len(heads), H, W)`` in {0, 1}; ValueError for bad heads or labels.

    Examples
    --------
    Two touching 3x3 nuclei side by side (ids 1 and 2); only the centre pixels stay interior:

    >>> labels = np.zeros((5, 8), dtype=np.int32)
    >>> labels[1:4, 1:4], labels[1:4, 4:7] = 1, 2
    >>> targets = targets_from_labels(labels, heads=("mask", "interior"))
    >>> targets.shape
    (1, 2, 5, 8)
    >>> targets[0, 1].astype(int)
    array([[0, 0, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0, 0],
           [0, 0, 1, 0, 0, 1, 0, 0],
           [0, 0, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0, 0]])
    """
    heads = tuple(heads)
    if not heads or any(head not in HEADS for head in heads):
        raise ValueError(f"targets_from_labels: heads must be names from {HEADS}, got {heads}")
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3:
        raise ValueError(f"targets_from_labels: labels must be (N, H, W) or (H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"targets_from_labels: labels must be integers, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("targets_from_labels: labels must be >= 0 (0 = background)")
    channels = {"mask": labels > 0}
    if "interior" in heads:
        channels["interior"] = interior_from_labels(labels)
    return np.stack([channels[head] for head in heads], axis=1).astype(np.float32)


def interior_from_labels(labels: np.ndarray) -> np.ndarray:
    """Boolean ``(N, H, W)`` interior of every nucleus in ``(N, H, W)`` labels (see :func:`targets_from_labels`).

    Examples
    --------
    >>> labels = np.zeros((1, 9, 9), dtype=np.int32)
    >>> labels[0, 4, 4] = 7  # a single-pixel nucleus keeps its pixel
    >>> int(interior_from_labels(labels).sum())
    1
    """
    # Give every nucleus of the batch its own id so one pass of the filters handles all images.
    unique = labels.astype(np.int64)
    offsets = np.cumsum([0] + [int(image.max()) for image in unique[:-1]]).reshape(-1, 1, 1)
    unique = np.where(unique > 0, unique + offsets, 0)
    areas = np.bincount(unique.ravel())
    large = np.sqrt(areas / np.pi) >= 4  # indexed by id
    interior = np.zeros(unique.shape, dtype=bool)
    for width, wanted in ((1, ~large), (2, large)):
        size = (1, 2 * width + 1, 2 * width + 1)
        # A pixel is interior when its whole neighbourhood carries its own id ("nearest" mode: the
        # image border is not a boundary).
        same = (ndimage.maximum_filter(unique, size=size, mode="nearest") == unique) & (
            ndimage.minimum_filter(unique, size=size, mode="nearest") == unique
        )
        interior |= same & (unique > 0) & wanted[unique]
    kept = np.zeros(areas.size, dtype=bool)
    kept[unique[interior]] = True
    for index, box in enumerate(ndimage.find_objects(unique)):
        nucleus_id = index + 1
        if box is None or kept[nucleus_id]:
            continue
        # Erosion deleted this small nucleus: keep its centre, the pixel farthest from its border.
        inside = np.pad(unique[box] == nucleus_id, [(0, 0), (1, 1), (1, 1)])
        distance = ndimage.distance_transform_edt(inside)[:, 1:-1, 1:-1]
        centre = np.unravel_index(np.argmax(distance), distance.shape)
        interior[tuple(s.start + c for s, c in zip(box, centre))] = True
    return interior

