"""Run a model (or the classical baseline) over files and folders: count nuclei, and score against annotations.

The pieces are elsewhere (``predict`` for probabilities, ``count`` for labels, ``metrics`` for scores, ``datasets``
for reading); this module strings them together for the ``count`` and ``evaluate`` commands and for chapters 07
and 08. Torch is imported only when a model runs.
"""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from io import BytesIO, StringIO
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from nucleilib import datasets, metrics
from nucleilib.count import CountSettings, classical_baseline, labels_from_probabilities, overlay
from nucleilib.data import normalize_image
from nucleilib.io import atomic_write_bytes, load_npz, read_image

Sample = tuple[str, np.ndarray, np.ndarray]  # (name, 2-D image, 2-D instance labels)
LAYOUTS = ("auto", "npz", "pairs", "dsb2018", "bbbc039")
READERS = {"dsb2018": (datasets.dsb2018_names, datasets.read_dsb2018),
           "bbbc039": (datasets.bbbc039_names, datasets.read_bbbc039)}


def segment_image(
    model: "torch.nn.Module", image: np.ndarray, info: dict | None = None, settings: CountSettings | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels (int32 (H, W)) and probabilities (float32 (C, H, W)) of one 2-D image of any dtype and size.

    :func:`nucleilib.predict.probabilities` with the checkpoint ``info``'s normalization, then
    :func:`nucleilib.count.labels_from_probabilities` with ``settings`` (default
    :class:`~nucleilib.count.CountSettings`).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Conv2d(1, 1, 1)
    >>> _ = torch.nn.init.constant_(model.weight, 20.0), torch.nn.init.constant_(model.bias, -10.0)
    >>> image = np.zeros((20, 20), np.uint8); image[2:8, 2:8] = image[12:18, 10:16] = 200
    >>> labels, prob = segment_image(model, image)
    >>> int(labels.max()), prob.shape
    (2, (1, 20, 20))
    """
    from nucleilib.predict import probabilities

    prob = probabilities(model, image, info=info)
    return labels_from_probabilities(prob, settings), prob


def segmenter(
    model_path: str | os.PathLike | None = None, method: str = "model", settings: CountSettings | None = None,
    **changes,
) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``image -> int32 instance labels``: the U-Net pipeline or the classical baseline.

    ``method="model"``: the checkpoint at ``model_path`` (default: the shipped model) through :func:`segment_image`.
    ``method="baseline"``: Otsu + watershed (:func:`nucleilib.count.classical_baseline`), which takes only
    ``min_area`` and ``split`` from the settings and keeps its own tuned ``h``. ``settings`` default to
    :class:`~nucleilib.count.CountSettings`; keyword ``changes`` replace single fields.

    Examples
    --------
    >>> image = np.zeros((32, 32), np.uint8); image[4:12, 4:12] = 200; image[20:28, 18:26] = 180
    >>> int(segmenter(method="baseline")(image).max()), int(segmenter(method="baseline", min_area=100)(image).max())
    (2, 0)
    """
    settings = replace(settings or CountSettings(), **changes)
    if method == "baseline":
        return lambda image: classical_baseline(image, min_area=settings.min_area, split=settings.split)
    if method != "model":
        raise ValueError(f"method must be 'model' or 'baseline', got {method!r}")
    from nucleilib.checkpoint import load_model

    model, info = load_model(model_path)
    return lambda image: segment_image(model, image, info, settings)[0]


def _layout(path: Path, layout: str) -> str:
    """The layout of ``path``: ``layout`` itself, or the one ``auto`` detects."""
    if layout not in LAYOUTS:
        raise ValueError(f"{path}: layout must be one of {LAYOUTS}, got {layout!r}")
    if layout != "auto":
        return layout
    if path.suffix.lower() == ".npz":
        return "npz"
    if path.is_dir():
        return "pairs" if (path / "images").is_dir() else "dsb2018"
    raise ValueError(f"{path}: not an .npz file or a folder of annotated images")


def read_annotated(
    path: str | os.PathLike, layout: str = "auto", split: str = "all", test_fraction: float = 0.3, seed: int = 0
) -> list[Sample]:
    """Annotated images from an ``.npz`` file or a folder, as ``(name, image, labels)``.

    ``path`` is an ``.npz`` with ``labels``; a folder with ``images/`` and ``labels/`` (or ``masks/``) matched by
    stem (layout ``pairs``); a 2018 Data Science Bowl ``stage1_train`` folder (``dsb2018``); or a BBBC039 folder
    (``bbbc039``). ``layout="auto"`` tells ``npz``, ``pairs`` and ``dsb2018`` apart (BBBC039's colour-coded masks
    need their layout named). For folders, ``split`` chooses every image (``all``) or one part (``train``, ``test``)
    of the seeded split :func:`nucleilib.datasets.real_split` (``test_fraction``, ``seed``). A ValueError names
    ``path`` for an unknown layout or a path without annotated images.

    Examples
    --------
    >>> import tempfile
    >>> from nucleilib.io import save_npz
    >>> file = Path(tempfile.mkdtemp()) / "two.npz"
    >>> labels = np.zeros((2, 8, 8), np.int32); labels[:, 2:5, 2:5] = 1
    >>> save_npz(file, (labels * 200).astype(np.uint8), labels > 0, labels)
    >>> [(name, image.shape, int(l.max())) for name, image, l in read_annotated(file)]
    [('two.npz[0]', (8, 8), 1), ('two.npz[1]', (8, 8), 1)]
    """
    path = Path(path)
    layout = _layout(path, layout)
    if layout == "npz":
        loaded = load_npz(path)
        if len(loaded) < 3:
            raise ValueError(f"{path}: has no 'labels' (instance ids); instance metrics need them")
        images, _, labels = loaded
        return [(f"{path.name}[{i}]", images[i, 0], labels[i]) for i in range(len(images))]
    if layout == "pairs":
        labels_dir = next((path / d for d in ("labels", "masks") if (path / d).is_dir()), None)
        if labels_dir is None:
            raise ValueError(f"{path}: expected a labels/ (or masks/) folder beside images/")
        names = datasets.pair_names(path / "images", labels_dir)
        reader = lambda chosen: datasets.read_pairs(path / "images", labels_dir, names=chosen, progress=False)
    else:
        list_names, read = READERS[layout]
        names = list_names(path)
        reader = lambda chosen: read(path, names=chosen, progress=False)
    if split != "all":
        train_names, test_names = datasets.real_split(names, test_fraction=test_fraction, seed=seed)
        names = test_names if split == "test" else train_names
    if not names:
        raise ValueError(f"{path}: no annotated images found ({layout} layout, split {split})")
    return list(reader(names))


def evaluate_samples(
    samples: Sequence[Sample], segment: Callable[[np.ndarray], np.ndarray], progress: bool = False
) -> dict[str, float]:
    """Pixel, instance and count metrics of ``segment`` (``image -> labels``) over ``(name, image, labels)`` samples.

    The scores of :func:`nucleilib.metrics.evaluate_instances`, rounded to 4 digits, with ``pixel_dice`` and
    ``pixel_iou`` named ``dice`` and ``iou``: ``mean_ap_per_image`` is the 2018 Data Science Bowl score, ``mean_ap``
    the same AP pooled over the nuclei of all images.

    Examples
    --------
    >>> labels = np.zeros((16, 16), np.int32); labels[2:6, 2:6] = 1; labels[9:14, 9:14] = 2
    >>> scores = evaluate_samples([("a", labels * 100, labels)], lambda image: (image > 0) * labels)
    >>> scores["dice"], scores["ap50"], scores["mean_ap_per_image"], scores["count_mae"]
    (1.0, 1.0, 1.0, 0.0)
    """
    from tqdm.auto import tqdm

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
    settings: CountSettings | None = None,
    layout: str = "auto",
    subset: str = "all",
    progress: bool = True,
) -> dict[str, float]:
    """Metrics of a model (or the baseline) on annotated data: the ``evaluate`` command.

    ``path``, ``layout`` and ``subset`` (the split part) are read by :func:`read_annotated`; ``model_path``,
    ``method`` and ``settings`` make the :func:`segmenter`. Returns ``data``, ``method`` and ``threshold``, then the
    scores of :func:`evaluate_samples`.

    Examples
    --------
    >>> import tempfile
    >>> from nucleilib.io import save_npz
    >>> file = Path(tempfile.mkdtemp()) / "one.npz"
    >>> labels = np.zeros((1, 24, 24), np.int32); labels[0, 4:12, 4:12] = 1
    >>> save_npz(file, (labels * 200).astype(np.uint8), labels > 0, labels)
    >>> evaluate_path(file, method="baseline", progress=False)["ap50"]
    1.0
    """
    settings = settings or CountSettings()
    samples = read_annotated(path, layout=layout, split=subset)
    scores = evaluate_samples(samples, segmenter(model_path, method, settings), progress=progress)
    return {"data": str(path), "method": method, "threshold": settings.threshold, **scores}


