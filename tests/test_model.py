"""Tests for nucleilib.model: shapes, parameter count, receptive field, BatchNorm folding."""

import pytest
import torch

from nucleilib.model import (
    UNet,
    count_parameters,
    describe_shapes,
    fold_batchnorm,
    pad_to_multiple,
    probabilities_from_logits,
    receptive_field,
    unet_parameter_count,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("height, width", [(100, 130), (1, 1), (17, 5), (64, 64)])
def test_any_size_keeps_height_and_width(height, width):
    net = UNet(out_channels=2, base=4, depth=4).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, height, width))
    assert out.shape == (1, 2, height, width)


def test_crop_takes_back_exactly_the_padded_window():
    # Running the network on the image, or on the image padded by hand and cropping at the
    # padding offset, must give the same logits: the crop undoes the padding exactly.
    torch.manual_seed(0)
    net = UNet(base=2, depth=2).eval()
    image = torch.rand(1, 1, 10, 13)
    padded = pad_to_multiple(image, 4)
    assert padded.shape == (1, 1, 12, 16) and torch.equal(padded[..., 1:11, 1:14], image)
    with torch.no_grad():
        assert torch.allclose(net(image), net(padded)[..., 1:11, 1:14], atol=1e-6)


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    net = UNet(base=4, depth=3).eval()
    image = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        reference = net(image)
        net = net.to(memory_format=torch.channels_last)
        fast = net(image.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(reference, fast, atol=1e-5)


@pytest.mark.parametrize("base, depth, out_channels", [(16, 4, 1), (8, 3, 2), (4, 0, 1), (32, 4, 2)])
def test_parameter_count_matches_the_closed_form(base, depth, out_channels):
    net = UNet(out_channels=out_channels, base=base, depth=depth)
    assert count_parameters(net) == unet_parameter_count(1, out_channels, base, depth)


def test_default_size_is_about_two_million_parameters():
    # base 64 (the original U-Net width) has ~31 M; base 16 is 16x fewer.
    assert 1.9e6 < count_parameters(UNet()) < 2.0e6


def test_config_rebuilds_the_same_architecture():
    net = UNet(in_channels=1, out_channels=2, base=8, depth=3)
    twin = UNet(**net.config)
    twin.load_state_dict(net.state_dict())  # raises if any shape differs
    assert twin.config == net.config


def test_describe_shapes_levels_and_mode_restored():
    net = UNet(base=16, depth=4).train()
    shapes = dict(describe_shapes(net, size=128))
    assert shapes["encoder 0"] == (1, 16, 128, 128)
    assert shapes["bottleneck"] == (1, 256, 8, 8)
    assert shapes["decoder 0"] == (1, 16, 128, 128)
    assert shapes["logits"] == (1, 1, 128, 128)
    assert net.training


def test_receptive_field_matches_the_gradient_of_the_real_network():
    # The largest span of non-zero input gradient over one period of output positions. BatchNorm
    # shifts are set positive so that no ReLU is switched off and every reachable pixel shows up.
    for depth in (1, 3):
        torch.manual_seed(0)
        net = UNet(base=2, depth=depth).eval()
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.constant_(module.bias, 1.0)
        widths = []
        for position in range(96, 96 + 2**depth):
            image = torch.rand(1, 1, 192, 16, requires_grad=True)
            net(image)[0, 0, position, 8].backward()
            rows = torch.nonzero(image.grad[0, 0].abs().sum(dim=1)).ravel()
            widths.append(int(rows.max() - rows.min() + 1))
        assert max(widths) == receptive_field(depth)


def test_receptive_field_bounds_the_influence_of_a_pixel():
    # Changing pixels outside the receptive field of the centre pixel must not change it; changing
    # a pixel just inside (somewhere on the edge window) must.
    torch.manual_seed(0)
    depth = 2
    field = receptive_field(depth)  # 44
    net = UNet(base=2, depth=depth).eval()
    size = 96  # a multiple of 4: no padding, so the image border plays no role near the centre
    image = torch.rand(1, 1, size, size)
    centre = size // 2
    with torch.no_grad():
        reference = net(image)[0, 0, centre, centre]
        outside = image.clone()
        outside[..., :, : centre - field] = 0  # far left columns
        outside[..., :, centre + field :] = 0
        outside[..., : centre - field, :] = 0
        outside[..., centre + field :, :] = 0
        assert torch.equal(net(outside)[0, 0, centre, centre], reference)
        # Somewhere within the field, a change matters.
        inside = image.clone()
        half = field // 2
        inside[..., centre - half + 2 : centre + half - 2, centre - half + 2 : centre + half - 2] = 0
        assert not torch.equal(net(inside)[0, 0, centre, centre], reference)


def test_receptive_field_is_tight():
    # The exact extent: perturbing one column at a time, the set of columns that affect the centre
    # output spans at most receptive_field(depth) columns (max pooling may hide a few, never add).
    torch.manual_seed(1)
    depth = 1
    net = UNet(base=2, depth=depth).eval()
    size = 40
    image = torch.rand(1, 1, size, size)
    centre = size // 2
    with torch.no_grad():
        reference = net(image)[0, 0, centre, centre]
        affecting = []
        for column in range(size):
            changed = image.clone()
            changed[..., :, column] = changed[..., :, column] + 5.0
            if not torch.equal(net(changed)[0, 0, centre, centre], reference):
                affecting.append(column)
    span = affecting[-1] - affecting[0] + 1
    assert receptive_field(depth) - 2 <= span <= receptive_field(depth)


def test_fold_batchnorm_matches_eval_outputs():
    torch.manual_seed(0)
    net = UNet(out_channels=2, base=4, depth=2)
    # Train briefly so BatchNorm running statistics and affine parameters are not trivial.
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        net(torch.rand(4, 1, 16, 16)).mean().backward()
        optimizer.step()
    net.eval()
    folded = fold_batchnorm(net)
    image = torch.rand(2, 1, 23, 19)
    with torch.no_grad():
        assert torch.allclose(net(image), folded(image), atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # original untouched
    assert count_parameters(folded) < count_parameters(net)


def test_probabilities_from_logits_is_the_sigmoid():
    logits = torch.linspace(-5, 5, 11)
    assert torch.allclose(probabilities_from_logits(logits), 1 / (1 + torch.exp(-logits)))


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="base"):
        UNet(base=0)
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=-1)
