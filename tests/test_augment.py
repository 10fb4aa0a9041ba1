"""Tests of nucleilib.augment: batch augmentation and the torch Dataset."""

from __future__ import annotations

import pytest
import torch

from nucleilib import augment
from nucleilib.augment import NucleiDataset


def test_augment_batch_keeps_image_and_target_aligned() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 16, 16, generator=generator)
    targets = torch.cat([(images > 0.5).float(), (images > 0.8).float()], dim=1)
    out, moved = augment.augment_batch(images, targets, torch.Generator().manual_seed(1), 0, 0, 0, 0)
    assert torch.equal((out > 0.5).float(), moved[:, :1]) and torch.equal((out > 0.8).float(), moved[:, 1:])
    # all 8 symmetries appear and each output is a symmetry of its input
    seen = set()
    for original, augmented in zip(images[:, 0], out[:, 0]):
        options = [torch.rot90(f, k, (0, 1)) for f in (original, original.flip(1)) for k in range(4)]
        matches = [i for i, option in enumerate(options) if torch.equal(option, augmented)]
        assert matches
        seen.add(matches[0])
    assert seen == set(range(8))


def test_augment_batch_intensity_is_image_only_deterministic_and_bounded() -> None:
    images = torch.rand(32, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    targets = (images > 0.5).to(torch.uint8)
    first = augment.augment_batch(images, targets, torch.Generator().manual_seed(5))
    second = augment.augment_batch(images, targets, torch.Generator().manual_seed(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    out, moved = first
    assert moved.dtype == torch.uint8 and moved.sum() == targets.sum()
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.shape == images.shape
    assert not torch.equal(out.sort(dim=-1).values, images.sort(dim=-1).values)  # intensities changed
    rectangular = torch.rand(4, 1, 8, 12)
    out, moved = augment.augment_batch(rectangular, rectangular.clone(), torch.Generator().manual_seed(0), 0, 0, 0, 0)
    assert out.shape == (4, 1, 8, 12) and torch.equal(out, moved)


def test_augment_batch_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="alike"):
        augment.augment_batch(torch.zeros(2, 1, 8, 8), torch.zeros(3, 1, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="alike"):
        augment.augment_batch(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9), torch.Generator())


def test_nuclei_dataset_augments_image_and_mask_alike_and_reproducibly():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 16, 16, generator=generator)
    images[:, :, :4, :7] = 1.0  # an asymmetric bright corner, so every symmetry is visible
    masks = (images > 0.99).float()
    dataset = NucleiDataset(images, masks, seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=False)
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(3, 1, 16, 16)] * 2
    moved = 0
    for i in range(len(dataset)):
        image, mask = dataset[i]
        # intensity changes keep the order of pixels, so the brightest region still lies under the mask
        assert image[mask > 0].mean() > image[mask == 0].mean() + 0.2
        assert torch.equal(dataset[i][1], mask)  # same epoch, same sample: same augmentation
        moved += int(not torch.equal(mask, masks[i]))
    assert moved >= 3  # most samples were flipped or rotated
    dataset.set_epoch(1)
    assert any(not torch.equal(dataset[i][1], NucleiDataset(images, masks, seed=3)[i][1]) for i in range(6))
    plain = NucleiDataset(images, masks, augment=False)
    assert torch.equal(plain[2][0], images[2])
