"""The ``bench`` command: matmul peak, training and inference speed of PyTorch's plain defaults against the
project's, the time to a validation Dice of 0.9, and the whole ``count`` pipeline per megapixel. The figures of one run on one machine are meant to be
compared with each other, as ratios; each is the median of several repeats after a warm-up.
"""

from __future__ import annotations

import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nucleilib import data, synth
from nucleilib.losses import bce_dice_loss
from nucleilib.model import UNet, probabilities_from_logits
from nucleilib.predict import predict_batch, probabilities
from nucleilib.runtime import (COMPILE_MIN_STEPS, available_cpus, compile_model, configure_cpu_threads,
                               cpu_supports_bf16, memory_format, place, should_compile)
from nucleilib.train import TrainSettings, fit, training_step


def median_seconds(works: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each of several ``works``, timed in turns (a, b, a, b, ...) after ``warmup`` rounds.

    On a shared, noisy machine the speed drifts over seconds; taking turns exposes every candidate to the
    same drift, so that their ratios stay meaningful.

    Examples
    --------
    >>> sorted(median_seconds({"a": lambda: None, "b": lambda: None}, repeats=2))
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
    """Matrix-multiply throughput of this machine for ``dtype``: ``2 * size**3`` operations per median second, / 1e9.

    Examples
    --------
    >>> matmul_gflops(size=64, repeats=2) > 0
    True
    """
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    seconds = median_seconds({"mm": lambda: torch.mm(a, b)}, repeats=repeats)["mm"]
    return 2 * size**3 / seconds / 1e9


def count_flops(work: Callable[[], object]) -> int:
    """Floating-point operations of ``work()`` as counted by ``torch.utils.flop_counter``.

    Examples
    --------
    >>> count_flops(lambda: torch.mm(torch.ones(4, 5), torch.ones(5, 6)))  # 2 * 4 * 5 * 6
    240
    """
    with FlopCounterMode(display=False) as counter:
        work()
    return int(counter.get_total_flops())


def training_benchmark(mode: str, base: int = 8, depth: int = 4, batch: int = 16,
                       size: int = 128) -> tuple[Callable[[], None], dict[str, float]]:
    """``train.training_step`` on a fixed random batch as a callable: PyTorch's plain defaults, or the project's.

    ``"naive"``: contiguous, fp32. ``"eager"``: ``train.fit``'s short runs (channels_last, bf16 autocast where the
    CPU has it). ``"compiled"``: its long CPU runs, through ``torch.compile``. Returns ``(step, info)``: ``images``
    per step, ``flops`` (forward and backward) and ``first_step_s`` (for ``"compiled"`` mostly compilation).

    Examples
    --------
    >>> step, info = training_benchmark("naive", base=2, depth=1, batch=2, size=16)
    >>> step(); info["images"], info["flops"] > 0
    (2, True)
    """
    if mode not in ("naive", "eager", "compiled"):
        raise ValueError(f"mode must be 'naive', 'eager' or 'compiled', got {mode!r}")
    torch.manual_seed(0)
    model = UNet(base=base, depth=depth)
    images = torch.rand(batch, 1, size, size)
    targets = (torch.rand(batch, 1, size, size) > 0.8).float()
    flops = count_flops(lambda: bce_dice_loss(model(images), targets).backward())
    if mode != "naive":
        cpu = place(model, "cpu")
        images, targets = (t.contiguous(memory_format=memory_format(cpu)) for t in (images, targets))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    forward = compile_model(model) if mode == "compiled" else model

    def step() -> None:
        training_step(model, images, targets, optimizer, forward=forward, naive=mode == "naive")

    started = time.perf_counter()
    step()
    return step, {"images": batch, "flops": flops, "first_step_s": time.perf_counter() - started}


def inference_step(default: bool, base: int = 8, depth: int = 4, batch: int = 16,
                   size: int = 128) -> tuple[Callable[[], None], dict[str, float]]:
    """One batch of probabilities as a callable, the project's ``predict.predict_batch`` or (``default`` False) naive.

    Naive: ``torch.no_grad``, contiguous, the model as trained. The predictor folds batch norm and uses
    channels_last, ``torch.inference_mode`` and ``count``'s default precision (bfloat16 where the CPU has it). Returns ``(step, info)`` with ``images`` and ``flops`` per call.

    Examples
    --------
    >>> step, info = inference_step(True, base=2, depth=1, batch=2, size=16)
    >>> step(); info["images"]
    2
    """
    torch.manual_seed(0)
    model = UNet(base=base, depth=depth).eval()
    images = torch.rand(batch, 1, size, size)
    flops = count_flops(lambda: model(images))

    def naive() -> None:
        with torch.no_grad():
            probabilities_from_logits(model(images)).numpy()

    def default_step() -> None:
        predict_batch(model, images, batch_size=batch, precision="auto")

    return (default_step if default else naive), {"images": batch, "flops": flops}


def time_to_dice(target: float = 0.9, n_images: int = 400, seed: int = 0, max_epochs: int = 15,
                 max_minutes: float = 10.0) -> float:
    """Wall seconds from scratch until the validation Dice of the default recipe reaches ``target``.

    Makes synthetic data, trains a base-8 U-Net with ``train.fit``'s defaults and adds the epoch times up to the
    first whose validation Dice reaches ``target``; ``inf`` when none within the budget does.

    Examples
    --------
    >>> time_to_dice(target=0.0, n_images=20, max_epochs=1) < 60
    True
    """
    start = time.perf_counter()
    made = synth.make_dataset(n=n_images, size=128, seed=seed)
    images = data.normalize_batch(made["images"])[:, None].astype(np.float32)
    masks = made["masks"][:, None].astype(np.float32)
    train_idx, val_idx, _ = data.split_indices(n_images, seed=seed)
    preparation = time.perf_counter() - start
    torch.manual_seed(seed)
    settings = TrainSettings(epochs=max_epochs, seed=seed, early_stopping=None, max_minutes=max_minutes)
    history = fit(UNet(base=8, depth=4), (images[train_idx], masks[train_idx]), (images[val_idx], masks[val_idx]),
                  settings, progress=False)
    elapsed = np.cumsum(history["seconds"]) + preparation
    reached = [t for t, dice in zip(elapsed, history["val_dice"]) if dice >= target]
    return float(reached[0]) if reached else float("inf")


COUNT_STAGES = ("read", "normalize", "network", "post-processing", "write")


def _stage_seconds(paths: list[Path], model: torch.nn.Module, info: dict, precision: str) -> dict[str, float]:
    """Seconds of each of ``count``'s stages over the images at ``paths``, one stage timed at a time."""
    from nucleilib.count import labels_from_probabilities
    from nucleilib.evaluate import write_outputs
    from nucleilib.io import read_image
    seconds = dict.fromkeys(COUNT_STAGES, 0.0)

    def timed(stage: str, work: Callable[[], object]) -> object:
        started = time.perf_counter()
        result = work()
        seconds[stage] += time.perf_counter() - started
        return result

    levels = {key: float(info["normalization"][key]) for key in ("low", "high")}
    for path in paths:
        image = timed("read", lambda: read_image(path))
        pixels = timed("normalize", lambda: data.normalize_image(image, **levels).astype(np.float32))
        prob = timed("network", lambda: probabilities(model, pixels, normalize=False, precision=precision))
        labels = timed("post-processing", lambda: labels_from_probabilities(prob))
        timed("write", lambda: write_outputs(Path(f"{path}_labels.tif"), image, labels))
    return seconds


def count_speed(n_images: int = 8, shape: tuple[int, int] = (520, 696), precision: str = "auto") -> dict[str, float]:
    """``count``'s speed with the shipped model on synthetic fields of BBBC039's size, in seconds per megapixel.

    ``count_s_per_megapixel``: the whole command (:func:`nucleilib.evaluate.count_files`) on ``n_images`` TIFFs in
    a temporary folder. ``count_share_<stage>``: each stage's share of the same work timed stage by stage (read,
    normalize, network, post-processing = threshold, split and label, write = labels TIFF and overlay PNG).

    Examples
    --------
    >>> figures = count_speed(n_images=1, shape=(48, 64))
    >>> round(sum(value for key, value in figures.items() if key.startswith("count_share_")), 6)
    1.0
    """
    import tempfile
    import tifffile
    from nucleilib.checkpoint import load_model
    from nucleilib.evaluate import count_files
    made = synth.make_dataset(n=n_images, size=max(shape), seed=5)["images"][:, : shape[0], : shape[1]]
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"field_{i}.tif" for i in range(n_images)]
        for path, image in zip(paths, made):
            tifffile.imwrite(path, image)
        started = time.perf_counter()
        count_files(paths, Path(folder) / "out", progress=False, precision=precision)
        whole = time.perf_counter() - started
        stages = _stage_seconds(paths, *load_model(), precision)
    figures = {"count_s_per_megapixel": whole / (n_images * shape[0] * shape[1] / 1e6)}
    figures.update({f"count_share_{stage.replace('-', '')}": value / sum(stages.values())
                    for stage, value in stages.items()})
    return figures


