"""Write the chapters without their solutions, for a class: `make exercises` -> exercises/NN_name.ipynb.

A solution is a cell tagged "solution" (in JupyterLab it is collapsed; on the rendered page, hidden behind
"show"). The exercise copies keep every other cell, with all outputs cleared, so learners run them fresh.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def strip_solutions(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop the cells tagged "solution" and clear the outputs of the others."""
    notebook.cells = [cell for cell in notebook.cells if "solution" not in cell.metadata.get("tags", [])]
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return notebook


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for chapter in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        notebook = strip_solutions(nbformat.read(chapter, as_version=4))
        target = out / chapter.name
        partial = target.with_suffix(".ipynb.tmp")
        nbformat.write(notebook, partial)
        partial.replace(target)  # atomic: a reader never sees half a notebook
        print(f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "exercises"))
