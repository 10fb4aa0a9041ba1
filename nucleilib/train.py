"""Training the U-Net: the loop, checkpoints, evaluation and the ``train`` command.

- :func:`fit` trains with Adam, halves the learning rate when the validation loss stops improving
  (``ReduceLROnPlateau``), stops early, keeps a time budget, and writes the best and the last
  checkpoint atomically after every epoch (``resume=`` continues from the last one). Ctrl-C stops
  it cleanly: the best checkpoint on disk stays intact and the history so far is returned.
- :func:`save_checkpoint` / :func:`load_model`: a checkpoint holds only tensors and plain data
  (it loads with ``torch.load(..., weights_only=True)``): the weights, the model configuration,
  the image normalization, the output heads, the training history and its provenance.
- :func:`train_from_npz`: what ``python -m nucleilib train`` runs.

CPU defaults (measured on a 2-core AVX2 CPU): the ``channels_last`` memory format (about 5-40 %
faster for these convolutions), one thread per available core, float32 (bfloat16 autocast only
when the CPU has native bf16), and ``torch.compile`` for runs long enough to repay its compilation
(:func:`should_compile`; ~1.3-1.5x per step, mostly by fusing batch norm). On a GPU: CUDA mixed precision.

Several processes: ``torchrun --nproc_per_node N -m nucleilib train ...`` trains with
``DistributedDataParallel`` (NCCL on GPUs, gloo on the CPU); see :func:`distributed_session` and :func:`fit`.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from nucleilib.data import atomic_path, augment_batch, load_npz, split_indices
from nucleilib.losses import bce_dice_loss, targets_from_labels
from nucleilib.model import UNet, model_device, probabilities_from_logits

CHECKPOINT_FORMAT = "nucleilib-unet"
CHECKPOINT_VERSION = 1
DEFAULT_NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}
MODEL_ENV = "NUCLEILIB_MODEL"
HISTORY_KEYS = ("train_loss", "val_loss", "val_dice", "lr", "seconds")

# Settings of `train_from_npz` per preset; explicit arguments override them. Measured on a 2-core
# AVX2 CPU (fp32, channels_last, batch 16, 128x128): base 8 trains at ~53 images/s, base 16 at ~17;
# within the same 5 minutes base 8 reached a higher Dice on fresh synthetic data (0.97 vs 0.95),
# so the CPU presets use base 8. "full" is the source project's run (base 16, up to 300 epochs
# with plateau scheduling and early stopping), meant for long runs or a GPU.
# "fast" reaches a held-out Dice >= 0.85 on the synthetic set within 5 minutes on a 2-core CPU.
TRAIN_PRESETS: dict[str, dict] = {
    "fast": {"epochs": 15, "max_minutes": 5.0, "max_images": 600, "base": 8, "depth": 4, "batch_size": 16},
    "default": {"epochs": 40, "max_minutes": 30.0, "max_images": None, "base": 8, "depth": 4, "batch_size": 16},
    "full": {"epochs": 300, "max_minutes": None, "max_images": None, "base": 16, "depth": 4, "batch_size": 16},
}


def default_model_path() -> Path:
    """Path of the shipped model: ``$NUCLEILIB_MODEL`` if set, else ``models/nuclei_unet.pt`` of the project.

    Returns
    -------
    pathlib.Path
        The checkpoint path (it may not exist yet).

    Examples
    --------
    >>> default_model_path().name in ("nuclei_unet.pt", Path(os.environ.get(MODEL_ENV, "x")).name)
    True
    """
    override = os.environ.get(MODEL_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent.parent / "models" / "nuclei_unet.pt"


def select_device(preference: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``preference`` if given, else CUDA, then Apple MPS, then CPU.

    Parameters
    ----------
    preference : str or torch.device, optional
        For example ``"cpu"`` or ``"cuda:1"``.

    Returns
    -------
    torch.device

    Examples
    --------
    >>> select_device("cpu")
    device(type='cpu')
    """
    if preference is not None:
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so bf16 autocast pays off.

    Without native support bf16 is emulated and slower than float32.

    Returns
    -------
    bool

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
    """CPUs this process may really use: the affinity mask, capped by a container's CPU quota.

    Containers (Docker, Binder, CI runners) often show all the host's cores but allow only one or
    two; running more threads than that makes PyTorch many times slower, not faster.

    Returns
    -------
    int
        At least 1.

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


def configure_cpu_threads(threads: int | None = None) -> int:
    """Use one intra-op thread per usable CPU (:func:`available_cpus`), unless ``OMP_NUM_THREADS`` is set.

    Only ever lowers PyTorch's own default (one thread per physical core).

    Parameters
    ----------
    threads : int, optional
        Explicit thread count.

    Returns
    -------
    int
        The thread count now in effect.

    Examples
    --------
    >>> configure_cpu_threads() >= 1
    True
    """
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        threads = min(available_cpus(), torch.get_num_threads())
    if threads != torch.get_num_threads():
        torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def _as_tensor(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """float32 ``(N, C, H, W)`` CPU tensor, or ValueError naming the argument."""
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32) if not torch.is_tensor(array) else array)
    if tensor.ndim != 4:
        raise ValueError(f"{name}: expected an (N, C, H, W) array, got shape {tuple(tensor.shape)}")
    return tensor.detach().to("cpu", torch.float32)



def _memory_format(device: torch.device) -> torch.memory_format:
    # channels_last is faster for convolutions on CPU (oneDNN) and CUDA; MPS gains nothing from it.
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision where it is native: float16 on CUDA, bfloat16 on CPUs with bf16; else nothing."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# Training steps planned before `fit` compiles the model by itself (compile="auto"). Measured on a 2-core
# AVX2 CPU (base 8, batch 16): torch.compile makes a training step 1.3-1.5x faster (it fuses batch norm,
# which costs a third of an eager step at 8 channels in channels_last) and an epoch of `--preset fast`
# 1.23x faster (7.5 s instead of 9.2 s), but the first epoch pays ~22 s of compilation (~3 s from torch's
# on-disk cache): the fast preset's 450 steps broke even (151 s compiled, 147 s eager), so only runs of
# 1000 steps and more (over ~5 minutes) compile by default.
COMPILE_MIN_STEPS = 1000
COMPILE_ENV = "NUCLEILIB_COMPILE"


def compile_available() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here: Linux or macOS with a C++ compiler on the PATH.

    Returns
    -------
    bool

    Examples
    --------
    >>> isinstance(compile_available(), bool)
    True
    """
    import shutil
    import sys

    if sys.platform not in ("linux", "darwin"):
        return False
    compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    return any(name and shutil.which(name) for name in compilers)


