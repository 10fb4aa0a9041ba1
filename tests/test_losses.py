"""Tests for nucleilib.losses: hand-worked loss values and targets from instance labels."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from nucleilib.losses import bce_dice_loss, bce_loss, dice_loss, interior_from_labels, targets_from_labels


def test_bce_matches_hand_computation():
    logits = torch.tensor([[[[2.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_perfect_worst_and_half():
    target = torch.zeros(2, 1, 4, 4)
    target[:, :, :2] = 1
    perfect = 50 * (2 * target - 1)
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # Everything wrong: intersection 0, so Dice = eps / (16 + 16 + eps) with eps = 1.
    assert dice_loss(-perfect, target).item() == pytest.approx(1 - 1 / 33, abs=1e-5)
    # p = 0.5 everywhere: 2 * 8 + 1 over 16 + 16 + 1.
    assert dice_loss(torch.zeros_like(target), target).item() == pytest.approx(1 - 17 / 33, abs=1e-6)


def test_dice_is_a_mean_over_channels():
    target = torch.zeros(1, 2, 2, 2)
    target[:, 0] = 1  # channel 0 full, channel 1 empty
    logits = torch.full_like(target, 50.0)  # predicts everything
    # Channel 0 perfect (loss 0); channel 1: Dice = 1 / (4 + 0 + 1) -> loss 0.8; mean 0.4.
    assert dice_loss(logits, target).item() == pytest.approx(0.4, abs=1e-5)


def test_empty_target_and_empty_prediction_give_zero_dice_loss():
    assert dice_loss(torch.full((1, 1, 3, 3), -50.0), torch.zeros(1, 1, 3, 3)).item() == pytest.approx(0, abs=1e-6)


def test_bce_dice_is_the_sum_and_has_gradients():
    logits = torch.randn(2, 2, 5, 5, requires_grad=True)
    target = (torch.rand(2, 2, 5, 5) > 0.5).float()
    total = bce_dice_loss(logits, target)
    assert total.item() == pytest.approx((bce_loss(logits, target) + dice_loss(logits, target)).item())
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_mask_channel_is_foreground():
    labels = np.array([[[0, 3, 3], [0, 0, 5]]], dtype=np.int32)
    targets = targets_from_labels(labels)
    assert targets.dtype == np.float32 and targets.shape == (1, 1, 2, 3)
    assert targets[0, 0].tolist() == [[0, 1, 1], [0, 0, 1]]


def test_touching_squares_get_separated_interiors():
    labels = np.zeros((1, 30, 40), dtype=np.int32)
    labels[0, 5:25, 5:20] = 1
    labels[0, 5:25, 20:35] = 2  # shares the border column 19|20 with nucleus 1
    targets = targets_from_labels(labels, heads=("mask", "interior"))
    mask, interior = targets[0, 0] > 0, targets[0, 1] > 0
    assert ndimage.label(mask, structure=np.ones((3, 3)))[1] == 1  # one blob in the mask
    parts, n_parts = ndimage.label(interior, structure=np.ones((3, 3)))  # 8-connected
    assert n_parts == 2  # the interiors are apart
    assert set(np.unique(labels[0][parts == 1])) | set(np.unique(labels[0][parts == 2])) == {1, 2}
    # Large nuclei (equivalent radius >= 4) lose a 2-pixel rim all round, including at the touching side.
    assert interior[7:23, 7:18].all() and not interior[:, 18:22].any() and not interior[5:7].any()
    assert interior.sum() == (16 * 11) * 2


def test_small_nuclei_lose_one_pixel_and_tiny_ones_keep_their_centre():
    labels = np.zeros((1, 20, 20), dtype=np.int32)
    labels[0, 2:7, 2:7] = 1  # 25 px: radius 2.8 -> 1-pixel rim -> 3x3 interior
    labels[0, 10:12, 10:12] = 2  # 2x2: erosion deletes it -> one pixel kept
    labels[0, 15, 15] = 3
    interior = interior_from_labels(labels)[0]
    assert interior[3:6, 3:6].all() and interior[labels[0] == 1].sum() == 9
    assert interior[labels[0] == 2].sum() == 1
    assert interior[15, 15]


def test_image_border_is_not_a_boundary():
    labels = np.zeros((1, 12, 12), dtype=np.int32)
    labels[0, 0:12, 0:6] = 1  # touches three image borders
    interior = interior_from_labels(labels)[0]
    assert interior[0, 0] and not interior[0, 4]


def test_ids_repeat_across_images_without_mixing():
    labels = np.zeros((2, 10, 10), dtype=np.int32)
    labels[0, 1:9, 1:9] = 1
    labels[1, 0:3, 0:3] = 1  # same id, other image, small
    interior = interior_from_labels(labels)
    assert interior[0, 3:7, 3:7].all() and interior[0].sum() == 16
    assert 1 <= interior[1].sum() <= 9


def test_every_nucleus_keeps_some_interior_on_random_labels():
    rng = np.random.default_rng(0)
    labels = np.zeros((3, 48, 48), dtype=np.int32)
    for image in labels:
        for nucleus_id in range(1, 15):
            y, x, r = rng.integers(0, 48), rng.integers(0, 48), rng.integers(1, 8)
            yy, xx = np.ogrid[:48, :48]
            image[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = nucleus_id
    interior = interior_from_labels(labels)
    for index, image in enumerate(labels):
        for nucleus_id in np.unique(image[image > 0]):
            assert interior[index][image == nucleus_id].any()
        assert not interior[index][image == 0].any()


@pytest.mark.parametrize(
    "labels, heads",
    [(np.zeros((2, 2), dtype=np.float32), ("mask",)), (np.zeros((2, 2), dtype=int), ("edges",)),
     (np.zeros((2, 2), dtype=int), ()), (-np.ones((2, 2), dtype=int), ("mask",)), (np.zeros(4, dtype=int), ("mask",))],
)
def test_bad_input_raises(labels, heads):
    with pytest.raises(ValueError):
        targets_from_labels(labels, heads)
