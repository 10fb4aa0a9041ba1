"""Files (numpy only): atomic writes, file hashes, images and label images read from TIFF, PNG and JPEG files,
and the ``.npz`` contract (:func:`save_npz`, :func:`load_npz`) that every data set of the project follows.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nucleilib.data import label_components, normalize_batch

# A damaged file is reported by name with a ValueError; OpenCV's own warnings would only repeat it, unnamed.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary file beside ``path`` (same suffix); rename it onto ``path`` only on success.

    On any error, ``KeyboardInterrupt`` included, the temporary file is removed and ``path`` left untouched:
    a reader never sees a half-written file. Missing parent folders are created. An OSError names ``path``, never
    the temporary file (:func:`remove_stale_temporaries` removes those a killed process left).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> [(p.name, p.read_text()) for p in folder.iterdir()]
    [('a.txt', 'done')]
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while tmp is None:
            tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
            try:  # not mkstemp: the final file gets the usual permissions (umask)
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                tmp = None
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:  # named by the file asked for
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise


def remove_stale_temporaries(folder: str | os.PathLike, stem: str = "*", recursive: bool = False) -> list[Path]:
    """Remove the temporaries :func:`atomic_path` left in ``folder`` (``recursive``: and below) when killed: of files
    with this ``stem`` (default: any). Call it while no other process writes there. Returns the paths removed.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".a.1f2e3d4c.tmp.tif").write_bytes(b"half"), (folder / "a.tif").write_bytes(b"whole")
    >>> [p.name for p in remove_stale_temporaries(folder)], [p.name for p in folder.iterdir()]
    (['.a.1f2e3d4c.tmp.tif'], ['a.tif'])
    """
    pattern = f".{stem}.*.tmp*"
    stale = [p for p in (Path(folder).rglob if recursive else Path(folder).glob)(pattern) if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def describe_error(error: BaseException) -> str:
    """One line telling a user what went wrong: ``FILE: reason`` for an OSError (no errno), else the first line.

    Examples
    --------
    >>> describe_error(FileExistsError(17, "File exists", "out")), describe_error(ValueError("bad\\nmore"))
    ('out: File exists', 'bad')
    """
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    first = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, MemoryError):
        return f"out of memory ({first})" if first else "out of memory"
    return first or type(error).__name__


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` (replacing it) atomically, with :func:`atomic_path`.

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


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file as 64 hex characters, read in chunks.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "abc.txt"
    >>> _ = target.write_bytes(b"abc")
    >>> file_sha256(target)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def image_2d(image: np.ndarray) -> np.ndarray:
    """The one reduction of an image array to 2-D: (H, W) as it is; (1, H, W) and (H, W, 1) lose the singleton axis.

    Anything else (colour, stacks, an empty array) raises ValueError rather than being guessed at: read colour
    files with :func:`read_image`, which chooses the channel. The dtype is kept.

    Examples
    --------
    >>> image_2d(np.zeros((1, 4, 5))).shape, image_2d(np.zeros((4, 5, 1))).shape
    ((4, 5), (4, 5))
    >>> image_2d(np.zeros((4, 5, 3)))
    Traceback (most recent call last):
    ...
    ValueError: image must be a non-empty 2-D array (or 2-D with a singleton axis), got shape (4, 5, 3)
    """
    image = np.asarray(image)
    if image.ndim == 3 and 1 in (image.shape[0], image.shape[-1]):
        image = image.reshape(image.shape[1:] if image.shape[0] == 1 else image.shape[:-1])
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array (or 2-D with a singleton axis), got shape {image.shape}")
    return image


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF, PNG or JPEG file as (H, W) or channels-last (H, W, C) pixels, C <= 3 (RGB order, alpha dropped).

    TIFF files are read with tifffile, others with OpenCV. The dtype is kept (bool becomes uint8). Channels-first
    (C <= 4, H, W) arrays become channels-last and extra singleton axes are squeezed. ValueError, naming the
    file, when it is missing, empty, truncated, not an image, a stack or a volume.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "bgra.png"
    >>> _ = cv2.imwrite(str(target), np.array([[[1, 2, 3, 255]]], np.uint8))      # OpenCV writes BGRA
    >>> read_pixels(target).tolist()
    [[[3, 2, 1]]]
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: not a file" if path.exists() else f"{path}: file not found")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path}: file is empty (0 bytes)")
    if path.suffix.lower() in TIFF_SUFFIXES or data[:4] in _TIFF_MAGIC:
        import tifffile  # imported here: only TIFF files need it
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
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 3 and array.shape[2] > 4 and array.shape[0] <= 4:
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        return array
    if array.ndim != 3 or array.shape[2] > 4:
        raise ValueError(f"{path}: shape {array.shape} is not a 2-D image (stacks and volumes are not supported)")
    return array[..., :3] if array.shape[2] == 4 else array


def read_image(path: str | os.PathLike, channel: int | None = None) -> np.ndarray:
    """Read a 2-D image (H, W) from a TIFF, PNG or JPEG file, keeping its dtype.

    Colour images (RGB, RGBA, or a few channels) are reduced to one channel: ``channel`` if given (RGB
    order), otherwise the first when all are equal, otherwise (RGB) the one with the highest mean (the stain).
    ValueError, naming the file, as for :func:`read_pixels`, for a ``channel`` the image does not have, or for
    two different channels and no ``channel``: which one holds the nuclei is not guessed.

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
    pixels = read_pixels(path)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channel is not None and not 0 <= channel < channels:
        kind = "is gray" if pixels.ndim == 2 else f"has {channels} channels"
        raise ValueError(f"{path}: channel {channel} requested but the image {kind}")
    if pixels.ndim == 2:
        return pixels
    if channel is None:
        same = all(np.array_equal(pixels[..., 0], pixels[..., c]) for c in range(1, channels))
        if channels == 2 and not same:
            raise ValueError(f"{path}: has 2 channels; name the one with the nuclei (count --channel 0 or 1)")
        channel = 0 if same else int(np.argmax(pixels.reshape(-1, channels).mean(axis=0)))
    return np.ascontiguousarray(pixels[..., channel])


