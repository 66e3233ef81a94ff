"""The static image server: serves files under its root, nothing else, and feeds the fetcher."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from streams.config import FetchSettings
from streams.images import FetchOutcome, ImageFetcher
from streams.images_server import ImageServer

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + bytes(300)
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(300)


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    """``tmp/catalog`` with images, a subdirectory and symlinks; ``tmp/secret.txt`` lies outside it."""
    root = tmp_path / "catalog"
    (root / "dresses").mkdir(parents=True)
    (root / "dress-001.jpg").write_bytes(JPEG)
    (root / "dresses" / "dress-002.png").write_bytes(PNG)
    (root / "shoe.WEBP").write_bytes(WEBP)
    (root / "notes.bin").write_bytes(b"\x00\x01")
    (tmp_path / "secret.txt").write_text("do not serve me")
    (root / "escape.jpg").symlink_to(tmp_path / "secret.txt")
    (root / "alias.jpg").symlink_to(root / "dress-001.jpg")
    return root


@pytest.fixture
def server(catalog: Path) -> Iterator[ImageServer]:
    with ImageServer(catalog) as running:
        yield running


def raw_get(base_url: str, path: str, method: str = "GET") -> tuple[int, str | None, bytes]:
    """Send ``path`` exactly as written (http.client does not normalise ``..`` the way URL libraries do)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def test_base_url_and_port_zero(server: ImageServer) -> None:
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.base_url.endswith("/")
    assert int(urlsplit(server.base_url).port or 0) > 0


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/dress-001.jpg", JPEG, "image/jpeg"),
        ("/dresses/dress-002.png", PNG, "image/png"),
        ("/shoe.WEBP", WEBP, "image/webp"),
        ("/alias.jpg", JPEG, "image/jpeg"),  # a symlink that stays inside the root is fine
        ("/notes.bin", b"\x00\x01", "application/octet-stream"),
    ],
)
def test_serves_files_with_content_type(server: ImageServer, path: str, body: bytes, content_type: str) -> None:
    status, ctype, data = raw_get(server.base_url, path)
    assert (status, ctype, data) == (200, content_type, body)


def test_head_request(server: ImageServer) -> None:
    status, ctype, data = raw_get(server.base_url, "/dress-001.jpg", method="HEAD")
    assert (status, ctype, data) == (200, "image/jpeg", b"")


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/dresses/../../secret.txt",
        "/dresses/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "//etc/passwd",
        "/%2fetc/passwd",
        "/escape.jpg",  # symlink out of the root
        "/dresses",  # directories are not listed
        "/",
        "/missing.jpg",
        "/dress-001.jpg%00.png",
        "/..\\secret.txt",
    ],
)
def test_nothing_outside_the_root_is_served(server: ImageServer, path: str) -> None:
    status, _, data = raw_get(server.base_url, path)
    assert status == 404, path
    assert b"do not serve me" not in data


def test_start_stop_lifecycle(catalog: Path) -> None:
    server = ImageServer(catalog)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    url = server.start()
    assert url == server.base_url
    with pytest.raises(RuntimeError, match="already running"):
        server.start()
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    with pytest.raises(OSError):  # the port is free again: nothing listens
        socket.create_connection(("127.0.0.1", int(urlsplit(url).port or 0)), timeout=1).close()
    again = server.start()  # restartable
    assert raw_get(again, "/dress-001.jpg")[0] == 200
    server.stop()


