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
# - write a training loop from torch primitives: Adam at learning rate 0.001, the BCE + Dice loss, a validation
#   pass, `ReduceLROnPlateau`, and keeping the best weights;
# - read loss, Dice and learning-rate curves, and say what the source project's 300 epochs buy over a dozen;
# - train the two-output U-Net (nucleus and nucleus interior) that the counting uses, and hand the loop over to
#   `nucleilib.train.fit`, which does the same and adds checkpoints, resuming, early stopping and a time budget.

# %% [markdown]
# The switch below picks the preset: `False` (the default preset) trains on 600 images for 12 epochs; `True`
# (the fast preset that CI uses) on 200 images for 3 epochs. Measured run times: `docs/teaching.md`.

# %%
QUICK_DEMO = False  # True: small data and a few epochs (the "fast" preset that CI uses)
import os
if QUICK_DEMO:
    os.environ["NUCLEILIB_FAST"] = "1"

# %% [markdown]
# First the result we are after: the shipped model's pixel Dice on synthetic images it has never seen (Dice is
# 1 for a perfect mask, 0 for no overlap). It was trained by `train.fit`, the library's version of the loop that
# this chapter writes, for longer.

# %% tags=["nbval-check-output"]
from nucleilib import checkpoint, data, datasets, synth, train

test_set = synth.make_dataset(n=16, size=128, seed=2024)
test_images = data.normalize_batch(test_set["images"])[:, None]
shipped, shipped_info = checkpoint.load_model()
scores = train.evaluate_pixels(shipped, test_images, test_set["masks"][:, None])
print(f"shipped model on 16 unseen images: Dice {scores['dice']:.2f}, IoU {scores['iou']:.2f}")

# %% [markdown]
# ## The data and the two targets
#
# The synthetic set of chapter 01, split by its seeded shuffle. The preset decides its size and the number of
# epochs.

# %%
from nucleilib.presets import preset, preset_name

settings = preset()
images, masks, labels = datasets.builtin_dataset(n=settings["n_images"], seed=0)
train_idx, val_idx, test_idx = data.split_indices(len(images), seed=0)
print(preset_name(), settings, "->", len(train_idx), "training and", len(val_idx), "validation images")

# %% [markdown]
# The network has two outputs per pixel, so each image gets two targets: the nucleus mask, and the nucleus
# *interior*, each nucleus without its outer rim (2 pixels wide, 1 for nuclei under 4 px in radius: the
# definition in `losses.targets_from_labels`). Touching nuclei are one blob in the mask but
# separate blobs in the interior, which is how counting will tell them apart. `losses.targets_from_labels` makes
# both from the instance labels. Counted on the validation image whose mask joins the most nuclei, and shown with
# one colour per blob (connected pixels):

# %%
import numpy as np
from nucleilib import losses

targets = losses.targets_from_labels(labels, heads=("mask", "interior"))  # (N, 2, H, W): mask, interior
nuclei = np.array([len(np.unique(image_labels)) - 1 for image_labels in labels])
blobs = np.array([data.label_components(mask[0])[0] for mask in masks])
example = val_idx[np.argmax((nuclei - blobs)[val_idx])]
interior_blobs = data.label_components(targets[example, 1])[0]
print(f"validation image {example}: {nuclei[example]} nuclei, {blobs[example]} blobs in the mask target, "
      f"{interior_blobs} in the interior target")
assert blobs[example] < nuclei[example] == interior_blobs

# %%
from nucleilib import viz

mask_blobs, inside_blobs = (data.label_components(targets[example, channel])[1] for channel in (0, 1))
fig = viz.show_grid([images[example], viz.labels_rgb(mask_blobs), viz.labels_rgb(inside_blobs)],
                    [labels[example], None, None], ncols=3, size=3.4,
                    titles=["image, true nuclei outlined", f"target 0: mask ({mask_blobs.max()} blobs)",
                            f"target 1: interior ({inside_blobs.max()} blobs)"])

# %% [markdown]
# ## The loss, built and checked by hand
#
# The loss is binary cross-entropy plus soft Dice, both computed from the logits (the sigmoid is applied inside).
# Soft Dice uses probabilities `p` instead of a thresholded mask, so it has a gradient. Per output channel, over
# the whole batch, with a smoothing term `s`:
#
# $$\text{Dice} = \frac{2\sum p\,t + s}{\sum p + \sum t + s}, \qquad \text{Dice loss} = 1 - \text{Dice}
# \ \text{(averaged over the channels)}.$$
#
# The textbook formula has `s = 0`; the library's `losses.dice_loss` uses `s = 1` (its `eps`).

