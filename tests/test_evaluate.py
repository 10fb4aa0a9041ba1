"""Tests of nucleilib.evaluate: every annotated-data layout, the scores of known predictions, clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

from nucleilib import cli, datasets, evaluate
from nucleilib.count import CountSettings
from nucleilib.io import save_npz

SHAPE = (40, 48)
BOXES = [(4, 14, 4, 14), (4, 12, 24, 34), (22, 34, 10, 22)]  # three separate nuclei per image


def field(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Bright nuclei whose brightness encodes their id (150 + 30 * id, background 30), and the labels."""
    labels = np.zeros(SHAPE, np.int32)
    for label_id, (y0, y1, x0, x1) in enumerate(BOXES, start=1):
        labels[y0 + shift : y1 + shift, x0 + shift : x1 + shift] = label_id
    return np.where(labels > 0, 150 + 30 * labels, 30).astype(np.uint8), labels


FIELDS = [field(shift) for shift in range(3)]


def perfect(image: np.ndarray) -> np.ndarray:
    """A "segmentation" that reads the labels back from the brightness order (kept by normalization): the truth."""
    return np.unique(image, return_inverse=True)[1].reshape(image.shape).astype(np.int32)


def write_npz(root: Path) -> Path:
    images = np.stack([image for image, _ in FIELDS])
    labels = np.stack([labels for _, labels in FIELDS])
    save_npz(root / "set.npz", images, labels > 0, labels)
    return root / "set.npz"


def write_pairs(root: Path, labels_folder: str = "labels") -> Path:
    for folder in ("images", labels_folder):
        (root / folder).mkdir(parents=True)
    for i, (image, labels) in enumerate(FIELDS):
        tifffile.imwrite(root / "images" / f"f{i}.tif", image)
        tifffile.imwrite(root / labels_folder / f"f{i}.tif", labels.astype(np.uint16))
    return root


def write_dsb2018(root: Path) -> Path:
    """``stage1_train/<id>/images/<id>.png`` (RGBA, R = G = B) and one binary mask PNG per nucleus."""
    for i, (image, labels) in enumerate(FIELDS):
        folder = root / "stage1_train" / f"id{i}"
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        cv2.imwrite(str(folder / "images" / f"id{i}.png"), np.dstack([image] * 3 + [np.full(SHAPE, 255, np.uint8)]))
        for label_id in range(1, labels.max() + 1):
            cv2.imwrite(str(folder / "masks" / f"m{label_id}.png"), (labels == label_id).astype(np.uint8) * 255)
    return root


def write_bbbc039(root: Path) -> Path:
    """``images/<name>.tif`` (16-bit) and ``masks/<name>.png``, the nuclei coloured 1, 2, 3 in the red channel."""
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i, (image, labels) in enumerate(FIELDS):
        tifffile.imwrite(root / "images" / f"w{i}.tif", image.astype(np.uint16))
        blue_green_red = np.dstack([np.zeros_like(labels), np.zeros_like(labels), labels]).astype(np.uint8)
        cv2.imwrite(str(root / "masks" / f"w{i}.png"), blue_green_red)
    return root


WRITERS = {"npz": write_npz, "pairs": write_pairs, "dsb2018": write_dsb2018, "bbbc039": write_bbbc039}
NAMES = {"npz": [f"set.npz[{i}]" for i in range(3)], "pairs": ["f0", "f1", "f2"], "dsb2018": ["id0", "id1", "id2"],
         "bbbc039": ["w0", "w1", "w2"]}


@pytest.mark.parametrize("layout", WRITERS)
def test_every_layout_reads_the_images_and_labels_as_written(layout, tmp_path):
    samples = evaluate.read_annotated(WRITERS[layout](tmp_path), layout=layout)
    assert [name for name, _, _ in samples] == NAMES[layout]
    for (_, image, labels), (true_image, true_labels) in zip(samples, FIELDS):
        np.testing.assert_array_equal(labels, true_labels)
        np.testing.assert_array_equal(perfect(image), true_labels)
        if layout != "npz":  # the .npz contract stores images normalized
            np.testing.assert_array_equal(image, true_image)


@pytest.mark.parametrize("layout", ["npz", "pairs", "dsb2018"])
def test_auto_detects_the_layout(layout, tmp_path):
    samples = evaluate.read_annotated(WRITERS[layout](tmp_path))  # layout="auto"
    assert [name for name, _, _ in samples] == NAMES[layout]


def test_pairs_may_keep_their_labels_in_masks(tmp_path):
    samples = evaluate.read_annotated(write_pairs(tmp_path, labels_folder="masks"))
    assert [name for name, _, _ in samples] == NAMES["pairs"]


@pytest.mark.parametrize("layout", WRITERS)
def test_perfect_segmentation_scores_one(layout, tmp_path):
    scores = evaluate.evaluate_samples(evaluate.read_annotated(WRITERS[layout](tmp_path), layout=layout), perfect)
    assert scores["dice"] == scores["iou"] == scores["ap50"] == scores["mean_ap"] == 1.0
    assert scores["recall_50"] == scores["precision_50"] == 1.0
    assert (scores["count_mae"], scores["n_true"], scores["n_pred"], scores["n_images"]) == (0.0, 9, 9, 3)


