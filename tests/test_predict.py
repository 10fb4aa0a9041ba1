"""Tests of nucleilib.predict: any size and dtype in, (C, H, W) probabilities out; tiling without seams."""

import numpy as np
import pytest
import torch
from torch import nn

from nucleilib import predict


def small_unet(out_channels=1, seed=0):
    """A tiny U-Net (the project's when available), randomly initialized, deterministic."""
    torch.manual_seed(seed)
    try:
        from nucleilib.model import UNet
    except ImportError:  # stand-in while model.py is missing: any conv net returning (B, C, H, W)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, out_channels, 3, padding=1))
    return UNet(in_channels=1, out_channels=out_channels, base=4, depth=2)


def conv_net(seed=0):
    """Two 3x3 convolutions: translation-equivariant, receptive field 5 x 5."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 2, 3, padding=1))


def identity_logits():
    """1x1 convolution: logit = normalized pixel value."""
    model = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    return model


def test_odd_sized_image_gives_same_size_probabilities():
    image = np.random.default_rng(0).integers(0, 255, (37, 53), dtype=np.uint8)
    prob = predict.probabilities(small_unet(out_channels=2), image)
    assert prob.shape == (2, 37, 53) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0


def test_tiled_equals_whole_image_for_a_convolutional_model():
    image = np.random.default_rng(1).random((150, 170)).astype(np.float32)
    model = conv_net()
    whole = predict.probabilities(model, image, tile=None)
    tiled = predict.probabilities(model, image, tile=64, overlap=16, batch_size=3)
    assert tiled.shape == whole.shape == (2, 150, 170)
    np.testing.assert_allclose(tiled, whole, atol=2e-3)


def test_tiled_unet_is_close_to_whole_image():
    image = np.random.default_rng(2).random((100, 140)).astype(np.float32)
    model = small_unet()
    whole = predict.probabilities(model, image, tile=None)
    tiled = predict.probabilities(model, image, tile=64, overlap=32)
    assert np.abs(tiled - whole).mean() < 0.01


def test_uint16_narrow_range_uses_the_full_normalized_range():
    rng = np.random.default_rng(3)
    image = rng.integers(300, 701, (40, 40)).astype(np.uint16)  # 16-bit but only 300..700
    prob = predict.probabilities(identity_logits(), image)[0]
    # normalized to [0, 1]: logits span 0..1, so probabilities sigmoid(0)..sigmoid(1), not all ~0.5
    assert prob.min() == pytest.approx(0.5, abs=1e-6)
    assert prob.max() == pytest.approx(1 / (1 + np.exp(-1)), abs=1e-6)
    # the same image as float, scaled and shifted, normalizes identically
    same = predict.probabilities(identity_logits(), image.astype(np.float64) * 3 + 1000)[0]
    np.testing.assert_allclose(prob, same, atol=1e-5)


def test_checkpoint_normalization_is_used():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    default = predict.probabilities(identity_logits(), image)
    full_range = predict.probabilities(identity_logits(), image, info={"normalization": {"low": 0.0, "high": 100.0}})
    assert not np.allclose(default, full_range)
    with pytest.raises(ValueError, match="normalization"):
        predict.probabilities(identity_logits(), image, info={"normalization": "percentile"})


def test_model_mode_is_restored_and_inference_uses_eval():
    model = small_unet()
    model.train()
    predict.probabilities(model, np.zeros((16, 16), np.uint8))
    assert model.training


def test_bad_images_raise():
    model = identity_logits()
    with pytest.raises(ValueError, match="2-D"):
        predict.probabilities(model, np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="NaN"):
        predict.probabilities(model, np.full((8, 8), np.nan))
    assert predict.probabilities(model, np.zeros((1, 8, 9))).shape == (1, 8, 9)  # singleton axis is fine


def test_predict_batch_is_the_sigmoid_of_the_model_in_any_batch_size():
    model, images = conv_net(), torch.rand(5, 1, 12, 9)
    out = predict.predict_batch(model, images, batch_size=2)
    assert out.shape == (5, 2, 12, 9) and out.dtype == np.float32
    with torch.no_grad():
        expected = torch.sigmoid(model(images)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(out, predict.predict_batch(model, images, batch_size=5), atol=1e-6)


def test_bf16_inference_agrees_with_fp32_on_the_shipped_model_everywhere():
    # Forced on, so the bfloat16 path runs on CPUs without native bf16 too (slower there, but the same code).
    from nucleilib import count, synth
    from nucleilib.checkpoint import load_model

    model, info = load_model()
    images = synth.make_dataset(n=4, size=128, seed=21)["images"]
    full = [predict.probabilities(model, image, info, precision="fp32") for image in images]
    half = [predict.probabilities(model, image, info, precision="bf16") for image in images]
    assert max(np.abs(a - b).max() for a, b in zip(full, half)) < 0.05
    assert [count.count_nuclei(p)[0] for p in half] == [count.count_nuclei(p)[0] for p in full]


def test_auto_precision_is_fp32_where_the_cpu_has_no_native_bf16(monkeypatch):
    from nucleilib import runtime

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    net, image = small_unet(), np.random.default_rng(0).random((40, 40)).astype(np.float32)
    np.testing.assert_array_equal(predict.probabilities(net, image, precision="auto"),
                                  predict.probabilities(net, image, precision="fp32"))
