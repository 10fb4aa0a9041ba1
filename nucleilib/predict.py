"""Run a trained model on images of any size: probabilities only (counting is :mod:`nucleilib.count`).

- :func:`probabilities`: one 2-D image (8/16-bit or float, any size) -> float32 (C, H, W) probabilities. The
  image is normalized exactly as in training (``nucleilib.data.normalize_image``, with the checkpoint's
  settings when ``info`` is given). Small images go through the network whole; large ones in overlapping
  tiles whose predictions are blended with linear ramp weights (the outer quarter of a shared tile edge,
  distorted by zero padding, is ignored), so a large image has no seams and memory stays bounded.
- :func:`predict_batch`: an already normalized batch (N, 1, H, W) -> probabilities (N, C, H, W).

The model runs as :func:`inference_model` makes it: an ``eval``-mode copy with each BatchNorm folded into the
convolution before it, in channels-last memory, under ``torch.inference_mode``; the model passed in is not
changed. Logits become probabilities in one place: ``nucleilib.model.probabilities_from_logits``.
"""

from __future__ import annotations

import itertools
import weakref

import numpy as np
import torch
from torch import nn

from nucleilib.data import normalize_image, tile_starts
from nucleilib.io import image_2d
from nucleilib.model import fold_batchnorm, model_device, probabilities_from_logits
from nucleilib.runtime import inference_precision

# model -> (fingerprint of its weights, inference copy); entries go when the model does.
_INFERENCE_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _run(model: nn.Module, batch: torch.Tensor, device: torch.device, precision: str = "fp32") -> np.ndarray:
    """Probabilities of one batch (N, 1, H, W) as a float32 numpy array (N, C, H, W)."""
    batch = batch.to(device=device, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    with inference_precision(device, precision):
        logits = model(batch)
    if logits.ndim != 4 or logits.shape[0] != batch.shape[0] or logits.shape[-2:] != batch.shape[-2:]:
        raise ValueError(f"predict: the model returned shape {tuple(logits.shape)} for input {tuple(batch.shape)}")
    return probabilities_from_logits(logits).float().cpu().numpy()


def inference_model(model: nn.Module) -> nn.Module:
    """The form of ``model`` that prediction runs: an eval-mode copy with BatchNorm folded into the convolutions
    (:func:`nucleilib.model.fold_batchnorm`), in channels-last memory; ``model`` itself is left unchanged.

    Folding saves a pass over every feature map. The copy is cached per model and made anew when the model's
    weights or BatchNorm statistics change (training, ``load_state_dict``, moving it to another device).

    Examples
    --------
    >>> from nucleilib.model import UNet
    >>> net = UNet(base=2, depth=1)
    >>> fast = inference_model(net)
    >>> fast is inference_model(net), net.training, fast.training
    (True, True, False)
    >>> with torch.no_grad():
    ...     _ = net.head.bias.add_(1.0)   # the weights change: a new copy
    >>> fast is inference_model(net)
    False
    """
    tensors = itertools.chain(model.parameters(), model.buffers())
    fingerprint = tuple((t.device, t.data_ptr(), t._version) for t in tensors)  # _version counts in-place changes
    cached = _INFERENCE_COPIES.get(model)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    fast = fold_batchnorm(model).to(memory_format=torch.channels_last)
    _INFERENCE_COPIES[model] = (fingerprint, fast)
    return fast


def predict_batch(model: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 8,
                  device: str | torch.device | None = None, precision: str = "fp32") -> np.ndarray:
    """Probabilities (float32 (N, C, H, W)) of a batch of already normalized images (N, 1, H, W).

    ``images`` come normalized as in training (e.g. from ``nucleilib.io.load_npz``); ``batch_size`` images go
    through each forward pass (bounding memory), on ``device`` (default: the model's), in ``precision``
    (``runtime.inference_precision``: ``"fp32"``, ``"bf16"`` or ``"auto"``).

    Examples
    --------
    >>> model = nn.Conv2d(1, 1, 1)
    >>> _ = nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)     # logits 0 everywhere
    >>> predict_batch(model, torch.rand(3, 1, 5, 7), batch_size=2)[:, 0, 0, 0].tolist()
    [0.5, 0.5, 0.5]
    """
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise ValueError(f"predict_batch: images must be (N, 1, H, W), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"predict_batch: batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else model_device(model)
    net = inference_model(model)
    with torch.inference_mode():
        parts = [_run(net, images[i : i + batch_size], device, precision) for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 1) + tuple(images.shape[-2:]), np.float32)


def _ramp(size: int, ramp: int, rise_at_start: bool, fall_at_end: bool) -> np.ndarray:
    """1-D blending weight: 1 inside, 0 on the outer quarter of an edge shared with a neighbouring
    tile (where zero padding distorts the prediction), and linear in between."""
    weight = np.ones(size, np.float32)
    ramp = min(ramp, size)
    margin = ramp // 4
    steps = np.clip((np.arange(ramp, dtype=np.float32) - margin + 1) / (ramp - margin + 1), 0, 1)
    if rise_at_start:
        weight[:ramp] = np.minimum(weight[:ramp], steps)
    if fall_at_end:
        weight[size - ramp :] = np.minimum(weight[size - ramp :], steps[::-1])
    return weight


def _prepare_image(image: np.ndarray, normalize: bool, info: dict | None) -> np.ndarray:
    """The image as float32 (H, W), normalized with the checkpoint's settings when ``normalize``."""
    image = image_2d(image)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError("probabilities: image contains NaN or inf")
    if not normalize:
        return image.astype(np.float32)
    settings = (info or {}).get("normalization") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"probabilities: info['normalization'] must be a dict like {{'low': 1.0, 'high': 99.8}}, "
                         f"got {settings!r}")
    options = {key: float(settings[key]) for key in ("low", "high") if key in settings}
    return normalize_image(image, **options).astype(np.float32)


