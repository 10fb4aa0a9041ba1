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
# # 03 · Training the U-Net
#
# After this chapter you will be able to:
# - train the U-Net with the source project's settings: Adam at learning rate 0.001, lowered on a plateau;
# - read loss, Dice and learning-rate curves, and compare predictions with the ground truth;
# - save a checkpoint with its provenance, load it back, and compare it with the shipped model.

# %% [markdown]
# First the result we are after: the shipped model's pixel Dice on synthetic images it has never seen (Dice is
# 1 for a perfect mask, 0 for no overlap).

# %% [markdown]
# A switch for a quick demo: `True` trains on 200 images for 3 epochs (the "fast" preset that CI uses), about a
# minute; `False` (the stored outputs) uses 600 images and 12 epochs, a few minutes on a laptop CPU.

# %%
QUICK_DEMO = False  # True: small data and a few epochs (the "fast" preset that CI uses)
import os
if QUICK_DEMO:
    os.environ["NUCLEILIB_FAST"] = "1"

# %% tags=["nbval-check-output"]
from nucleilib import checkpoint, data, datasets, synth, train

test_set = synth.make_dataset(n=16, size=128, seed=2024)
test_images = data.normalize_batch(test_set["images"])[:, None]
shipped, shipped_info = checkpoint.load_model()
scores = train.evaluate_pixels(shipped, test_images, test_set["masks"][:, None])
print(f"shipped model on 16 unseen images: Dice {scores['dice']:.2f}, IoU {scores['iou']:.2f}")

# %% [markdown]
# ## The data
#
# The synthetic set of chapter 01, split by a seeded shuffle. The preset decides its size and the number of
# epochs: small under `NUCLEILIB_FAST=1`, a few minutes by default, and the source project's 2000 images and
# 300 epochs with `NUCLEILIB_PRESET=full`.

# %%
from nucleilib.presets import preset, preset_name

settings = preset()
images, masks, labels = datasets.builtin_dataset(n=settings["n_images"], seed=0)
train_idx, val_idx, test_idx = data.split_indices(len(images), seed=0)
print(preset_name(), settings, "->", len(train_idx), "training and", len(val_idx), "validation images")

# %% [markdown]
# ## The model and the loss
#
# The network of chapter 02 at `base=8`: on a laptop CPU it reaches a better Dice than `base=16` in the same
# minutes (measured: 0.970 against 0.950 after five minutes), with a quarter of the parameters.

# %%
import torch
from nucleilib import model

torch.manual_seed(0)
net = model.UNet(in_channels=1, out_channels=1, base=8, depth=4)
print(f"{model.count_parameters(net):,} parameters")

# %% [markdown]
# The loss is binary cross-entropy plus soft Dice, both computed from the logits; the sigmoid is applied in one
# place only. Checked at once on a hand-worked case: confident, correct logits give a loss near zero, and
# logits of zero (probability 0.5 everywhere) a large one.

# %% tags=["nbval-check-output"]
from nucleilib import losses

target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
for name, logits in [("confident and right", (target * 2 - 1) * 10), ("undecided", torch.zeros_like(target))]:
    print(f"{name:>20}: BCE {losses.bce_loss(logits, target):.3f}, Dice loss {losses.dice_loss(logits, target):.3f}")

# %% [markdown]
# ## Training
#
# `fit` runs Adam at the source's learning rate 0.001, halves the learning rate when the validation loss has
# not improved for 3 epochs (the source's "dynamic learning rate adjustments"), stops early after 8 epochs
# without improvement, augments every batch, and writes the best checkpoint atomically after each improvement.

# %%
from nucleilib.io import project_root

checkpoint_path = project_root() / "data" / "chapter03_unet.pt"
recipe = train.TrainSettings(epochs=settings["epochs"], lr=1e-3, batch_size=16, seed=0,
                             max_minutes=settings["max_minutes"])
history = train.fit(net, (images[train_idx], masks[train_idx]), (images[val_idx], masks[val_idx]), recipe,
                    out=checkpoint_path)
print(f"{len(history['val_loss'])} epochs, stopped by: {history['stop_reason']}, "
      f"best validation Dice {max(history['val_dice']):.3f}")

# %% [markdown]
# ## Reading the curves
#
# Training loss falling while validation loss follows it means the model generalizes; a validation loss that
# turns up while the training loss keeps falling would be overfitting. The learning rate panel shows each
# plateau step.

# %%
from nucleilib import viz

fig = viz.plot_history(history, title=f"U-Net, Adam lr 0.001 ({preset_name()} preset)")
viz.save_figure(fig, "03_curves.png")

# %% [markdown]
# ## Predictions next to the ground truth
#
# Numbers hide how a model fails; pictures show it. Validation images, their true outlines, and the predicted
# probability maps:

# %%
from nucleilib import predict