# %%
import torch
from torch.nn import functional as F


def soft_dice_loss(logits, target, smooth):
    p = torch.sigmoid(logits)
    dims = (0, 2, 3)  # sum over the batch and the pixels: one Dice per channel
    intersection = (p * target).sum(dims)
    total = p.sum(dims) + target.sum(dims)
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()


# %% [markdown]
# By hand, on a 2x2 image with two nucleus pixels and logits of 0 (p = 0.5 everywhere): sum p t = 1, sum p = 2,
# sum t = 2. With `s = 0`, Dice = 2 / 4 = 0.5, so the loss is 0.5; with `s = 1`, Dice = 3 / 5 = 0.6, so the loss is
# 0.4. Ours and the library's, with both smoothings:

# %% tags=["nbval-check-output"]
target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
undecided = torch.zeros_like(target)  # logits 0: p = 0.5 everywhere
for smooth in (0.0, 1.0):
    ours, library = soft_dice_loss(undecided, target, smooth), losses.dice_loss(undecided, target, eps=smooth)
    print(f"s = {smooth}: ours {ours:.3f}, library {library:.3f}")
    assert torch.isclose(ours, library) and torch.isclose(ours, torch.tensor(0.5 if smooth == 0 else 0.4))

# %% [markdown]
# Why smooth at all? An image without nuclei, and a network that rightly predicts none (logits -20, so p is tiny
# but not zero): without smoothing the overlap is 0 and the loss is the worst possible, 1; with `s = 1` it is 0.
# How much it changes the loss on a batch of 128x128 images is exercise 2.

# %% tags=["nbval-check-output"]
empty, nothing = torch.zeros_like(target), torch.full_like(target, -20.0)
print("empty target, nothing predicted:", {s: round(float(soft_dice_loss(nothing, empty, s)), 3) for s in (0.0, 1.0)})

# %% [markdown]
# The training loss is the sum of the two, as in the source project; on the hand-worked case ln 2 + 0.4, the
# same as the library's `losses.bce_dice_loss`:

# %% tags=["nbval-check-output"]
def bce_dice(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target, smooth=1.0)


print(f"ours {bce_dice(undecided, target):.4f}, library {losses.bce_dice_loss(undecided, target):.4f}")
assert torch.equal(bce_dice(undecided, target), losses.bce_dice_loss(undecided, target))

# %% [markdown]
# ## One epoch of training
#
# One more piece first: on CPUs that compute bfloat16 natively the forward pass runs in bfloat16 and the loss in
# float32, as in `fit`; elsewhere everything is plain float32.

# %%
import copy
import math

from nucleilib import augment, runtime


def precision():
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=runtime.cpu_supports_bf16())


print("this CPU computes bfloat16 natively:", runtime.cpu_supports_bf16())

# %% [markdown]
# An epoch: shuffle the training images (a seeded generator), and for each batch augment it (chapter 01's flips,
# rotations and intensity changes, for a whole batch: `augment.augment_batch`, drawn from the same generator), run
# the network, take the loss, and let Adam take one step. The mean loss of the epoch comes back.

# %%
def train_one_epoch(net, optimizer, images, targets, batch_size, generator):
    net.train()  # BatchNorm uses the statistics of each batch
    order, total = torch.randperm(len(images), generator=generator), 0.0
    for start in range(0, len(images), batch_size):
        index = order[start : start + batch_size]
        x, y = augment.augment_batch(images[index], targets[index], generator)
        with precision():
            logits = net(x)
        loss = bce_dice(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(index)
    return total / len(images)


# %% [markdown]
# Checked at once: a loop that cannot lower the loss on eight images will not train on hundreds. Ten epochs of
# one batch each on eight training images, with a fresh network:

# %%
from nucleilib import model

torch.manual_seed(0)
probe = model.UNet(in_channels=1, out_channels=2, base=8, depth=4)
probe_optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3)
few = torch.from_numpy(images[train_idx[:8]]), torch.from_numpy(targets[train_idx[:8]])
probe_losses = [train_one_epoch(probe, probe_optimizer, *few, 8, torch.Generator().manual_seed(0))
                for _ in range(10)]
