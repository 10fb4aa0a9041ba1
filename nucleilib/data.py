"""Data: load and validate ``.npz`` sets, normalize, read images, import and download real data.

Read top to bottom:

1. Atomic file writing (:func:`atomic_path`, :func:`atomic_write_bytes`).
2. Intensity normalization (:func:`normalize_image`, :func:`normalize_batch`).
3. The ``.npz`` data contract (:func:`save_npz`, :func:`load_npz`).
4. Reading image and label files (:func:`read_image`, :func:`read_labels`).
5. Real data sets in their public layouts (``read_*``, ``import_*``, :func:`tile_image`).
6. Splits (:func:`real_split`, :func:`split_indices`).
7. Download of the public archives (:func:`download`).
8. Augmentation (:func:`augment_batch`) and data set statistics (:func:`dataset_stats`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

__all__ = [
    "DOWNLOADS",
    "IMAGE_SUFFIXES",
    "atomic_path",
    "atomic_write_bytes",
    "NucleiDataset",
    "augment_batch",
    "bbbc039_names",
    "dataset_stats",
    "default_cache_dir",
    "download",
    "dsb2018_names",
    "import_bbbc039",
    "import_dsb2018",
    "is_fluorescence",
    "import_pairs",
    "labels_to_mask",
    "load_npz",
    "mask_to_labels",
    "normalize_batch",
    "normalize_image",
    "pair_names",
    "read_bbbc039",
    "read_dsb2018",
    "read_image",
    "read_labels",
    "read_pairs",
    "real_split",
    "save_npz",
    "split_indices",
    "tile_image",
    "tile_starts",
]

# A damaged file is reported by name with a ValueError; OpenCV's own warnings would only repeat it, unnamed.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_TIFF_SUFFIXES = (".tif", ".tiff")
_LABEL_STEM_ENDINGS = ("_labels", "_label", "_masks", "_mask")


# --------------------------------------------------------------------------------------------
# 1. Atomic writing
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary file lives in the same folder (so :func:`os.replace` is atomic) and keeps the
    suffix of ``path`` (so writers that choose the format by extension, like ``cv2.imwrite``,
    still work). On any error, including ``KeyboardInterrupt``, it is removed and ``path`` is
    left untouched: a reader never sees a half-written file. Missing parent folders are created.

    Parameters
    ----------
    path : str or os.PathLike
        The final file.

    Yields
    ------
    pathlib.Path
        The temporary file to write (it exists, empty).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (folder / "a.txt").read_text()
    'done'
    >>> try:
    ...     with atomic_path(folder / "b.txt") as tmp:
    ...         _ = tmp.write_text("half")
    ...         raise RuntimeError("interrupted")
    ... except RuntimeError:
    ...     pass
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:  # created by hand rather than mkstemp so the final file gets the usual permissions (umask)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    path : str or os.PathLike
        The file to write (replaced if it exists).
    data : bytes
        The content.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "x.bin"
    >>> atomic_write_bytes(target, b"abc")
    >>> target.read_bytes()
    b'abc'
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# --------------------------------------------------------------------------------------------
# 2. Normalization
# --------------------------------------------------------------------------------------------


def normalize_image(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Scale one image to [0, 1] between its ``low`` and ``high`` intensity percentiles.

    Per-image percentiles make 8-bit, 16-bit (full or narrow range, e.g. 12-bit data stored as
    110..4095) and float images look alike to a model. Values outside are clipped. When the two
    percentiles coincide (mostly flat image with a few bright pixels) the maximum is used as the
    upper end; a constant image gives zeros.

    Parameters
    ----------
    image : numpy.ndarray
        Any shape, any real dtype (bool is treated as 0/1).
    low, high : float
        Percentiles mapped to 0 and 1.

    Returns
    -------
    numpy.ndarray
        float32, same shape, values in [0, 1].

    Raises
    ------
    ValueError
        If the image is empty or the percentiles are not ``0 <= low < high <= 100``.

    Examples
    --------
    >>> ramp = np.arange(1001, dtype=np.uint16) + 300      # narrow 16-bit range 300..1300
    >>> out = normalize_image(ramp, low=0, high=100)
    >>> out.dtype, float(out[0]), float(out[500]), float(out[-1])
    (dtype('float32'), 0.0, 0.5, 1.0)
    >>> normalize_image(np.full((3, 3), 7, np.uint8)).max()
    np.float32(0.0)
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    values = np.asarray(image)
    if values.size == 0:
        raise ValueError("cannot normalize an empty image")
    values = values.astype(np.float32, copy=False)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        hi = float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    out = (values - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def normalize_batch(images: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Apply :func:`normalize_image` to each image of a batch (first axis).

    Parameters
    ----------
    images : numpy.ndarray
        (N, ...) images, any real dtype.
    low, high : float
        Percentiles mapped to 0 and 1, per image.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape in [0, 1].

    Examples
    --------
    >>> batch = np.stack([np.arange(4, dtype=np.uint8).reshape(2, 2), np.full((2, 2), 9, np.uint8)])
    >>> normalize_batch(batch, low=0, high=100)[:, 0, 1].tolist()
    [0.3333333432674408, 0.0]
    """
    images = np.asarray(images)
    out = np.empty(images.shape, np.float32)
    for index in range(len(images)):
        out[index] = normalize_image(images[index], low, high)
    return out


# --------------------------------------------------------------------------------------------
# 3. The .npz data contract
# --------------------------------------------------------------------------------------------


def _as_nhw(array: np.ndarray, key: str, where: str) -> np.ndarray:
    """Bring (N,H,W), (N,H,W,1) or (N,1,H,W) to (N,H,W); ValueError for anything else."""
    if array.ndim == 3:
        return array
    if array.ndim == 4 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim == 4 and array.shape[3] == 1:
        return array[..., 0]
    raise ValueError(
        f"{where}: '{key}' has shape {array.shape}; expected (N, H, W), (N, H, W, 1) or (N, 1, H, W)"
    )


def _binary_mask(masks: np.ndarray, where: str) -> np.ndarray:
    """Check that masks are {0,1}, {0,255} or bool and return them as float32 {0,1}."""
    if masks.dtype == bool:
        return masks.astype(np.float32)
    if not (np.issubdtype(masks.dtype, np.integer) or np.issubdtype(masks.dtype, np.floating)):
        raise ValueError(f"{where}: 'masks' has dtype {masks.dtype}; expected bool, integer or float")
    if np.issubdtype(masks.dtype, np.floating) and not np.isfinite(masks).all():
        raise ValueError(f"{where}: 'masks' contains NaN or inf")
    # min/max first: far cheaper than np.unique on millions of pixels; unique only to explain an error
    low, high = masks.min(), masks.max()
    binary = low >= 0 and (high <= 1 and not ((masks != 0) & (masks != 1)).any())
    binary = binary or (low >= 0 and high == 255 and not ((masks != 0) & (masks != 255)).any())
    if not binary:
        levels = np.unique(masks)
        if len(levels) > 2:
            shown = ", ".join(str(v) for v in levels[:5].tolist())
            raise ValueError(
                f"{where}: 'masks' has {len(levels)} levels ({shown}, ...); expected a binary mask "
                "({0,1}, {0,255} or bool). Instance labels belong in 'labels'."
            )
        raise ValueError(
            f"{where}: 'masks' values {levels.tolist()} are not binary; expected {{0,1}}, {{0,255}} or bool"
        )
    return (masks > 0).astype(np.float32)


