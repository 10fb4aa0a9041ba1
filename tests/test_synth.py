"""Tests of the synthetic nuclei generator: determinism, the data contract, and realistic statistics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nucleilib.synth import make_dataset, make_image


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    """Fifty 128 x 128 images: enough for the statistics below, fast to draw."""
    return make_dataset(n=50, size=128, seed=0)


def _equivalent_radii(labels: np.ndarray) -> np.ndarray:
    """sqrt(area / pi) of every nucleus that does not touch the image border."""
    radii = []
    for lab in labels:
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        areas = np.bincount(lab.ravel())
        inner = np.setdiff1d(np.flatnonzero(areas), np.append(border, 0))
        radii.append(np.sqrt(areas[inner] / np.pi))
    return np.concatenate(radii)


def _has_touching(lab: np.ndarray) -> bool:
    """True when two different nuclei are 8-neighbours somewhere."""
    grown = ndi.grey_dilation(lab, size=3)
    shrunk = -ndi.grey_dilation(-np.where(lab > 0, lab, lab.max() + 1), size=3)
    return bool(((lab > 0) & ((grown != lab) | (shrunk != lab))).any())


def test_same_seed_gives_same_arrays_and_image_i_does_not_depend_on_n():
    first = make_dataset(n=4, size=64, seed=3)
    again = make_dataset(n=4, size=64, seed=3)
    longer = make_dataset(n=6, size=64, seed=3)
    other = make_dataset(n=4, size=64, seed=4)
    for key in ("images", "masks", "labels"):
        assert np.array_equal(first[key], again[key])
        assert np.array_equal(first[key], longer[key][:4])
    assert not np.array_equal(first["images"], other["images"])


def test_make_image_is_deterministic_for_a_generator_state():
    image_a, labels_a = make_image(np.random.default_rng(11), size=96)
    image_b, labels_b = make_image(np.random.default_rng(11), size=96)
    assert np.array_equal(image_a, image_b) and np.array_equal(labels_a, labels_b)
    assert image_a.shape == labels_a.shape == (96, 96)


def test_shapes_dtypes_and_masks_follow_labels(batch):
    images, masks, labels = batch["images"], batch["masks"], batch["labels"]
    assert images.shape == masks.shape == labels.shape == (50, 128, 128)
    assert images.dtype == np.uint16 and masks.dtype == np.uint8 and labels.dtype == np.int32
    assert set(np.unique(masks)) <= {0, 1}
    assert np.array_equal(masks, (labels > 0).astype(np.uint8))
    assert images.max() <= 4095


def test_labels_are_consecutive_and_each_nucleus_is_one_piece(batch):
    pieces = total = 0
    for lab in batch["labels"]:
        ids = np.unique(lab)
        first = 0 if ids[0] == 0 else 1  # a field fully covered by nuclei has no 0
        assert np.array_equal(ids, np.arange(first, first + len(ids)))
        for k in ids[ids > 0]:
            pieces += ndi.label(lab == k, structure=np.ones((3, 3)))[1]
            total += 1
    assert total > 100
    assert pieces <= total * 1.01  # an overlap split may rarely leave a sliver; almost never


def test_nucleus_counts_and_sizes_are_in_the_stated_ranges(batch):
    counts = batch["labels"].reshape(50, -1).max(axis=1)
    assert counts.max() <= 45
    assert np.median(counts) >= 2
    assert (counts >= 12).any()  # some crowded fields
    assert (counts <= 3).any()  # and some sparse ones
    radii = _equivalent_radii(batch["labels"])
    assert 4.0 <= np.median(radii) <= 20.0
    assert np.percentile(radii, 5) >= 1.5 and np.percentile(radii, 95) <= 24.0
    assert np.percentile(radii, 95) >= 12.0  # large nuclei too, not only small ones


def test_some_but_not_all_fields_have_touching_nuclei(batch):
    touching = np.mean([_has_touching(lab) for lab in batch["labels"]])
    assert 0.15 <= touching <= 0.85


def test_nuclei_are_brighter_than_background_and_cameras_vary(batch):
    for image, mask in zip(batch["images"].astype(np.float64), batch["masks"].astype(bool)):
        if mask.sum() >= 30 and (~mask).sum() >= 30:
            assert np.median(image[mask]) > np.median(image[~mask])
    maxima = batch["images"].reshape(50, -1).max(axis=1)
    minima = batch["images"].reshape(50, -1).min(axis=1)
    assert (maxima <= 255).any() and (maxima > 255).any()  # 8-bit-like and 12-bit-like cameras
    assert (minima >= 60).any()  # a 12-bit camera offset
    assert len(np.unique(maxima)) > 25  # a different dynamic range per image


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"n": -1}, "n"), ({"n": 2, "size": 8}, "size"), ({"n": 2, "size": 64.0}, "size"), ({"n": 1, "seed": -3}, "seed")],
)
def test_bad_arguments_raise_value_error(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_dataset(**kwargs)


def test_make_image_rejects_a_tiny_size():
    with pytest.raises(ValueError, match="size"):
        make_image(np.random.default_rng(0), size=4)


def test_empty_dataset_has_the_right_shapes():
    data = make_dataset(n=0, size=32)
    assert data["images"].shape == data["masks"].shape == data["labels"].shape == (0, 32, 32)
