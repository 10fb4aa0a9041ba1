"""Run a model (or the classical baseline) over files and folders: count nuclei, and score against annotations.

The pieces are elsewhere (``predict`` for probabilities, ``count`` for labels, ``metrics`` for scores,
``data`` for reading); this module strings them together for the ``count`` and ``evaluate`` commands and for
chapter 06.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

Sample = tuple[str, np.ndarray, np.ndarray]  # (name, 2-D image, 2-D instance labels)
LAYOUTS = ("auto", "npz", "pairs", "dsb2018", "bbbc039")


def segmenter(
    model_path: str | os.PathLike | None = None,
    method: str = "model",
    threshold: float = 0.5,
    min_area: int | None = None,
    split: bool = True,
) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``image -> instance labels``: the U-Net pipeline or the classical baseline.

    Parameters
    ----------
    model_path : path-like, optional
        Checkpoint for ``method="model"`` (default: the shipped model).
    method : {"model", "baseline"}
        The U-Net with :func:`nucleilib.predict.segment_image`, or Otsu + watershed
        (:func:`nucleilib.count.classical_baseline`).
    threshold : float
        Probability threshold (model only).
    min_area : int, optional
        Smallest nucleus in pixels (default: ``count.DEFAULT_MIN_AREA``).
    split : bool
        Split touching nuclei.

    Returns
    -------
    callable
        Maps a 2-D image of any dtype and size to int32 labels.

    Examples
    --------
    >>> image = np.zeros((32, 32), np.uint8); image[4:12, 4:12] = 200; image[20:28, 18:26] = 180
    >>> int(segmenter(method="baseline")(image).max())
    2
    """
    from nucleilib import count, predict, train

    min_area = count.DEFAULT_MIN_AREA if min_area is None else int(min_area)
    if method == "baseline":
        return lambda image: count.classical_baseline(image, min_area=min_area, split=split)
    if method != "model":
        raise ValueError(f"method must be 'model' or 'baseline', got {method!r}")
    model, info = train.load_model(model_path)

    def segment(image: np.ndarray) -> np.ndarray:
        labels, _ = predict.segment_image(model, image, info, threshold=threshold, min_area=min_area, split=split)
        return labels

    return segment


def read_annotated(
    path: str | os.PathLike, layout: str = "auto", split: str = "all", test_fraction: float = 0.3, seed: int = 0
) -> list[Sample]:
    """Annotated images from an ``.npz`` file or a folder, as ``(name, image, labels)``.

    Parameters
    ----------
    path : path-like
        An ``.npz`` with ``labels``; a folder with ``images/`` and ``labels/`` (or ``masks/``) matched by stem;
        a 2018 Data Science Bowl ``stage1_train`` folder; or a BBBC039 folder.
    layout : {"auto", "npz", "pairs", "dsb2018", "bbbc039"}
        How to read ``path``; ``auto`` tells ``npz``, ``dsb2018`` and ``pairs`` apart (BBBC039's colour-coded masks
        need ``layout="bbbc039"``).
    split : {"all", "train", "test"}
        For folders: every image, or one part of the seeded split of :func:`nucleilib.data.real_split`.
    test_fraction, seed : float, int
        The split's parameters.

    Returns
    -------
    list of (str, numpy.ndarray, numpy.ndarray)

    Raises
    ------
    ValueError
        For an unknown layout, or a path that holds no annotated images.

    Examples
    --------
    >>> import tempfile
    >>> from nucleilib import data
    >>> file = Path(tempfile.mkdtemp()) / "two.npz"
    >>> labels = np.zeros((2, 8, 8), np.int32); labels[:, 2:5, 2:5] = 1
    >>> data.save_npz(file, (labels * 200).astype(np.uint8), labels > 0, labels)
    >>> [(name, image.shape, int(l.max())) for name, image, l in read_annotated(file)]
    [('two.npz[0]', (8, 8), 1), ('two.npz[1]', (8, 8), 1)]
    """
    from nucleilib import data

    path = Path(path)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        if path.suffix.lower() == ".npz":
            layout = "npz"
        elif path.is_dir() and (path / "images").is_dir():
            layout = "pairs"
        elif path.is_dir():
            layout = "dsb2018"
        else:
            raise ValueError(f"{path}: not an .npz file or a folder of annotated images")
    if layout == "npz":
        loaded = data.load_npz(path)
        if len(loaded) < 3:
            raise ValueError(f"{path}: has no 'labels' (instance ids); instance metrics need them")
        images, _, labels = loaded
        return [(f"{path.name}[{i}]", images[i, 0], labels[i]) for i in range(len(images))]

    if layout == "pairs":
        labels_dir = next((path / d for d in ("labels", "masks") if (path / d).is_dir()), None)
        if labels_dir is None:
            raise ValueError(f"{path}: expected a labels/ (or masks/) folder beside images/")
        names = data.pair_names(path / "images", labels_dir)
        reader = lambda chosen: data.read_pairs(path / "images", labels_dir, names=chosen, progress=False)
    elif layout == "dsb2018":
        names = data.dsb2018_names(path)
        reader = lambda chosen: data.read_dsb2018(path, names=chosen, progress=False)
    else:
        names = data.bbbc039_names(path)
        reader = lambda chosen: data.read_bbbc039(path, names=chosen, progress=False)
    if split != "all":
        train_names, test_names = data.real_split(names, test_fraction=test_fraction, seed=seed)
        names = test_names if split == "test" else train_names
    if not names:
        raise ValueError(f"{path}: no annotated images found ({layout} layout, split {split})")
    return list(reader(names))


