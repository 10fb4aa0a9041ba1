"""``torchrun`` training: two CPU processes (gloo) give the results of one process within tolerance."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nucleilib import checkpoint, io, synth
from nucleilib.train import TrainSettings

# A tiny, quick problem: 96 synthetic 64x64 images, a small U-Net, a high learning rate.
TRAIN_ARGS = ["--preset", "fast", "--epochs", "8", "--lr", "0.01", "--batch-size", "8", "--base", "4", "--depth", "2"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    made = synth.make_dataset(n=96, size=64, seed=0)
    path = folder / "small.npz"
    io.save_npz(path, made["images"], made["masks"], made["labels"])
    return path


def _run(command: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUCLEILIB_COMPILE="0")
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_torchrun_two_processes_match_one(small_data):
    folder = small_data.parent
    one = folder / "one.pt"
    two = folder / "two.pt"
    _run([sys.executable, "-m", "nucleilib", "train", "--data", str(small_data), "--out", str(one), *TRAIN_ARGS],
         folder)
    done = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "nucleilib", "train", "--data", str(small_data), "--out", str(two), *TRAIN_ARGS], folder)

    # Only rank 0 reports and writes: one metrics block, one best and one resumable checkpoint.
    assert done.stdout.count('"val_dice"') == 1
    written = sorted(p.name for p in folder.iterdir() if p.name.startswith("two"))
    assert written == ["two.history.json", "two.last.pt", "two.pt"]  # rank 0 alone writes

    single, double = checkpoint.load_checkpoint(one), checkpoint.load_checkpoint(two)
    assert single["provenance"]["processes"] == 1
    assert double["provenance"]["processes"] == 2
    assert double["provenance"]["command"].startswith("torchrun --nproc_per_node 2 -m nucleilib train")
    assert double["provenance"]["batch_size"] == 8  # images per optimizer step, over both processes
    # The command line's options over the preset's settings, stored in the provenance.
    expected = TrainSettings.from_preset("fast", epochs=8, lr=0.01, batch_size=8, base=4, depth=2,
                                         heads=("mask", "interior"))
    assert TrainSettings.from_checkpoint(single) == TrainSettings.from_checkpoint(double) == expected

    # Same recipe, same data: the two runs learn alike (they differ in batch-norm statistics and augmentation).
    best_one, best_two = max(single["history"]["val_dice"]), max(double["history"]["val_dice"])
    assert best_one > 0.75 and best_two > 0.75, (best_one, best_two)
    assert abs(best_one - best_two) < 0.05, (best_one, best_two)
    assert abs(min(single["history"]["val_loss"]) - min(double["history"]["val_loss"])) < 0.15
    assert len(double["history"]["val_loss"]) == 8

    # The distributed checkpoint is an ordinary one.
    model, _ = checkpoint.load_model(two)
    assert model.config == {"in_channels": 1, "out_channels": 2, "base": 4, "depth": 2}

