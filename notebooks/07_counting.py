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
# # 07 · Counting nuclei
#
# After this chapter you will be able to:
# - turn a probability map into a count, building each step (threshold, connected components, minimum area,
#   watershed) from numpy and scipy before using the library's version;
# - split touching nuclei with a watershed on the distance transform, and with the model's interior channel;
# - choose the threshold and the minimum area with the threshold explorer, on validation images;
# - count nuclei in your own image files from the command line.
#
# Chapter 06 showed the source project's third failure, wrong counts; this chapter builds the counting step by
# step and measures what each step is worth.

# %% [markdown]
# The switch below picks the preset (True: the small "fast" preset of CI). This chapter trains nothing: it runs the
# shipped model, so both settings run the same cells. Measured run times: `docs/teaching.md`.

# %%
QUICK_DEMO = False  # True: small data and a few epochs (the "fast" preset that CI uses)
import os
if QUICK_DEMO:
    os.environ["NUCLEILIB_FAST"] = "1"

# %% [markdown]
# First the result: the shipped model counts the nuclei of a crowded synthetic image it has never seen (training
# used seed 0, this test set seed 2025), next to the true count.

# %% tags=["nbval-check-output"]
from nucleilib import checkpoint, evaluate, predict, synth

model, info = checkpoint.load_model()
test = synth.make_dataset(n=32, size=128, seed=2025)
EXAMPLE = 19  # a crowded test image: many touching nuclei, the hard case for counting
image, true_labels = test["images"][EXAMPLE], test["labels"][EXAMPLE]
labels, prob = evaluate.segment_image(model, image, info)
print(f"test image {EXAMPLE}: predicted {labels.max()} nuclei, true {true_labels.max()}")

# %% [markdown]
# The predicted outlines beside the true ones:

# %%
from nucleilib import data, viz

shown = data.normalize_image(image)
fig = viz.show_grid([shown, shown], [true_labels, labels], titles=["true nuclei", "predicted nuclei"],
                    ncols=2, size=3.2)

# %% [markdown]
# `segment_image` hides a few small steps. The rest of the chapter builds them one at a time from numpy and scipy,
# checks each on a case small enough to work by hand, shows that `nucleilib.count` does the same, and measures what
# each step is worth.
#
# ## From logits to probabilities
#
# The network outputs logits; the sigmoid turns them into probabilities in [0, 1], in one place of the library.
# The shipped model has two output channels, or heads: the nucleus (channel 0) and its *interior* (channel 1, each
# nucleus shrunk so that touching nuclei do not touch; used below to split them). Chapter 03 shows a model with
# these two heads being trained; here we use the shipped one.

# %% tags=["nbval-check-output"]
print(info["heads"], prob.shape, prob.dtype)
print(f"P(nucleus) from {prob[0].min():.2f} to {prob[0].max():.2f}")

# %% [markdown]
# The model runs once per test image; everything after this cell only counts.

# %% tags=["nbval-check-output"]
import numpy as np

probs = [predict.probabilities(model, test_image, info) for test_image in test["images"]]
true_counts = np.array([lab.max() for lab in test["labels"]])  # the labels are numbered 1..n
print(f"{len(probs)} probability maps of shape {probs[0].shape}; true nuclei per image: "
      f"{true_counts.min()} to {true_counts.max()}, {true_counts.sum()} in all")

# %% [markdown]
# ## Binarize first, with an explicit threshold
#
# `cv2.connectedComponents` treats every nonzero pixel as foreground. Fed the probabilities directly, it has to be
# given integers, and the two obvious conversions are both wrong: cast to `uint8`, or scaled to 0-255 first.

# %% tags=["nbval-check-output"]
import cv2


def n_components(mask):
    return cv2.connectedComponents(mask.astype(np.uint8))[0] - 1


scaled = (prob[0] * 255).astype(np.uint8)
print(f"cast to uint8: {n_components(prob[0].astype(np.uint8))} components; scaled to 0-255: "
      f"{n_components(scaled)}; binarized at P >= 0.5: {n_components(prob[0] >= 0.5)}")
print(f"foreground pixels: {(scaled > 0).mean():.0%} when scaled, {(prob[0] >= 0.5).mean():.0%} at P >= 0.5")

