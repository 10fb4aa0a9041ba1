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
# # 02 · The U-Net
#
# After this chapter you will be able to:
# - build a U-Net from `nn.Conv2d`, `nn.BatchNorm2d`, max pooling, `nn.ConvTranspose2d` and `torch.cat`, and
#   follow an image through it with the tensor shape at every level;
# - say what the skip connections carry and why segmentation needs them;
# - work out the receptive field and the parameter count by hand, and check both against `nucleilib.model.UNet`.

# %% [markdown]
# The quick-demo switch is in every chapter; this one trains nothing and uses no preset-sized data, so it changes
# nothing here. Measured run times of every chapter: `docs/teaching.md`.

# %%
QUICK_DEMO = False  # True: small data and a few epochs (the "fast" preset that CI uses)
import os
if QUICK_DEMO:
    os.environ["NUCLEILIB_FAST"] = "1"

# %% [markdown]
# First the result: the shipped, trained U-Net turns a fluorescence image into probability maps of the same
# size, one value per pixel:

# %% tags=["nbval-check-output"]
import numpy as np
from nucleilib import checkpoint, data, predict, synth, viz

image, labels = synth.make_image(np.random.default_rng(8), size=128)
trained, info = checkpoint.load_model()
probability = predict.probabilities(trained, image, info)
print("image", image.shape, "-> probabilities", probability.shape, "for", info["heads"])
print(f"pixels above 0.5: {np.mean(probability[0] > 0.5):.1%}, true foreground: {np.mean(labels > 0):.1%}")

# %% [markdown]
# Two maps: the probability that a pixel belongs to a nucleus (`mask`), and that it lies in a nucleus'
# *interior* (`interior`), which chapter 07 uses to split touching nuclei. In the first, 21.0 % of the pixels are
# above 0.5, close to the 20.3 % that truly are nucleus. Side by side, the image and the two maps:

# %%
fig = viz.show_grid([data.normalize_image(image), probability[0], probability[1]],
                    titles=["image", "P(nucleus)", "P(interior)"], ncols=3, size=3.2)

# %% [markdown]
# Where each map is above 0.5, how many separate blobs does it make, in the whole image and in its top-left
# quarter, against the true nuclei there?

# %% tags=["nbval-check-output"]
quarter = np.s_[:64, :64]
for name, channel in [("P(nucleus)", 0), ("P(interior)", 1)]:
    whole = data.label_components(probability[channel] > 0.5)[0]
    part = data.label_components(probability[channel][quarter] > 0.5)[0]
    print(f"{name + ' > 0.5':>17}: {whole:>2} blobs in the image, {part} in its top-left quarter")
true_part = len(np.unique(labels[quarter])) - 1
print(f"{'true nuclei':>17}: {labels.max():>2} in the image,       {true_part} in its top-left quarter")

# %% [markdown]
# In the top-left quarter the two touching nuclei make one blob in the nucleus map and two in the interior map;
# over the whole image the interior map has 10 blobs against the nucleus map's 7, for 11 true nuclei.
#
# The rest of this chapter builds that network ourselves from torch layers, in about 30 lines, and then shows
# that the library's `UNet` is the same network. We build it at the size of the shipped model, which its
# checkpoint stores:

# %% tags=["nbval-check-output"]
CONFIG = info["config"]
BASE, DEPTH = CONFIG["base"], CONFIG["depth"]
print(CONFIG)

# %% [markdown]
# One input channel (the nuclear stain), two output channels (nucleus and interior), `base` = 8 channels at the
# top level, and `depth` = 4 poolings down to the bottom.
#
# ## Building block: two 3x3 convolutions
#
# Every level of the U-Net applies the same block: a 3x3 convolution, batch normalization, ReLU, twice.
# Padding 1 keeps the height and width; only the number of channels changes. The convolutions need no bias:
# the batch normalization right after each has its own shift.

# %%
import torch
from torch import nn


def double_conv(in_channels, out_channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())


print(double_conv(1, BASE)(torch.zeros(1, 1, 128, 128)).shape)

