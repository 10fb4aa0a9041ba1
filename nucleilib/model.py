"""The U-Net (Ronneberger et al. 2015) at a teaching size, and helpers to inspect it.

Each level applies two 3x3 convolutions, each followed by BatchNorm and ReLU; the encoder halves the image
with 2x2 max pooling and doubles the channels; the decoder doubles the image with a 2x2 transposed convolution,
concatenates the encoder features of the same size (the skip connection) and applies two more 3x3
convolutions. A 1x1 convolution turns the last features into one logit per output channel and pixel.
:func:`probabilities_from_logits` is the one place where logits become probabilities.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F


def probabilities_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities from logits: the sigmoid, the only one of the library (losses, evaluation, prediction).

    Examples
    --------
    >>> probabilities_from_logits(torch.tensor([0.0, 100.0, -100.0])).tolist()
    [0.5, 1.0, 0.0]
    """
    return torch.sigmoid(logits)


def model_device(model: nn.Module) -> torch.device:
    """The device a model's parameters live on (the CPU for a model without parameters).

    Examples
    --------
    >>> model_device(nn.Conv2d(1, 1, 1)), model_device(nn.Identity())
    (device(type='cpu'), device(type='cpu'))
    """
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two size-preserving 3x3 convolutions, each followed by BatchNorm and ReLU: ``conv, bn, relu, conv, bn, relu``.

    The convolutions carry no bias: the BatchNorm that follows has its own shift.

    Examples
    --------
    >>> conv_block(1, 4)(torch.zeros(2, 1, 9, 7)).shape
    torch.Size([2, 4, 9, 7])
    """
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True), nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """U-Net for binary segmentation (one logit per output channel and pixel).

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels (1: a nucleus stain); outputs (1: the nucleus mask, 2: and the "interior").
    base : int
        Channels of the first level; level ``i`` has ``base * 2**i``.
    depth : int
        Number of 2x2 poolings; the bottleneck sees the image at ``1 / 2**depth`` size.

    Examples
    --------
    >>> net = UNet(base=4, depth=2)
    >>> net(torch.zeros(1, 1, 10, 13)).shape
    torch.Size([1, 1, 10, 13])
    >>> net.config
    {'in_channels': 1, 'out_channels': 1, 'base': 4, 'depth': 2}
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 16, depth: int = 4):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("base", base)):
            if int(value) < 1:
                raise ValueError(f"UNet: {name} must be >= 1, got {value}")
        if int(depth) < 0:
            raise ValueError(f"UNet: depth must be >= 0, got {depth}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.base, self.depth = int(base), int(depth)
        widths = [self.base * 2**level for level in range(self.depth + 1)]
        self.encoder = nn.ModuleList([conv_block(self.in_channels, widths[0])])
        self.encoder.extend(conv_block(widths[i - 1], widths[i]) for i in range(1, self.depth + 1))
        self.pool = nn.MaxPool2d(2)
        # Decoder level i goes from widths[i + 1] back to widths[i], deepest first.
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2) for i in reversed(range(self.depth))
        )
        self.decoder = nn.ModuleList(conv_block(2 * widths[i], widths[i]) for i in reversed(range(self.depth)))
        self.head = nn.Conv2d(widths[0], self.out_channels, kernel_size=1)

    @property
    def config(self) -> dict[str, int]:
        """Constructor arguments, enough to rebuild the network: ``UNet(**net.config)``."""
        return {name: getattr(self, name) for name in ("in_channels", "out_channels", "base", "depth")}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, out_channels, H, W)`` for images ``(N, in_channels, H, W)`` of any H, W."""
        height, width = images.shape[-2:]
        x = pad_to_multiple(images, 2**self.depth)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(self.pool(x) if level > 0 else x)
            skips.append(x)
        skips.pop()  # the bottleneck output is not a skip connection
        for up, block in zip(self.upsample, self.decoder):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        logits = self.head(x)
        top, left = (logits.shape[-2] - height) // 2, (logits.shape[-1] - width) // 2
        return logits[..., top : top + height, left : left + width]


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``(N, C, H, W)`` images symmetrically to the next multiples of ``multiple``.

    Reflection keeps the image statistics at the border; an image too small to reflect (padding as large
    as the image) repeats its edge pixels instead. The original sits at offset ``((H' - H) // 2, (W' - W) // 2)``.

    Examples
    --------
    >>> pad_to_multiple(torch.arange(6.0).reshape(1, 1, 2, 3), 4)  # reflected
    tensor([[[[3., 4., 5., 4.],
              [0., 1., 2., 1.],
              [3., 4., 5., 4.],
              [0., 1., 2., 1.]]]])
    >>> pad_to_multiple(torch.ones(1, 1, 1, 1), 4).shape  # too small to reflect: edge repeated
    torch.Size([1, 1, 4, 4])
    """
    height, width = images.shape[-2:]
    extra_h, extra_w = (-height) % multiple, (-width) % multiple
    if extra_h == 0 and extra_w == 0:
        return images
    pads = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    fits = max(pads[:2]) < width and max(pads[2:]) < height
    return F.pad(images, pads, mode="reflect" if fits else "replicate")


