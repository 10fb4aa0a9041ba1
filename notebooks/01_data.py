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
# # 01 · The data: fluorescence nuclei, masks and labels
#
# After this chapter you will be able to:
# - make, load and check a nuclei data set in the project's `.npz` format;
# - normalize 8-bit and 16-bit microscopy images so a network sees them the same way;
# - read the statistics that matter (nuclei per image, sizes, foreground fraction, touching nuclei);
# - bring your own images: `.npz`, the 2018 Data Science Bowl layout, BBBC039, folders of image/label pairs.

# %% [markdown]
# The switch below sets the size of the data set: `False` (the default preset) uses 600 images; `True` (the fast
# preset that CI uses) 200. Measured run times of every chapter: `docs/teaching.md`.

# %%
QUICK_DEMO = False  # True: small data and a few epochs (the "fast" preset that CI uses)
import os
if QUICK_DEMO:
    os.environ["NUCLEILIB_FAST"] = "1"

# %% [markdown]
# First the result: one synthetic fluorescence image with exact ground truth, and its nuclei counted with
# `cv2.connectedComponents`. The rest of the chapter looks at where such images come from.

# %% tags=["nbval-check-output"]
import numpy as np
from nucleilib import data, synth

image, labels = synth.make_image(np.random.default_rng(8), size=128)
n_blobs, _ = data.label_components(labels > 0, connectivity=8)
print(f"image {image.shape} {image.dtype}: {labels.max()} nuclei in the labels, "
      f"{n_blobs} connected blobs in the mask")

# %% [markdown]
# The mask has fewer blobs than there are nuclei: touching nuclei merge into one blob. Counting them apart is
# the subject of chapter 07. Here is the image with the outline of every true nucleus.

# %%
from nucleilib import augment, datasets, io, viz

fig = viz.show_grid([data.normalize_image(image), data.normalize_image(image)], [None, labels],
                    titles=["image", "true nuclei"], ncols=2, size=3.2)

# %% [markdown]
# ## The built-in data set
#
# The project's default data is a synthetic generator (`nucleilib.synth`), so everything runs offline and the
# ground truth is exact. The settings come from a *preset*: `NUCLEILIB_FAST=1` (the switch at the top) makes a
# small set, the default a medium one, and `NUCLEILIB_PRESET=full` the source project's 2000 images (the three
# are the table `nucleilib.presets.PRESETS`).

# %%
from nucleilib.presets import preset, preset_name

settings = preset()
print(preset_name(), settings)

# %% [markdown]
# The command line writes the same set to a file: `python -m nucleilib make-data --n 2000 --size 128 --seed 0
# --out data/nuclei.npz`. In a notebook, `builtin_dataset` makes it once and loads it from `data/` afterwards.
# Image `i` depends only on the seed and `i`, so the small set is the start of the larger ones (checked below
# against 8 images made directly by the generator).

# %%
images, masks, labels = datasets.builtin_dataset(n=settings["n_images"], size=128, seed=0)
print("images", images.shape, images.dtype, f"[{images.min():.2f}, {images.max():.2f}]")
print("masks ", masks.shape, masks.dtype, np.unique(masks))
print("labels", labels.shape, labels.dtype)
assert np.array_equal(synth.make_dataset(n=8, size=128, seed=0)["labels"], labels[:8])

# %% [markdown]
# `load_npz` (used inside) always returns float32 arrays shaped (N, 1, H, W): images normalized to [0, 1] and
# masks in {0, 1}; instance labels come third when the file has them. A grid of the first images, with the true
# outlines:

# %%
fig = viz.show_grid(images[:8], labels[:8], titles=[f"{labels[i].max()} nuclei" for i in range(8)])
viz.save_figure(fig, "01_grid.png")

# %% [markdown]
# The generator draws what a microscope records: elliptical, irregular nuclei with chromatin texture, of one
# typical size per image; dim ones, a few very bright mitotic ones and tiny micronuclei; clusters of touching
# nuclei; optical blur; photon (Poisson) and camera (Gaussian) noise; an uneven background.
#
# How big are the nuclei it makes? We measure every whole nucleus (not cut by the image border) in the first
# 200 images (the whole set under `QUICK_DEMO`), as the radius of a disc of the same area:

# %% tags=["nbval-check-output"]
radii = []
for label in labels[:200]:
    cut = np.unique(np.concatenate([label[0], label[-1], label[:, 0], label[:, -1]]))
    areas = np.bincount(label.ravel())
    whole = [nucleus for nucleus in np.flatnonzero(areas) if nucleus > 0 and nucleus not in cut]
    radii.extend(np.sqrt(areas[whole] / np.pi))
radii = np.array(radii)
print(f"{len(radii)} whole nuclei: radius {radii.min():.1f} to {radii.max():.1f} px; "
      f"5th / 50th / 95th percentile {' / '.join(f'{r:.1f}' for r in np.percentile(radii, [5, 50, 95]))} px")
print(f"{np.sum(radii <= 3.2)} nuclei ({np.mean(radii <= 3.2):.0%}) have a radius of 3.2 px or less")

# %% [markdown]
# The 1046 whole nuclei measured have radii from 1.6 px to 24.0 px, with a median of 7.3 px; 53 of them (5 %)
# are 3.2 px or smaller.

# %% [markdown]
# ## Bad files are named, not guessed at
#
# `load_npz` checks every key before anything is used, and never unpickles. A file whose masks have three
# levels, for example:

# %% tags=["nbval-check-output"]
import tempfile
from pathlib import Path

bad = Path(tempfile.mkdtemp()) / "three_levels.npz"
np.savez(bad, images=np.zeros((2, 8, 8)), masks=np.array([0, 1, 2] * 42 + [0, 0]).reshape(2, 8, 8))
try:
    io.load_npz(bad)
except ValueError as error:
    print(str(error).replace(str(bad.parent), "..."))

# %% [markdown]
# ## Normalization: why `/255` breaks on 16-bit images
#
# Cameras give 8-bit (0-255) or 16-bit images, and 16-bit microscopy often uses only a narrow part of the
# range (BBBC039's 12-bit camera, for example, stored in 16-bit files). We make one such image from a synthetic
# one, with values from 110 up:

# %%
raw = synth.make_image(np.random.default_rng(3), size=128)[0].astype(np.float64)
raw12 = (110 + (raw - raw.min()) / (raw.max() - raw.min()) * 900).astype(np.uint16)
print(raw12.dtype, raw12.min(), raw12.max())

# %% [markdown]
# The normalization `nucleilib` uses maps each image's own 1st percentile to 0 and its 99.8th percentile to 1,
# and clips what lies outside: a few very bright pixels cannot squeeze the rest (exercise 2 checks this with one
# hot pixel). By hand, with numpy, and
# checked against the library's `data.normalize_image`:

# %% tags=["nbval-check-output"]
low, high = np.percentile(raw12, [1, 99.8])
by_hand = np.clip((raw12 - low) / (high - low), 0, 1)
print(f"1st percentile {low:.1f} -> 0, 99.8th percentile {high:.1f} -> 1")
assert np.allclose(by_hand, data.normalize_image(raw12), atol=1e-6)
print("the same as data.normalize_image(raw12)")

# %% [markdown]
# Three ways to bring the image to [0, 1]: divide by 255 (the 8-bit habit), divide by 65535 (the 16-bit
# maximum), and the percentile normalization:

# %% tags=["nbval-check-output"]
candidates = {
    "/ 255": np.clip(raw12 / 255, 0, 1),
    "/ 65535": raw12 / 65535,
    "percentile": data.normalize_image(raw12),
}
for name, x in candidates.items():
    print(f"{name:>10}: min {x.min():.3f}  max {x.max():.3f}  saturated {np.mean(x >= 1):.0%}")

# %% [markdown]
# `/255` lifts even the darkest pixel to 0.431 and saturates 18 % of the pixels at 1; `/65535` squeezes the
# whole image into the bottom 1.5 % of the range (max 0.015), nearly black; the percentile version spans 0 to 1,
# and the pixels it clips at 1 (those above the 99.8th percentile) round to 0 %. The images and their
# histograms side by side:

# %%
fig = viz.normalization_figure(candidates)
viz.save_figure(fig, "01_normalization.png")

# %% [markdown]
# ## The statistics a reader should know
#
# Before training, know your data: how many nuclei an image holds, how big they are, and how much of an image
# is foreground (this decides how imbalanced the pixel classes are, chapter 05).