# %% [markdown]
# ## Down: 2x2 max pooling
#
# On the way down, a 2x2 max pooling keeps the largest of each 2x2 block: it halves height and width. Checked on
# a 4x4 example we can do in our heads:

# %% tags=["nbval-check-output"]
pool = nn.MaxPool2d(2)
print(pool(torch.arange(16.0).reshape(1, 1, 4, 4)))

# %% [markdown]
# ## Up: 2x2 transposed convolution
#
# On the way up, a transposed convolution with a 2x2 kernel and stride 2 does the opposite: every input value
# is multiplied by the (learned) 2x2 kernel, so it becomes a 2x2 block. With a kernel of ones and no bias, each
# value is simply copied into a 2x2 block:

# %% tags=["nbval-check-output"]
up = nn.ConvTranspose2d(1, 1, kernel_size=2, stride=2, bias=False)
nn.init.ones_(up.weight)
with torch.no_grad():
    print(up(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])))

# %% [markdown]
# ## Skip: concatenation
#
# Each pooling halves the size, so after four of them one bottleneck feature stands for a 16x16 block of
# input pixels: the decoder knows *that* there is a nucleus there, but not exactly *where* its edge runs. The
# skip connection hands the decoder the encoder's features of the same size, which still have that detail. In
# code it is one `torch.cat` along the channel axis; the double convolution after it brings the channels back
# down:

# %% tags=["nbval-check-output"]
skip = torch.zeros(1, BASE, 128, 128)                          # encoder features, top level
upsampled = nn.ConvTranspose2d(2 * BASE, BASE, 2, stride=2)(torch.zeros(1, 2 * BASE, 64, 64))
joined = torch.cat([skip, upsampled], dim=1)
print(tuple(skip.shape), "+", tuple(upsampled.shape), "->", tuple(joined.shape))
print("after the double convolution:", tuple(double_conv(2 * BASE, BASE)(joined).shape))

# %% [markdown]
# ## The whole network
#
# Level `i` has `base * 2**i` channels. The layers: one double convolution per level on the way down (the
# deepest one is the *bottleneck*), one up-convolution and one double convolution per level on the way up, and
# a 1x1 convolution (the *head*) that turns the top features into one logit per output channel:

# %%
class ScratchUNet(nn.Module):
    def __init__(self, in_channels=1, out_channels=1, base=8, depth=4):
        super().__init__()
        widths = [base * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList([double_conv(in_channels, widths[0])])
        self.encoder.extend(double_conv(widths[i - 1], widths[i]) for i in range(1, depth + 1))
        self.pool = nn.MaxPool2d(2)
        # deepest level first, as the data flows on the way up
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                      for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)


# %% [markdown]
# The forward pass says how an image flows through those layers: down (pool, then convolve), keeping each
# level's output as a skip; then up (up-convolve, glue on the skip of the same size, convolve). It writes the
# shape at every level into `shapes`. Python lets us attach it to the class after the fact:

# %%
def forward(self, x, shapes=None):
    shapes = [] if shapes is None else shapes
    skips = []
    for level, block in enumerate(self.encoder):
        x = block(x if level == 0 else self.pool(x))               # down
        skips.append(x)
        shapes.append(("bottleneck" if level == len(self.decoder) else f"encoder {level}", tuple(x.shape)))
    skips.pop()                                                     # the bottleneck is no skip
    for up_conv, block in zip(self.upsample, self.decoder):
        x = block(torch.cat([skips.pop(), up_conv(x)], dim=1))      # up, skip
        shapes.append((f"decoder {len(skips)}", tuple(x.shape)))
    return self.head(x)


ScratchUNet.forward = forward

# %% [markdown]
# Now we run the image from the start of the chapter through our network (with random weights for now) and
# print the shape at every level:

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
ours = ScratchUNet(**CONFIG).eval()
x = torch.from_numpy(data.normalize_image(image)).float()[None, None]  # (N, C, H, W)
shapes = []
with torch.no_grad():
    logits = ours(x, shapes)
for name, shape in shapes:
    print(f"{name:>10}: {shape}")
