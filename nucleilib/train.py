"""Training the U-Net: the settings, the one training step, the loop, and the ``train`` command.

:class:`TrainSettings` is the recipe in one frozen object, recorded in the checkpoint's provenance.
:func:`training_step` is the one optimizer step that :func:`fit`, :func:`lr_range_test` and the ``bench`` command
take. :func:`fit` is the loop; :func:`train_from_npz` is what ``python -m nucleilib train`` runs. Where training
runs (device, threads, mixed precision, ``torch.compile``, ``torchrun``) is :mod:`nucleilib.runtime`'s business.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from nucleilib import __version__
from nucleilib.augment import augment_batch
from nucleilib.checkpoint import last_checkpoint_path, load_checkpoint, load_model, save_checkpoint, save_history
from nucleilib.data import split_indices
from nucleilib.io import file_sha256, load_npz, remove_stale_temporaries
from nucleilib.losses import bce_dice_loss, targets_from_labels
from nucleilib.metrics import overlap_scores
from nucleilib.model import UNet, model_device, probabilities_from_logits
from nucleilib.predict import predict_batch
from nucleilib.presets import PRESETS
from nucleilib.runtime import (all_sum, autocast, compile_model, distributed, distributed_session, epoch_order,
                               grad_scaler, memory_format, place, share_buffers, should_compile, world)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Pair = tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]  # (images, targets)
HISTORY_KEYS = ("train_loss", "val_loss", "val_dice", "lr", "seconds")


@dataclass(frozen=True)
class TrainSettings:
    """How a U-Net is trained: the recipe :func:`fit` follows and a checkpoint's provenance records.

    The defaults are :func:`fit`'s; :meth:`from_preset` gives those of ``python -m nucleilib train --preset``.
    ``base``, ``depth``, ``heads`` and ``max_images`` concern only :func:`train_from_npz` (``fit`` trains the
    model and the targets it is given).

    Examples
    --------
    >>> settings = TrainSettings.from_preset("fast", epochs=2, max_minutes=None)
    >>> settings.epochs, settings.max_minutes, settings.base, settings.lr
    (2, 5.0, 8, 0.001)
    """

    epochs: int = 30  # in all, counting those of a resumed run
    lr: float = 1e-3  # Adam's initial learning rate
    batch_size: int = 16  # images per optimizer step, over all processes under torchrun
    seed: int = 0  # shuffling and augmentation; in train_from_npz also the split, the subset and the weights
    augment: bool = True  # random flips, rotations and intensity changes (augment.augment_batch)
    max_minutes: float | None = None  # no epoch starts that would (by the last one's time) overrun this budget
    early_stopping: int | None = 8  # epochs without validation improvement before stopping; None: never
    plateau_patience: int = 3  # epochs without improvement before the learning rate is multiplied by ...
    plateau_factor: float = 0.5  # ... this factor (ReduceLROnPlateau)
    compile: bool | str = "auto"  # train through torch.compile; "auto": long CPU runs (runtime.should_compile)
    base: int = 8  # channels of the U-Net's first level
    depth: int = 4  # its poolings
    heads: tuple[str, ...] | None = None  # ("mask",) or ("mask", "interior"); None: interior if all data has labels
    max_images: int | None = None  # use at most this many images (a seeded random subset)

    @classmethod
    def from_preset(cls, name: str = "default", **overrides) -> TrainSettings:
        """The ``train`` part of ``nucleilib.presets.PRESETS[name]``, with the ``overrides`` that are not None.

        Examples
        --------
        >>> TrainSettings.from_preset("huge")
        Traceback (most recent call last):
        ...
        ValueError: preset must be one of ['default', 'fast', 'full'], got 'huge'
        """
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        chosen = {key: value for key, value in overrides.items() if value is not None}
        return cls(**{**PRESETS[name]["train"], **chosen})

    @classmethod
    def from_checkpoint(cls, info: dict) -> TrainSettings:
        """The settings a checkpoint (``load_model``'s info) was trained with; defaults for what it does not record.

        Stored flat in the provenance; older checkpoints hold some of them and the name of their preset, which
        gives the rest. Model size and heads are the checkpoint's own.

        Examples
        --------
        >>> info = {"config": {"base": 4, "depth": 2}, "heads": ["mask"], "provenance": {"lr": 0.01, "seed": 3}}
        >>> settings = TrainSettings.from_checkpoint(info)
        >>> settings.lr, settings.seed, settings.epochs, settings.base, settings.heads
        (0.01, 3, 30, 4, ('mask',))
        """
        config, provenance = info["config"], info["provenance"]
        stored = {**PRESETS.get(provenance.get("preset"), {}).get("train", {}), **provenance, "base": config["base"],
                  "depth": config["depth"], "heads": tuple(info["heads"])}
        return cls(**{item.name: stored[item.name] for item in fields(cls) if item.name in stored})


def training_step(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, optimizer: torch.optim.Optimizer,
                  loss: Loss = bce_dice_loss, scaler: torch.amp.GradScaler | None = None,
                  forward: Callable[[torch.Tensor], torch.Tensor] | None = None, naive: bool = False) -> float:
    """One optimizer step on one batch: the step :func:`fit`, :func:`lr_range_test` and ``bench`` take.

    The batch moves to the model's device in ``runtime.memory_format``; the forward pass (through ``forward``, the
    compiled or ``DistributedDataParallel`` model, if given) runs under ``runtime.autocast``; the loss is taken in
    float32; backward; the optimizer steps (through ``scaler`` for float16 on CUDA). ``naive``: PyTorch's plain
    defaults instead (contiguous, float32), ``bench``'s reference. Returns the batch's loss.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net, x = UNet(base=2, depth=1), torch.rand(2, 1, 8, 8)
    >>> optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    >>> losses = [training_step(net, x, (x > 0.5).float(), optimizer) for _ in range(6)]
    >>> losses[-1] < losses[0]
    True
    """
    device = model_device(model)
    layout = torch.contiguous_format if naive else memory_format(device)
    images = images.to(device).contiguous(memory_format=layout)
    targets = targets.to(device).contiguous(memory_format=layout)
    optimizer.zero_grad(set_to_none=True)
    with contextlib.nullcontext() if naive else autocast(device):
        logits = (model if forward is None else forward)(images)
    value = loss(logits.float(), targets)
    if scaler is not None:
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        value.backward()
        optimizer.step()
    return float(value.detach())


def _as_tensor(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """float32 ``(N, C, H, W)`` CPU tensor, or ValueError naming the argument."""
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32) if not torch.is_tensor(array) else array)
    if tensor.ndim != 4:
        raise ValueError(f"{name}: expected an (N, C, H, W) array, got shape {tuple(tensor.shape)}")
    return tensor.detach().to("cpu", torch.float32)


def _areas(predicted: torch.Tensor, target: torch.Tensor) -> list[float]:
    """(intersection, predicted area, true area) of a {0,1} prediction and a target, for ``overlap_scores``."""
    return [float((predicted * target).sum()), float(predicted.sum()), float(target.sum())]


def evaluate_pixels(model: torch.nn.Module, images: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor,
                    threshold: float = 0.5, batch_size: int = 32) -> dict[str, float]:
    """Pixel-level Dice and IoU of channel 0 (the nucleus mask) over a whole set of images.

    ``images`` are ``(N, 1, H, W)``, normalized; ``masks`` ``(N, 1, H, W)`` or ``(N, H, W)`` in {0, 1} (of more
    channels, the first is used). A pixel is nucleus where its probability exceeds ``threshold``. Returns
    ``{"dice": float, "iou": float}``; raises ValueError when images and masks disagree in N, H or W.

    Examples
    --------
    >>> net = UNet(base=2, depth=1)
    >>> with torch.no_grad():
    ...     _ = net.head.bias.fill_(-100.0)  # predicts background everywhere
    >>> evaluate_pixels(net, np.zeros((2, 1, 8, 8)), np.zeros((2, 8, 8)))
    {'dice': 1.0, 'iou': 1.0}
    """
    masks = _as_tensor(masks[:, None] if masks.ndim == 3 else masks, "masks")
    probabilities = torch.from_numpy(predict_batch(model, images, batch_size=batch_size))
    if masks.shape[0] != probabilities.shape[0] or masks.shape[-2:] != probabilities.shape[-2:]:
        shapes = f"masks {tuple(masks.shape)} do not match images {tuple(probabilities.shape)}"
        raise ValueError(f"evaluate_pixels: {shapes}")
    predicted = (probabilities[:, :1] > threshold).float()
    dice, iou = overlap_scores(*_areas(predicted, (masks[:, :1] > 0.5).float()))
    return {"dice": dice, "iou": iou}


@dataclass
class _Run:
    """What one :func:`fit` call keeps from epoch to epoch (and a last checkpoint stores to resume)."""

    model: UNet
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    generator: torch.Generator
    scaler: torch.amp.GradScaler | None
    history: dict
    net: Callable[[torch.Tensor], torch.Tensor] | None = None
    best_loss: float = math.inf
    stale_epochs: int = 0
    best_weights: dict | None = None

    @classmethod
    def start(cls, model: UNet, device: torch.device, settings: TrainSettings, rank: int) -> _Run:
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=settings.plateau_factor,
                                                               patience=settings.plateau_patience)
        generator = torch.Generator().manual_seed(int(settings.seed) + 7919 * rank)  # each process augments its own
        history = {key: [] for key in HISTORY_KEYS}
        return cls(model, device, optimizer, scheduler, generator, grad_scaler(device), history)

    def resume(self, path: str | Path, rank: int) -> None:
        payload = load_checkpoint(path)
        state = payload.get("training_state")
        if state is None:
            raise ValueError(f"{path}: not a resumable checkpoint (no training_state; use the .last.pt file)")
        if payload["config"] != self.model.config:
            config = payload["config"]
            raise ValueError(f"{path}: checkpoint config {config} differs from the model {self.model.config}")
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if rank == 0:
            self.generator.set_state(state["generator"])
        self.best_loss, self.stale_epochs = float(state["best_loss"]), int(state["stale_epochs"])
        self.history = {key: list(payload["history"].get(key, [])) for key in HISTORY_KEYS}

    def record(self, values: Sequence[float]) -> bool:
        """Append one epoch's figures (in :data:`HISTORY_KEYS` order); True when the validation loss improved."""
        for key, value in zip(HISTORY_KEYS, values):
            self.history[key].append(float(value))
        improved = self.history["val_loss"][-1] < self.best_loss
        if improved:
            self.best_loss, self.stale_epochs = self.history["val_loss"][-1], 0
            self.best_weights = copy.deepcopy(self.model.state_dict())
        else:
            self.stale_epochs += 1
        return improved

    def save(self, out: str | Path, improved: bool, provenance: dict | None, heads: Sequence[str] | None) -> None:
        """The best checkpoint at ``out`` when improved; the resumable last one beside it every epoch."""
        if improved:
            save_checkpoint(out, self.model, history=self.history, provenance=provenance, heads=heads)
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "generator": self.generator.get_state(), "best_loss": self.best_loss,
                 "stale_epochs": self.stale_epochs}
        save_checkpoint(last_checkpoint_path(out), self.model, history=self.history, provenance=provenance,
                        heads=heads, training_state=state)
        save_history(out, self.history, provenance)