def save_npz(
    path: str | os.PathLike,
    images: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray | None = None,
) -> None:
    """Write a data set in the ``.npz`` contract, compressed and atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (conventionally ``.npz``).
    images : numpy.ndarray
        (N, H, W) images, stored in their own dtype (uint8, uint16 or float).
    masks : numpy.ndarray
        (N, H, W) binary masks; stored as uint8 {0, 1}.
    labels : numpy.ndarray, optional
        (N, H, W) integer instance labels (0 = background); stored in the smallest unsigned dtype
        that holds them (:func:`load_npz` returns int32).

    Raises
    ------
    ValueError
        If the shapes disagree or labels are not integers.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "tiny.npz"
    >>> labels = np.zeros((2, 4, 4), np.int32); labels[0, 1:3, 1:3] = 1
    >>> save_npz(target, np.zeros((2, 4, 4), np.uint16), labels > 0, labels)
    >>> with np.load(target) as stored:
    ...     sorted(stored.files), stored["images"].dtype, stored["masks"].dtype, int(stored["masks"].sum())
    (['images', 'labels', 'masks'], dtype('uint16'), dtype('uint8'), 4)
    """
    images = np.asarray(images)
    masks = np.asarray(masks)
    if images.ndim != 3 or masks.shape != images.shape:
        raise ValueError(f"{path}: images {images.shape} and masks {masks.shape} must both be (N, H, W)")
    if images.dtype == np.float64:
        images = images.astype(np.float32)
    arrays = {"images": images, "masks": (masks > 0).astype(np.uint8)}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != images.shape or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: labels {labels.shape} {labels.dtype} must be integer (N, H, W) like images")
        if labels.size and labels.min() < 0:
            raise ValueError(f"{path}: labels must be >= 0")
        top = int(labels.max()) if labels.size else 0
        arrays["labels"] = labels.astype(np.uint16 if top < 2**16 else np.int32)
    # What np.savez_compressed does, at zlib level 1: about 4x faster for 2% larger files
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)


def _read_npz_array(stored: Any, key: str, where: str) -> np.ndarray:
    """Read one array of an open npz, turning every low-level failure into a clear ValueError."""
    try:
        array = stored[key]
    except ValueError as error:
        if "pickle" in str(error).lower() or "object" in str(error).lower():
            raise ValueError(
                f"{where}: '{key}' holds an object (pickled) array, which is never loaded for safety"
            ) from None
        raise ValueError(f"{where}: '{key}' cannot be read ({error})") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, KeyError) as error:
        raise ValueError(f"{where}: '{key}' cannot be read, the file looks truncated or corrupt ({error})") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{where}: '{key}' has dtype {array.dtype}; expected numbers")
    if array.size == 0:
        raise ValueError(f"{where}: '{key}' is empty (shape {array.shape})")
    return array


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """Load and validate a data set in the ``.npz`` contract.

    Accepted: ``images`` (N,H,W), (N,H,W,1) or (N,1,H,W) in uint8, uint16 or float; ``masks`` with
    the same N, H, W, binary as {0,1}, {0,255} or bool; optional integer ``labels`` (N,H,W) with
    0 = background. Nothing pickled is ever loaded (``allow_pickle=False``).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.

    Returns
    -------
    tuple of numpy.ndarray
        ``(images, masks)`` or ``(images, masks, labels)`` when the file has labels: images float32
        (N,1,H,W) normalized per image to [0,1] with :func:`normalize_image`; masks float32
        (N,1,H,W) in {0,1}; labels int32 (N,H,W).

    Raises
    ------
    ValueError
        Naming the file, the key and the problem: missing or unreadable file, not an npz,
        truncated, missing key, empty array, object array, wrong number of dimensions, N or H/W
        mismatch, NaN/inf, non-binary masks, non-integer or negative labels.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "set.npz"
    >>> images = np.array([[[0, 100], [200, 255]]], np.uint8)[..., None]      # (1, 2, 2, 1)
    >>> np.savez(target, images=images, masks=np.array([[[0, 255], [255, 255]]], np.uint8))
    >>> x, y = load_npz(target)
    >>> x.shape, x.dtype, y[0, 0].tolist()
    ((1, 1, 2, 2), dtype('float32'), [[0.0, 1.0], [1.0, 1.0]])
    >>> np.savez(target, images=np.zeros((2, 4, 4)), masks=np.zeros((3, 4, 4)))
    >>> load_npz(target)
    Traceback (most recent call last):
    ...
    ValueError: ...set.npz: 'masks' has 3 images but 'images' has 2
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ValueError(f"{where}: file not found" if not path.exists() else f"{where}: not a file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:4] != b"PK\x03\x04":
        what = "an .npy array" if magic[:4] == b"\x93NUM" else "not a zip archive"
        if not magic:
            what = "empty (0 bytes)"
        raise ValueError(f"{where}: not an .npz data set ({what}); expected keys 'images' and 'masks'")
    try:
        stored = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{where}: cannot be opened as .npz, the file looks truncated or corrupt ({error})") from None
    with stored:
        for key in ("images", "masks"):
            if key not in stored.files:
                raise ValueError(f"{where}: missing key '{key}' (found {sorted(stored.files)})")
        raw_images = _read_npz_array(stored, "images", where)
        raw_masks = _read_npz_array(stored, "masks", where)
        raw_labels = _read_npz_array(stored, "labels", where) if "labels" in stored.files else None

    images = _as_nhw(raw_images, "images", where)
    masks = _as_nhw(raw_masks, "masks", where)
    if images.dtype == bool:
        images = images.astype(np.uint8)
    if len(masks) != len(images):
        raise ValueError(f"{where}: 'masks' has {len(masks)} images but 'images' has {len(images)}")
    if masks.shape[1:] != images.shape[1:]:
        raise ValueError(f"{where}: 'masks' are {masks.shape[1:]} (H, W) but 'images' are {images.shape[1:]}")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise ValueError(f"{where}: 'images' contains NaN or inf")
    mask_out = _binary_mask(masks, where)[:, None]
    image_out = normalize_batch(images)[:, None]
    if raw_labels is None:
        return image_out, mask_out

    labels = _as_nhw(raw_labels, "labels", where)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: 'labels' has dtype {labels.dtype}; expected integer instance labels")
    if labels.shape != images.shape:
        raise ValueError(f"{where}: 'labels' has shape {labels.shape} but 'images' are {images.shape}")
    if labels.min() < 0 or labels.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{where}: 'labels' must be between 0 and 2**31 - 1")
    return image_out, mask_out, labels.astype(np.int32)


# --------------------------------------------------------------------------------------------
# 4. Reading image and label files
# --------------------------------------------------------------------------------------------


def _read_file_array(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as stored: TIFF via tifffile, others via OpenCV (colour turned to RGB order)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: file not found")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path}: file is empty (0 bytes)")
    is_tiff = path.suffix.lower() in _TIFF_SUFFIXES or data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    if is_tiff:
        import tifffile

        try:
            array = tifffile.imread(path)
        except Exception as error:  # tifffile raises many kinds for truncated or non-TIFF data
            raise ValueError(f"{path}: cannot be read as a TIFF image ({type(error).__name__}: {error})") from None
    else:
        # imdecode from bytes: also works for non-ASCII paths, and returns None for truncated data
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise ValueError(f"{path}: not a readable image (truncated, corrupt or not an image file)")
        if array.ndim == 3 and array.shape[2] in (3, 4):
            array = array[..., [2, 1, 0, 3][: array.shape[2]]]  # OpenCV's BGR(A) -> RGB(A)
    array = np.asarray(array)
    if array.size == 0 or array.ndim < 2:
        raise ValueError(f"{path}: image has no pixels (shape {array.shape})")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{path}: unsupported pixel type {array.dtype}")
    return array


def _channels_last(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Return (H, W) or (H, W, C) from a 2-D, channels-last or channels-first array."""
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] <= 4:
        return array
    if array.ndim == 3 and array.shape[0] <= 4:
        return np.moveaxis(array, 0, -1)
    raise ValueError(f"{path}: shape {array.shape} is not a 2-D image (stacks and volumes are not supported)")