print(f"{'logits':>10}: {tuple(logits.shape)}")

# %% [markdown]
# The image shrinks from 128x128 to 8x8 while the channels grow from 8 to 128: at the bottom, little *where*,
# much *what*. On the way up the sizes come back level by level, and the logits have the image's size.
#
# ## The library's `UNet` is the same network
#
# `nucleilib.model.UNet` is the grown-up version of these cells. It has the same shapes at every level and the
# same number of parameters:

# %% tags=["nbval-check-output"]
from nucleilib import model

library = model.UNet(**CONFIG).eval()
library_shapes = [(name, shape) for name, shape in model.describe_shapes(library, size=128)
                  if name.startswith(("encoder", "bottleneck", "decoder"))]
assert library_shapes == shapes
assert model.count_parameters(library) == model.count_parameters(ours)
print(f"same shapes at all {len(shapes)} levels; {model.count_parameters(ours):,} parameters in each")

# %% [markdown]
# Same parameters under the same names, too: the weights of one load into the other (`load_state_dict`), and
# then both give the same output. We load the shipped, trained weights into our network, and the weights of a
# fresh random `ScratchUNet` into the library's:

# %% tags=["nbval-check-output"]
ours.load_state_dict(trained.state_dict())
fresh = ScratchUNet(**CONFIG).eval()
library.load_state_dict(fresh.state_dict())
with torch.no_grad():
    assert torch.allclose(ours(x), trained(x), atol=1e-6)
    assert torch.allclose(library(x), fresh(x), atol=1e-6)
    ours_probability = torch.sigmoid(ours(x))[0].numpy()
assert np.allclose(ours_probability, probability, atol=1e-4)  # what predict.probabilities gave at the start
print("same outputs in both directions")
print(f"our network with the shipped weights, pixels above 0.5: {np.mean(ours_probability[0] > 0.5):.1%}")

# %% [markdown]
# With the shipped weights our 30 lines segment the image as the shipped model did at the start of the chapter:
# the same probabilities to within 0.0001, and so the same share of pixels above 0.5. What the library adds is
# around the network, not in it: it pads any image size (below), keeps its configuration for checkpoints
# (`library.config`), and reports the shape at every level (`model.describe_shapes`) for the diagram below.
#
# ## The U, drawn
#
# `viz.unet_diagram` draws the levels as boxes, the encoder going down on the left, the decoder coming up on the
# right, and the skip connections as dashed arrows across:

# %%
fig = viz.unet_diagram(model.describe_shapes(library, size=128))
viz.save_figure(fig, "02_unet.png")

# %% [markdown]
# The boxes are not drawn to scale. Their sizes, read back from the figure:

# %% tags=["nbval-check-output"]
from matplotlib.patches import Rectangle

boxes = [patch for patch in fig.axes[0].patches if isinstance(patch, Rectangle)]
for (name, (_, channels, height, width)), box in zip(shapes, boxes):
    print(f"{name:>10}: {height:>3}x{width:<3} {channels:>3} channels -> box {box.get_height():.2f} high, "
          f"{box.get_width():.2f} wide")

# %% [markdown]
# The height grows with the image size, but as 0.5 + 2.5 x size / 128: the 8x8 bottleneck, 16 times smaller
# than the top, gets a box 0.66 high against 3.00, not 16 times lower. The width grows with the logarithm of the
# channels: 128 channels get a box 1.51 wide against 0.79 for 8. So the diagram shows which way each size goes
# (images shrink, channels grow), not by how much; the printed shapes above give the numbers.
#
# ## Receptive field, by hand
#
# How far can one output pixel "see"? Walk the layers from the input and track two numbers: the *field*, the
# input pixels one feature depends on, and the *jump*, the input pixels between two neighbouring features. A 3x3
# convolution widens the field by one feature on each side, `2 * jump`; a 2x2 pooling widens it by `jump` and
# doubles the jump; a 2x2 up-convolution with stride 2 halves the jump and widens nothing (each output value
# comes from one input value):