def _as_nhw(array: np.ndarray, key: str, where: str) -> np.ndarray:
    """Bring (N,H,W), (N,H,W,1) or (N,1,H,W) to (N,H,W); ValueError for anything else."""
    if array.ndim == 3:
        return array
    if array.ndim == 4 and 1 in (array.shape[1], array.shape[3]):
        return array[:, 0] if array.shape[1] == 1 else array[..., 0]
    raise ValueError(f"{where}: '{key}' has shape {array.shape}; expected (N, H, W), (N, H, W, 1) or (N, 1, H, W)")


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
        levels, choices = np.unique(masks), "{0,1}, {0,255} or bool"
        if len(levels) > 2:
            shown = ", ".join(str(v) for v in levels[:5].tolist())
            raise ValueError(f"{where}: 'masks' has {len(levels)} levels ({shown}, ...); expected a binary mask "
                             f"({choices}). Instance labels belong in 'labels'.")
        raise ValueError(f"{where}: 'masks' values {levels.tolist()} are not binary; expected {choices}")
    return (masks > 0).astype(np.float32)


def save_npz(path: str | os.PathLike, images: np.ndarray, masks: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write a data set in the ``.npz`` contract to ``path``, compressed and atomically.

    ``images`` (N, H, W) keep their dtype (uint8, uint16 or float; float64 becomes float32); binary ``masks``
    (N, H, W) are stored as uint8 {0, 1}; optional non-negative integer ``labels`` (N, H, W) as uint16 when
    they fit. ValueError for other shapes or labels.

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
    images, masks = np.asarray(images), np.asarray(masks)
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
    # What np.savez_compressed does, but at zlib level 1: much faster for slightly larger files
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
            what = "an object (pickled) array, which is never loaded for safety"
            raise ValueError(f"{where}: '{key}' holds {what}") from None
        raise ValueError(f"{where}: '{key}' cannot be read ({error})") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, KeyError) as error:
        raise ValueError(f"{where}: '{key}' cannot be read, the file looks truncated or corrupt ({error})") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{where}: '{key}' has dtype {array.dtype}; expected numbers")
    if array.size == 0:
        raise ValueError(f"{where}: '{key}' is empty (shape {array.shape})")
    return array