def read_image(path: str | os.PathLike, channel: int | None = None) -> np.ndarray:
    """Read a 2-D image from TIFF, PNG or JPEG, keeping its dtype.

    Gray images are returned as they are. Colour images (RGB, RGBA, or a few channels) are reduced
    to one channel: ``channel`` if given (RGB order), otherwise the first channel when all colour
    channels are equal, otherwise the channel with the highest mean intensity (the stain). Alpha
    of RGBA images is dropped.

    Parameters
    ----------
    path : str or os.PathLike
        Image file (``.tif``, ``.tiff``, ``.png``, ``.jpg``, ``.jpeg``).
    channel : int, optional
        Colour channel to take from a multi-channel image.

    Returns
    -------
    numpy.ndarray
        (H, W) array in the file's dtype (uint8, uint16, float ...).

    Raises
    ------
    ValueError
        Naming the file: missing, empty, truncated, not an image, not 2-D, or bad ``channel``.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "rgb.png"
    >>> rgb = np.zeros((2, 3, 3), np.uint8); rgb[..., 1] = 50; rgb[..., 2] = 200   # blue is the stain
    >>> _ = cv2.imwrite(str(target), rgb[..., ::-1])                                 # OpenCV writes BGR
    >>> image = read_image(target)
    >>> image.shape, image.dtype, int(image[0, 0]), int(read_image(target, channel=1)[0, 0])
    ((2, 3), dtype('uint8'), 200, 50)
    """
    array = _channels_last(_read_file_array(path), path)
    if array.ndim == 2:
        if channel not in (None, 0):
            raise ValueError(f"{path}: channel {channel} requested but the image is gray")
        return array
    colours = array[..., :3] if array.shape[2] == 4 else array
    if channel is not None:
        if not 0 <= channel < colours.shape[2]:
            raise ValueError(f"{path}: channel {channel} requested but the image has {colours.shape[2]} channels")
        return np.ascontiguousarray(colours[..., channel])
    if all(np.array_equal(colours[..., 0], colours[..., c]) for c in range(1, colours.shape[2])):
        return np.ascontiguousarray(colours[..., 0])
    means = colours.reshape(-1, colours.shape[2]).mean(axis=0)
    return np.ascontiguousarray(colours[..., int(np.argmax(means))])


