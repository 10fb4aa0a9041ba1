"""The threshold explorer driven for real: JupyterLab serves chapter 07, headless Chromium moves the slider.

The test installs what it needs: Debian's ``chromium`` (``apt-get``, when running as root) and the
``playwright`` Python package (pip, into this interpreter; its own browser download is never used,
Playwright drives the system Chromium). It is skipped, with the reason, only where that cannot be done.
It takes about a minute once installed; deselect it with ``-m "not browser"``.

Steps: copy the chapter (from its jupytext source, no stale outputs) to a temporary folder, start
JupyterLab there on 127.0.0.1 with a token, open the notebook in headless Chromium, run all cells, read
the explorer's count (CSS class ``nucleilib-count``), move the threshold slider (``nucleilib-threshold``)
with the keyboard (image after image, through the explorer's dropdown, until one's count moves) and with
the mouse, and check that the displayed count follows. ``NUCLEILIB_CHROMIUM`` names another Chromium binary.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from nucleilib.widgets import COUNT_CLASS, THRESHOLD_CLASS

pytestmark = pytest.mark.browser

PLAYWRIGHT_PIN = "playwright==1.65.2"
CHAPTER = Path(__file__).resolve().parent.parent / "notebooks" / "07_counting.py"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
COUNT_PATTERN = re.compile(r"count: (\d+)(?: \(true (\d+)\))?")


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run an install command; its output is kept for the skip reason."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _tail(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr).strip()[-400:]


def _find_chromium() -> str | None:
    """The browser: ``$NUCLEILIB_CHROMIUM`` if set, else Debian's chromium on the PATH."""
    override = os.environ.get("NUCLEILIB_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _install_chromium() -> str:
    """Debian's chromium, installed with apt-get when missing; pytest.skip where that is impossible."""
    found = _find_chromium()
    if found:
        return found
    if os.environ.get("NUCLEILIB_CHROMIUM"):
        pytest.skip(f"NUCLEILIB_CHROMIUM={os.environ['NUCLEILIB_CHROMIUM']} is not a file")
    if not shutil.which("apt-get"):
        pytest.skip("no chromium installed and no apt-get to install it (Debian/Ubuntu only)")
    if os.geteuid() != 0:
        pytest.skip("no chromium installed and not root, so `apt-get install chromium` is impossible")
    try:
        update = _run(["apt-get", "-o", "DPkg::Lock::Timeout=120", "update", "-qq"], timeout=300)
        if update.returncode != 0:
            pytest.skip(f"apt-get update failed, cannot install chromium: {_tail(update)}")
        install = _run(["apt-get", "-o", "DPkg::Lock::Timeout=120", "install", "-y", "-qq", "chromium"],
                       timeout=900)
    except subprocess.TimeoutExpired as error:
        pytest.skip(f"installing chromium timed out: {error}")
    found = _find_chromium()
    if install.returncode != 0 or not found:
        pytest.skip(f"apt-get install chromium failed: {_tail(install)}")
    return found


def _install_playwright():
    """The playwright package, pip-installed into this interpreter when missing (never its browsers)."""
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError:
        pass
    try:
        result = _run([sys.executable, "-m", "pip", "install", "--quiet", PLAYWRIGHT_PIN], timeout=600)
    except subprocess.TimeoutExpired as error:
        pytest.skip(f"pip install {PLAYWRIGHT_PIN} timed out: {error}")
    if result.returncode != 0:
        pytest.skip(f"pip install {PLAYWRIGHT_PIN} failed: {_tail(result)}")
    importlib.invalidate_caches()
    return importlib.import_module("playwright.sync_api")


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (a fresh temporary profile)."""
    executable = _install_chromium()
    sync_api = _install_playwright()
    with sync_api.sync_playwright() as playwright:
        # Installed but not starting is a failure, not a skip.
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True,
                                              timeout=60_000)
        yield chromium
        chromium.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM lets the server shut its kernels down; the process group is killed if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the process group we started, if anything is left in it
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def jupyterlab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving a fresh copy of chapter 07; yields (base URL, token, notebook name)."""
    jupytext = pytest.importorskip("jupytext")
    root = tmp_path_factory.mktemp("lab")
    notebook_name = CHAPTER.with_suffix(".ipynb").name
    # From the source: no stale outputs or widget state, and the repository's notebooks stay untouched.
    jupytext.write(jupytext.read(CHAPTER), root / notebook_name)
    home = tmp_path_factory.mktemp("lab_home")
    # No "get notified about Jupyter news?" pop-up and no update check: nothing leaves localhost.
    notification = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = _free_port(), uuid.uuid4().hex
    env = {
        **os.environ,
        "NUCLEILIB_FAST": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
        "NUCLEILIB_FIGURES": str(root / "figures"),
        "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    }
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--expose-app-in-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log_path = home / "jupyterlab.log"
    log = open(log_path, "w")
    process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within 90 s:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base, token, notebook_name
    finally:
        _stop(process)
        log.close()


# Run in the page: "done" when every code cell has run and the kernel is idle, "error: ..." on a failed cell.
NOTEBOOK_FINISHED = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    if (!panel || !panel.content || !panel.sessionContext) return false;
    const cells = panel.content.widgets.filter(cell => cell.model.type === 'code');
    for (const [index, cell] of cells.entries()) {
        const error = cell.model.outputs.toJSON().find(output => output.output_type === 'error');
        if (error) return `error in code cell ${index}: ${error.ename}: ${error.evalue}`;
    }
    const ran = cells.length > 0 && cells.every(cell => cell.model.executionCount !== null);
    return ran && panel.sessionContext.kernelDisplayStatus === 'idle' ? 'done' : false;
}"""

KERNEL_READY = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    return !!(panel && panel.sessionContext && panel.content
              && panel.sessionContext.kernelDisplayStatus === 'idle');
}"""


EXPLORER = f".jp-OutputArea-output:has(.{THRESHOLD_CLASS})"


def _count_text(page) -> str:
    """The count as displayed, e.g. 'count: 9 (true 11)' (textContent: also right while off screen)."""
    text = page.locator(f"{EXPLORER} .{COUNT_CLASS}").text_content().strip()
    assert COUNT_PATTERN.fullmatch(text), f"the count widget shows {text!r}, not 'count: N (true M)'"
    return text


def _readout(page) -> float:
    return float(page.locator(f"{EXPLORER} .{THRESHOLD_CLASS} .widget-readout").text_content().strip())


def _after_update(page, action) -> tuple[float, str]:
    """Do ``action`` and wait for the kernel's answer: a new picture (every control change redraws it;
    the count is set just before it); return the threshold readout and the count text."""
    picture = page.locator(f"{EXPLORER} img")
    old_src = picture.get_attribute("src")
    action()
    page.wait_for_function(
        "([selector, old]) => { const img = document.querySelector(selector);"
        " return img && img.getAttribute('src') !== old; }",
        arg=[f"{EXPLORER} img", old_src], timeout=60_000)
    return _readout(page), _count_text(page)


def test_count_follows_the_threshold_slider(browser, jupyterlab, tmp_path):
    base, token, notebook_name = jupyterlab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{base}/lab/tree/{notebook_name}?token={token}", wait_until="domcontentloaded")
        page.wait_for_function(KERNEL_READY, timeout=90_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        finished = page.wait_for_function(NOTEBOOK_FINISHED, timeout=150_000).json_value()
        assert finished == "done", finished
        page.wait_for_function(
            "s => { const el = document.querySelector(s); return el && /count: \\d+/.test(el.textContent); }",
            arg=f"{EXPLORER} .{COUNT_CLASS}", timeout=30_000)
        page.locator(f"{EXPLORER} .{THRESHOLD_CLASS}").scroll_into_view_if_needed()
        handle = page.locator(f"{EXPLORER} .{THRESHOLD_CLASS} .noUi-handle")
        chooser = page.locator(f"{EXPLORER} select")
        image_names = chooser.locator("option").all_text_contents()
        assert _readout(page) == pytest.approx(0.5)

        # A sharp model counts some images the same at every threshold: go through the explorer's
        # images (its dropdown) until the count moves with the slider. End = 0.95, Home = 0.05.
        seen = {}
        for position, name in enumerate(image_names):
            if position > 0:
                _after_update(page, lambda: chooser.select_option(label=name))
            readings = [(_readout(page), _count_text(page))]
            for key in ("End", "Home"):
                readings.append(_after_update(page, lambda: (handle.focus(), page.keyboard.press(key))))
            seen[name] = readings
            if len({text for _, text in readings}) > 1:
                break
        print("threshold, count per image:", {name.replace("\xa0", " "): r for name, r in seen.items()})
        assert [threshold for threshold, _ in readings[1:]] == pytest.approx([0.95, 0.05])
        assert len({text for _, text in readings}) > 1, f"the count never changed with the threshold: {seen}"
        true_counts = {COUNT_PATTERN.fullmatch(text).group(2) for _, text in readings}
        assert len(true_counts) == 1, f"the true count changed with the threshold: {readings}"

        # The mouse: drag the handle from 0.05 to the middle of the track.
        box = handle.bounding_box()
        track = page.locator(f"{EXPLORER} .{THRESHOLD_CLASS} .noUi-base").bounding_box()
        y = box["y"] + box["height"] / 2

        def drag() -> None:
            page.mouse.move(box["x"] + box["width"] / 2, y)
            page.mouse.down()
            page.mouse.move(track["x"] + track["width"] / 2, y, steps=8)
            page.mouse.up()

        threshold, text = _after_update(page, drag)
        print(f"after dragging: threshold {threshold:.2f}, {text}")
        assert 0.4 <= threshold <= 0.6
    finally:
        page.screenshot(path=str(tmp_path / "threshold_explorer.png"))
        print("screenshot:", tmp_path / "threshold_explorer.png")
        page.close()
