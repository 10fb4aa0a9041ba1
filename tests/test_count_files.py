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


def rows(out: Path) -> list[dict]:
    with open(out / "counts.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def count(model: Path, *args) -> int:
    return cli.main(["count", *map(str, args), "--model", str(model)])


def test_an_interrupt_keeps_the_rows_of_the_images_done_and_a_rerun_counts_the_rest(model, tmp_path, monkeypatch,
                                                                                  capsys):
    files = [write(tmp_path / "in" / f"{i}.tif", image(i)) for i in range(4)]
    out, real_overlay, calls = tmp_path / "out", evaluate.overlay, []

    def overlay_then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_overlay(*args)

    monkeypatch.setattr(evaluate, "overlay", overlay_then_ctrl_c)
    assert count(model, *files, "--out", out) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert [(row["file"], row["status"]) for row in rows(out)] == [(str(files[0]), "ok"), (str(files[1]), "ok")]
    assert not list(out.rglob(".*.tmp*"))
    monkeypatch.setattr(evaluate, "overlay", real_overlay)
    assert count(model, *files, "--out", out) == 0
    assert "2 images counted, 2 counted before, 0 failed" in capsys.readouterr().out
    assert [row["file"] for row in rows(out)] == [str(f) for f in files]


def test_a_rerun_keeps_earlier_rows_and_skips_the_images_already_counted(model, tmp_path, capsys):
    a, b = write(tmp_path / "a.tif", image(1)), write(tmp_path / "b.tif", image(2))
    out = tmp_path / "out"
    assert count(model, a, b, "--out", out) == 0
    before = {row["file"]: row for row in rows(out)}
    stamp = (out / before[str(a)]["labels"]).stat().st_mtime_ns
    assert count(model, a, b, tmp_path / "gone.tif", "--out", out) == 1  # one input missing: the rest stays
    after = {row["file"]: row for row in rows(out)}
    assert after[str(a)] == before[str(a)] and after[str(b)] == before[str(b)]
    assert after[str(tmp_path / "gone.tif")]["status"].startswith("failed: ")
    assert (out / before[str(a)]["labels"]).stat().st_mtime_ns == stamp  # not counted again
    assert "0 images counted, 2 counted before, 1 failed" in capsys.readouterr().out


def test_a_folder_with_another_runs_counts_is_refused_unless_overwrite(model, tmp_path, capsys):
    a = write(tmp_path / "a.tif", image(1))
    out = tmp_path / "out"
    assert count(model, a, "--out", out) == 0
    capsys.readouterr()
    assert count(model, a, "--out", out, "--threshold", "0.3") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "threshold 0.5 -> 0.3" in error and "--overwrite" in error
    assert len(rows(out)) == 1
    (out / "count_run.json").unlink()  # counts of an unknown run (e.g. an older version)
    assert count(model, a, "--out", out) == 2
    assert count(model, a, "--out", out, "--threshold", "0.3", "--overwrite") == 0
    assert len(rows(out)) == 1 and '"threshold": 0.3' in (out / "count_run.json").read_text()


def test_a_rerun_in_another_precision_is_refused(model, tmp_path, capsys):
    a, out = write(tmp_path / "a.tif", image(1)), tmp_path / "out"
    assert count(model, a, "--out", out, "--precision", "fp32") == 0
    capsys.readouterr()
    assert count(model, a, "--out", out, "--precision", "bf16") == 2
    assert "precision fp32 -> bf16" in capsys.readouterr().err


def test_a_second_run_into_the_same_folder_refuses_at_once(model, tmp_path, capsys):
    a, out = write(tmp_path / "a.tif", image(1)), tmp_path / "out"
    out.mkdir()
    with evaluate._folder_lock(out):  # another count holds the folder
        assert count(model, a, "--out", out) == 2
    assert "another count is writing here" in capsys.readouterr().err
    assert not (out / "counts.csv").exists()
    assert count(model, a, "--out", out) == 0  # the lock went with its holder


def test_every_per_image_failure_is_named_recorded_and_the_batch_goes_on(model, tmp_path, monkeypatch, capsys):
    bad = image(5).astype(np.float32)
    bad[3, 3] = np.nan
    two_channels = np.stack([image(6), image(7)], axis=-1)
    files = [write(tmp_path / "a.tif", image(1)), write(tmp_path / "nan.tif", bad),
             write(tmp_path / "two.tif", two_channels), write(tmp_path / "odd.tif", image(8)[:40]),
             write(tmp_path / "z.tif", image(2))]
    real = evaluate.segmenter

    def segmenter(*args, **kwargs):
        segment = real(*args, **kwargs)
        return lambda pixels: (_ for _ in ()).throw(RuntimeError("boom\nsecond line")) if pixels.shape[0] == 40 \
            else segment(pixels)

    monkeypatch.setattr(evaluate, "segmenter", segmenter)
    assert count(model, *files, "--out", tmp_path / "out") == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {files[1]}: contains NaN or infinite pixel values",
                      f"error: {files[2]}: has 2 channels; name the one with the nuclei (count --channel 0 or 1)",
                      f"error: {files[3]}: boom"]
    status = {Path(row["file"]).name: row["status"] for row in rows(tmp_path / "out")}
    assert status["a.tif"] == status["z.tif"] == "ok" and status["odd.tif"] == f"failed: {files[3]}: boom"


