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
# - follow an image through the U-Net's contracting and expanding paths, with the tensor shape at every level;
# - say what the skip connections carry and why segmentation needs them;
# - compute the receptive field and the parameter count, and check both against the real model;
# - run the network on an image of any size.

# %% [markdown]
# First the result: the shipped, trained U-Net turns a fluorescence image into a probability map of the same
# size, one value per pixel: the probability that the pixel belongs to a nucleus.

# %%
# NBVAL_CHECK_OUTPUT
import numpy as np
from nucleilib import data, predict, synth, train, viz

image, labels = synth.make_image(np.random.default_rng(8), size=128)
trained, info = train.load_model()
probability = predict.probabilities(trained, image, info)
print("image", image.shape, "-> probabilities", probability.shape)
print(f"pixels above 0.5: {np.mean(probability[0] > 0.5):.1%}, true foreground: {np.mean(labels > 0):.1%}")

# %%
fig = viz.show_grid([data.normalize_image(image), probability[0]], titles=["image", "P(nucleus)"], ncols=2,
                    size=3.2)

# %% [markdown]
# The rest of this chapter opens that network up.
#
# ## Building block: two 3x3 convolutions
#
# Every level of the U-Net applies the same block: a 3x3 convolution, batch normalization, ReLU, twice. The
# padding keeps the height and width; only the number of channels changes.

# %%
import torch
from nucleilib import model

block = model.conv_block(1, 16)
print(block)
print(block(torch.zeros(1, 1, 128, 128)).shape)

# %% [markdown]
# ## Tensor shapes at every level
#
# The encoder (contracting path) halves the image with 2x2 max pooling and doubles the channels; the decoder
# (expanding path) doubles the image with a 2x2 transposed convolution, glues on the encoder's features of the
# same size, and halves the channels. The shapes printed from the real model, for one 128x128 image:

# %%
# NBVAL_CHECK_OUTPUT
net = model.UNet(in_channels=1, out_channels=1, base=16, depth=4)
for name, shape in model.describe_shapes(net, size=128):
    print(f"{name:>13}: {shape}")

# %% [markdown]
# The bottleneck sees the image at 8x8 with 256 channels: little *where*, much *what*. The same picture
# drawn to scale (box height: image size; box width: channels):

# %%
fig = viz.unet_diagram(model.describe_shapes(net, size=128))
viz.save_figure(fig, "02_unet.png")

# %% [markdown]
# ## Why skip connections
#
# After four poolings a feature at the bottleneck stands for a 16x16 block of pixels: the decoder knows *that*
# there is a nucleus there, not exactly *where* its edge runs. The skip connection hands the decoder the
# encoder's full-resolution features, so it can place edges to the pixel. In code it is one line,
# `torch.cat([skip, upsampled], dim=1)`, which is why the decoder blocks take twice the channels:

# %%
# NBVAL_CHECK_OUTPUT
for name, layer in [("decoder level 0", net.decoder[-1][0]), ("encoder level 0", net.encoder[0][3])]:
    print(f"{name}: first conv takes {layer.in_channels} channels, gives {layer.out_channels}")

# %% [markdown]
# ## Receptive field
#
# How far can one output pixel "see"? Each 3x3 convolution widens the view by one feature on each side at its
# level's resolution, and each pooling doubles the size of a feature. `receptive_field` walks the layers:

# %%
# NBVAL_CHECK_OUTPUT
for depth in range(1, 6):
    print(f"depth {depth}: receptive field {model.receptive_field(depth)} px")

# %% [markdown]
# Checked at once on the real network, the d2l way: the gradient of one output pixel with respect to the input
# is non-zero exactly on the pixels it can see. A small depth-3 net keeps this fast; its batch-norm shifts are
# set positive so no ReLU hides a pixel. Pooling windows sit on a fixed grid, so the field depends a little on
# where the pixel lies; we look at eight neighbouring pixels.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
small = model.UNet(base=4, depth=3).eval()
for module in small.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
        torch.nn.init.constant_(module.bias, 1.0)
widths = []
for position in range(80, 88):
    x = torch.rand(1, 1, 192, 192, requires_grad=True)
    small(x)[0, 0, position, position].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(dim=1)).ravel()
    widths.append(int(rows.max() - rows.min() + 1))
print("computed:", model.receptive_field(3), "px; measured by gradient:", widths)

# %% [markdown]
# A nucleus in our data has a radius of 4 to 20 pixels, so the 204 px field of depth 4 sees every nucleus
# whole, with its neighbours and the background around it.
#
# ## Parameter count
#
# Most parameters sit at the bottom, where the channels are widest. The count from PyTorch and the closed form
# of `unet_parameter_count` agree:

# %%
# NBVAL_CHECK_OUTPUT
print(f"{model.count_parameters(net):,} parameters (PyTorch), "
      f"{model.unet_parameter_count(base=16, depth=4):,} (formula)")
for part in ["encoder", "upsample", "decoder", "head"]:
    print(f"{part:>9}: {model.count_parameters(getattr(net, part)):>9,}")

# %% [markdown]
# Width (`base`) multiplies the parameters by about its square; depth adds a wider level each time:

# %%
# NBVAL_CHECK_OUTPUT
for base in (8, 16, 32):
    print(f"base {base:>2}:", ", ".join(f"depth {d}: {model.unet_parameter_count(base=base, depth=d):>9,}"
                                      for d in (3, 4, 5)))

# %% [markdown]
# ## Any image size
#
# The network pads the input to a multiple of 2^depth (by reflection) and crops the output back, so a model
# trained on 128x128 tiles segments a 100x130 crop or a 1024x1360 field directly.

# %%
# NBVAL_CHECK_OUTPUT
for height, width in [(128, 128), (100, 130), (37, 251)]:
    print((height, width), "->", tuple(net(torch.zeros(1, 1, height, width)).shape[-2:]))

# %% [markdown]
# ## What the shipped model is
#
# The shipped checkpoint records how it was made. Its configuration and provenance:

# %%
print(info["config"])
print({key: info["provenance"].get(key) for key in ("command", "seed", "lr", "epochs")})

# %% [markdown]
# ## In this chapter we
# - printed the shape of the tensors at every level of the U-Net and drew the network;
# - saw that skip connections are a concatenation that brings full-resolution detail to the decoder;
# - computed the receptive field and checked it with a gradient, and counted the parameters two ways;
# - ran the network on images of any size.
#
# Chapter 03 trains it.

# %% [markdown]
# ## Exercises
# 1. Build `UNet(base=8, depth=5)`. What is its bottleneck shape for a 128x128 input, its receptive field and its
#    parameter count?
# 2. What is the smallest input size that reaches the bottleneck of a depth-4 U-Net as a 1x1 map?

# %% tags=["solution"]
deep = model.UNet(base=8, depth=5)
print(dict(model.describe_shapes(deep, 128))["bottleneck"], model.receptive_field(5), model.count_parameters(deep))

# %% tags=["solution"]
print(dict(model.describe_shapes(net, 16))["bottleneck"], "<- a 16x16 input: 16 / 2**4 = 1")
