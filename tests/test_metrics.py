"""Tests of nucleilib.metrics: hand-worked matching cases and the IoU matrix against brute force."""

import numpy as np
import pytest

from nucleilib import metrics


def squares(shape, boxes):
    """Label image with one rectangle per (id, y0, y1, x0, x1)."""
    labels = np.zeros(shape, np.int32)
    for label_id, y0, y1, x0, x1 in boxes:
        labels[y0:y1, x0:x1] = label_id
    return labels


TRUE = squares((20, 20), [(1, 0, 4, 0, 4), (2, 10, 14, 10, 14)])


def test_perfect_match():
    m = metrics.matching(TRUE, TRUE)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == m["ap"] == m["mean_matched_iou"] == 1.0
    assert metrics.mean_ap(TRUE, TRUE) == 1.0


def test_shifted_square_fails_at_half_but_counts_at_lower_threshold():
    # shift the second 4x4 square by 2 columns: IoU = 8 / 24 = 1/3
    pred = squares((20, 20), [(1, 0, 4, 0, 4), (2, 10, 14, 12, 16)])
    m = metrics.matching(TRUE, pred, 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)
    assert m["ap"] == pytest.approx(1 / 3)
    assert metrics.matching(TRUE, pred, 1 / 3)["tp"] == 2  # threshold is inclusive
    assert metrics.matching(TRUE, pred, 0.34)["tp"] == 1


def test_threshold_inclusive_at_exactly_half():
    true = squares((4, 4), [(1, 0, 2, 0, 2)])
    pred = squares((4, 4), [(1, 0, 2, 0, 1)])  # IoU exactly 0.5
    assert metrics.matching(true, pred, 0.5)["tp"] == 1


def test_one_missed_and_one_false():
    missed = squares((20, 20), [(1, 0, 4, 0, 4)])
    m = metrics.matching(TRUE, missed)
    assert (m["tp"], m["fp"], m["fn"], m["recall"], m["precision"]) == (1, 0, 1, 0.5, 1.0)
    extra = squares((20, 20), [(1, 0, 4, 0, 4), (2, 10, 14, 10, 14), (3, 16, 19, 0, 3)])
    m = metrics.matching(TRUE, extra)
    assert (m["tp"], m["fp"], m["fn"], m["precision"], m["recall"]) == (2, 1, 0, 2 / 3, 1.0)
    assert m["ap"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.8)


def test_empty_images():
    empty = np.zeros((5, 5), np.int32)
    m = metrics.matching(empty, empty)
    assert all(m[k] == 1.0 for k in ("precision", "recall", "f1", "ap", "mean_matched_iou"))
    assert metrics.mean_ap(empty, empty) == 1.0
    m = metrics.matching(empty, TRUE[:5, :5])  # only false positives
    assert (m["fp"], m["precision"], m["ap"]) == (1, 0.0, 0.0)
    m = metrics.matching(TRUE[:5, :5], empty)  # only misses
    assert (m["fn"], m["recall"], m["ap"]) == (1, 0.0, 0.0)


def test_non_sequential_ids_give_the_same_result():
    renamed_true = np.select([TRUE == 1, TRUE == 2], [1000, 7], 0)
    renamed_pred = np.select([TRUE == 1, TRUE == 2], [3, 65000], 0).astype(np.uint16)
    m = metrics.matching(renamed_true, renamed_pred)
    assert (m["tp"], m["n_true"], m["n_pred"]) == (2, 2, 2)


def test_merged_nuclei_are_one_hit_and_one_miss():
    true = squares((10, 20), [(1, 0, 6, 0, 6), (2, 0, 6, 6, 10)])  # areas 36 and 24
    merged = (true > 0).astype(np.int32)  # one predicted nucleus covering both: IoU 36/60 and 24/60
    m = metrics.matching(true, merged, 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1)


