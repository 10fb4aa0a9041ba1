"""Tests of nucleilib.io: atomic writes, file hashes, reading images and the reduction of arrays to 2-D."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from nucleilib import io


# ----------------------------------------------------------------------------- writing


def test_atomic_path_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.png"  # the missing folder is created
    with io.atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == target.parent and tmp.exists()
        tmp.write_bytes(b"first")
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error):
            with io.atomic_path(target) as tmp:
                tmp.write_bytes(b"half")
                raise error
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["result.png"]  # no temporary left behind
    io.atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"


def test_file_sha256_reads_large_files_in_chunks(tmp_path: Path) -> None:
    content = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # more than one chunk
    (tmp_path / "big.bin").write_bytes(content)
    assert io.file_sha256(tmp_path / "big.bin") == hashlib.sha256(content).hexdigest()
    (tmp_path / "empty.bin").write_bytes(b"")
    assert io.file_sha256(tmp_path / "empty.bin") == hashlib.sha256(b"").hexdigest()


# ----------------------------------------------------------------------------- arrays


def test_image_2d_drops_one_singleton_axis_and_refuses_the_rest() -> None:
    image = np.arange(20).reshape(4, 5)
    for shaped in (image, image[None], image[..., None]):
        out = io.image_2d(shaped)
        assert out.shape == (4, 5) and np.shares_memory(out, image)
        np.testing.assert_array_equal(out, image)
    assert io.image_2d(np.zeros((1, 4, 1))).shape == (4, 1)  # the first axis goes first
    for bad in (np.zeros((4, 5, 3)), np.zeros((2, 4, 5)), np.zeros(5), np.zeros((1, 2, 3, 4)), np.zeros((0, 5))):
        with pytest.raises(ValueError, match="2-D"):
            io.image_2d(bad)


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
        image = io.read_image(tmp_path / name)
        assert image.dtype == np.uint16
        np.testing.assert_array_equal(image, gray16)
    assert io.read_image(tmp_path / "equal.png").tolist() == [[40] * 4] * 3
    for name in ("colour.png", "colour.tif"):
        assert io.read_image(tmp_path / name)[0, 0] == 90
        assert io.read_image(tmp_path / name, channel=0)[0, 0] == 30
    with pytest.raises(ValueError, match="colour.png: channel 5"):
        io.read_image(tmp_path / "colour.png", channel=5)


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
            io.read_image(tmp_path / name)
        assert name in str(error.value), (name, str(error.value))


def test_read_pixels_layouts(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (6, 7, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "chw.tif", np.moveaxis(rgb, -1, 0), photometric="minisblack")
    tifffile.imwrite(tmp_path / "hw1.tif", rgb[..., :1], photometric="minisblack")
    tifffile.imwrite(tmp_path / "11hw.tif", rgb[None, None, ..., 0], photometric="minisblack")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 6, 7), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "mask.tif", rgb[..., 0] > 100)
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 9, np.uint8)], axis=-1)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])
    np.testing.assert_array_equal(io.read_pixels(tmp_path / "chw.tif"), rgb)  # channels-first -> channels-last
    np.testing.assert_array_equal(io.read_pixels(tmp_path / "rgba.png"), rgb)  # RGB order, alpha dropped
    assert io.read_pixels(tmp_path / "hw1.tif").shape == (6, 7, 1)
    np.testing.assert_array_equal(io.read_image(tmp_path / "hw1.tif"), rgb[..., 0])
    np.testing.assert_array_equal(io.read_pixels(tmp_path / "11hw.tif"), rgb[..., 0])
    assert io.read_pixels(tmp_path / "mask.tif").dtype == np.uint8
    with pytest.raises(ValueError, match=r"stack\.tif: shape \(5, 6, 7\) is not a 2-D image"):
        io.read_pixels(tmp_path / "stack.tif")
    with pytest.raises(ValueError, match="hw1.tif: channel 1 requested but the image has 1 channels"):
        io.read_image(tmp_path / "hw1.tif", channel=1)
    cv2.imwrite(str(tmp_path / "gray.png"), rgb[..., 0])
    with pytest.raises(ValueError, match="gray.png: channel 2 requested but the image is gray"):
        io.read_image(tmp_path / "gray.png", channel=2)
    with pytest.raises(ValueError, match="not a file"):
        io.read_image(tmp_path)
