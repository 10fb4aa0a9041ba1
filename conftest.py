"""Repository-level pytest configuration."""

# The notebooks' .py files are jupytext sources, not modules: importing them would run a chapter.
# nbval executes the paired .ipynb instead.
collect_ignore_glob = ["notebooks/*.py", "nucleilib/__main__.py"]


def pytest_configure(config): config.addinivalue_line("markers", "browser: JupyterLab in headless Chromium")
