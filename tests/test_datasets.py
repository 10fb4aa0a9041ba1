"""Tests of nucleilib.datasets: label files, the public layouts and their importers, tiling and the seeded split of
real images. Every fixture is written here; no real data is needed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from nucleilib import datasets, io


# ----------------------------------------------------------------------------- label files


def test_read_labels_ids_masks_and_colours(tmp_path: Path) -> None:
    ids = np.zeros((6, 6), np.uint16)
    ids[0:2, 0:2], ids[0:2, 2:4], ids[4:6, 4:6] = 300, 12, 7  # touching 300|12
    cv2.imwrite(str(tmp_path / "ids.png"), ids)
    np.testing.assert_array_equal(datasets.read_labels(tmp_path / "ids.png"), ids)
    mask = (ids > 0).astype(np.uint8) * 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    labels = datasets.read_labels(tmp_path / "mask.png")
    assert labels.max() == 2 and labels[0, 0] == labels[0, 3] != labels[5, 5]  # components
    colour = np.zeros((6, 6, 3), np.uint8)
    colour[0:2, 0:2] = (255, 0, 0)
    colour[0:2, 2:4] = (0, 255, 0)
    colour[4:6, 4:6] = (255, 0, 0)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    labels = datasets.read_labels(tmp_path / "colour.png")
    assert labels[0, 0] != labels[0, 3] and labels[0, 0] > 0 and labels[0, 3] > 0 and labels[3, 3] == 0
    tifffile.imwrite(tmp_path / "fraction.tif", np.full((3, 3), 1.5, np.float32))
    with pytest.raises(ValueError, match="fraction.tif: label image holds fractional"):
        datasets.read_labels(tmp_path / "fraction.tif")


# ----------------------------------------------------------------------------- importers


def disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    ys, xs = np.indices(shape)
    return (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius**2


def make_dsb(root: Path) -> None:
    """Two images: 40x60 with 3 nuclei (one mask with a stray pixel), 20x20 with none."""
    specs = {"aaa": ((40, 60), [(8, 8), (20, 30), (30, 50)]), "bbb": ((20, 20), [])}
    for name, (shape, centres) in specs.items():
        (root / "stage1_train" / name / "images").mkdir(parents=True)
        (root / "stage1_train" / name / "masks").mkdir()
        image = np.full(shape, 10, np.uint8)
        for index, centre in enumerate(centres):
            nucleus = disk(shape, centre, 5)
            image[nucleus] = 200
            mask = nucleus.astype(np.uint8) * 255
            if index == 0:
                mask[0, shape[1] - 1] = 255  # stray pixel far away: still this nucleus
            cv2.imwrite(str(root / "stage1_train" / name / "masks" / f"m{index}.png"), mask)
        rgba = np.stack([image, image, image, np.full(shape, 255, np.uint8)], axis=-1)
        cv2.imwrite(str(root / "stage1_train" / name / "images" / f"{name}.png"), rgba)


def test_import_dsb2018_tiles_and_counts(tmp_path: Path) -> None:
    make_dsb(tmp_path)
    for root in (tmp_path, tmp_path / "stage1_train"):
        summary = datasets.import_dsb2018(root, tmp_path / "dsb.npz", size=32, progress=False)
        # 40x60 at 32: starts [0, 8] x [0, 28] = 4 tiles; 20x20 padded to one tile
        assert (summary["images"], summary["tiles"], summary["nuclei"]) == (2, 5, 3)
    x, y, labels = io.load_npz(tmp_path / "dsb.npz")
    assert x.shape == (5, 1, 32, 32) and labels.shape == (5, 32, 32)
    with np.load(tmp_path / "dsb.npz") as stored:
        assert stored["images"].dtype == np.uint8
    # tile 0 (rows 0..31, cols 0..31) holds nucleus 1 whole (its stray pixel is outside) and part of 2
    assert labels[0].max() == 2 and (labels[0] == 1).sum() == disk((40, 60), (8, 8), 5).sum()
    # the padded 20x20 image: labels 0 in the padding, image mirrored
    assert labels[4].max() == 0 and x[4].max() == 0.0
    assert all(np.array_equal(np.unique(t), np.arange(t.max() + 1)) for t in labels)  # sequential
    samples = datasets.read_dsb2018(tmp_path, names=["aaa"], progress=False)
    assert [s[0] for s in samples] == ["aaa"] and samples[0][2].max() == 3
    assert samples[0][2][0, 59] == 1  # the stray pixel belongs to nucleus 1
    with pytest.raises(ValueError, match="not found: zzz"):
        datasets.read_dsb2018(tmp_path, names=["zzz"], progress=False)
    with pytest.raises(ValueError, match="no 2018 Data Science Bowl layout"):
        datasets.read_dsb2018(tmp_path / "stage1_train" / "aaa" / "masks", progress=False)


def make_bbbc039(root: Path) -> None:
    """One 50x70 image: two touching nuclei coloured 1 and 2, two apart both coloured 3."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    shape = (50, 70)
    red = np.zeros(shape, np.uint8)
    red[10:20, 10:20] = 1
    red[10:20, 20:30] = 2  # touches the first
    red[35:45, 5:15] = 3
    red[35:45, 50:60] = 3
    image = np.full(shape, 110, np.uint16)
    image[red > 0] = 4000
    tifffile.imwrite(root / "images" / "w1.tif", image)
    rgba = np.zeros(shape + (4,), np.uint8)
    rgba[..., 0], rgba[..., 3] = red, 255
    cv2.imwrite(str(root / "masks" / "w1.png"), rgba[..., [2, 1, 0, 3]])  # OpenCV writes BGRA