def _open_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The raw ``images``, ``masks`` and ``labels`` (or None) of an npz file; ValueError naming what is wrong."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":
        what = "empty (0 bytes)" if not magic else "an .npy array" if magic == b"\x93NUM" else "not a zip archive"
        raise ValueError(f"{path}: not an .npz data set ({what}); expected keys 'images' and 'masks'")
    try:
        stored = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot be opened as .npz, the file looks truncated or corrupt ({error})") from None
    with stored:
        for key in ("images", "masks"):
            if key not in stored.files:
                raise ValueError(f"{path}: missing key '{key}' (found {sorted(stored.files)})")
        images, masks = _read_npz_array(stored, "images", str(path)), _read_npz_array(stored, "masks", str(path))
        return images, masks, _read_npz_array(stored, "labels", str(path)) if "labels" in stored.files else None


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """Load and validate a data set in the ``.npz`` contract.

    Accepted: ``images`` (N,H,W), (N,H,W,1) or (N,1,H,W) in uint8, uint16 or float; ``masks`` with the same
    N, H, W, binary as {0,1}, {0,255} or bool; optional integer ``labels`` (N,H,W) with 0 = background.
    Nothing pickled is ever loaded. Anything else raises ValueError naming the file, the key and the problem.
    Returns ``(images, masks)``, or ``(images, masks, labels)`` when the file has labels: images float32
    (N,1,H,W) normalized per image with :func:`normalize_image`, masks float32 (N,1,H,W) in {0,1}, labels
    int32 (N,H,W).

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "set.npz"
    >>> np.savez(target, images=np.uint8([[[[0], [100]], [[200], [255]]]]), masks=np.uint8([[[0, 255], [255, 255]]]))
    >>> x, y = load_npz(target)
    >>> x.shape, x.dtype, y[0, 0].tolist()
    ((1, 1, 2, 2), dtype('float32'), [[0.0, 1.0], [1.0, 1.0]])
    >>> np.savez(target, images=np.zeros((2, 4, 4)), masks=np.zeros((3, 4, 4)))
    >>> load_npz(target)
    Traceback (most recent call last):
    ...
    ValueError: ...set.npz: 'masks' has 3 images but 'images' has 2
    """
    where = str(path)
    raw_images, raw_masks, raw_labels = _open_npz(Path(path))
    images, masks = _as_nhw(raw_images, "images", where), _as_nhw(raw_masks, "masks", where)
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


def project_root() -> Path:
    """The project folder: the nearest folder at or above the working directory holding ``nucleilib/``.

    A notebook in ``notebooks/`` and the command line in the project find the same root. Falls back to the
    working directory.

    Examples
    --------
    >>> project_root().is_dir()
    True
    """
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "nucleilib" / "__init__.py").is_file()), here)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read int32 instance labels (0 = background) from a TIFF or PNG label image or binary mask.

    Gray ids (integers, or floats holding whole numbers) are used as they are; a colour label image gets one
    id per distinct colour (black is background); an image with one foreground value (a binary mask such as
    0/255) becomes its 8-connected components. ValueError, naming the file, for unreadable files and
    negative or fractional labels.

    Examples
    --------
    >>> import cv2, tempfile
    >>> target = Path(tempfile.mkdtemp()) / "mask.png"
    >>> _ = cv2.imwrite(str(target), np.array([[255, 255, 0, 0], [0, 0, 0, 255]], np.uint8))   # a binary mask
    >>> read_labels(target).tolist()
    [[1, 1, 0, 0], [0, 0, 0, 2]]
    """
    array = read_pixels(path)
    if array.ndim == 3:
        flat = array.reshape(-1, array.shape[2])
        _, ids = np.unique(flat, axis=0, return_inverse=True)
        ids = ids.reshape(array.shape[:2]).astype(np.int64)
        # black sorts first and so gets id 0 (background); without black every colour is a nucleus
        array = ids if not flat.any(axis=1).all() else ids + 1
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{path}: label image holds fractional or non-finite values")
    if array.min() < 0:
        raise ValueError(f"{path}: label image holds negative values")
    if array.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{path}: label ids exceed 2**31 - 1")
    if len(np.unique(array)) <= 2:  # one foreground value: a binary mask, so its components are the nuclei
        return label_components(array)[1]
    return array.astype(np.int32)