def should_compile(device: torch.device | str, steps: int, requested: bool | str = "auto",
                   world_size: int = 1) -> bool:
    """Decide whether :func:`fit` trains through ``torch.compile``.

    ``requested`` True or False decides; ``"auto"`` compiles on the CPU of a single process when a C++
    compiler is there and at least :data:`COMPILE_MIN_STEPS` steps are planned (compilation takes
    tens of seconds the first time). The environment variable ``NUCLEILIB_COMPILE=0`` or ``1``
    overrides ``"auto"``.

    Parameters
    ----------
    device : torch.device or str
        The training device.
    steps : int
        Optimizer steps planned.
    requested : bool or "auto"
        The caller's choice.
    world_size : int
        Processes training together (``torchrun``); ``"auto"`` does not compile with several.

    Returns
    -------
    bool

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
    """``torch.compile`` of ``model`` for fixed-size training batches; the model itself stays eager.

    The compiled function shares the model's parameters and buffers. Shapes are static: a batch of
    another size (the last, partial one of an epoch) should go through ``model`` directly instead of
    triggering a second compilation.

    Examples
    --------
    >>> callable(compile_model(torch.nn.Identity()))
    True
    """
    return torch.compile(model, dynamic=False)


# --- several processes (torchrun) ----------------------------------------------------------------


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` unless ``torch.distributed`` is initialized.

    Examples
    --------
    >>> world()
    (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def distributed_session() -> Iterator[torch.device | None]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1), leave it at the end.

    Uses NCCL with one GPU per process (``cuda:LOCAL_RANK``) where CUDA is available, else gloo on the
    CPU, where each process gets its share of the cores (``torchrun`` sets ``OMP_NUM_THREADS=1``).
    Yields the device this process should train on, or None outside ``torchrun``.

    Examples
    --------
    >>> with distributed_session() as device:
    ...     print(device)
    None
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield None
        return
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def _all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all processes (unchanged in a single process)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _from_rank0(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process, so that all take the same decision (time budget)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.broadcast(tensor, 0)
    return bool(tensor.item())


def _overlap(predicted: torch.Tensor, target: torch.Tensor) -> tuple[float, float, float]:
    """(intersection, sum of predicted, sum of target) of two {0,1} tensors."""
    return float((predicted * target).sum()), float(predicted.sum()), float(target.sum())


def _dice_iou(intersection: float, predicted: float, target: float) -> tuple[float, float]:
    """Dice and IoU from overlap sums; both 1.0 when prediction and target are empty."""
    if predicted + target == 0:
        return 1.0, 1.0
    union = predicted + target - intersection
    return 2 * intersection / (predicted + target), intersection / union


def evaluate_pixels(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    batch_size: int = 32,
) -> dict[str, float]:
    """Pixel-level Dice and IoU of channel 0 (the nucleus mask) over a whole set of images.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    images : numpy.ndarray or torch.Tensor
        ``(N, 1, H, W)`` normalized images.
    masks : numpy.ndarray or torch.Tensor
        ``(N, 1, H, W)`` or ``(N, H, W)`` true masks in {0, 1} (more channels: the first is used).
    threshold : float
        Probability above which a pixel counts as nucleus.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    dict
        ``{"dice": float, "iou": float}``.

    Raises
    ------
    ValueError
        When images and masks disagree in N, H or W.

    Examples
    --------
    >>> net = UNet(base=2, depth=1)
    >>> with torch.no_grad():
    ...     _ = net.head.bias.fill_(-100.0)  # predicts background everywhere
    >>> evaluate_pixels(net, np.zeros((2, 1, 8, 8)), np.zeros((2, 8, 8)))
    {'dice': 1.0, 'iou': 1.0}
    """
    masks = torch.as_tensor(np.asarray(masks, dtype=np.float32) if not torch.is_tensor(masks) else masks).float()
    if masks.ndim == 3:
        masks = masks[:, None]
    from nucleilib.predict import predict_batch  # the one inference path (imported here: predict imports train)

    probabilities = torch.from_numpy(predict_batch(model, images, batch_size=batch_size))
    if masks.ndim != 4 or masks.shape[0] != probabilities.shape[0] or masks.shape[-2:] != probabilities.shape[-2:]:
        raise ValueError(f"evaluate_pixels: masks {tuple(masks.shape)} do not match images {tuple(probabilities.shape)}")
    predicted = (probabilities[:, :1] > threshold).float()
    dice, iou = _dice_iou(*_overlap(predicted, (masks[:, :1] > 0.5).float()))
    return {"dice": dice, "iou": iou}


# --- checkpoints ------------------------------------------------------------------------------


def _atomic_torch_save(payload: dict, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path`` (temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the weights, contiguous (channels_last tensors are stored in the standard layout)."""
    return {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    history: dict | None = None,
    provenance: dict | None = None,
    normalization: dict | None = None,
    heads: Sequence[str] | None = None,
    training_state: dict | None = None,
) -> Path:
    """Write a checkpoint atomically: weights, configuration and plain-data metadata only.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination ``.pt`` file (folders are created).
    model : UNet
        The network; its ``config`` is stored so :func:`load_model` can rebuild it.
    history : dict, optional
        Per-epoch training history (lists of numbers).
    provenance : dict, optional
        How the model was made: command line, seed, data hashes, metrics, date ...
    normalization : dict, optional
        How images must be normalized before the model sees them; default percentile 1-99.8.
    heads : sequence of str, optional
        Names of the output channels; default ``("mask",)`` or ``("mask", "interior")`` by channel count.
    training_state : dict, optional
        Optimizer, scheduler and random state for resuming (tensors and plain data).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        When history or provenance hold something other than plain data.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = save_checkpoint(Path(folder) / "m.pt", UNet(base=2, depth=1))
    >>> sorted(torch.load(path, weights_only=True))[:4]
    ['config', 'format', 'format_version', 'heads']
    """
    config = dict(model.config)
    if heads is None:
        heads = ("mask", "interior")[: config["out_channels"]]
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "state_dict": _plain_state_dict(model),
        "config": config,
        "normalization": _plain(dict(normalization or DEFAULT_NORMALIZATION), "normalization"),
        "heads": [str(head) for head in heads],
        "history": _plain(history or {}, "history"),
        "provenance": _plain(provenance or {}, "provenance"),
    }
    if training_state is not None:
        payload["training_state"] = training_state
    _atomic_torch_save(payload, path)
    return Path(path)