def test_import_bbbc039_separates_touching_colours(tmp_path: Path) -> None:
    make_bbbc039(tmp_path)
    [(name, image, labels)] = datasets.read_bbbc039(tmp_path, progress=False)
    assert name == "w1" and image.dtype == np.uint16 and labels.max() == 4
    assert labels[15, 15] != labels[15, 25] and labels[40, 10] != labels[40, 55]
    assert (labels > 0).sum() == 400
    summary = datasets.import_bbbc039(tmp_path, tmp_path / "b.npz", size=32, progress=False)
    # 50x70 at 32: rows [0, 18], cols [0, 19, 38] -> 6 tiles
    assert (summary["images"], summary["tiles"], summary["nuclei"]) == (1, 6, 4)
    with np.load(tmp_path / "b.npz") as stored:
        assert stored["images"].dtype == np.uint16
        assert stored["images"].shape == (6, 32, 32)
        np.testing.assert_array_equal(stored["images"][0], image[:32, :32])
    x, y, tile_labels = io.load_npz(tmp_path / "b.npz")
    assert tile_labels[0].max() == 2  # tile (0, 0) holds both touching nuclei, as two ids
    (tmp_path / "masks" / "w1.png").unlink()
    with pytest.raises(ValueError, match="no mask for image w1.tif"):
        datasets.read_bbbc039(tmp_path, progress=False)


