"""Evaluation: pixel overlap, instance matching and count error (numpy only).

- Pixel: :func:`dice` and :func:`iou` of two binary masks (one formula: :func:`overlap_scores`).
- Instance: true and predicted nuclei are matched one-to-one by IoU with an optimal assignment
  (:func:`scipy.optimize.linear_sum_assignment`); at threshold ``t`` a match is a true positive when its
  IoU >= ``t``. Precision TP/(TP+FP), recall TP/(TP+FN), F1, and AP(t) = TP/(TP+FP+FN), averaged over
  t = 0.50, 0.55, ..., 0.95 for one image (:func:`mean_ap`); the 2018 Data Science Bowl score is the mean of that
  over the images (``mean_ap_per_image`` of :func:`evaluate_instances`).
- Count: absolute and relative error of the nucleus count (:func:`count_error`).

With neither true nor predicted nuclei every ratio is 1.0 (nothing to find, nothing wrongly found); otherwise
a ratio whose denominator is zero is 0.0. Label ids need not be sequential: ``{0, 7, 42}`` holds two nuclei.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

DSB_THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 1.0, 0.05), 2)
"""IoU thresholds of the 2018 Data Science Bowl score: 0.50, 0.55, ..., 0.95."""
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (rows, cols, ious) of overlapping nuclei: see _overlaps


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {a.shape} vs {b.shape}")


def overlap_scores(intersection: float, pred_area: float, true_area: float) -> tuple[float, float]:
    """Dice 2|A∩B| / (|A|+|B|) and IoU |A∩B| / |A∪B| from the three areas; both 1.0 when A and B are empty.

    The one place where pixel Dice and IoU are computed: :func:`dice`, :func:`iou`, :func:`evaluate_instances` and
    the validation pass of training (which sums the areas over batches) all call it.

    Examples
    --------
    >>> overlap_scores(2, 4, 2)     # 2*2 / (4+2), 2 / (4+2-2)
    (0.6666666666666666, 0.5)
    >>> overlap_scores(0, 0, 0)
    (1.0, 1.0)
    """
    if pred_area + true_area == 0:
        return 1.0, 1.0
    return 2.0 * intersection / (pred_area + true_area), intersection / (pred_area + true_area - intersection)


def _areas(pred_mask: np.ndarray, true_mask: np.ndarray, what: str) -> tuple[int, int, int]:
    pred, true = np.asarray(pred_mask) != 0, np.asarray(true_mask) != 0
    _check_same_shape(pred, true, what)
    return int((pred & true).sum()), int(pred.sum()), int(true.sum())


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two masks of the same shape (nonzero = foreground); 1.0 if both empty.

    Examples
    --------
    >>> a = np.zeros((4, 4)); a[:2, :2] = 1          # 4 pixels
    >>> b = np.zeros((4, 4)); b[:2, :1] = 1          # 2 of them
    >>> dice(a, b), dice(np.zeros((2, 2)), np.zeros((2, 2)))   # 2*2 / (4+2)
    (0.6666666666666666, 1.0)
    """
    return overlap_scores(*_areas(pred_mask, true_mask, "dice"))[0]


