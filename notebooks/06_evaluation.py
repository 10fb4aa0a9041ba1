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
# # 06 · Evaluation: is the model any good?
#
# After this chapter you will be able to:
# - tell pixel metrics (Dice, IoU) from instance metrics (matched nuclei, precision, recall, AP) and say when
#   each misleads;
# - compute the 2018 Data Science Bowl score, AP averaged over IoU thresholds 0.50 to 0.95;
# - compare a model with the classical baseline a user would otherwise pick, and look at its failures;
# - evaluate the model on your own annotated images.

# %% [markdown]
# First the result: the shipped model and the classical baseline (Otsu threshold + watershed) on 16 synthetic
# images neither has seen.

# %% tags=["nbval-check-output"]
from nucleilib import evaluate, io, synth

made = synth.make_dataset(n=16, size=128, seed=2025)
samples = [(f"test{i}", made["images"][i], made["labels"][i]) for i in range(16)]
for method in ("model", "baseline"):
    scores = evaluate.evaluate_samples(samples, evaluate.segmenter(method=method))
    print(f"{method:>8}: Dice {scores['dice']:.2f}  AP@0.5 {scores['ap50']:.2f}  "
          f"DSB score {scores['mean_ap']:.2f}  count error {scores['count_mae']:.1f} nuclei/image")

# %% [markdown]
# The rest of the chapter explains each of these numbers.
#
# ## Pixel metrics
#
# Dice and IoU compare the predicted mask with the true mask pixel by pixel:
# Dice = 2|P∩T| / (|P| + |T|), IoU = |P∩T| / |P∪T|. A hand-worked case: a 4-pixel prediction overlapping a
# 4-pixel truth in 2 pixels.

# %% tags=["nbval-check-output"]
import numpy as np
from nucleilib import metrics

truth = np.array([[1, 1, 1, 1, 0, 0]])
prediction = np.array([[0, 0, 1, 1, 1, 1]])
print(f"Dice {metrics.dice(prediction, truth):.3f} (= 2*2/(4+4)),  IoU {metrics.iou(prediction, truth):.3f} (= 2/6)")

# %% [markdown]
# ## Why pixels are not enough
#
# Three touching nuclei predicted as one blob: every pixel is right, yet the blob overlaps each nucleus with an
# IoU of only 1/3, so no nucleus is found. Pixel Dice says "perfect"; the instance metrics do not.

# %% tags=["nbval-check-output"]
true_labels = np.zeros((20, 31), int)
true_labels[5:15, 2:11], true_labels[5:15, 11:20], true_labels[5:15, 20:29] = 1, 2, 3
merged = (true_labels > 0).astype(int)
print(f"pixel Dice {metrics.dice(merged > 0, true_labels > 0):.2f}")
print({key: round(value, 2) for key, value in metrics.matching(true_labels, merged, 0.5).items()
       if key in ("tp", "fp", "fn", "precision", "recall", "ap")})

# %% [markdown]
# ## Matching nuclei one to one
#
# Each predicted nucleus is paired with at most one true nucleus, by an optimal assignment on their IoU
# (`scipy.optimize.linear_sum_assignment`). At a threshold t, a pair with IoU >= t is a true positive (TP); an
# unpaired true nucleus is missed (FN), an unpaired prediction is false (FP). Then precision = TP/(TP+FP),
# recall = TP/(TP+FN), and the Data Science Bowl's AP(t) = TP/(TP+FP+FN). On one test image:

# %%
from nucleilib import data, viz

model_segment = evaluate.segmenter(method="model")
name, image, true = samples[3]
predicted = model_segment(image)
fig = viz.matching_figure(data.normalize_image(image), true, predicted)
viz.save_figure(fig, "06_matching.png")

# %% [markdown]
# ## Scores against the IoU threshold
#
# At IoU 0.5 a match needs only a rough outline; at 0.9 it needs an almost exact one. The DSB score averages
# AP over t = 0.50, 0.55, ..., 0.95, so it rewards precise outlines. The curves of both methods on the same
# images:

# %%
import matplotlib.pyplot as plt