def probabilities(model: nn.Module, image: np.ndarray, info: dict | None = None, normalize: bool = True,
                  tile: int | None = 512, overlap: int = 64, batch_size: int = 4,
                  device: str | torch.device | None = None, precision: str = "fp32") -> np.ndarray:
    """Per-pixel probabilities, float32 (C, H, W), of one 2-D image of any size and dtype.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (N, 1, H, W) to logits (N, C, H, W), e.g. ``nucleilib.model.UNet``.
    image : np.ndarray
        2-D image (uint8, uint16 - also narrow ranges like 110..4095 -, or float), or 2-D with a singleton axis.
    info : dict, optional
        Checkpoint info from ``load_model``: its ``"normalization"`` dict (``low``/``high`` percentiles) overrides
        the default normalization, so inference matches training.
    normalize : bool, optional
        Normalize with ``nucleilib.data.normalize_image``; False if the image already is.
    tile, overlap : int, optional
        Tile size for large images (None: the whole image at once), and the minimum overlap of tiles (< tile).
    batch_size : int, optional
        Tiles per forward pass.
    device : str or torch.device, optional
        Where to run; default the model's device.
    precision : str, optional
        ``"fp32"`` (the same numbers on every CPU), ``"bf16"`` or ``"auto"`` (bfloat16 where the CPU computes it
        natively): :func:`nucleilib.runtime.inference_precision`.

    Examples
    --------
    >>> model = nn.Conv2d(1, 1, 1)
    >>> _ = nn.init.ones_(model.weight), nn.init.zeros_(model.bias)      # logit = normalized pixel
    >>> prob = probabilities(model, np.arange(35, dtype=np.uint16).reshape(5, 7))
    >>> prob.shape, prob.dtype.name, 0.5 <= float(prob.min()) < float(prob.max()) <= 0.74
    ((1, 5, 7), 'float32', True)
    """
    pixels = _prepare_image(image, normalize, info)
    height, width = pixels.shape
    tensor = torch.from_numpy(pixels)[None, None]
    if tile is None or (height <= tile and width <= tile):
        return predict_batch(model, tensor, batch_size=1, device=device, precision=precision)[0]
    device = torch.device(device) if device is not None else model_device(model)
    if not 0 <= overlap < tile:
        raise ValueError(f"probabilities: need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
    tile_h, tile_w = min(tile, height), min(tile, width)
    overlap_y, overlap_x = min(overlap, tile_h - 1), min(overlap, tile_w - 1)
    corners = list(itertools.product(tile_starts(height, tile_h, overlap_y), tile_starts(width, tile_w, overlap_x)))
    total, weight_sum = None, np.zeros((height, width), np.float32)
    net = inference_model(model)
    with torch.inference_mode():
        for i in range(0, len(corners), batch_size):
            chunk = corners[i : i + batch_size]
            tiles = torch.cat([tensor[..., y : y + tile_h, x : x + tile_w] for y, x in chunk])
            probs = _run(net, tiles, device, precision)
            if total is None:
                total = np.zeros((probs.shape[1], height, width), np.float32)
            for (y, x), prob in zip(chunk, probs):
                # Edges shared with a neighbouring tile fade out; edges on the image border do not.
                weight = np.outer(_ramp(tile_h, overlap_y, y > 0, y + tile_h < height),
                                  _ramp(tile_w, overlap_x, x > 0, x + tile_w < width))
                total[:, y : y + tile_h, x : x + tile_w] += prob * weight
                weight_sum[y : y + tile_h, x : x + tile_w] += weight
    return total / weight_sum
