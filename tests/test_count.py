"""Tests of nucleilib.count: thresholding, component counting, watershed splitting, the classical baseline."""

from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from nucleilib import count
from nucleilib.count import CountSettings
from nucleilib.data import label_components


def disc_image(shape, centres, radius):
    """Boolean mask of discs; int labels as well."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return labels


TWO_TOUCHING = disc_image((40, 60), [(20, 20), (20, 36)], 10) > 0  # centres 16 px apart, radius 10


def test_binarize_threshold_is_explicit_and_inclusive():
    prob = np.array([[0.2, 0.5, 0.7]])
    assert count.binarize(prob).tolist() == [[0, 1, 1]]
    assert count.binarize(prob, 0.6).tolist() == [[0, 0, 1]]
    assert count.binarize(prob).dtype == np.uint8
    with pytest.raises(ValueError, match="NaN"):
        count.binarize(np.array([np.nan]))


def test_non_binary_mask_miscounts_but_binarized_counts_right():
    prob = np.full((20, 20), 0.05)  # a faint nonzero background, as a sigmoid output has
    prob[2:6, 2:6] = prob[12:18, 12:18] = 0.95
    n_raw, _ = label_components(prob)  # everything nonzero is one blob
    n_bin, labels = label_components(count.binarize(prob))
    assert n_raw == 1
    assert n_bin == 2


def test_background_label_is_not_counted():
    mask = np.zeros((10, 10), np.uint8)
    mask[1:3, 1:3] = mask[6:9, 6:9] = mask[0, 9] = 1
    n, labels = label_components(mask)
    assert n == 3 == labels.max()
    assert labels[5, 5] == 0 and labels.dtype == np.int32


def test_connectivity_on_a_diagonal_pair():
    mask = np.eye(2, dtype=np.uint8)
    assert label_components(mask, 8)[0] == 1
    assert label_components(mask, 4)[0] == 2
    with pytest.raises(ValueError, match="connectivity"):
        label_components(mask, 6)


def test_specks_are_removed_and_ids_made_sequential():
    labels = np.zeros((20, 20), np.int32)
    labels[0:5, 0:5] = 4  # 25 px nucleus
    labels[10, 10] = 9  # 1 px speck
    labels[15:19, 15:19] = 12  # 16 px nucleus
    out = count.remove_small(labels, min_area=10)
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    assert out[10, 10] == 0 and out[0, 0] == 1 and out[15, 15] == 2
    assert count.remove_small(labels, 0).max() == 3


def test_watershed_splits_two_touching_discs():
    assert label_components(TWO_TOUCHING)[0] == 1
    labels = count.split_touching(TWO_TOUCHING)
    assert labels.max() == 2
    assert (labels > 0).sum() == TWO_TOUCHING.sum()  # every foreground pixel labelled
    # the cut runs near the midline between the centres (x = 28)
    assert labels[20, 22] != labels[20, 34]


def test_one_elongated_nucleus_is_not_split():
    yy, xx = np.mgrid[:40, :60]
    ellipse = ((yy - 20) / 7.0) ** 2 + ((xx - 30) / 22.0) ** 2 <= 1
    rng = np.random.default_rng(0)
    ragged = ellipse ^ ((rng.random(ellipse.shape) < 0.05) & ~ndi_erode(ellipse))  # noisy outline
    assert count.split_touching(ellipse).max() == 1
    assert count.remove_small(count.split_touching(ragged), 10).max() == 1


def ndi_erode(mask):
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=2)


def test_interior_channel_splits_touching_discs():
    interior = disc_image((40, 60), [(20, 20), (20, 36)], 5) > 0  # eroded nuclei, apart
    labels = count.split_with_interior(TWO_TOUCHING, interior * 0.9)
    assert labels.max() == 2 and (labels > 0).sum() == TWO_TOUCHING.sum()
    assert labels[20, 20] != labels[20, 36]
    prob = np.stack([TWO_TOUCHING * 0.9, interior * 0.9])
    assert count.labels_from_probabilities(prob).max() == 2
    assert count.labels_from_probabilities(prob, split=False).max() == 1


def test_component_without_a_seed_keeps_its_own_label():
    mask = TWO_TOUCHING.copy()
    mask[0:4, 55:59] = True  # a small nucleus too flat to hold an h-maximum
    labels = count.split_with_interior(mask, np.where(mask, 0.9, 0.0), h=5.0)
    assert labels[1, 56] > 0 and labels[1, 56] != labels[20, 20]
    assert labels.max() == 3 and (labels > 0).sum() == mask.sum()  # two discs and the square


def test_settings_are_one_frozen_object_with_keyword_changes():
    settings = CountSettings(min_area=30)
    with pytest.raises(FrozenInstanceError):
        settings.min_area = 5
    prob = np.zeros((30, 30))
    prob[2:8, 2:8] = prob[20:26, 20:26] = 0.9
    prob[15, 15] = 0.9
    assert count.count_nuclei(prob, settings)[0] == 2  # the 1 px speck goes, the 36 px nuclei stay
    assert count.count_nuclei(prob, settings, min_area=40)[0] == 0
    assert count.count_nuclei(prob, CountSettings(min_area=1, threshold=0.95))[0] == 0
    with pytest.raises(TypeError):
        count.count_nuclei(prob, min_aera=3)


def test_count_nuclei_and_min_area():
    prob = np.zeros((30, 30))
    prob[2:8, 2:8] = prob[20:26, 20:26] = 0.9
    prob[15, 15] = 0.9  # one-pixel speck
    assert count.count_nuclei(prob)[0] == 2
    assert count.count_nuclei(prob, min_area=1)[0] == 3


def test_classical_baseline_counts_separated_discs_on_a_noisy_image():
    rng = np.random.default_rng(1)
    centres = [(15 + 30 * (i // 4), 15 + 30 * (i % 4)) for i in range(12)]
    truth = disc_image((90, 120), centres, 7)
    image = 300 + 400 * (truth > 0) + rng.normal(0, 60, truth.shape)  # 16-bit, narrow range, SNR ~ 7
    image = np.clip(image, 0, 65535).astype(np.uint16)
    labels = count.classical_baseline(image)
    assert labels.max() == 12
    from nucleilib.metrics import matching

    assert matching(truth, labels, 0.5)["tp"] == 12


def test_classical_baseline_constant_image_finds_nothing():
    assert count.classical_baseline(np.full((16, 16), 7, np.uint8)).max() == 0


def test_overlay_outlines_each_nucleus():
    labels = disc_image((30, 30), [(8, 8), (20, 20)], 4)
    rgb = count.overlay(np.full((30, 30), 7, np.uint8), labels, color=(0, 255, 0))
    assert rgb.shape == (30, 30, 3) and rgb.dtype == np.uint8
    outlined = (rgb == [0, 255, 0]).all(axis=2)
    assert outlined[8, 4] and outlined[20, 24] and not outlined[8, 8]
    assert (rgb[~outlined] == 7).all()  # the image itself is drawn unchanged
    more = count.overlay(rgb, labels == 1, color=(255, 0, 0))  # more outlines on an RGB picture
    assert (more[8, 4] == [255, 0, 0]).all() and (more[20, 24] == [0, 255, 0]).all()
    with pytest.raises(ValueError, match="same shape"):
        count.overlay(np.zeros((5, 5)), labels)