# %% tags=["nbval-check-output"]
def receptive_field_by_hand(depth):
    field, jump = 1, 1
    for level in range(depth):      # encoder level: two 3x3 convolutions, then the 2x2 pooling
        field += 2 * 2 * jump + jump
        jump *= 2
    field += 2 * 2 * jump           # bottleneck: two 3x3 convolutions
    for level in range(depth):      # decoder level: up-convolution (widens nothing), two 3x3 convolutions
        jump //= 2
        field += 2 * 2 * jump
    return field


assert all(receptive_field_by_hand(d) == 13 * 2**d - 8 for d in range(10))
print(f"depth {DEPTH}: {receptive_field_by_hand(DEPTH)} px by hand")

# %% [markdown]
# Summed over the U, the encoder adds 5 (2^d - 1), the bottleneck 4 x 2^d and the decoder 4 (2^d - 1), so the
# field is 13 x 2^d - 8 pixels for depth d (the `assert` checks this closed form against the walk): 200 px for
# the shipped depth 4.
#
# The library's `model.receptive_field` follows the exact window of each output pixel layer by layer and
# returns the widest. Side by side:

# %% tags=["nbval-check-output"]
for depth in range(6):
    hand, library_field = receptive_field_by_hand(depth), model.receptive_field(depth)
    print(f"depth {depth}: by hand {hand:>3} px, library {library_field:>3} px")

# %% [markdown]
# They agree up to depth 2 and differ by 4 px from depth 3 on. The hand formula assumes every pooling window is
# centred on the pixel being followed. Real pooling and up-convolution windows sit on a fixed grid (pixels 0-1,
# 2-3, ...), so a pixel's true window is rounded outwards or inwards to that grid, depending on where the pixel
# lies. We measure that on our own network: the gradient of one output pixel with respect to the input is
# non-zero exactly on the pixels it sees. The batch-norm shifts are set positive so that no ReLU hides a pixel,
# and we look at 16 neighbouring pixels, one period of the 16-pixel grid of four poolings:

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
probe = ScratchUNet(**CONFIG).eval()
for module in probe.modules():
    if isinstance(module, nn.BatchNorm2d):
        nn.init.constant_(module.bias, 1.0)
widths = []
for position in range(120, 136):
    image_in = torch.rand(1, 1, 256, 256, requires_grad=True)
    probe(image_in)[0, 0, position, position].backward()
    rows = torch.nonzero(image_in.grad[0, 0].abs().sum(dim=1)).ravel()
    widths.append(int(rows.max() - rows.min() + 1))
print("measured receptive fields:", widths)
assert max(widths) == model.receptive_field(DEPTH) and min(widths) < receptive_field_by_hand(DEPTH) < max(widths)

# %% [markdown]
# Twelve of the 16 pixels see 204 px, four see 188 px; the hand formula's 200 px lies between, and the library's
# 204 px is the widest measured. How does that compare with a nucleus? We measure every whole nucleus (not cut
# by the image border) in 200 synthetic images: its radius as that of a disc of the same area, and the longer
# side of its bounding box:

# %% tags=["nbval-check-output"]
from scipy import ndimage

radii, extents = [], []
for labels_i in synth.make_dataset(n=200, size=128, seed=0)["labels"]:
    cut = np.unique(np.concatenate([labels_i[0], labels_i[-1], labels_i[:, 0], labels_i[:, -1]]))
    for nucleus, box in enumerate(ndimage.find_objects(labels_i), start=1):
        if box is not None and nucleus not in cut:
            radii.append(np.sqrt(np.sum(labels_i[box] == nucleus) / np.pi))
            extents.append(max(side.stop - side.start for side in box))
print(f"{len(radii)} whole nuclei; radius {np.min(radii):.1f} to {np.max(radii):.1f} px "
      f"(median {np.median(radii):.1f}); largest bounding box side {max(extents)} px")

