"""Benchmarks for the ``bench`` command: the machine's matmul peak, training and inference throughput of a naive
fp32 reference against the project's defaults, and the time to reach a validation Dice of 0.9.

All figures come from one run on one machine and are meant to be compared with each other, as ratios; each is the
median of several repeats after a warm-up.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch

from nucleilib.losses import bce_dice_loss
from nucleilib.model import UNet, probabilities_from_logits


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


def interleaved_median_seconds(works: dict[str, Callable[[], object]], repeats: int = 7,
                               warmup: int = 1) -> dict[str, float]:
    """Median wall time of each of several ``works``, timed in turns (a, b, a, b, ...).

    On a shared, noisy machine the speed drifts over seconds; taking turns exposes every candidate to the
    same drift, so that their ratios stay meaningful.

    Parameters
    ----------
    works : dict
        Name -> callable.
    repeats, warmup : int
        Timed and untimed rounds.

    Returns
    -------
    dict
        Name -> seconds.

    Examples
    --------
    >>> sorted(interleaved_median_seconds({"a": lambda: None, "b": lambda: None}, repeats=2))
    ['a', 'b']
    """
    for _ in range(warmup):
        for work in works.values():
            work()
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


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


def training_step(mode: str, base: int = 8, depth: int = 4, batch: int = 16,
                  size: int = 128) -> tuple[Callable[[], None], dict[str, float]]:
    """One training step (forward, BCE + Dice loss, backward, Adam) as a callable: naive or the project's.

    ``"naive"``: contiguous tensors, fp32, PyTorch's default settings. ``"eager"``: what ``train.fit`` does
    for short runs (channels_last, and bf16 autocast where the CPU supports it). ``"compiled"``: the
    same through ``torch.compile``, as ``train.fit`` does for long CPU runs (``train.should_compile``).

    Parameters
    ----------
    mode : str
        ``"naive"``, ``"eager"`` or ``"compiled"``.
    base, depth, batch, size : int
        Model and batch shape.

    Returns
    -------
    tuple
        ``(step, info)``: ``info`` has ``images`` (per step), ``flops`` (of the model's forward and
        backward, torch's flop counter) and ``first_step_s`` (the first call: for ``"compiled"`` mostly
        compilation, much faster once torch's on-disk cache holds the kernels).

    Examples
    --------
    >>> step, info = training_step("naive", base=2, depth=1, batch=2, size=16)
    >>> step(); info["images"], info["flops"] > 0
    (2, True)
    """
    from nucleilib.train import _autocast, compile_model

    if mode not in ("naive", "eager", "compiled"):
        raise ValueError(f"mode must be 'naive', 'eager' or 'compiled', got {mode!r}")
    torch.manual_seed(0)
    model = UNet(base=base, depth=depth)
    images = torch.rand(batch, 1, size, size)
    targets = (torch.rand(batch, 1, size, size) > 0.8).float()
    flops = count_flops(lambda: bce_dice_loss(model(images), targets).backward())
    if mode != "naive":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    forward = compile_model(model) if mode == "compiled" else model
    cpu = torch.device("cpu")

    def step() -> None:
        with _autocast(cpu) if mode != "naive" else contextlib.nullcontext():
            logits = forward(images)
        optimizer.zero_grad(set_to_none=True)
        bce_dice_loss(logits.float(), targets).backward()
        optimizer.step()

    started = time.perf_counter()
    step()
    return step, {"images": batch, "flops": flops, "first_step_s": time.perf_counter() - started}


def inference_step(default: bool, base: int = 8, depth: int = 4, batch: int = 16,
                   size: int = 128) -> tuple[Callable[[], None], dict[str, float]]:
    """One batch of probabilities as a callable: naive fp32 (``torch.no_grad``, contiguous, the model as
    trained) or the project's predictor, ``predict.predict_batch`` (batch norm folded, channels_last,
    ``torch.inference_mode``; fp32 on every machine, so that counts do not depend on the CPU).

    Returns
    -------
    tuple
        ``(step, info)`` with ``images`` and ``flops`` (of the unfolded model) per call.

    Examples
    --------
    >>> step, info = inference_step(True, base=2, depth=1, batch=2, size=16)
    >>> step(); info["images"]
    2
    """
    from nucleilib.predict import predict_batch

    torch.manual_seed(0)
    model = UNet(base=base, depth=depth).eval()
    images = torch.rand(batch, 1, size, size)
    flops = count_flops(lambda: model(images))

    def naive() -> None:
        with torch.no_grad():
            probabilities_from_logits(model(images)).numpy()

    def default_step() -> None:
        predict_batch(model, images, batch_size=batch)

    return (default_step if default else naive), {"images": batch, "flops": flops}


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


def machine() -> dict[str, object]:
    """What the figures were measured on: CPU model, usable CPUs, threads, bf16 support, versions.

    Examples
    --------
    >>> sorted(machine())
    ['bf16_supported', 'cpu', 'cpus', 'python', 'threads', 'torch']
    """
    from nucleilib.train import available_cpus, cpu_supports_bf16

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": available_cpus(), "threads": torch.get_num_threads(),
            "bf16_supported": cpu_supports_bf16(), "torch": str(torch.__version__), "python": platform.python_version()}


def run_all(quick: bool = False, progress: bool = True) -> dict[str, object]:
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
        JSON-ready figures (see the README's performance table). ``train_images_per_s`` is the step
        ``train.fit`` uses for a long run on this machine: compiled where ``train.should_compile`` says
        so (``train_compiled``), else eager.
    """
    from nucleilib.train import COMPILE_MIN_STEPS, configure_cpu_threads, cpu_supports_bf16, should_compile

    configure_cpu_threads()
    shape = dict(base=2, depth=1, batch=2, size=32) if quick else {}
    repeats = 1 if quick else 9
    compiled = should_compile("cpu", COMPILE_MIN_STEPS)

    def say(name: str) -> None:
        if progress:
            print(f"bench: {name} ...", flush=True)

    results: dict = {"machine": machine()}
    say("matmul peak")
    results["matmul_fp32_gflops"] = matmul_gflops(torch.float32, size=128 if quick else 1024)
    results["matmul_bf16_gflops"] = matmul_gflops(torch.bfloat16, size=128 if quick else 1024) \
        if cpu_supports_bf16() else None
    peak = max(v for v in (results["matmul_fp32_gflops"], results["matmul_bf16_gflops"]) if v is not None)

    say("training steps (naive, eager" + (", compiled: compiling first)" if compiled else ")"))
    modes = ["naive", "eager"] + (["compiled"] if compiled else [])
    steps = {mode: training_step(mode, **shape) for mode in modes}
    seconds = interleaved_median_seconds({mode: step for mode, (step, _) in steps.items()}, repeats=repeats)
    info = steps["naive"][1]
    speed = {mode: info["images"] / seconds[mode] for mode in modes}
    best = "compiled" if compiled else "eager"
    results.update(
        train_gflop_per_image=info["flops"] / info["images"] / 1e9,
        train_naive_images_per_s=speed["naive"], train_naive_gflops=info["flops"] / seconds["naive"] / 1e9,
        train_eager_images_per_s=speed["eager"], train_compiled=compiled,
        train_compile_s=steps["compiled"][1]["first_step_s"] if compiled else None,
        train_images_per_s=speed[best], train_gflops=info["flops"] / seconds[best] / 1e9,
        train_speedup_vs_naive_fp32=speed[best] / speed["naive"],
        train_eager_speedup_vs_naive_fp32=speed["eager"] / speed["naive"],
        train_fraction_of_matmul_peak=info["flops"] / seconds[best] / 1e9 / peak,
    )

    say("inference (naive, default)")
    naive, info = inference_step(False, **shape)
    default, _ = inference_step(True, **shape)
    seconds = interleaved_median_seconds({"naive": naive, "default": default}, repeats=repeats)
    results.update(
        infer_naive_images_per_s=info["images"] / seconds["naive"],
        infer_images_per_s=info["images"] / seconds["default"],
        infer_gflops=info["flops"] / seconds["default"] / 1e9,
        infer_speedup_vs_naive_fp32=seconds["naive"] / seconds["default"],
        infer_fraction_of_matmul_peak=info["flops"] / seconds["default"] / 1e9 / peak,
    )
    say("one 1024 x 1024 image")
    results["infer_1024_s"] = _one_large_image(quick)
    say("time to validation Dice 0.9 from scratch")
    results["time_to_dice90_s"] = time_to_dice(0.0 if quick else 0.9, n_images=20 if quick else 400,
                                               max_epochs=1 if quick else 15)
    return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in results.items()}


def _one_large_image(quick: bool) -> float:
    """Seconds to segment one 1024 x 1024 image with the shipped predictor settings (untrained weights)."""
    from nucleilib import predict

    model = UNet(base=2 if quick else 8, depth=1 if quick else 4).eval()
    image = np.random.default_rng(0).integers(0, 255, (64, 64) if quick else (1024, 1024)).astype(np.uint8)
    return median_seconds(lambda: predict.probabilities(model, image), repeats=1 if quick else 3)