# %% [markdown]
# Cast to `uint8`, every probability below 1 becomes 0 and nothing is found. Scaled to 0-255, every pixel with
# P >= 1/255 is foreground: the foreground is the larger share printed above, because the nuclei swell into their
# faint surroundings, and swollen neighbours merge. On one image merging and the odd haze component can offset each
# other; over all 32 test images:

# %% tags=["nbval-check-output"]
total_scaled = sum(n_components((p[0] * 255).astype(np.uint8)) for p in probs)
total_half = sum(n_components(p[0] >= 0.5) for p in probs)
print(f"components: {total_scaled} scaled to 0-255, {total_half} at P >= 0.5; true nuclei {true_counts.sum()}")
assert total_scaled < total_half, "scaling should merge nuclei"

# %% [markdown]
# The same trap waits in saved masks: an anti-aliased mask (drawn with smooth edges, or smoothed and resized)
# holds values between 0 and 255 along every edge. The true mask of the example image, smoothed a little:

# %% tags=["nbval-check-output"]
true_mask = (true_labels > 0).astype(np.uint8) * 255
smooth_mask = cv2.GaussianBlur(true_mask, (0, 0), sigmaX=1.5)
print("grey levels in the smooth mask:", len(np.unique(smooth_mask)))
print("components of the sharp mask:      ", n_components(true_mask))
print("smooth mask, nonzero as foreground:", n_components(smooth_mask))
print("smooth mask, binarized at 128:     ", n_components(smooth_mask >= 128))

# %% [markdown]
# Taken as "nonzero is foreground", the grey edges bridge nearby nuclei: 12 components where the sharp mask has
# 22. Binarized at 128, most come back (18); the rest were joined by the blur itself, across gaps narrower than it.
# (The sharp mask has fewer components than the 27 true nuclei already: touching nuclei, the subject of the
# watershed below.)
#
# So the first step is a threshold. Built by hand it is one comparison; `>=` makes P = 0.5 (a logit of 0) nucleus:

# %% tags=["nbval-check-output"]
from nucleilib import count


def binarize_by_hand(p, threshold=0.5):
    return (p >= threshold).astype(np.uint8)


print(binarize_by_hand(np.array([0.2, 0.5, 0.7])))
mask = binarize_by_hand(prob[0])
print("count.binarize agrees:", np.array_equal(count.binarize(prob[0], threshold=0.5), mask))

# %% [markdown]
# The threshold is a choice, and the explorer below shows what it changes.
#
# ## Connected components, built by flood fill
#
# A nucleus is a connected set of foreground pixels. To find them: scan the mask, and at every foreground pixel
# not yet labelled start a new label and flood it to every foreground neighbour, and theirs, until none is left.
# Neighbours are the 4 pixels sharing an edge, or with **8-connectivity** also the 4 sharing a corner.