def test_outputs_are_unique_per_input_and_the_csv_holds_the_paths_as_given(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("d1/x.tif", "d1/x.png", "d2/x.tif"):
        write(tmp_path / name, image(len(name)).astype(np.uint8) if name.endswith(".png") else image(3))
    assert count(model, "d1/x.tif", "d1/x.png", "d2/x.tif", "--out", "out") == 0
    table = rows(tmp_path / "out")
    assert [row["file"] for row in table] == ["d1/x.tif", "d1/x.png", "d2/x.tif"]
    assert [row["labels"] for row in table] == ["d1/x.tif_labels.tif", "d1/x.png_labels.tif", "d2/x.tif_labels.tif"]
    assert all((tmp_path / "out" / row["labels"]).is_file() for row in table)
    # A later run into the folder, of another folder's x.tif alone, gets a name of its own.
    write(tmp_path / "d3/x.tif", image(4))
    assert count(model, "d3/x.tif", "--out", "out") == 0
    assert rows(tmp_path / "out")[-1]["labels"] == "x.tif_labels.tif"
    write(tmp_path / "d4/x.tif", image(5))
    assert count(model, "d4/x.tif", "--out", "out") == 0
    assert rows(tmp_path / "out")[-1]["labels"] == "x.tif~2_labels.tif"


@pytest.mark.parametrize("option", [["--threshold", "2"], ["--threshold", "nan"], ["--threshold", "0"],
                                    ["--min-area", "-1"], ["--min-area", "ten"], ["--channel", "-1"]])
def test_bad_options_are_refused_before_anything_loads(option, tmp_path, capsys):
    try:
        status = cli.main(["count", "a.tif", "--out", str(tmp_path / "o"), "--model", "no/such/model.pt", *option])
    except SystemExit as stopped:  # argparse: not a number at all
        status = stopped.code
    assert status == 2
    error = capsys.readouterr().err.splitlines()[-1]
    name = option[0].lstrip("-").replace("-", "_")
    assert "error: " in error and (name in error or option[0] in error) and option[1] in error.lower()
    assert "model" not in error and not (tmp_path / "o").exists()


def test_errors_are_one_line_without_errno_or_temporary_names(model, tmp_path, monkeypatch, capsys):
    a = write(tmp_path / "a.tif", image(1))
    (tmp_path / "file").write_text("")
    assert count(model, a, "--out", tmp_path / "file") == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'file'}: exists and is not a folder\n"
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    stale = [out / ".a.tif_labels.0a1b2c3d.tmp.tif", out / "sub" / ".b.tif_overlay.4e5f6a7b.tmp.png"]
    for path in stale:
        path.write_bytes(b"half")
    monkeypatch.setattr("os.replace", lambda src, dst: (_ for _ in ()).throw(PermissionError(13, "Permission denied",
                                                                                            str(src))))
    assert count(model, a, "--out", out) == 2
    error = capsys.readouterr().err
    assert error == f"error: {out / 'count_run.json'}: Permission denied\n"
    assert not any(path.exists() for path in stale) and not list(out.rglob(".*.tmp*"))


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
