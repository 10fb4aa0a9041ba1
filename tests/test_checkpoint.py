"""Tests for nucleilib.checkpoint: save/load round trip, bad files, plain data, atomic writes, the shipped model."""

import numpy as np
import pytest
import torch

from nucleilib.checkpoint import default_model_path, last_checkpoint_path, load_checkpoint, load_model, save_checkpoint
from nucleilib.model import UNet
from nucleilib.train import TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def small_net(out_channels: int = 2, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(out_channels=out_channels, base=4, depth=2)


def test_checkpoint_roundtrip_restores_outputs_and_metadata(tmp_path):
    net = small_net().eval()
    history = {"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6]}
    provenance = {"command": "nucleilib train --data x.npz", "seed": 3, "data": [{"sha256": "ab" * 32}]}
    path = save_checkpoint(tmp_path / "sub" / "m.pt", net, history=history, provenance=provenance)
    raw = torch.load(path, weights_only=True)  # only tensors and plain data
    assert raw["config"] == net.config and raw["heads"] == ["mask", "interior"]
    model, info = load_model(path)
    assert not model.training
    image = torch.rand(1, 1, 20, 28)
    with torch.no_grad():
        assert torch.equal(model(image), net(image))
    assert info["history"] == history and info["provenance"] == provenance
    assert info["normalization"] == {"method": "percentile", "low": 1.0, "high": 99.8}
    assert info["path"] == str(path)


class Unsafe:
    """A pickled object that weights_only loading must refuse."""


@pytest.mark.parametrize(
    "content",
    [
        None,  # missing
        b"this is a text file, not a checkpoint\n",
        bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
        "torch-without-keys",
        "torch-unsafe-object",
        "torch-wrong-heads",
    ],
)
def test_bad_checkpoint_files_raise_one_line_value_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad_model.pt"
    if content == "torch-without-keys":
        torch.save({"weights": torch.zeros(3)}, path)
    elif content == "torch-unsafe-object":
        torch.save({"format": "nucleilib-unet", "obj": Unsafe()}, path)
    elif content == "torch-wrong-heads":
        save_checkpoint(path, small_net(), heads=["mask"])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message


def test_checkpoint_metadata_must_be_plain_data(tmp_path):
    path = tmp_path / "m.pt"
    provenance = {"torch": torch.__version__, "n": np.int64(3), "size": (128, 128), "file": tmp_path}
    save_checkpoint(path, small_net(), provenance=provenance)
    stored = torch.load(path, weights_only=True)["provenance"]
    assert stored == {"torch": str(torch.__version__), "n": 3, "size": [128, 128], "file": str(tmp_path)}
    with pytest.raises(ValueError, match="provenance"):
        save_checkpoint(path, small_net(), provenance={"model": Unsafe()})


def test_missing_default_model_says_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCLEILIB_MODEL", str(tmp_path / "nowhere.pt"))
    assert default_model_path() == tmp_path / "nowhere.pt"
    with pytest.raises(ValueError, match="nucleilib train"):
        load_model()


def test_default_model_path_is_inside_the_package(monkeypatch):
    monkeypatch.delenv("NUCLEILIB_MODEL", raising=False)
    path = default_model_path()
    assert path.parts[-2:] == ("nucleilib", "nuclei_unet.pt") and path.is_file()
    assert (path.parent / "checkpoint.py").is_file()


def test_failed_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    net = small_net()
    save_checkpoint(path, net, history={"val_loss": [0.5]})
    before = path.read_bytes()

    def broken_save(obj, target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, small_net(seed=1), history={"val_loss": [0.1]})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_model(path)[1]["history"] == {"val_loss": [0.5]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary files left


def test_last_checkpoint_sits_beside_the_best():
    assert last_checkpoint_path("runs/m.pt").as_posix() == "runs/m.last.pt"
    assert last_checkpoint_path("runs/model").as_posix() == "runs/model.last.pt"


@pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model")
def test_shipped_model_loads_and_its_settings_read_back(monkeypatch):
    monkeypatch.delenv("NUCLEILIB_MODEL", raising=False)
    model, info = load_model()
    assert model.config == {"in_channels": 1, "out_channels": 2, "base": 8, "depth": 4}
    assert info["heads"] == ["mask", "interior"] and "training_state" not in info
    # Written before TrainSettings existed: the settings it records read back, the rest are the defaults of then.
    assert TrainSettings.from_checkpoint(info) == TrainSettings(
        epochs=40, lr=0.001, batch_size=16, seed=0, max_minutes=55.0, base=8, depth=4, heads=("mask", "interior"))
    assert len(load_checkpoint(info["path"])["state_dict"]) == len(model.state_dict())