def _run_epoch(run: _Run, order: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor], loss: Loss,
               batch_size: int, augment: bool, bar) -> float:
    """One pass over ``order``; returns the mean training loss (over all processes).

    Full batches go through ``run.net`` (a compiled model has static shapes); a last, partial one through the
    model itself, except under ``torchrun``, where every step goes through ``DistributedDataParallel``.
    """
    run.model.train()
    distributed_run = world()[1] > 1
    total, seen = 0.0, 0
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        x, y = data[0][index], data[1][index]
        if augment:
            x, y = augment_batch(x, y, run.generator)
        forward = run.net if len(index) == batch_size or distributed_run else run.model
        total += training_step(run.model, x, y, run.optimizer, loss, run.scaler, forward) * len(index)
        seen += len(index)
        bar.update(1)
    total, seen = all_sum([total, seen], run.device)
    return total / max(seen, 1)


def _validate(model: UNet, data: tuple[torch.Tensor, torch.Tensor], loss: Loss, batch_size: int,
              device: torch.device) -> tuple[float, float]:
    """Mean validation loss and pixel Dice of channel 0 at probability 0.5 (each process takes a share)."""
    share_buffers(model)
    rank, world_size = world()
    images, targets = data[0][rank::world_size], data[1][rank::world_size]
    model.eval()
    total, areas = 0.0, [0.0, 0.0, 0.0]
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).contiguous(memory_format=memory_format(device))
            y = targets[start : start + batch_size].to(device)
            with autocast(device):
                logits = model(x)
            logits = logits.float()
            total += float(loss(logits, y)) * len(x)
            predicted = (probabilities_from_logits(logits[:, :1]) > 0.5).float()
            areas = [sum_ + area for sum_, area in zip(areas, _areas(predicted, y[:, :1]))]
    total, n, *areas = all_sum([total, len(images), *areas], device)
    return total / max(n, 1), overlap_scores(*areas)[0]


