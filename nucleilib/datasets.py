"""Data sets (numpy only): the built-in synthetic set; the public layouts (2018 Data Science Bowl, BBBC039, folder
pairs), each with ``*_names``, ``read_*`` and ``import_*``; tiling; the seeded split; downloads (cached, hash-checked).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from skimage.segmentation import relabel_sequential

from nucleilib import synth
from nucleilib.data import label_components, tile_starts
from nucleilib.io import (IMAGE_SUFFIXES, TIFF_SUFFIXES, atomic_path, atomic_write_bytes, file_sha256, load_npz,
                          project_root, read_image, read_labels, read_pixels, save_npz)

Sample = tuple[str, np.ndarray, np.ndarray]
_LABEL_STEM_ENDINGS = ("_labels", "_label", "_masks", "_mask")


def _select(available: Sequence[str], names: Iterable[str] | None, where: str, desc: str, progress: bool) -> Any:
    """The requested ``names`` (all when None), sorted, in a progress bar; ValueError for names that are not there."""
    from tqdm.auto import tqdm  # imported here: tqdm.auto is slow to import
    wanted = sorted(available) if names is None else sorted(set(str(name) for name in names))
    missing = sorted(set(wanted) - set(available))
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise ValueError(f"{where}: {len(missing)} requested image(s) not found: {shown}")
    return tqdm(wanted, desc=desc, unit="image", disable=not progress)


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
    """Sorted image ids of a 2018 Data Science Bowl folder (``stage1_train`` or the folder holding it).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp()); (root / "stage1_train" / "b7" / "images").mkdir(parents=True)
    >>> dsb2018_names(root)
    ['b7']
    """
    base = _dsb2018_root(root)
    return sorted(child.name for child in base.iterdir() if (child / "images").is_dir())


def is_fluorescence(pixels: np.ndarray) -> bool:
    """Whether an (H, W) or (H, W, C) image looks like fluorescence: gray, with a dark background.

    The full 2018 Data Science Bowl archive also has colour (H&E) and brightfield images, which a model of bright
    nuclei on a dark field should not learn from. Gray: all colour channels within 2 grey levels of each other;
    dark background: the median pixel is not brighter than the mean (bright nuclei on a dark field pull the mean
    up; a bright field pulls it down).

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


def read_dsb2018(root: str | os.PathLike, names: Iterable[str] | None = None, progress: bool = True,
                 fluorescence_only: bool = True) -> list[Sample]:
    """Read whole images and instance labels in the 2018 Data Science Bowl layout.

    Layout: ``root`` (``stage1_train`` or the folder holding it) has ``<id>/images/<id>.png`` (RGBA,
    R = G = B) and ``<id>/masks/*.png``, one binary mask per nucleus. Mask ``k`` (sorted by file name)
    becomes label ``k + 1``, stray pixels apart from the rest included. Colour (H&E) and brightfield images
    are left out unless ``fluorescence_only=False`` (:func:`is_fluorescence`). ``names``: the ids to read
    (default all). Returns ``(id, image (H, W) uint8, labels (H, W) int32)`` tuples sorted by id.

    Examples
    --------
    >>> import cv2, tempfile
    >>> root = Path(tempfile.mkdtemp()); (root / "a1/images").mkdir(parents=True); (root / "a1/masks").mkdir()
    >>> _ = cv2.imwrite(str(root / "a1/images/a1.png"), np.full((2, 3, 4), 9, np.uint8))
    >>> _ = cv2.imwrite(str(root / "a1/masks/m0.png"), np.array([[255, 0, 0], [0, 0, 255]], np.uint8))  # a stray pixel
    >>> [(name, labels.tolist()) for name, image, labels in read_dsb2018(root, progress=False)]
    [('a1', [[1, 0, 0], [0, 0, 1]])]
    """
    base = _dsb2018_root(root)
    samples = []
    for name in _select(dsb2018_names(base), names, str(base), "read dsb2018", progress):
        image_path = base / name / "images" / f"{name}.png"
        if not image_path.exists():
            found = sorted((base / name / "images").glob("*.png"))
            if len(found) != 1:
                raise ValueError(f"{image_path}: file not found")
            image_path = found[0]
        if fluorescence_only and not is_fluorescence(read_pixels(image_path)):
            continue
        image = read_image(image_path)
        labels = np.zeros(image.shape, np.int32)
        mask_folder = base / name / "masks"
        for index, mask_path in enumerate(sorted(mask_folder.glob("*.png")) if mask_folder.is_dir() else []):
            mask = read_image(mask_path)
            if mask.shape != image.shape:
                raise ValueError(f"{mask_path}: mask is {mask.shape} but the image is {image.shape}")
            labels[mask > 0] = index + 1
        samples.append((name, image, labels))
    return samples


