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
# # 04 · Failure 1: the loss stays high
#
# After this chapter you will be able to:
# - compute the loss of a network that has learned nothing (a constant prediction) and tell a training stuck at
#   that level from one that learns;
# - reproduce the source project's "loss stays high" at its own learning rate, 0.001, and fix it by normalizing
#   the images;
# - tell a learning rate that is too high, and a training that is too short, from the curves, and read a
#   learning-rate range test.

# %% [markdown]
# The switch below picks the preset: `False` (the default preset) trains three small U-Nets on 480 crops for
# 8 epochs each and runs a short learning-rate range test; `True` (the fast preset that CI uses) does the
# same on 160 crops, 6 epochs each. Measured run times:
# `docs/teaching.md`.

# %%
QUICK_DEMO = False  # True: small data and a few epochs (the "fast" preset that CI uses)
import os
if QUICK_DEMO:
    os.environ["NUCLEILIB_FAST"] = "1"

# %% [markdown]
# ## The failure beside its fix
#
# The source project trained its U-Net with Adam at learning rate 0.001 and saw the loss stay high. We redo
# that on the synthetic images of chapter 01 in their raw form: 16-bit integers from an 8-bit or a 12-bit
# camera. To keep each training short we use the top-left 64 x 64 crop of every image.

# %%
import numpy as np
from nucleilib import data, synth
from nucleilib.presets import preset, preset_name

settings = preset()
raw = synth.make_dataset(n=settings["n_images"], size=128, seed=0)
crops, masks = raw["images"][:, None, :64, :64], raw["masks"][:, None, :64, :64].astype(np.float32)
train_idx, val_idx, _ = data.split_indices(len(crops), seed=0)
epochs = min(2 * settings["epochs"], 8)
print(preset_name(), f"{len(train_idx)} training crops, {len(val_idx)} validation crops, {epochs} epochs;",
      f"images {crops.dtype}, values 0 to {crops.max()}")

# %% [markdown]
# Two ways to bring them to [0, 1]: divide by 65535, the largest 16-bit value (the failure), or scale each
# image between its own 1st and 99.8th percentiles, as chapter 01 does (the fix). What the network receives:

# %%
inputs = {"images / 65535": crops / np.float32(65535),
          "percentiles": data.normalize_batch(raw["images"])[:, None, :64, :64]}
for name, x in inputs.items():
    image_max = x.max(axis=(1, 2, 3))
    print(f"{name:>14}: largest value {x.max():.4f}, median of the image maxima {np.median(image_max):.4f}")

# %% [markdown]
# One helper trains a fresh, seeded U-Net (the `base=8` network of chapters 02 and 03) with the source's
# recipe: Adam, BCE + Dice, the learning rate halved when the validation loss stops improving. Every run below
# differs from the others in the inputs or the learning rate only.

# %%
import torch
from nucleilib import model, train


def train_run(images, lr, n_epochs=epochs):
    torch.manual_seed(0)
    net = model.UNet(base=8, depth=4)
    recipe = train.TrainSettings(epochs=n_epochs, lr=lr, batch_size=8, seed=0, early_stopping=None)
    history = train.fit(net, (images[train_idx], masks[train_idx]), (images[val_idx], masks[val_idx]),
                        recipe, progress=False)
    return net, history


# %% [markdown]
# The two inputs, both at the source's learning rate 0.001:

# %%
runs = {name: train_run(x, lr=0.001) for name, x in inputs.items()}
for name, (_, history) in runs.items():
    print(f"lr 0.001, {name:>14}: validation loss {history['val_loss'][0]:.2f} -> {history['val_loss'][-1]:.2f}"
          f" over {len(history['val_loss'])} epochs, validation Dice {history['val_dice'][-1]:.2f}")

# %% [markdown]
# Is the loss printed for `images / 65535` high? A network that has learned nothing predicts the same
# probability everywhere. The natural constant is the fraction of nucleus pixels in the training crops (where
# BCE alone is lowest). Its loss on the validation crops, averaged over batches of 8 as `fit` does, is the level
# to compare with; nearby constants score about the same:

# %%
from nucleilib import losses

foreground = float(masks[train_idx].mean())
val_batches = torch.split(torch.from_numpy(masks[val_idx]), 8)      # fit's validation batches


def constant_level(p):
    logit = float(np.log(p / (1 - p)))
    return sum(float(losses.bce_dice_loss(torch.full_like(y, logit), y)) * len(y) for y in val_batches) / len(val_idx)


