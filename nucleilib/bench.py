"""Benchmarks for the ``bench`` command: the machine's matmul peak, training and inference throughput of a naive
fp32 reference against the project's defaults, and the time to reach a validation Dice of 0.9.

All figures come from one run on one machine and are meant to be compared with each other, as ratios; each is the
median of several repeats after a warm-up.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch

from nucleilib.losses import bce_dice_loss
from nucleilib.model import UNet, fold_batchnorm


def median_seconds(work: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``work()`` over ``repeats`` calls, after ``warmup`` untimed calls.

    Parameters
    ----------
    work : callable
        The thing to time.
    repeats, warmup : int
        Timed and untimed calls.

    Returns
    -------
    float
        Seconds.

    Examples
    --------
    >>> median_seconds(lambda: sum(range(1000)), repeats=3) < 1.0
    True
    """
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5) -> float:
    """Best sustained matrix-multiply throughput of this machine for ``dtype``, in GFLOP/s.

    Parameters
    ----------
    dtype : torch.dtype
        ``torch.float32`` or ``torch.bfloat16``.
    size : int
        Square matrix size.
    repeats : int
        Timed repeats (median).

    Returns
    -------
    float
        ``2 * size**3`` floating-point operations per second, in units of 1e9.

    Examples
    --------
    >>> matmul_gflops(size=64, repeats=2) > 0
    True
    """
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    seconds = median_seconds(lambda: torch.mm(a, b), repeats=repeats)
    return 2 * size**3 / seconds / 1e9