def iou(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Intersection over union |A∩B| / |A∪B| of two masks of one shape (nonzero = foreground); 1.0 if both empty.

    Examples
    --------
    >>> a = np.zeros((4, 4)); a[:2, :2] = 1
    >>> b = np.zeros((4, 4)); b[:2, 1:3] = 1         # shifted by one column
    >>> iou(a, b)                                     # 2 / 6
    0.3333333333333333
    """
    return overlap_scores(*_areas(pred_mask, true_mask, "iou"))[1]


def iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every true nucleus with every predicted nucleus: ``(ious (n_true, n_pred), true_ids, pred_ids)``.

    The label images are integers >= 0 of the same shape (0 = background); the ids of the rows and columns are
    sorted; union = area_true + area_pred - intersection. Dense, to look at: matching uses only the overlapping pairs.

    Examples
    --------
    >>> ious, true_ids, pred_ids = iou_matrix(np.array([[5, 5, 0, 9]]), np.array([[1, 0, 0, 2]]))
    >>> ious.tolist(), true_ids.tolist(), pred_ids.tolist()
    ([[0.5, 0.0], [0.0, 1.0]], [5, 9], [1, 2])
    """
    (rows, cols, values), true_ids, pred_ids = _overlaps(true_labels, pred_labels)
    ious = np.zeros((len(true_ids), len(pred_ids)), dtype=np.float64)
    ious[rows, cols] = values
    return ious, true_ids, pred_ids


def _overlaps(true_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[Pairs, np.ndarray, np.ndarray]:
    """The IoUs of the overlapping (true, predicted) pairs only, ``((rows, cols, ious), true_ids, pred_ids)``: a sparse
    :func:`iou_matrix` (memory grows with the nuclei, not their square), from the joint histogram in one pass (the
    intersections are the counts of each (true id, pred id) pixel pair). Pairs are sorted by row, then column."""
    true_labels, pred_labels = np.asarray(true_labels), np.asarray(pred_labels)
    _check_same_shape(true_labels, pred_labels, "iou_matrix")
    for name, arr in (("true_labels", true_labels), ("pred_labels", pred_labels)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise ValueError(f"iou_matrix: {name} must be an integer label image, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"iou_matrix: {name} has negative ids; 0 is background, nuclei are > 0")
    # Map ids to 0..n (0 = background) so that any id values work.
    true_ids, true_idx = np.unique(true_labels.ravel(), return_inverse=True)
    pred_ids, pred_idx = np.unique(pred_labels.ravel(), return_inverse=True)
    if true_ids[0] != 0:  # no background pixels: prepend a virtual background id
        true_ids, true_idx = np.concatenate([[0], true_ids]), true_idx + 1
    if pred_ids[0] != 0:
        pred_ids, pred_idx = np.concatenate([[0], pred_ids]), pred_idx + 1
    n_true, n_pred = len(true_ids) - 1, len(pred_ids) - 1
    area_true = np.bincount(true_idx, minlength=n_true + 1)[1:]
    area_pred = np.bincount(pred_idx, minlength=n_pred + 1)[1:]
    both = (true_idx > 0) & (pred_idx > 0)
    pair_codes, intersections = np.unique(
        (true_idx[both] - 1).astype(np.int64) * max(n_pred, 1) + (pred_idx[both] - 1), return_counts=True
    )
    rows, cols = np.divmod(pair_codes, max(n_pred, 1))
    ious = intersections / (area_true[rows] + area_pred[cols] - intersections)
    return (rows, cols, ious.astype(np.float64)), true_ids[1:], pred_ids[1:]


def _ratio(numerator: float, denominator: float, both_empty: bool) -> float:
    if both_empty:
        return 1.0
    return float(numerator) / denominator if denominator > 0 else 0.0


def _assign(pairs: Pairs, iou_threshold: float) -> np.ndarray:
    """Indices (sorted) of the pairs in the optimal one-to-one matching with IoU >= threshold: each connected group
    of such pairs is assigned on its own, and a group of one pair (almost all of them) needs no assignment."""
    keep = np.flatnonzero(pairs[2] >= iou_threshold)
    if len(keep) == 0:
        return keep
    rows, row_of = np.unique(pairs[0][keep], return_inverse=True)
    col_of = np.unique(pairs[1][keep], return_inverse=True)[1] + len(rows)
    n_nodes = int(col_of.max()) + 1
    graph = coo_matrix((np.ones(len(keep)), (row_of, col_of)), shape=(n_nodes, n_nodes))
    group = connected_components(graph, directed=False)[1][row_of]
    group_ids, first, size = np.unique(group, return_index=True, return_counts=True)
    chosen = [keep[first[size == 1]]]
    for group_id in group_ids[size > 1]:
        members = keep[group == group_id]
        sub_rows, r = np.unique(pairs[0][members], return_inverse=True)
        sub_cols, c = np.unique(pairs[1][members], return_inverse=True)
        ious, index = np.zeros((len(sub_rows), len(sub_cols))), np.full((len(sub_rows), len(sub_cols)), -1)
        ious[r, c], index[r, c] = pairs[2][members], members
        # Maximize the number of matches first; among those, prefer higher IoU (the IoU term
        # is < 1 in total, so it only breaks ties between equally many matches).
        ok = ious >= iou_threshold
        best_r, best_c = linear_sum_assignment(ok + ok * ious / (2 * min(ok.shape)), maximize=True)
        chosen.append(index[best_r, best_c][ok[best_r, best_c]])
    return np.sort(np.concatenate(chosen))


def _match_counts(pairs: Pairs, iou_threshold: float) -> tuple[int, float]:
    """Number of one-to-one matches with IoU >= threshold and the sum of their IoUs."""
    chosen = _assign(pairs, iou_threshold)
    return len(chosen), float(pairs[2][chosen].sum())


def matched_pairs(true_labels: np.ndarray, pred_labels: np.ndarray,
                  iou_threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """The matches of :func:`matching` themselves: ``(true id, predicted id, IoU)`` for each one-to-one match.

    True ids not listed are missed nuclei (false negatives), predicted ids not listed false ones (false positives).

    Examples
    --------
    >>> matched_pairs(np.array([[1, 1, 0, 2, 2]]), np.array([[7, 7, 0, 0, 3]]))
    [(1, 7, 1.0), (2, 3, 0.5)]
    """
    pairs, true_ids, pred_ids = _overlaps(true_labels, pred_labels)
    rows, cols, ious = pairs
    return [(int(true_ids[rows[k]]), int(pred_ids[cols[k]]), round(float(ious[k]), 4))
            for k in _assign(pairs, iou_threshold)]


def _scores(tp: int, n_true: int, n_pred: int, iou_sum: float) -> dict[str, float]:
    fp, fn = n_pred - tp, n_true - tp
    both_empty = n_true == 0 and n_pred == 0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": _ratio(tp, tp + fp, both_empty),
            "recall": _ratio(tp, tp + fn, both_empty), "f1": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
            "ap": _ratio(tp, tp + fp + fn, both_empty), "n_true": n_true, "n_pred": n_pred,
            "mean_matched_iou": _ratio(iou_sum, tp, both_empty)}


def matching(true_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Match true and predicted nuclei one-to-one and score the result at one IoU threshold (in [0, 1]).

    The assignment maximizes the number of pairs with IoU >= ``iou_threshold``; for thresholds >= 0.5 each nucleus
    can overlap at most one partner that much, so the matching is unique anyway. Returns ``tp``, ``fp``, ``fn``,
    ``n_true``, ``n_pred``, ``precision``, ``recall``, ``f1``, ``ap`` = TP/(TP+FP+FN) and ``mean_matched_iou``.

    Examples
    --------
    Two true squares; one is found exactly, the other only as a copy shifted by one column (IoU 2/6), and one
    prediction is a false detection:

    >>> t = np.zeros((6, 9), int); t[0:2, 0:2] = 1; t[0:2, 4:6] = 2
    >>> p = np.zeros((6, 9), int); p[0:2, 0:2] = 3; p[0:2, 5:7] = 8; p[4:6, 7:9] = 9
    >>> m = matching(t, p, 0.5)
    >>> m["tp"], m["fp"], m["fn"], m["ap"], matching(t, p, 0.3)["tp"]
    (1, 2, 1, 0.25, 2)
    """
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"matching: iou_threshold must be in [0, 1], got {iou_threshold}")
    pairs, true_ids, pred_ids = _overlaps(true_labels, pred_labels)
    tp, iou_sum = _match_counts(pairs, float(iou_threshold))
    return _scores(tp, len(true_ids), len(pred_ids), iou_sum)


def matching_curve(true_labels: np.ndarray, pred_labels: np.ndarray,
                   thresholds: Sequence[float] = DSB_THRESHOLDS) -> dict[str, np.ndarray]:
    """:func:`matching` at several IoU thresholds (the IoU matrix computed once): each key an array, plus ``threshold``.

    Examples
    --------
    >>> t = np.zeros((4, 4), int); t[:2, :2] = 1
    >>> p = np.zeros((4, 4), int); p[:2, :1] = 1     # IoU 0.5
    >>> matching_curve(t, p, [0.4, 0.5, 0.6])["tp"].tolist()
    [1, 1, 0]
    """
    pairs, true_ids, pred_ids = _overlaps(true_labels, pred_labels)
    rows = [
        _scores(tp, len(true_ids), len(pred_ids), s) for tp, s in (_match_counts(pairs, float(t)) for t in thresholds)
    ]
    curve = {"threshold": np.asarray(thresholds, dtype=float)}
    for key in rows[0] if rows else []:
        curve[key] = np.asarray([r[key] for r in rows])
    return curve


def mean_ap(true_labels: np.ndarray, pred_labels: np.ndarray, thresholds: Sequence[float] = DSB_THRESHOLDS) -> float:
    """The 2018 Data Science Bowl score of one image: AP(t) = TP/(TP+FP+FN) averaged over the thresholds.

    Examples
    --------
    >>> t = np.zeros((4, 4), int); t[:2, :2] = 1
    >>> p = np.zeros((4, 4), int); p[:2, :2] = 1; p[1, 1] = 0    # IoU 0.75
    >>> mean_ap(t, p)            # AP = 1 at 0.50, 0.55, ..., 0.75 (6 of 10 thresholds)
    0.6
    """
    return float(np.mean(matching_curve(true_labels, pred_labels, thresholds)["ap"]))


def count_error(true_count: int, pred_count: int) -> dict[str, float]:
    """Absolute, signed and relative error of a nucleus count; ``rel_error`` is |pred - true| / max(true, 1).

    Examples
    --------
    >>> count_error(20, 18)
    {'abs_error': 2, 'signed_error': -2, 'rel_error': 0.1}
    """
    true_count, pred_count = int(true_count), int(pred_count)
    if true_count < 0 or pred_count < 0:
        raise ValueError(f"count_error: counts must be >= 0, got true={true_count}, pred={pred_count}")
    diff = pred_count - true_count
    return {"abs_error": abs(diff), "signed_error": diff, "rel_error": abs(diff) / max(true_count, 1)}


def evaluate_instances(true_list: Sequence[np.ndarray], pred_list: Sequence[np.ndarray],
                       thresholds: Sequence[float] = DSB_THRESHOLDS) -> dict[str, float]:
    """Instance, pixel and count metrics over many pairs of label images (shapes may differ between pairs).

    Pooled scores sum TP, FP and FN over all images before the ratios are taken (each nucleus weighs the same, so
    crowded images weigh more): ``ap50``, ``f1_50``, ``precision_50``, ``recall_50``, ``ap_by_threshold`` and
    ``mean_ap`` (the mean of ``ap_by_threshold``). Per-image scores are means over the images (each image weighs
    the same): ``ap50_per_image`` and ``mean_ap_per_image``, the mean of :func:`mean_ap` over the images, which is
    the 2018 Data Science Bowl score. Also ``count_mae``, ``count_mre`` (mean absolute and relative count error per
    image), ``pixel_dice``, ``pixel_iou``, ``n_true``, ``n_pred`` and ``n_images``. ``thresholds`` must hold 0.5.

    Examples
    --------
    Three nuclei found exactly in one image, the only nucleus of a second image missed:

    >>> t = np.zeros((4, 6), int); t[0, 0], t[0, 2], t[0, 4] = 1, 2, 3
    >>> r = evaluate_instances([t, t[:, :2]], [t, 0 * t[:, :2]])
    >>> r["mean_ap"], r["mean_ap_per_image"], r["count_mae"]   # pooled 3 / (3 + 1); per image (1 + 0) / 2
    (0.75, 0.5, 0.5)
    """
    if len(true_list) != len(pred_list) or len(true_list) == 0:
        raise ValueError(f"evaluate_instances: need equally many true and predicted label images, "
                         f"got {len(true_list)} and {len(pred_list)}")
    thresholds = np.asarray(thresholds, dtype=float)
    at_half = np.flatnonzero(np.isclose(thresholds, 0.5))
    if len(at_half) == 0:
        raise ValueError("evaluate_instances: thresholds must contain 0.5")
    curves = [matching_curve(t, p, thresholds) for t, p in zip(true_list, pred_list)]
    n_true, n_pred = (sum(int(curve[key][0]) for curve in curves) for key in ("n_true", "n_pred"))
    pooled = [_scores(int(tp), n_true, n_pred, 0.0) for tp in np.sum([curve["tp"] for curve in curves], axis=0)]
    ap, at_50 = np.array([scores["ap"] for scores in pooled]), pooled[int(at_half[0])]
    per_image_ap = np.array([curve["ap"] for curve in curves])
    errors = [count_error(curve["n_true"][0], curve["n_pred"][0]) for curve in curves]
    areas = np.sum([_areas(p, t, "evaluate_instances") for t, p in zip(true_list, pred_list)], axis=0)
    pixel_dice, pixel_iou = overlap_scores(*areas.tolist())
    return {"ap50": at_50["ap"], "f1_50": at_50["f1"], "precision_50": at_50["precision"],
            "recall_50": at_50["recall"], "mean_ap": float(ap.mean()),
            "ap50_per_image": float(per_image_ap[:, int(at_half[0])].mean()),
            "mean_ap_per_image": float(per_image_ap.mean()),
            "count_mae": float(np.mean([error["abs_error"] for error in errors])),
            "count_mre": float(np.mean([error["rel_error"] for error in errors])), "pixel_dice": pixel_dice,
            "pixel_iou": pixel_iou, "n_true": n_true, "n_pred": n_pred, "n_images": len(true_list),
            "ap_by_threshold": {round(float(t), 2): float(value) for t, value in zip(thresholds, ap)}}
