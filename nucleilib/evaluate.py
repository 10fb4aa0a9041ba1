"""Run a model (or the classical baseline) over files and folders: count nuclei, and score against annotations.

The pieces are elsewhere (``predict`` for probabilities, ``count`` for labels, ``metrics`` for scores, ``datasets``
for reading); this module strings them together for the ``count`` and ``evaluate`` commands and for chapters 07
and 08. Torch is imported only when a model runs.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from dataclasses import asdict, replace
from io import StringIO
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from nucleilib import datasets, metrics
from nucleilib.count import CountSettings, classical_baseline, labels_from_probabilities, overlay
from nucleilib.data import normalize_image
from nucleilib.io import (atomic_path, atomic_write_bytes, describe_error, file_sha256, load_npz, read_image,
                          remove_stale_temporaries)

Sample = tuple[str, np.ndarray, np.ndarray]  # (name, 2-D image, 2-D instance labels)
LAYOUTS = ("auto", "npz", "pairs", "dsb2018", "bbbc039")
COUNTS_CSV, RUN_RECORD = "counts.csv", "count_run.json"
COUNTS_FIELDS = ("file", "count", "status", "labels", "source")
READERS = {"dsb2018": (datasets.dsb2018_names, datasets.read_dsb2018),
           "bbbc039": (datasets.bbbc039_names, datasets.read_bbbc039)}


def segment_image(model: "torch.nn.Module", image: np.ndarray, info: dict | None = None,
                  settings: CountSettings | None = None, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Instance labels (int32 (H, W)) and probabilities (float32 (C, H, W)) of one 2-D image of any dtype and size.

    :func:`nucleilib.predict.probabilities` with the checkpoint ``info``'s normalization and ``precision``, then
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
    prob = probabilities(model, image, info=info, precision=precision)
    return labels_from_probabilities(prob, settings), prob


def segmenter(model_path: str | os.PathLike | None = None, method: str = "model",
              settings: CountSettings | None = None, precision: str = "fp32",
              **changes) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``image -> int32 instance labels``: the U-Net pipeline or the classical baseline.

    ``method="model"``: the checkpoint at ``model_path`` (default: the shipped model) through :func:`segment_image`.
    ``method="baseline"``: Otsu + watershed (:func:`nucleilib.count.classical_baseline`), which takes only
    ``min_area`` and ``split`` from the settings and keeps its own tuned ``h``. ``settings`` default to
    :class:`~nucleilib.count.CountSettings`; keyword ``changes`` replace single fields. ``precision``: the
    network's (:func:`nucleilib.runtime.inference_precision`).

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
    return lambda image: segment_image(model, image, info, settings, precision)[0]


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


def read_annotated(path: str | os.PathLike, layout: str = "auto", split: str = "all", test_fraction: float = 0.3,
                   seed: int = 0) -> list[Sample]:
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


def evaluate_samples(samples: Sequence[Sample], segment: Callable[[np.ndarray], np.ndarray],
                     progress: bool = False) -> dict[str, float]:
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


def evaluate_path(path: str | os.PathLike, model_path: str | os.PathLike | None = None, method: str = "model",
                  settings: CountSettings | None = None, layout: str = "auto", subset: str = "all",
                  progress: bool = True, precision: str = "fp32") -> dict[str, float]:
    """Metrics of a model (or the baseline) on annotated data: the ``evaluate`` command.

    ``path``, ``layout`` and ``subset`` (the split part) are read by :func:`read_annotated`; ``model_path``,
    ``method``, ``settings`` and ``precision`` make the :func:`segmenter`. Returns ``data``, ``method`` and
    ``threshold``, then the scores of :func:`evaluate_samples`.

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
    scores = evaluate_samples(samples, segmenter(model_path, method, settings, precision), progress=progress)
    return {"data": str(path), "method": method, "threshold": settings.threshold, **scores}


def _output_names(paths: Sequence[str]) -> list[str]:
    """Names unique per input file: its path relative to the inputs' common parent folder, extension kept."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    parent = Path(os.path.commonpath([p.parent for p in absolute])) if absolute else Path()
    return [p.relative_to(parent).as_posix() for p in absolute]


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s count lock, or a ValueError at once; the system frees it when its process dies."""
    handle = open(folder / ".count.lock", "a+b")
    try:
        if os.name == "nt":
            import msvcrt
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ValueError(f"{folder}: another count is writing here; wait for it to end, or use another --out") from None
    with handle:
        yield


