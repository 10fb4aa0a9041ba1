"""Tests for nucleilib.train: the settings, the one training step, the loop, resuming, and the train command."""

import numpy as np
import pytest
import torch

from nucleilib import presets, runtime, train
from nucleilib.checkpoint import last_checkpoint_path, load_checkpoint, load_model, save_checkpoint
from nucleilib.io import file_sha256
from nucleilib.losses import bce_dice_loss, targets_from_labels
from nucleilib.model import UNet
from nucleilib.train import TrainSettings, evaluate_pixels, fit, train_from_npz, training_step


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


FIT_ARGUMENTS = ("loss", "out", "resume", "provenance")


def run_fit(tiny, net=None, **options):
    """fit on the tiny data, 2 epochs of batch 8 at lr 0.003 on the CPU unless ``options`` say otherwise."""
    arguments = {key: options.pop(key) for key in FIT_ARGUMENTS if key in options}
    settings = TrainSettings(**{"epochs": 2, "batch_size": 8, "lr": 3e-3, **options})
    net = small_net() if net is None else net
    return fit(net, tiny[:2], tiny[2:], settings, progress=False, device="cpu", **arguments)


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
    resumed = run_fit(tiny, small_net(seed=9), epochs=4, resume=last_checkpoint_path(out), out=out, early_stopping=None)
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
        return bce_dice_loss(logits, target)

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
        run_fit(tiny, small_net(out_channels=1))
    with pytest.raises(ValueError, match="differ"):
        fit(small_net(), (images, targets[:5]), (val_images, val_targets), TrainSettings(epochs=1), progress=False)


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


def test_bf16_autocast_path_trains_like_float32(tiny, monkeypatch, tmp_path):
    # The development CPUs have no bf16, so force the path a bf16 CPU takes (emulated here, slowly): autocast
    # in the forward pass, the loss in float32, the weights and the checkpoint in float32.
    reference = run_fit(tiny, seed=4, epochs=2)
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    out = tmp_path / "bf16.pt"
    history = run_fit(tiny, seed=4, epochs=2, out=out)
    np.testing.assert_allclose(history["train_loss"], reference["train_loss"], rtol=2e-2)
    np.testing.assert_allclose(history["val_loss"], reference["val_loss"], rtol=2e-2)
    model, _ = load_model(out)
    assert {tensor.dtype for tensor in model.state_dict().values() if tensor.is_floating_point()} == {torch.float32}


@pytest.mark.skipif(not runtime.compile_available(), reason="no C++ compiler for torch.compile")
def test_compiled_training_follows_the_eager_run(tiny):
    # batch 10 of 24 images: two full (compiled) batches and a partial one that runs eagerly
    eager = run_fit(tiny, seed=3, batch_size=10, compile=False)
    compiled = run_fit(tiny, seed=3, batch_size=10, compile=True)
    assert compiled["compiled"] and not eager["compiled"]
    rtol = 2e-2 if runtime.cpu_supports_bf16() else 1e-3  # bf16 autocast: compiled kernels round differently
    np.testing.assert_allclose(compiled["train_loss"], eager["train_loss"], rtol=rtol)
    np.testing.assert_allclose(compiled["val_loss"], eager["val_loss"], rtol=rtol)


# --- the train command ------------------------------------------------------------------------


def test_train_from_npz_writes_a_checkpoint_with_provenance(tmp_path):
    from nucleilib.io import save_npz

    images, labels = discs(n=30, seed=1)
    with_labels, without_labels = tmp_path / "a.npz", tmp_path / "b.npz"
    save_npz(with_labels, (images[:, 0] * 255).astype(np.uint8), (labels > 0).astype(np.uint8), labels)
    save_npz(without_labels, (images[:10, 0] * 255).astype(np.uint8), (labels[:10] > 0).astype(np.uint8))
    out = tmp_path / "model.pt"
    settings = TrainSettings.from_preset("fast", epochs=2, base=4, depth=2, batch_size=8)
    result = train_from_npz(with_labels, out, settings, command="nucleilib train --data a.npz", progress=False,
                            device="cpu")
    assert result["heads"] == ["mask", "interior"]
    assert {"test_dice", "test_iou", "val_dice", "epochs_run"} <= set(result["metrics"])
    model, info = load_model(out)
    assert model.config == {"in_channels": 1, "out_channels": 2, "base": 4, "depth": 2}
    provenance = info["provenance"]
    assert provenance["command"] == "nucleilib train --data a.npz"
    assert provenance["data"][0]["sha256"] == file_sha256(with_labels)
    assert provenance["split"]["train"] + provenance["split"]["val"] + provenance["split"]["test"] == 30
    assert provenance["metrics"] == result["metrics"] and provenance["seed"] == 0
    # The settings are stored in the provenance and read back, with the heads the data decided.
    assert TrainSettings.from_checkpoint(info) == TrainSettings.from_preset(
        "fast", epochs=2, base=4, depth=2, batch_size=8, heads=("mask", "interior"))

    # Two files, one without labels: concatenated, mask head only.
    result = train_from_npz(with_labels, out, TrainSettings(epochs=1, base=4, depth=2), extra_data=[without_labels],
                            progress=False, device="cpu")
    assert result["heads"] == ["mask"]
    assert sum(d["n_images"] for d in load_model(out)[1]["provenance"]["data"]) == 40
    with pytest.raises(ValueError, match="b.npz"):
        train_from_npz(without_labels, out, TrainSettings(heads=("mask", "interior"), epochs=1), progress=False)


# --- settings and the one training step ------------------------------------------------------


def test_one_preset_table_keeps_the_numbers_of_the_chapters_and_the_command(monkeypatch):
    monkeypatch.delenv("NUCLEILIB_PRESET", raising=False)
    monkeypatch.setenv("NUCLEILIB_FAST", "1")
    assert presets.preset() == {"n_images": 200, "epochs": 3, "max_minutes": 2}  # the chapters' fast runs
    assert TrainSettings.from_preset("fast") == TrainSettings(epochs=15, max_minutes=5.0, max_images=600, base=8,
                                                              depth=4, batch_size=16)
    assert TrainSettings.from_preset("default").epochs == 40 and presets.PRESETS["default"]["chapters"]["epochs"] == 12
    full = TrainSettings.from_preset("full", lr=0.01, epochs=None)  # None: keep the preset's value
    assert (full.epochs, full.base, full.max_minutes, full.lr) == (300, 16, None, 0.01)


def test_fit_and_lr_range_test_take_the_same_training_step(tiny, monkeypatch):
    models = []

    def spy(model, *args, **kwargs):
        models.append(model)
        return training_step(model, *args, **kwargs)

    monkeypatch.setattr(train, "training_step", spy)
    run_fit(tiny, epochs=1)  # 24 images in batches of 8
    net = small_net()
    train.lr_range_test(net, tiny[:2], TrainSettings(batch_size=8), steps=2, device="cpu")
    assert len(models) == 3 + 2 and models[-1] is net


def test_a_naive_training_step_computes_the_same_loss_in_another_layout():
    images, labels = discs(n=4)
    targets = torch.from_numpy(targets_from_labels(labels, ("mask", "interior")))
    losses = []
    for naive in (True, False):
        net = small_net()
        if not naive:
            runtime.place(net, "cpu")
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        losses.append([training_step(net, torch.from_numpy(images), targets, optimizer, naive=naive)
                       for _ in range(3)])
        assert net.encoder[1][0].weight.is_contiguous(memory_format=torch.channels_last) != naive
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-3)  # rounding differs between the layouts
    assert losses[0][-1] < losses[0][0]
