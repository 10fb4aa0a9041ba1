"""The project installed the way a command-line tool is: a wheel, in a fresh environment, away from the checkout."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import tifffile

from nucleilib import synth

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    # Built from a copy: setuptools writes build/ and *.egg-info/ beside the sources it builds.
    shutil.copytree(ROOT / "nucleilib", source / "nucleilib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True, cwd=out)
    return next(out.glob("nucleilib-*.whl"))


def test_the_wheel_holds_the_shipped_model(wheel):
    with zipfile.ZipFile(wheel) as archive:
        assert "nucleilib/nuclei_unet.pt" in archive.namelist()


def test_an_installed_wheel_counts_an_image_outside_the_checkout(wheel, tmp_path):
    environment = tmp_path / "env"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    image = tmp_path / "nuclei.tif"
    tifffile.imwrite(image, synth.make_dataset(n=1, size=128, seed=5)["images"][0])
    # The dependencies (torch, numpy, ...) come from this interpreter's site-packages; PYTHONPATH does not read its
    # .pth files, so the editable install of the checkout stays out and nucleilib is the wheel's.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "NUCLEILIB_MODEL": ""}
    where = subprocess.run([python, "-c", "import nucleilib; print(nucleilib.__file__)"], check=True, cwd=tmp_path,
                           capture_output=True, text=True, env=env).stdout
    assert str(environment) in where and str(ROOT) not in where
    subprocess.run([python, "-m", "nucleilib", "count", str(image), "--out", str(tmp_path / "out")], check=True,
                   cwd=tmp_path, capture_output=True, env=env)
    with open(tmp_path / "out" / "counts.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == 1 and int(rows[0]["count"]) > 0
