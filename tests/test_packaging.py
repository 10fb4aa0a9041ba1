"""The project's own files agree with each other: pins, notebook pairs, CI."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", requirement)
        assert match, f"not pinned exactly: {requirement!r}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [item for group in project["optional-dependencies"].values() for item in group
              if not item.startswith("nucleilib[")]  # dev includes the other extras by name
    return _pins(project["dependencies"] + extras)


def _environment_pins() -> dict[str, str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    requirements = []
    for line in lines[start + 1 :]:
        item = line.strip()
        if item.startswith("#") or not item:
            continue
        if not item.startswith("- "):
            break
        if not item[2:].startswith("--"):
            requirements.append(item[2:])
    return _pins(requirements)


def test_environment_yml_lists_the_same_pins_as_pyproject():
    assert _environment_pins() == _pyproject_pins()


def test_torch_is_pinned_to_the_cpu_build_on_disk():
    # A bare `torch` or a newer release pulls a multi-GB CUDA build.
    assert _pyproject_pins()["torch"] == "2.13.0"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make run" in readme
    ci_commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.strip().startswith(("#", "set ", "cd "))
    ]
    assert ci_commands == ["make test"]


def test_every_chapter_is_a_pair():
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert CHAPTER_SOURCES, "no chapters found"
    assert [p.stem for p in notebooks] == [p.stem for p in CHAPTER_SOURCES]


@pytest.mark.parametrize("source", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_chapter_py_and_ipynb_have_the_same_cells(source: Path):
    from_py = jupytext.read(source)
    from_ipynb = jupytext.read(source.with_suffix(".ipynb"))
    cells_py = [(c.cell_type, c.source.strip()) for c in from_py.cells]
    cells_ipynb = [(c.cell_type, c.source.strip()) for c in from_ipynb.cells]
    assert cells_py == cells_ipynb, f"{source.name} and its .ipynb differ: run `make run` (or jupytext --sync)"
    tags_py = [c.metadata.get("tags", []) for c in from_py.cells]
    tags_ipynb = [c.metadata.get("tags", []) for c in from_ipynb.cells]
    assert tags_py == tags_ipynb


@pytest.mark.parametrize("source", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_chapter_ipynb_carries_outputs(source: Path):
    notebook = jupytext.read(source.with_suffix(".ipynb"))
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert any(c.get("outputs") for c in code_cells), f"{source.stem}.ipynb has no outputs: run `make run`"


def _chapter(source: Path):
    return jupytext.read(source)


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


@pytest.mark.parametrize("source", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_code_cells_are_short(source: Path):
    long_cells = [i for i, c in enumerate(_chapter(source).cells)
                  if c.cell_type == "code" and len(c.source.strip().splitlines()) > 15]
    assert not long_cells, f"{source.name}: code cells over 15 lines: {long_cells}"


@pytest.mark.parametrize("source", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_first_code_cell_is_the_quick_demo_switch(source: Path):
    first = next(c for c in _chapter(source).cells if c.cell_type == "code")
    assert "QUICK_DEMO = False" in first.source and 'os.environ["NUCLEILIB_FAST"]' in first.source
    assert not first.metadata.get("jupyter", {}).get("source_hidden"), "the switch must stay visible"


@pytest.mark.parametrize("source", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_solutions_are_collapsed(source: Path):
    solutions = [c for c in _chapter(source).cells if "solution" in _tags(c)]
    assert solutions, f"{source.name} has no exercise solutions"
    for cell in solutions:
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, "collapsed in JupyterLab"
        assert "hide-cell" in _tags(cell), "collapsed on the rendered page (Jupyter Book)"


@pytest.mark.parametrize("source", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_each_chapter_has_an_exercise_checked_by_a_cell(source: Path):
    cells = _chapter(source).cells
    checks = [i for i, c in enumerate(cells) if "exercise-check" in _tags(c)]
    assert checks, f"{source.name}: no cell tagged exercise-check"
    for i in checks:
        assert "assert" in cells[i].source, "a check cell asserts what the learner's code must do"
        assert any("solution" in _tags(c) for c in cells[:i]), "the check follows a (hidden) solution"


def test_exercise_build_drops_solutions_and_outputs(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_exercises.py"), str(tmp_path)], check=True,
                   capture_output=True)
    built = sorted(tmp_path.glob("*.ipynb"))
    assert [p.name for p in built] == [p.with_suffix(".ipynb").name for p in CHAPTER_SOURCES]
    for path in built:
        cells = jupytext.read(path).cells
        assert not [c for c in cells if "solution" in _tags(c)]
        assert any("exercise-check" in _tags(c) for c in cells)
        assert not [c for c in cells if c.cell_type == "code" and c.get("outputs")]