def evaluate_samples(
    samples: Sequence[Sample], segment: Callable[[np.ndarray], np.ndarray], progress: bool = False
) -> dict[str, float]:
    """Pixel, instance and count metrics of ``segment`` over annotated samples.

    Parameters
    ----------
    samples : sequence of (name, image, labels)
        As :func:`read_annotated` returns them.
    segment : callable
        ``image -> labels``, such as :func:`segmenter` returns.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``dice`` and ``iou`` (pixel level, pooled), ``ap50``, ``f1_50``, ``precision_50``, ``recall_50``,
        ``mean_ap`` (DSB score, IoU 0.50..0.95), per-image means, ``count_mae`` and ``count_mre``, ``n_images``.

    Examples
    --------
    >>> labels = np.zeros((16, 16), np.int32); labels[2:6, 2:6] = 1; labels[9:14, 9:14] = 2
    >>> metrics = evaluate_samples([("a", labels * 100, labels)], lambda image: (image > 0) * labels)
    >>> metrics["dice"], metrics["ap50"], metrics["count_mae"]
    (1.0, 1.0, 0.0)
    """
    from tqdm.auto import tqdm

    from nucleilib import metrics

    true_list, pred_list = [], []
    for _, image, labels in tqdm(samples, desc="evaluate", unit="image", disable=not progress):
        pred_list.append(np.asarray(segment(image)))
        true_list.append(np.asarray(labels))
    scores = metrics.evaluate_instances(true_list, pred_list)
    scores["dice"] = scores.pop("pixel_dice")
    scores["iou"] = scores.pop("pixel_iou")
    scores["ap_by_threshold"] = {t: round(value, 4) for t, value in scores["ap_by_threshold"].items()}
    return {key: (round(float(value), 4) if isinstance(value, float) else value) for key, value in scores.items()}


def evaluate_path(
    path: str | os.PathLike,
    model_path: str | os.PathLike | None = None,
    method: str = "model",
    threshold: float = 0.5,
    min_area: int | None = None,
    split: bool = True,
    layout: str = "auto",
    subset: str = "all",
    progress: bool = True,
) -> dict[str, float]:
    """Metrics of a model (or the baseline) on annotated data: the ``evaluate`` command.

    Parameters
    ----------
    path : path-like
        See :func:`read_annotated`.
    model_path, method, threshold, min_area, split
        See :func:`segmenter`.
    layout, subset : str
        Layout and split part (``all``, ``train`` or ``test``) for :func:`read_annotated`.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        As :func:`evaluate_samples`, plus ``data``, ``method`` and ``threshold``.
    """
    samples = read_annotated(path, layout=layout, split=subset)
    segment = segmenter(model_path, method=method, threshold=threshold, min_area=min_area, split=split)
    scores = evaluate_samples(samples, segment, progress=progress)
    return {"data": str(path), "method": method, "threshold": threshold, **scores}


def _encode_png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError("could not encode the overlay PNG")
    return buffer.tobytes()


def _encode_tiff(labels: np.ndarray) -> bytes:
    import tifffile

    stream = io.BytesIO()
    tifffile.imwrite(stream, labels.astype(np.uint16), compression="zlib")
    return stream.getvalue()


def count_files(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    model_path: str | os.PathLike | None = None,
    threshold: float = 0.5,
    min_area: int | None = None,
    split: bool = True,
    channel: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Count nuclei in image files; write ``counts.csv``, ``<stem>_labels.tif`` and ``<stem>_overlay.png``.

    Every file is written atomically. A file that cannot be read is reported and skipped; the others are
    still processed.

    Parameters
    ----------
    paths : iterable of path-like
        Image files (TIFF, PNG, JPEG; 8/16-bit; gray, RGB or RGBA).
    out : path-like
        Output folder (created).
    model_path, threshold, min_area, split
        See :func:`segmenter`.
    channel : int, optional
        Channel holding the nuclei in colour images (default: see :func:`nucleilib.data.read_image`).
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of str
        One line per file that failed, naming it and the problem (empty when all succeeded).
    """
    from tqdm.auto import tqdm

    from nucleilib import count, data

    paths = [Path(p) for p in paths]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    segment = segmenter(model_path, threshold=threshold, min_area=min_area, split=split)
    rows, failures = [], []
    for path in tqdm(paths, desc="count", unit="image", disable=not progress or len(paths) < 2):
        try:
            image = data.read_image(path, channel=channel)
        except (ValueError, OSError) as error:
            failures.append(str(error).splitlines()[0] if str(path) in str(error) else f"{path}: {error}")
            continue
        labels = segment(image)
        data.atomic_write_bytes(out / f"{path.stem}_labels.tif", _encode_tiff(labels))
        data.atomic_write_bytes(out / f"{path.stem}_overlay.png", _encode_png(count.overlay(image, labels)))
        rows.append((path.name, int(labels.max())))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["file", "count"])
    writer.writerows(rows)
    data.atomic_write_bytes(out / "counts.csv", table.getvalue().encode())
    return failures