print("loss per epoch:", np.round(probe_losses, 3))
assert probe_losses[-1] < probe_losses[0]

# %% [markdown]
# ## The validation pass
#
# No gradients (`torch.inference_mode`), BatchNorm in evaluation mode (its running statistics, not the batch's),
# the loss averaged over the images, and the pixel Dice of channel 0 (the nucleus mask) at probability 0.5, from
# the areas summed over the whole validation set.

# %%
def validate(net, images, targets, batch_size):
    net.eval()
    total, overlap, predicted_area, true_area = 0.0, 0.0, 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x, y = images[start : start + batch_size], targets[start : start + batch_size]
            with precision():
                logits = net(x).float()
            total += bce_dice(logits, y).item() * len(x)
            predicted = (torch.sigmoid(logits[:, :1]) > 0.5).float()
            overlap += (predicted * y[:, :1]).sum().item()
            predicted_area, true_area = predicted_area + predicted.sum().item(), true_area + y[:, :1].sum().item()
    return total / len(images), 2 * overlap / (predicted_area + true_area)


# %% [markdown]
# Checked on hand-made networks of one 1x1 convolution, fed the masks themselves as images: weight 40 and bias
# -20 turn a mask into logits of +20 on nuclei and -20 elsewhere, a perfect prediction (Dice 1, loss near 0);
# weight 0 predicts nothing (Dice 0).

# %% tags=["nbval-check-output"]
mask_batch = torch.from_numpy(masks[:8])  # the same eight images under every preset
for weight, name in [(40.0, "perfect"), (0.0, "nothing")]:
    oracle = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.constant_(oracle.weight, weight), torch.nn.init.constant_(oracle.bias, -20.0)
    loss, dice = validate(oracle, mask_batch, mask_batch, batch_size=4)
    print(f"{name}: loss {loss:.3f}, Dice {dice:.3f}")

# %% [markdown]
# ## The loop
#
# Adam at the source's learning rate 0.001. `ReduceLROnPlateau` watches the validation loss and halves the
# learning rate once more than `patience` epochs in a row have brought no new lowest value (the source's "dynamic
# learning rate adjustments"). The weights of the epoch with the lowest validation loss are copied aside and
# restored at the end. The model is put in the channels-last memory layout that `fit` uses (faster convolutions
# on CPUs), so that the two can give the same numbers.

# %%
def train_bare(net, train_pair, val_pair, epochs, batch_size, patience, seed=0):
    net.to(memory_format=torch.channels_last)
    optimizer, generator = torch.optim.Adam(net.parameters(), lr=1e-3), torch.Generator().manual_seed(seed)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=patience)
    history, best_loss = {"train_loss": [], "val_loss": [], "val_dice": [], "lr": []}, math.inf
    for epoch in range(epochs):
        history["lr"].append(optimizer.param_groups[0]["lr"])
        history["train_loss"].append(train_one_epoch(net, optimizer, *train_pair, batch_size, generator))
        val_loss, val_dice = validate(net, *val_pair, batch_size)
        history["val_loss"].append(val_loss), history["val_dice"].append(val_dice), scheduler.step(val_loss)
        if val_loss < best_loss:
            best_loss, best_weights, history["best_epoch"] = val_loss, copy.deepcopy(net.state_dict()), epoch + 1
        print(f"epoch {epoch + 1}:", ", ".join(f"{k} {v[-1]:.4g}" for k, v in history.items() if k != "best_epoch"))
    net.load_state_dict(best_weights)
    return history


# %% [markdown]
# The run: the two-output U-Net of chapter 02 (base 8, depth 4, seeded), the preset's number of epochs, batches
# of 4 images (the steps per epoch are printed), and patience 0: the learning rate is halved after any epoch
# without a new lowest validation loss (`fit`'s default is printed too). Small batches and no patience, so that
# within the preset's epochs the loss's fall slows down and the scheduler acts.

# %%
import time

BATCH_SIZE, PATIENCE = 4, 0
train_pair = torch.from_numpy(images[train_idx]), torch.from_numpy(targets[train_idx])
val_pair = torch.from_numpy(images[val_idx]), torch.from_numpy(targets[val_idx])
torch.manual_seed(0)
net = model.UNet(in_channels=1, out_channels=2, base=8, depth=4)
print(f"{math.ceil(len(train_idx) / BATCH_SIZE)} steps per epoch; fit's default patience "
      f"{train.TrainSettings().plateau_patience}")