def _bbbc039_root(root: str | os.PathLike) -> Path:
    """The folder holding ``images/`` and ``masks/``: ``root`` or ``root/bbbc039``."""
    for candidate in (Path(root), Path(root) / "bbbc039"):
        if (candidate / "images").is_dir() and (candidate / "masks").is_dir():
            return candidate
    raise ValueError(f"{root}: no BBBC039 layout (images/<name>.tif and masks/<name>.png)")


def bbbc039_names(root: str | os.PathLike) -> list[str]:
    """Sorted image names (file stems) of a BBBC039 folder (``images/`` and ``masks/``).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "images").mkdir(); (root / "masks").mkdir(); (root / "images" / "w1.tif").touch()
    >>> bbbc039_names(root)
    ['w1']
    """
    base = _bbbc039_root(root)
    return sorted(p.stem for p in (base / "images").iterdir() if p.suffix.lower() in TIFF_SUFFIXES)


def _bbbc039_labels(path: Path) -> np.ndarray:
    """Instance labels of a BBBC039 mask: the 8-connected components of each red-channel colour in turn."""
    colours = read_image(path, channel=0)
    labels, offset = np.zeros(colours.shape, np.int32), 0
    for colour in np.unique(colours[colours > 0]):
        count, components = label_components(colours == colour)
        labels[components > 0] = components[components > 0] + offset
        offset += count
    return labels


def read_bbbc039(root: str | os.PathLike, names: Iterable[str] | None = None, progress: bool = True) -> list[Sample]:
    """Read whole images and instance labels in the BBBC039 layout.

    Layout: ``root`` has ``images/<name>.tif`` (16-bit, 12-bit values) and ``masks/<name>.png``, whose
    red channel colours nuclei with 1, 2, 3 so that touching nuclei differ; each 8-connected component of
    one colour is one nucleus. ``names``: the file stems to read (default all). Returns ``(name, image (H, W)
    uint16, labels (H, W) int32)`` tuples sorted by name.

    Examples
    --------
    >>> import cv2, tempfile, tifffile
    >>> root = Path(tempfile.mkdtemp()); (root / "images").mkdir(); (root / "masks").mkdir()
    >>> tifffile.imwrite(root / "images" / "w1.tif", np.full((3, 4), 110, np.uint16))
    >>> red = np.array([[1, 1, 2, 0], [0, 0, 2, 0], [1, 0, 0, 0]], np.uint8)   # touching 1|2
    >>> _ = cv2.imwrite(str(root / "masks" / "w1.png"), np.stack([0 * red, 0 * red, red], axis=-1))  # BGR
    >>> read_bbbc039(root, progress=False)[0][2].tolist()
    [[1, 1, 3, 0], [0, 0, 3, 0], [2, 0, 0, 0]]
    """
    base = _bbbc039_root(root)
    images = {p.stem: p for p in (base / "images").iterdir() if p.suffix.lower() in TIFF_SUFFIXES}
    samples = []
    for name in _select(list(images), names, str(base), "read bbbc039", progress):
        mask_path = base / "masks" / f"{name}.png"
        if not mask_path.exists():
            raise ValueError(f"{mask_path}: no mask for image {images[name].name}")
        image, labels = read_image(images[name]), _bbbc039_labels(mask_path)
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


def _image_files(folder: Path) -> list[Path]:
    """The image files of a folder, sorted, hidden files left out; ValueError if it is not a folder."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: folder not found")
    return [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]


def _match_pairs(images_dir: str | os.PathLike, labels_dir: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """Map each image stem to its (image file, label file); ValueError for anything unmatched."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    image_paths, label_paths = _image_files(images_dir), _image_files(labels_dir)
    same_folder = images_dir.resolve() == labels_dir.resolve()
    image_files: dict[str, Path] = {}
    label_files: dict[str, Path] = {}
    for path in image_paths:
        if same_folder and _label_stem(path.stem) != path.stem:
            continue
        if path.stem in image_files:
            raise ValueError(f"{path}: two images share the name {path.stem!r}")
        image_files[path.stem] = path
    for path in label_paths:
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
    """Sorted image stems of an image folder matched with a label folder (see :func:`read_pairs`).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = [(folder / name).touch() for name in ("a.tif", "a_labels.tif", "b.png", "b_mask.png")]
    >>> pair_names(folder, folder)
    ['a', 'b']
    """
    return sorted(_match_pairs(images_dir, labels_dir))