def _checked(data: Sequence, name: str, model: UNet) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, targets)`` as float32 tensors, or ValueError when they do not fit each other or the model."""
    images, targets = _as_tensor(data[0], f"{name}_images"), _as_tensor(data[1], f"{name}_targets")
    if len(images) == 0:
        raise ValueError(f"fit: no {name} images")
    if images.shape[0] != targets.shape[0] or images.shape[-2:] != targets.shape[-2:]:
        raise ValueError(f"fit: {name} images {tuple(images.shape)} and targets {tuple(targets.shape)} differ")
    if targets.shape[1] != model.out_channels:
        raise ValueError(f"fit: {name} targets have {targets.shape[1]} channels, model outputs {model.out_channels}")
    return images, targets


def fit(model: UNet, train_data: Pair, val_data: Pair, settings: TrainSettings | None = None,
        loss: Loss = bce_dice_loss, out: str | Path | None = None, resume: str | Path | None = None,
        device: str | torch.device | None = None, progress: bool = True, provenance: dict | None = None) -> dict:
    """Train ``model`` in place and return its per-epoch history.

    Adam at ``settings.lr``; the learning rate drops on a plateau of the validation loss; training stops after
    ``settings.epochs``, after ``settings.early_stopping`` epochs without improvement, when the next epoch
    would overrun ``settings.max_minutes``, or on Ctrl-C (the best checkpoint on disk stays whole). At the end
    the model holds the weights of its best epoch (lowest validation loss).

    Under ``torchrun`` every process trains a ``DistributedDataParallel`` copy on its share of each epoch with
    ``batch_size // world_size`` images per step (so the learning rate stays that of one process).

    ``train_data`` and ``val_data`` are ``(images, targets)``: ``(N, 1, H, W)`` images in [0, 1] and ``(N,
    out_channels, H, W)`` targets (channel 0: the mask). ``settings`` default to ``TrainSettings()``; ``loss(logits,
    targets)`` to BCE + Dice. ``out``: where the best checkpoint is written whenever validation improves, and the
    resumable last one (``checkpoint.last_checkpoint_path(out)``) every epoch, with ``provenance``; ``resume``: a
    last checkpoint to continue from. ``device``: default ``runtime.select_device()``.

    Returns
    -------
    dict
        Lists per epoch: ``train_loss``, ``val_loss``, ``val_dice``, ``lr``, ``seconds``; ``stop_reason``
        (``"epochs"``, ``"early stopping"``, ``"time budget"`` or ``"interrupted"``) and ``compiled``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> images = torch.rand(4, 1, 8, 8)
    >>> pair = (images, (images > 0.5).float())
    >>> history = fit(UNet(base=2, depth=1), pair, pair, TrainSettings(epochs=2, batch_size=2), progress=False)
    >>> len(history["val_dice"]), history["stop_reason"]
    (2, 'epochs')
    """
    from tqdm.auto import tqdm
    settings = settings or TrainSettings()
    train_data, val_data = _checked(train_data, "train", model), _checked(val_data, "val", model)
    rank, world_size = world()
    if settings.batch_size < world_size:
        raise ValueError(f"fit: batch_size {settings.batch_size} is smaller than the {world_size} processes")
    batch_size = settings.batch_size // world_size  # per process
    run = _Run.start(model, place(model, device), settings, rank)
    if resume is not None:
        run.resume(resume, rank)
    run.best_weights = copy.deepcopy(model.state_dict())
    steps_per_epoch = math.ceil(math.ceil(len(train_data[0]) / world_size) / batch_size)
    first_epoch = len(run.history["train_loss"])
    planned = (settings.epochs - first_epoch) * steps_per_epoch
    compiled = should_compile(run.device, planned, settings.compile, world_size)
    run.net = compile_model(distributed(model, run.device)) if compiled else distributed(model, run.device)
    bar = tqdm(total=planned, disable=not progress or rank != 0, desc="training", unit="batch")
    started, stop_reason = time.perf_counter(), "epochs"
    try:
        for epoch in range(first_epoch, settings.epochs):
            last_seconds = run.history["seconds"][-1] if run.history["seconds"] else 0.0
            over_budget = (settings.max_minutes is not None and epoch > first_epoch
                           and time.perf_counter() - started + last_seconds > 60 * settings.max_minutes)
            if all_sum([over_budget], run.device)[0] > 0:  # all processes stop together
                stop_reason = "time budget"
                break
            epoch_started, current_lr = time.perf_counter(), run.optimizer.param_groups[0]["lr"]
            order = epoch_order(len(train_data[0]), run.generator, epoch, settings.seed)
            train_loss = _run_epoch(run, order, train_data, loss, batch_size, settings.augment, bar)
            val_loss, val_dice = _validate(model, val_data, loss, batch_size, run.device)
            run.scheduler.step(val_loss)
            improved = run.record([train_loss, val_loss, val_dice, current_lr, time.perf_counter() - epoch_started])
            if out is not None and rank == 0:
                run.save(out, improved, provenance, settings.heads)
            bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.3f}", val_loss=f"{val_loss:.3f}",
                            dice=f"{val_dice:.3f}")
            if settings.early_stopping is not None and run.stale_epochs >= settings.early_stopping:
                stop_reason = "early stopping"
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted"  # the partial epoch is dropped; checkpoints on disk are whole
    finally:
        bar.close()
    model.load_state_dict(run.best_weights)
    model.eval()
    return {**run.history, "stop_reason": stop_reason, "compiled": compiled}


def _load_training_data(paths: Sequence[Path], heads: Sequence[str] | None):
    """Concatenate images and targets of all files; the heads (default by label availability); describe each file."""
    images, masks, labels, described = [], [], [], []
    for path in paths:
        loaded = load_npz(path)
        if images and loaded[0].shape[-2:] != images[0].shape[-2:]:
            size, first = tuple(loaded[0].shape[-2:]), tuple(images[0].shape[-2:])
            raise ValueError(f"{path}: images are {size}, but {paths[0]} has {first}")
        images.append(loaded[0])
        masks.append(loaded[1])
        labels.append(loaded[2] if len(loaded) > 2 else None)
        described.append({"path": str(path), "sha256": file_sha256(path), "n_images": int(len(loaded[0])),
                          "size": [int(s) for s in loaded[0].shape[-2:]], "labels": len(loaded) > 2})
    without_labels = [str(p) for p, lab in zip(paths, labels) if lab is None]
    if heads is None:
        heads = ("mask",) if without_labels else ("mask", "interior")
    heads = tuple(heads)
    if not heads or heads[0] != "mask":
        raise ValueError(f"heads must start with 'mask', got {heads}")
    if "interior" in heads and without_labels:
        raise ValueError(f"{without_labels[0]}: the interior head needs instance labels, and this file has none")
    targets = [np.concatenate([m, targets_from_labels(lab, heads[1:])], axis=1) if len(heads) > 1 else m
               for m, lab in zip(masks, labels)]
    return np.concatenate(images), np.concatenate(targets).astype(np.float32), heads, described


def _test_metrics(history: dict, model: UNet, test: tuple[np.ndarray, np.ndarray], rank: int) -> dict:
    """What the provenance and the command report: epochs, stop reason, validation and held-out test scores."""
    best = int(np.argmin(history["val_loss"])) if history["val_loss"] else 0
    metrics = {"epochs_run": len(history["val_loss"]), "best_epoch": best + 1, "stop_reason": history["stop_reason"]}
    if history["val_dice"]:
        metrics["val_dice"] = history["val_dice"][best]
    if len(test[0]) and rank == 0:
        scores = evaluate_pixels(model, test[0], test[1][:, :1])
        metrics.update(test_dice=scores["dice"], test_iou=scores["iou"])
    return metrics


def _start_from(settings: TrainSettings, init: str | Path) -> tuple[TrainSettings, UNet, dict]:
    """The checkpoint ``init`` that training continues from: its model size and heads, its weights, its record."""
    model, info = load_model(init)
    settings = replace(settings, base=info["config"]["base"], depth=info["config"]["depth"], heads=tuple(info["heads"]))
    return settings, model, {"path": str(init), "sha256": file_sha256(init), "command": info["provenance"].get("command")}


def train_from_npz(data_path: str | Path | Sequence[str | Path], out: str | Path, settings: TrainSettings | None = None,
                   command: str | None = None, extra_data: Sequence[str | Path] = (),
                   data_description: str | None = None, progress: bool = True,
                   device: str | torch.device | None = None, resume: str | Path | None = None,
                   init: str | Path | None = None) -> dict:
    """Train a U-Net on ``.npz`` data set(s) and write the best checkpoint with its provenance.

    The images of all files (``data_path`` and ``extra_data``) are concatenated and split (seeded) into train /
    validation / test (``data.split_indices``, 80/10/10); the test part is only used for the final metrics.
    With instance labels in every file the model gets a second "interior" output for splitting touching
    nuclei. The provenance records the settings (default ``TrainSettings.from_preset("default")``; stored flat,
    :meth:`TrainSettings.from_checkpoint` reads them back), the ``command``, the data files' hashes, the
    ``data_description``, the split, the versions and the metrics. ``device``: default ``runtime.select_device()``
    (under ``torchrun``: this process's GPU, or the CPU). ``resume``: a last checkpoint of the same run to continue
    (its command, date and epochs are kept in the provenance as ``resumed_from``); ``init``: a checkpoint whose weights
    training starts from (fine-tuning; its model size and heads replace those of ``settings``; recorded as
    ``initialized_from``). Returns ``history``, ``metrics`` (``val_dice``,
    ``test_dice``, ``test_iou`` ...), ``heads`` and ``out``.

    Examples
    --------
    >>> train_from_npz("no/such/data.npz", "m.pt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: no/such/data.npz...
    """
    settings = settings or TrainSettings.from_preset("default")
    if Path(out).is_dir():
        raise ValueError(f"{out}: is a folder; name the checkpoint file to write, e.g. {Path(out) / 'model.pt'}")
    with distributed_session() as process_device:  # under torchrun: join the process group, leave at the end
        device = device if process_device is None else process_device
        rank, world_size = world()
        paths = [Path(data_path)] if isinstance(data_path, (str, Path)) else [Path(p) for p in data_path]
        paths += [Path(p) for p in extra_data]
        started = time.perf_counter()
        if init is not None and resume is not None:
            raise ValueError("give init (weights to start from) or resume (a run to continue), not both")
        if init is not None:
            settings, start, initialized_from = _start_from(settings, init)
        images, targets, heads, described = _load_training_data(paths, settings.heads)
        settings = replace(settings, heads=heads)
        if settings.max_images is not None and len(images) > settings.max_images:
            keep = np.sort(np.random.default_rng(settings.seed).permutation(len(images))[: settings.max_images])
            images, targets = images[keep], targets[keep]
        parts = [np.asarray(part) for part in split_indices(len(images), seed=settings.seed)]
        if len(parts[0]) == 0 or len(parts[1]) == 0:
            raise ValueError(f"{paths[0]}: too few images ({len(images)}) to split into training and validation")

        torch.manual_seed(settings.seed)
        model = start if init is not None else UNet(in_channels=1, out_channels=len(heads), base=settings.base,
                                                    depth=settings.depth)
        provenance = {
            "command": command or f"train_from_npz({[str(p) for p in paths]!r}, {str(out)!r}, {settings!r})",
            **asdict(settings), "data": described, "data_description": data_description or "",
            "split": {"train": len(parts[0]), "val": len(parts[1]), "test": len(parts[2]), "seed": int(settings.seed)},
            "processes": world_size, "nucleilib_version": __version__, "torch_version": str(torch.__version__),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if resume is not None:
            earlier = load_checkpoint(resume)
            provenance["resumed_from"] = {"path": str(resume), "epochs": len(earlier["history"].get("val_loss", [])),
                                          **{k: earlier["provenance"].get(k) for k in ("command", "date")}}
        if init is not None:
            provenance["initialized_from"] = initialized_from
        if rank == 0:  # what a killed earlier run of this checkpoint left half-written
            remove_stale_temporaries(Path(out).parent, Path(out).stem)
        history = fit(model, (images[parts[0]], targets[parts[0]]), (images[parts[1]], targets[parts[1]]), settings,
                      out=out, resume=resume, device=device, progress=progress and rank == 0, provenance=provenance)
        metrics = _test_metrics(history, model, (images[parts[2]], targets[parts[2]]), rank)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        provenance.update(metrics=metrics, device=str(model_device(model)), compiled=history["compiled"])
        if rank == 0:
            save_checkpoint(out, model, history=history, provenance=provenance, heads=heads)
            save_history(out, history, provenance)
        return {"history": history, "metrics": metrics, "heads": list(heads), "out": str(out)}


def lr_range_test(model: torch.nn.Module, data: Pair, settings: TrainSettings | None = None, loss: Loss = bce_dice_loss,
                  start_lr: float = 1e-6, end_lr: float = 10.0, steps: int = 60, smoothing: float = 0.8,
                  diverge_factor: float = 4.0, device: str | torch.device | None = None) -> dict:
    """Learning-rate range test: train briefly while the learning rate grows exponentially, record the loss.

    One :func:`training_step` (the step :func:`fit` takes, without augmentation) per batch of
    ``settings.batch_size`` (batches cycle through a shuffle seeded by ``settings.seed``), the learning rate
    going from ``start_lr`` to ``end_lr`` in ``steps`` equal factors (Smith 2017, "Cyclical learning rates").
    The loss first stays flat (rate too small to move the weights), then falls (useful rates), then explodes
    (too large); the test stops once the loss, smoothed by a moving average of factor ``smoothing``, exceeds
    ``diverge_factor`` times its minimum. The model's weights are restored afterwards.

    Returns
    -------
    dict
        ``lr`` and ``loss`` (one per step taken), ``smoothed`` (bias-corrected moving average), ``best_lr`` (at
        the smoothed minimum) and ``suggested_lr`` (``best_lr / 10``, a rate safely below divergence).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> images, net = torch.rand(8, 1, 8, 8), UNet(base=2, depth=1)
    >>> before = [p.clone() for p in net.parameters()]
    >>> result = lr_range_test(net, (images, (images > 0.5).float()), TrainSettings(batch_size=4),
    ...                        start_lr=1e-4, end_lr=1e-1, steps=4, device="cpu")
    >>> [f"{lr:.0e}" for lr in result["lr"]]
    ['1e-04', '1e-03', '1e-02', '1e-01']
    >>> all(torch.equal(a, b) for a, b in zip(before, net.parameters()))   # weights restored
    True
    """
    settings = settings or TrainSettings()
    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr_range_test: need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if steps < 2:
        raise ValueError(f"lr_range_test: steps must be at least 2, got {steps}")
    images, targets = _as_tensor(data[0], "images"), _as_tensor(data[1], "targets")
    if len(images) == 0 or images.shape[0] != targets.shape[0] or images.shape[-2:] != targets.shape[-2:]:
        raise ValueError(f"lr_range_test: images {tuple(images.shape)} and targets {tuple(targets.shape)} differ")
    saved, was_training = copy.deepcopy(model.state_dict()), model.training
    device = place(model.train(), device)
    optimizer, scaler = torch.optim.Adam(model.parameters(), lr=start_lr), grad_scaler(device)
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(int(settings.seed)))
    batch_size, result = settings.batch_size, {"lr": [], "loss": [], "smoothed": []}
    average, best = 0.0, math.inf
    try:
        for step in range(steps):
            lr = start_lr * factor**step
            for group in optimizer.param_groups:
                group["lr"] = lr
            start = (step * batch_size) % len(images)
            index = order[(torch.arange(batch_size) + start) % len(images)][: min(batch_size, len(images))]
            current = training_step(model, images[index], targets[index], optimizer, loss, scaler)
            if not math.isfinite(current):
                break
            average = smoothing * average + (1 - smoothing) * current
            smoothed = average / (1 - smoothing ** (step + 1))
            for key, value in (("lr", lr), ("loss", current), ("smoothed", smoothed)):
                result[key].append(value)
            best = min(best, smoothed)
            if smoothed > diverge_factor * best:
                break
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    result["best_lr"] = result["lr"][int(np.argmin(result["smoothed"]))] if result["lr"] else start_lr
    result["suggested_lr"] = result["best_lr"] / 10
    return result