def test_assignment_is_optimal_below_half():
    # IoUs: true 2 / pred 1 = 2/4 (the best pair), true 1 / pred 1 = 1/3, true 2 / pred 2 = 1/3.
    # At threshold 0.3 a greedy best-pair-first match finds 1; the optimal assignment finds 2.
    true = np.array([[1, 2, 2, 2]])
    pred = np.array([[1, 1, 1, 2]])
    ious, _, _ = metrics.iou_matrix(true, pred)
    np.testing.assert_allclose(ious, [[1 / 3, 0], [0.5, 1 / 3]])
    assert metrics.matching(true, pred, 0.3)["tp"] == 2
    assert metrics.matching(true, pred, 0.5)["tp"] == 1


def brute_force_iou(true, pred):
    true_ids = [i for i in np.unique(true) if i]
    pred_ids = [i for i in np.unique(pred) if i]
    out = np.zeros((len(true_ids), len(pred_ids)))
    for r, t in enumerate(true_ids):
        for c, p in enumerate(pred_ids):
            out[r, c] = metrics.iou(pred == p, true == t)
    return out


def test_iou_matrix_matches_brute_force_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(5):
        true = rng.choice([0, 3, 5, 9, 40], size=(12, 15), p=[0.4, 0.15, 0.15, 0.15, 0.15])
        pred = rng.choice([0, 1, 2, 77], size=(12, 15))
        ious, true_ids, pred_ids = metrics.iou_matrix(true, pred)
        assert true_ids.tolist() == [3, 5, 9, 40] and pred_ids.tolist() == [1, 2, 77]
        np.testing.assert_allclose(ious, brute_force_iou(true, pred))


def test_iou_matrix_without_background_pixels():
    true = np.array([[1, 1], [2, 2]])
    ious, _, _ = metrics.iou_matrix(true, true)
    np.testing.assert_allclose(ious, np.eye(2))


def test_dice_and_iou_of_masks():
    a = np.zeros((4, 4)); a[:2] = 1
    b = np.zeros((4, 4)); b[1:3] = 1
    assert metrics.dice(a, b) == pytest.approx(0.5)
    assert metrics.iou(a, b) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.dice(a, b[:3])


def test_bad_input_raises():
    with pytest.raises(ValueError, match="integer"):
        metrics.matching(TRUE.astype(float), TRUE)
    with pytest.raises(ValueError, match="iou_threshold"):
        metrics.matching(TRUE, TRUE, 1.5)
    with pytest.raises(ValueError, match="negative"):
        metrics.matching(-TRUE, TRUE)
    with pytest.raises(ValueError, match="counts"):
        metrics.count_error(-1, 3)


def test_mean_ap_and_curve():
    true = squares((4, 4), [(1, 0, 2, 0, 2)])
    pred = squares((4, 4), [(1, 0, 2, 0, 1)])  # IoU 0.5: AP is 1 only at t = 0.5
    curve = metrics.matching_curve(true, pred)
    assert curve["ap"].tolist() == [1.0] + [0.0] * 9
    assert metrics.mean_ap(true, pred) == pytest.approx(0.1)


def test_count_error():
    assert metrics.count_error(10, 13) == {"abs_error": 3, "signed_error": 3, "rel_error": 0.3}
    assert metrics.count_error(0, 2)["rel_error"] == 2.0


def test_evaluate_instances_pools_counts_over_images():
    missed = squares((20, 20), [(1, 0, 4, 0, 4)])
    empty = np.zeros((20, 20), np.int32)
    r = metrics.evaluate_instances([TRUE, TRUE, empty], [TRUE, missed, empty])
    # pooled: TP 3, FN 1 -> AP 0.75; per image: 1, 0.5, 1 -> 5/6
    assert r["ap50"] == pytest.approx(0.75)
    assert r["ap50_per_image"] == pytest.approx(5 / 6)
    assert (r["recall_50"], r["precision_50"]) == (0.75, 1.0)
    assert r["count_mae"] == pytest.approx(1 / 3)
    assert r["count_mre"] == pytest.approx(0.5 / 3)
    assert (r["n_true"], r["n_pred"], r["n_images"]) == (4, 3, 3)
    with pytest.raises(ValueError, match="equally many"):
        metrics.evaluate_instances([TRUE], [])


