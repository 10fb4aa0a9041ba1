"""Tests of nucleilib.datasets.download against a local HTTP server (no internet needed)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from nucleilib import datasets
from nucleilib.io import load_npz


def png_bytes(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    assert ok
    return buffer.tobytes()


def dsb_zip(members: dict[str, bytes] | None = None) -> bytes:
    """A tiny DSB-layout archive: two 40x40 images with 2 and 1 nuclei (no top folder, like stage1_train.zip)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, count in (("img1", 2), ("img2", 1)):
            image = np.full((40, 40, 4), 20, np.uint8)
            image[..., 3] = 255
            archive.writestr(f"{name}/images/{name}.png", png_bytes(image))
            for index in range(count):
                mask = np.zeros((40, 40), np.uint8)
                mask[5 + 15 * index : 12 + 15 * index, 5:12] = 255
                archive.writestr(f"{name}/masks/m{index}.png", png_bytes(mask))
        for name, content in (members or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, http.server.HTTPServer]]:
    """Serve tmp_path/www on 127.0.0.1 at a free port; yields (base url, folder, server)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_imports_verifies_and_reuses_cache(server, tmp_path: Path) -> None:
    base_url, root, httpd = server
    payload = dsb_zip()
    (root / "dsb.zip").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    cache = tmp_path / "cache"

    out = datasets.download("dsb2018", cache, url=f"{base_url}/dsb.zip", sha256=digest, size=32, progress=False)
    assert out == cache / "dsb2018.npz"
    x, y, labels = load_npz(out)
    assert x.shape == (8, 1, 32, 32)  # 2 images of 40x40 -> 2 x 2 tiles each (starts 0 and 8)
    # img1's nuclei (rows 5..11 and 20..26, cols 5..11) reach into all 4 of its tiles
    assert [int(t.max()) for t in labels] == [2, 2, 2, 2, 1, 1, 1, 1]
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]

    httpd.shutdown()  # server gone: the cached archive is reused
    again = datasets.download(
        "dsb2018", cache, out=tmp_path / "again.npz", url=f"{base_url}/dsb.zip", sha256=digest, size=32, progress=False
    )
    assert np.array_equal(load_npz(again)[2], labels)


def test_download_hash_mismatch_leaves_nothing(server, tmp_path: Path) -> None:
    base_url, root, _ = server
    (root / "dsb.zip").write_bytes(dsb_zip())
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="SHA-256") as error:
        datasets.download("dsb2018", cache, url=f"{base_url}/dsb.zip", sha256="0" * 64, progress=False)
    assert "\n" not in str(error.value)
    assert not [p for p in cache.rglob("*") if p.is_file()]
    assert not (cache / "dsb2018.npz").exists()


def test_download_trusts_first_hash_then_verifies(server, tmp_path: Path) -> None:
    base_url, root, _ = server
    (root / "dsb.zip").write_bytes(dsb_zip())
    cache = tmp_path / "cache"
    datasets.download("dsb2018", cache, url=f"{base_url}/dsb.zip", size=32, progress=False)
    [record] = list(cache.glob("*.sha256"))
    assert record.read_text().split()[0] == hashlib.sha256(dsb_zip()).hexdigest()
    # the server now serves different bytes and the cached archive is gone: the recorded hash refuses them
    (root / "dsb.zip").write_bytes(dsb_zip({"extra.txt": b"changed"}))
    next(cache.glob("*.zip")).unlink()
    with pytest.raises(ValueError, match="SHA-256"):
        datasets.download("dsb2018", cache, url=f"{base_url}/dsb.zip", size=32, progress=False)


def test_download_http_error_is_one_line(server, tmp_path: Path) -> None:
    base_url, _, _ = server
    with pytest.raises(RuntimeError) as error:
        datasets.download("dsb2018", tmp_path / "cache", url=f"{base_url}/missing.zip", progress=False)
    message = str(error.value)
    assert "404" in message and "missing.zip" in message and "\n" not in message
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_download_refuses_paths_escaping_the_folder(server, tmp_path: Path) -> None:
    base_url, root, _ = server
    (root / "evil.zip").write_bytes(dsb_zip({"../../escaped.txt": b"gotcha"}))
    with pytest.raises(ValueError, match="outside the folder"):
        datasets.download("dsb2018", tmp_path / "cache", url=f"{base_url}/evil.zip", progress=False)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_download_unknown_name_and_cache_env(monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data set 'foo'"):
        datasets.download("foo")
    monkeypatch.setenv("NUCLEILIB_CACHE", str(tmp_path / "c"))
    assert datasets.default_cache_dir() == tmp_path / "c"


def test_download_interrupted_leaves_no_partial_file(monkeypatch, tmp_path: Path) -> None:
    class Interrupted(io.BytesIO):
        headers = {"Content-Length": "4096"}

        def read(self, size: int = -1) -> bytes:
            if self.tell() >= 1024:
                raise KeyboardInterrupt
            return super().read(1024)

    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout: Interrupted(b"x" * 4096))
    with pytest.raises(KeyboardInterrupt):
        datasets.download("dsb2018", tmp_path / "cache", url="http://example.invalid/a.zip", progress=False)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_download_fetches_the_table_archives_once_and_unpacks_both_layouts(monkeypatch, tmp_path: Path) -> None:
    """bbbc039 from its two default archives: images.zip holds a top folder images/, masks.zip holds bare files."""
    import tifffile

    image = np.full((40, 40), 110, np.uint16)
    image[5:12, 5:12] = 3000
    red = np.zeros((40, 40, 3), np.uint8)
    red[5:12, 5:12, 2] = 1  # BGR: index 2 is red
    tif = io.BytesIO()
    tifffile.imwrite(tif, image)
    served = {}
    for name, members in (("images.zip", {"images/w1.tif": tif.getvalue()}), ("masks.zip", {"w1.png": png_bytes(red)})):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for member, content in members.items():
                archive.writestr(member, content)
        served[name] = buffer.getvalue()
    requested = []

    class Response(io.BytesIO):
        headers: dict[str, str] = {}

    def urlopen(url: str, timeout: float) -> Response:
        requested.append(url)
        return Response(served[url.rsplit("/", 1)[-1]])

    monkeypatch.setattr(datasets.urllib.request, "urlopen", urlopen)
    cache = tmp_path / "cache"
    out = datasets.download("bbbc039", cache, size=32, progress=False)
    assert requested == [url for url, _ in datasets.DOWNLOADS["bbbc039"]]
    assert sorted(p.name for p in (cache / "bbbc039").iterdir() if not p.name.startswith(".")) == ["images", "masks"]
    assert (cache / "images.zip.sha256").read_text().split()[0] == hashlib.sha256(served["images.zip"]).hexdigest()
    x, y, labels = load_npz(out)
    assert x.shape == (4, 1, 32, 32) and [int(t.max()) for t in labels] == [1, 1, 1, 1]
    requested.clear()
    datasets.download("bbbc039", cache, size=32, progress=False)
    assert requested == []  # both archives came from the cache
    with pytest.raises(ValueError, match="2 archives"):
        datasets.download("bbbc039", cache, sha256="0" * 64, progress=False)
