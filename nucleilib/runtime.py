"""Where training runs: the device, CPU threads, mixed precision, memory layout, ``torch.compile`` and ``torchrun``
(``DistributedDataParallel``, NCCL on GPUs, gloo on the CPU). The loop only calls these; their measured speeds
are in the README's performance section.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

# Training steps planned before "auto" compiles: compilation costs tens of seconds up front, which shorter
# runs do not earn back (README, performance section).
COMPILE_MIN_STEPS = 1000
COMPILE_ENV = "NUCLEILIB_COMPILE"


def select_device(preference: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``preference`` (e.g. ``"cuda:1"``) if given, else CUDA, then Apple MPS, then CPU.

    Examples
    --------
    >>> select_device("cpu")
    device(type='cpu')
    """
    if preference is not None:
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than float32.

    Examples
    --------
    >>> isinstance(cpu_supports_bf16(), bool)
    True
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_cpus() -> int:
    """CPUs this process may really use (at least 1): the affinity mask, capped by a container's CPU quota.

    Containers (Docker, Binder, CI) often show all the host's cores but allow one or two; more threads than
    that make PyTorch many times slower.

    Examples
    --------
    >>> available_cpus() >= 1
    True
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota_files = [("/sys/fs/cgroup/cpu.max", None),
                   ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")]
    for quota_file, period_file in quota_files:
        try:
            fields = Path(quota_file).read_text().split()
            if period_file is not None:
                fields = [fields[0], Path(period_file).read_text().split()[0]]
            quota, period = fields[0], fields[1]
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
        break
    return max(1, cpus)


def configure_cpu_threads() -> int:
    """Use one thread per usable CPU (:func:`available_cpus`) unless ``OMP_NUM_THREADS`` is set; returns the count.

    Only ever lowers PyTorch's own default (one thread per physical core).

    Examples
    --------
    >>> configure_cpu_threads() >= 1
    True
    """
    threads = min(available_cpus(), torch.get_num_threads())
    if not os.environ.get("OMP_NUM_THREADS") and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def memory_format(device: torch.device) -> torch.memory_format:
    """``channels_last`` where convolutions run faster in it (CPU oneDNN, CUDA); MPS gains nothing from it.

    Examples
    --------
    >>> memory_format(torch.device("cpu")), memory_format(torch.device("mps"))
    (torch.channels_last, torch.contiguous_format)
    """
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision where it is native: float16 on CUDA, bfloat16 on CPUs with bf16; else nothing.

    Examples
    --------
    >>> with autocast(torch.device("mps")):
    ...     pass
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


PRECISIONS = ("fp32", "bf16", "auto")


def inference_precision(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """How prediction computes: ``"fp32"``; ``"bf16"`` (bfloat16 autocast, forced, on any CPU or GPU); ``"auto"``
    (:func:`autocast`'s choice: bfloat16 on CPUs that compute it natively, float16 on CUDA, else float32).

    Examples
    --------
    >>> with inference_precision(torch.device("cpu"), "bf16"):
    ...     torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype
    torch.bfloat16
    >>> inference_precision(torch.device("cpu"), "fp16")
    Traceback (most recent call last):
    ...
    ValueError: precision must be one of ('fp32', 'bf16', 'auto'), got 'fp16'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return autocast(device)
    if precision == "bf16":
        return torch.autocast("cuda" if device.type == "cuda" else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler | None:
    """The gradient scaler float16 autocast needs on CUDA (None elsewhere: bf16 and fp32 need none).

    Examples
    --------
    >>> grad_scaler(torch.device("cpu")) is None
    True
    """
    return torch.amp.GradScaler("cuda") if device.type == "cuda" else None


def place(model: torch.nn.Module, device: str | torch.device | None = None) -> torch.device:
    """Choose the device (:func:`select_device`), set its threads, move ``model`` there in :func:`memory_format`.

    Examples
    --------
    >>> net = torch.nn.Conv2d(2, 2, 3)
    >>> place(net, "cpu"), net.weight.is_contiguous(memory_format=torch.channels_last)
    (device(type='cpu'), True)
    """
    device = select_device(device)
    if device.type == "cpu":
        configure_cpu_threads()
    model.to(device, memory_format=memory_format(device))
    return device


def compile_available() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here: Linux or macOS with a C++ compiler on the PATH.

    Examples
    --------
    >>> isinstance(compile_available(), bool)
    True
    """
    if sys.platform not in ("linux", "darwin"):
        return False
    compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    return any(name and shutil.which(name) for name in compilers)


def should_compile(device: torch.device | str, steps: int, requested: bool | str = "auto", world_size: int = 1) -> bool:
    """Whether training goes through ``torch.compile``, for ``steps`` optimizer steps on ``device``.

    ``requested`` True or False decides. ``"auto"`` compiles on the CPU of one process (``world_size`` 1) with a
    C++ compiler for :data:`COMPILE_MIN_STEPS` steps or more, unless ``NUCLEILIB_COMPILE=0`` or ``1`` says otherwise.

    Examples
    --------
    >>> should_compile("cpu", steps=10), should_compile("cpu", steps=10, requested=True)
    (False, True)
    >>> should_compile("mps", steps=10_000)
    False
    """
    if requested != "auto":
        return bool(requested)
    override = os.environ.get(COMPILE_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    device = torch.device(device)
    return device.type == "cpu" and world_size == 1 and steps >= COMPILE_MIN_STEPS and compile_available()


def compile_model(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` of ``model`` (sharing its weights) for fixed-size batches: others should use ``model``.

    Examples
    --------
    >>> callable(compile_model(torch.nn.Identity()))
    True
    """
    return torch.compile(model, dynamic=False)


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` unless ``torch.distributed`` is initialized.

    Examples
    --------
    >>> world()
    (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def distributed_session() -> Iterator[torch.device | None]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1), leave it at the end.

    NCCL with one GPU per process (``cuda:LOCAL_RANK``) where CUDA is available, else gloo on the CPU
    (``torchrun`` sets ``OMP_NUM_THREADS=1``). Yields this process's device, or None outside ``torchrun``.

    Examples
    --------
    >>> with distributed_session() as device:
    ...     print(device)
    None
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield None
        return
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def distributed(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` under ``torchrun``; the model itself otherwise.

    Examples
    --------
    >>> net = torch.nn.Identity()
    >>> distributed(net, torch.device("cpu")) is net
    True
    """
    if world()[1] == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all processes (unchanged in a single process).

    Examples
    --------
    >>> all_sum([1, 2.5], torch.device("cpu"))
    [1.0, 2.5]
    """
    if world()[1] == 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def share_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (batch-norm statistics), as ``DistributedDataParallel`` uses them.

    Examples
    --------
    >>> share_buffers(torch.nn.BatchNorm2d(2))  # one process: nothing to do
    """
    if world()[1] > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, 0)


def epoch_order(n: int, generator: torch.Generator, epoch: int, seed: int) -> torch.Tensor:
    """This process's training indices for one epoch, in random order.

    One process: a permutation drawn from ``generator``. Several: every process draws the same permutation
    (``seed``, ``epoch``) and takes its share, as ``torch.utils.data.DistributedSampler`` does.

    Examples
    --------
    >>> sorted(epoch_order(4, torch.Generator().manual_seed(0), epoch=0, seed=0).tolist())
    [0, 1, 2, 3]
    """
    rank, world_size = world()
    if world_size == 1:
        return torch.randperm(n, generator=generator)
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)