started = time.perf_counter()
history = train_bare(net, train_pair, val_pair, settings["epochs"], BATCH_SIZE, PATIENCE)
print(f"{model.count_parameters(net):,} parameters, {len(history['lr'])} epochs, {time.perf_counter() - started:.0f} s")

# %% [markdown]
# ## Reading the curves
#
# Loss (training and validation), validation Dice and learning rate per epoch. A dotted line marks each epoch that
# was the first to run at a lowered learning rate; the star, the epoch whose weights were kept.

# %%
epochs_run = len(history["lr"])
drops = [epoch + 1 for epoch in range(1, epochs_run) if history["lr"][epoch] < history["lr"][epoch - 1]]
best = history["best_epoch"]
fig = viz.plot_history(history, title=f"our loop: two-output U-Net, Adam lr 0.001, batch {BATCH_SIZE} "
                                      f"({preset_name()} preset)")
for axis in fig.axes:
    for epoch in drops:
        axis.axvline(epoch, color="gray", linestyle=":")
fig.axes[0].plot(best, history["val_loss"][best - 1], "k*", markersize=12, label="kept")
fig.axes[0].legend()
viz.save_figure(fig, "03_curves.png")

# %% [markdown]
# What the curves show, checked below: the training loss fell by much more over the first third of the run than
# over the last third (it levels off), and the learning rate was lowered (the epochs that first ran at a lower
# rate are printed). The fast preset's 3 epochs may be too few for either, so the checks are for the default
# preset.

