"""Tests of train.lr_range_test (the learning-rate range test of chapter 04)."""

import copy
import math

import numpy as np
import pytest
import torch

from nucleilib import runtime
from nucleilib.losses import bce_dice_loss, bce_loss
from nucleilib.model import UNet
from nucleilib.train import TrainSettings, lr_range_test


def _toy_data(n=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, 1, size, size)).astype(np.float32)
    return images, (images > 0.6).astype(np.float32)


def test_rates_grow_exponentially_from_start_to_end():
    images, targets = _toy_data()
    torch.manual_seed(0)
    result = lr_range_test(UNet(base=2, depth=1), (images, targets), TrainSettings(batch_size=4), start_lr=1e-5,
                           end_lr=1e-1, steps=5, diverge_factor=1e9, device="cpu")
    assert np.allclose(result["lr"], [1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    assert len(result["loss"]) == len(result["smoothed"]) == 5
    assert result["suggested_lr"] == pytest.approx(result["best_lr"] / 10)
    assert result["best_lr"] in result["lr"]


def test_model_weights_and_mode_are_restored():
    images, targets = _toy_data()
    torch.manual_seed(0)
    net = UNet(base=2, depth=1).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lr_range_test(net, (images, targets), TrainSettings(batch_size=4), steps=6, device="cpu")
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_stops_when_the_loss_diverges():
    images, targets = _toy_data()
    torch.manual_seed(0)
    result = lr_range_test(UNet(base=2, depth=1), (images, targets), TrainSettings(batch_size=4), loss=bce_loss,
                           start_lr=1e-3, end_lr=1e6, steps=40, diverge_factor=2.0, device="cpu")
    assert len(result["lr"]) < 40
    assert result["smoothed"][-1] > 2.0 * min(result["smoothed"]) or not math.isfinite(result["loss"][-1])


def test_same_seed_same_curve():
    images, targets = _toy_data()
    curves = []
    for _ in range(2):
        torch.manual_seed(1)
        curves.append(lr_range_test(UNet(base=2, depth=1), (images, targets), TrainSettings(batch_size=4, seed=3),
                                    steps=6, device="cpu")["loss"])
    assert curves[0] == curves[1]


@pytest.mark.parametrize("kwargs", [{"start_lr": 1.0, "end_lr": 0.1}, {"start_lr": 0.0}, {"steps": 1}])
def test_bad_arguments_raise(kwargs):
    images, targets = _toy_data()
    with pytest.raises(ValueError, match="lr_range_test"):
        lr_range_test(UNet(base=2, depth=1), (images, targets), device="cpu", **kwargs)


def test_mismatched_targets_raise():
    images, targets = _toy_data()
    with pytest.raises(ValueError, match="differ"):
        lr_range_test(UNet(base=2, depth=1), (images, targets[:4]), device="cpu")


def test_the_first_loss_is_that_of_fits_step():
    # fit's step: channels_last (on the CPU and CUDA) and mixed precision where native (bf16 CPUs). The range test
    # takes the same step, so its first loss, measured before any update, is the training-mode loss of the model
    # placed as fit places it, on the first batch.
    images, targets = _toy_data()
    torch.manual_seed(0)
    net = UNet(base=2, depth=1)
    reference = copy.deepcopy(net)
    result = lr_range_test(net, (images, targets), TrainSettings(batch_size=4), steps=2, device="cpu")
    cpu = runtime.place(reference, "cpu")
    first = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:4]
    x, y = (torch.from_numpy(a)[first].contiguous(memory_format=torch.channels_last) for a in (images, targets))
    with torch.no_grad(), runtime.autocast(cpu):
        logits = reference.train()(x)
    assert result["loss"][0] == float(bce_dice_loss(logits.float(), y))
