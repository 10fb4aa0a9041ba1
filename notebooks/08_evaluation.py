# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Evaluation: is the model any good?
#
# After this chapter you will be able to:
# - tell pixel metrics (Dice, IoU) from instance metrics (matched nuclei, precision, recall, AP) and say when
#   each misleads;
# - match nuclei one to one by IoU and compute AP(t) = TP / (TP + FP + FN) by hand, then the 2018 Data Science
#   Bowl score: each image's AP averaged over IoU thresholds 0.50 to 0.95, then averaged over the images;
# - tell that score from the AP pooled over all nuclei, and compare the model with a classical baseline;
# - evaluate the model on your own annotated images.

# %% [markdown]
# The switch below picks the preset. Nothing is trained in this chapter: `QUICK_DEMO = True` only shrinks the
# larger synthetic test set (20 images instead of 60). Measured run times: `docs/teaching.md`.

# %%
QUICK_DEMO = False  # True: small data and a few epochs (the "fast" preset that CI uses)
import os
if QUICK_DEMO:
    os.environ["NUCLEILIB_FAST"] = "1"

# %% [markdown]
# First the result: the shipped model (the U-Net of chapter 02, trained by the project's `train` command as
# `models/README.md` records, counting as in chapter 07) and the classical baseline (Otsu threshold +
# watershed) on 16 synthetic images neither has seen.

# %% tags=["nbval-check-output"]
from nucleilib import evaluate, io, synth

made = synth.make_dataset(n=16, size=128, seed=2025)
samples = [(f"test{i}", made["images"][i], made["labels"][i]) for i in range(16)]
first = {method: evaluate.evaluate_samples(samples, evaluate.segmenter(method=method))
         for method in ("model", "baseline")}
print(f"{'':>9}{'Dice':>6}{'DSB score':>11}{'pooled mean AP':>16}{'count error':>13}")
for method, s in first.items():
    print(f"{method:>9}{s['dice']:>6.2f}{s['mean_ap_per_image']:>11.2f}{s['mean_ap']:>16.2f}"
          f"{s['count_mae']:>13.1f}")

# %% [markdown]
# The DSB score is the 2018 Data Science Bowl's: AP averaged over ten IoU thresholds for each image, then
# averaged over the images. The pooled mean AP is computed from all nuclei of the 16 images taken together; it
# is not the competition's score, and the two columns above differ. The rest of the chapter builds these scores
# from the matching of nuclei, by hand first.
#
# ## Pixel metrics
#
# Dice and IoU compare the predicted mask P with the true mask T pixel by pixel:
# Dice = 2|P∩T| / (|P| + |T|), IoU = |P∩T| / |P∪T|. A hand-worked case, a 4-pixel prediction overlapping a
# 4-pixel truth in 2 pixels, by hand with numpy and then with the library:

# %% tags=["nbval-check-output"]
import numpy as np
from nucleilib import metrics

truth = np.array([[1, 1, 1, 1, 0, 0]]) > 0
prediction = np.array([[0, 0, 1, 1, 1, 1]]) > 0
overlap = (prediction & truth).sum()
dice_by_hand = 2 * overlap / (prediction.sum() + truth.sum())
iou_by_hand = overlap / (prediction | truth).sum()
print(f"by hand: Dice {dice_by_hand:.3f} (= 2*2/(4+4)),  IoU {iou_by_hand:.3f} (= 2/6)")
print(f"library: Dice {metrics.dice(prediction, truth):.3f},  IoU {metrics.iou(prediction, truth):.3f}")
assert np.isclose(dice_by_hand, metrics.dice(prediction, truth))
assert np.isclose(iou_by_hand, metrics.iou(prediction, truth))

# %% [markdown]
# ## Why pixels are not enough
#
# Three touching nuclei predicted as one blob: every foreground pixel is right, yet the blob's IoU with each
# nucleus is only 1/3 (the matrix below), so no nucleus is found at IoU 0.5.

