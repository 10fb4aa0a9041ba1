"""Augmentation (PyTorch): :func:`augment_batch`, random symmetries and intensity changes of a batch (what
training applies), and :class:`NucleiDataset`, a ``Dataset`` for a training loop of one's own.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def augment_batch(images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, brightness: float = 0.1,
                  contrast: float = 0.25, gamma: float = 0.3, noise: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and 90-degree rotations (image and target alike) plus intensity changes (image only).

    Each sample gets one of the 8 symmetries of the square (optional transpose, then optional vertical and
    horizontal flip; only flips when H != W), identical for its image and target. Images then get a random
    gamma, contrast around their mean, brightness shift and Gaussian noise, and are clipped to [0, 1].
    Everything is drawn from ``generator``: the same state gives the same result. Inputs are not modified.

    Parameters
    ----------
    images, targets : torch.Tensor
        (B, 1, H, W) float images in [0, 1]; (B, C, H, W) targets of any dtype, only moved, never changed.
        Both are returned, augmented, with their shapes and dtypes.
    brightness, contrast, gamma, noise : float
        Largest brightness shift; contrast factor from [1 - contrast, 1 + contrast]; gamma log-uniform
        from [1 / (1 + gamma), 1 + gamma]; largest standard deviation of the Gaussian noise (per sample).

    Examples
    --------
    >>> images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    >>> targets = (images > 0.5).float()
    >>> out, moved = augment_batch(images, targets, torch.Generator().manual_seed(0), 0, 0, 0, 0)
    >>> bool(torch.equal((out > 0.5).float(), moved)), out.shape == images.shape
    (True, True)
    """
    alike = images.ndim == targets.ndim == 4 and images.shape[0] == targets.shape[0]
    if not alike or images.shape[2:] != targets.shape[2:]:
        raise ValueError(f"images {tuple(images.shape)} and targets {tuple(targets.shape)} must be (B, C, H, W) alike")
    batch = images.shape[0]

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=generator.device).to(images.device)

    square = images.shape[2] == images.shape[3]
    coins = draw(batch, 3) < 0.5
    if not square:
        coins[:, 0] = False

    choices = coins.tolist()

    def apply_symmetry(x: torch.Tensor) -> torch.Tensor:
        # a loop over samples: on CPU, torch.flip of the whole batch is several times slower
        moved = []
        for sample, (transpose, flip_rows, flip_cols) in zip(x, choices):
            sample = sample.transpose(-1, -2) if transpose else sample
            sample = sample.flip(-2) if flip_rows else sample
            moved.append(sample.flip(-1) if flip_cols else sample)
        return torch.stack(moved)

    images, targets = apply_symmetry(images), apply_symmetry(targets)
    if brightness == contrast == gamma == noise == 0:
        return images, targets
    shape = (batch, 1, 1, 1)
    gammas = torch.exp((draw(*shape) * 2 - 1) * math.log1p(gamma))
    contrasts = 1 + (draw(*shape) * 2 - 1) * contrast
    shifts = (draw(*shape) * 2 - 1) * brightness
    sigmas = draw(*shape) * noise
    # in place on one new tensor: these passes over the batch are the cost of augmentation
    out = images.clamp(0, 1).pow_(gammas)
    means = out.mean(dim=(1, 2, 3), keepdim=True)
    out.mul_(contrasts).add_(means * (1 - contrasts) + shifts)  # (x - mean) * c + mean + shift
    if noise > 0:
        gaussian = torch.randn(images.shape, generator=generator, device=generator.device).to(images.device)
        out.addcmul_(gaussian, sigmas)
    return out.clamp_(0, 1), targets


class NucleiDataset(torch.utils.data.Dataset):
    """A torch ``Dataset`` of image/target pairs, augmented on the fly with :func:`augment_batch` when ``augment``.

    Sample ``i`` of epoch ``e`` is augmented with a generator seeded from ``(seed, e, i)``, so a run is
    reproducible whatever the ``DataLoader`` order or number of workers; call :meth:`set_epoch` each epoch
    for fresh augmentations. ``images`` are (N, 1, H, W) floats in [0, 1] as
    :func:`nucleilib.io.load_npz` returns them, ``targets`` (N, C, H, W) (masks and maybe more channels).

    Examples
    --------
    >>> images = torch.rand(3, 1, 8, 8); masks = (images > 0.5).float()
    >>> dataset = NucleiDataset(images, masks, seed=1)
    >>> image, mask = dataset[2]
    >>> len(dataset), tuple(image.shape), bool(torch.equal(mask, dataset[2][1]))
    (3, (1, 8, 8), True)
    """

    def __init__(self, images, targets, augment: bool = True, seed: int = 0):
        self.images = torch.as_tensor(np.asarray(images, dtype=np.float32))
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        if len(self.images) != len(self.targets) or self.images.shape[-2:] != self.targets.shape[-2:]:
            raise ValueError(f"NucleiDataset: images {tuple(self.images.shape)} and targets "
                             f"{tuple(self.targets.shape)} do not match")
        self.augment, self.seed, self.epoch = augment, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentations of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.images[index : index + 1], self.targets[index : index + 1]
        if self.augment:
            state = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0]
            generator = torch.Generator().manual_seed(int(state))
            image, target = augment_batch(image, target, generator)
        return image[0], target[0]
