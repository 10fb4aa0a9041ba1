"""Tests of nucleilib.data: the npz contract, normalization, connected components, tiling an axis, splits, the
built-in data set and statistics. Every fixture is written here; no real data is needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nucleilib import data, datasets, io, synth


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
        io.load_npz(path)
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
        io.load_npz(path)
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
        io.load_npz(path)
    assert name in str(error.value)


def test_load_npz_rejects_missing_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nothere\.npz: file not found"):
        io.load_npz(tmp_path / "nothere.npz")
    whole = tmp_path / "whole.npz"
    np.savez_compressed(whole, **good_arrays(n=4, h=32, w=32))
    raw = whole.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 30):
        truncated = tmp_path / f"cut{cut}.npz"
        truncated.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.npz") as error:
            io.load_npz(truncated)
        assert "truncated" in str(error.value) or "corrupt" in str(error.value)


@pytest.mark.parametrize("layout", ["nhw", "nhw1", "n1hw"])
@pytest.mark.parametrize("mask_kind", ["01", "0255", "bool"])
def test_load_npz_accepts_layouts(tmp_path: Path, layout: str, mask_kind: str) -> None:
    images = np.array([[[0, 50], [100, 200]], [[7, 7], [7, 7]]], np.uint8)
    masks01 = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]]], np.uint8)
    masks = {"01": masks01, "0255": masks01 * 255, "bool": masks01.astype(bool)}[mask_kind]
    shape = {"nhw": lambda a: a, "nhw1": lambda a: a[..., None], "n1hw": lambda a: a[:, None]}[layout]
    path = write_npz(tmp_path / "ok.npz", images=shape(images), masks=shape(masks))
    x, y = io.load_npz(path)
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
    x, y, z = io.load_npz(path)
    assert z.dtype == np.int32 and z.tolist() == [[[0, 3], [3, 9]]]
    assert y[0, 0].tolist() == [[0, 1], [1, 1]]
    assert x.max() == 0.0


def test_save_npz_round_trip_keeps_dtype(tmp_path: Path) -> None:
    images = np.array([[[110, 4095], [300, 110]]], np.uint16)
    labels = np.array([[[0, 1], [2, 0]]], np.int32)
    io.save_npz(tmp_path / "r.npz", images, labels > 0, labels)
    with np.load(tmp_path / "r.npz") as stored:
        assert stored["images"].dtype == np.uint16
        np.testing.assert_array_equal(stored["images"], images)
    x, y, z = io.load_npz(tmp_path / "r.npz")
    np.testing.assert_array_equal(z, labels)
    assert list(tmp_path.iterdir()) == [tmp_path / "r.npz"]  # no temporary left behind


def test_save_npz_picks_the_label_dtype_and_refuses_bad_input(tmp_path: Path) -> None:
    images = np.zeros((1, 2, 3), np.float64)
    small, large = np.array([[[0, 1, 65535]] * 2]), np.array([[[0, 1, 65536]] * 2])
    io.save_npz(tmp_path / "small.npz", images, small > 0, small)
    io.save_npz(tmp_path / "large.npz", images, large > 0, large)
    with np.load(tmp_path / "small.npz") as stored:
        assert stored["labels"].dtype == np.uint16 and stored["images"].dtype == np.float32
        assert stored["masks"].tolist() == [[[0, 1, 1]] * 2]
    with np.load(tmp_path / "large.npz") as stored:
        assert stored["labels"].dtype == np.int32 and stored["labels"].max() == 65536
    with pytest.raises(ValueError, match="must both be"):
        io.save_npz(tmp_path / "x.npz", images, np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=">= 0"):
        io.save_npz(tmp_path / "x.npz", images, images, -np.ones((1, 2, 3), int))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.npz", "small.npz"]  # nothing half-written


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


def test_normalize_batch_normalizes_each_image_alone() -> None:
    batch = np.stack([np.arange(16, dtype=np.uint16).reshape(4, 4), np.arange(16, dtype=np.uint16).reshape(4, 4) * 100])
    out = data.normalize_batch(batch)
    assert out.dtype == np.float32 and out.shape == batch.shape
    np.testing.assert_array_equal(out[0], data.normalize_image(batch[0]))
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # a scaled copy normalizes to the same image
    with pytest.raises(ValueError, match="percentiles"):
        data.normalize_image(batch[0], low=50, high=50)


# ----------------------------------------------------------------------------- connected components


def test_label_components_counts_and_numbers_in_raster_order() -> None:
    mask = np.array([[0, 1, 0, 0, 1],
                     [1, 0, 0, 0, 1],
                     [0, 0, 0, 0, 0],
                     [0, 0, 7, 7, 0]])
    count, labels = data.label_components(mask)
    assert count == 3 and labels.dtype == np.int32
    assert labels.tolist() == [[0, 1, 0, 0, 2], [1, 0, 0, 0, 2], [0, 0, 0, 0, 0], [0, 0, 3, 3, 0]]
    count4, labels4 = data.label_components(mask, connectivity=4)
    assert count4 == 4 and labels4[0, 1] != labels4[1, 0]  # the diagonal pair splits
    assert data.label_components(np.zeros((3, 3)))[0] == 0
    with pytest.raises(ValueError, match="2-D"):
        data.label_components(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="connectivity"):
        data.label_components(mask, connectivity=6)


# ----------------------------------------------------------------------------- tiling an axis


def test_tile_starts_cover_the_image() -> None:
    for length in (128, 129, 256, 360, 520, 696, 1388):
        starts = data.tile_starts(length, 128)
        covered = np.zeros(length, bool)
        for start in starts:
            covered[start : start + 128] = True
        assert covered.all() and starts[-1] == length - 128 and len(starts) == -(-length // 128)


@pytest.mark.parametrize("length", [1, 100, 512, 513, 900, 1000, 1040, 1388, 4000])
@pytest.mark.parametrize(("tile", "overlap"), [(512, 64), (256, 0), (128, 32), (64, 63)])
def test_tile_starts_with_overlap_are_few_spread_and_overlapping_enough(length: int, tile: int, overlap: int) -> None:
    starts = data.tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(starts)
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] == length - tile
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap
    assert len(starts) == -(-(length - overlap) // (tile - overlap))  # and no more windows than needed
    gaps = np.diff(starts)
    assert gaps.max() - gaps.min() <= 1  # spread evenly


def test_tile_starts_examples_and_bad_overlap() -> None:
    assert data.tile_starts(900, 512, 64) == [0, 388]
    assert data.tile_starts(1000, 512, 64) == [0, 244, 488]
    assert data.tile_starts(520, 128) == [0, 98, 196, 294, 392]
    for overlap in (-1, 128, 200):
        with pytest.raises(ValueError, match="overlap"):
            data.tile_starts(1000, 128, overlap)


# ----------------------------------------------------------------------------- splits


def test_split_indices_partition() -> None:
    train, val, test = data.split_indices(100, seed=3)
    assert (len(train), len(val), len(test)) == (80, 10, 10)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
    again = data.split_indices(100, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    with pytest.raises(ValueError):
        data.split_indices(10, fractions=(0.5, 0.2, 0.2))


# ----------------------------------------------------------------------------- built-in data


def test_builtin_dataset_is_made_once_then_loaded(tmp_path: Path, monkeypatch) -> None:
    images, masks, labels = datasets.builtin_dataset(n=3, size=32, seed=4, folder=tmp_path)
    made = synth.make_dataset(n=3, size=32, seed=4)
    assert [p.name for p in tmp_path.iterdir()] == ["nuclei_n3_s32_seed4.npz"]
    np.testing.assert_array_equal(labels, made["labels"])
    np.testing.assert_array_equal(masks[:, 0], made["masks"])
    np.testing.assert_array_equal(images[:, 0], data.normalize_batch(made["images"]))

    def refuse(**kwargs):
        raise AssertionError("the cached file should have been loaded")

    monkeypatch.setattr(synth, "make_dataset", refuse)
    again = datasets.builtin_dataset(n=3, size=32, seed=4, folder=tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(again, (images, masks, labels)))


def test_project_root_is_found_from_a_subfolder(monkeypatch) -> None:
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root / "tests")
    assert io.project_root() == root


# ----------------------------------------------------------------------------- statistics


def test_dataset_stats_hand_checked() -> None:
    shape = (64, 64)
    labels = np.zeros(shape, np.int32)
    ys, xs = np.indices(shape)
    labels[(ys - 16) ** 2 + (xs - 16) ** 2 <= 36] = 1  # a disk of radius 6
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