def read_pairs(images_dir: str | os.PathLike, labels_dir: str | os.PathLike, names: Iterable[str] | None = None,
               progress: bool = True) -> list[Sample]:
    """Read images and their label images matched by file name.

    An image ``<stem>.<ext>`` (TIFF, PNG, JPEG) is matched with a label file named ``<stem>``,
    ``<stem>_labels``, ``<stem>_label``, ``<stem>_mask`` or ``<stem>_masks`` in ``labels_dir`` (which may
    be ``images_dir``), read with :func:`read_labels`. ``names``: the stems to read (default all). Returns
    ``(stem, image (H, W), labels (H, W) int32)`` tuples sorted by stem.

    Examples
    --------
    >>> import cv2, tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = cv2.imwrite(str(folder / "cell.png"), np.full((3, 3), 80, np.uint8))
    >>> _ = cv2.imwrite(str(folder / "cell_mask.png"), np.eye(3, dtype=np.uint8) * 255)
    >>> [(stem, int(labels.max())) for stem, _, labels in read_pairs(folder, folder, progress=False)]
    [('cell', 1)]
    """
    pairs = _match_pairs(images_dir, labels_dir)
    samples = []
    for stem in _select(list(pairs), names, str(images_dir), "read pairs", progress):
        image_path, label_path = pairs[stem]
        image, labels = read_image(image_path), read_labels(label_path)
        if labels.shape != image.shape:
            raise ValueError(f"{label_path}: labels are {labels.shape} but {image_path.name} is {image.shape}")
        samples.append((stem, image, labels))
    return samples