# %%
third = max(1, epochs_run // 3)
early_fall = history["train_loss"][0] - history["train_loss"][third]
late_fall = history["train_loss"][-1 - third] - history["train_loss"][-1]
print(f"learning rate lowered for epochs {drops}: {sorted(set(history['lr']), reverse=True)}")
print(f"training loss fell by {early_fall:.3f} over epochs 1-{third + 1}, "
      f"by {late_fall:.3f} over epochs {epochs_run - third}-{epochs_run}")
if preset_name() == "default":
    assert drops, "the plateau scheduler never lowered the learning rate"
    assert late_fall < early_fall / 4, "the training loss did not level off"

# %% [markdown]
# With patience 0, a single epoch without a new lowest validation loss halves the learning rate; the log of the
# run above shows which epoch's validation loss went up.

# %% [markdown]
# The kept weights are those of the lowest validation *loss*, as in `fit`; the highest validation *Dice* need not
# come from the same epoch (the loss also rewards confident probabilities, the Dice at 0.5 only the mask). So
# the Dice that belongs to the kept weights is the one of their epoch. Both, printed:

# %%
top = int(np.argmax(history["val_dice"])) + 1
print(f"kept: epoch {best}, validation loss {history['val_loss'][best - 1]:.4f}, "
      f"validation Dice {history['val_dice'][best - 1]:.4f}")
print(f"highest validation Dice: epoch {top}, {history['val_dice'][top - 1]:.4f}")

# %% [markdown]
# ## Predictions next to the ground truth
#
# Numbers hide how a model fails; pictures show it. Validation images, their true outlines, and the predicted
# probability of "nucleus" (channel 0):

# %%
from nucleilib import predict

shown = val_idx[:4]
probs = predict.predict_batch(net, torch.from_numpy(images[shown]))
fig = viz.show_grid([*images[shown], *images[shown], *probs[:, 0]], [None] * 4 + list(labels[shown]) + [None] * 4,
                    titles=["image"] * 4 + ["true nuclei"] * 4 + ["P(nucleus)"] * 4, ncols=4)
viz.save_figure(fig, "03_predictions.png")

# %% [markdown]
# And the second output, on the validation image with touching nuclei from the start of the chapter: the blobs of
# each output above 0.5, counted, for that image and for the whole validation set (mean absolute difference from
# the true number of nuclei per image). Counting the blobs of P(interior) should err less than counting those of
# P(nucleus), which joins touching nuclei; checked for the default preset (3 epochs may be too few).

# %%
val_probs = predict.predict_batch(net, torch.from_numpy(images[val_idx]))
found = {channel: np.array([data.label_components(p[index] > 0.5)[0] for p in val_probs])
         for index, channel in enumerate(("nucleus", "interior"))}
at = int(np.flatnonzero(val_idx == example)[0])
print(f"image {example}: {nuclei[example]} nuclei; blobs above 0.5: P(nucleus) {found['nucleus'][at]}, "
      f"P(interior) {found['interior'][at]}")
for channel, counts in found.items():
    print(f"validation set, counting the blobs of P({channel}): mean |error| "
          f"{np.abs(counts - nuclei[val_idx]).mean():.2f} nuclei per image")
if preset_name() == "default":
    assert np.abs(found["interior"] - nuclei[val_idx]).mean() < np.abs(found["nucleus"] - nuclei[val_idx]).mean()

# %% [markdown]
# The same image: the interior target, both outputs, and the blobs of P(interior) above 0.5, one colour each. After
# a dozen epochs the interior output separates some of the nuclei that P(nucleus) joins, not all of those that its
# target keeps apart (the counts above).

# %%
interior_labels = data.label_components(val_probs[at, 1] > 0.5)[1]
fig = viz.show_grid([images[example], targets[example, 1], val_probs[at, 0], val_probs[at, 1],
                     viz.labels_rgb(interior_labels)], [labels[example], None, None, None, None],
                    titles=["image, true nuclei", "interior target", "P(nucleus)", "P(interior)",
                            "blobs of P(interior) > 0.5"], ncols=5)
viz.save_figure(fig, "03_interior.png")

# %% [markdown]
# ## The library's `fit`: the same loop, grown up
#
# `nucleilib.train.fit` is this loop with what a real run needs: the best checkpoint written whenever the
# validation loss improves and a resumable one (weights, optimizer, scheduler and random state) after every epoch,
# both written atomically (a temporary file, then a rename, so an interruption never leaves half a file), with
# the history as JSON beside them;
# resuming from it; early stopping; a time budget (`max_minutes`); a progress bar; the GPU when there is one,
# mixed precision and the memory layout chosen per device, `torch.compile` for long CPU runs, and several
# processes under `torchrun`. `train.TrainSettings` holds the recipe.
#
# To show it is the same loop: the same seed, data, batch size and patience, on the CPU like ours; one epoch,
# then a second call that resumes from the last checkpoint for a second epoch.

# %%
from dataclasses import replace
from nucleilib.io import project_root

checkpoint_path = project_root() / "data" / "chapter03_unet.pt"
recipe = train.TrainSettings(epochs=1, lr=1e-3, batch_size=BATCH_SIZE, plateau_patience=PATIENCE, seed=0,
                             compile=False)  # compiled steps round differently
torch.manual_seed(0)
fitted = model.UNet(in_channels=1, out_channels=2, base=8, depth=4)
first = train.fit(fitted, train_pair, val_pair, recipe, out=checkpoint_path, device="cpu", progress=False)
print(f"first call: {len(first['val_loss'])} epochs, stopped by: {first['stop_reason']}; files:",
      sorted(path.name for path in checkpoint_path.parent.glob("chapter03_unet*")))
resumed = train.fit(fitted, train_pair, val_pair, replace(recipe, epochs=2), out=checkpoint_path, device="cpu",
                    resume=checkpoint.last_checkpoint_path(checkpoint_path), progress=False)

# %% [markdown]
# The two calls together against the first two epochs of our loop (`fit` records the same lists): the same
# numbers, to better than 1e-6 (the largest difference of each is printed).

# %%
for key in ("train_loss", "val_loss", "val_dice", "lr"):
    ours, library = np.array(history[key][:2]), np.array(resumed[key])
    print(f"{key:>10}: ours {np.round(ours, 4)}, fit {np.round(library, 4)}, "
          f"largest difference {np.abs(ours - library).max():.1e}")
    assert len(ours) == len(library) and np.abs(ours - library).max() < 1e-6

# %% [markdown]
# The checkpoint holds only tensors and plain data, so it loads with `torch.load(..., weights_only=True)` and never
# runs code. It carries the model's configuration, the names of its outputs, the normalization and the history up
# to the epoch it was written:

# %%
reloaded, info = checkpoint.load_model(checkpoint_path)
print(sorted(info))
print(info["config"], info["heads"], info["normalization"], len(info["history"]["val_loss"]), "epochs of history")

# %% [markdown]
# ## Against the shipped model
#
# The shipped model (`nucleilib/nuclei_unet.pt`) has the same two outputs and was made by the project's own `train`
# command, which calls `fit`, on synthetic and real images (its command and epochs are printed below). Both on the
# 16 unseen synthetic test images of the first cell: pixel scores of the nucleus output, and the mean error of
# counting the blobs of each output per image:

# %%
true_counts = np.array([len(np.unique(image_labels)) - 1 for image_labels in test_set["labels"]])
for name, candidate in [("this chapter", net), ("shipped", shipped)]:
    scores = train.evaluate_pixels(candidate, test_images, test_set["masks"][:, None])
    test_probs = predict.predict_batch(candidate, torch.from_numpy(test_images))
    errors = [np.abs([data.label_components(p[channel] > 0.5)[0] for p in test_probs] - true_counts).mean()
              for channel in (0, 1)]
    print(f"{name:>13}: Dice {scores['dice']:.3f}, IoU {scores['iou']:.3f}; mean |count error| from the blobs of "
          f"P(nucleus) {errors[0]:.2f}, of P(interior) {errors[1]:.2f}")
print(shipped_info["provenance"]["command"], "->", shipped_info["provenance"]["metrics"]["epochs_run"], "epochs")

# %% [markdown]
# ## The source's 300 epochs
#
# The source project trained for up to 300 epochs. We made that run with the project's own `train` command (which
# calls `fit`) on the built-in synthetic images of the fast preset (200; the default preset's 600 would mean three
# times the optimizer steps per epoch), and stored its history (not its weights) with its provenance in
# `models/long_run_300_epochs.history.json`. The run was stopped once and continued with `train --resume`; both
# commands are recorded:

# %%
import json

long_run = json.loads((project_root() / "models" / "long_run_300_epochs.history.json").read_text())
long_history, provenance = long_run["history"], long_run["provenance"]
long_epochs = len(long_history["val_loss"])
print("resumed by:", provenance["command"])
print("started by:", provenance["resumed_from"]["command"], "on", provenance["resumed_from"]["date"])
print(f"resumed {provenance['date']}, seed {provenance['seed']}, {long_epochs} epochs run, stopped by: "
      f"{long_history['stop_reason']}, {sum(long_history['seconds']) / 3600:.1f} hours of training")
print({key: provenance.get(key) for key in ("batch_size", "plateau_patience", "heads", "compiled", "device")})

# %% [markdown]
# Which images, and which split? `train_from_npz` (in `nucleilib/train.py`) loads the `.npz` file, keeps every
# image unless `max_images` is set, and splits them with `data.split_indices(len(images), seed=settings.seed)`,
# the call this chapter made. Checked against the provenance: the file is the one `datasets.builtin_dataset`
# writes for its number of images and seed 0, all of them were kept, and the split has the sizes of
# `data.split_indices` for that number and seed 0:

# %%
from pathlib import Path
from nucleilib.presets import PRESETS

n_long = provenance["data"][0]["n_images"]
expected = data.split_indices(n_long, seed=0)
assert [Path(item["path"]).name for item in provenance["data"]] == [f"nuclei_n{n_long}_s128_seed0.npz"]
assert provenance["max_images"] is None and provenance["seed"] == 0 and provenance["lr"] == 1e-3
assert provenance["split"] == {"train": len(expected[0]), "val": len(expected[1]), "test": len(expected[2]), "seed": 0}
assert provenance["heads"] == ["mask", "interior"]
print(f"{n_long} images, the data and split of this chapter's preset(s):",
      [name for name, table in PRESETS.items() if table["chapters"]["n_images"] == n_long])

# %% [markdown]
# It differs from our loop in its data (the 200 images printed above, not the default preset's 600), its batch
# size and plateau patience, no early stopping (`--early-stopping 0`) and compiled training (all printed above).
# With another batch size it
# takes another number of optimizer steps per epoch; the epoch of the long run at which it has taken as many
# steps as our loop:

# %%
long_train, our_steps = provenance["split"]["train"], len(history["lr"]) * math.ceil(len(train_idx) / BATCH_SIZE)
long_steps = math.ceil(long_train / provenance["batch_size"])
same_steps = math.ceil(our_steps / long_steps)
print(f"our loop: {our_steps} steps; the long run: {long_steps} per epoch, as many as ours by epoch {same_steps}")

# %% [markdown]
# Its curves, the loss on a log scale and the Dice between 0.9 and 1; the dashed line marks this chapter's number
# of epochs, the dotted one the epoch with as many optimizer steps as our loop:

# %%
fig = viz.plot_history(long_history, title=f"the long run: {long_epochs} epochs, batch {provenance['batch_size']}")
for axis in fig.axes:
    axis.axvline(settings["epochs"], color="gray", linestyle="--")
    axis.axvline(same_steps, color="gray", linestyle=":")
fig.axes[0].set_yscale("log")
fig.axes[1].set_ylim(0.9, 1.0)
viz.save_figure(fig, "03_long_run.png")

# %% [markdown]
# What the extra epochs bought: the validation loss and Dice at this chapter's epoch count, at as many steps as
# our loop, at the kept epoch (lowest validation loss), at the highest Dice and at the end, with the hours of
# training to get there; and the epochs that first ran at a lowered learning rate.

# %%
marks = {"this chapter's epochs": settings["epochs"], "as many steps as our loop": same_steps,
         "lowest validation loss": int(np.argmin(long_history["val_loss"])) + 1,
         "highest validation Dice": int(np.argmax(long_history["val_dice"])) + 1, "last": long_epochs}
for name, epoch in marks.items():
    if epoch <= long_epochs:
        hours = sum(long_history["seconds"][:epoch]) / 3600
        print(f"{name:>25}: epoch {epoch:3d}, validation loss {long_history['val_loss'][epoch - 1]:.4f}, Dice "
              f"{long_history['val_dice'][epoch - 1]:.4f}, lr {long_history['lr'][epoch - 1]:.1e}, {hours:.2f} h")
lr = long_history["lr"]
print("learning rate lowered for epochs", [epoch + 1 for epoch in range(1, long_epochs) if lr[epoch] < lr[epoch - 1]])
assert min(lr) < lr[0], "the long run never lowered its learning rate"

# %% [markdown]
# The learning rate was halved again and again from epoch 82 on, then stayed at its last value (printed above):
# `ReduceLROnPlateau` skips a step that would change the rate by less than its `eps` (its default is printed
# below). What moved after that, printed below: Adam changes each weight by something of the order of the
# learning rate per step (its step is the rate times a ratio of gradient averages, near ±1 for steady gradients),
# and the validation loss.

# %%
last_drop = max(epoch + 1 for epoch in range(1, long_epochs) if lr[epoch] < lr[epoch - 1])
steps_after = (long_epochs - last_drop + 1) * long_steps
after = np.array(long_history["val_loss"][last_drop - 1 :])
print("ReduceLROnPlateau's eps:", torch.optim.lr_scheduler.ReduceLROnPlateau(probe_optimizer).eps)
print(f"epochs {last_drop}-{long_epochs}: lr {lr[-1]:.1e}, {steps_after} steps, so each weight moved by something "
      f"of the order of {steps_after * lr[-1]:.0e}")
print(f"validation loss over those epochs: {after.min():.4f} to {after.max():.4f}")

# %% [markdown]
# The weights stood nearly still, yet the validation loss still wandered. The likely cause (not measured here): in
# training mode every batch also updates BatchNorm's running means and variances (chapter 02), which follow the
# augmented batches whatever the learning rate. The epoch kept for its lowest validation loss (printed above) lies
# in this stretch: it is the lowest point of that wandering, not a better-trained network.
#
# The gains, epoch against epoch: from this chapter's epoch count to the epoch with as many steps as our loop, and
# from there to the end of the run.

# %%
def gain(start, end):
    dice, loss = (long_history[key][end - 1] - long_history[key][start - 1] for key in ("val_dice", "val_loss"))
    hours = sum(long_history["seconds"][start:end]) / 3600
    print(f"epochs {start} -> {end}: validation Dice {dice:+.4f}, validation loss {loss:+.4f}, {hours:.2f} h")


for start, end in [(settings["epochs"], same_steps), (same_steps, long_epochs)]:
    if start < end <= long_epochs:
        gain(start, end)
print("seconds of epochs 174-183:", np.round(long_history["seconds"][173:183], 1))

# %% [markdown]
# The first line is what the long run's epochs bought up to the number of optimizer steps our loop took; the
# second, what the rest of its epochs bought on top, and in how many hours. Read the hours as rough: the last line
# above shows the epoch times falling from 10-17 s to about 1 s at epoch 179. By the notes of the person who ran
# it (the history records neither), the run was stopped there while it shared the 2-core CPU with other jobs, and
# resumed alone.

# %% [markdown]
# ## In this chapter we
# - built the BCE + Dice loss, one training epoch and a validation pass from torch primitives, and checked each on a
#   case worked by hand (including the Dice loss's smoothing term, which turns 0.5 into 0.4 on a 2x2 image);
# - trained the two-output U-Net with Adam at 0.001, a plateau scheduler and the best weights kept, and read its
#   curves: where the loss levels off and where the learning rate was lowered;
# - saw what the interior output separates that the mask joins;
# - showed that `train.fit` gives the same numbers as our loop, across a resumed checkpoint, and what it adds;
# - read the source's 300 epochs from a real run, and what they bought over a dozen.
#
# The next chapters break this training on purpose, one failure at a time.

# %% [markdown]
# ## Exercises
# 1. Write `bce_with_logits(logits, target)`, the mean binary cross-entropy from logits, with torch operations only
#    (no `torch.nn.functional`). Compute it so that logits of ±100 give finite numbers: in float32, `sigmoid(-100)`
#    rounds to 0 and its log to `-inf`, but `-log(sigmoid(x))` equals `max(-x, 0) + log(1 + exp(-|x|))`, which
#    never does. The cell after the solution checks it against the library's `losses.bce_loss`.
# 2. How much does the smoothing `s = 1` change the Dice loss of the trained network on a batch of 16 validation
#    images (ours with `s = 0` against `s = 1`)? Why is that so much less than on the 2x2 image?
# 3. With `fit`'s default patience of 3, would the learning rate of our 12-epoch run have been lowered, and when?
#    Feed the validation losses of `history` into a fresh `ReduceLROnPlateau` (valid up to its first drop: after
#    it, the run itself would have gone differently).
# 4. In the long run, from which epoch on did the validation Dice stay within 0.005 of its highest value, and how
#    many hours of training came after that?

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
def bce_with_logits(logits, target):
    # -[t log p + (1 - t) log(1 - p)] with p = sigmoid(x) = (1 - t) x + log(1 + exp(-x))
    #                                                       = max(x, 0) - t x + log(1 + exp(-|x|))
    return (logits.clamp(min=0) - target * logits + torch.log1p(torch.exp(-logits.abs()))).mean()


# %% tags=["exercise-check"]
check_logits = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 5
check_target = (torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
assert torch.allclose(bce_with_logits(check_logits, check_target), losses.bce_loss(check_logits, check_target))
extreme = torch.tensor([[[[100.0, -100.0]]]])
assert torch.isfinite(bce_with_logits(extreme, torch.tensor([[[[0.0, 1.0]]]])))
assert torch.allclose(bce_with_logits(extreme, torch.tensor([[[[0.0, 1.0]]]])), torch.tensor(100.0))
print("bce_with_logits agrees with losses.bce_loss")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
with torch.inference_mode():
    batch_logits = net(val_pair[0][:16]).float()
without, with_one = (soft_dice_loss(batch_logits, val_pair[1][:16], smooth) for smooth in (0.0, 1.0))
print(f"Dice loss: s = 0 {without:.6f}, s = 1 {with_one:.6f}, difference {without - with_one:.1e}")
print("sums of the targets per channel:", val_pair[1][:16].sum((0, 2, 3)).tolist(), "- s = 1 is tiny beside them")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(dummy, factor=0.5, patience=3)
for epoch, val_loss in enumerate(history["val_loss"]):
    plateau.step(val_loss)
    if dummy.param_groups[0]["lr"] < 1e-3:
        print(f"patience 3: lowered after epoch {epoch + 1}")
        break
else:
    print("patience 3: never lowered in", len(history["val_loss"]), "epochs")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
dice = np.array(long_history["val_dice"])
within = dice >= dice.max() - 0.005
settled = len(dice) - int(np.argmin(within[::-1])) + 1 if not within.all() else 1  # first epoch of the last run
if settled > len(dice):
    print(f"the last epoch's Dice, {dice[-1]:.4f}, is more than 0.005 below the highest, {dice.max():.4f}")
else:
    print(f"within 0.005 of the highest Dice ({dice.max():.4f}) from epoch {settled} of {len(dice)} on; "
          f"{sum(long_history['seconds'][settled - 1:]) / 3600:.1f} hours of training from then")