def _one_line(error: BaseException) -> str:
    """A short one-line description of an exception (torch's messages span many lines)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    detail = f"it holds a {unsupported.group(1)} object" if unsupported else (text.strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {detail[:160]}".strip().rstrip(":")


def _plain(value, where: str = "value"):
    """``value`` as plain data (dict/list/str/int/float/bool/None/tensor) that loads with ``weights_only``."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, Path)):  # str subclasses such as torch.__version__
        return str(value)
    if isinstance(value, dict):
        return {str(key): _plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise ValueError(f"{where}: {type(value).__name__} cannot be stored in a checkpoint (plain data only)")


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.pt`` file.

    Returns
    -------
    dict
        ``format``, ``state_dict``, ``config``, ``normalization``, ``heads``, ``history``,
        ``provenance`` and, for a "last" checkpoint, ``training_state``.

    Raises
    ------
    ValueError
        One line naming the file, when it is missing, unreadable or not a nucleilib checkpoint.

    Examples
    --------
    >>> load_checkpoint("no/such/model.pt")
    Traceback (most recent call last):
    ...
    ValueError: no/such/model.pt: no such checkpoint file
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for text, random bytes or unsafe pickles
        raise ValueError(f"{path}: not a nucleilib checkpoint (cannot be loaded: {_one_line(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a nucleilib checkpoint (no '{CHECKPOINT_FORMAT}' format marker)")
    missing = [key for key in ("state_dict", "config", "normalization", "heads") if key not in payload]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(missing)}")
    config = payload["config"]
    if not isinstance(config, dict) or set(config) != {"in_channels", "out_channels", "base", "depth"}:
        raise ValueError(f"{path}: checkpoint config must have in_channels, out_channels, base, depth; got {config!r}")
    if len(payload["heads"]) != config["out_channels"]:
        raise ValueError(f"{path}: checkpoint has {len(payload['heads'])} heads but {config['out_channels']} outputs")
    payload.setdefault("history", {})
    payload.setdefault("provenance", {})
    return payload


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Rebuild the U-Net from a checkpoint, in eval mode.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        Checkpoint; default :func:`default_model_path` (``$NUCLEILIB_MODEL`` or ``models/nuclei_unet.pt``).
    device : str or torch.device
        Where to put the model.

    Returns
    -------
    (UNet, dict)
        The model and the checkpoint's metadata (``config``, ``normalization``, ``heads``,
        ``history``, ``provenance``, ``path``).

    Raises
    ------
    ValueError
        One line naming the file when it is missing (with how to train one) or not a valid checkpoint.

    Examples
    --------
    >>> import tempfile
    >>> path = save_checkpoint(Path(tempfile.mkdtemp()) / "m.pt", UNet(out_channels=2, base=2, depth=1))
    >>> model, info = load_model(path)
    >>> model.training, info["heads"]
    (False, ['mask', 'interior'])
    """
    if path is None:
        path = default_model_path()
        if not Path(path).is_file():
            raise ValueError(
                f"{path}: no trained model here; train one with `python -m nucleilib make-data --out data/nuclei.npz` "
                f"and `python -m nucleilib train --data data/nuclei.npz --out {path}`, or set {MODEL_ENV}"
            )
    payload = load_checkpoint(path)
    model = UNet(**payload["config"])
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{path}: weights do not fit the stored config ({_one_line(error)})") from None
    model.to(device).eval()
    info = {key: value for key, value in payload.items() if key not in ("state_dict", "training_state")}
    info["path"] = str(path)
    return model, info


def last_checkpoint_path(out: str | Path) -> Path:
    """Where :func:`fit` keeps the resumable "last" checkpoint beside the best one at ``out``.

    Parameters
    ----------
    out : str or pathlib.Path
        The best-checkpoint path.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> last_checkpoint_path("models/nuclei_unet.pt").as_posix()
    'models/nuclei_unet.last.pt'
    """
    out = Path(out)
    return out.with_name(f"{out.stem}.last{out.suffix or '.pt'}")


# --- training ---------------------------------------------------------------------------------


def _epoch_order(n: int, generator: torch.Generator, epoch: int, seed: int) -> torch.Tensor:
    """This process's training indices for one epoch, in random order.

    One process: a permutation drawn from ``generator``. Several (``torchrun``): every process draws the
    same seeded permutation and takes its share, as ``torch.utils.data.DistributedSampler`` does (padded
    by repetition so that all get the same number of batches).
    """
    rank, world_size = world()
    if world_size == 1:
        return torch.randperm(n, generator=generator)
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def _run_epoch(model, net, order, images, targets, loss, optimizer, scaler, generator, batch_size, augment, device,
               bar):
    """One pass over ``order``; returns the mean training loss (over all processes).

    ``net`` computes the logits: the model itself, its compiled form (for full batches only: static
    shapes) or its ``DistributedDataParallel`` wrapper.
    """
    model.train()
    augment_fn = augment_batch if augment else None
    distributed = world()[1] > 1
    total, seen = 0.0, 0
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        x, y = images[index], targets[index]
        if augment_fn is not None:
            x, y = augment_fn(x, y, generator)
        memory_format = _memory_format(device)
        x = x.to(device).contiguous(memory_format=memory_format)
        y = y.to(device).contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        forward = net if len(index) == batch_size or distributed else model
        with _autocast(device):
            logits = forward(x)
        value = loss(logits.float(), y)
        if scaler is not None:
            scaler.scale(value).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            value.backward()
            optimizer.step()
        total += float(value.detach()) * len(index)
        seen += len(index)
        bar.update(1)
    total, seen = _all_sum([total, seen], device)
    return total / max(seen, 1)


def _validate(model, images, targets, loss, batch_size, device, threshold=0.5):
    """Mean validation loss and pixel Dice of channel 0 at ``threshold`` (each process takes a share)."""
    rank, world_size = world()
    if world_size > 1:
        import torch.distributed as dist

        for buffer in model.buffers():  # batch-norm statistics: rank 0's, as DistributedDataParallel uses
            dist.broadcast(buffer.data, 0)
    images, targets = images[rank::world_size], targets[rank::world_size]
    model.eval()
    total, counts = 0.0, np.zeros(3)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            memory_format = _memory_format(device)
            x = images[start : start + batch_size].to(device).contiguous(memory_format=memory_format)
            y = targets[start : start + batch_size].to(device)
            with _autocast(device):
                logits = model(x)
            logits = logits.float()
            total += float(loss(logits, y)) * len(x)
            predicted = (probabilities_from_logits(logits[:, :1]) > threshold).float()
            counts += _overlap(predicted, y[:, :1])
    total, n, *counts = _all_sum([total, len(images), *counts], device)
    return total / max(n, 1), _dice_iou(*counts)[0]


def fit(
    model: UNet,
    train_images: np.ndarray | torch.Tensor,
    train_targets: np.ndarray | torch.Tensor,
    val_images: np.ndarray | torch.Tensor,
    val_targets: np.ndarray | torch.Tensor,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 16,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = bce_dice_loss,
    seed: int = 0,
    augment: bool = True,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    max_minutes: float | None = None,
    early_stopping: int | None = 8,
    plateau_patience: int = 3,
    plateau_factor: float = 0.5,
    progress: bool = True,
    device: str | torch.device | None = None,
    checkpoint_info: dict | None = None,
    compile: bool | str = "auto",
) -> dict:
    """Train ``model`` in place and return its per-epoch history.

    Adam at ``lr``; the learning rate is multiplied by ``plateau_factor`` when the validation loss
    has not improved for ``plateau_patience`` epochs; training stops after ``early_stopping``
    epochs without improvement, when the next epoch would overrun ``max_minutes``, or on Ctrl-C.
    At the end the model holds the weights of its best epoch (lowest validation loss).

    Started by ``torchrun`` (inside :func:`distributed_session`), every process trains a
    ``DistributedDataParallel`` copy on its share of each epoch with ``batch_size // world_size``
    images per step, so the images per optimizer step, and with them the learning rate, stay those of
    one process; only rank 0 writes checkpoints and shows progress.

    Parameters
    ----------
    model : UNet
        The network (moved to ``device``).
    train_images, val_images : numpy.ndarray or torch.Tensor
        ``(N, 1, H, W)`` float images in [0, 1].
    train_targets, val_targets : numpy.ndarray or torch.Tensor
        ``(N, out_channels, H, W)`` targets; channel 0 is the nucleus mask.
    epochs : int
        Total epochs (counting those of a resumed run).
    lr : float
        Initial learning rate.
    batch_size : int
        Images per optimizer step.
    loss : callable
        ``loss(logits, targets) -> scalar``; default BCE + Dice.
    seed : int
        Seeds the shuffling and the augmentation (the model's initial weights are the caller's).
    augment : bool
        Random flips/rotations (and intensity changes, with ``nucleilib.data.augment_batch``).
    out : str or pathlib.Path, optional
        Best checkpoint path, written atomically whenever validation improves; the resumable
        last checkpoint goes to :func:`last_checkpoint_path` every epoch.
    resume : str or pathlib.Path, optional
        A last checkpoint to continue from (weights, optimizer, scheduler, history, random state).
    max_minutes : float, optional
        Time budget for this call; no epoch is started that would (by the last epoch's time) overrun it.
    early_stopping : int or None
        Epochs without validation improvement before stopping; None disables it.
    plateau_patience, plateau_factor : int, float
        ``ReduceLROnPlateau`` settings.
    progress : bool
        Show tqdm progress bars.
    device : str or torch.device, optional
        Default :func:`select_device`.
    checkpoint_info : dict, optional
        ``provenance``, ``normalization``, ``heads`` to store in the checkpoints.
    compile : bool or "auto"
        Train through ``torch.compile`` (see :func:`should_compile`; "auto" compiles long CPU runs).

    Returns
    -------
    dict
        Lists per epoch: ``train_loss``, ``val_loss``, ``val_dice``, ``lr``, ``seconds``; plus
        ``stop_reason`` (str): ``"epochs"``, ``"early stopping"``, ``"time budget"`` or ``"interrupted"``,
        and ``compiled`` (bool).

    Raises
    ------
    ValueError
        For mismatched array shapes, or a ``resume`` file that is not a resumable checkpoint.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> images = torch.rand(4, 1, 8, 8)
    >>> history = fit(UNet(base=2, depth=1), images, (images > 0.5).float(), images, (images > 0.5).float(),
    ...               epochs=2, batch_size=2, progress=False, device="cpu")
    >>> len(history["val_dice"]), history["stop_reason"]
    (2, 'epochs')
    """
    from tqdm.auto import tqdm

    train_images, train_targets = _as_tensor(train_images, "train_images"), _as_tensor(train_targets, "train_targets")
    val_images, val_targets = _as_tensor(val_images, "val_images"), _as_tensor(val_targets, "val_targets")
    for images, targets, name in ((train_images, train_targets, "train"), (val_images, val_targets, "val")):
        if len(images) == 0:
            raise ValueError(f"fit: no {name} images")
        if images.shape[0] != targets.shape[0] or images.shape[-2:] != targets.shape[-2:]:
            raise ValueError(f"fit: {name} images {tuple(images.shape)} and targets {tuple(targets.shape)} differ")
        if targets.shape[1] != model.out_channels:
            raise ValueError(f"fit: {name} targets have {targets.shape[1]} channels, model outputs {model.out_channels}")

    rank, world_size = world()
    if batch_size < world_size:
        raise ValueError(f"fit: batch_size {batch_size} is smaller than the {world_size} processes")
    batch_size //= world_size  # per process
    device = select_device(device)
    if device.type == "cpu":
        configure_cpu_threads()
    model.to(device, memory_format=_memory_format(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=plateau_factor, patience=plateau_patience
    )
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    generator = torch.Generator().manual_seed(int(seed) + 7919 * rank)  # augmentation differs per process
    history: dict = {key: [] for key in HISTORY_KEYS}
    best_loss, stale_epochs = math.inf, 0
    info = dict(checkpoint_info or {})

    if resume is not None:
        payload = load_checkpoint(resume)
        state = payload.get("training_state")
        if state is None:
            raise ValueError(f"{resume}: not a resumable checkpoint (no training_state; use the .last.pt file)")
        if payload["config"] != model.config:
            raise ValueError(f"{resume}: checkpoint config {payload['config']} differs from the model {model.config}")
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if rank == 0:
            generator.set_state(state["generator"])
        best_loss, stale_epochs = float(state["best_loss"]), int(state["stale_epochs"])
        history = {key: list(payload["history"].get(key, [])) for key in HISTORY_KEYS}
    best_weights = copy.deepcopy(model.state_dict())

    def write_checkpoints(improved: bool) -> None:
        if out is None or rank != 0:
            return
        common = {k: info[k] for k in ("provenance", "normalization", "heads") if k in info}
        if improved:
            save_checkpoint(out, model, history=history, **common)
        training_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "best_loss": best_loss,
            "stale_epochs": stale_epochs,
        }
        save_checkpoint(last_checkpoint_path(out), model, history=history, training_state=training_state, **common)

    started = time.perf_counter()
    stop_reason = "epochs"
    steps_per_epoch = math.ceil(math.ceil(len(train_images) / world_size) / batch_size)
    first_epoch = len(history["train_loss"])
    compiled = should_compile(device, (epochs - first_epoch) * steps_per_epoch, compile, world_size)
    net = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compiled:
        net = compile_model(net)
    bar = tqdm(total=(epochs - first_epoch) * steps_per_epoch, disable=not progress or rank != 0, desc="training",
               unit="batch")
    try:
        for epoch in range(first_epoch, epochs):
            elapsed = time.perf_counter() - started
            last_seconds = history["seconds"][-1] if history["seconds"] else 0.0
            over_budget = max_minutes is not None and epoch > first_epoch and elapsed + last_seconds > 60 * max_minutes
            if _from_rank0(over_budget, device):
                stop_reason = "time budget"
                break
            epoch_started = time.perf_counter()
            current_lr = optimizer.param_groups[0]["lr"]
            order = _epoch_order(len(train_images), generator, epoch, seed)
            train_loss = _run_epoch(model, net, order, train_images, train_targets, loss, optimizer, scaler, generator,
                                    batch_size, augment, device, bar)
            val_loss, val_dice = _validate(model, val_images, val_targets, loss, batch_size, device)
            scheduler.step(val_loss)
            for key, value in zip(HISTORY_KEYS, (train_loss, val_loss, val_dice, current_lr)):
                history[key].append(float(value))
            history["seconds"].append(time.perf_counter() - epoch_started)
            improved = val_loss < best_loss
            if improved:
                best_loss, stale_epochs = val_loss, 0
                best_weights = copy.deepcopy(model.state_dict())
            else:
                stale_epochs += 1
            write_checkpoints(improved)
            bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.3f}", val_loss=f"{val_loss:.3f}", dice=f"{val_dice:.3f}")
            if early_stopping is not None and stale_epochs >= early_stopping:
                stop_reason = "early stopping"
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted"  # the partial epoch is dropped; checkpoints on disk are whole
    finally:
        bar.close()
    model.load_state_dict(best_weights)
    model.eval()
    history["stop_reason"] = stop_reason
    history["compiled"] = compiled
    return history


# --- the train command ------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file (recorded in provenance to identify the training data).

    Parameters
    ----------
    path : str or pathlib.Path
        Any file.

    Returns
    -------
    str
        64 hex characters.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as handle:
    ...     _ = handle.write(b"abc")
    >>> file_sha256(handle.name)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_training_data(paths: Sequence[Path], heads: Sequence[str] | None):
    """Concatenate images, masks and (when every file has them) labels; describe each file."""

    images, masks, labels, described = [], [], [], []
    for path in paths:
        loaded = load_npz(path)
        if images and loaded[0].shape[-2:] != images[0].shape[-2:]:
            raise ValueError(
                f"{path}: images are {tuple(loaded[0].shape[-2:])}, but {paths[0]} has {tuple(images[0].shape[-2:])}"
            )
        images.append(loaded[0])
        masks.append(loaded[1])
        labels.append(loaded[2] if len(loaded) > 2 else None)
        described.append(
            {
                "path": str(path),
                "sha256": file_sha256(path),
                "n_images": int(len(loaded[0])),
                "size": [int(s) for s in loaded[0].shape[-2:]],
                "labels": len(loaded) > 2,
            }
        )
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


def train_from_npz(
    data_path: str | Path | Sequence[str | Path],
    out: str | Path,
    epochs: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    preset: str = "default",
    heads: Sequence[str] | None = None,
    base: int | None = None,
    depth: int | None = None,
    batch_size: int | None = None,
    max_minutes: float | None = None,
    command: str | None = None,
    extra_data: Sequence[str | Path] = (),
    max_images: int | None = None,
    data_description: str | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    compile: bool | str = "auto",
) -> dict:
    """Train a U-Net on ``.npz`` data set(s) and write the best checkpoint with its provenance.

    The images of all files are concatenated and split (seeded) into train / validation / test
    (``nucleilib.data.split_indices``, 80/10/10); the test part is only used for the final metrics.
    With instance labels in every file the model gets a second "interior" output for splitting
    touching nuclei; otherwise it predicts the mask only.

    Parameters
    ----------
    data_path : str, pathlib.Path or sequence of them
        ``.npz`` file(s) in the data contract.
    out : str or pathlib.Path
        Checkpoint to write (the resumable last checkpoint goes beside it).
    epochs, base, depth, batch_size, max_minutes, max_images : optional
        Override the preset (``max_images``: use at most this many images, a seeded random subset).
    lr : float
        Initial learning rate.
    seed : int
        Seeds the split, the initial weights, shuffling and augmentation.
    preset : str
        ``"fast"``, ``"default"`` or ``"full"`` (see :data:`TRAIN_PRESETS`).
    heads : sequence of str, optional
        ``("mask",)`` or ``("mask", "interior")``; default by label availability.
    command : str, optional
        The command line, recorded in the provenance.
    extra_data : sequence of paths
        More ``.npz`` files to concatenate (for example imported real tiles).
    data_description : str, optional
        Free text for the provenance (for example the generator call that made the data).
    progress : bool
        Show progress bars.
    device : str or torch.device, optional
        Default :func:`select_device` (under ``torchrun``: this process's GPU, or the CPU).
    compile : bool or "auto"
        Passed to :func:`fit`.

    Returns
    -------
    dict
        ``history``, ``metrics`` (``val_dice``, ``test_dice``, ``test_iou``, ...), ``heads``, ``out``.

    Raises
    ------
    ValueError
        For an unknown preset, unreadable data (from ``load_npz``), files of different image size,
        or the interior head requested without labels.

    Examples
    --------
    >>> train_from_npz("data.npz", "m.pt", preset="huge")
    Traceback (most recent call last):
    ...
    ValueError: preset must be one of ['default', 'fast', 'full'], got 'huge'
    """
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"preset must be one of {sorted(TRAIN_PRESETS)}, got {preset!r}")
    with distributed_session() as process_device:  # under torchrun: join the process group, leave at the end
        device = device if process_device is None else process_device
        rank, world_size = world()
        settings = dict(TRAIN_PRESETS[preset])
        overrides = {"epochs": epochs, "base": base, "depth": depth, "batch_size": batch_size,
                     "max_minutes": max_minutes, "max_images": max_images}
        settings.update({key: value for key, value in overrides.items() if value is not None})
        paths = [Path(data_path)] if isinstance(data_path, (str, Path)) else [Path(p) for p in data_path]
        paths += [Path(p) for p in extra_data]
        started = time.perf_counter()

        images, targets, heads, described = _load_training_data(paths, heads)
        if settings["max_images"] is not None and len(images) > settings["max_images"]:
            keep = np.sort(np.random.default_rng(seed).permutation(len(images))[: settings["max_images"]])
            images, targets = images[keep], targets[keep]
        train_index, val_index, test_index = (np.asarray(part) for part in split_indices(len(images), seed=seed))
        if len(train_index) == 0 or len(val_index) == 0:
            raise ValueError(f"{paths[0]}: too few images ({len(images)}) to split into training and validation")

        torch.manual_seed(seed)
        model = UNet(in_channels=1, out_channels=len(heads), base=settings["base"], depth=settings["depth"])
        provenance = {
            "command": command or f"train_from_npz({', '.join(map(str, paths))!r}, {str(out)!r}, preset={preset!r})",
            "preset": preset,
            "seed": int(seed),
            "lr": float(lr),
            "epochs": int(settings["epochs"]),
            "batch_size": int(settings["batch_size"]),
            "max_minutes": settings["max_minutes"],
            "data": described,
            "data_description": data_description or "",
            "split": {"train": len(train_index), "val": len(val_index), "test": len(test_index), "seed": int(seed)},
            "processes": world_size,
            "nucleilib_version": _library_version(),
            "torch_version": str(torch.__version__),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        info = {"provenance": provenance, "normalization": DEFAULT_NORMALIZATION, "heads": list(heads)}
        history = fit(
            model,
            images[train_index], targets[train_index], images[val_index], targets[val_index],
            epochs=settings["epochs"], lr=lr, batch_size=settings["batch_size"], seed=seed, out=out,
            max_minutes=settings["max_minutes"], progress=progress and rank == 0, device=device, checkpoint_info=info,
            compile=compile,
        )
        best = int(np.argmin(history["val_loss"])) if history["val_loss"] else 0
        metrics = {"epochs_run": len(history["val_loss"]), "best_epoch": best + 1, "stop_reason": history["stop_reason"]}
        if history["val_dice"]:
            metrics["val_dice"] = history["val_dice"][best]
        if len(test_index) and rank == 0:
            test = evaluate_pixels(model, images[test_index], targets[test_index, :1])
            metrics.update(test_dice=test["dice"], test_iou=test["iou"])
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        provenance.update(metrics=metrics, device=str(model_device(model)), compiled=history["compiled"])
        if rank == 0:
            save_checkpoint(out, model, history=history, **info)
        return {"history": history, "metrics": metrics, "heads": list(heads), "out": str(out)}


def _library_version() -> str:
    from nucleilib import __version__

    return __version__


__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_NORMALIZATION",
    "TRAIN_PRESETS",
    "available_cpus",
    "configure_cpu_threads",
    "cpu_supports_bf16",
    "default_model_path",
    "evaluate_pixels",
    "file_sha256",
    "fit",
    "last_checkpoint_path",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "select_device",
    "train_from_npz",
]


# --- learning-rate range test (chapter 04) ----------------------------------------------------


def lr_range_test(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 60,
    batch_size: int = 16,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = bce_dice_loss,
    seed: int = 0,
    smoothing: float = 0.8,
    diverge_factor: float = 4.0,
    device: str | torch.device | None = None,
) -> dict:
    """Learning-rate range test: train briefly while the learning rate grows exponentially, record the loss.

    One Adam step per batch, the learning rate going from ``start_lr`` to ``end_lr`` in ``steps``
    equal factors (Smith 2017, "Cyclical learning rates"). The loss first stays flat (rate too
    small to move the weights), then falls (useful rates), then explodes (too large). The test
    stops early once the smoothed loss exceeds ``diverge_factor`` times its minimum. The model's
    weights are restored afterwards, so the test leaves the model untouched.

    Parameters
    ----------
    model : torch.nn.Module
        The network, e.g. a fresh :class:`~nucleilib.model.UNet`.
    images : numpy.ndarray or torch.Tensor
        ``(N, 1, H, W)`` normalized training images.
    targets : numpy.ndarray or torch.Tensor
        ``(N, out_channels, H, W)`` targets.
    start_lr, end_lr : float
        First and last learning rate (``0 < start_lr < end_lr``).
    steps : int
        Number of optimizer steps (learning rates tried), at least 2.
    batch_size : int
        Images per step; batches cycle through a seeded shuffle of the images.
    loss : callable
        ``loss(logits, targets) -> scalar``; default BCE + Dice.
    seed : int
        Seeds the batch order.
    smoothing : float
        Exponential moving average factor for the ``smoothed`` curve (0 = none).
    diverge_factor : float
        Stop when the smoothed loss exceeds this multiple of its minimum.
    device : str or torch.device, optional
        Default :func:`select_device`.

    Returns
    -------
    dict
        ``lr`` and ``loss`` (lists, one per step taken), ``smoothed`` (bias-corrected moving
        average), ``best_lr`` (learning rate at the smoothed minimum) and ``suggested_lr``
        (``best_lr / 10``, the usual rule of thumb: a rate safely below the point of divergence).

    Raises
    ------
    ValueError
        For ``start_lr``/``end_lr``/``steps`` out of range or mismatched images and targets.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> images = torch.rand(8, 1, 8, 8)
    >>> net = UNet(base=2, depth=1)
    >>> before = [p.clone() for p in net.parameters()]
    >>> result = lr_range_test(net, images, (images > 0.5).float(), start_lr=1e-4, end_lr=1e-1, steps=4,
    ...                        batch_size=4, device="cpu")
    >>> [f"{lr:.0e}" for lr in result["lr"]]
    ['1e-04', '1e-03', '1e-02', '1e-01']
    >>> all(torch.equal(a, b) for a, b in zip(before, net.parameters()))   # weights restored
    True
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr_range_test: need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if steps < 2:
        raise ValueError(f"lr_range_test: steps must be at least 2, got {steps}")
    images, targets = _as_tensor(images, "images"), _as_tensor(targets, "targets")
    if len(images) == 0 or images.shape[0] != targets.shape[0] or images.shape[-2:] != targets.shape[-2:]:
        raise ValueError(f"lr_range_test: images {tuple(images.shape)} and targets {tuple(targets.shape)} differ")
    device = select_device(device)
    if device.type == "cpu":
        configure_cpu_threads()
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=start_lr)
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(images), generator=generator)
    result: dict = {"lr": [], "loss": [], "smoothed": []}
    average, best = 0.0, math.inf
    try:
        for step in range(steps):
            lr = start_lr * factor**step
            for group in optimizer.param_groups:
                group["lr"] = lr
            start = (step * batch_size) % len(images)
            index = order[(torch.arange(batch_size) + start) % len(images)][: min(batch_size, len(images))]
            x, y = images[index].to(device), targets[index].to(device)
            optimizer.zero_grad(set_to_none=True)
            value = loss(model(x).float(), y)
            value.backward()
            optimizer.step()
            current = float(value.detach())
            if not math.isfinite(current):
                break
            average = smoothing * average + (1 - smoothing) * current
            smoothed = average / (1 - smoothing ** (step + 1))
            result["lr"].append(lr)
            result["loss"].append(current)
            result["smoothed"].append(smoothed)
            best = min(best, smoothed)
            if smoothed > diverge_factor * best:
                break
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    best_index = int(np.argmin(result["smoothed"])) if result["smoothed"] else 0
    result["best_lr"] = result["lr"][best_index] if result["lr"] else start_lr
    result["suggested_lr"] = result["best_lr"] / 10
    return result


__all__.append("lr_range_test")
