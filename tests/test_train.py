"""Tests for nucleilib.train: checkpoints, the training loop, resuming, and the train command."""

import numpy as np
import pytest
import torch

from nucleilib import train
from nucleilib.losses import targets_from_labels
from nucleilib.model import UNet
from nucleilib.train import (
    evaluate_pixels,
    fit,
    last_checkpoint_path,
    load_checkpoint,
    load_model,
    save_checkpoint,
    train_from_npz,
)


def discs(n: int = 32, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiny data: bright noisy discs on a dark background; returns images (N,1,H,W) and labels (N,H,W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((n, size, size), dtype=np.int32)
    for image in labels:
        for nucleus_id in range(1, rng.integers(2, 5)):
            y, x, r = rng.integers(4, size - 4, 2).tolist() + [rng.integers(3, 6)]
            image[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = nucleus_id
    images = 0.2 + 0.6 * (labels > 0) + rng.normal(0, 0.08, labels.shape)
    return np.clip(images, 0, 1).astype(np.float32)[:, None], labels


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    images, labels = discs()
    targets = targets_from_labels(labels, ("mask", "interior"))
    return images[:24], targets[:24], images[24:], targets[24:]


def small_net(out_channels: int = 2, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(out_channels=out_channels, base=4, depth=2)


def run_fit(tiny, **options):
    settings = dict(epochs=2, batch_size=8, progress=False, device="cpu", lr=3e-3)
    settings.update(options)
    return fit(small_net(), *tiny, **settings)


# --- checkpoints ------------------------------------------------------------------------------


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
    assert train.default_model_path() == tmp_path / "nowhere.pt"
    with pytest.raises(ValueError, match="nucleilib train"):
        load_model()


def test_default_model_path_is_inside_the_project(monkeypatch):
    monkeypatch.delenv("NUCLEILIB_MODEL", raising=False)
    path = train.default_model_path()
    assert path.parts[-2:] == ("models", "nuclei_unet.pt")
    assert (path.parent.parent / "nucleilib" / "train.py").is_file()


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


# --- training ---------------------------------------------------------------------------------


def test_fit_lowers_the_loss_and_writes_best_and_last(tiny, tmp_path):
    out = tmp_path / "best.pt"
    history = run_fit(tiny, epochs=3, out=out)
    assert set(history) == {"train_loss", "val_loss", "val_dice", "lr", "seconds", "stop_reason", "compiled"}
    assert history["compiled"] is False  # a few steps: not worth compiling
    assert all(len(history[key]) == 3 for key in train.HISTORY_KEYS)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert min(history["val_loss"][1:]) < history["val_loss"][0]
    assert history["stop_reason"] == "epochs"
    best = load_checkpoint(out)
    assert "training_state" not in best
    last = torch.load(last_checkpoint_path(out), weights_only=True)  # resumable state is plain data too
    assert len(last["history"]["train_loss"]) == 3 and "optimizer" in last["training_state"]
    best_epoch = int(np.argmin(history["val_loss"]))
    assert best["history"]["val_loss"] == history["val_loss"][: best_epoch + 1]


def test_fit_is_deterministic_for_a_seed(tiny):
    first, second = run_fit(tiny, seed=5), run_fit(tiny, seed=5)
    for key in ("train_loss", "val_loss", "val_dice", "lr"):
        assert first[key] == second[key]
    assert run_fit(tiny, seed=6)["train_loss"] != first["train_loss"]


def test_resume_continues_the_same_history(tiny, tmp_path):
    straight = run_fit(tiny, epochs=4, early_stopping=None)
    out = tmp_path / "m.pt"
    run_fit(tiny, epochs=2, out=out, early_stopping=None)
    resumed = fit(small_net(seed=9), *tiny, epochs=4, batch_size=8, progress=False, device="cpu", lr=3e-3,
                  resume=last_checkpoint_path(out), out=out, early_stopping=None)
    assert len(resumed["train_loss"]) == 4
    for key in ("train_loss", "val_loss", "lr"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5)


def test_resume_needs_a_last_checkpoint(tiny, tmp_path):
    out = tmp_path / "m.pt"
    save_checkpoint(out, small_net())
    with pytest.raises(ValueError, match="resumable"):
        run_fit(tiny, resume=out)


def constant_loss(logits, target):
    return (logits * 0).sum() + 1.0


def test_plateau_halves_the_lr_and_early_stopping_stops(tiny):
    history = run_fit(tiny, epochs=20, loss=constant_loss, early_stopping=3, plateau_patience=1)
    assert history["stop_reason"] == "early stopping"
    assert len(history["val_loss"]) == 4  # best at epoch 1, then 3 epochs without improvement
    assert history["lr"] == pytest.approx([3e-3, 3e-3, 3e-3, 1.5e-3])


def test_time_budget_stops_after_the_first_epoch(tiny):
    history = run_fit(tiny, epochs=5, max_minutes=1e-6)
    assert history["stop_reason"] == "time budget" and len(history["train_loss"]) == 1


def test_keyboard_interrupt_keeps_best_checkpoint_and_returns_history(tiny, tmp_path):
    calls = {"n": 0}

    def interrupting_loss(logits, target):
        calls["n"] += 1
        if calls["n"] == 12:  # during the third training epoch (3 batches + 1 validation batch per epoch)
            raise KeyboardInterrupt
        return train.bce_dice_loss(logits, target)

    out = tmp_path / "m.pt"
    history = run_fit(tiny, epochs=5, loss=interrupting_loss, out=out)
    assert history["stop_reason"] == "interrupted"
    assert len(history["train_loss"]) == 2
    model, info = load_model(out)
    assert len(info["history"]["val_loss"]) in (1, 2)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_fit_rejects_mismatched_targets(tiny):
    images, targets, val_images, val_targets = tiny
    with pytest.raises(ValueError, match="channels"):
        fit(small_net(out_channels=1), images, targets, val_images, val_targets, epochs=1, progress=False)
    with pytest.raises(ValueError, match="differ"):
        fit(small_net(), images, targets[:5], val_images, val_targets, epochs=1, progress=False)


def test_evaluate_pixels_hand_cases():
    net = small_net(out_channels=1)
    masks = np.zeros((2, 1, 8, 8), dtype=np.float32)
    masks[:, :, :4] = 1  # half the pixels
    with torch.no_grad():
        net.head.bias.fill_(100.0)  # predicts nucleus everywhere
    result = evaluate_pixels(net, np.zeros((2, 1, 8, 8)), masks)
    assert result["dice"] == pytest.approx(2 * 64 / (128 + 64)) and result["iou"] == pytest.approx(0.5)
    with torch.no_grad():
        net.head.bias.fill_(-100.0)  # predicts nothing
    assert evaluate_pixels(net, np.zeros((2, 1, 8, 8)), masks) == {"dice": 0.0, "iou": 0.0}


def test_cpu_defaults():
    assert train.select_device("cpu").type == "cpu"
    assert train.configure_cpu_threads() >= 1
    if not train.cpu_supports_bf16():
        assert isinstance(train._autocast(torch.device("cpu")), type(train.contextlib.nullcontext()))


def test_bf16_autocast_path_trains_like_float32(tiny, monkeypatch, tmp_path):
    # The development CPUs have no bf16, so force the path a bf16 CPU takes (emulated here, slowly): autocast
    # in the forward pass, the loss in float32, the weights and the checkpoint in float32.
    reference = run_fit(tiny, seed=4, epochs=2)
    monkeypatch.setattr(train, "cpu_supports_bf16", lambda: True)
    assert train._autocast(torch.device("cpu")).fast_dtype == torch.bfloat16
    out = tmp_path / "bf16.pt"
    history = run_fit(tiny, seed=4, epochs=2, out=out)
    np.testing.assert_allclose(history["train_loss"], reference["train_loss"], rtol=2e-2)
    np.testing.assert_allclose(history["val_loss"], reference["val_loss"], rtol=2e-2)
    model, _ = load_model(out)
    assert {tensor.dtype for tensor in model.state_dict().values() if tensor.is_floating_point()} == {torch.float32}


def test_should_compile_decides_by_device_steps_and_environment(monkeypatch):
    monkeypatch.delenv(train.COMPILE_ENV, raising=False)
    monkeypatch.setattr(train, "compile_available", lambda: True)
    assert not train.should_compile("cpu", train.COMPILE_MIN_STEPS - 1)
    assert train.should_compile("cpu", train.COMPILE_MIN_STEPS)
    assert not train.should_compile("cpu", 10_000, world_size=2)
    assert not train.should_compile("cuda", 10_000)
    assert train.should_compile("cpu", 1, requested=True) and not train.should_compile("cpu", 10_000, requested=False)
    monkeypatch.setenv(train.COMPILE_ENV, "1")
    assert train.should_compile("cpu", 1)
    monkeypatch.setenv(train.COMPILE_ENV, "0")
    assert not train.should_compile("cpu", 10_000)
    monkeypatch.delenv(train.COMPILE_ENV)
    monkeypatch.setattr(train, "compile_available", lambda: False)
    assert not train.should_compile("cpu", 10_000)


@pytest.mark.skipif(not train.compile_available(), reason="no C++ compiler for torch.compile")
def test_compiled_training_follows_the_eager_run(tiny):
    # batch 10 of 24 images: two full (compiled) batches and a partial one that runs eagerly
    eager = run_fit(tiny, seed=3, batch_size=10, compile=False)
    compiled = run_fit(tiny, seed=3, batch_size=10, compile=True)
    assert compiled["compiled"] and not eager["compiled"]
    rtol = 2e-2 if train.cpu_supports_bf16() else 1e-3  # bf16 autocast: compiled kernels round differently
    np.testing.assert_allclose(compiled["train_loss"], eager["train_loss"], rtol=rtol)
    np.testing.assert_allclose(compiled["val_loss"], eager["val_loss"], rtol=rtol)


# --- the train command ------------------------------------------------------------------------


def test_train_from_npz_writes_a_checkpoint_with_provenance(tmp_path):
    from nucleilib.data import save_npz

    images, labels = discs(n=30, seed=1)
    with_labels, without_labels = tmp_path / "a.npz", tmp_path / "b.npz"
    save_npz(with_labels, (images[:, 0] * 255).astype(np.uint8), (labels > 0).astype(np.uint8), labels)
    save_npz(without_labels, (images[:10, 0] * 255).astype(np.uint8), (labels[:10] > 0).astype(np.uint8))
    out = tmp_path / "model.pt"
    result = train_from_npz(with_labels, out, epochs=2, preset="fast", base=4, depth=2, batch_size=8,
                            command="nucleilib train --data a.npz", progress=False, device="cpu")
    assert result["heads"] == ["mask", "interior"]
    assert {"test_dice", "test_iou", "val_dice", "epochs_run"} <= set(result["metrics"])
    model, info = load_model(out)
    assert model.config == {"in_channels": 1, "out_channels": 2, "base": 4, "depth": 2}
    provenance = info["provenance"]
    assert provenance["command"] == "nucleilib train --data a.npz"
    assert provenance["data"][0]["sha256"] == train.file_sha256(with_labels)
    assert provenance["split"]["train"] + provenance["split"]["val"] + provenance["split"]["test"] == 30
    assert provenance["metrics"] == result["metrics"] and provenance["seed"] == 0

    # Two files, one without labels: concatenated, mask head only.
    result = train_from_npz(with_labels, out, extra_data=[without_labels], epochs=1, base=4, depth=2,
                            progress=False, device="cpu")
    assert result["heads"] == ["mask"]
    assert sum(d["n_images"] for d in load_model(out)[1]["provenance"]["data"]) == 40
    with pytest.raises(ValueError, match="b.npz"):
        train_from_npz(without_labels, out, heads=("mask", "interior"), epochs=1, progress=False)