def mask_to_labels(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """Instance labels of a binary mask: its connected components.

    Parameters
    ----------
    mask : numpy.ndarray
        (H, W) mask; nonzero is foreground.
    connectivity : int
        8 (default) or 4.

    Returns
    -------
    numpy.ndarray
        int32 labels 0..n, 0 = background.

    Examples
    --------
    >>> mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
    >>> mask_to_labels(mask).tolist()
    [[1, 0, 0], [0, 1, 0], [0, 0, 0], [2, 2, 0]]
    >>> int(mask_to_labels(mask, connectivity=4).max())
    3
    """
    _, labels = cv2.connectedComponents((np.asarray(mask) > 0).astype(np.uint8), connectivity=connectivity)
    return labels.astype(np.int32, copy=False)


def labels_to_mask(labels: np.ndarray) -> np.ndarray:
    """Binary uint8 {0, 1} mask of instance labels (nonzero = nucleus).

    Parameters
    ----------
    labels : numpy.ndarray
        Instance labels, any shape.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.

    Examples
    --------
    >>> labels_to_mask(np.array([[0, 3], [7, 0]])).tolist()
    [[0, 1], [1, 0]]
    """
    return (np.asarray(labels) > 0).astype(np.uint8)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read instance labels (0 = background) from a label image, or a binary mask.

    A gray label image with ids (uint8, uint16, uint32, or float holding whole numbers) is used as
    it is. A colour label image gets one id per distinct colour. An image with a single foreground
    value (a binary mask such as 0/255) is turned into its 8-connected components.

    Parameters
    ----------
    path : str or os.PathLike
        TIFF or PNG label image.

    Returns
    -------
    numpy.ndarray
        int32 (H, W) labels.

    Raises
    ------
    ValueError
        Naming the file, for unreadable files and negative or fractional labels.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "mask.png"
    >>> mask = np.zeros((5, 5), np.uint8); mask[0, 0] = mask[3:, 3:] = 255
    >>> _ = cv2.imwrite(str(target), mask)
    >>> labels = read_labels(target)
    >>> labels.dtype, int(labels.max()), int(labels[4, 4])
    (dtype('int32'), 2, 2)
    """
    array = _channels_last(_read_file_array(path), path)
    if array.ndim == 3:
        colours = array[..., :3] if array.shape[2] == 4 else array
        flat = colours.reshape(-1, colours.shape[2])
        _, ids = np.unique(flat, axis=0, return_inverse=True)
        ids = ids.reshape(colours.shape[:2]).astype(np.int64)
        # black sorts first and so gets id 0 (background); without black every colour is a nucleus
        array = ids if not flat.any(axis=1).all() else ids + 1
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{path}: label image holds fractional or non-finite values")
    if array.min() < 0:
        raise ValueError(f"{path}: label image holds negative values")
    if array.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{path}: label ids exceed 2**31 - 1")
    levels = np.unique(array)
    if len(levels) <= 2:  # one foreground value: a binary mask, so its components are the nuclei
        return mask_to_labels(array)
    return array.astype(np.int32)


# --------------------------------------------------------------------------------------------
# 5. Real data sets: reading whole images, tiling, importing
# --------------------------------------------------------------------------------------------

Sample = tuple[str, np.ndarray, np.ndarray]


def _progress(items: Sequence[Any], desc: str, enabled: bool) -> Iterable[Any]:
    """Wrap ``items`` in a tqdm progress bar when enabled."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="image")


def _select(available: Sequence[str], names: Iterable[str] | None, where: str) -> list[str]:
    """Keep the requested ``names`` (all when None); ValueError for names that are not there."""
    if names is None:
        return sorted(available)
    wanted = sorted(set(str(name) for name in names))
    missing = sorted(set(wanted) - set(available))
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise ValueError(f"{where}: {len(missing)} requested image(s) not found: {shown}")
    return wanted


def _dsb2018_root(root: str | os.PathLike) -> Path:
    """The folder holding the ``<id>/images/<id>.png`` folders: ``root`` or ``root/stage1_train``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: folder not found")
    for candidate in (root, root / "stage1_train"):
        if candidate.is_dir() and any((child / "images").is_dir() for child in candidate.iterdir()):
            return candidate
    raise ValueError(f"{root}: no 2018 Data Science Bowl layout (<id>/images/<id>.png and <id>/masks/*.png)")


def dsb2018_names(root: str | os.PathLike) -> list[str]:
    """Image ids of a 2018 Data Science Bowl folder (``stage1_train`` or its parent).

    Parameters
    ----------
    root : str or os.PathLike
        ``stage1_train`` or the folder containing it.

    Returns
    -------
    list of str
        Sorted image ids.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "stage1_train" / "b7" / "images").mkdir(parents=True)
    >>> dsb2018_names(root)
    ['b7']
    """
    base = _dsb2018_root(root)
    return sorted(child.name for child in base.iterdir() if (child / "images").is_dir())


def is_fluorescence(pixels: np.ndarray) -> bool:
    """Whether an image looks like fluorescence: gray (equal colour channels) with a dark background.

    The full 2018 Data Science Bowl archive mixes fluorescence with colour (H&E) and brightfield images;
    a model of bright nuclei on a dark background should train only on the first kind. Gray means all
    colour channels within 2 grey levels of each other; a dark background means the median pixel is not
    brighter than the mean (bright nuclei on a dark field pull the mean up; a bright field pulls it down).

    Parameters
    ----------
    pixels : numpy.ndarray
        (H, W) or (H, W, C) image as stored (alpha, if any, last).

    Returns
    -------
    bool

    Examples
    --------
    >>> field = np.zeros((8, 8, 3), np.uint8); field[2:4, 2:4] = 200          # bright nucleus, dark field
    >>> is_fluorescence(field), is_fluorescence(255 - field)                   # the same as brightfield
    (True, False)
    >>> stained = field.copy(); stained[..., 0] = 120                           # colour: not gray
    >>> is_fluorescence(stained)
    False
    """
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        colour = pixels[..., :3].astype(np.int32) if pixels.shape[2] >= 3 else pixels[..., :1].astype(np.int32)
        if np.abs(colour - colour[..., :1]).max() > 2:
            return False
        pixels = colour[..., 0]
    return bool(np.median(pixels) <= np.mean(pixels))


def read_dsb2018(
    root: str | os.PathLike, names: Iterable[str] | None = None, progress: bool = True, fluorescence_only: bool = True
) -> list[Sample]:
    """Read whole images and instance labels in the 2018 Data Science Bowl layout.

    Layout: ``<id>/images/<id>.png`` (RGBA, R = G = B) and ``<id>/masks/*.png``, one binary mask
    per nucleus. Mask ``k`` (sorted by file name) becomes label ``k + 1``; a mask is one nucleus
    even when it has a stray pixel apart from the rest. The colour (H&E) and brightfield images of
    the full archive are left out unless ``fluorescence_only=False`` (see :func:`is_fluorescence`).

    Parameters
    ----------
    root : str or os.PathLike
        ``stage1_train`` or the folder containing it.
    names : iterable of str, optional
        Image ids to read (default: all).
    progress : bool
        Show a progress bar.
    fluorescence_only : bool
        Skip images that are not fluorescence (colour or bright background).

    Returns
    -------
    list of (str, numpy.ndarray, numpy.ndarray)
        ``(id, image (H, W) uint8, labels (H, W) int32)``, sorted by id.

    Raises
    ------
    ValueError
        For a missing layout, unknown ids, unreadable files or masks of another size.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp()) / "stage1_train"
    >>> for folder in ("a1/images", "a1/masks"):
    ...     (root / folder).mkdir(parents=True)
    >>> _ = cv2.imwrite(str(root / "a1/images/a1.png"), np.full((4, 5, 4), 9, np.uint8))
    >>> mask = np.zeros((4, 5), np.uint8); mask[0, :2] = 255; mask[3, 4] = 255   # stray pixel
    >>> _ = cv2.imwrite(str(root / "a1/masks/m0.png"), mask)
    >>> [(name, image.shape, int(labels.max()), int((labels > 0).sum())) for name, image, labels
    ...  in read_dsb2018(root, progress=False)]
    [('a1', (4, 5), 1, 3)]
    """
    base = _dsb2018_root(root)
    samples = []
    for name in _progress(_select(dsb2018_names(base), names, str(base)), "read dsb2018", progress):
        image_path = base / name / "images" / f"{name}.png"
        if not image_path.exists():
            found = sorted((base / name / "images").glob("*.png"))
            if len(found) != 1:
                raise ValueError(f"{image_path}: file not found")
            image_path = found[0]
        if fluorescence_only and not is_fluorescence(_read_file_array(image_path)):
            continue
        image = read_image(image_path)
        labels = np.zeros(image.shape, np.int32)
        mask_folder = base / name / "masks"
        mask_paths = sorted(mask_folder.glob("*.png")) if mask_folder.is_dir() else []
        for index, mask_path in enumerate(mask_paths):
            mask = read_image(mask_path)
            if mask.shape != image.shape:
                raise ValueError(f"{mask_path}: mask is {mask.shape} but the image is {image.shape}")
            labels[mask > 0] = index + 1
        samples.append((name, image, labels))
    return samples


def _bbbc039_root(root: str | os.PathLike) -> Path:
    """The folder holding ``images/`` and ``masks/``: ``root`` or ``root/bbbc039``."""
    root = Path(root)
    for candidate in (root, root / "bbbc039"):
        if (candidate / "images").is_dir() and (candidate / "masks").is_dir():
            return candidate
    raise ValueError(f"{root}: no BBBC039 layout (images/<name>.tif and masks/<name>.png)")


def bbbc039_names(root: str | os.PathLike) -> list[str]:
    """Image names (file stems) of a BBBC039 folder.

    Parameters
    ----------
    root : str or os.PathLike
        Folder with ``images/`` and ``masks/``.

    Returns
    -------
    list of str
        Sorted names.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "images").mkdir(); (root / "masks").mkdir()
    >>> (root / "images" / "w1.tif").touch()
    >>> bbbc039_names(root)
    ['w1']
    """
    base = _bbbc039_root(root)
    return sorted(p.stem for p in (base / "images").iterdir() if p.suffix.lower() in _TIFF_SUFFIXES)


def _bbbc039_labels(path: Path) -> np.ndarray:
    """Instance labels from a BBBC039 mask: 8-connected components of each red-channel colour."""
    colours = _read_file_array(path)
    colours = colours[..., 0] if colours.ndim == 3 else colours  # red channel (RGB order)
    labels = np.zeros(colours.shape, np.int32)
    count = 0
    for colour in np.unique(colours):
        if colour == 0:
            continue
        n, components = cv2.connectedComponents((colours == colour).astype(np.uint8), connectivity=8)
        inside = components > 0
        labels[inside] = components[inside] + count
        count += n - 1
    return labels


def read_bbbc039(root: str | os.PathLike, names: Iterable[str] | None = None, progress: bool = True) -> list[Sample]:
    """Read whole images and instance labels in the BBBC039 layout.

    Layout: ``images/<name>.tif`` (16-bit, 12-bit values) and ``masks/<name>.png`` whose red channel
    colours nuclei with 1, 2, 3 so touching nuclei differ; each 8-connected component of one colour
    is one nucleus.

    Parameters
    ----------
    root : str or os.PathLike
        Folder with ``images/`` and ``masks/``.
    names : iterable of str, optional
        Image names (file stems) to read (default: all).
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of (str, numpy.ndarray, numpy.ndarray)
        ``(name, image (H, W) uint16, labels (H, W) int32)``, sorted by name.

    Raises
    ------
    ValueError
        For a missing layout, unknown names, a missing mask or a size mismatch.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "images").mkdir(); (root / "masks").mkdir()
    >>> tifffile.imwrite(root / "images" / "w1.tif", np.full((3, 4), 110, np.uint16))
    >>> red = np.array([[1, 1, 2, 0], [0, 0, 2, 0], [1, 0, 0, 0]], np.uint8)   # touching 1|2
    >>> rgba = np.zeros((3, 4, 4), np.uint8); rgba[..., 0] = red; rgba[..., 3] = 255
    >>> _ = cv2.imwrite(str(root / "masks" / "w1.png"), rgba[..., [2, 1, 0, 3]])
    >>> read_bbbc039(root, progress=False)[0][2].tolist()
    [[1, 1, 3, 0], [0, 0, 3, 0], [2, 0, 0, 0]]
    """
    base = _bbbc039_root(root)
    images = {p.stem: p for p in (base / "images").iterdir() if p.suffix.lower() in _TIFF_SUFFIXES}
    samples = []
    for name in _progress(_select(sorted(images), names, str(base)), "read bbbc039", progress):
        mask_path = base / "masks" / f"{name}.png"
        if not mask_path.exists():
            raise ValueError(f"{mask_path}: no mask for image {images[name].name}")
        image = read_image(images[name])
        labels = _bbbc039_labels(mask_path)
        if labels.shape != image.shape:
            raise ValueError(f"{mask_path}: mask is {labels.shape} but the image is {image.shape}")
        samples.append((name, image, labels))
    return samples


def _label_stem(stem: str) -> str:
    """The image stem a label file belongs to (``x_labels``, ``x_mask`` ... -> ``x``)."""
    for ending in _LABEL_STEM_ENDINGS:
        if stem.lower().endswith(ending) and len(stem) > len(ending):
            return stem[: -len(ending)]
    return stem


def _match_pairs(images_dir: str | os.PathLike, labels_dir: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """Map each image stem to its (image file, label file); ValueError for anything unmatched."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise ValueError(f"{folder}: folder not found")
    same_folder = images_dir.resolve() == labels_dir.resolve()
    image_files: dict[str, Path] = {}
    label_files: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if same_folder and _label_stem(path.stem) != path.stem:
            continue
        if path.stem in image_files:
            raise ValueError(f"{path}: two images share the name {path.stem!r}")
        image_files[path.stem] = path
    for path in sorted(labels_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        candidate = _label_stem(path.stem)
        if same_folder and candidate == path.stem:
            continue  # an image, listed above
        stem = candidate if same_folder or candidate in image_files else path.stem
        if stem in label_files:
            raise ValueError(f"{path}: two label files for image {stem!r} ({label_files[stem].name})")
        label_files[stem] = path
    lonely_images = sorted(set(image_files) - set(label_files))
    lonely_labels = sorted(set(label_files) - set(image_files))
    if lonely_images:
        raise ValueError(f"{labels_dir}: no label file for image(s) {', '.join(lonely_images[:3])}")
    if lonely_labels:
        shown = ", ".join(label_files[stem].name for stem in lonely_labels[:3])
        raise ValueError(f"{images_dir}: no image for label file(s) {shown}")
    if not image_files:
        raise ValueError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return {stem: (image_files[stem], label_files[stem]) for stem in image_files}


def pair_names(images_dir: str | os.PathLike, labels_dir: str | os.PathLike) -> list[str]:
    """Image stems of an image folder matched with a label folder (see :func:`read_pairs`).

    Parameters
    ----------
    images_dir, labels_dir : str or os.PathLike
        The two folders (they may be the same).

    Returns
    -------
    list of str
        Sorted stems.

    Raises
    ------
    ValueError
        For unmatched files.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("a.tif", "a_labels.tif", "b.png", "b_mask.png"):
    ...     (folder / name).touch()
    >>> pair_names(folder, folder)
    ['a', 'b']
    """
    return sorted(_match_pairs(images_dir, labels_dir))


def read_pairs(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    names: Iterable[str] | None = None,
    progress: bool = True,
) -> list[Sample]:
    """Read images and their label images matched by file name.

    An image ``<stem>.<ext>`` (TIFF, PNG, JPEG) is matched with a label file named ``<stem>``,
    ``<stem>_labels``, ``<stem>_label``, ``<stem>_mask`` or ``<stem>_masks`` (TIFF or PNG) in
    ``labels_dir``. Label files are read with :func:`read_labels` (ids, or binary masks split
    into connected components).

    Parameters
    ----------
    images_dir, labels_dir : str or os.PathLike
        The two folders (they may be the same).
    names : iterable of str, optional
        Stems to read (default: all).
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of (str, numpy.ndarray, numpy.ndarray)
        ``(stem, image (H, W), labels (H, W) int32)``, sorted by stem.

    Raises
    ------
    ValueError
        For unmatched or unreadable files, or an image and labels of different sizes.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = cv2.imwrite(str(folder / "cell.png"), np.full((3, 3), 80, np.uint8))
    >>> _ = cv2.imwrite(str(folder / "cell_mask.png"), np.eye(3, dtype=np.uint8) * 255)
    >>> [(stem, int(labels.max())) for stem, _, labels in read_pairs(folder, folder, progress=False)]
    [('cell', 1)]
    """
    pairs = _match_pairs(images_dir, labels_dir)
    samples = []
    for stem in _progress(_select(sorted(pairs), names, str(images_dir)), "read pairs", progress):
        image_path, label_path = pairs[stem]
        image = read_image(image_path)
        labels = read_labels(label_path)
        if labels.shape != image.shape:
            raise ValueError(f"{label_path}: labels are {labels.shape} but {image_path.name} is {image.shape}")
        samples.append((stem, image, labels))
    return samples


def tile_starts(length: int, size: int) -> list[int]:
    """Start offsets of the fewest ``size`` windows covering ``length``, spread evenly (overlapping).

    Parameters
    ----------
    length : int
        Image extent along one axis.
    size : int
        Tile extent.

    Returns
    -------
    list of int
        ``[0]`` when ``length <= size`` (the image is padded), else ``ceil(length / size)`` starts
        from 0 to ``length - size``.

    Examples
    --------
    >>> tile_starts(256, 128), tile_starts(520, 128), tile_starts(100, 128)
    ([0, 128], [0, 98, 196, 294, 392], [0])
    """
    if length <= size:
        return [0]
    count = math.ceil(length / size)
    return [int(v) for v in np.round(np.linspace(0, length - size, count))]


def tile_image(image: np.ndarray, labels: np.ndarray, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Cut an image and its labels into ``size`` x ``size`` tiles covering the whole image.

    Tiles overlap where the image is not a multiple of ``size`` (:func:`tile_starts`). An image
    smaller than ``size`` along an axis is padded at the end: by reflection for the image, with 0
    for the labels. Each tile's labels are renumbered 1..n.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) image, any dtype (kept).
    labels : numpy.ndarray
        (H, W) instance labels.
    size : int
        Tile size.

    Returns
    -------
    tuple of numpy.ndarray
        ``(image_tiles (T, size, size), label_tiles (T, size, size) int32)``, row-major order.

    Examples
    --------
    >>> image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    >>> labels = np.array([[0, 7, 7, 0], [0, 0, 0, 0], [9, 0, 0, 0]])
    >>> tiles, label_tiles = tile_image(image, labels, size=2)
    >>> tiles.shape, label_tiles[0].tolist(), label_tiles[1].tolist(), label_tiles[2].tolist()
    ((4, 2, 2), [[0, 1], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [1, 0]])
    >>> tile_image(image, labels, size=5)[0][0, :, 4].tolist()   # reflection padding at the end
    [2, 6, 10, 6, 2]
    """
    from skimage.segmentation import relabel_sequential

    if image.shape != labels.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be the same 2-D shape")
    pad = [(0, max(0, size - extent)) for extent in image.shape]
    if any(after for _, after in pad):
        image = np.pad(image, pad, mode="reflect" if min(image.shape) > 1 else "edge")
        labels = np.pad(labels, pad, mode="constant")
    image_tiles, label_tiles = [], []
    for top in tile_starts(image.shape[0], size):
        for left in tile_starts(image.shape[1], size):
            image_tiles.append(image[top : top + size, left : left + size])
            tile = np.ascontiguousarray(labels[top : top + size, left : left + size]).astype(np.int32)
            label_tiles.append(relabel_sequential(tile)[0].astype(np.int32))
    return np.stack(image_tiles), np.stack(label_tiles)


def _count_nuclei(labels: np.ndarray) -> int:
    """Number of distinct nonzero labels."""
    ids = np.unique(labels)
    return int(np.count_nonzero(ids))


def _write_tiles(samples: Sequence[Sample], out: str | os.PathLike, size: int) -> dict[str, Any]:
    """Tile whole-image samples and save them as one ``.npz`` with labels; return a summary."""
    if not samples:
        raise ValueError(f"{out}: no images to import")
    if size < 8:
        raise ValueError(f"tile size must be at least 8, got {size}")
    image_tiles, label_tiles = [], []
    for _, image, labels in samples:
        tiles, tile_labels = tile_image(image, labels, size)
        image_tiles.append(tiles)
        label_tiles.append(tile_labels)
    dtype = np.result_type(*[tiles.dtype for tiles in image_tiles])
    images = np.concatenate(image_tiles).astype(np.float32 if dtype.kind == "f" else dtype, copy=False)
    labels = np.concatenate(label_tiles)
    save_npz(out, images, labels > 0, labels)
    return {
        "images": len(samples),
        "tiles": int(len(images)),
        "nuclei": int(sum(_count_nuclei(sample[2]) for sample in samples)),
        "tile_nuclei": int(labels.reshape(len(labels), -1).max(axis=1).sum()),
        "size": int(size),
        "out": str(out),
    }


def import_dsb2018(
    root: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 128,
    names: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Import the 2018 Data Science Bowl layout (:func:`read_dsb2018`) as tiled ``.npz`` with labels.

    Parameters
    ----------
    root : str or os.PathLike
        ``stage1_train`` or the folder containing it.
    out : str or os.PathLike
        Output ``.npz`` (written atomically; see :func:`save_npz`).
    size : int
        Tile size (:func:`tile_image`).
    names : iterable of str, optional
        Image ids to include (e.g. the training part of :func:`real_split`).
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``images``, ``tiles``, ``nuclei`` (in the whole images), ``tile_nuclei`` (summed over
        tiles; nuclei in overlaps or cut by tile borders count more than once), ``size``, ``out``.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for folder in ("a1/images", "a1/masks"):
    ...     (root / folder).mkdir(parents=True)
    >>> _ = cv2.imwrite(str(root / "a1/images/a1.png"), np.full((20, 30, 4), 9, np.uint8))
    >>> mask = np.zeros((20, 30), np.uint8); mask[2:5, 2:5] = 255
    >>> _ = cv2.imwrite(str(root / "a1/masks/m0.png"), mask)
    >>> summary = import_dsb2018(root, root / "dsb.npz", size=16, progress=False)
    >>> summary["images"], summary["tiles"], summary["nuclei"]
    (1, 4, 1)
    """
    return _write_tiles(read_dsb2018(root, names, progress), out, size)


def import_bbbc039(
    root: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 128,
    names: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Import the BBBC039 layout (:func:`read_bbbc039`) as tiled ``.npz`` with labels.

    Parameters
    ----------
    root : str or os.PathLike
        Folder with ``images/`` and ``masks/``.
    out : str or os.PathLike
        Output ``.npz`` (written atomically).
    size : int
        Tile size (:func:`tile_image`).
    names : iterable of str, optional
        Image names to include.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        Summary as in :func:`import_dsb2018`.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "images").mkdir(); (root / "masks").mkdir()
    >>> tifffile.imwrite(root / "images" / "w1.tif", np.full((10, 10), 110, np.uint16))
    >>> rgba = np.zeros((10, 10, 4), np.uint8); rgba[1:3, 1:3, 2] = 1; rgba[1:3, 3:5, 2] = 2
    >>> _ = cv2.imwrite(str(root / "masks" / "w1.png"), rgba)          # BGRA: index 2 is red
    >>> summary = import_bbbc039(root, root / "b.npz", size=8, progress=False)
    >>> summary["tiles"], summary["nuclei"]
    (4, 2)
    """
    return _write_tiles(read_bbbc039(root, names, progress), out, size)


def import_pairs(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 128,
    names: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Import images with matching label images (:func:`read_pairs`) as tiled ``.npz`` with labels.

    Parameters
    ----------
    images_dir, labels_dir : str or os.PathLike
        Image folder and label folder (may be the same).
    out : str or os.PathLike
        Output ``.npz`` (written atomically).
    size : int
        Tile size (:func:`tile_image`).
    names : iterable of str, optional
        Image stems to include.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        Summary as in :func:`import_dsb2018`.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = cv2.imwrite(str(folder / "a.png"), np.full((12, 12), 80, np.uint8))
    >>> labels = np.zeros((12, 12), np.uint16); labels[1:4, 1:4] = 5; labels[6:9, 6:9] = 9
    >>> _ = cv2.imwrite(str(folder / "a_labels.png"), labels)
    >>> summary = import_pairs(folder, folder, folder / "p.npz", size=12, progress=False)
    >>> summary["tiles"], summary["nuclei"]
    (1, 2)
    """
    return _write_tiles(read_pairs(images_dir, labels_dir, names, progress), out, size)


# --------------------------------------------------------------------------------------------
# 6. Splits
# --------------------------------------------------------------------------------------------


def real_split(names: Iterable[str], test_fraction: float = 0.3, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split image ids into train and test by a seeded hash of each id.

    An id's side depends only on the id and the seed (SHA-256 of ``f"{seed}:{name}"``), never on the
    other ids: adding or removing images leaves every other image where it was.

    Parameters
    ----------
    names : iterable of str
        Image ids.
    test_fraction : float
        Expected share of ids in the test part, in [0, 1].
    seed : int
        Changes the split.

    Returns
    -------
    tuple of list of str
        ``(train_names, test_names)``, each sorted.

    Examples
    --------
    >>> train, test = real_split([f"img{i}" for i in range(1000)], test_fraction=0.3)
    >>> len(test) in range(250, 350), set(train).isdisjoint(test)
    (True, True)
    >>> real_split(train[:5] + test[:5])[1] == test[:5]     # the other ids do not matter
    True
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    train, test = [], []
    for name in sorted(set(str(n) for n in names)):
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        position = int.from_bytes(digest[:8], "big") / 2.0**64
        (test if position < test_fraction else train).append(name)
    return train, test


def split_indices(
    n: int, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle ``range(n)`` with a seed and cut it into train, validation and test indices.

    Parameters
    ----------
    n : int
        Number of items.
    seed : int
        Seed of the shuffle.
    fractions : tuple of float
        Shares of train, validation and test; they must sum to 1. Validation gets
        ``round(f_val * n)``, train ``round(f_train * n)``, test the rest.

    Returns
    -------
    tuple of numpy.ndarray
        Three sorted int64 index arrays that together hold each index once.

    Examples
    --------
    >>> train, val, test = split_indices(10, seed=0)
    >>> len(train), len(val), len(test), sorted(np.concatenate([train, val, test]).tolist()) == list(range(10))
    (8, 1, 1, True)
    """
    if n < 0 or len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"need n >= 0 and three non-negative fractions summing to 1, got n={n}, {fractions}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = min(n, round(fractions[0] * n))
    n_val = min(n - n_train, round(fractions[1] * n))
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    return tuple(np.sort(part).astype(np.int64) for part in parts)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# 7. Download of the public archives
# --------------------------------------------------------------------------------------------

# Expected SHA-256 of each archive; None = unknown here: the first download's hash is recorded in
# the cache and later downloads must match it ("trust on first use").
DOWNLOADS: dict[str, dict[str, Any]] = {
    "dsb2018": {
        "archives": [("stage1_train.zip", "https://data.broadinstitute.org/bbbc/BBBC038/stage1_train.zip", None)],
        "root": "stage1_train",
    },
    "bbbc039": {
        "archives": [
            ("images.zip", "https://data.broadinstitute.org/bbbc/BBBC039/images.zip", None),
            ("masks.zip", "https://data.broadinstitute.org/bbbc/BBBC039/masks.zip", None),
        ],
        "root": ".",
    },
}


def default_cache_dir() -> Path:
    """Cache folder for downloads: ``$NUCLEILIB_CACHE`` or ``~/.cache/nucleilib``.

    Returns
    -------
    pathlib.Path
        The folder (not created).

    Examples
    --------
    >>> "NUCLEILIB_CACHE" in os.environ or default_cache_dir() == Path.home() / ".cache" / "nucleilib"
    True
    """
    override = os.environ.get("NUCLEILIB_CACHE")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "nucleilib"


def _sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, target: Path, expected: str | None, progress: bool) -> str:
    """Stream ``url`` into ``target`` atomically, checking SHA-256 when ``expected``; return the hash."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    try:
        with atomic_path(target) as tmp:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as handle:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        handle.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            if expected is not None and digest.hexdigest() != expected.lower():
                raise ValueError(
                    f"download of {url} has SHA-256 {digest.hexdigest()} but {expected} was expected; file removed"
                )
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise RuntimeError(f"download of {url} failed: {reason}") from None
    return digest.hexdigest()


def _cached_archive(cache_dir: Path, filename: str, url: str, sha256: str | None, progress: bool) -> Path:
    """The archive in the cache, downloaded if needed and checked against the given or recorded hash."""
    target = cache_dir / filename
    record = cache_dir / f"{filename}.sha256"
    expected = sha256 or (record.read_text().split()[0] if record.exists() else None)
    if target.exists():
        actual = _sha256_file(target)
        if expected is None or actual == expected.lower():
            if not record.exists():
                atomic_write_bytes(record, f"{actual}  {filename}\n".encode())
            return target
        target.unlink()  # corrupt or stale cache entry: fetch again
    actual = _fetch(url, target, expected, progress)
    if not record.exists():
        atomic_write_bytes(record, f"{actual}  {filename}\n".encode())
    return target


def _safe_extract(archive: Path, destination: Path) -> None:
    """Unpack a zip into ``destination`` atomically, refusing members that would land outside it."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.filename.startswith("__MACOSX/")]
            names = [m.filename for m in members]
            for name in names:
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise ValueError(f"{archive}: member {name!r} would be written outside the folder")
            prefix = destination.name + "/"
            # The archive may hold a top folder named like the destination (images.zip -> images/...)
            inside = all(name.startswith(prefix) for name in names)
            staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
            staging.chmod(0o755)  # mkdtemp makes it private; it may become the data folder itself
            try:
                root = staging.resolve()
                for member in members:
                    target = (root / member.filename).resolve()
                    if root not in target.parents and target != root:
                        raise ValueError(f"{archive}: member {member.filename!r} would be written outside the folder")
                    zipped.extract(member, root)
                if destination.exists():
                    shutil.rmtree(destination)
                os.replace(staging / destination.name if inside else staging, destination)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive}: not a valid zip archive ({error}); delete it to download again") from None


def download(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    url: str | None = None,
    sha256: str | None = None,
    size: int = 128,
    progress: bool = True,
) -> Path:
    """Download a public data set (cached, hash-checked, atomic), unpack it and import it to ``.npz``.

    Sources (:data:`DOWNLOADS`): ``dsb2018`` (2018 Data Science Bowl stage1_train, BBBC038) and
    ``bbbc039``. Archives are streamed to a temporary file in the cache with a progress bar and
    renamed only when complete; an archive already in the cache is reused. Without a known hash,
    the first download's SHA-256 is recorded beside it (``<archive>.sha256``) and later downloads
    must match it. Archives are unpacked without letting any member escape the folder, then
    imported with :func:`import_dsb2018` or :func:`import_bbbc039`.

    Parameters
    ----------
    name : str
        ``"dsb2018"`` or ``"bbbc039"``.
    cache_dir : str or os.PathLike, optional
        Cache folder (default :func:`default_cache_dir`).
    out : str or os.PathLike, optional
        Output ``.npz`` (default ``cache_dir/<name>.npz``).
    url : str, optional
        Fetch one zip archive from here instead, holding the whole layout of ``name`` (a mirror).
    sha256 : str, optional
        Expected SHA-256 of that archive (or of the single default archive).
    size : int
        Tile size for the import.
    progress : bool
        Show progress bars.

    Returns
    -------
    pathlib.Path
        The written ``.npz``.

    Raises
    ------
    ValueError
        Unknown name, hash mismatch (the partial file is removed) or a bad archive.
    RuntimeError
        The server could not be reached or answered with an error (one-line message).

    Examples
    --------
    >>> download("mnist")
    Traceback (most recent call last):
    ...
    ValueError: unknown data set 'mnist'; choose one of bbbc039, dsb2018
    """
    if name not in DOWNLOADS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(sorted(DOWNLOADS))}")
    source = DOWNLOADS[name]
    if sha256 is not None and url is None and len(source["archives"]) > 1:
        raise ValueError(f"{name} has {len(source['archives'])} archives: give sha256 together with url (a mirror)")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    base = cache / name
    base.mkdir(parents=True, exist_ok=True)
    if url is not None:
        archives = [(f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:12]}.zip", url, sha256)]
    elif sha256 is not None and len(source["archives"]) == 1:
        archives = [(source["archives"][0][0], source["archives"][0][1], sha256)]
    else:
        archives = source["archives"]
    for filename, archive_url, expected in archives:
        archive = _cached_archive(cache, filename, archive_url, expected, progress)
        marker = base / f".unpacked-{filename}"
        stamp = f"{_sha256_file(archive)}\n"
        if not marker.exists() or marker.read_text() != stamp:
            # stage1_train.zip -> base/stage1_train, images.zip -> base/images; a mirror -> base/mirror
            destination = base / Path(filename).stem if url is None else base / "mirror"
            _safe_extract(archive, destination)
            atomic_write_bytes(marker, stamp.encode())
    root = base / "mirror" if url is not None else base
    out_path = Path(out) if out is not None else cache / f"{name}.npz"
    importer: Callable[..., dict[str, Any]] = import_dsb2018 if name == "dsb2018" else import_bbbc039
    importer(root, out_path, size=size, progress=progress)
    return out_path


# --------------------------------------------------------------------------------------------
# 8. Augmentation and statistics
# --------------------------------------------------------------------------------------------


def augment_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.1,
    contrast: float = 0.25,
    gamma: float = 0.3,
    noise: float = 0.03,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and 90-degree rotations (image and target alike) plus intensity changes (image only).

    Each sample gets one of the 8 symmetries of the square (optional transpose, then optional
    vertical and horizontal flip; only flips when H != W), identical for its image and target.
    Images then get a random gamma, contrast around their mean, brightness shift and Gaussian
    noise, and are clipped to [0, 1]. Everything is drawn from ``generator``: the same generator
    state gives the same result. Inputs are not modified.

    Parameters
    ----------
    images : torch.Tensor
        (B, 1, H, W) float images in [0, 1].
    targets : torch.Tensor
        (B, C, H, W) targets (any dtype); only moved, never changed in value.
    generator : torch.Generator
        Source of randomness.
    brightness : float
        Maximum absolute brightness shift.
    contrast : float
        Contrast factor drawn from [1 - contrast, 1 + contrast].
    gamma : float
        Gamma drawn log-uniformly from [1 / (1 + gamma), 1 + gamma].
    noise : float
        Maximum standard deviation of the added Gaussian noise (drawn per sample from [0, noise]).

    Returns
    -------
    tuple of torch.Tensor
        ``(images, targets)`` with the input shapes and dtypes.

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
    """A torch ``Dataset`` of image/target pairs, augmented on the fly with :func:`augment_batch`.

    Sample ``i`` of epoch ``e`` is augmented with a generator seeded from ``(seed, e, i)``, so a run is
    reproducible whatever the ``DataLoader`` order or number of workers; call :meth:`set_epoch` each epoch
    for fresh augmentations. (``nucleilib.train.fit`` augments whole batches itself, which is faster on a
    CPU; this class is for users who build their own training loop.)

    Parameters
    ----------
    images : numpy.ndarray or torch.Tensor
        (N, 1, H, W) float images in [0, 1], as :func:`load_npz` returns them.
    targets : numpy.ndarray or torch.Tensor
        (N, C, H, W) targets (masks, and optionally more channels).
    augment : bool
        Apply random symmetries (image and target alike) and intensity changes (image only).
    seed : int
        Seed of the augmentation.

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


def _touching_fraction(labels: np.ndarray) -> tuple[int, int]:
    """(nuclei touching another nucleus, all nuclei) with 8-neighbourhood contact."""
    touched: set[int] = set()
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = labels[max(dy, 0) :, max(dx, 0) : labels.shape[1] + min(dx, 0)]
        b = labels[: labels.shape[0] - dy, max(-dx, 0) : labels.shape[1] - max(dx, 0)]
        contact = (a != b) & (a > 0) & (b > 0)
        touched.update(np.unique(a[contact]).tolist())
        touched.update(np.unique(b[contact]).tolist())
    return len(touched), _count_nuclei(labels)


def _axis_ratios(labels: np.ndarray) -> np.ndarray:
    """Major/minor axis ratio of each nucleus from second moments (bincount, vectorised)."""
    flat = labels.ravel()
    ys, xs = np.indices(labels.shape)
    n = np.bincount(flat)
    present = np.flatnonzero(n)
    present = present[present > 0]
    if present.size == 0:
        return np.zeros(0)
    sums = [np.bincount(flat, weights=w.ravel(), minlength=len(n)) for w in (ys, xs, ys * ys, xs * xs, ys * xs)]
    count = n[present].astype(np.float64)
    my, mx = sums[0][present] / count, sums[1][present] / count
    vyy = sums[2][present] / count - my**2 + 1 / 12  # + 1/12: variance of a unit pixel
    vxx = sums[3][present] / count - mx**2 + 1 / 12
    vxy = sums[4][present] / count - my * mx
    half_trace, root = (vyy + vxx) / 2, np.sqrt(((vyy - vxx) / 2) ** 2 + vxy**2)
    return np.sqrt((half_trace + root) / np.maximum(half_trace - root, 1e-6))


def _laplacian_noise(image: np.ndarray) -> float:
    """Immerkaer's noise sigma: mean absolute response of a Laplacian-difference kernel."""
    if min(image.shape) < 3:
        return 0.0
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(image.astype(np.float32), -1, kernel)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


def dataset_stats(
    images: np.ndarray | Sequence[np.ndarray], labels: np.ndarray | Sequence[np.ndarray]
) -> dict[str, float]:
    """Statistics of a labelled data set, to compare synthetic with real data side by side.

    Each image is normalized with :func:`normalize_image` first, so raw and normalized input
    give the same numbers. Nucleus sizes are pooled over all nuclei; per-image measures are the
    median over images. Nuclei cut by image borders count as they are.

    Parameters
    ----------
    images : numpy.ndarray or sequence of numpy.ndarray
        (N, H, W) or (N, 1, H, W) array, or a list of 2-D images of any sizes.
    labels : numpy.ndarray or sequence of numpy.ndarray
        Matching instance labels (0 = background).

    Returns
    -------
    dict of str to float
        ``n_images``; ``nuclei_total``; ``nuclei_per_image_min/median/max``; ``area_p5/p50/p95``
        (pixels); ``radius_median`` (equivalent radius sqrt(area / pi) of the median area);
        ``axis_ratio_median`` (major/minor axis); ``touching_fraction`` (nuclei touching another);
        ``foreground_fraction``; ``foreground_level`` and ``background_level`` (median normalized
        intensity inside and outside nuclei); ``contrast`` (their difference);
        ``brightness_cv`` (spread of the mean intensity of nuclei within an image);
        ``noise`` (robust std of the background, 1.4826 x MAD); ``noise_laplacian`` (Immerkaer's
        estimate over the whole image); ``snr`` (contrast / noise).

    Examples
    --------
    >>> image = np.full((20, 20), 100, np.uint16); labels = np.zeros((20, 20), np.int32)
    >>> image[2:6, 2:6] = 900; labels[2:6, 2:6] = 1                      # one 4x4 nucleus
    >>> image[10:13, 10:13] = 500; labels[10:13, 10:13] = 2             # one 3x3 nucleus
    >>> stats = dataset_stats([image], [labels])
    >>> stats["nuclei_per_image_median"], stats["area_p50"], stats["background_level"], stats["touching_fraction"]
    (2.0, 12.5, 0.0, 0.0)
    """
    images_list = [np.asarray(image).squeeze() for image in images]
    labels_list = [np.asarray(label).squeeze() for label in labels]
    if len(images_list) != len(labels_list) or not images_list:
        raise ValueError(
            f"need the same positive number of images and labels, got {len(images_list)} and {len(labels_list)}"
        )
    per_image: dict[str, list[float]] = {key: [] for key in (
        "count", "fg_fraction", "fg_level", "bg_level", "contrast", "noise", "noise_laplacian", "snr", "brightness_cv")}
    areas, ratios = [], []
    touching = total = 0
    for image, label in zip(images_list, labels_list):
        if image.shape != label.shape or image.ndim != 2:
            raise ValueError(f"image {image.shape} and labels {label.shape} must be the same 2-D shape")
        label = label.astype(np.int64)
        norm = normalize_image(image)
        sizes = np.bincount(label.ravel())
        ids = np.flatnonzero(sizes[1:]) + 1
        areas.extend(sizes[ids].tolist())
        ratios.extend(_axis_ratios(label).tolist())
        touched, count = _touching_fraction(label)
        touching, total = touching + touched, total + count
        foreground = label > 0
        per_image["count"].append(count)
        per_image["fg_fraction"].append(float(foreground.mean()))
        per_image["noise_laplacian"].append(_laplacian_noise(norm))
        if count == 0 or foreground.all():
            continue
        # background away from nuclei edges (3 px) so blur at the borders does not count as noise
        near = cv2.dilate(foreground.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        background = norm[~near] if (~near).any() else norm[~foreground]
        fg_level, bg_level = float(np.median(norm[foreground])), float(np.median(background))
        noise = float(1.4826 * np.median(np.abs(background - bg_level)))
        means = np.bincount(label.ravel(), weights=norm.ravel())[ids] / sizes[ids]
        per_image["fg_level"].append(fg_level)
        per_image["bg_level"].append(bg_level)
        per_image["contrast"].append(fg_level - bg_level)
        per_image["noise"].append(noise)
        per_image["snr"].append((fg_level - bg_level) / max(noise, 1e-3))
        per_image["brightness_cv"].append(float(means.std() / max(means.mean(), 1e-6)))

    def median(key: str) -> float:
        return float(np.median(per_image[key])) if per_image[key] else float("nan")

    area = np.asarray(areas, np.float64) if areas else np.full(1, np.nan)
    counts = np.asarray(per_image["count"], np.float64)
    return {
        "n_images": float(len(images_list)),
        "nuclei_total": float(counts.sum()),
        "nuclei_per_image_min": float(counts.min()),
        "nuclei_per_image_median": float(np.median(counts)),
        "nuclei_per_image_max": float(counts.max()),
        "area_p5": float(np.percentile(area, 5)),
        "area_p50": float(np.percentile(area, 50)),
        "area_p95": float(np.percentile(area, 95)),
        "radius_median": float(np.sqrt(np.percentile(area, 50) / np.pi)),
        "axis_ratio_median": float(np.median(ratios)) if ratios else float("nan"),
        "touching_fraction": float(touching / total) if total else 0.0,
        "foreground_fraction": median("fg_fraction"),
        "foreground_level": median("fg_level"),
        "background_level": median("bg_level"),
        "contrast": median("contrast"),
        "brightness_cv": median("brightness_cv"),
        "noise": median("noise"),
        "noise_laplacian": median("noise_laplacian"),
        "snr": median("snr"),
    }


# --------------------------------------------------------------------------------------------
# 9. The built-in data set, cached in the project's data/ folder
# --------------------------------------------------------------------------------------------


def project_root() -> Path:
    """The project folder: the nearest folder at or above the working directory holding ``nucleilib/``.

    A notebook runs in ``notebooks/`` and the command line usually in the project itself; both find
    the same root. Falls back to the working directory.

    Returns
    -------
    Path
        The project folder.

    Examples
    --------
    >>> project_root().is_dir()
    True
    """
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "nucleilib" / "__init__.py").is_file()), here)


def builtin_dataset(n: int = 2000, size: int = 128, seed: int = 0, folder: str | os.PathLike | None = None) -> tuple[np.ndarray, ...]:
    """The synthetic data set, generated once and then loaded from ``data/nuclei_n<N>_s<size>_seed<seed>.npz``.

    Parameters
    ----------
    n, size, seed : int
        As for :func:`nucleilib.synth.make_dataset`.
    folder : path-like, optional
        Cache folder (default: ``data/`` in :func:`project_root`).

    Returns
    -------
    tuple of numpy.ndarray
        ``images, masks, labels`` as :func:`load_npz` returns them.

    Examples
    --------
    >>> images, masks, labels = builtin_dataset(n=2, size=32, folder=tempfile.mkdtemp())
    >>> images.shape, masks.shape, labels.shape
    ((2, 1, 32, 32), (2, 1, 32, 32), (2, 32, 32))
    """
    from nucleilib import synth

    folder = Path(folder) if folder is not None else project_root() / "data"
    path = folder / f"nuclei_n{n}_s{size}_seed{seed}.npz"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        made = synth.make_dataset(n=n, size=size, seed=seed)
        save_npz(path, made["images"], made["masks"], made["labels"])
    return load_npz(path)
