"""Run a trained model on images of any size and get probabilities, then labels.

- :func:`probabilities`: one 2-D image (8/16-bit or float, any size) -> float32 (C, H, W)
  probabilities. The image is normalized exactly as in training (``nucleilib.data.normalize_image``,
  with the checkpoint's settings when ``info`` is given). Small images go through the network whole;
  large ones in overlapping tiles whose predictions are blended with linear ramp weights (the
  outer quarter of a shared tile edge, distorted by zero padding, is ignored), so a 1040 x 1388
  image has no seams and memory stays bounded by the tile size.
- :func:`predict_batch`: an already normalized batch (N, 1, H, W) -> probabilities (N, C, H, W).
- :func:`segment_image`: image -> (instance labels, probabilities), with :mod:`nucleilib.count`.

The model runs as :func:`inference_model` makes it: an ``eval``-mode copy (BatchNorm uses its running
statistics) with each BatchNorm folded into the convolution before it, in channels-last memory (faster
convolutions on CPU), under ``torch.inference_mode``; the model passed in is not changed. Logits become
probabilities in one place: ``nucleilib.model.probabilities_from_logits``.
"""

from __future__ import annotations

import itertools
import math
import weakref

import numpy as np
import torch
from torch import nn

from nucleilib.count import DEFAULT_MIN_AREA, labels_from_probabilities
from nucleilib.data import normalize_image
from nucleilib.model import fold_batchnorm, model_device, probabilities_from_logits

# model -> (fingerprint of its weights, inference copy); entries go when the model does.
_INFERENCE_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()



def _run(model: nn.Module, batch: torch.Tensor, device: torch.device) -> np.ndarray:
    """Probabilities of one batch (N, 1, H, W) as a float32 numpy array (N, C, H, W)."""
    batch = batch.to(device=device, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    logits = model(batch)
    if logits.ndim != 4 or logits.shape[0] != batch.shape[0] or logits.shape[-2:] != batch.shape[-2:]:
        raise ValueError(f"predict: the model returned shape {tuple(logits.shape)} for input {tuple(batch.shape)}")
    return probabilities_from_logits(logits).float().cpu().numpy()


def inference_model(model: nn.Module) -> nn.Module:
    """The form of ``model`` that prediction runs: an eval-mode copy with BatchNorm folded into the
    convolutions (:func:`nucleilib.model.fold_batchnorm`), in channels-last memory.

    Folding saves a pass over every feature map (in channels-last memory, BatchNorm over 8 channels costs
    as much as the convolution before it). The copy is cached per model and made anew when the model's
    weights or BatchNorm statistics change (training, ``load_state_dict``, moving it to another device).

    Parameters
    ----------
    model : torch.nn.Module
        The trained network; left unchanged (its training flag too).

    Returns
    -------
    torch.nn.Module
        The inference copy (do not train it).

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


def predict_batch(
    model: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 8, device: str | torch.device | None = None
) -> np.ndarray:
    """Probabilities for a batch of already normalized images.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (N, 1, H, W) to logits (N, C, H, W).
    images : torch.Tensor or np.ndarray
        float (N, 1, H, W), normalized as in training (e.g. from ``nucleilib.data.load_npz``).
    batch_size : int, optional
        Images per forward pass (bounds memory). Default 8.
    device : str or torch.device, optional
        Where to run; default the model's device.

    Returns
    -------
    np.ndarray
        float32 (N, C, H, W) probabilities in [0, 1].

    Raises
    ------
    ValueError
        If ``images`` is not 4-D or batch_size < 1.

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
        parts = [_run(net, images[i : i + batch_size], device) for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 1) + tuple(images.shape[-2:]), np.float32)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of size ``tile`` covering ``0..length`` with at least ``overlap`` shared.

    Parameters
    ----------
    length : int
        Image size along the axis.
    tile : int
        Tile size (a tile larger than the image is cut to the image).
    overlap : int
        Minimum overlap of neighbouring tiles, pixels (< tile).

    Returns
    -------
    list of int
        Evenly spaced starts; the first is 0 and the last is ``length - tile``.

    Raises
    ------
    ValueError
        If overlap is not in [0, tile).

    Examples
    --------
    >>> tile_starts(900, 512, 64)                    # two tiles overlapping by 124 px
    [0, 388]
    >>> tile_starts(1000, 512, 64)                   # two would overlap by only 24 px
    [0, 244, 488]
    >>> tile_starts(300, 512, 64)
    [0]
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"tile_starts: need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
    if length <= tile:
        return [0]
    n_tiles = math.ceil((length - overlap) / (tile - overlap))
    return [int(round(s)) for s in np.linspace(0, length - tile, n_tiles)]


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
    image = np.asarray(image)
    if image.ndim == 3 and 1 in (image.shape[0], image.shape[-1]):
        image = image.reshape(image.shape[1:] if image.shape[0] == 1 else image.shape[:-1])
    if image.ndim != 2 or image.size == 0:
        raise ValueError(
            f"probabilities: image must be a non-empty 2-D array, got shape {image.shape} "
            "(read multi-channel files with nucleilib.data.read_image)"
        )
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError("probabilities: image contains NaN or inf")
    if not normalize:
        return image.astype(np.float32)
    settings = (info or {}).get("normalization") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"probabilities: info['normalization'] must be a dict like {{'low': 1.0, 'high': 99.8}}, got {settings!r}")
    options = {key: float(settings[key]) for key in ("low", "high") if key in settings}
    return normalize_image(image, **options).astype(np.float32)