constant_loss = constant_level(foreground)
print(f"foreground {foreground:.1%} of the pixels; loss of a constant prediction {constant_loss:.2f} "
      f"(constant 0.05: {constant_level(0.05):.2f}, 0.2: {constant_level(0.2):.2f})")

# %% [markdown]
# The two cameras: an image whose values exceed 255 comes from the 12-bit one. For the figure, the validation
# crop with most nuclei from each camera:

# %%
twelve_bit = raw["images"].max(axis=(1, 2)) > 255            # an 8-bit camera never exceeds 255
cameras = {"8-bit": ~twelve_bit, "12-bit": twelve_bit}
shown = {camera: max((i for i in val_idx if of_camera[i]), key=lambda i: len(np.unique(raw["labels"][i, :64, :64])))
         for camera, of_camera in cameras.items()}
print({camera: f"crop {k}, values up to {raw['images'][k].max()}" for camera, k in shown.items()})

# %% [markdown]
# The failure and its fix side by side: the two crops as the network receives them (all on the same 0-to-1
# grey scale), and the validation loss per epoch against the constant-prediction level.

# %%
import matplotlib.pyplot as plt
from nucleilib import viz

fig, axes = plt.subplot_mosaic("abL;cdL", figsize=(11, 5.4), width_ratios=[1, 1, 1.7], layout="constrained")
for panel, ((camera, k), (name, x)) in zip("abcd", [(c, i) for c in shown.items() for i in inputs.items()]):
    ax = axes[panel]                                         # rows: cameras; columns: inputs
    ax.imshow(x[k, 0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{camera} camera, input: {name}", fontsize=9)
    ax.axis("off")
for name, (_, history) in runs.items():
    axes["L"].plot(np.arange(1, len(history["val_loss"]) + 1), history["val_loss"], marker="o", label=name)
axes["L"].axhline(constant_loss, color="gray", linestyle="--", label="constant prediction")
axes["L"].set(xlabel="epoch", ylabel="validation loss", title="Adam, lr 0.001")
axes["L"].legend(fontsize=8)
viz.save_figure(fig, "04_loss_stays_high.png")

# %% [markdown]
# Checked, with the numbers: divided by 65535, the validation loss ends at the level of a constant prediction
# (within 5 % of it, or above) and the Dice is about 0; normalized per image, the same training falls far below
# it.

# %%
stuck, learns = runs["images / 65535"][1], runs["percentiles"][1]
print(f"constant prediction {constant_loss:.2f}; / 65535: last loss {stuck['val_loss'][-1]:.2f}, Dice "
      f"{stuck['val_dice'][-1]:.2f}; percentiles: last loss {learns['val_loss'][-1]:.2f}, Dice {learns['val_dice'][-1]:.2f}")
assert stuck["val_loss"][-1] > 0.95 * constant_loss and stuck["val_dice"][-1] < 0.05
assert learns["val_loss"][-1] < 0.8 * constant_loss and learns["val_dice"][-1] > 0.7

# %% [markdown]
# ### Why
#
# Divided by 65535, the images use a sliver of [0, 1]. The ranges printed where the two inputs were made: the
# largest value is 0.06 (a 12-bit camera reaches 4095 of 65535), and the median crop's maximum is about 0.004
# (255 / 65535 = 0.0039 is the 8-bit camera's limit), so in a crop from the 8-bit camera nucleus and background
# differ by 0.0039 at most. Within these epochs, at lr 0.001, the network does not learn to find nuclei in such inputs.
# What it predicts instead, on the validation crops:

# %%
from nucleilib import predict

for name, x in inputs.items():
    prob = predict.predict_batch(runs[name][0], x[val_idx])
    print(f"{name:>14}: highest probability {prob.max():.3f}, pixels marked nucleus (>= 0.5) {np.mean(prob >= 0.5):.1%}")
    if name == "images / 65535":
        assert prob.max() < 0.5

# %% [markdown]
# Divided by 65535, no validation pixel reaches 0.5: the network predicts background everywhere. What each
# input makes of the two cameras, over all crops (medians of the nucleus and of the background pixels):

# %%
nucleus = masks[:, 0] == 1
for name, x in inputs.items():
    for camera, of_camera in cameras.items():
        values, in_nucleus = x[of_camera, 0], nucleus[of_camera]
        print(f"{name:>14}, {camera:>6} camera: median nucleus {np.median(values[in_nucleus]):.4f}, "
              f"median background {np.median(values[~in_nucleus]):.4f}")
divided = inputs["images / 65535"][:, 0]
ratio = np.median(divided[twelve_bit][nucleus[twelve_bit]]) / np.median(divided[~twelve_bit][nucleus[~twelve_bit]])
print(f"divided by 65535, the 12-bit camera's median nucleus is {ratio:.0f} x the 8-bit camera's")

# %% [markdown]
# Divided by 65535, the 12-bit camera's nuclei sit about 20 times higher than the 8-bit camera's (the last
# line), and both are a sliver above 0: black in the figure's first column. Normalizing each image between its own percentiles
# (`data.normalize_image`, which `io.load_npz` applies to every data set of the project) puts both cameras on
# the same scale, background near 0 and nuclei around the middle (the medians printed); in the second column
# the nuclei of both crops stand out from the background. That is the fix.
#
# ## A learning rate that is too high
#
# The other classic way to keep the loss high. The same normalized crops at lr 10:

# %%
runs["lr 10"] = train_run(inputs["percentiles"], lr=10.0)
history = runs["lr 10"][1]
print(f"lr 10: validation loss {history['val_loss'][0]:.2f} -> {history['val_loss'][-1]:.2f}, "
      f"Dice {history['val_dice'][-1]:.2f}; learning rate per epoch", " ".join(f"{lr:.2g}" for lr in history["lr"]))

# %% [markdown]
# Beside the good run (lr 0.001 on the same inputs), with the constant-prediction level dashed; the right panel
# is the learning rate of each epoch, halved on a plateau:

# %%
curves = {"lr 10": runs["lr 10"][1], "lr 0.001": runs["percentiles"][1]}
fig = viz.compare_curves(curves, baseline=constant_loss, title="normalized crops, two learning rates")
viz.save_figure(fig, "04_learning_rates.png")

# %% [markdown]
# Checked: at lr 10 the validation loss ends at the constant prediction's (within 5 %, or above), and the plateau rule,
# which halves the rate only after epochs without progress (the schedule printed above), leaves it far above
# 0.001: lowering the learning rate on a plateau does not rescue it.

# %%
print(f"lr 10: last loss {history['val_loss'][-1]:.2f} (constant {constant_loss:.2f}), Dice "
      f"{history['val_dice'][-1]:.2f}, last learning rate {history['lr'][-1]:.2g}")
assert history["val_loss"][-1] > 0.95 * constant_loss and history["val_dice"][-1] < 0.05
assert min(history["lr"]) > 1.0

# %% [markdown]
# ## A learning-rate range test
#
# Instead of guessing, measure: train for a few dozen batches while the learning rate grows by the same factor
# at every step, from 1e-6 to 10, and record the loss at each (`train.lr_range_test`; it stops early once the
# loss explodes, and puts the weights back afterwards).

# %%
torch.manual_seed(0)
x_train = inputs["percentiles"][train_idx]
sweep = train.lr_range_test(model.UNet(base=8, depth=4), (x_train, masks[train_idx]),
                            train.TrainSettings(batch_size=8), start_lr=1e-6, end_lr=10.0, steps=40)
print(f"{len(sweep['lr'])} steps, up to lr {sweep['lr'][-1]:.2g}; lowest smoothed loss at lr {sweep['best_lr']:.2g}"
      f"; suggested lr (a tenth of that) {sweep['suggested_lr']:.2g}")
last, lowest = sweep["smoothed"][-1], min(sweep["smoothed"])
print(f"last smoothed loss {last:.2f} = {last / lowest:.1f} x the lowest ({lowest:.2f}); the test stops above 4 x")
assert last > 4 * lowest

# %%
fig = viz.lr_range_figure(sweep, {"0.001 (source)": 1e-3, "suggested": sweep["suggested_lr"], "10": 10.0})
fig.axes[0].set_ylim(0, 2 * sweep["smoothed"][0])          # the explosion would squash the rest of the curve
viz.save_figure(fig, "04_lr_range_test.png")

# %% [markdown]
# How the smoothed curve moves, in numbers: its value at the first step, at 0.001, at its lowest, and the rate
# where it first drops below 90 % of its start.

# %%
lr, smoothed = np.array(sweep["lr"]), np.array(sweep["smoothed"])
at_source = smoothed[np.argmin(np.abs(np.log(lr / 1e-3)))]
falling_from = lr[np.argmax(smoothed < 0.9 * smoothed[0])]
print(f"smoothed loss: start {smoothed[0]:.2f}, at lr 0.001 {at_source:.2f}, lowest {smoothed.min():.2f} "
      f"(at lr {sweep['best_lr']:.2g}); below 90 % of the start from lr {falling_from:.2g}")
assert abs(at_source - smoothed[0]) < 0.1 * smoothed[0] and falling_from > 1e-3 and lr[-1] < 10

# %% [markdown]
# Read it from left to right: flat, then falling, then (where the test stopped) exploding: its last smoothed
# loss is more than 4 times its lowest (printed above). The source's 0.001
# lies where the curve is still flat: one batch per rate is far too little for 0.001 to move the loss, while the
# training above took every batch of several epochs to get there. The test says which rates change the loss
# *fast*; the rule of thumb picks a tenth of the rate at the lowest point (printed above). Lr 10 lies right of
# where the test stopped (the last rate it tried is printed above).
#
# ## Too few epochs
#
# The third way to see a high loss is to stop too early. The good run (lr 0.001, normalized) after its first
# epoch, and at its end:

# %%
after_one, at_end = learns["val_loss"][0], learns["val_loss"][-1]
print(f"after 1 epoch {after_one:.2f} ({after_one / constant_loss:.0%} of the constant prediction's); "
      f"after {len(learns['val_loss'])} epochs {at_end:.2f} ({at_end / constant_loss:.0%})")
assert after_one > 0.9 * constant_loss and at_end < 0.8 * constant_loss

# %% [markdown]
# After one epoch the loss is still close to the constant-prediction level, yet the training is fine: it only
# needs more steps. The source's full recipe runs up to 300 epochs (chapter 03 shows a long run).
#
# ## How to recognise this in your own project
# - Compute the constant-prediction loss first; a loss that sits at that level has learned nothing.
# - Print `min`, `max` and `dtype` of one batch as the network receives it: images should spread over [0, 1].
# - A loss at or above the constant level from the first epoch on, with normalized inputs: lower the learning
#   rate (in steps of 10), or run `train.lr_range_test`.
# - A loss still falling at the last epoch: train longer.

# %% [markdown]
# ## In this chapter we
# - reproduced "the loss stays high" at the source's learning rate 0.001 with 16-bit images divided by 65535,
#   and fixed it by normalizing each image between its percentiles;
# - kept the loss high with a learning rate of 10, which halving on a plateau does not rescue;
# - ran a learning-rate range test, on which 0.001 sits where the curve is still flat;
# - saw that after one epoch even a good training is still near the constant-prediction level.
#
# Chapter 05 turns to the second failure: predicted masks that are all zero.

# %% [markdown]
# ## Exercises
# 1. Write `constant_prediction_loss(masks)`: the BCE + Dice loss (`losses.bce_dice_loss`) of a network that
#    predicts the foreground fraction of `masks` at every pixel of `masks`. The cell after the solution checks it.
# 2. How many epochs did the good run need to get below half the constant-prediction loss?
# 3. Does the network trained at lr 10 predict "background everywhere" or "nucleus everywhere"?

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
def constant_prediction_loss(masks):
    masks = torch.as_tensor(masks, dtype=torch.float32)
    fraction = float(masks.mean())
    logit = float(np.log(fraction / (1 - fraction)))
    return float(losses.bce_dice_loss(torch.full_like(masks, logit), masks))


# %% tags=["exercise-check"]
quarter = torch.zeros(1, 1, 4, 4)
quarter[..., :2, :2] = 1                           # a quarter of the pixels: p = 0.25 everywhere
bce_by_hand = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
by_hand = bce_by_hand + 1 - (2 * 1 + 1) / (4 + 4 + 1)       # + 1 - soft Dice with eps = 1 (losses.dice_loss)
assert abs(constant_prediction_loss(quarter) - by_hand) < 1e-5
at_once = constant_prediction_loss(masks[val_idx])   # all crops at once, at their own foreground fraction
assert abs(at_once - constant_loss) < 0.01
print(f"hand-worked case {by_hand:.4f}: right; validation crops at once {at_once:.3f} "
      f"(the batch-averaged level {constant_loss:.3f})")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
below_half = [epoch + 1 for epoch, loss in enumerate(learns["val_loss"]) if loss < constant_loss / 2]
print(f"first epoch below half the constant loss ({constant_loss / 2:.2f}):", below_half[0] if below_half else "none")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
prob_10 = predict.predict_batch(runs["lr 10"][0], inputs["percentiles"][val_idx])
print(f"lr 10: pixels marked nucleus {np.mean(prob_10 >= 0.5):.1%}, probabilities from {prob_10.min():.3f} "
      f"to {prob_10.max():.3f}")
best_epoch = int(np.argmin(history["val_loss"]))             # fit returns the weights of this epoch
print(f"(the weights of epoch {best_epoch + 1}, validation loss {history['val_loss'][best_epoch]:.2f})")
