"""`count` never loses a result (issue 14): a row per image as it finishes, resuming, refusing another run's
folder, a lock against a second run, every per-image failure named and recorded, unique output names, and
argument checks before anything loads."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

from nucleilib import cli, evaluate, synth
from nucleilib.checkpoint import save_checkpoint
from nucleilib.model import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", UNet(base=2, depth=1))


def image(seed: int) -> np.ndarray:
    return synth.make_dataset(n=1, size=48, seed=seed)["images"][0].astype(np.uint16)


def write(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, pixels)
    else:
        cv2.imwrite(str(path), pixels)
    return path


def test_a_two_channel_image_needs_its_channel_named(tmp_path):
    from nucleilib.io import read_image

    path = write(tmp_path / "two.tif", np.stack([image(1), image(2)], axis=-1))
    with pytest.raises(ValueError, match=r"two.tif: has 2 channels; name the one with the nuclei"):
        read_image(path)
    np.testing.assert_array_equal(read_image(path, channel=1), image(2))


def test_a_failed_atomic_write_names_the_file_asked_for_not_its_temporary(tmp_path, monkeypatch):
    from nucleilib.io import atomic_write_bytes

    monkeypatch.setattr("os.replace", lambda src, dst: (_ for _ in ()).throw(OSError(28, "No space left", str(src))))
    with pytest.raises(OSError) as raised:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert raised.value.filename == str(tmp_path / "a.bin") and not list(tmp_path.iterdir())


def test_an_unloadable_checkpoint_is_named_in_one_whole_sentence(tmp_path):
    from nucleilib.checkpoint import load_checkpoint

    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(ValueError) as raised:
        load_checkpoint(path)
    assert str(raised.value) == f"{path}: not a nucleilib checkpoint (cannot be loaded: UnpicklingError: Weights only " \
                                "load failed)"


def test_train_refuses_an_output_folder_before_reading_any_data(tmp_path, capsys):
    assert cli.main(["train", "--data", "no/such.npz", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: is a folder; name the checkpoint file to write, " \
                                      f"e.g. {tmp_path / 'model.pt'}\n"


def test_train_removes_the_temporaries_a_killed_run_left(tmp_path, monkeypatch):
    from nucleilib import train

    stale = [tmp_path / ".m.0a1b2c3d.tmp.pt", tmp_path / ".m.last.4e5f6a7b.tmp.pt"]
    for path in stale + [tmp_path / ".other.0a1b2c3d.tmp.pt"]:
        path.write_bytes(b"half")
    data = tmp_path / "d.npz"
    cli.main(["make-data", "--n", "10", "--size", "32", "--out", str(data)])
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train.train_from_npz(data, tmp_path / "m.pt", train.TrainSettings(base=2, depth=1), progress=False)
    assert not any(path.exists() for path in stale) and (tmp_path / ".other.0a1b2c3d.tmp.pt").exists()