def tile_image(image: np.ndarray, labels: np.ndarray, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Cut an (H, W) image and its labels into ``(image_tiles, label_tiles)``, (T, size, size) each, row-major.

    Tiles overlap where the image is not a multiple of ``size`` (:func:`nucleilib.data.tile_starts`); a
    smaller image is padded at the end, by reflection (labels with 0). Each tile's labels are renumbered 1..n.

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


def _write_tiles(samples: Sequence[Sample], out: str | os.PathLike, size: int) -> dict[str, Any]:
    """Tile whole-image samples and save them as one ``.npz`` with labels; return a summary."""
    if not samples:
        raise ValueError(f"{out}: no images to import")
    if size < 8:
        raise ValueError(f"tile size must be at least 8, got {size}")
    image_tiles, label_tiles = zip(*(tile_image(image, labels, size) for _, image, labels in samples))
    dtype = np.result_type(*[tiles.dtype for tiles in image_tiles])
    images = np.concatenate(image_tiles).astype(np.float32 if dtype.kind == "f" else dtype, copy=False)
    labels = np.concatenate(label_tiles)
    save_npz(out, images, labels > 0, labels)
    nuclei = sum(np.count_nonzero(np.unique(sample[2])) for sample in samples)
    return {"images": len(samples), "tiles": int(len(images)), "nuclei": int(nuclei),
            "tile_nuclei": int(labels.reshape(len(labels), -1).max(axis=1).sum()), "size": int(size), "out": str(out)}


def import_dsb2018(root: str | os.PathLike, out: str | os.PathLike, size: int = 128,
                   names: Iterable[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Import the 2018 Data Science Bowl layout (:func:`read_dsb2018`) as a tiled ``.npz`` with labels.

    ``root``, ``names`` and ``progress`` are those of :func:`read_dsb2018` (``names`` e.g. one part of
    :func:`real_split`); ``out`` is written by :func:`nucleilib.io.save_npz`, with :func:`tile_image`
    tiles of ``size``. Returns a summary: ``images``, ``tiles``, ``nuclei`` (in the whole images),
    ``tile_nuclei`` (summed over tiles: nuclei in overlaps or cut by tile borders count more than once),
    ``size``, ``out``.

    Examples
    --------
    >>> import cv2, tempfile
    >>> root = Path(tempfile.mkdtemp()); (root / "a1/images").mkdir(parents=True); (root / "a1/masks").mkdir()
    >>> _ = cv2.imwrite(str(root / "a1/images/a1.png"), np.full((20, 30, 4), 9, np.uint8))
    >>> _ = cv2.imwrite(str(root / "a1/masks/m0.png"), np.pad(np.full((3, 3), 255, np.uint8), ((2, 15), (2, 25))))
    >>> import_dsb2018(root, root / "dsb.npz", size=16, progress=False)
    {'images': 1, 'tiles': 4, 'nuclei': 1, 'tile_nuclei': 2, 'size': 16, 'out': '...dsb.npz'}
    """
    return _write_tiles(read_dsb2018(root, names, progress), out, size)


def import_bbbc039(root: str | os.PathLike, out: str | os.PathLike, size: int = 128,
                   names: Iterable[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Import the BBBC039 layout (:func:`read_bbbc039`) as a tiled ``.npz`` with labels.

    Arguments and summary as for :func:`import_dsb2018`; ``root`` and ``names`` as for :func:`read_bbbc039`.

    Examples
    --------
    >>> import cv2, tempfile, tifffile
    >>> root = Path(tempfile.mkdtemp()); (root / "images").mkdir(); (root / "masks").mkdir()
    >>> tifffile.imwrite(root / "images" / "w1.tif", np.full((10, 10), 110, np.uint16))
    >>> _ = cv2.imwrite(str(root / "masks" / "w1.png"), np.eye(10, dtype=np.uint8)[..., None] * [0, 0, 1])  # BGR
    >>> summary = import_bbbc039(root, root / "b.npz", size=8, progress=False)
    >>> summary["tiles"], summary["nuclei"]
    (4, 1)
    """
    return _write_tiles(read_bbbc039(root, names, progress), out, size)


def import_pairs(images_dir: str | os.PathLike, labels_dir: str | os.PathLike, out: str | os.PathLike, size: int = 128,
                 names: Iterable[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Import images with matching label images (:func:`read_pairs`) as a tiled ``.npz`` with labels.

    Arguments and summary as for :func:`import_dsb2018`, with the two folders of :func:`read_pairs` for
    ``root``.

    Examples
    --------
    >>> import cv2, tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = cv2.imwrite(str(folder / "a.png"), np.full((12, 12), 80, np.uint8))
    >>> _ = cv2.imwrite(str(folder / "a_labels.png"), np.kron(np.array([[5, 0], [0, 9]], np.uint16), np.ones((6, 6))))
    >>> import_pairs(folder, folder, folder / "p.npz", size=12, progress=False)["nuclei"]
    2
    """
    return _write_tiles(read_pairs(images_dir, labels_dir, names, progress), out, size)


def real_split(names: Iterable[str], test_fraction: float = 0.3, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split image ids into sorted ``(train_names, test_names)`` by a seeded hash of each id.

    An id's side depends only on the id and the seed (SHA-256 of ``f"{seed}:{name}"``), never on the other ids:
    adding or removing images leaves every other image where it was. ``test_fraction``: expected test share.

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


# The archives of each data set: (URL, expected SHA-256). None = not known here: the first download's hash is
# recorded in the cache and later downloads must match it ("trust on first use").
DOWNLOADS: dict[str, list[tuple[str, str | None]]] = {
    "dsb2018": [("https://data.broadinstitute.org/bbbc/BBBC038/stage1_train.zip", None)],
    "bbbc039": [("https://data.broadinstitute.org/bbbc/BBBC039/images.zip", None),
                ("https://data.broadinstitute.org/bbbc/BBBC039/masks.zip", None)],
}


def builtin_dataset(n: int = 2000, size: int = 128, seed: int = 0, folder: str | os.PathLike | None = None) -> tuple:
    """The synthetic data set (:func:`nucleilib.synth.make_dataset`) as :func:`load_npz` returns it.

    Made once, then loaded from ``nuclei_n<N>_s<size>_seed<seed>.npz`` in ``folder`` (default: ``data/`` in
    :func:`project_root`).

    Examples
    --------
    >>> import tempfile
    >>> [array.shape for array in builtin_dataset(n=2, size=32, folder=tempfile.mkdtemp())]   # images, masks, labels
    [(2, 1, 32, 32), (2, 1, 32, 32), (2, 32, 32)]
    """
    folder = Path(folder) if folder is not None else project_root() / "data"
    path = folder / f"nuclei_n{n}_s{size}_seed{seed}.npz"
    if not path.is_file():
        made = synth.make_dataset(n=n, size=size, seed=seed)
        save_npz(path, made["images"], made["masks"], made["labels"])
    return load_npz(path)


def default_cache_dir() -> Path:
    """Cache folder for downloads: ``$NUCLEILIB_CACHE`` or ``~/.cache/nucleilib`` (not created).

    Examples
    --------
    >>> "NUCLEILIB_CACHE" in os.environ or default_cache_dir() == Path.home() / ".cache" / "nucleilib"
    True
    """
    override = os.environ.get("NUCLEILIB_CACHE")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "nucleilib"


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
                raise ValueError(f"download of {url} has SHA-256 {digest.hexdigest()} but {expected} was expected; "
                                 "file removed")
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise RuntimeError(f"download of {url} failed: {getattr(error, 'reason', error)}") from None
    return digest.hexdigest()


def _cached_archive(cache_dir: Path, filename: str, url: str, sha256: str | None, progress: bool) -> Path:
    """The archive in the cache, downloaded if needed and checked against the given or recorded hash."""
    target, record = cache_dir / filename, cache_dir / f"{filename}.sha256"
    expected = sha256 or (record.read_text().split()[0] if record.exists() else None)
    actual = file_sha256(target) if target.exists() else None
    if actual is None or (expected is not None and actual != expected.lower()):
        target.unlink(missing_ok=True)  # missing, corrupt or stale: fetch again
        actual = _fetch(url, target, expected, progress)
    if not record.exists():
        atomic_write_bytes(record, f"{actual}  {filename}\n".encode())
    return target


def _safe_extract(archive: Path, destination: Path) -> None:
    """Unpack a zip into ``destination`` atomically, refusing members that would land outside it."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.filename.startswith("__MACOSX/")]
            for name in (m.filename for m in members):
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise ValueError(f"{archive}: member {name!r} would be written outside the folder")
            # The archive may hold a top folder named like the destination (images.zip -> images/...)
            inside = all(m.filename.startswith(destination.name + "/") for m in members)
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
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive}: not a valid zip archive ({error}); delete it to download again") from None


def download(name: str, cache_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
             url: str | None = None, sha256: str | None = None, size: int = 128, progress: bool = True) -> Path:
    """Download a public data set (cached, hash-checked, atomic), unpack it and import it to ``.npz``.

    ``name`` is a key of :data:`DOWNLOADS`: ``dsb2018`` (2018 Data Science Bowl stage1_train, BBBC038) or
    ``bbbc039``. Archives are streamed to a temporary file in ``cache_dir`` (default
    :func:`default_cache_dir`) and renamed only when complete; one already there is reused. Without a known
    hash, the first download's SHA-256 is recorded beside the archive and later downloads must match it.
    ``url`` fetches one zip holding the whole layout instead (a mirror), checked against ``sha256`` when
    given. Archives are unpacked without letting any member escape the folder, then imported with
    :func:`import_dsb2018` or :func:`import_bbbc039` (tiles of ``size``) to ``out`` (default
    ``cache_dir/<name>.npz``), which is returned. ValueError for an unknown name, a hash mismatch (the
    partial file is removed) or a bad archive; a one-line RuntimeError when the server fails.

    Examples
    --------
    >>> download("mnist")
    Traceback (most recent call last):
    ...
    ValueError: unknown data set 'mnist'; choose one of bbbc039, dsb2018
    """
    if name not in DOWNLOADS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(sorted(DOWNLOADS))}")
    archives = [(source.rsplit("/", 1)[-1], source, expected) for source, expected in DOWNLOADS[name]]
    if url is not None:
        archives = [(f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:12]}.zip", url, sha256)]
    elif sha256 is not None and len(archives) > 1:
        raise ValueError(f"{name} has {len(archives)} archives: give sha256 together with url (a mirror)")
    elif sha256 is not None:
        archives = [(archives[0][0], archives[0][1], sha256)]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    base = cache / name
    base.mkdir(parents=True, exist_ok=True)
    for filename, archive_url, expected in archives:
        archive = _cached_archive(cache, filename, archive_url, expected, progress)
        marker, stamp = base / f".unpacked-{filename}", f"{file_sha256(archive)}\n"
        if not marker.exists() or marker.read_text() != stamp:
            # stage1_train.zip -> base/stage1_train, images.zip -> base/images; a mirror -> base/mirror
            _safe_extract(archive, base / "mirror" if url is not None else base / Path(filename).stem)
            atomic_write_bytes(marker, stamp.encode())
    out_path = Path(out) if out is not None else cache / f"{name}.npz"
    importer = import_dsb2018 if name == "dsb2018" else import_bbbc039
    importer(base / "mirror" if url is not None else base, out_path, size=size, progress=progress)
    return out_path