def describe_shapes(model: UNet, size: int = 128) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` after each level for one ``size x size`` image, from the input to the logits.

    The model is left in its train or eval mode.

    Examples
    --------
    >>> for name, shape in describe_shapes(UNet(base=4, depth=2), size=8):
    ...     print(name, shape)
    input (1, 1, 8, 8)
    padded input (1, 1, 8, 8)
    encoder 0 (1, 4, 8, 8)
    encoder 1 (1, 8, 4, 4)
    bottleneck (1, 16, 2, 2)
    decoder 1 (1, 8, 4, 4)
    decoder 0 (1, 4, 8, 8)
    logits (1, 1, 8, 8)
    """
    names = [(block, f"encoder {level}" if level < model.depth else "bottleneck")
             for level, block in enumerate(model.encoder)]
    names += [(block, f"decoder {model.depth - 1 - step}") for step, block in enumerate(model.decoder)]
    record: list = []
    hooks = [block.register_forward_hook(lambda _, __, out, name=name: record.append((name, tuple(out.shape))))
             for block, name in names]
    image = torch.zeros(1, model.in_channels, size, size, device=model_device(model))
    was_training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(image)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    padded = tuple(pad_to_multiple(image, 2**model.depth).shape)
    return [("input", tuple(image.shape)), ("padded input", padded), *record, ("logits", tuple(logits.shape))]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``numel`` of those with ``requires_grad``).

    Examples
    --------
    >>> count_parameters(nn.Conv2d(1, 4, 3))  # 4 * 1 * 3 * 3 weights + 4 biases
    40
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _encoder_span(level: int, first: int, last: int) -> tuple[int, int]:
    """Input pixels (first, last) that encoder ``level`` features ``first..last`` depend on (1-D)."""
    first, last = first - 2, last + 2  # two 3x3 convolutions
    if level == 0:
        return first, last
    return _encoder_span(level - 1, 2 * first, 2 * last + 1)  # the 2x2 max pool below this level


def _decoder_span(level: int, depth: int, first: int, last: int) -> tuple[int, int]:
    """Input pixels that decoder ``level`` features ``first..last`` depend on (the bottleneck at ``depth``)."""
    if level == depth:
        return _encoder_span(depth, first, last)
    first, last = first - 2, last + 2  # two 3x3 convolutions after the concatenation
    skip = _encoder_span(level, first, last)
    below = _decoder_span(level + 1, depth, first // 2, last // 2)  # 2x2 stride-2 up-convolution
    return min(skip[0], below[0]), max(skip[1], below[1])


def receptive_field(depth: int) -> int:
    """Receptive field (pixels along one axis) of one output pixel of :class:`UNet`.

    Exact interval arithmetic, layer by layer: a 3x3 convolution widens the window by one on each side; a 2x2
    max pool maps features ``i..j`` to inputs ``2i..2j+1``; a 2x2 stride-2 transposed convolution maps outputs
    ``i..j`` to inputs ``i//2..j//2``; a skip connection joins the two windows. Pooling windows sit on a fixed
    grid, so the field depends a little on the pixel's position: this is the largest. Independent of ``base``.

    Examples
    --------
    >>> receptive_field(0), receptive_field(1), receptive_field(4)  # depth 0: two 3x3 convolutions
    (5, 18, 204)
    """
    widths = []
    for position in range(4 * 2**depth, 5 * 2**depth):  # one period of the pooling grid, away from 0
        first, last = _decoder_span(0, depth, position, position)
        widths.append(last - first + 1)
    return max(widths)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Inference copy with each BatchNorm folded into the convolution before it.

    In eval mode BatchNorm is a fixed per-channel affine map ``y = a * x + b``, so it merges into the preceding
    convolution's weights and bias: the copy gives ``model.eval()``'s outputs (up to rounding) with fewer
    operations. The BatchNorm layers must follow convolutions inside ``nn.Sequential`` blocks (as in :class:`UNet`).

    Examples
    --------
    >>> block = conv_block(1, 2).eval()
    >>> folded = fold_batchnorm(block)
    >>> sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    0
    >>> x = torch.randn(1, 1, 5, 5)
    >>> torch.allclose(block(x), folded(x), atol=1e-5)
    True
    """
    folded = copy.deepcopy(model).eval()
    for sequential in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        layers = list(sequential)
        for index in range(len(layers) - 1):
            conv, norm = layers[index], layers[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequential[index] = _fold_conv_bn(conv, norm)
                sequential[index + 1] = nn.Identity()
    return folded


def _fold_conv_bn(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution equal to ``norm(conv(x))`` in eval mode."""
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(norm.running_mean)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                      conv.groups, bias=True, padding_mode=conv.padding_mode).to(conv.weight.device)
    with torch.no_grad():
        fused.weight.copy_(conv.weight.detach() * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias.detach())
    if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
        fused.to(memory_format=torch.channels_last)  # keep the layout the model was given
    return fused


def unet_parameter_count(in_channels: int = 1, out_channels: int = 1, base: int = 16, depth: int = 4) -> int:
    """Closed-form parameter count of :class:`UNet` (a check on the architecture, and for the chapter).

    Per 3x3 convolution ``9 * c_in * c_out`` weights (no bias) and ``2 * c_out`` BatchNorm
    parameters; per transposed convolution ``4 * c_in * c_out + c_out``; the head ``c * out + out``.

    Examples
    --------
    >>> unet_parameter_count(base=4, depth=0)  # 9*1*4 + 8 + 9*4*4 + 8 + 4*1 + 1
    201
    >>> unet_parameter_count() == count_parameters(UNet())
    True
    """

    def block(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out

    widths = [base * 2**level for level in range(depth + 1)]
    total = block(in_channels, widths[0]) + sum(block(widths[i - 1], widths[i]) for i in range(1, depth + 1))
    for i in range(depth):
        total += 4 * widths[i + 1] * widths[i] + widths[i] + block(2 * widths[i], widths[i])
    return total + widths[0] * out_channels + out_channels