def count_flops(work: Callable[[], object]) -> int:
    """Floating-point operations of ``work()`` as counted by ``torch.utils.flop_counter``.

    Examples
    --------
    >>> count_flops(lambda: torch.mm(torch.ones(4, 5), torch.ones(5, 6)))  # 2 * 4 * 5 * 6
    240
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        work()
    return int(counter.get_total_flops())


def _training_step(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    bce_dice_loss(model(images), targets).backward()
    optimizer.step()


def train_step_throughput(
    default: bool, base: int = 8, depth: int = 4, batch: int = 16, size: int = 128, repeats: int = 5
) -> dict[str, float]:
    """Images/s and GFLOP/s of one training step: the naive fp32 reference or the project's defaults.

    Naive: contiguous tensors, fp32, default settings. Default: what ``train.fit`` does (channels_last, and
    bf16 autocast where the CPU supports it).

    Parameters
    ----------
    default : bool
        Measure the project's defaults (True) or the naive reference (False).
    base, depth, batch, size : int
        Model and batch shape.
    repeats : int
        Timed repeats (median).

    Returns
    -------
    dict
        ``images_per_s``, ``gflops`` (achieved) and ``gflop_per_image``.

    Examples
    --------
    >>> sorted(train_step_throughput(False, base=2, depth=1, batch=2, size=16, repeats=1))
    ['gflop_per_image', 'gflops', 'images_per_s']
    """
    from nucleilib.train import _autocast, cpu_supports_bf16

    torch.manual_seed(0)
    model = UNet(base=base, depth=depth)
    images = torch.rand(batch, 1, size, size)
    targets = (torch.rand(batch, 1, size, size) > 0.8).float()
    if default:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    context = _autocast(torch.device("cpu")) if default and cpu_supports_bf16() else None

    def step():
        if context is None:
            _training_step(model, images, targets, optimizer)
        else:
            with _autocast(torch.device("cpu")):
                _training_step(model, images, targets, optimizer)

    flops = count_flops(step)
    seconds = median_seconds(step, repeats=repeats)
    return {"images_per_s": batch / seconds, "gflops": flops / seconds / 1e9, "gflop_per_image": flops / batch / 1e9}


def inference_throughput(
    default: bool, base: int = 8, depth: int = 4, batch: int = 16, size: int = 128, repeats: int = 5
) -> float:
    """Images/s of inference: naive fp32 (``torch.no_grad``, contiguous) or the project's predictor settings
    (batch norm folded, channels_last, ``torch.inference_mode``).

    Examples
    --------
    >>> inference_throughput(True, base=2, depth=1, batch=2, size=16, repeats=1) > 0
    True
    """
    torch.manual_seed(0)
    model = UNet(base=base, depth=depth).eval()
    images = torch.rand(batch, 1, size, size)
    if default:
        model = fold_batchnorm(model).to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                model(images)
    else:

        def run():
            with torch.no_grad():
                model(images)

    return batch / median_seconds(run, repeats=repeats)


def time_to_dice(target: float = 0.9, n_images: int = 400, seed: int = 0, max_epochs: int = 15,
                 max_minutes: float = 10.0) -> float:
    """Wall seconds from scratch until the validation Dice of the default recipe reaches ``target``.

    Makes the synthetic data, trains with ``train.fit`` (the default recipe: Adam 0.001, plateau schedule,
    augmentation, base-8 U-Net) and adds the per-epoch times up to the first epoch whose validation Dice
    reaches ``target``. Returns ``inf`` when no epoch within the budget does.

    Examples
    --------
    >>> time_to_dice(target=0.0, n_images=20, max_epochs=1) < 60
    True
    """
    from nucleilib import data, synth, train

    start = time.perf_counter()
    made = synth.make_dataset(n=n_images, size=128, seed=seed)
    images = data.normalize_batch(made["images"])[:, None].astype(np.float32)
    masks = made["masks"][:, None].astype(np.float32)
    train_idx, val_idx, _ = data.split_indices(n_images, seed=seed)
    preparation = time.perf_counter() - start
    torch.manual_seed(seed)
    history = train.fit(UNet(base=8, depth=4), images[train_idx], masks[train_idx], images[val_idx], masks[val_idx],
                        epochs=max_epochs, seed=seed, progress=False, early_stopping=None, max_minutes=max_minutes)
    elapsed = np.cumsum(history["seconds"]) + preparation
    reached = [t for t, dice in zip(elapsed, history["val_dice"]) if dice >= target]
    return float(reached[0]) if reached else float("inf")


def run_all(quick: bool = False, progress: bool = True) -> dict[str, float]:
    """Every figure of the ``bench`` command, measured in this one run.

    Parameters
    ----------
    quick : bool
        Tiny sizes (for tests): the figures are then not meaningful.
    progress : bool
        Print each step as it starts.

    Returns
    -------
    dict
        JSON-ready figures (see the README's performance table).
    """
    from nucleilib.train import cpu_supports_bf16

    sizes = dict(base=2, depth=1, batch=2, size=32, repeats=1) if quick else {}
    steps: dict[str, Callable[[], object]] = {
        "matmul_fp32_gflops": lambda: matmul_gflops(torch.float32, size=128 if quick else 1024),
        "matmul_bf16_gflops": lambda: matmul_gflops(torch.bfloat16, size=128 if quick else 1024)
        if cpu_supports_bf16() else None,
        "train_naive": lambda: train_step_throughput(False, **sizes),
        "train_default": lambda: train_step_throughput(True, **sizes),
        "infer_naive_images_per_s": lambda: inference_throughput(False, **sizes),
        "infer_images_per_s": lambda: inference_throughput(True, **sizes),
        "infer_1024_s": lambda: _one_large_image(quick),
        "time_to_dice90_s": lambda: time_to_dice(0.0 if quick else 0.9, n_images=20 if quick else 400,
                                                 max_epochs=1 if quick else 15),
    }
    results: dict = {"bf16_supported": cpu_supports_bf16(), "threads": torch.get_num_threads()}
    for name, step in steps.items():
        if progress:
            print(f"bench: {name} ...", flush=True)
        results[name] = step()
    naive, default = results.pop("train_naive"), results.pop("train_default")
    best_matmul = max(v for v in (results["matmul_fp32_gflops"], results["matmul_bf16_gflops"]) if v is not None)
    results.update(
        train_naive_images_per_s=naive["images_per_s"], train_images_per_s=default["images_per_s"],
        train_naive_gflops=naive["gflops"], train_gflops=default["gflops"],
        train_speedup_vs_naive_fp32=default["images_per_s"] / naive["images_per_s"],
        train_fraction_of_matmul_peak=default["gflops"] / best_matmul,
        infer_speedup_vs_naive_fp32=results["infer_images_per_s"] / results["infer_naive_images_per_s"],
    )
    return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in results.items()}


def _one_large_image(quick: bool) -> float:
    """Seconds to segment one 1024 x 1024 image with the shipped predictor settings (untrained weights)."""
    from nucleilib import predict

    model = UNet(base=2 if quick else 8, depth=1 if quick else 4).eval()
    image = np.random.default_rng(0).integers(0, 255, (64, 64) if quick else (1024, 1024)).astype(np.uint8)
    return median_seconds(lambda: predict.probabilities(model, image), repeats=1 if quick else 3)