shown = val_idx[:4]
probs = predict.predict_batch(net, torch.from_numpy(images[shown]))
fig = viz.show_grid([*images[shown], *images[shown], *probs[:, 0]], [None] * 4 + list(labels[shown]) + [None] * 4,
                    titles=["image"] * 4 + ["true nuclei"] * 4 + ["P(nucleus)"] * 4, ncols=4)
viz.save_figure(fig, "03_predictions.png")

# %% [markdown]
# ## The checkpoint
#
# A checkpoint holds only tensors and plain data, so it loads with `torch.load(..., weights_only=True)` and never
# runs code. It carries the model's configuration, the normalization, the history and the provenance.

# %%
reloaded, info = checkpoint.load_model(checkpoint_path)
print(sorted(info))
print(info["config"], info["normalization"])

# %% [markdown]
# ## Against the shipped model
#
# The shipped model (`models/nuclei_unet.pt`) was made by the project's own `train` command on synthetic and real
# images, for longer. Both on the same unseen synthetic test images:

# %%
for name, candidate in [("this chapter", reloaded), ("shipped", shipped)]:
    scores = train.evaluate_pixels(candidate, test_images, test_set["masks"][:, None])
    print(f"{name:>13}: Dice {scores['dice']:.3f}  IoU {scores['iou']:.3f}")

# %% [markdown]
# The shipped model's provenance says how to make it again:

# %%
print(shipped_info["provenance"]["command"])
print(shipped_info["provenance"]["metrics"])

# %% [markdown]
# The same training from the command line, with the source project's full schedule (up to 300 epochs; hours on a
# CPU, minutes on a GPU):
#
# ```bash
# python -m nucleilib make-data --n 2000 --size 128 --seed 0 --out data/nuclei.npz
# python -m nucleilib train --data data/nuclei.npz --out models/my_unet.pt --preset full
# ```
#
# `--preset fast` trains in about three minutes on a laptop CPU. Ctrl-C keeps the best checkpoint so far, and a
# stopped run continues from `my_unet.last.pt`.

# %% [markdown]
# ## In this chapter we
# - trained the U-Net with Adam at 0.001 and plateau scheduling, with early stopping and checkpoints;
# - plotted the loss, Dice and learning-rate curves and looked at predictions beside the truth;
# - saved and loaded a checkpoint and compared it with the shipped model.
#
# Chapter 04 breaks this training on purpose, three ways.

# %% [markdown]
# ## Exercises
# 1. Train for the same number of epochs without augmentation (`augment=False`). Is the validation Dice better or
#    worse, and why?
# 2. Train with `loss=losses.bce_loss` only. Which images suffer most?
# 3. Write `dice_loss_by_hand(logits, target, smooth=1.0)`: the sigmoid of the logits, then one minus the Dice
#    `(2 * intersection + smooth) / (sum of probabilities + sum of target + smooth)` with the sums over the whole
#    batch (one Dice per channel, averaged over channels). The cell after the solutions checks it against
#    `losses.dice_loss`.

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
torch.manual_seed(0)
plain = model.UNet(base=8, depth=4)
no_augment = train.TrainSettings(epochs=min(settings["epochs"], 5), augment=False,
                                 max_minutes=settings["max_minutes"])
plain_history = train.fit(plain, (images[train_idx], masks[train_idx]), (images[val_idx], masks[val_idx]),
                          no_augment, progress=False)
print(f"without augmentation: best validation Dice {max(plain_history['val_dice']):.3f}")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
torch.manual_seed(0)
bce_only = model.UNet(base=8, depth=4)
short = train.TrainSettings(epochs=min(settings["epochs"], 5), max_minutes=settings["max_minutes"])
bce_history = train.fit(bce_only, (images[train_idx], masks[train_idx]), (images[val_idx], masks[val_idx]),
                        short, loss=losses.bce_loss, progress=False)
print(f"BCE only: best validation Dice {max(bce_history['val_dice']):.3f}")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
def dice_loss_by_hand(logits, target, smooth=1.0):
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * target).sum(dim=(0, 2, 3))  # one value per channel
    total = probabilities.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()

# %% [markdown]
# The check for exercise 3: on the hand-worked 2x2 case (all logits 0, so every probability is 0.5, against a
# mask of two pixels: Dice (2 x 1 + 1) / (2 + 2 + 1) = 0.6, loss 0.4) and on random batches:

# %% tags=["exercise-check", "nbval-check-output"]
undecided, half = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
assert abs(dice_loss_by_hand(undecided, half).item() - 0.4) < 1e-6
generator = torch.Generator().manual_seed(0)
for _ in range(3):
    logits = torch.randn(4, 1, 16, 16, generator=generator)
    target = (torch.rand(4, 1, 16, 16, generator=generator) > 0.7).float()
    assert torch.allclose(dice_loss_by_hand(logits, target), losses.dice_loss(logits, target), atol=1e-6)
print("dice_loss_by_hand is correct")