def test_pooled_and_per_image_mean_ap_differ():
    # Image A: three nuclei found exactly. Image B: one nucleus found with IoU 0.5 (AP 1 at t = 0.5 only).
    crowded = squares((20, 20), [(1, 0, 4, 0, 4), (2, 10, 14, 10, 14), (3, 0, 4, 10, 14)])
    one, one_loose = squares((4, 4), [(1, 0, 2, 0, 2)]), squares((4, 4), [(1, 0, 2, 0, 1)])
    r = metrics.evaluate_instances([crowded, one], [crowded, one_loose])
    # per image: mean AP 1.0 and 0.1 -> 0.55, the 2018 Data Science Bowl score
    assert r["mean_ap_per_image"] == pytest.approx(0.55)
    assert r["mean_ap_per_image"] == pytest.approx(np.mean([metrics.mean_ap(crowded, crowded),
                                                            metrics.mean_ap(one, one_loose)]))
    # pooled: 4 TP at t = 0.5 -> 1.0; above it 3 TP, 1 FP, 1 FN -> 3/5; mean (1 + 9 * 0.6) / 10 = 0.64
    assert r["ap_by_threshold"][0.5] == 1.0 and r["ap_by_threshold"][0.55] == pytest.approx(0.6)
    assert r["mean_ap"] == pytest.approx(0.64)
    assert (r["ap50"], r["ap50_per_image"]) == (1.0, 1.0)


def dense_matching(true, pred, threshold):
    """The matching as it was before the sparse IoU: one assignment over the dense IoU matrix (the reference)."""
    from scipy.optimize import linear_sum_assignment

    ious = metrics.iou_matrix(true, pred)[0]
    ok = ious >= threshold
    rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
    if len(rows) == 0:
        return 0, 0.0
    sub, sub_ok = ious[np.ix_(rows, cols)], ok[np.ix_(rows, cols)]
    r, c = linear_sum_assignment(sub_ok + sub_ok * sub / (2 * min(sub_ok.shape)), maximize=True)
    matched = sub_ok[r, c]
    return int(matched.sum()), float(sub[r, c][matched].sum())


def random_boxes(rng, n, size=40):
    labels = np.zeros((size, size), np.int32)
    for label_id in rng.permutation(np.arange(1, n + 1) * 7):
        y, x, h, w = rng.integers(0, size - 6, 2).tolist() + rng.integers(2, 9, 2).tolist()
        labels[y : y + h, x : x + w] = label_id
    return labels


def test_sparse_matching_gives_the_numbers_of_the_dense_assignment():
    rng = np.random.default_rng(1)
    for _ in range(40):
        true, pred = random_boxes(rng, 15), random_boxes(rng, 12)
        for threshold in (0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.75, 0.95):
            m = metrics.matching(true, pred, threshold)
            tp, iou_sum = dense_matching(true, pred, threshold)
            assert m["tp"] == tp and m["mean_matched_iou"] == pytest.approx(iou_sum / tp if tp else m["mean_matched_iou"])
            pairs = metrics.matched_pairs(true, pred, threshold)
            assert len(pairs) == tp and sum(iou for _, _, iou in pairs) == pytest.approx(iou_sum, abs=1e-3)


def test_a_dense_scene_of_70000_nuclei_is_scored_in_bounded_memory():
    """Issue 14: 70,000 annotated nuclei needed a 36 GiB dense IoU matrix; here under a 2 GiB address-space limit."""
    import subprocess
    import sys

    code = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
import numpy as np
from nucleilib import metrics
true = np.zeros((1060, 1060), np.int32)
ids = np.arange(1, 265 * 265 + 1).reshape(265, 265)
for dy in range(3):
    for dx in range(3):
        true[dy:1060:4, dx:1060:4] = ids
pred = np.roll(true, 1, axis=1)  # every nucleus found, shifted by one pixel: IoU 6/12
scores = metrics.evaluate_instances([true], [pred])
print(scores["n_true"], scores["ap50"], scores["ap_by_threshold"][0.55])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-300:]
    assert result.stdout.split() == ["70225", "1.0", "0.0"]