# %% tags=["nbval-check-output"]
true_labels = np.zeros((20, 31), int)
true_labels[5:15, 2:11], true_labels[5:15, 11:20], true_labels[5:15, 20:29] = 1, 2, 3
merged = (true_labels > 0).astype(int)
print(f"pixel Dice {metrics.dice(merged > 0, true_labels > 0):.2f}")
print("IoU of each true nucleus with the blob:", metrics.iou_matrix(true_labels, merged)[0].ravel().round(3))
print({key: round(value, 2) for key, value in metrics.matching(true_labels, merged, 0.5).items()
       if key in ("tp", "fp", "fn", "precision", "recall", "ap")})

# %% [markdown]
# Pixel Dice says 1.00; the instance counts say 0 nuclei found (TP), 3 missed (FN) and 1 false (FP).
#
# ## Matching nuclei one to one, by hand
#
# Instance metrics pair each predicted nucleus with at most one true nucleus. A hand-worked case with three true
# nuclei (1, 2, 3) and three predicted ones: one exact, one shifted by a column, one where there is no nucleus.

# %% tags=["nbval-check-output"]
toy_true = np.zeros((6, 12), int)
toy_true[0:2, 0:2], toy_true[4:6, 0:5], toy_true[0:2, 8:10] = 1, 2, 3
toy_pred = np.zeros((6, 12), int)
toy_pred[0:2, 0:2], toy_pred[4:6, 1:6], toy_pred[4:6, 8:10] = 1, 2, 3
print("true:", toy_true, "predicted:", toy_pred, sep="\n")

# %% [markdown]
# The IoU of every true nucleus (row) with every predicted one (column), from the definition, and the library's
# `metrics.iou_matrix`, which computes all of them at once from a joint histogram:

# %% tags=["nbval-check-output"]
ious = np.zeros((3, 3))
for i in (1, 2, 3):
    for j in (1, 2, 3):
        both = ((toy_true == i) & (toy_pred == j)).sum()
        ious[i - 1, j - 1] = both / ((toy_true == i) | (toy_pred == j)).sum()
print(ious.round(3))
assert np.allclose(ious, metrics.iou_matrix(toy_true, toy_pred)[0])

# %% [markdown]
# At an IoU threshold t, pairs are chosen so that as many as possible have IoU >= t (an optimal assignment,
# `scipy.optimize.linear_sum_assignment`). A chosen pair is a true positive (TP), an unpaired true nucleus a
# miss (FN), an unpaired prediction a false positive (FP). The Data Science Bowl's AP(t) = TP / (TP + FP + FN):

# %% tags=["nbval-check-output"]
from scipy.optimize import linear_sum_assignment


def match_by_hand(ious, t):
    """TP, FP, FN and AP(t) of one image from its IoU matrix (true nuclei x predicted nuclei)."""
    rows, cols = linear_sum_assignment((ious >= t).astype(float), maximize=True)
    tp = int((ious[rows, cols] >= t).sum())
    fp, fn = ious.shape[1] - tp, ious.shape[0] - tp
    return tp, fp, fn, tp / (tp + fp + fn)


for t in (0.5, 0.7):
    print(f"t = {t}: TP, FP, FN, AP(t) =", match_by_hand(ious, t))

# %% [markdown]
# At t = 0.5 the shifted nucleus (IoU 0.667) counts: AP = 2 / (2 + 1 + 1) = 0.5. At t = 0.7 it does not, and
# it is then a miss *and* a false detection at once: AP = 1 / (1 + 2 + 2) = 0.2. The library's `matching`
# agrees, and `matched_pairs` lists the pairs it chose:

# %% tags=["nbval-check-output"]
print("pairs (true id, predicted id, IoU) at t = 0.5:", metrics.matched_pairs(toy_true, toy_pred, 0.5))
for t in (0.5, 0.7):
    m = metrics.matching(toy_true, toy_pred, t)
    assert (m["tp"], m["fp"], m["fn"], m["ap"]) == match_by_hand(ious, t)
    print(f"t = {t}: library TP {m['tp']}, FP {m['fp']}, FN {m['fn']}, AP(t) {m['ap']:.2f}")

# %% [markdown]
# (The competition's rules call a pair a hit when its IoU is *greater than* t; the library counts IoU >= t.
# The two differ only for an IoU exactly on a threshold, which the shifted nucleus avoids.)
#
# ## One image's score: AP averaged over the IoU thresholds
#
# At t = 0.5 a match needs only a rough outline; at 0.95 an almost exact one. The image's score averages AP(t)
# over t = 0.50, 0.55, ..., 0.95, so it rewards precise outlines:

# %% tags=["nbval-check-output"]
per_threshold = [match_by_hand(ious, t)[3] for t in metrics.DSB_THRESHOLDS]
print({float(t): round(ap, 2) for t, ap in zip(metrics.DSB_THRESHOLDS, per_threshold)})
toy_score = float(np.mean(per_threshold))
print(f"mean AP of this image: by hand {toy_score:.3f}, library {metrics.mean_ap(toy_true, toy_pred):.3f}")
assert np.isclose(toy_score, metrics.mean_ap(toy_true, toy_pred))

# %% [markdown]
# Four thresholds (0.50 to 0.65) keep the shifted nucleus and six do not: (4 × 0.5 + 6 × 0.2) / 10 = 0.32.
#
# ## Many images: the per-image mean (the DSB score) and the pooled AP
#
# The 2018 Data Science Bowl scored a test set by the **mean of the per-image scores**: every image weighs the
# same. The other way is to **pool**: sum TP, FP and FN over all images at each t, then take the ratio; every
# nucleus weighs the same. Add a crowded image whose 12 nuclei are all found exactly, and compute both by hand:

