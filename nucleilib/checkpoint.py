"""Checkpoints: the trained U-Net on disk, with what is needed to use it and to make it again.

Tensors and plain data only, so that ``torch.load(..., weights_only=True)`` runs no code: the weights, the model
configuration, the normalization, the output heads, the history and the provenance (command, settings, data...).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nucleilib.io import atomic_path, atomic_write_bytes
from nucleilib.model import UNet

CHECKPOINT_FORMAT = "nucleilib-unet"
CHECKPOINT_VERSION = 1
DEFAULT_NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}
MODEL_ENV = "NUCLEILIB_MODEL"


def default_model_path() -> Path:
    """Path of the shipped model: ``$NUCLEILIB_MODEL`` if set, else ``nuclei_unet.pt`` inside the package.

    The model travels with the package (a wheel or ``pip install`` holds it too), so ``count`` works wherever
    ``nucleilib`` is installed.

    Examples
    --------
    >>> default_model_path().name in ("nuclei_unet.pt", Path(os.environ.get(MODEL_ENV, "x")).name)
    True
    """
    override = os.environ.get(MODEL_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent / "nuclei_unet.pt"


def last_checkpoint_path(out: str | Path) -> Path:
    """Where training keeps the resumable "last" checkpoint, beside the best one at ``out``.

    Examples
    --------
    >>> last_checkpoint_path("models/nuclei_unet.pt").as_posix()
    'models/nuclei_unet.last.pt'
    """
    out = Path(out)
    return out.with_name(f"{out.stem}.last{out.suffix or '.pt'}")


def save_history(out: str | Path, history: dict, provenance: dict | None = None) -> Path:
    """Write the per-epoch ``history`` and its ``provenance`` as JSON beside the checkpoint ``out`` (atomically).

    A plain file a spreadsheet or a chapter can read without torch; training rewrites it after every epoch.

    Examples
    --------
    >>> import json, tempfile
    >>> path = save_history(Path(tempfile.mkdtemp()) / "m.pt", {"val_loss": [0.5, 0.25]}, {"seed": 0})
    >>> path.name, json.loads(path.read_text())["history"]["val_loss"]
    ('m.history.json', [0.5, 0.25])
    """
    path = Path(out).with_suffix(".history.json")
    atomic_write_bytes(path, json.dumps({"history": history, "provenance": provenance or {}}, indent=1).encode())
    return path


def save_checkpoint(path: str | Path, model: torch.nn.Module, history: dict | None = None,
                    provenance: dict | None = None, normalization: dict | None = None,
                    heads: Sequence[str] | None = None, training_state: dict | None = None) -> Path:
    """Write a checkpoint atomically (folders are created): weights, configuration and plain-data metadata only.

    The model's ``config`` is stored so that :func:`load_model` can rebuild it. ``history`` (per epoch) and
    ``provenance`` (command line, settings, data hashes, metrics ...) must be plain data, else ValueError.
    ``normalization`` defaults to percentile 1-99.8; ``heads`` (names of the output channels) to ``("mask",)``
    or ``("mask", "interior")`` by channel count; ``training_state`` (optimizer, scheduler and random state)
    is what resuming needs.

    Examples
    --------
    >>> import tempfile
    >>> path = save_checkpoint(Path(tempfile.mkdtemp()) / "m.pt", UNet(base=2, depth=1))
    >>> sorted(torch.load(path, weights_only=True))[:4]
    ['config', 'format', 'format_version', 'heads']
    """
    config = dict(model.config)
    if heads is None:
        heads = ("mask", "interior")[: config["out_channels"]]
    # The weights as a CPU copy in the standard layout (the model may be on a GPU, in channels_last).
    weights = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "state_dict": weights,
               "config": config, "normalization": _plain(dict(normalization or DEFAULT_NORMALIZATION), "normalization"),
               "heads": [str(head) for head in heads], "history": _plain(history or {}, "history"),
               "provenance": _plain(provenance or {}, "provenance")}
    if training_state is not None:
        payload["training_state"] = training_state
    with atomic_path(path) as temporary:  # never a half-written file at `path`
        torch.save(payload, temporary)
    return Path(path)


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


def _one_line(error: BaseException) -> str:
    """A short one-line description of an exception: torch's messages span many lines, so its first sentence."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    first = re.split(r"(?<=[.!?])\s", (text.strip().splitlines() or [""])[0])[0].rstrip(".")
    detail = f"it holds a {unsupported.group(1)} object" if unsupported else first
    return f"{type(error).__name__}: {detail}".strip().rstrip(":")


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Returns its ``format``, ``state_dict``, ``config``, ``normalization``, ``heads``, ``history``, ``provenance``
    and, for a "last" checkpoint, ``training_state``. Raises a one-line ValueError naming the file when it is
    missing, unreadable or not a nucleilib checkpoint.

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
    """Rebuild the U-Net from a checkpoint, in eval mode on ``device``.

    ``path`` defaults to :func:`default_model_path`. Returns the model and the checkpoint's metadata
    (``config``, ``normalization``, ``heads``, ``history``, ``provenance``, ``path``). Raises a one-line
    ValueError naming the file when it is missing (saying how to train one) or not a valid checkpoint.

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
            how = f"`python -m nucleilib make-data --out data/nuclei.npz` and `python -m nucleilib train --data"
            raise ValueError(f"{path}: no trained model here; train one with {how} data/nuclei.npz --out {path}`, "
                             f"or set {MODEL_ENV}")
    payload = load_checkpoint(path)
    model = UNet(**payload["config"])
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{path}: weights do not fit the stored config ({_one_line(error)})") from None
    model.to(device).eval()
    info = {key: value for key, value in payload.items() if key not in ("state_dict", "training_state")}
    return model, {**info, "path": str(path)}