def _read_rows(path: Path) -> list[dict]:
    """The complete rows of a counts.csv (a line cut off by a crash is left out); [] when there is none."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row.get("source") and row.get("labels")]


def _write_rows(path: Path, rows: Iterable[dict]) -> None:
    """counts.csv with one row per source image, its latest (atomic)."""
    latest = {row["source"]: row for row in rows}
    table = StringIO()
    writer = csv.DictWriter(table, COUNTS_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(latest.values())
    atomic_write_bytes(path, table.getvalue().encode())


def _start_run(out: Path, model_path: str | os.PathLike | None, settings: CountSettings, channel: int | None,
               precision: str, overwrite: bool) -> list[dict]:
    """The rows of the run in ``out`` to resume (none with ``overwrite``, whose old outputs go); ValueError when the
    folder holds counts made with another model (its hash), other settings, channel or precision. Records this
    run's."""
    from nucleilib.checkpoint import default_model_path
    model = Path(model_path) if model_path is not None else default_model_path()
    record = {"model": str(model), "model_sha256": file_sha256(model) if model.is_file() else None,
              "settings": asdict(settings), "channel": channel, "precision": precision}
    rows = _read_rows(out / COUNTS_CSV)
    if overwrite:
        for row in rows:
            for name in (row["labels"], _overlay_name(row["labels"])):
                (out / name).unlink(missing_ok=True)
        rows = []
    elif (out / RUN_RECORD).is_file() or (out / COUNTS_CSV).exists():
        try:
            earlier = json.loads((out / RUN_RECORD).read_text())
            changed = [f"{key} {earlier['settings'].get(key)} -> {value}" for key, value in record["settings"].items()
                       if earlier["settings"].get(key) != value]
            changed += ["another model"] if earlier.get("model_sha256") != record["model_sha256"] else []
            changed += [f"{key} {earlier.get(key)} -> {record[key]}" for key in ("channel", "precision")
                        if earlier.get(key) != record[key]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            changed = [f"no readable {RUN_RECORD}"]
        if changed:
            raise ValueError(f"{out}: holds the counts of another run ({', '.join(changed)}); give --overwrite to "
                             "replace them, or choose another --out")
    atomic_write_bytes(out / RUN_RECORD, json.dumps(record, indent=2).encode())
    _write_rows(out / COUNTS_CSV, rows)
    return rows


def _overlay_name(labels_name: str) -> str:
    return labels_name.removesuffix("_labels.tif") + "_overlay.png"


def _count_one(file: str, labels_path: Path, segment: Callable[[np.ndarray], np.ndarray], channel: int | None) -> int:
    """Count one image file and write its labels and overlay; any failure raises."""
    image = read_image(file, channel=channel)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError(f"{file}: contains NaN or infinite pixel values")
    labels = segment(image)
    write_outputs(labels_path, image, labels)
    return int(labels.max())


def write_outputs(labels_path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> None:
    """What ``count`` writes for one image: ``labels`` as a TIFF at ``labels_path`` and, beside it, the overlay PNG
    (the image stretched to 8 bits, nuclei outlined); each written atomically.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> labels = np.zeros((8, 8), np.int32); labels[2:5, 2:5] = 1
    >>> write_outputs(Path(tempfile.mkdtemp()) / "a.tif_labels.tif", labels * 100, labels)
    """
    import cv2
    import tifffile
    with atomic_path(labels_path) as tmp:  # more than 65535 nuclei need 32 bits
        tifffile.imwrite(tmp, labels.astype(np.uint16 if labels.max() < 2**16 else np.uint32), compression="zlib")
    gray = np.round(normalize_image(image) * 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(overlay(gray, labels)[..., ::-1]))  # RGB -> OpenCV's BGR
    if not ok:
        raise RuntimeError("cannot encode the overlay PNG")
    atomic_write_bytes(_overlay_name(str(labels_path)), png.tobytes())


def count_files(paths: Iterable[str | os.PathLike], out: str | os.PathLike,
                model_path: str | os.PathLike | None = None, settings: CountSettings | None = None,
                channel: int | None = None, progress: bool = True, overwrite: bool = False,
                precision: str = "fp32") -> dict:
    """Count nuclei in image files into the folder ``out``: ``counts.csv``, and per image its labels and overlay.

    The images (TIFF, PNG, JPEG; 8/16-bit; gray, or colour with the nuclei in ``channel``, see
    :func:`nucleilib.io.read_image`) go through the :func:`segmenter` of ``model_path``, ``settings`` and
    ``precision``. Outputs are named by the path relative to the inputs' common folder (``d1/x.tif`` ->
    ``d1/x.tif_labels.tif``, ``d1/x.tif_overlay.png``: :func:`write_outputs`). ``counts.csv`` gets a row per image
    as soon as it is done (``file`` as given, ``count``, ``status`` ``ok`` or ``failed: reason``, ``labels``,
    absolute ``source``). Rerun into ``out``, images counted with the same model, settings, channel and precision
    (``count_run.json``) are skipped, failed ones retried; another run's counts there are a ValueError unless
    ``overwrite`` (which removes them), and so is a second run while one holds the folder. One image's failure is
    recorded and the others go on. Returns ``counted``, ``skipped`` and ``failures`` (a line each, naming the file).

    Examples
    --------
    >>> import tempfile, tifffile
    >>> folder = Path(tempfile.mkdtemp())
    >>> image = np.zeros((32, 32), np.uint8); image[4:12, 4:12] = image[20:28, 18:26] = 200
    >>> tifffile.imwrite(folder / "a.tif", image)
    >>> summary = count_files([folder / "a.tif", folder / "gone.tif"], folder / "out", progress=False)
    >>> summary["counted"], len(summary["failures"]), (folder / "out" / "counts.csv").read_text().splitlines()[1]
    ... # doctest: +ELLIPSIS
    (1, 1, '...a.tif,2,ok,a.tif_labels.tif,...a.tif')
    """
    from tqdm.auto import tqdm
    settings, out = settings or CountSettings(), Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    given: dict[str, str] = {}  # absolute path -> the path as first given
    for path in paths:
        given.setdefault(os.path.abspath(path), str(path))
    with _folder_lock(out):
        remove_stale_temporaries(out, recursive=True)
        rows = _start_run(out, model_path, settings, channel, precision, overwrite)
        done, taken = {r["source"] for r in rows if r["status"] == "ok"}, {r["labels"]: r["source"] for r in rows}
        todo = [(s, f, name) for (s, f), name in zip(given.items(), _output_names(list(given))) if s not in done]
        segment, failures = segmenter(model_path, settings=settings, precision=precision) if todo else None, []
        with open(out / COUNTS_CSV, "a", newline="", encoding="utf-8") as handle:
            for source, file, name in tqdm(todo, desc="count", unit="image", disable=not progress or len(todo) < 2):
                labels_name = _free_name(name, source, taken)
                try:
                    count, status = _count_one(file, out / labels_name, segment, channel), "ok"
                except Exception as error:  # one image's failure, whatever it is, must not stop the batch
                    reason = describe_error(error)
                    failures.append(reason if str(Path(file)) in reason else f"{file}: {reason}")
                    count, status = "", f"failed: {failures[-1]}"
                csv.writer(handle, lineterminator="\n").writerow([file, count, status, labels_name, source])
                handle.flush()
                os.fsync(handle.fileno())
        _write_rows(out / COUNTS_CSV, _read_rows(out / COUNTS_CSV))
    return {"counted": len(todo) - len(failures), "skipped": len(given) - len(todo), "failures": failures}


def _free_name(name: str, source: str, taken: dict[str, str]) -> str:
    """``NAME_labels.tif``, or ``NAME~2_labels.tif`` ... when an earlier run gave that name to another image."""
    labels_name, number = f"{name}_labels.tif", 1
    while taken.setdefault(labels_name, source) != source:
        number += 1
        labels_name = f"{name}~{number}_labels.tif"
    return labels_name