# %% tags=["nbval-check-output"]
crowded = np.zeros((12, 24), int)
for k in range(12):
    crowded[(k // 6) * 6 : (k // 6) * 6 + 3, (k % 6) * 4 : (k % 6) * 4 + 3] = k + 1
pair_true, pair_pred = [toy_true, crowded], [toy_pred, crowded]
image_scores = [metrics.mean_ap(t, p) for t, p in zip(pair_true, pair_pred)]
pooled = []
for t in metrics.DSB_THRESHOLDS:
    tp, fp, fn = np.sum([match_by_hand(metrics.iou_matrix(a, b)[0], t)[:3] for a, b in zip(pair_true, pair_pred)], 0)
    pooled.append(tp / (tp + fp + fn))
print("per-image scores", np.round(image_scores, 3), "-> their mean, the DSB score:", round(np.mean(image_scores), 3))
print("pooled AP(t)", np.round(pooled, 3), "-> pooled mean AP:", round(np.mean(pooled), 3))

# %% [markdown]
# The library's `evaluate_instances` returns both, under names that say which is which:

# %% tags=["nbval-check-output"]
both = metrics.evaluate_instances(pair_true, pair_pred)
print(f"mean_ap_per_image (DSB score) {both['mean_ap_per_image']:.3f},  mean_ap (pooled) {both['mean_ap']:.3f}")
assert np.isclose(both["mean_ap_per_image"], np.mean(image_scores)) and np.isclose(both["mean_ap"], np.mean(pooled))

# %% [markdown]
# Pooled, the 12 easy nuclei of the crowded image outweigh the 3 of the hard one, so the pooled mean AP (0.809)
# is above the DSB score (0.660). Neither is wrong: the per-image mean asks "how good is a typical field of
# view?", the pooled one "how good is a typical nucleus?". But only the first is the competition's score. The
# same holds for AP@0.5: the library's `ap50` is pooled, `ap50_per_image` the per-image mean.
#
# ## Misses and false positives on a test image
#
# The same matching on one of the 16 test images, chosen because it has both misses and false detections:

# %%
from nucleilib import data, viz

model_segment = evaluate.segmenter(method="model")
name, image, image_true = samples[9]
predicted = model_segment(image)
pairs = metrics.matched_pairs(image_true, predicted, 0.5)
missed = sorted(set(np.unique(image_true).tolist()) - {0} - {t for t, _, _ in pairs})
false = sorted(set(np.unique(predicted).tolist()) - {0} - {p for _, p, _ in pairs})
print(f"{name}: {len(pairs)} matched, {len(missed)} missed, {len(false)} false")
under_false = set()
for p in false:
    under = sorted(set(np.unique(image_true[predicted == p]).tolist()) - {0})
    under_false |= set(under)
    print(f"false nucleus {p} covers true nuclei {under}; missed among them: {sorted(set(under) & set(missed))}")
assert missed and false and set(missed) <= under_false

# %% [markdown]
# Matched predictions in green, missed true nuclei in red, false predictions in yellow; panel (b) enlarges the
# largest false one:

# %%
import matplotlib.pyplot as plt

panel = viz.matching_figure(data.normalize_image(image), image_true, predicted)
rgb, title = panel.axes[0].images[0].get_array(), panel.axes[0].get_title()
plt.close(panel)
ys, xs = np.nonzero(predicted == max(false, key=lambda p: (predicted == p).sum()))
y0, x0 = max(ys.min() - 6, 0), max(xs.min() - 6, 0)
fig, (ax_all, ax_zoom) = plt.subplots(1, 2, figsize=(9.5, 4.8))
ax_all.imshow(rgb); ax_all.set_title(f"(a) {name}. {title}", fontsize=8)
ax_all.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), xs.max() + 7 - x0, ys.max() + 7 - y0, fill=False, ec="white"))
ax_zoom.imshow(rgb[y0 : ys.max() + 7, x0 : xs.max() + 7])
ax_zoom.set_title("(b) the white box: one false blob (yellow) over missed nuclei (red)", fontsize=8)
for ax in (ax_all, ax_zoom):
    ax.axis("off")
viz.save_figure(fig, "08_matching.png")

# %% [markdown]
# Every miss on this image lies under a false blob (asserted above), and each false blob covers several true
# nuclei (printed): neighbouring nuclei predicted as one, as in the hand-made three-nucleus example. Each such merge costs one false positive and several misses at once.

# %% [markdown]
# ## Scores against the IoU threshold
#
# The predictions of both methods on the 16 images, kept for the curves below and for the exercises:

# %%
baseline_segment = evaluate.segmenter(method="baseline")
predictions = {"U-Net (shipped)": [model_segment(im) for _, im, _ in samples],
               "Otsu + watershed": [baseline_segment(im) for _, im, _ in samples]}
sample_true = [labels for _, _, labels in samples]

# %% [markdown]
# AP(t) against t. Solid: the mean over the images of each image's AP(t), built from `matching_curve` (its
# average over t is the DSB score, checked against the library). Dashed: the pooled AP(t) of the library.

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.8))
for (label, preds), colour in zip(predictions.items(), ("tab:blue", "tab:orange")):
    per_image = np.mean([metrics.matching_curve(t, p)["ap"] for t, p in zip(sample_true, preds)], axis=0)
    scores = metrics.evaluate_instances(sample_true, preds)
    pooled_curve = np.array(list(scores["ap_by_threshold"].values()))
    assert np.isclose(per_image.mean(), scores["mean_ap_per_image"])
    ax.plot(metrics.DSB_THRESHOLDS, per_image, "o-", color=colour, label=f"{label}, per-image mean")
    ax.plot(metrics.DSB_THRESHOLDS, pooled_curve, "--", color=colour, label=f"{label}, pooled")
    print(f"{label}: per-image AP(t) {per_image[0]:.2f} at 0.5, {per_image[-1]:.2f} at 0.95; DSB score "
          f"{per_image.mean():.3f}, pooled mean AP {pooled_curve.mean():.3f}; "
          f"per-image curve >= pooled at every t: {bool(np.all(per_image >= pooled_curve))}")
