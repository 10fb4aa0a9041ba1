"""The library's shape: one job per module, imports pointing down, small functions, nothing twice.

These are the budgets of the module-layout issue, checked on every run so they cannot erode. The library may grow
only by the lines a named feature was granted (FEATURE_LINES), so growth is a decision on a review, not drift.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nucleilib"
MODULES = sorted(p for p in PACKAGE.glob("*.py"))

# Bottom to top: a module may import only modules listed before it.
LAYERS = [
    "presets", "data", "synth", "io", "datasets", "metrics", "augment", "model", "losses", "checkpoint",
    "runtime", "predict", "train", "count", "evaluate", "viz", "widgets", "bench", "export", "cli", "__main__",
    "__init__",
]
# Modules a user can import without PyTorch (count.py is what `count` post-processing needs).
NUMPY_ONLY = ["presets", "data", "synth", "io", "datasets", "metrics", "count"]
LAYOUT_ISSUE_LINES = 5500  # the library when the module-layout issue closed, with a little room
FEATURE_LINES = {
    "train --resume and --init (issues 14, 15)": 40,
    "export: the model as ONNX (issue 15)": 100,
    "--precision: bfloat16 inference where it is native (issue 16)": 45,
    "bench: count's seconds per megapixel and the share of each stage (issue 16)": 60,
}
MAX_LIBRARY_LINES = LAYOUT_ISSUE_LINES + sum(FEATURE_LINES.values())
MAX_MODULE_LINES = 600
MAX_BODY_LINES = 60
MAX_PARAMETERS = 10


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _functions(tree: ast.Module):
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _body_lines(function: ast.FunctionDef) -> int:
    body = function.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
    statements = body[1:] if has_docstring and len(body) > 1 else body
    return statements[-1].end_lineno - statements[0].lineno + 1


def _parameters(function: ast.FunctionDef) -> list[str]:
    arguments = function.args
    names = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
    names += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return [name for name in names if name not in ("self", "cls")]


def _imported_modules(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nucleilib"):
            if node.module == "nucleilib":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("nucleilib."))
    return found & {path.stem for path in MODULES}


def test_every_module_has_a_layer():
    assert sorted(p.stem for p in MODULES) == sorted(set(LAYERS) & {p.stem for p in MODULES})
    assert not {p.stem for p in MODULES} - set(LAYERS), "add the new module to LAYERS"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_imports_point_down(path):
    below = set(LAYERS[: LAYERS.index(path.stem)])
    upward = sorted(_imported_modules(_tree(path)) - below)
    assert not upward, f"{path.name} imports {upward}, which are not below it in LAYERS"


def test_line_budgets():
    sizes = {path.name: len(path.read_text().splitlines()) for path in MODULES}
    print(sizes, "total", sum(sizes.values()))
    assert sum(sizes.values()) <= MAX_LIBRARY_LINES
    assert not {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_functions_are_small(path):
    too_long, too_many = [], []
    for function in _functions(_tree(path)):
        if _body_lines(function) > MAX_BODY_LINES:
            too_long.append((function.name, _body_lines(function)))
        if len(_parameters(function)) > MAX_PARAMETERS:
            too_many.append((function.name, len(_parameters(function))))
    assert not too_long, f"function bodies over {MAX_BODY_LINES} lines: {too_long}"
    assert not too_many, f"functions with over {MAX_PARAMETERS} parameters: {too_many}"


def test_nothing_defined_twice():
    seen: dict[str, str] = {}
    twice = []
    for path in MODULES:
        for node in _tree(path).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if node.name in seen:
                    twice.append(f"{node.name}: {seen[node.name]} and {path.name}")
                seen[node.name] = path.name
    assert not twice


def _all_sources() -> str:
    paths = list(PACKAGE.glob("*.py")) + list((ROOT / "tests").glob("*.py")) + list((ROOT / "notebooks").glob("*.py"))
    return "\n".join(path.read_text() for path in paths)


def test_no_dead_functions():
    """Every top-level function is used somewhere outside its own definition (library, tests or chapters)."""
    everything = _all_sources()
    dead = []
    for path in MODULES:
        source = path.read_text()
        for node in _tree(path).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name not in ("main",):
                own = ast.get_source_segment(source, node) or ""
                uses = len(re.findall(rf"\b{node.name}\b", everything)) - len(re.findall(rf"\b{node.name}\b", own))
                if uses <= 0:
                    dead.append(f"{path.stem}.{node.name}")
    assert not dead, f"never used: {dead}"


@pytest.mark.parametrize("module", NUMPY_ONLY)
def test_numpy_only_modules_do_not_import_torch(module):
    code = f"import sys, nucleilib.{module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False", f"importing nucleilib.{module} loads torch"