# %%
stats = data.dataset_stats(images, labels)
for key in ["nuclei_per_image_min", "nuclei_per_image_median", "nuclei_per_image_max",
            "area_p5", "area_p50", "area_p95", "radius_median", "foreground_fraction", "touching_fraction"]:
    print(f"{key:>24}: {stats[key]:8.2f}")

# %% [markdown]
# `touching_fraction` is a share of *nuclei*: those that touch another nucleus, over all nuclei. A share of
# *images* (tiles) is another number: how many tiles hold at least one touching pair. A pair touches when two
# neighbouring pixels (by an edge or a corner) belong to two different nuclei; we compare each pixel with its
# neighbour to the right, below and on both diagonals. Checked on four tiny label images:

# %% tags=["nbval-check-output"]
def has_touching(label):
    """Whether two different nuclei of one label image share an edge or a corner."""
    pairs = [(label[1:], label[:-1]), (label[:, 1:], label[:, :-1]),
             (label[1:, 1:], label[:-1, :-1]), (label[1:, :-1], label[:-1, 1:])]
    return any(np.any((a != b) & (a > 0) & (b > 0)) for a, b in pairs)


for example in ([[1, 1, 2, 2]], [[1, 0, 2]], [[1, 0], [0, 2]], [[1, 1], [1, 1]]):
    print(example, "touching:", has_touching(np.array(example)))

# %% [markdown]
# Side by side (1 and 2 meet), a gap between them, a corner contact, and one nucleus alone: `True`, `False`,
# `True`, `False`, as they should be. Both shares for our data set:

# %%
tiles_touching = np.mean([has_touching(label) for label in labels])
print(f"nuclei that touch another nucleus: {stats['touching_fraction']:.0%}")
print(f"tiles with at least one touching pair: {tiles_touching:.0%}")

# %% [markdown]
# Half the tiles hold a touching pair, but fewer than a third of the nuclei touch another. The two shares
# answer different questions, so each is compared only with the same share of another data set, as below.
#
# ## How the synthetic set compares with real images
#
# Real data is not needed to run this book, but it says whether the synthetic set is realistic. One function
# gives one column of a comparison table for a set of 128 px tiles and their instance labels. Every nucleus
# counts as it lies in its tile, cut by the border or not, because real tiles cut nuclei too:

# %%
def table_column(images, labels):
    stats = data.dataset_stats(images, labels)
    counts = [len(np.unique(label)) - 1 for label in labels]
    areas = np.concatenate([np.bincount(label.ravel())[1:] for label in labels])
    radii = np.sqrt(areas[areas > 0] / np.pi)
    three = lambda values, digits: " / ".join(f"{v:.{digits}f}" for v in np.percentile(values, [5, 50, 95]))
    return {"nuclei per tile (p5 / p50 / p95)": three(counts, 0),
            "equivalent radius, px (p5 / p50 / p95)": three(radii, 1),
            "foreground fraction (p50)": f"{stats['foreground_fraction']:.2f}",
            "contrast, normalized (p50)": f"{stats['contrast']:.2f}",
            "nuclei touching another": f"{stats['touching_fraction']:.0%}",
            "tiles with touching nuclei": f"{np.mean([has_touching(label) for label in labels]):.0%}"}

# %% [markdown]
# The synthetic column is computed here. The two real columns were **measured once** with this same function
# on the public sets' 128 px tiles, and are typed in below, not recomputed (with the size of each set): the
# fluorescence images of the 2018 Data Science Bowl stage1_train with the community's corrected masks, and the
# images of BBBC039. To measure them yourself:
#
# ```bash
# python -m nucleilib import-dsb2018 stage1_train/ --out data/dsb2018.npz
# python -m nucleilib import-bbbc039 BBBC039/ --out data/bbbc039.npz
# ```
#
# then `images, _, labels = io.load_npz("data/dsb2018.npz")` and `table_column(images, labels)`, likewise for
# BBBC039.

# %%
measured_once = {  # table_column on the real sets' tiles (see above); not recomputed in this chapter
    "DSB 2018": ["0 / 4 / 17", "2.6 / 8.0 / 24.2", "0.12", "0.59", "23%", "31%"],
    "BBBC039": ["1 / 7 / 13", "2.3 / 12.1 / 17.1", "0.20", "0.56", "24%", "49%"],
}
print("measured on: DSB 2018 397 images (3547 tiles), BBBC039 149 images (4470 tiles)")
print(f"{'':>40}  {'synthetic':>17}" + "".join(f"{name:>19}" for name in measured_once))
for i, (row, value) in enumerate(table_column(images, labels).items()):
    print(f"{row:>40}  {value:>17}" + "".join(f"{column[i]:>19}" for column in measured_once.values()))