# %% [markdown]
# The whole nuclei range from 1.6 px to 24.0 px in radius (median 7.3 px), and the largest spans 60 px. A field
# of 188 to 204 px is more than three times wider than that: one output pixel sees even the largest nucleus
# whole, with its neighbours and background around it.
#
# ## Parameter count, by hand
#
# A 3x3 convolution from `c_in` to `c_out` channels has `9 * c_in * c_out` weights and no bias; its batch
# normalization adds a scale and a shift per channel, `2 * c_out` (its running mean and variance are buffers,
# not trained parameters). A 2x2 up-convolution has `4 * c_in * c_out` weights and `c_out` biases; the 1x1 head
# `c * out` weights and `out` biases. Level by level:

# %%
def conv_bn(c_in, c_out):
    return 9 * c_in * c_out + 2 * c_out


def parameters_by_hand(in_channels=1, out_channels=1, base=8, depth=4):
    widths = [base * 2**level for level in range(depth + 1)]
    total = conv_bn(in_channels, widths[0]) + conv_bn(widths[0], widths[0])
    for level in range(1, depth + 1):  # encoder levels and the bottleneck
        total += conv_bn(widths[level - 1], widths[level]) + conv_bn(widths[level], widths[level])
    for level in range(depth):         # decoder levels: up-convolution, then two 3x3 convolutions
        total += 4 * widths[level + 1] * widths[level] + widths[level]
        total += conv_bn(2 * widths[level], widths[level]) + conv_bn(widths[level], widths[level])
    return total + widths[0] * out_channels + out_channels  # the 1x1 head

# %% [markdown]
# The count by hand, by PyTorch for our network, and by PyTorch for the library's:

# %% tags=["nbval-check-output"]
by_hand = parameters_by_hand(**CONFIG)
assert by_hand == model.count_parameters(ours) == model.count_parameters(library)
print(f"{by_hand:,} parameters")

# %% [markdown]
# Where do they sit? Per encoder level, and for the up-convolutions, decoder and head together:

# %% tags=["nbval-check-output"]
for level, block in enumerate(library.encoder):
    name = "bottleneck" if level == DEPTH else f"encoder {level}"
    print(f"{name:>10}: {model.count_parameters(block):>7,} ({model.count_parameters(block) / by_hand:.0%})")
for part in ["upsample", "decoder", "head"]:
    print(f"{part:>10}: {model.count_parameters(getattr(library, part)):>7,}")

# %% [markdown]
# Almost half of all parameters (46 %) sit in the bottleneck, where the channels are widest: a 3x3 convolution
# costs `9 * c_in * c_out`, so from level 1 on each level down costs about four times the one above.
#
# With our count, now checked, we can compare sizes without building the networks (here with one output
# channel; the shipped model's second output channel adds 9 parameters):

# %% tags=["nbval-check-output"]
for base in (8, 16, 32):
    print(f"base {base:>2}:", ", ".join(f"depth {depth}: {parameters_by_hand(base=base, depth=depth):>10,}"
                                      for depth in (3, 4, 5)))
small = parameters_by_hand(base=8, depth=4)
print(f"base 16 / base 8: {parameters_by_hand(base=16, depth=4) / small:.2f}; "
      f"depth 5 / depth 4: {parameters_by_hand(base=8, depth=5) / small:.2f}")

# %% [markdown]
# Doubling `base` multiplies the parameters by about 4 (3.99 from 8 to 16), and so does one more level (4.00).
# The shipped model is base 8, depth 4; `models/README.md` tells how that size was chosen.
#
# ## Any image size
#
# Our `ScratchUNet` needs a height and width divisible by 2^4 = 16, otherwise an up-convolved map and its skip
# differ by a pixel and `torch.cat` fails. The library's `UNet` pads the input to a multiple of 16 (by
# reflection, or by repeating the edge pixels of an image too small to reflect) and crops the output back, so a model trained on 128x128 tiles segments any crop or field:

# %%
with torch.no_grad():
    for height, width in [(128, 128), (100, 130), (37, 251)]:
        x_any = torch.zeros(1, 1, height, width)
        try:
            mine = tuple(ours(x_any).shape[-2:])
        except RuntimeError as error:
            mine = f"RuntimeError: {str(error).split('.')[0]}"
        print((height, width), "-> library", tuple(library(x_any).shape[-2:]), "| ours", mine)