baseline_segment = evaluate.segmenter(method="baseline")
fig, ax = plt.subplots(figsize=(5, 3.5))
for method, segment in [("U-Net (shipped)", model_segment), ("Otsu + watershed", baseline_segment)]:
    curve = evaluate.evaluate_samples(samples, segment)["ap_by_threshold"]
    ax.plot(list(curve), list(curve.values()), marker="o", label=method)
ax.set(xlabel="IoU threshold t", ylabel="AP(t) = TP / (TP + FP + FN)", ylim=(0, 1))
ax.legend()
viz.save_figure(fig, "06_ap_curve.png")

# %% [markdown]
# ## A larger test: the model against the baseline
#
# More held-out synthetic images (their number follows the preset), every metric, side by side.

# %%
from nucleilib.presets import preset

n_test = max(16, preset()["n_images"] // 10)
made = synth.make_dataset(n=n_test, size=128, seed=4242)
test_samples = [(f"t{i}", made["images"][i], made["labels"][i]) for i in range(n_test)]
table = {method: evaluate.evaluate_samples(test_samples, evaluate.segmenter(method=method))
         for method in ("model", "baseline")}
keys = ["dice", "iou", "precision_50", "recall_50", "f1_50", "ap50", "mean_ap", "count_mae", "count_mre"]
print(f"{n_test} images\n{'':>13}{'model':>9}{'baseline':>10}")
for key in keys:
    print(f"{key:>13}{table['model'][key]:>9.3f}{table['baseline'][key]:>10.3f}")

# %% [markdown]
# ## A failure gallery
#
# Averages hide the worst cases. The four test images where the model's AP@0.5 is lowest, with matched (green),
# missed (red) and false (yellow) nuclei:

# %%
per_image = []
for name, image, true in test_samples:
    predicted = model_segment(image)
    per_image.append((metrics.matching(true, predicted)["ap"], name, image, true, predicted))
worst = sorted(per_image, key=lambda item: item[0])[:4]
print([(name, round(ap, 2)) for ap, name, *_ in worst])

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
for ax, (ap, name, image, true, predicted) in zip(axes, worst):
    panel = viz.matching_figure(data.normalize_image(image), true, predicted, title=f"{name}: AP@0.5 {ap:.2f}")
    ax.imshow(panel.axes[0].images[0].get_array()); ax.set_title(panel.axes[0].get_title(), fontsize=8)
    ax.axis("off"); plt.close(panel)
viz.save_figure(fig, "06_failures.png")

# %% [markdown]
# ## On real images
#
# Synthetic test images are easy to make but they are not the goal: the shipped model is meant for real
# fluorescence nuclei. It was measured on a held-out part of real annotated images (2018 Data Science Bowl
# stage1_train and BBBC039, both CC0): a seeded split by image that no training saw. The numbers, and the
# commands that reproduce them from the public downloads, are in `models/README.md`; the `evaluate` command's
# JSON output is stored beside the model:

# %%
import json

for path in sorted((io.project_root() / "models").glob("eval_*.json")):
    scores = json.loads(path.read_text())
    print(f"{path.stem[5:]:>26}: " + ", ".join(f"{key} {scores[key]:.3f}" for key in ("dice", "ap50", "mean_ap")))

# %% [markdown]
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
print({key: value for key, value in evaluate.evaluate_path(folder, progress=False).items() if key in keys})

# %% [markdown]
# ## In this chapter we
# - computed Dice and IoU by hand and saw pixel metrics call a merged pair of nuclei perfect;
# - matched nuclei one to one by IoU and scored precision, recall, F1, AP(t) and the DSB score;
# - compared the shipped U-Net with Otsu + watershed, and looked at its worst images;
# - evaluated annotated images from a folder, as you would your own.

# %% [markdown]
# ## Exercises
# 1. Evaluate the model with `split=False` (no splitting of touching nuclei). Which metrics change, and which
#    hardly move?
# 2. At which IoU threshold does the baseline's AP fall below 0.5 on `samples`?

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
no_split = evaluate.evaluate_samples(test_samples, evaluate.segmenter(split=False))
print({key: (round(table["model"][key], 3), round(no_split[key], 3)) for key in ("dice", "ap50", "count_mae")})

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
curve = evaluate.evaluate_samples(samples, baseline_segment)["ap_by_threshold"]
print("below 0.5 from IoU", min((t for t, ap in curve.items() if ap < 0.5), default="never"))