# %% [markdown]
# Row by row, against the printed columns: the synthetic tiles hold about as many nuclei as the real ones at
# the median (between DSB's 4 and BBBC039's 7), and more in the most crowded tiles (95th percentile). Their
# radii are close to DSB's at the 5th percentile and the median, but their 95th percentile is well below DSB's
# 24.2 px, and BBBC039's nuclei are larger (median 12.1 px). A smaller share of their pixels is foreground than
# in either real set, and the contrast is about the same. More of their nuclei touch another than in either
# real set (23 % and 24 %), and the share of tiles with touching nuclei is close to BBBC039's 49 %, above
# DSB's 31 %.
#
# Distributions rather than medians: nuclei per image and nucleus area over the whole synthetic set.

# %%
fig = viz.statistics_figure(labels)
viz.save_figure(fig, "01_statistics.png")

# %% [markdown]
# ## Splits and augmentation
#
# Training, validation and test images are chosen by a seeded shuffle, so the same seed gives the same split on
# every machine.

# %%
train_idx, val_idx, test_idx = data.split_indices(len(images), seed=0)
print(len(train_idx), "training,", len(val_idx), "validation,", len(test_idx), "test images")
print("validation images:", val_idx[:8], "...")

# %% [markdown]
# Augmentation makes more training images out of each one: flips and 90-degree rotations move image and mask
# together; brightness, contrast, gamma and noise change the image only. `NucleiDataset` is a torch `Dataset`
# that does this on the fly, each draw from its own seeded generator. Five draws of the second image:

# %%
import matplotlib.pyplot as plt

dataset = augment.NucleiDataset(np.repeat(images[1:2], 5, axis=0), np.repeat(masks[1:2], 5, axis=0), seed=13)
draws = [(images[1, 0], masks[1, 0])] + [(x[0].numpy(), y[0].numpy()) for x, y in (dataset[i] for i in range(5))]
fig, axes = plt.subplots(2, 6, figsize=(10.8, 3.9))
for column, (x, y) in enumerate(draws):
    axes[0, column].imshow(x, cmap="gray", vmin=0, vmax=1)
    axes[1, column].imshow(y, cmap="gray", vmin=0, vmax=1)
    axes[0, column].set_title("original" if column == 0 else f"draw {column}", fontsize=10)
for ax in axes.flat:
    ax.set(xticks=[], yticks=[])
axes[0, 0].set_ylabel("image")
axes[1, 0].set_ylabel("mask")
viz.save_figure(fig, "01_augmentation.png")

# %% [markdown]
# What each draw did, found by comparing its mask with the 8 symmetries of the square applied to the original
# mask, and its mean intensity against the original's:

# %% tags=["nbval-check-output"]
names = ["unchanged", "rotated 90°", "rotated 180°", "rotated 270°",
         "mirrored on the diagonal", "flipped top-bottom", "mirrored on the other diagonal", "flipped left-right"]
symmetries = [np.rot90(m, k) for m in (masks[1, 0], masks[1, 0].T) for k in range(4)]
print(f"original: mean intensity {images[1, 0].mean():.3f}")
seen = []
for i, (x, y) in enumerate(draws[1:], start=1):
    moved = [name for name, s in zip(names, symmetries) if np.array_equal(s, y)]
    assert len(moved) == 1 and moved != ["unchanged"] and moved[0] not in seen
    seen.append(moved[0])
    print(f"draw {i}: mask {moved[0]:<31} mean intensity {x.mean():.3f}")

# %% [markdown]
# Each of the five draws moved the mask by a different symmetry (the asserts check that no two are the same
# and none left it unchanged), and each changed the image's mean intensity: brightness, contrast and gamma act on the image
# only, the mask stays binary.

