"""Tests of nucleilib.data: the npz contract, normalization, image reading, importers, splits,
augmentation and statistics. Every fixture is written here; no real data is needed."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

from nucleilib import data


# ----------------------------------------------------------------------------- npz contract


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def good_arrays(n: int = 2, h: int = 6, w: int = 5) -> dict[str, np.ndarray]:
    images = np.arange(n * h * w, dtype=np.uint8).reshape(n, h, w)
    masks = (images % 3 == 0).astype(np.uint8)
    return {"images": images, "masks": masks}


BAD_CASES = {
    "missing_masks": ({"images": np.zeros((2, 4, 4))}, "missing key 'masks'"),
    "empty_images": ({"images": np.zeros((0, 4, 4)), "masks": np.zeros((0, 4, 4))}, "empty"),
    "n_mismatch": ({"images": np.zeros((2, 4, 4)), "masks": np.zeros((3, 4, 4))}, "3 images"),
    "hw_mismatch": ({"images": np.zeros((2, 4, 4)), "masks": np.zeros((2, 4, 5))}, "(H, W)"),
    "nan": ({"images": np.array([[[0.0, np.nan]]]), "masks": np.zeros((1, 1, 2))}, "NaN"),
    "inf": ({"images": np.array([[[0.0, np.inf]]]), "masks": np.zeros((1, 1, 2))}, "NaN or inf"),
    "three_levels": ({"images": np.zeros((1, 2, 2)), "masks": np.array([[[0, 1], [2, 0]]])}, "3 levels"),
    "non_binary_levels": ({"images": np.zeros((1, 2, 2)), "masks": np.array([[[0, 7], [7, 0]]])}, "not binary"),
    "float_labels": (
        {"images": np.zeros((1, 2, 2)), "masks": np.zeros((1, 2, 2)), "labels": np.zeros((1, 2, 2))},
        "'labels' has dtype float64",
    ),
    "negative_labels": (
        {"images": np.zeros((1, 2, 2)), "masks": np.zeros((1, 2, 2)), "labels": -np.ones((1, 2, 2), int)},
        "'labels' must be",
    ),
    "labels_shape": (
        {"images": np.zeros((1, 2, 2)), "masks": np.zeros((1, 2, 2)), "labels": np.zeros((1, 2, 3), int)},
        "'labels' has shape",
    ),
    "images_2d": ({"images": np.zeros((4, 4)), "masks": np.zeros((4, 4))}, "expected (N, H, W)"),
    "images_rgb": ({"images": np.zeros((1, 4, 4, 3)), "masks": np.zeros((1, 4, 4))}, "expected (N, H, W)"),
    "string_images": ({"images": np.array([["a"]]), "masks": np.zeros((1, 1, 1))}, "expected numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_load_npz_rejects_bad_content_naming_file(tmp_path: Path, case: str) -> None:
    arrays, problem = BAD_CASES[case]
    path = write_npz(tmp_path / f"bad_{case}.npz", **arrays)
    with pytest.raises(ValueError) as error:
        data.load_npz(path)
    assert f"bad_{case}.npz" in str(error.value)
    assert problem in str(error.value)


def test_load_npz_refuses_object_arrays_without_unpickling(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # unpickling this would run os.system
            import os

            return (os.system, ("echo pwned > pwned.txt",))

    objects = np.empty(1, dtype=object)
    objects[0] = Boom()
    path = tmp_path / "pickled.npz"
    np.savez(path, images=objects, masks=np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"pickled\.npz.*'images'.*pickled"):
        data.load_npz(path)
    assert not (Path.cwd() / "pwned.txt").exists()


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("text.npz", b"this is not an archive\n", "not a zip archive"),
        ("empty.npz", b"", "empty"),
        ("array.npz", None, "an .npy array"),
    ],
)
def test_load_npz_rejects_non_npz_files(tmp_path: Path, name: str, content: bytes | None, problem: str) -> None:
    path = tmp_path / name
    if content is None:
        with open(path, "wb") as handle:
            np.save(handle, np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=problem) as error:
        data.load_npz(path)
    assert name in str(error.value)


def test_load_npz_rejects_missing_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nothere\.npz: file not found"):
        data.load_npz(tmp_path / "nothere.npz")
    whole = tmp_path / "whole.npz"
    np.savez_compressed(whole, **good_arrays(n=4, h=32, w=32))
    raw = whole.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 30):
        truncated = tmp_path / f"cut{cut}.npz"
        truncated.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.npz") as error:
            data.load_npz(truncated)
        assert "truncated" in str(error.value) or "corrupt" in str(error.value)


@pytest.mark.parametrize("layout", ["nhw", "nhw1", "n1hw"])
@pytest.mark.parametrize("mask_kind", ["01", "0255", "bool"])
def test_load_npz_accepts_layouts(tmp_path: Path, layout: str, mask_kind: str) -> None:
    images = np.array([[[0, 50], [100, 200]], [[7, 7], [7, 7]]], np.uint8)
    masks01 = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]]], np.uint8)
    masks = {"01": masks01, "0255": masks01 * 255, "bool": masks01.astype(bool)}[mask_kind]
    shape = {"nhw": lambda a: a, "nhw1": lambda a: a[..., None], "n1hw": lambda a: a[:, None]}[layout]
    path = write_npz(tmp_path / "ok.npz", images=shape(images), masks=shape(masks))
    x, y = data.load_npz(path)
    assert x.shape == y.shape == (2, 1, 2, 2)
    assert x.dtype == y.dtype == np.float32
    # percentiles 1 and 99.8 of [0, 50, 100, 200] by linear interpolation: 1.5 and 199.4 (index 2.994)
    expected = np.clip((np.array([[0, 50], [100, 200]]) - 1.5) / (199.4 - 1.5), 0, 1)
    np.testing.assert_allclose(x[0, 0], expected, rtol=1e-5)
    assert x[1].max() == 0.0  # constant image -> zeros
    np.testing.assert_array_equal(y[:, 0], masks01)


def test_load_npz_returns_labels_as_int32(tmp_path: Path) -> None:
    labels = np.array([[[0, 3], [3, 9]]], np.uint16)
    path = write_npz(tmp_path / "labels.npz", images=np.zeros((1, 2, 2), np.float32), masks=labels > 0, labels=labels)
    x, y, z = data.load_npz(path)
    assert z.dtype == np.int32 and z.tolist() == [[[0, 3], [3, 9]]]
    assert y[0, 0].tolist() == [[0, 1], [1, 1]]
    assert x.max() == 0.0


def test_save_npz_round_trip_keeps_dtype(tmp_path: Path) -> None:
    images = np.array([[[110, 4095], [300, 110]]], np.uint16)
    labels = np.array([[[0, 1], [2, 0]]], np.int32)
    data.save_npz(tmp_path / "r.npz", images, labels > 0, labels)
    with np.load(tmp_path / "r.npz") as stored:
        assert stored["images"].dtype == np.uint16
        np.testing.assert_array_equal(stored["images"], images)
    x, y, z = data.load_npz(tmp_path / "r.npz")
    np.testing.assert_array_equal(z, labels)
    assert list(tmp_path.iterdir()) == [tmp_path / "r.npz"]  # no temporary left behind


# ----------------------------------------------------------------------------- normalization


def test_normalize_uint8_full_range() -> None:
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = data.normalize_image(image)
    lo, hi = np.percentile(np.arange(256), [1, 99.8])  # 2.55 and 254.49
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out[8, 0], (128 - lo) / (hi - lo), rtol=1e-5)


@pytest.mark.parametrize(("low", "high"), [(0, 65535), (110, 4095), (300, 700)])
def test_normalize_uint16_ranges_use_the_full_unit_interval(low: int, high: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(low, high + 1, size=(64, 64)).astype(np.uint16)
    out = data.normalize_image(image)
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < float(np.median(out)) < 0.6  # uniform values -> median near the middle


def test_normalize_float_and_constant_images() -> None:
    image = np.linspace(-1.0, 3.0, 1001).reshape(7, 143)
    out = data.normalize_image(image, low=0, high=100)
    np.testing.assert_allclose(out.ravel(), np.linspace(0, 1, 1001), atol=1e-6)
    assert not data.normalize_image(np.full((4, 4), 65535, np.uint16)).any()


def test_normalize_sparse_bright_pixels_are_kept() -> None:
    image = np.zeros((100, 100), np.uint16)
    image[0, 0] = 1000  # fewer bright pixels than the 99.8th percentile can see
    out = data.normalize_image(image)
    assert out[0, 0] == 1.0 and out.sum() == 1.0


# ----------------------------------------------------------------------------- reading files


def test_read_image_gray_rgb_rgba_and_16bit(tmp_path: Path) -> None:
    gray16 = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    tifffile.imwrite(tmp_path / "g16.tif", gray16)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., :3] = 40
    rgba[..., 3] = 255
    cv2.imwrite(str(tmp_path / "equal.png"), rgba)
    colour = np.zeros((3, 4, 3), np.uint8)
    colour[..., 0], colour[..., 2] = 30, 90  # RGB: blue is the brightest channel
    cv2.imwrite(str(tmp_path / "colour.png"), colour[..., ::-1])
    tifffile.imwrite(tmp_path / "colour.tif", colour)

    for name in ("g16.png", "g16.tif"):
        image = data.read_image(tmp_path / name)
        assert image.dtype == np.uint16
        np.testing.assert_array_equal(image, gray16)
    assert data.read_image(tmp_path / "equal.png").tolist() == [[40] * 4] * 3
    for name in ("colour.png", "colour.tif"):
        assert data.read_image(tmp_path / name)[0, 0] == 90
        assert data.read_image(tmp_path / name, channel=0)[0, 0] == 30
    with pytest.raises(ValueError, match="colour.png: channel 5"):
        data.read_image(tmp_path / "colour.png", channel=5)


def test_read_image_bad_files_name_the_file(tmp_path: Path) -> None:
    good = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "good.png"), good)
    cv2.imwrite(str(tmp_path / "good.jpg"), good)
    tifffile.imwrite(tmp_path / "good.tif", good)
    cases = {
        "missing.png": None,
        "empty.png": b"",
        "text.png": b"hello, I am not an image\n",
        "text.tif": b"hello, I am not an image\n",
        "cut.png": (tmp_path / "good.png").read_bytes()[:200],
        "cut.jpg": (tmp_path / "good.jpg").read_bytes()[:300],
        "cut.tif": (tmp_path / "good.tif").read_bytes()[:100],
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError) as error:
            data.read_image(tmp_path / name)
        assert name in str(error.value), (name, str(error.value))


def test_read_labels_ids_masks_and_colours(tmp_path: Path) -> None:
    ids = np.zeros((6, 6), np.uint16)
    ids[0:2, 0:2], ids[0:2, 2:4], ids[4:6, 4:6] = 300, 12, 7  # touching 300|12
    cv2.imwrite(str(tmp_path / "ids.png"), ids)
    np.testing.assert_array_equal(data.read_labels(tmp_path / "ids.png"), ids)
    mask = (ids > 0).astype(np.uint8) * 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    labels = data.read_labels(tmp_path / "mask.png")
    assert labels.max() == 2 and labels[0, 0] == labels[0, 3] != labels[5, 5]  # components
    colour = np.zeros((6, 6, 3), np.uint8)
    colour[0:2, 0:2] = (255, 0, 0)
    colour[0:2, 2:4] = (0, 255, 0)
    colour[4:6, 4:6] = (255, 0, 0)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    labels = data.read_labels(tmp_path / "colour.png")
    assert labels[0, 0] != labels[0, 3] and labels[0, 0] > 0 and labels[0, 3] > 0 and labels[3, 3] == 0


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
        summary = data.import_dsb2018(root, tmp_path / "dsb.npz", size=32, progress=False)
        # 40x60 at 32: starts [0, 8] x [0, 28] = 4 tiles; 20x20 padded to one tile
        assert (summary["images"], summary["tiles"], summary["nuclei"]) == (2, 5, 3)
    x, y, labels = data.load_npz(tmp_path / "dsb.npz")
    assert x.shape == (5, 1, 32, 32) and labels.shape == (5, 32, 32)
    with np.load(tmp_path / "dsb.npz") as stored:
        assert stored["images"].dtype == np.uint8
    # tile 0 (rows 0..31, cols 0..31) holds nucleus 1 whole (its stray pixel is outside) and part of 2
    assert labels[0].max() == 2 and (labels[0] == 1).sum() == disk((40, 60), (8, 8), 5).sum()
    # the padded 20x20 image: labels 0 in the padding, image mirrored
    assert labels[4].max() == 0 and x[4].max() == 0.0
    assert all(np.array_equal(np.unique(t), np.arange(t.max() + 1)) for t in labels)  # sequential
    samples = data.read_dsb2018(tmp_path, names=["aaa"], progress=False)
    assert [s[0] for s in samples] == ["aaa"] and samples[0][2].max() == 3
    assert samples[0][2][0, 59] == 1  # the stray pixel belongs to nucleus 1
    with pytest.raises(ValueError, match="not found: zzz"):
        data.read_dsb2018(tmp_path, names=["zzz"], progress=False)
    with pytest.raises(ValueError, match="no 2018 Data Science Bowl layout"):
        data.read_dsb2018(tmp_path / "stage1_train" / "aaa" / "masks", progress=False)


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
    [(name, image, labels)] = data.read_bbbc039(tmp_path, progress=False)
    assert name == "w1" and image.dtype == np.uint16 and labels.max() == 4
    assert labels[15, 15] != labels[15, 25] and labels[40, 10] != labels[40, 55]
    assert (labels > 0).sum() == 400
    summary = data.import_bbbc039(tmp_path, tmp_path / "b.npz", size=32, progress=False)
    # 50x70 at 32: rows [0, 18], cols [0, 19, 38] -> 6 tiles
    assert (summary["images"], summary["tiles"], summary["nuclei"]) == (1, 6, 4)
    with np.load(tmp_path / "b.npz") as stored:
        assert stored["images"].dtype == np.uint16
        assert stored["images"].shape == (6, 32, 32)
        np.testing.assert_array_equal(stored["images"][0], image[:32, :32])
    x, y, tile_labels = data.load_npz(tmp_path / "b.npz")
    assert tile_labels[0].max() == 2  # tile (0, 0) holds both touching nuclei, as two ids
    (tmp_path / "masks" / "w1.png").unlink()
    with pytest.raises(ValueError, match="no mask for image w1.tif"):
        data.read_bbbc039(tmp_path, progress=False)


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

    summary = data.import_pairs(images, labels, tmp_path / "p.npz", size=16, progress=False)
    # a: 30x30 -> 2x2 = 4 tiles; b: 20x40 -> 2x3 = 6 tiles; c: 16x16 -> 1 tile
    assert (summary["images"], summary["tiles"], summary["nuclei"]) == (3, 11, 4)
    x, y, tile_labels = data.load_npz(tmp_path / "p.npz")
    assert tile_labels[0].max() == 2 and x.shape == (11, 1, 16, 16)
    assert data.pair_names(images, labels) == ["a", "b", "c"]

    (labels / "c.png").unlink()
    with pytest.raises(ValueError, match="no label file for image.*c"):
        data.read_pairs(images, labels, progress=False)
    cv2.imwrite(str(labels / "c.png"), np.zeros((16, 17), np.uint8))
    with pytest.raises(ValueError, match=r"c\.png: labels are \(16, 17\)"):
        data.read_pairs(images, labels, progress=False)
    (labels / "c.png").unlink()
    (labels / "zzz_mask.png").write_bytes(b"")
    (images / "c.jpg").unlink()
    with pytest.raises(ValueError, match="no image for label file.*zzz_mask.png"):
        data.read_pairs(images, labels, progress=False)
    (images / "zzz.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="zzz.png: not a readable image"):
        data.read_pairs(images, labels, progress=False)


def test_tile_starts_cover_the_image() -> None:
    for length in (128, 129, 256, 360, 520, 696, 1388):
        starts = data.tile_starts(length, 128)
        covered = np.zeros(length, bool)
        for start in starts:
            covered[start : start + 128] = True
        assert covered.all() and starts[-1] == length - 128 and len(starts) == -(-length // 128)


# ----------------------------------------------------------------------------- splits


def test_real_split_is_stable_and_independent_of_other_ids() -> None:
    names = [f"id{i:03d}" for i in range(400)]
    train, test = data.real_split(names, test_fraction=0.3, seed=0)
    assert sorted(train + test) == names and not set(train) & set(test)
    assert 90 <= len(test) <= 150
    assert data.real_split(list(reversed(names)), 0.3, 0) == (train, test)
    _, test_half = data.real_split(names[::2], 0.3, 0)
    assert test_half == [n for n in test if n in set(names[::2])]
    assert data.real_split(names, 0.3, seed=1)[1] != test


def test_split_indices_partition() -> None:
    train, val, test = data.split_indices(100, seed=3)
    assert (len(train), len(val), len(test)) == (80, 10, 10)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
    again = data.split_indices(100, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    with pytest.raises(ValueError):
        data.split_indices(10, fractions=(0.5, 0.2, 0.2))


# ----------------------------------------------------------------------------- augmentation


def test_augment_batch_keeps_image_and_target_aligned() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 16, 16, generator=generator)
    targets = torch.cat([(images > 0.5).float(), (images > 0.8).float()], dim=1)
    out, moved = data.augment_batch(images, targets, torch.Generator().manual_seed(1), 0, 0, 0, 0)
    assert torch.equal((out > 0.5).float(), moved[:, :1]) and torch.equal((out > 0.8).float(), moved[:, 1:])
    # all 8 symmetries appear and each output is a symmetry of its input
    seen = set()
    for original, augmented in zip(images[:, 0], out[:, 0]):
        options = [torch.rot90(f, k, (0, 1)) for f in (original, original.flip(1)) for k in range(4)]
        matches = [i for i, option in enumerate(options) if torch.equal(option, augmented)]
        assert matches
        seen.add(matches[0])
    assert seen == set(range(8))


def test_augment_batch_intensity_is_image_only_deterministic_and_bounded() -> None:
    images = torch.rand(32, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    targets = (images > 0.5).to(torch.uint8)
    first = data.augment_batch(images, targets, torch.Generator().manual_seed(5))
    second = data.augment_batch(images, targets, torch.Generator().manual_seed(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    out, moved = first
    assert moved.dtype == torch.uint8 and moved.sum() == targets.sum()
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.shape == images.shape
    assert not torch.equal(out.sort(dim=-1).values, images.sort(dim=-1).values)  # intensities changed
    rectangular = torch.rand(4, 1, 8, 12)
    out, moved = data.augment_batch(rectangular, rectangular.clone(), torch.Generator().manual_seed(0), 0, 0, 0, 0)
    assert out.shape == (4, 1, 8, 12) and torch.equal(out, moved)


# ----------------------------------------------------------------------------- statistics


def test_dataset_stats_hand_checked() -> None:
    shape = (64, 64)
    labels = np.zeros(shape, np.int32)
    labels[disk(shape, (16, 16), 6)] = 1
    labels[10:20, 40:50] = 2
    labels[10:20, 50:60] = 3  # touches 2
    rng = np.random.default_rng(0)
    image = 1000 + rng.normal(0, 20, shape)
    image[labels > 0] += 2000
    stats = data.dataset_stats(np.stack([image, image]), np.stack([labels, labels]))
    assert stats["n_images"] == 2 and stats["nuclei_total"] == 6 and stats["nuclei_per_image_median"] == 3
    assert stats["area_p50"] == 100 and stats["touching_fraction"] == pytest.approx(2 / 3)
    assert stats["axis_ratio_median"] == pytest.approx(1.0, abs=0.05)
    assert stats["foreground_fraction"] == pytest.approx((labels > 0).mean())
    assert stats["contrast"] > 0.8 and stats["snr"] > 20
    # normalized input gives the same numbers as raw input
    normalized = data.dataset_stats(data.normalize_batch(np.stack([image])), [labels])
    assert normalized["contrast"] == pytest.approx(stats["contrast"], abs=1e-4)
    empty = data.dataset_stats([np.zeros((8, 8))], [np.zeros((8, 8), int)])
    assert empty["nuclei_total"] == 0 and empty["touching_fraction"] == 0.0


def test_nuclei_dataset_augments_image_and_mask_alike_and_reproducibly():
    from nucleilib.data import NucleiDataset

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 16, 16, generator=generator)
    images[:, :, :4, :7] = 1.0  # an asymmetric bright corner, so every symmetry is visible
    masks = (images > 0.99).float()
    dataset = NucleiDataset(images, masks, seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=False)
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(3, 1, 16, 16)] * 2
    moved = 0
    for i in range(len(dataset)):
        image, mask = dataset[i]
        # intensity changes keep the order of pixels, so the brightest region still lies under the mask
        assert image[mask > 0].mean() > image[mask == 0].mean() + 0.2
        assert torch.equal(dataset[i][1], mask)  # same epoch, same sample: same augmentation
        moved += int(not torch.equal(mask, masks[i]))
    assert moved >= 3  # most samples were flipped or rotated
    dataset.set_epoch(1)
    assert any(not torch.equal(dataset[i][1], NucleiDataset(images, masks, seed=3)[i][1]) for i in range(6))
    plain = NucleiDataset(images, masks, augment=False)
    assert torch.equal(plain[2][0], images[2])
