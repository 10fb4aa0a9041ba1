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
# - read the statistics that matter (nuclei per image, sizes, foreground fraction);
# - bring your own images: `.npz`, the 2018 Data Science Bowl layout, BBBC039, folders of image/label pairs.

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
# the subject of chapter 05. Here is the image with the outline of every true nucleus.

# %%
from nucleilib import augment, datasets, io, viz

fig = viz.show_grid([data.normalize_image(image), data.normalize_image(image)], [None, labels],
                    titles=["image", "true nuclei"], ncols=2, size=3.2)

# %% [markdown]
# ## The built-in data set
#
# The project's default data is a synthetic generator (`nucleilib.synth`), so everything runs offline and the
# ground truth is exact. The settings come from a *preset*: `NUCLEILIB_FAST=1` (CI) makes a small set, the
# default a medium one, and `NUCLEILIB_PRESET=full` the source project's 2000 images.

# %%
from nucleilib.presets import preset, preset_name

settings = preset()
print(preset_name(), settings)

# %% [markdown]
# The command line writes the same set to a file: `python -m nucleilib make-data --n 2000 --size 128 --seed 0
# --out data/nuclei.npz`. In a notebook, `builtin_dataset` makes it once and loads it from `data/` afterwards.

# %%
images, masks, labels = datasets.builtin_dataset(n=settings["n_images"], size=128, seed=0)
print("images", images.shape, images.dtype, f"[{images.min():.2f}, {images.max():.2f}]")
print("masks ", masks.shape, masks.dtype, np.unique(masks))
print("labels", labels.shape, labels.dtype)

# %% [markdown]
# `load_npz` (used inside) always returns float32 arrays shaped (N, 1, H, W): images normalized to [0, 1] and
# masks in {0, 1}; instance labels come third when the file has them. A grid of the first images, with the true
# outlines:

# %%
fig = viz.show_grid(images[:8], labels[:8], titles=[f"{labels[i].max()} nuclei" for i in range(8)])
viz.save_figure(fig, "01_grid.png")

# %% [markdown]
# The generator draws what a microscope records: elliptical, irregular nuclei of radius 4 to 20 px with
# chromatin texture; dim ones and a few very bright mitotic ones; clusters of touching nuclei; optical blur;
# photon (Poisson) and camera (Gaussian) noise; an uneven background.

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
# range: BBBC039's images span about 110 to 4095. We make one such 12-bit image from our 8-bit-looking one.

# %%
raw = synth.make_image(np.random.default_rng(3), size=128)[0].astype(np.float64)
raw12 = (110 + (raw - raw.min()) / (raw.max() - raw.min()) * 900).astype(np.uint16)
print(raw12.dtype, raw12.min(), raw12.max())

# %% [markdown]
# Three ways to bring it to [0, 1]: divide by 255 (the 8-bit habit), divide by 65535 (the 16-bit maximum), and
# the per-image percentile normalization that `nucleilib` uses (1st and 99.8th percentiles mapped to 0 and 1).

# %% tags=["nbval-check-output"]
candidates = {
    "/ 255": np.clip(raw12 / 255, 0, 1),
    "/ 65535": raw12 / 65535,
    "percentile": data.normalize_image(raw12),
}
for name, x in candidates.items():
    print(f"{name:>10}: min {x.min():.3f}  max {x.max():.3f}  saturated {np.mean(x >= 1):.0%}")

# %% [markdown]
# `/255` lifts the background to above 0.4 and clips every bright nucleus at 1; `/65535` squeezes the whole
# image into the bottom 2% of the range, nearly black; the percentile version uses the whole range. The
# histograms and images side by side:

# %%
fig = viz.normalization_figure(candidates)
viz.save_figure(fig, "01_normalization.png")

# %% [markdown]
# ## The statistics a reader should know
#
# Before training, know your data: how many nuclei an image holds, how big they are, and how much of an image
# is foreground (this decides how imbalanced the pixel classes are, chapter 04).

# %%
stats = data.dataset_stats(images, labels)
for key in ["nuclei_per_image_min", "nuclei_per_image_median", "nuclei_per_image_max",
            "area_p5", "area_p50", "area_p95", "radius_median", "foreground_fraction", "touching_fraction"]:
    print(f"{key:>24}: {stats[key]:8.2f}")

# %% [markdown]
# The same statistics measured on real annotated fluorescence images (2018 Data Science Bowl stage1_train and
# BBBC039, whole images) say where the synthetic set sits. Real data is not needed to run this book; the numbers
# were measured once with `dataset_stats` on the public sets:
#
# | statistic | synthetic (128 px tiles) | DSB 2018 (fluorescence) | BBBC039 (U2OS) |
# |---|---|---|---|
# | nuclei per 128 px tile (p5 / p50 / p95) | 1 / 5 / 25 | 0 / 4 / 19 | 1 / 7 / 13 |
# | equivalent radius, px (p5 / p50 / p95) | 3.2 / 7.1 / 15.4 | 3.2 / 7.3 / 17.3 | 2.6 / 14.2 / 17.8 |
# | foreground fraction (p50) | 0.09 | 0.09 | 0.20 |
# | contrast, normalized (p50) | 0.55 | 0.57 | 0.55 |
# | tiles with touching nuclei | 51% | 31% | 49% |

# %% [markdown]
# Distributions rather than medians: nuclei per image and nucleus area over the whole set.

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
# together; brightness, contrast, gamma and noise change the image only. `NucleiDataset` is a torch `Dataset` that
# does this on the fly (seeded); here six draws of the second image:

# %%
dataset = augment.NucleiDataset(np.repeat(images[1:2], 6, axis=0), np.repeat(masks[1:2], 6, axis=0), seed=0)
pairs = [dataset[i] for i in range(6)]
fig = viz.show_grid([image[0].numpy() for image, _ in pairs] + [mask[0].numpy() for _, mask in pairs],
                    ncols=6, size=1.8)
viz.save_figure(fig, "01_augmentation.png")

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
# - made the built-in synthetic data set and loaded it with the checks of `load_npz`;
# - saw why `/255` and `/65535` fail on 16-bit microscopy and used percentile normalization instead;
# - measured the data set's statistics and compared them with real fluorescence images;
# - split the data reproducibly, augmented it, and imported images of our own.
#
# Next, chapter 02 builds the U-Net that turns such an image into a nucleus mask.

# %% [markdown]
# ## Exercises
# 1. Make an image with `synth.make_image` and a seed of your choice. How many nuclei does it have, and how many
#    blobs does the mask have? Why can the two differ?
# 2. Normalize `raw12` with the 0th and 100th percentiles instead of 1 and 99.8. What happens when one hot pixel
#    (say 4095) is added to the image?

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
image_1, labels_1 = synth.make_image(np.random.default_rng(2024), size=128)
blobs, _ = data.label_components(labels_1 > 0)
print(labels_1.max(), "nuclei,", blobs, "blobs: touching nuclei form one blob")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
hot = raw12.copy()
hot[0, 0] = 4095
for low, high in [(0, 100), (1, 99.8)]:
    x = data.normalize_image(hot, low=low, high=high)
    print(f"percentiles {low}-{high}: median nucleus-free pixel {np.median(x):.3f}, mean {x.mean():.3f}")