# %%
def label_by_flood_fill(mask, connectivity=8):
    edge, corner = [(-1, 0), (1, 0), (0, -1), (0, 1)], [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    steps = edge + corner if connectivity == 8 else edge
    labels, n = np.zeros(mask.shape, np.int32), 0
    for start in zip(*np.nonzero(mask)):  # every foreground pixel, in raster order
        if not labels[start]:  # a nucleus not found yet: give it a label, flood it
            n += 1
            labels[start], todo = n, [start]
            while todo:  # label every unlabelled foreground neighbour, then theirs
                y, x = todo.pop()
                for ny, nx in ((y + dy, x + dx) for dy, dx in steps):
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = n
                        todo.append((ny, nx))
    return n, labels

# %% [markdown]
# Two hand-made cases: two separate squares are two nuclei, and a thin diagonal line is one object with
# 8-connectivity but five with 4-connectivity (its pixels touch only by their corners).

# %% tags=["nbval-check-output"]
two_squares = np.zeros((6, 8), np.uint8)
two_squares[1:3, 1:3] = two_squares[3:5, 5:7] = 1
diagonal = np.eye(5, dtype=np.uint8)
print("two squares:", label_by_flood_fill(two_squares)[0])
print("diagonal:", label_by_flood_fill(diagonal, 8)[0], "with 8-connectivity,",
      label_by_flood_fill(diagonal, 4)[0], "with 4-connectivity")
print(label_by_flood_fill(two_squares)[1])

# %% [markdown]
# The library uses OpenCV's fast version. `cv2.connectedComponents` returns the number of labels *including* the
# background, label 0, so two squares give 3 labels; `data.label_components` subtracts it:

# %% tags=["nbval-check-output"]
n_labels, _ = cv2.connectedComponents(two_squares)
print("cv2 labels:", n_labels, "-> nuclei:", data.label_components(two_squares)[0])
print("diagonal:", data.label_components(diagonal, 8)[0], "with 8-connectivity,",
      data.label_components(diagonal, 4)[0], "with 4-connectivity")

# %% [markdown]
# Now the flood fill against the library on the 32 test masks. OpenCV may number the nuclei in another order, so
# the comparison asks whether two label images split the pixels into the same groups:

# %% tags=["nbval-check-output"]
def same_nuclei(a, b):
    """True if label images a and b split the foreground into the same nuclei (numbered in any order)."""
    pairs = set(zip(a[a > 0].tolist(), b[a > 0].tolist()))
    return np.array_equal(a > 0, b > 0) and len(pairs) == a.max() == b.max()


masks = [count.binarize(p[0]) for p in probs]
for c in (8, 4):
    agree = sum(same_nuclei(label_by_flood_fill(m, c)[1], data.label_components(m, c)[1]) for m in masks)
    print(f"{c}-connectivity: the same nuclei on {agree} of {len(masks)} masks")

# %% [markdown]
# The library's choice is 8-connectivity (a nucleus is not cut in two where it narrows to a diagonal). How much the choice matters on the
# predicted masks, over the 32 test images:

# %% tags=["nbval-check-output"]
totals = {c: sum(data.label_components(m, c)[0] for m in masks) for c in (8, 4)}
print(f"nuclei over 32 images: {totals[8]} with 8-connectivity, {totals[4]} with 4-connectivity")

# %% [markdown]
# One nucleus apart: predicted nuclei are round blobs, rarely joined by a corner alone.
#
# ## Specks: a minimum area
#
# A few isolated pixels above the threshold make "nuclei" of a few pixels. The step that removes them: measure
# every label's area with `np.bincount`, and map each label through a lookup table that sends small ones to 0
# and renumbers the rest 1..n.

# %%
def remove_small_by_hand(labels, min_area):
    areas = np.bincount(labels.ravel())  # areas[k]: pixels of label k; areas[0] is the background
    keep = areas >= min_area
    keep[0] = False
    new_id = np.zeros(len(areas), np.int32)
    new_id[keep] = np.arange(1, keep.sum() + 1)  # kept labels renumbered 1..n, in order
    return new_id[labels]  # the lookup table applied to every pixel

# %% [markdown]
# A hand-made case: a 3x3 nucleus (label 1), a one-pixel speck (label 2) and a 2x2 nucleus (label 3). Worked by
# hand, a minimum of 4 pixels removes the speck and renumbers label 3 as 2. Then the library's `count.remove_small`
# on the same case, and on the components of every test mask:

# %% tags=["nbval-check-output"]
speck_case = np.array([[1, 1, 1, 0, 0, 0, 3, 3], [1, 1, 1, 0, 2, 0, 3, 3], [1, 1, 1, 0, 0, 0, 0, 0]])
print(remove_small_by_hand(speck_case, min_area=4))
components = [data.label_components(m)[1] for m in masks]
agree = sum(np.array_equal(remove_small_by_hand(c, 10), count.remove_small(c, 10)) for c in components)
print("count.remove_small agrees on the hand case:",
      np.array_equal(remove_small_by_hand(speck_case, 4), count.remove_small(speck_case, 4)),
      f"and on {agree} of {len(components)} test images")

# %% [markdown]
# All the counting choices live in one object, `count.CountSettings`, which every counting function, the
# `evaluate` command and the explorer take. Its defaults:

# %% tags=["nbval-check-output"]
settings = count.CountSettings()
print(settings)

# %% [markdown]
# Why `min_area` is 10 pixels and not more: real images contain micronuclei only a little larger than that, which
# a larger minimum would delete. The synthetic generator draws micronuclei too, a few even below 10 pixels; the
# smallest true nuclei of the test images:

# %% tags=["nbval-check-output"]
true_areas = np.concatenate([np.bincount(lab.ravel())[1:] for lab in test["labels"]])
print("smallest true nuclei (px):", np.sort(true_areas)[:6].tolist())

# %% [markdown]
# Which predicted components fall below the minimum, and what lies under them in the truth (the area of the true
# nucleus under most of the component's pixels, 0 for background):

# %% tags=["nbval-check-output"]
small = []
for i, comp in enumerate(components):
    areas = np.bincount(comp.ravel())
    for k in np.nonzero(areas[1:] < settings.min_area)[0] + 1:
        under = np.bincount(test["labels"][i][comp == k]).argmax()
        true_area = int((test["labels"][i] == under).sum()) if under else 0
        small.append((i, int(areas[k]), true_area))
print(f"{len(small)} of {totals[8]} components are under {settings.min_area} px")
for i, area, true_area in small:
    print(f"  test image {i}: a {area} px component over a true nucleus of {true_area} px")

# %% [markdown]
# On these synthetic images, at P >= 0.5, the model leaves no speck on the background: each of the three small
# components lies on a true nucleus (of 7, 14 and 11 px) that the model found only in part, so here the minimum
# area costs the count one nucleus each time. The figure below puts the steps so far side by side, on test image
# 22 at P >= 0.5 (top) and on test image 6 with the threshold lowered to 0.1 (bottom): the image with its true
# outlines, the probability, the mask, the components (one colour each) and the components the minimum area keeps.
# The cell also prints the areas of the components, in pixels, and the true nuclei under each (0: background):

# %%
def pipeline_row(i, threshold):
    truth, step_mask = test["labels"][i], count.binarize(probs[i][0], threshold)
    comp = data.label_components(step_mask)[1]
    kept = count.remove_small(comp, settings.min_area)
    under = [np.unique(truth[comp == k]).tolist() for k in range(1, comp.max() + 1)]  # 0: background
    print(f"test image {i} at P >= {threshold}: component areas {np.bincount(comp.ravel())[1:].tolist()}, "
          f"true labels under each {under}")
    colours = viz.labels_rgb(comp)
    return ([viz.outline_rgb(data.normalize_image(test["images"][i]), truth), probs[i][0], step_mask,
             colours, colours * (kept > 0)[..., None]],  # the kept components in their colours
            [f"test image {i}, true: {truth.max()}", "P(nucleus)", f"mask: P >= {threshold}",
             f"components: {comp.max()}", f"after min area {settings.min_area}: {kept.max()}"])

# %% [markdown]
# Test image 22 at the default threshold, and test image 6 at a threshold lowered to 0.1:

# %%
rows = [pipeline_row(22, 0.5), pipeline_row(6, 0.1)]
fig = viz.show_grid(rows[0][0] + rows[1][0], titles=rows[0][1] + rows[1][1], ncols=5, size=2.4)
viz.save_figure(fig, "07_pipeline.png")

# %% [markdown]
# Top: the 7 px component over the small true nucleus of test image 22 goes, and the count drops from 3 to 2
# (true 4; the large component is two touching nuclei, counted as one). Bottom: lowered to 0.1, the threshold lets
# the faint glow of the background of test image 6 through in two places, 30 and 7 px; the minimum area removes
# the 7 px speck, not the 30 px patch. So the minimum area is a small correction that can cut either way; the table at
# the end of the chapter measures it over all the test images.
#
# ## Touching nuclei
#
# Two nuclei that touch form one connected component, so connected components undercount crowded images. The
# classical answer is a watershed on the distance transform: each pixel's distance to the background peaks once
# per round nucleus; each peak that stands at least `h` above the saddle to its neighbour (an *h-maximum*) seeds a
# region, and the watershed grows the regions downhill from the peaks until they meet. Built from
# scipy and scikit-image, for any relief (a mask pixel left without a seed keeps a label of its own):

# %%
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

EIGHT = np.ones((3, 3), bool)  # 8-connectivity for scipy's labelling


def split_on_relief(relief, mask, h=1.0, smoothing=1.0):
    relief = ndi.gaussian_filter(relief, smoothing)  # no seed on every bump of a ragged outline
    seeds = ndi.label(h_maxima(relief, h) & mask, structure=EIGHT)[0]
    labels = watershed(-relief, markers=seeds, mask=mask)
    leftover = ndi.label(mask & (labels == 0), structure=EIGHT)[0]
    return np.where(leftover > 0, leftover + labels.max(), labels)

# %% [markdown]
# A hand-made case, two overlapping discs: one component, two distance peaks, two nuclei.

# %% tags=["nbval-check-output"]
yy, xx = np.mgrid[:20, :34]
two_discs = ((yy - 10) ** 2 + (xx - 10) ** 2 <= 64) | ((yy - 10) ** 2 + (xx - 23) ** 2 <= 64)
distance = ndi.distance_transform_edt(two_discs)
print("components:", data.label_components(two_discs)[0],
      " watershed by hand:", split_on_relief(distance, two_discs).max(),
      " count.split_touching:", count.split_touching(two_discs).max())

# %% [markdown]
# The shipped model offers a second relief: its interior head (channel 1; chapter 03 trains it beside the mask) predicts each nucleus shrunk, so that touching
# nuclei do not touch in it. Where two nuclei meet, the interior probability drops; multiplying the distance map by
# `0.25 + P(interior)` carves a valley between them even where the mask has no waist. A bar with no waist at all,
# whose interior says two nuclei:

# %% tags=["nbval-check-output"]
bar = np.zeros((12, 30), bool)
bar[2:10, 2:28] = True
interior = bar * 0.9
interior[:, 14:16] = 0.0
bar_distance = ndi.distance_transform_edt(bar)
print("distance alone:", split_on_relief(bar_distance, bar).max(),
      " weighted by the interior:", split_on_relief(bar_distance * (0.25 + interior), bar).max(),
      " count.split_with_interior:", count.split_with_interior(bar, interior).max())

# %% [markdown]
# On the 32 test masks, the library's two splits against the ones built here:

# %% tags=["nbval-check-output"]
agree = {"split_touching": [0, 0], "split_with_interior": [0, 0]}
for p, m in zip(probs, masks):
    m = m > 0
    d = ndi.distance_transform_edt(m)
    for name, ours, theirs in (("split_touching", split_on_relief(d, m), count.split_touching(m)),
                               ("split_with_interior", split_on_relief(d * (0.25 + p[1]), m),
                                count.split_with_interior(m, p[1]))):
        agree[name][0] += ours.max() == theirs.max()
        agree[name][1] += same_nuclei(ours, theirs)
for name, (same_count, same_split) in agree.items():
    print(f"count.{name}: the same count on {same_count}, the same nuclei on {same_split} of {len(masks)} images")

# %% [markdown]
# The interior split is the library's exactly. The distance split gives the same count on every image and the same
# nuclei on most; the library's version differs in two refinements: seeds closer than `min_distance` pixels merge
# first, and the regions grow on the unsmoothed distance map.
#
# Connected components, the two watersheds and the truth on the example image:

# %%
naive = data.label_components(mask)[1]
by_distance = count.labels_from_probabilities(prob[:1])  # channel 0 only: distance-transform seeds
by_interior = count.labels_from_probabilities(prob)  # both channels: interior-weighted distance
fig = viz.show_grid([viz.labels_rgb(naive), ndi.distance_transform_edt(mask), viz.labels_rgb(by_distance),
                     prob[1], viz.labels_rgb(by_interior), viz.outline_rgb(shown, true_labels)],
                    titles=[f"components: {naive.max()}", "distance transform",
                            f"distance watershed: {by_distance.max()}", "P(interior)",
                            f"with interior: {by_interior.max()}", f"truth: {true_labels.max()}"],
                    ncols=3, size=2.6)
viz.save_figure(fig, "07_touching.png")
print(f"components {naive.max()}, distance watershed {by_distance.max()}, with interior {by_interior.max()}, "
      f"true {true_labels.max()}")

# %% [markdown]
# On the example image connected components find 14 nuclei, the distance watershed 20 and the interior-weighted
# watershed 24, of 27 true ones: the interior channel separates touching nuclei that the distance map runs together.
#
# ## The whole pipeline
#
# `count.labels_from_probabilities(prob, settings)` strings the steps together: threshold channel 0, split with
# the interior channel when there is one (else with the distance alone), remove the small. The pieces built in this
# chapter, chained by hand, find the same nuclei on the example image:

# %% tags=["nbval-check-output"]
relief = ndi.distance_transform_edt(mask) * (0.25 + prob[1])
by_hand = remove_small_by_hand(split_on_relief(relief, mask > 0), settings.min_area)
by_library = count.labels_from_probabilities(prob, settings)
print(f"by hand {by_hand.max()} nuclei, library {by_library.max()};",
      "the same nuclei:", same_nuclei(by_hand, by_library))

# %% [markdown]
# ## The threshold explorer
#
# The threshold and the minimum area are choices; the explorer shows what they do. First the count against the
# threshold on the example image, with and without the split:

# %% tags=["nbval-check-output"]
from nucleilib import widgets

curve_at = (0.2, 0.5, 0.65, 0.8, 0.9, 0.95)
for split in (False, True):
    curve = widgets.count_curve(probs[EXAMPLE], curve_at, settings, split=split)
    print(f"split={split!s:5}: " + ", ".join(f"{t}: {n}" for t, n in zip(curve_at, curve)))
print(f"pixels with 0.05 < P < 0.95: {((prob[0] > 0.05) & (prob[0] < 0.95)).mean():.1%}")

# %% [markdown]
# Without the split, the count stays at 14 up to 0.65 and climbs to 21 at 0.95: a higher threshold shrinks the
# nuclei until touching neighbours come apart, but it never reaches the 27 true ones. With the split, the watershed
# separates them already and the count hardly moves (24, and 23 at 0.95). Most of this model's probabilities are
# close to 0 or 1 (only the share printed last lies between 0.05 and 0.95), so the threshold changes little once
# the nuclei are split.
#
# The explorer is for choosing, so it runs on **validation** images (a set made with another seed, the one
# exercise 2 tunes on), never on the test images we report: the four whose count moves most with the threshold
# when the split is off, most first.

# %%
val = synth.make_dataset(n=32, size=128, seed=7)
val_probs = [predict.probabilities(model, val_image, info) for val_image in val["images"]]
moves = [int(np.ptp(widgets.count_curve(p, curve_at, settings, split=False))) for p in val_probs]
picked = [int(i) for i in np.argsort(moves, kind="stable")[::-1][:4]]
print("validation images", picked, "- count range over the thresholds above:", [moves[i] for i in picked])

# %% [markdown]
# The explorer opens on the first of them with the split off. Move the threshold and the minimum area, tick the
# split, or choose another image: the mask, the nuclei, the count against the true count and the
# count-versus-threshold curve follow at once (the model ran once per image above; a control change only
# re-counts).

# %%
explorer = widgets.threshold_explorer([val["images"][i] for i in picked], [val_probs[i] for i in picked],
                                      [val["labels"][i] for i in picked], settings=count.CountSettings(split=False))
explorer

# %% [markdown]
# Where widgets cannot run (this page rendered on the web, for instance), here are the explorer's panels for the
# example test image at three thresholds, split off (a picture of what the threshold does, not a choice):

# %%
fig = widgets.static_threshold_figure(image, prob, true_labels, thresholds=(0.5, 0.8, 0.95),
                                      settings=count.CountSettings(split=False))
viz.save_figure(fig, "07_explorer.png")

# %% [markdown]
# At 0.5 the touching nuclei make 14 components; at 0.8 the masks are thinner and 16 come apart; at 0.95, 21. The
# dashed line is the true count, 27: the threshold alone does not separate what the watershed separates.
#
# A high threshold can also lose a dim nucleus. Test image 14, with the full pipeline:

# %% tags=["nbval-check-output"]
curve = widgets.count_curve(probs[14], curve_at, settings)
print(f"test image 14, true {true_counts[14]}: " + ", ".join(f"{t}: {n}" for t, n in zip(curve_at, curve)))
truth_14 = test["labels"][14]
print("true nuclei: area (px)", np.bincount(truth_14.ravel())[1:].tolist(), " mean brightness",
      [round(test["images"][14][truth_14 == k].mean()) for k in (1, 2)])
for t in (0.5, 0.8, 0.9):
    areas_14 = np.bincount(data.label_components(count.binarize(probs[14][0], t))[1].ravel())[1:]
    print(f"components at P >= {t}: areas {areas_14.tolist()} px")

# %% [markdown]
# The small nucleus (9 px) is also the dim one. As the threshold rises its predicted component shrinks, to 7 px at
# 0.9, below the minimum area, and the count drops to 1: a high threshold can lose small dim nuclei, a low one (test
# image 6 above) lets the background in. Exercise 2 chooses the threshold on validation images.
#
# ## Counts against the truth, method by method
#
# Each step of the pipeline against the true count on all 32 test images, with the classical pipeline (Otsu
# threshold + distance watershed, no network) for comparison. Each method maps probabilities and image to labels.

# %%
methods = {
    "components": lambda p, im: data.label_components(count.binarize(p[0]))[1],
    "+ min area": lambda p, im: count.remove_small(data.label_components(count.binarize(p[0]))[1]),
    "+ distance watershed": lambda p, im: count.labels_from_probabilities(p[:1], settings),
    "+ interior channel": lambda p, im: count.labels_from_probabilities(p, settings),
    "classical": lambda p, im: count.classical_baseline(im),
}
counts = {name: np.array([method(p, im).max() for p, im in zip(probs, test["images"])])
          for name, method in methods.items()}

# %% [markdown]
# The mean absolute count error (nuclei per image) and the mean signed error (negative: too few):

# %% tags=["nbval-check-output"]
print(f"{'method':>22}  mean |error|  mean error")
for name, predicted in counts.items():
    error = predicted - true_counts
    print(f"{name:>22}  {np.abs(error).mean():12.2f}  {error.mean():+10.2f}")

# %% [markdown]
# Each row adds one step to the row above it (the classical row uses no network). The minimum area costs a little
# on these images (2.09 -> 2.19: it deletes the three partial micronuclei found above, and there are no background
# specks at 0.5 here); the distance watershed about halves the error, and the interior channel brings it to 0.66
# nuclei per image, below the classical pipeline's 1.38. Every method undercounts on average (negative mean
# error). Counted against true nuclei, one point per image and method:

# %%
fig = viz.count_scatter(true_counts, counts)
viz.save_figure(fig, "07_counts.png")

# %% [markdown]
# On the diagonal line the count is exact; points under it are undercounts. The mean signed error of each method on
# the more and the less crowded half of the test images (split at the median true count):

# %% tags=["nbval-check-output"]
crowded = true_counts > np.median(true_counts)
for name, predicted in counts.items():
    error = predicted - true_counts
    print(f"{name:>22}: crowded half {error[crowded].mean():+6.2f}, the other half {error[~crowded].mean():+6.2f}")

# %% [markdown]
# The undercounts come mostly from the crowded half, where touching nuclei are many, and the two watershed steps
# lift them toward the line; the minimum area does not (it only removes).
#
# ## The command line
#
# The same pipeline for a folder of files: `python -m nucleilib count IMAGE... --out DIR` writes `counts.csv` (a
# row per image, written as soon as it is counted), and for each image `<name>_labels.tif` (instance labels) and
# `<name>_overlay.png` (outlines), plus `count_run.json` (the model and settings, so a rerun resumes). Two test
# images written as TIFF files to a temporary folder, then counted (`--precision fp32`: the same counts on every
# CPU, like the rest of this chapter; the default, `auto`, runs the network in bfloat16 where the CPU computes it
# natively, which is faster):

# %%
import tempfile
from pathlib import Path

import tifffile

from nucleilib import cli

folder = Path(tempfile.mkdtemp())
for i in (3, EXAMPLE):
    tifffile.imwrite(folder / f"field_{i}.tif", test["images"][i])
status = cli.main(["count", str(folder / "field_3.tif"), str(folder / f"field_{EXAMPLE}.tif"),
                   "--out", str(folder / "out"), "--precision", "fp32"])

# %% [markdown]
# The exit status is 0 when every file was counted, and the folder holds the table and the pictures (the table's
# `file` column holds the paths as given, here in a temporary folder, so only their names are printed):

# %% tags=["nbval-check-output"]
import csv

print("exit status", status)
print(sorted(path.name for path in (folder / "out").iterdir() if not path.name.startswith(".")))
with open(folder / "out" / "counts.csv", newline="") as table:
    for row in csv.DictReader(table):
        print(Path(row["file"]).name, row["count"], row["status"], row["labels"])

# %% [markdown]
# In a terminal: `python -m nucleilib count my_images/ --out results/` (add `--threshold 0.4`, `--min-area 20` or
# `--no-split` to change the choices of this chapter).

# %% [markdown]
# ## In this chapter we
# - binarized the probability with an explicit threshold before counting, and saw how an unbinarized or
#   anti-aliased mask miscounts;
# - built connected components by flood fill (8-connectivity; OpenCV counts the background as label 0), a
#   minimum area by a lookup table, and a seeded watershed on the distance map, each agreeing with `nucleilib.count`;
# - split touching nuclei with the model's interior channel, which finds boundaries the mask's shape does not show;
# - explored threshold and minimum area with a widget, and measured each step's count error against the truth;
# - counted image files from the command line.
#
# Chapter 08 evaluates the model nucleus by nucleus, on synthetic and on real images.

# %% [markdown]
# ## Exercises
# 1. Write `count_with_min_area(mask, min_area)`: the number of 8-connected nuclei in a binary mask that have at
#    least `min_area` pixels. Build it from `data.label_components` and `np.bincount` (no `count.remove_small`).
#    The cell after the solution checks it.
# 2. Choose the threshold on **validation** images, never on the test images you report: make 32 validation images
#    (`synth.make_dataset(n=32, size=128, seed=7)`), find the threshold (0.05 to 0.95, `widgets.count_curve`)
#    with the smallest mean absolute count error there, then report the test images' error at that threshold
#    next to the error at 0.5.
# 3. On the same validation images, set `min_area=30`. How many true nuclei are smaller than that, and how does the
#    count error change?
# 4. Run the classical baseline on the example test image with `split=False` and with `split=True`. How many nuclei
#    does the watershed add?

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
def count_with_min_area(mask, min_area):
    _, labels = data.label_components(mask)
    areas = np.bincount(labels.ravel())[1:]  # area of each nucleus, background left out
    return int((areas >= min_area).sum())

# %% tags=["exercise-check"]
assert count_with_min_area(speck_case > 0, 1) == 3
assert count_with_min_area(speck_case > 0, 4) == 2  # the one-pixel speck goes
assert count_with_min_area(speck_case > 0, 10) == 0
assert count_with_min_area(np.zeros((4, 4), np.uint8), 0) == 0
for m in masks:
    assert count_with_min_area(m, 10) == count.remove_small(data.label_components(m)[1], 10).max()
print("count_with_min_area agrees with the library on the hand case and all", len(masks), "test masks")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
val_counts = np.array([lab.max() for lab in val["labels"]])  # val and val_probs: the explorer's validation set
thresholds = np.round(np.arange(0.05, 0.951, 0.05), 2)
val_curves = np.array([widgets.count_curve(p, thresholds, settings) for p in val_probs])
val_errors = np.abs(val_curves - val_counts[:, None]).mean(axis=0)
best = float(thresholds[val_errors.argmin()])  # the first of equally good thresholds
print(f"validation: best threshold {best:.2f}, mean |error| {val_errors.min():.2f} "
      f"(at 0.50: {val_errors[thresholds == 0.5][0]:.2f})")
for t in (best, 0.5):  # reported on the test images, chosen without them
    test_error = np.abs([count.count_nuclei(p, settings, threshold=t)[0] for p in probs] - true_counts).mean()
    print(f"test: mean |error| {test_error:.2f} at threshold {t:.2f}")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
val_areas = np.concatenate([np.bincount(lab.ravel())[1:] for lab in val["labels"]])
print("validation nuclei under 30 px:", int((val_areas < 30).sum()), "of", len(val_areas))
for min_area in (settings.min_area, 30):
    predicted = np.array([count.count_nuclei(p, settings, min_area=min_area)[0] for p in val_probs])
    print(f"min_area={min_area}: mean |error| {np.abs(predicted - val_counts).mean():.2f} on validation")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
print("without split:", count.classical_baseline(image, split=False).max(),
      " with split:", count.classical_baseline(image, split=True).max())