def _encode_png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError("could not encode the overlay PNG")
    return buffer.tobytes()


def _encode_tiff(labels: np.ndarray) -> bytes:
    import tifffile

    stream = BytesIO()
    tifffile.imwrite(stream, labels.astype(np.uint16), compression="zlib")
    return stream.getvalue()


def count_files(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    model_path: str | os.PathLike | None = None,
    settings: CountSettings | None = None,
    channel: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Count nuclei in image files; write ``counts.csv``, ``<stem>_labels.tif`` and ``<stem>_overlay.png`` to ``out``.

    The images (TIFF, PNG, JPEG; 8/16-bit; gray, or colour with the nuclei in ``channel``, see
    :func:`nucleilib.io.read_image`) go through the :func:`segmenter` of ``model_path`` and ``settings``. The
    overlay is the contrast-stretched 8-bit image with the nuclei outlined. Every file is written atomically. A file
    that cannot be read is skipped; returns one line per such file, naming it and the problem.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> folder = Path(tempfile.mkdtemp())
    >>> image = np.zeros((32, 32), np.uint8); image[4:12, 4:12] = image[20:28, 18:26] = 200
    >>> tifffile.imwrite(folder / "a.tif", image)
    >>> failures = count_files([folder / "a.tif", folder / "gone.tif"], folder / "out", progress=False)
    >>> len(failures), (folder / "out" / "counts.csv").read_text().splitlines()
    (1, ['file,count', 'a.tif,2'])
    """
    from tqdm.auto import tqdm

    paths, out = [Path(p) for p in paths], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    segment = segmenter(model_path, settings=settings)
    rows, failures = [], []
    for path in tqdm(paths, desc="count", unit="image", disable=not progress or len(paths) < 2):
        try:
            image = read_image(path, channel=channel)
        except (ValueError, OSError) as error:
            failures.append(str(error).splitlines()[0] if str(path) in str(error) else f"{path}: {error}")
            continue
        labels = segment(image)
        gray = np.round(normalize_image(image) * 255).astype(np.uint8)
        atomic_write_bytes(out / f"{path.stem}_labels.tif", _encode_tiff(labels))
        atomic_write_bytes(out / f"{path.stem}_overlay.png", _encode_png(overlay(gray, labels)))
        rows.append((path.name, int(labels.max())))
    table = StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["file", "count"])
    writer.writerows(rows)
    atomic_write_bytes(out / "counts.csv", table.getvalue().encode())
    return failures