def probabilities(
    model: nn.Module,
    image: np.ndarray,
    info: dict | None = None,
    normalize: bool = True,
    tile: int | None = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Per-pixel probabilities of one image of any size and dtype.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (N, 1, H, W) to logits (N, C, H, W), e.g. ``nucleilib.model.UNet``.
    image : np.ndarray
        2-D image (uint8, uint16 - also narrow ranges like 110..4095 -, or float).
    info : dict, optional
        Checkpoint info from ``load_model``; its ``"normalization"`` dict (``low``/``high``
        percentiles) overrides the default normalization, so inference matches training.
    normalize : bool, optional
        Normalize with ``nucleilib.data.normalize_image``; False if the image already is. Default True.
    tile : int or None, optional
        Tile size for large images; None runs the whole image at once. Default 512.
    overlap : int, optional
        Minimum tile overlap, pixels (< tile); the outer quarter of a shared tile edge gets weight 0,
        the rest of the overlap blends linearly. Default 64.
    batch_size : int, optional
        Tiles per forward pass. Default 4.
    device : str or torch.device, optional
        Where to run; default the model's device.

    Returns
    -------
    np.ndarray
        float32 (C, H, W) probabilities in [0, 1], the same H, W as the image.

    Raises
    ------
    ValueError
        If the image is not 2-D (or 2-D with a singleton axis), is empty or not finite, or the
        overlap is not smaller than the tile.

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
        return predict_batch(model, tensor, batch_size=1, device=device)[0]
    device = torch.device(device) if device is not None else model_device(model)
    if not 0 <= overlap < tile:
        raise ValueError(f"probabilities: need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
    tile_h, tile_w = min(tile, height), min(tile, width)
    overlap_y, overlap_x = min(overlap, tile_h - 1), min(overlap, tile_w - 1)
    starts_y, starts_x = tile_starts(height, tile_h, overlap_y), tile_starts(width, tile_w, overlap_x)
    corners = [(y, x) for y in starts_y for x in starts_x]
    total, weight_sum = None, np.zeros((height, width), np.float32)
    net = inference_model(model)
    with torch.inference_mode():
        for i in range(0, len(corners), batch_size):
            chunk = corners[i : i + batch_size]
            batch = torch.cat([tensor[..., y : y + tile_h, x : x + tile_w] for y, x in chunk])
            probs = _run(net, batch, device)
            if total is None:
                total = np.zeros((probs.shape[1], height, width), np.float32)
            for (y, x), prob in zip(chunk, probs):
                # Edges shared with a neighbouring tile fade out; edges on the image border do not.
                weight = np.outer(
                    _ramp(tile_h, overlap_y, y > 0, y + tile_h < height),
                    _ramp(tile_w, overlap_x, x > 0, x + tile_w < width),
                )
                total[:, y : y + tile_h, x : x + tile_w] += prob * weight
                weight_sum[y : y + tile_h, x : x + tile_w] += weight
    return total / weight_sum


def segment_image(
    model: nn.Module,
    image: np.ndarray,
    info: dict | None = None,
    threshold: float = 0.5,
    min_area: int = DEFAULT_MIN_AREA,
    split: bool = True,
    tile: int | None = 512,
    overlap: int = 64,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels and probabilities of one image: :func:`probabilities` then
    :func:`nucleilib.count.labels_from_probabilities`.

    Parameters
    ----------
    model : torch.nn.Module
        The trained network.
    image : np.ndarray
        2-D image, any dtype and size.
    info : dict, optional
        Checkpoint info (normalization settings).
    threshold : float, optional
        Probability threshold. Default 0.5.
    min_area : int, optional
        Smallest nucleus kept, pixels. Default ``nucleilib.count.DEFAULT_MIN_AREA``.
    split : bool, optional
        Separate touching nuclei (interior seeds when the model has a second channel, else the
        distance transform). Default True.
    tile, overlap, device : optional
        As in :func:`probabilities`.

    Returns
    -------
    labels : np.ndarray
        int32 (H, W) instance labels; ``labels.max()`` is the count.
    prob : np.ndarray
        float32 (C, H, W) probabilities.

    Examples
    --------
    >>> model = nn.Conv2d(1, 1, 1)
    >>> _ = nn.init.constant_(model.weight, 20.0), nn.init.constant_(model.bias, -10.0)
    >>> image = np.zeros((20, 20), np.uint8); image[2:8, 2:8] = image[12:18, 10:16] = 200
    >>> labels, prob = segment_image(model, image)
    >>> int(labels.max()), prob.shape
    (2, (1, 20, 20))
    """
    prob = probabilities(model, image, info=info, tile=tile, overlap=overlap, device=device)
    labels = labels_from_probabilities(prob, threshold=threshold, min_area=min_area, split=split)
    return labels, prob


predict_image = segment_image
"""Alias of :func:`segment_image` (the name used in DESIGN.md)."""
