"""The command line end to end: make-data, train, evaluate, count, import with a split."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

from nucleilib import cli, data, io, synth

COMMANDS = ["make-data", "import-dsb2018", "import-bbbc039", "import-pairs", "download", "train", "evaluate", "count",
            "bench", "export"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "small.npz"
    assert cli.main(["make-data", "--n", "12", "--size", "64", "--seed", "3", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_model(small_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    status = cli.main(["train", "--data", str(small_set), "--out", str(out), "--preset", "fast", "--epochs", "1",
                       "--base", "2", "--depth", "2", "--seed", "1"])
    assert status == 0
    return out


def test_python_m_nucleilib_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "nucleilib", "--help"], capture_output=True, text=True, check=True)
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, "--help"])
    assert stopped.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_make_data_writes_the_contract_with_labels(small_set):
    images, masks, labels = io.load_npz(small_set)
    assert images.shape == masks.shape == (12, 1, 64, 64)
    expected = synth.make_dataset(n=12, size=64, seed=3)
    np.testing.assert_array_equal(labels, expected["labels"])


def test_train_records_provenance(tiny_model, small_set):
    checkpoint = torch.load(tiny_model, weights_only=True)
    provenance = checkpoint["provenance"]
    assert "train --data" in provenance["command"] and "--epochs 1" in provenance["command"]
    assert provenance["seed"] == 1 and provenance["lr"] == 0.001
    assert provenance["data"][0]["sha256"] == data_sha256(small_set)


def test_train_writes_its_history_as_json_beside_the_checkpoint(tiny_model):
    stored = json.loads(tiny_model.with_suffix(".history.json").read_text())
    checkpoint = torch.load(tiny_model, weights_only=True)
    assert stored["history"]["val_loss"] == checkpoint["history"]["val_loss"] and len(stored["history"]["val_loss"]) == 1
    assert stored["provenance"]["seed"] == 1 and stored["provenance"]["early_stopping"] == 8


def test_train_early_stopping_zero_means_never(small_set, tmp_path):
    out = tmp_path / "patient.pt"
    assert cli.main(["train", "--data", str(small_set), "--out", str(out), "--preset", "fast", "--epochs", "1",
                     "--base", "2", "--depth", "1", "--early-stopping", "0"]) == 0
    assert json.loads(out.with_suffix(".history.json").read_text())["provenance"]["early_stopping"] is None


def test_train_resume_continues_the_run_and_says_so(small_set, tmp_path):
    out, options = tmp_path / "run.pt", ["--preset", "fast", "--base", "2", "--depth", "1", "--seed", "2"]
    assert cli.main(["train", "--data", str(small_set), "--out", str(out), "--epochs", "2", *options]) == 0
    straight = json.loads(out.with_suffix(".history.json").read_text())["history"]
    again = tmp_path / "again.pt"
    assert cli.main(["train", "--data", str(small_set), "--out", str(again), "--epochs", "1", *options]) == 0
    last = again.with_suffix(".last.pt")
    assert cli.main(["train", "--data", str(small_set), "--out", str(again), "--epochs", "2", "--resume", str(last),
                     *options]) == 0
    stored = json.loads(again.with_suffix(".history.json").read_text())
    assert stored["history"]["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-5)
    assert stored["provenance"]["resumed_from"]["path"] == str(last)
    assert "--epochs 1" in stored["provenance"]["resumed_from"]["command"]
    assert stored["provenance"]["resumed_from"]["epochs"] == 1


def test_train_init_starts_from_the_given_weights_and_records_them(tiny_model, small_set, tmp_path):
    out = tmp_path / "tuned.pt"
    assert cli.main(["train", "--data", str(small_set), "--out", str(out), "--init", str(tiny_model), "--epochs", "1",
                     "--preset", "fast", "--base", "16", "--lr", "1e-12"]) == 0
    start, tuned = torch.load(tiny_model, weights_only=True), torch.load(out, weights_only=True)
    assert tuned["config"] == start["config"] and tuned["heads"] == start["heads"]  # the checkpoint's size, not 16
    weights = [key for key, value in start["state_dict"].items() if key.endswith("weight") and value.ndim == 4]
    assert weights and all(torch.allclose(tuned["state_dict"][key], start["state_dict"][key], atol=1e-6)
                           for key in weights)
    assert tuned["provenance"]["initialized_from"]["sha256"] == data_sha256(tiny_model)


def test_train_interrupted_exits_130_and_names_the_checkpoint_to_resume(small_set, tmp_path, monkeypatch, capsys):
    from nucleilib import train

    def interrupted(*args, **kwargs):
        return {"history": {"stop_reason": "interrupted"}, "metrics": {}}

    monkeypatch.setattr(train, "train_from_npz", interrupted)
    assert cli.main(["train", "--data", str(small_set), "--out", str(tmp_path / "m.pt")]) == 130
    assert f"--resume {tmp_path / 'm.last.pt'}" in capsys.readouterr().err


def data_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_evaluate_prints_pixel_and_instance_metrics(tiny_model, small_set, capsys):
    assert cli.main(["evaluate", "--data", str(small_set), "--model", str(tiny_model), "--threshold", "0.4"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("dice", "iou", "ap50", "f1_50", "mean_ap", "recall_50"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["count_mae"] >= 0.0 and metrics["n_images"] == 12 and metrics["n_true"] > 0
    assert (metrics["data"], metrics["method"], metrics["threshold"]) == (str(small_set), "model", 0.4)


def test_counting_options_become_one_settings_object():
    from nucleilib.count import CountSettings

    parser = cli.build_parser()
    args = parser.parse_args(["count", "a.tif", "--out", "o", "--min-area", "30", "--no-split"])
    assert cli._count_settings(args) == CountSettings(min_area=30, split=False)
    args = parser.parse_args(["evaluate", "--data", "d.npz", "--threshold", "0.3"])
    assert cli._count_settings(args) == CountSettings(threshold=0.3)


def test_evaluate_baseline_on_a_folder_of_pairs(tmp_path, capsys):
    made = synth.make_dataset(n=3, size=64, seed=5)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "images" / f"f{i}.tif", made["images"][i])
        tifffile.imwrite(tmp_path / "labels" / f"f{i}.tif", made["labels"][i].astype(np.uint16))
    assert cli.main(["evaluate", "--data", str(tmp_path), "--method", "baseline"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_images"] == 3 and 0.0 < metrics["dice"] <= 1.0 and metrics["method"] == "baseline"


def test_count_writes_outputs_and_reports_bad_files_by_name(tiny_model, tmp_path, capsys):
    image = synth.make_dataset(n=1, size=64, seed=9)["images"][0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "narrow16.tif", image.astype(np.uint16))
    cv2.imwrite(str(inputs / "gray8.png"), (data.normalize_image(image) * 255).astype(np.uint8))
    rgb = np.zeros((50, 70, 3), np.uint8)
    rgb[..., 2] = 200  # nuclei in one channel of an odd-sized colour image
    cv2.imwrite(str(inputs / "colour.png"), rgb)
    (inputs / "truncated.png").write_bytes((inputs / "gray8.png").read_bytes()[:40])
    (inputs / "empty.tif").write_bytes(b"")
    out = tmp_path / "out"

    missing = tmp_path / "missing.png"
    status = cli.main(["count", str(inputs), str(missing), "--out", str(out), "--model", str(tiny_model)])

    assert status == 1
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and "Traceback" not in stderr
    for name in ("truncated.png", "empty.tif", "missing.png"):
        assert sum(name in line for line in errors) == 1
    with open(out / "counts.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ok = [row for row in rows if row["status"] == "ok"]
    assert sorted(row["file"] for row in ok) == [str(inputs / name) for name in ("colour.png", "gray8.png",
                                                                                 "narrow16.tif")]
    failed = sorted(Path(row["file"]).name for row in rows if row["status"].startswith("failed: "))
    assert failed == ["empty.tif", "missing.png", "truncated.png"]
    for row in ok:
        labels = tifffile.imread(out / row["labels"])
        assert labels.dtype == np.uint16 and int(labels.max()) == int(row["count"])
        assert cv2.imread(str(out / row["labels"].replace("_labels.tif", "_overlay.png"))).shape[:2] == labels.shape
    assert not list(out.rglob(".*.tmp*"))


def test_count_with_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    bogus.write_text("not a model")
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((16, 16), np.uint8))
    assert cli.main(["count", str(image), "--out", str(tmp_path / "o"), "--model", str(bogus)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "model.pt" in error


def test_import_pairs_split_parts_are_disjoint_and_cover_all(tmp_path):
    made = synth.make_dataset(n=6, size=32, seed=1)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(6):
        cv2.imwrite(str(tmp_path / "images" / f"img{i}.png"), (made["images"][i] % 256).astype(np.uint8))
        cv2.imwrite(str(tmp_path / "labels" / f"img{i}.png"), made["labels"][i].astype(np.uint16))
    counts = {}
    for part in ("all", "train", "test"):
        out = tmp_path / f"{part}.npz"
        assert cli.main(["import-pairs", str(tmp_path / "images"), str(tmp_path / "labels"), "--out", str(out),
                         "--size", "32", "--split", part, "--test-fraction", "0.5"]) == 0
        counts[part] = len(io.load_npz(out)[0])
    assert counts["train"] + counts["test"] == counts["all"] == 6
    assert counts["train"] > 0 and counts["test"] > 0


def test_bench_quick_prints_every_named_figure(capsys):
    assert cli.main(["bench", "--json", "--quick"]) == 0
    results = json.loads(capsys.readouterr().out)
    for key in ("matmul_fp32_gflops", "train_speedup_vs_naive_fp32", "train_fraction_of_matmul_peak",
                "infer_images_per_s", "infer_speedup_vs_naive_fp32", "infer_1024_s", "time_to_dice90_s",
                "train_eager_images_per_s", "train_compiled", "infer_fraction_of_matmul_peak"):
        assert key in results
    assert results["machine"]["cpus"] >= 1 and results["machine"]["torch"] == torch.__version__
    assert results["train_compiled"] == (results["train_compile_s"] is not None)
    assert results["train_images_per_s"] > 0 and results["infer_images_per_s"] > 0
    shares = [results[f"count_share_{stage}"] for stage in ("read", "normalize", "network", "postprocessing", "write")]
    assert results["count_s_per_megapixel"] > 0 and all(share > 0 for share in shares)
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)