def test_import_pairs_matches_stems(tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    ids = np.zeros((30, 30), np.uint16)
    ids[2:8, 2:8], ids[2:8, 8:14] = 5, 6  # touching, distinct ids
    tifffile.imwrite(images / "a.tif", (ids * 100).astype(np.uint16))
    tifffile.imwrite(labels / "a_labels.tif", ids)
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[5:10, 5:10] = rgb[5:10, 25:30] = 200
    cv2.imwrite(str(images / "b.png"), rgb)
    cv2.imwrite(str(labels / "b_mask.png"), (rgb[..., 0] > 0).astype(np.uint8) * 255)  # binary mask
    cv2.imwrite(str(images / "c.jpg"), np.full((16, 16), 9, np.uint8))
    cv2.imwrite(str(labels / "c.png"), np.zeros((16, 16), np.uint8))

    summary = datasets.import_pairs(images, labels, tmp_path / "p.npz", size=16, progress=False)
    # a: 30x30 -> 2x2 = 4 tiles; b: 20x40 -> 2x3 = 6 tiles; c: 16x16 -> 1 tile
    assert (summary["images"], summary["tiles"], summary["nuclei"]) == (3, 11, 4)
    x, y, tile_labels = io.load_npz(tmp_path / "p.npz")
    assert tile_labels[0].max() == 2 and x.shape == (11, 1, 16, 16)
    assert datasets.pair_names(images, labels) == ["a", "b", "c"]

    (labels / "c.png").unlink()
    with pytest.raises(ValueError, match="no label file for image.*c"):
        datasets.read_pairs(images, labels, progress=False)
    cv2.imwrite(str(labels / "c.png"), np.zeros((16, 17), np.uint8))
    with pytest.raises(ValueError, match=r"c\.png: labels are \(16, 17\)"):
        datasets.read_pairs(images, labels, progress=False)
    (labels / "c.png").unlink()
    (labels / "zzz_mask.png").write_bytes(b"")
    (images / "c.jpg").unlink()
    with pytest.raises(ValueError, match="no image for label file.*zzz_mask.png"):
        datasets.read_pairs(images, labels, progress=False)
    (images / "zzz.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="zzz.png: not a readable image"):
        datasets.read_pairs(images, labels, progress=False)


def test_read_dsb2018_leaves_out_colour_and_brightfield_images(tmp_path: Path) -> None:
    make_dsb(tmp_path)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[..., :3] = (200, 120, 180)  # colour (H&E-like), not gray
    cv2.imwrite(str(tmp_path / "stage1_train" / "bbb" / "images" / "bbb.png"), rgba)
    kept = [name for name, _, _ in datasets.read_dsb2018(tmp_path, progress=False)]
    every = [name for name, _, _ in datasets.read_dsb2018(tmp_path, progress=False, fluorescence_only=False)]
    assert kept == ["aaa"] and every == ["aaa", "bbb"]
    assert datasets.dsb2018_names(tmp_path) == ["aaa", "bbb"]


def test_tile_image_pads_small_images_and_renumbers_each_tile() -> None:
    image = np.arange(30, dtype=np.uint16).reshape(5, 6)
    labels = np.zeros((5, 6), int)
    labels[0, 0], labels[4, 5], labels[2, 2:4] = 40, 7, 9
    tiles, tile_labels = datasets.tile_image(image, labels, size=4)
    assert tiles.shape == tile_labels.shape == (4, 4, 4) and tiles.dtype == np.uint16 and tile_labels.dtype == np.int32
    np.testing.assert_array_equal(tiles[0], image[:4, :4])  # starts [0, 1] x [0, 2]
    np.testing.assert_array_equal(tiles[3], image[1:5, 2:6])
    assert [sorted(np.unique(t).tolist()) for t in tile_labels] == [[0, 1, 2], [0, 1], [0, 1], [0, 1, 2]]
    assert tile_labels[0][2, 2] == 1 and tile_labels[0][0, 0] == 2  # ids keep their order: 9 -> 1, 40 -> 2
    padded, padded_labels = datasets.tile_image(image, labels, size=8)
    np.testing.assert_array_equal(padded[0, 5:, :6], image[[3, 2, 1]])  # reflected rows
    assert not padded_labels[0, 5:].any() and not padded_labels[0, :, 6:].any()  # labels padded with 0
    with pytest.raises(ValueError, match="same 2-D shape"):
        datasets.tile_image(image, labels[:4], size=4)


# ----------------------------------------------------------------------------- split of real images


def test_real_split_is_stable_and_independent_of_other_ids() -> None:
    names = [f"id{i:03d}" for i in range(400)]
    train, test = datasets.real_split(names, test_fraction=0.3, seed=0)
    assert sorted(train + test) == names and not set(train) & set(test)
    assert 90 <= len(test) <= 150
    assert datasets.real_split(list(reversed(names)), 0.3, 0) == (train, test)
    _, test_half = datasets.real_split(names[::2], 0.3, 0)
    assert test_half == [n for n in test if n in set(names[::2])]
    assert datasets.real_split(names, 0.3, seed=1)[1] != test