def machine() -> dict[str, object]:
    """What the figures were measured on: CPU model, usable CPUs, threads, bf16 support, versions.

    Examples
    --------
    >>> sorted(machine())
    ['bf16_supported', 'cpu', 'cpus', 'python', 'threads', 'torch']
    """
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:  # not Linux
        names = []
    cpu = names[0].strip() if names else platform.processor() or platform.machine()
    return {"cpu": cpu, "cpus": available_cpus(), "threads": torch.get_num_threads(),
            "bf16_supported": cpu_supports_bf16(), "torch": str(torch.__version__), "python": platform.python_version()}


def run_all(quick: bool = False, progress: bool = True) -> dict[str, object]:
    """Every figure of the ``bench`` command, measured in this one run (``tests/test_cli.py`` runs it: it compiles).

    JSON-ready figures (the README's performance table). ``train_images_per_s`` is the step ``train.fit`` takes
    in a long run on this machine: compiled where ``runtime.should_compile`` says so (``train_compiled``), else
    eager. ``quick``: tiny sizes (for tests), the figures then mean nothing; ``progress``: print each step.

    Examples
    --------
    >>> sorted(run_all(quick=True, progress=False))[:2]  # doctest: +SKIP
    ['infer_1024_s', 'infer_fraction_of_matmul_peak']
    """
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
    steps = {mode: training_benchmark(mode, **shape) for mode in modes}
    seconds = median_seconds({mode: step for mode, (step, _) in steps.items()}, repeats=repeats)
    info = steps["naive"][1]
    speed = {mode: info["images"] / seconds[mode] for mode in modes}
    best = "compiled" if compiled else "eager"
    results.update(train_gflop_per_image=info["flops"] / info["images"] / 1e9,
                   train_naive_images_per_s=speed["naive"], train_naive_gflops=info["flops"] / seconds["naive"] / 1e9,
                   train_eager_images_per_s=speed["eager"], train_compiled=compiled,
                   train_compile_s=steps["compiled"][1]["first_step_s"] if compiled else None,
                   train_images_per_s=speed[best], train_gflops=info["flops"] / seconds[best] / 1e9,
                   train_speedup_vs_naive_fp32=speed[best] / speed["naive"],
                   train_eager_speedup_vs_naive_fp32=speed["eager"] / speed["naive"],
                   train_fraction_of_matmul_peak=info["flops"] / seconds[best] / 1e9 / peak)

    say("inference (naive, default)")
    naive, info = inference_step(False, **shape)
    default, _ = inference_step(True, **shape)
    seconds = median_seconds({"naive": naive, "default": default}, repeats=repeats)
    results.update(infer_naive_images_per_s=info["images"] / seconds["naive"],
                   infer_images_per_s=info["images"] / seconds["default"],
                   infer_gflops=info["flops"] / seconds["default"] / 1e9,
                   infer_speedup_vs_naive_fp32=seconds["naive"] / seconds["default"],
                   infer_fraction_of_matmul_peak=info["flops"] / seconds["default"] / 1e9 / peak)
    say("one 1024 x 1024 image")
    results["infer_1024_s"] = _one_large_image(quick)
    say("count: the whole pipeline per megapixel, and its stages")
    results.update(count_speed(n_images=1, shape=(48, 64)) if quick else count_speed())
    say("time to validation Dice 0.9 from scratch")
    results["time_to_dice90_s"] = time_to_dice(0.0 if quick else 0.9, n_images=20 if quick else 400,
                                               max_epochs=1 if quick else 15)
    return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in results.items()}


def _one_large_image(quick: bool) -> float:
    """Seconds to segment one 1024 x 1024 image with the shipped predictor settings (untrained weights)."""
    model = UNet(base=2 if quick else 8, depth=1 if quick else 4).eval()
    image = np.random.default_rng(0).integers(0, 255, (64, 64) if quick else (1024, 1024)).astype(np.uint8)
    return median_seconds({"one": lambda: probabilities(model, image)}, repeats=1 if quick else 3)["one"]