ax.set(xlabel="IoU threshold t", ylabel="AP(t) = TP / (TP + FP + FN)", ylim=(0, 1.02)); ax.legend(fontsize=7)
viz.save_figure(fig, "08_ap_curve.png")

# %% [markdown]
# For both methods AP(t) falls from t = 0.5 to 0.95 (outlines good enough for a rough match are not exact), and
# the per-image curve lies on or above the pooled one at every threshold, as printed above.

# %% [markdown]
# ## A larger test: the model against the baseline
#
# More held-out synthetic images (60, or 20 with the quick demo), every metric of `evaluate_samples`, side by
# side. "pooled" rows count the nuclei of all images together; "per image" rows are means over the images.

# %%
from nucleilib.presets import preset

n_test = max(16, preset()["n_images"] // 10)
made = synth.make_dataset(n=n_test, size=128, seed=4242)
test_samples = [(f"t{i}", made["images"][i], made["labels"][i]) for i in range(n_test)]
table = {method: evaluate.evaluate_samples(test_samples, evaluate.segmenter(method=method))
         for method in ("model", "baseline")}
rows = {"dice": "pixel Dice", "iou": "pixel IoU", "precision_50": "precision@0.5, pooled",
        "recall_50": "recall@0.5, pooled", "f1_50": "F1@0.5, pooled", "ap50": "AP@0.5, pooled",
        "ap50_per_image": "AP@0.5, per image", "mean_ap": "mean AP, pooled",
        "mean_ap_per_image": "DSB score (mean AP per image)", "count_mae": "count error (nuclei/image)"}
print(f"{n_test} images\n{'':>30}{'model':>8}{'baseline':>10}")
for key, label in rows.items():
    print(f"{label:>30}{table['model'][key]:>8.3f}{table['baseline'][key]:>10.3f}")

# %% [markdown]
# Two checks on this table: is the model ahead on every row, and are the images with more nuclei than the median
# the harder ones for the model?

# %%
ahead = [key for key in rows if (table["model"][key] < table["baseline"][key]) == (key == "count_mae")]
print(f"model ahead of the baseline on {len(ahead)} of {len(rows)} rows")
assert ahead == list(rows)
test_true = [labels for _, _, labels in test_samples]
test_pred = [model_segment(image) for _, image, _ in test_samples]
n_nuclei = np.array([len(np.unique(labels)) - 1 for labels in test_true])
score = np.array([metrics.mean_ap(t, p) for t, p in zip(test_true, test_pred)])
busy, median = n_nuclei > np.median(n_nuclei), np.median(n_nuclei)
print(f"model's mean AP per image: {score[busy].mean():.3f} on the {busy.sum()} images with more than {median:.0f} "
      f"nuclei, {score[~busy].mean():.3f} on the other {(~busy).sum()}")
assert score[busy].mean() < score[~busy].mean()

# %% [markdown]
# The model is ahead on every row. Its images with more nuclei score lower (printed above), and pooling weighs
# each image by its number of nuclei: one reason why the pooled mean AP is below the DSB score in the table.

# %% [markdown]
# ## A failure gallery
#
# Averages hide the worst cases. The four test images where the model's AP@0.5 is lowest, with their counts,
# outlined as in the matching figure (green matched, red missed, yellow false):

# %%
ranked = sorted((metrics.matching(true, predicted)["ap"], name, image, true, predicted)
                for (name, image, true), predicted in zip(test_samples, test_pred))
worst = ranked[:4]
median_area = np.median(np.concatenate([np.unique(labels[labels > 0], return_counts=True)[1] for labels in test_true]))
print(f"median nucleus area of the test set: {median_area:.0f} px")
for ap, name, image, true, predicted in worst:
    m = metrics.matching(true, predicted)
    found = {t for t, _, _ in metrics.matched_pairs(true, predicted)}
    missed_areas = [int((true == i).sum()) for i in np.unique(true) if i and i not in found]
    print(f"{name}: AP@0.5 {ap:.2f}, {m['tp']} matched, {m['fn']} missed ({missed_areas} px), {m['fp']} false")
    assert max(missed_areas, default=0) < median_area

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
for ax, (ap, name, image, true, predicted) in zip(axes, worst):
    panel = viz.matching_figure(data.normalize_image(image), true, predicted, title=f"{name}: AP@0.5 {ap:.2f}")
    ax.imshow(panel.axes[0].images[0].get_array()); ax.set_title(panel.axes[0].get_title(), fontsize=8)
    ax.axis("off"); plt.close(panel)
    found = {t for t, _, _ in metrics.matched_pairs(true, predicted)}
    for i in [i for i in np.unique(true) if i and i not in found]:  # circle each miss: its outline is thin
        ys, xs = np.nonzero(true == i)
        ax.add_patch(plt.Circle((xs.mean(), ys.mean()), 9, fill=False, ec="red", lw=1.5))
viz.save_figure(fig, "08_failures.png")

# %% [markdown]
# In each of these images every missed nucleus is smaller than the median nucleus of the test set (printed and
# asserted above): the misses, circled in red in the gallery, are small nuclei.

# %% [markdown]
# ## On real images
#
# Synthetic test images are easy to make but they are not the goal: the shipped model is meant for real
# fluorescence nuclei. The next cell computes nothing: it prints numbers stored beside the model. They were
# measured once, with the `evaluate` commands listed in `models/README.md` (`--method baseline` for the baseline
# rows), on the held-out part of real annotated images (2018 Data Science Bowl stage1_train and BBBC039, both
# CC0: the held-out part of a seeded split by image, see `models/README.md`; the images are not in this
# repository) and on 200 synthetic
# images (`make-data --seed 1`). Each file is the command's JSON output.

# %% tags=["nbval-check-output"]
import json

stored = {path.stem[5:]: json.loads(path.read_text())
          for path in sorted((io.project_root() / "models").glob("eval_*.json"))}
print(f"{'stored in models/eval_*.json':>28}{'Dice':>7}{'AP@0.5 pooled':>15}{'DSB score':>11}{'mean AP pooled':>16}")
for name, s in stored.items():
    print(f"{name:>28}{s['dice']:>7.3f}{s['ap50']:>15.3f}{s['mean_ap_per_image']:>11.3f}{s['mean_ap']:>16.3f}")
assert all(s["mean_ap_per_image"] > s["mean_ap"] for s in stored.values())

# %% [markdown]
# On every stored row the DSB score (the competition's, per image) is above the pooled mean AP (asserted above);
# in these files `mean_ap` is the pooled score and `mean_ap_per_image` the DSB score.
#
# ## Your own annotated images
#
# Put images and label images (instance ids, or binary masks) with the same file stems into `images/` and
# `labels/`, then:
#
# ```bash
# python -m nucleilib evaluate --data my_annotated_folder/                     # the shipped model
# python -m nucleilib evaluate --data my_annotated_folder/ --method baseline   # Otsu + watershed
# python -m nucleilib evaluate --data stage1_train/ --split test                # DSB 2018 layout, held-out part
# python -m nucleilib evaluate --data BBBC039/ --layout bbbc039 --split test
# ```
#
# The same from Python, on a folder this cell writes:

# %%
import tempfile
from pathlib import Path

import tifffile

folder = Path(tempfile.mkdtemp())
(folder / "images").mkdir(); (folder / "labels").mkdir()
for name, image, true in test_samples[:3]:
    tifffile.imwrite(folder / "images" / f"{name}.tif", image)
    tifffile.imwrite(folder / "labels" / f"{name}.tif", true.astype(np.uint16))
print({key: value for key, value in evaluate.evaluate_path(folder, progress=False).items() if key in rows})

# %% [markdown]
# ## In this chapter we
# - computed Dice and IoU by hand and saw pixel metrics call a merged blob of nuclei perfect;
# - matched nuclei one to one by IoU, counted TP, FP and FN, and computed AP(t) and one image's mean AP by hand,
#   then checked them against `metrics`;
# - built the 2018 Data Science Bowl score (the mean of per-image mean APs) and the pooled mean AP, and saw them
#   differ;
# - compared the shipped U-Net with Otsu + watershed, looked at its worst images, and read its stored scores on
#   real images;
# - evaluated annotated images from a folder, as you would your own.

# %% [markdown]
# ## Exercises
# 1. Write `dsb_score(true_list, pred_list)`, the 2018 Data Science Bowl score of lists of label images, using
#    only `metrics.matched_pairs` (for TP) and the numbers of true and predicted nuclei (for FN and FP): for each
#    image, AP(t) = TP / (TP + FP + FN) at each t in `metrics.DSB_THRESHOLDS`, averaged over t; then the mean
#    over the images. An image with no true and no predicted nuclei scores 1. The cell after the solution checks
#    your function against the library.
# 2. Change the two-image example so that the pooled mean AP is *below* the DSB score.
# 3. Evaluate the model with `split=False` (no splitting of touching nuclei, chapter 07). Which metrics change,
#    and which hardly move?
# 4. At which IoU threshold does the baseline's per-image mean AP(t) fall below 0.5 on `samples`?

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
def dsb_score(true_list, pred_list):
    image_scores = []
    for true_labels, pred_labels in zip(true_list, pred_list):
        n_true = len(np.unique(true_labels[true_labels > 0]))
        n_pred = len(np.unique(pred_labels[pred_labels > 0]))
        aps = []
        for t in metrics.DSB_THRESHOLDS:
            tp = len(metrics.matched_pairs(true_labels, pred_labels, t))
            fp, fn = n_pred - tp, n_true - tp
            aps.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
        image_scores.append(np.mean(aps))
    return float(np.mean(image_scores))

# %% tags=["exercise-check"]
empty = np.zeros((8, 8), int)
for true_list, pred_list in [(pair_true, pair_pred), (sample_true, predictions["U-Net (shipped)"]),
                             (test_true, test_pred), ([empty, toy_true], [empty, toy_pred])]:
    expected = metrics.evaluate_instances(true_list, pred_list)["mean_ap_per_image"]
    assert np.isclose(dsb_score(true_list, pred_list), expected), (dsb_score(true_list, pred_list), expected)
print("dsb_score agrees with metrics.evaluate_instances(...)['mean_ap_per_image']")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
# Make the crowded image the hard one: all 12 of its nuclei missed.
swapped = metrics.evaluate_instances(pair_true, [toy_pred, 0 * crowded])
print(f"DSB score {swapped['mean_ap_per_image']:.3f}, pooled mean AP {swapped['mean_ap']:.3f}")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
no_split = evaluate.evaluate_samples(test_samples, evaluate.segmenter(split=False))
print({key: (table["model"][key], no_split[key]) for key in ("dice", "ap50", "mean_ap_per_image", "count_mae")})

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
baseline_curve = np.mean([metrics.matching_curve(t, p)["ap"]
                          for t, p in zip(sample_true, predictions["Otsu + watershed"])], axis=0)
print({float(t): round(float(ap), 3) for t, ap in zip(metrics.DSB_THRESHOLDS, baseline_curve)})
print("below 0.5 from IoU", next((float(t) for t, ap in zip(metrics.DSB_THRESHOLDS, baseline_curve) if ap < 0.5),
                                 "never"))