def test_fixed_port_and_port_in_use(catalog: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with ImageServer(catalog, port=port) as first:
        assert first.base_url == f"http://127.0.0.1:{port}/"
        with pytest.raises(OSError):
            ImageServer(catalog, port=port).start()


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        ImageServer(tmp_path / "nope")


def test_fetcher_downloads_from_the_server(server: ImageServer) -> None:
    async def scenario() -> None:
        allow = FetchSettings(allow_networks=("127.0.0.0/8",))
        async with ImageFetcher(allow) as fetcher:
            ok = await fetcher.fetch(server.base_url + "dresses/dress-002.png")
        async with ImageFetcher(FetchSettings()) as fetcher:
            guarded = await fetcher.fetch(server.base_url + "dresses/dress-002.png")
        assert (ok.outcome, ok.image_format, ok.content_hash) == (
            FetchOutcome.OK,
            "PNG",
            hashlib.sha256(PNG).hexdigest(),
        )
        assert guarded.outcome is FetchOutcome.BLOCKED_URL  # the default guard refuses a local server

    asyncio.run(scenario())


def test_cli_serve_images(catalog: Path) -> None:
    swatch = Path(sys.executable).with_name("swatch")
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.Popen(
        [str(swatch), "serve-images", str(catalog), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("serving ") and " at http://127.0.0.1:" in first, first
        base_url = first.rsplit(" at ", 1)[1].strip()
        assert raw_get(base_url, "/dress-001.jpg")[:2] == (200, "image/jpeg")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stopping" in out


@pytest.mark.slow
def test_cli_serve_images_stops_on_sigint_every_time(catalog: Path) -> None:
    """The kernel may hand SIGINT to any thread; a main thread parked in a wait without a timeout
    then never ran the handler (about one start in ten before the wait was sliced)."""
    swatch = Path(sys.executable).with_name("swatch")
    for _ in range(12):
        proc = subprocess.Popen(
            [str(swatch), "serve-images", str(catalog), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        base_url = proc.stdout.readline().rsplit(" at ", 1)[1].strip()
        assert raw_get(base_url, "/dress-001.jpg")[0] == 200
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("serve-images ignored SIGINT")
        assert proc.returncode == 0


def test_cli_serve_images_refuses_a_missing_directory(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from streams.cli import app

    result = CliRunner().invoke(app, ["serve-images", str(tmp_path / "missing")])
    assert result.exit_code == 2


def raw_conditional(base_url: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` with ``headers``: the status, the response headers and the body."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_validators_and_conditional_gets(server: ImageServer, catalog: Path) -> None:
    status, headers, body = raw_conditional(server.base_url, "/dress-001.jpg", {})
    assert (status, body) == (200, JPEG)
    etag, modified = headers["Etag"], headers["Last-Modified"]
    assert etag and modified.endswith(" GMT")
    assert "Cache-Control" not in headers  # every repeat is revalidated: what the benchmarks measure
    for conditional in ({"If-None-Match": etag}, {"If-Modified-Since": modified}):
        status, headers, body = raw_conditional(server.base_url, "/dress-001.jpg", conditional)
        assert (status, body, headers["Etag"]) == (304, b"", etag)
    assert raw_conditional(server.base_url, "/dress-001.jpg", {"If-None-Match": '"other"'})[0] == 200
    (catalog / "dress-001.jpg").write_bytes(JPEG + b"\x00")  # changed: a new ETag, the new bytes
    os.utime(catalog / "dress-001.jpg", ns=(1, 1))
    status, headers, body = raw_conditional(server.base_url, "/dress-001.jpg", {"If-None-Match": etag})
    assert (status, body) == (200, JPEG + b"\x00") and headers["Etag"] != etag


def test_max_age_is_sent_only_when_asked_for(catalog: Path) -> None:
    with ImageServer(catalog, max_age_s=60) as cached:
        _, headers, _ = raw_conditional(cached.base_url, "/dress-001.jpg", {})
    assert headers["Cache-Control"] == "max-age=60"
    with pytest.raises(ValueError, match="max_age_s"):
        ImageServer(catalog, max_age_s=-1)


def test_the_fetchers_url_cache_revalidates_against_the_server(catalog: Path) -> None:
    async def fetch_twice(base_url: str) -> list[str | None]:
        settings = FetchSettings(allow_networks=("127.0.0.0/8",))
        async with ImageFetcher(settings, url_cache=True) as fetcher:
            results = [await fetcher.fetch(base_url + "dresses/dress-002.png") for _ in range(2)]
        assert all(r.content_hash == hashlib.sha256(PNG).hexdigest() for r in results)
        return [r.url_cache.value if r.url_cache else None for r in results]

    with ImageServer(catalog) as plain:
        assert asyncio.run(fetch_twice(plain.base_url)) == ["miss", "revalidated"]
    with ImageServer(catalog, max_age_s=60) as cached:
        assert asyncio.run(fetch_twice(cached.base_url)) == ["miss", "fresh"]


def test_copies_are_new_bytes_of_the_same_picture(server: ImageServer, catalog: Path) -> None:
    import io

    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 60)).save(picture, "JPEG")
    (catalog / "real.jpg").write_bytes(picture.getvalue())
    bodies = {}
    for copy in ("1", "2", "1"):
        status, headers, body = raw_conditional(server.base_url, f"/real.jpg?copy={copy}", {})
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert bodies.setdefault(copy, body) == body, "one copy number, one set of bytes"
        with Image.open(io.BytesIO(body)) as decoded, Image.open(picture) as original:
            assert decoded.tobytes() == original.tobytes(), "the picture itself is unchanged"
    assert len({*bodies.values(), picture.getvalue()}) == 3, "every copy hashes differently from the file"
    status, headers, _ = raw_conditional(server.base_url, "/real.jpg?copy=2", {})
    etag = {k.lower(): v for k, v in headers.items()}["etag"]
    assert raw_conditional(server.base_url, "/real.jpg?copy=2", {"If-None-Match": etag})[0] == 304
    assert raw_conditional(server.base_url, "/real.jpg?copy=3", {"If-None-Match": etag})[0] == 200
    assert raw_conditional(server.base_url, "/real.jpg?copy=x", {})[0] == 400
    assert raw_conditional(server.base_url, "/real.jpg?copy=" + "9" * 10, {})[0] == 400
    assert raw_conditional(server.base_url, "/dresses/dress-002.png?copy=1", {})[0] == 400, "only JPEGs are copied"
    assert raw_conditional(server.base_url, "/missing.jpg?copy=1", {})[0] == 404