# %% [markdown]
# ## Bringing your own data
#
# Anything that follows the `.npz` contract loads: `images` (N, H, W), `masks` (the same shape, {0, 1} or
# {0, 255}), and optionally `labels` (instance ids). Real data in its public layouts is imported by the command
# line, which tiles each image into `--size` tiles:
#
# ```bash
# python -m nucleilib import-dsb2018 stage1_train/ --out data/dsb2018.npz      # <id>/images, <id>/masks
# python -m nucleilib import-bbbc039 BBBC039/ --out data/bbbc039.npz           # images/*.tif, masks/*.png
# python -m nucleilib import-pairs my_images/ my_labels/ --out data/mine.npz   # matched by file stem
# python -m nucleilib download bbbc039    # online: fetch, check the hash, cache, import
# ```
#
# The same in Python: a folder of images and label images, written here for the demonstration.

# %%
import cv2

folder = Path(tempfile.mkdtemp())
(folder / "images").mkdir(); (folder / "labels").mkdir()
for i in range(2):
    cv2.imwrite(str(folder / "images" / f"field{i}.png"), (images[i, 0] * 255).astype(np.uint8))
    cv2.imwrite(str(folder / "labels" / f"field{i}.png"), labels[i].astype(np.uint16))
summary = datasets.import_pairs(folder / "images", folder / "labels", folder / "mine.npz", size=64, progress=False)
print({key: summary[key] for key in ("images", "tiles", "nuclei")})

# %% [markdown]
# ## In this chapter we
# - made the built-in synthetic data set, measured its nuclei, and loaded it with the checks of `load_npz`;
# - built percentile normalization by hand, and saw why `/255` and `/65535` fail on 16-bit microscopy;
# - measured the data set's statistics, told a share of touching nuclei from a share of tiles with touching
#   nuclei, and compared the synthetic set with real fluorescence images;
# - split the data reproducibly, augmented it, and imported images of our own.
#
# Next, chapter 02 builds the U-Net that turns such an image into a nucleus mask.

# %% [markdown]
# ## Exercises
# 1. Make an image with `synth.make_image` and a seed of your choice. How many nuclei does it have, and how many
#    blobs does the mask have? Why can the two differ?
# 2. Normalize `raw12` with the 0th and 100th percentiles instead of 1 and 99.8. What happens when one hot pixel
#    (say 4095) is added to the image?
# 3. Write `percentile_normalize(image, low, high)` with numpy: any image (8-bit, 16-bit, float) in, a float32
#    array of the same shape in [0, 1] out, the `low` percentile mapped to 0 and the `high` one to 1. Mind two
#    cases: a constant image, and a dark image with a single bright pixel, whose 1st and 99.8th percentiles are
#    equal (what should the upper end be then?). Write it in a new cell, then run the check that follows.

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
image_1, labels_1 = synth.make_image(np.random.default_rng(2024), size=128)
blobs, _ = data.label_components(labels_1 > 0)
print(labels_1.max(), "nuclei,", blobs, "blobs: touching nuclei form one blob")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
hot = raw12.copy()
hot[0, 0] = 4095
for low_p, high_p in [(0, 100), (1, 99.8)]:
    before, after = data.normalize_image(raw12, low_p, high_p), data.normalize_image(hot, low_p, high_p)
    print(f"percentiles {low_p}-{high_p}: mean {before.mean():.3f} without the hot pixel, {after.mean():.3f} with it")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
def percentile_normalize(image, low=1.0, high=99.8):
    values = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:                  # e.g. one bright pixel in a dark image: use the maximum as the upper end
        hi = values.max()
    if hi <= lo:                  # a constant image: nothing to scale
        return np.zeros(values.shape, np.float32)
    return np.clip((values - lo) / (hi - lo), 0, 1).astype(np.float32)

# %% [markdown]
# The check for exercise 3 (it compares with `data.normalize_image`):

# %% tags=["exercise-check", "nbval-check-output"]
rng = np.random.default_rng(0)
one_bright = np.zeros((32, 32), np.uint8)
one_bright[5, 7] = 200
tests = {"8-bit": rng.integers(0, 256, (32, 32)).astype(np.uint8), "16-bit narrow range": raw12,
         "float": rng.normal(size=(16, 16)), "constant": np.full((8, 8), 7, np.uint16), "one bright pixel": one_bright}
for name, array in tests.items():
    for low_p, high_p in [(1, 99.8), (0, 100), (5, 95)]:
        mine = np.asarray(percentile_normalize(array, low_p, high_p))
        assert mine.shape == array.shape and np.allclose(mine, data.normalize_image(array, low_p, high_p),
                                                         atol=1e-5), (name, low_p, high_p)
print("percentile_normalize is correct on:", ", ".join(tests))