def test_a_known_miss_lowers_recall_and_the_count_by_known_amounts(tmp_path):
    samples = evaluate.read_annotated(write_pairs(tmp_path))
    first_missed = lambda image: np.where(perfect(image) == 1, 0, perfect(image))  # nucleus 1 of 3, every image
    scores = evaluate.evaluate_samples(samples, first_missed)
    assert scores["recall_50"] == round(6 / 9, 4) and scores["precision_50"] == 1.0
    assert scores["ap50"] == round(6 / 9, 4) and scores["count_mae"] == 1.0 and scores["count_mre"] == round(1 / 3, 4)
    assert (scores["n_true"], scores["n_pred"]) == (9, 6)
    missed_area = sum((labels == 1).sum() for _, labels in FIELDS)
    total_area = sum((labels > 0).sum() for _, labels in FIELDS)
    assert scores["dice"] == round(2 * (total_area - missed_area) / (2 * total_area - missed_area), 4)


def test_split_parts_are_the_seeded_real_split(tmp_path):
    root = write_dsb2018(tmp_path)
    train, test = datasets.real_split(NAMES["dsb2018"], test_fraction=0.5, seed=3)
    assert train and test  # seed 3 puts images on both sides
    for part, expected in (("train", train), ("test", test)):
        samples = evaluate.read_annotated(root, split=part, test_fraction=0.5, seed=3)
        assert [name for name, _, _ in samples] == expected
    with pytest.raises(ValueError, match="no annotated images found"):
        evaluate.read_annotated(root, split="train", test_fraction=0.5, seed=0)  # seed 0: all three are test


def test_bad_layouts_give_one_clear_error_naming_the_path(tmp_path):
    pairs = write_pairs(tmp_path / "pairs")
    (tmp_path / "unlabelled" / "images").mkdir(parents=True)
    cases = [
        (pairs, "nonsense", "layout must be one of"),
        (pairs, "bbbc039", "BBBC039"),
        (tmp_path / "unlabelled", "auto", "labels/"),
        (tmp_path / "missing.tif", "auto", "not an .npz file or a folder"),
        (tmp_path / "unlabelled" / "images", "auto", "Data Science Bowl"),
    ]
    for path, layout, words in cases:
        with pytest.raises(ValueError, match=words) as raised:
            evaluate.read_annotated(path, layout=layout)
        assert str(path) in str(raised.value)


def test_cli_reports_a_bad_layout_in_one_line(tmp_path, capsys):
    folder = write_pairs(tmp_path)
    assert cli.main(["evaluate", "--data", str(folder), "--layout", "bbbc039", "--method", "baseline"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(folder) in error


def test_evaluate_path_reports_what_was_evaluated(tmp_path):
    path = write_npz(tmp_path)
    scores = evaluate.evaluate_path(path, method="baseline", settings=CountSettings(threshold=0.3), progress=False)
    assert (scores["data"], scores["method"], scores["threshold"]) == (str(path), "baseline", 0.3)
    assert scores["n_images"] == 3 and scores["ap50"] == 1.0  # bright separate squares: the baseline finds them
    assert scores["ap50_per_image"] == scores["mean_ap_per_image"] == 1.0  # the squares are found exactly


def test_the_dsb_score_is_the_mean_over_images_not_over_nuclei():
    image, labels = FIELDS[0]  # three nuclei, found
    single = np.where(labels == 1, 1, 0).astype(np.int32)  # one nucleus, dimmer, missed
    samples = [("three", image, labels), ("one", np.where(single > 0, 180, 30).astype(np.uint8), single)]
    brightest_only = lambda image: perfect(image) if image.max() > 200 else np.zeros(image.shape, np.int32)
    scores = evaluate.evaluate_samples(samples, brightest_only)
    assert (scores["ap50"], scores["mean_ap"]) == (0.75, 0.75)  # pooled: 3 TP, 1 FN
    assert (scores["ap50_per_image"], scores["mean_ap_per_image"]) == (0.5, 0.5)  # per image: (1 + 0) / 2


def test_the_baseline_takes_min_area_and_split_but_not_threshold():
    image, _ = FIELDS[0]
    counted = lambda **changes: int(evaluate.segmenter(method="baseline", **changes)(image).max())
    assert counted() == counted(threshold=0.99) == 3
    assert counted(min_area=101) == 1  # only the 12 x 12 square is larger than 100 px
    with pytest.raises(ValueError, match="method"):
        evaluate.segmenter(method="magic")


def test_segment_image_counts_bright_blobs_with_the_settings_given():
    model = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(20.0)
        model.bias.fill_(-10.0)  # probability > 0.5 where the normalized pixel > 0.5
    image = np.full((60, 80), 100, np.uint16)
    for y, x in [(10, 10), (10, 50), (40, 30)]:
        image[y : y + 8, x : x + 8] = 1000
    labels, prob = evaluate.segment_image(model, image)
    assert labels.max() == 3 and prob.shape == (1, 60, 80) and labels.dtype == np.int32
    assert evaluate.segment_image(model, image, settings=CountSettings(min_area=65))[0].max() == 0  # 64 px blobs
