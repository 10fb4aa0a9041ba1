"""ONNX export: onnxruntime gives the probabilities and counts that PyTorch gives, and the file says how to use it."""

from __future__ import annotations

import builtins
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from nucleilib import cli, count, data, predict, synth
from nucleilib.checkpoint import load_model
from nucleilib.export import export_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "nuclei_unet.onnx"
    assert cli.main(["export", "--format", "onnx", "--out", str(out)]) == 0
    return out


def test_onnxruntime_gives_pytorchs_probabilities_and_counts(exported):
    test_set = synth.make_dataset(n=8, size=128, seed=11)
    images = data.normalize_batch(test_set["images"])[:, None].astype(np.float32)
    model, _ = load_model()
    expected = predict.predict_batch(model, torch.from_numpy(images))
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": images})[0]
    got = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert np.abs(got - expected).max() < 1e-4
    assert [count.count_nuclei(p)[0] for p in got.astype(np.float32)] == [count.count_nuclei(p)[0] for p in expected]


def test_the_exported_file_runs_other_sizes_and_carries_its_metadata(exported):
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert session.run(["logits"], {"image": np.zeros((3, 1, 48, 80), np.float32)})[0].shape == (3, 2, 48, 80)
    stored = {prop.key: prop.value for prop in onnx.load(str(exported)).metadata_props}
    _, info = load_model()
    assert json.loads(stored["normalization"]) == info["normalization"] and stored["size_multiple"] == "16"
    assert json.loads(stored["heads"]) == info["heads"] and "train" in stored["training_command"]


def test_export_without_the_optional_packages_says_what_to_install(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def without_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError("no onnxscript", name="onnxscript")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxscript)
    assert cli.main(["export", "--out", str(tmp_path / "m.onnx")]) == 2
    assert 'pip install "nucleilib[export]"' in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