# %% [markdown]
# ## How the shipped model was made
#
# The checkpoint records the command that trained it and what happened during the run:

# %% tags=["nbval-check-output"]
history, provenance = info["history"], info["provenance"]
print(provenance["command"])
print(f"epochs asked for: {provenance['epochs']}; epochs run: {len(history['val_loss'])}; "
      f"stopped by: {provenance['metrics']['stop_reason']} of {provenance['max_minutes']:.0f} min")
best = int(np.argmin(history["val_loss"])) + 1
assert best == provenance["metrics"]["best_epoch"]
print(f"weights kept from epoch {best}, the lowest validation loss ({min(history['val_loss']):.4f})")

# %% [markdown]
# The command asked for up to 40 epochs; the run stopped at its 55-minute time budget after 24 and kept the
# weights of epoch 21, where the validation loss was lowest.
#
# ## In this chapter we
# - built a U-Net from double convolutions, max pooling, transposed convolutions and `torch.cat`, and followed
#   an image through it, shape by shape;
# - saw that a skip connection is a concatenation that brings the encoder's detail to the decoder;
# - showed that `nucleilib.model.UNet` is the same network: same shapes, same parameters, and the same output
#   with the same weights, the shipped ones included;
# - worked out the receptive field (13 x 2^d - 8, to within the pooling grid) and the parameter count by hand
#   and checked them against the library and a gradient measurement;
# - saw what the library adds: any image size, and a checkpoint that records how the model was made.
#
# Chapter 03 trains the network.

# %% [markdown]
# ## Exercises
# 1. Write a function `bottleneck_shape(size, base, depth)` that returns the bottleneck's `(channels, height,
#    width)` for a `size x size` input to `model.UNet(base=base, depth=depth)`. Remember that the library pads
#    the input to a multiple of `2**depth` first. Write it in a new cell, then run the check that follows.
# 2. Build `model.UNet(base=8, depth=5)`. What are its receptive field (by hand and from the library) and its
#    parameter count (by `parameters_by_hand` and by `model.count_parameters`)?
# 3. For which input sizes is the bottleneck of the library's depth-4 `UNet` a 1x1 map? And of our `ScratchUNet`?

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
def bottleneck_shape(size, base, depth):
    padded = -(-size // 2**depth) * 2**depth  # round up to a multiple of 2**depth
    return base * 2**depth, padded // 2**depth, padded // 2**depth

# %% [markdown]
# The check for exercise 1 (it compares with the library's shapes):

# %% tags=["exercise-check", "nbval-check-output"]
for size, base, depth in [(128, 8, 4), (100, 8, 4), (37, 4, 3), (256, 16, 5), (16, 2, 0)]:
    expected = dict(model.describe_shapes(model.UNet(base=base, depth=depth), size))["bottleneck"][1:]
    assert bottleneck_shape(size, base, depth) == expected, (size, base, depth, expected)
print("bottleneck_shape is correct")

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
deep = model.UNet(base=8, depth=5)
print(receptive_field_by_hand(5), model.receptive_field(5), parameters_by_hand(base=8, depth=5),
      model.count_parameters(deep))

# %% jupyter={"outputs_hidden": true, "source_hidden": true} tags=["solution", "hide-cell"]
library = model.UNet(base=BASE, depth=DEPTH)
library_sizes = [size for size in range(1, 41)
                 if dict(model.describe_shapes(library, size))["bottleneck"][-2:] == (1, 1)]
ours_sizes = []
for size in range(1, 41):
    shapes_size = []
    try:
        with torch.no_grad():
            ours(torch.zeros(1, 1, size, size), shapes_size)
    except RuntimeError:  # pooling a 1x1 map, or torch.cat of maps that differ by a pixel
        continue
    if dict(shapes_size)["bottleneck"][-2:] == (1, 1):
        ours_sizes.append(size)
print("library:", library_sizes, "(all padded to 16)\nours:", ours_sizes)
