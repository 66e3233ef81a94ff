"""A small static HTTP server for a directory of images (``swatch serve-images DIR``).

`swatch demo` and `swatch produce` use it to serve a synthetic catalog over local HTTP, so the
worker fetches images exactly as it would from a CDN. It is a plain static server: ``GET``/``HEAD``
of files under the root, ``Content-Type`` from the file extension, and 404 for everything else:
missing files, directories, ``..`` segments, absolute paths, and symlinks that lead out of the root.

Like a CDN it sends validators, an ``ETag`` (the file's modification time in nanoseconds and its
size) and ``Last-Modified``, and answers a conditional GET (``If-None-Match``,
``If-Modified-Since``) for an unchanged file with ``304`` and no body: the path the worker's URL
cache takes for a repeated image URL. It sends no ``Cache-Control`` unless asked (``max_age_s``),
so every repeat is revalidated, which is what the benchmarks measure.

``GET /photo.jpg?copy=N`` serves a copy of a JPEG whose bytes (and so content hash) are new but
whose picture is the same: a comment segment naming ``N`` goes after the start-of-image marker.
Long benchmarks use it for an unlimited supply of never-seen images from a finite catalog; each
copy has its own ``ETag`` and answers its own conditional GET.

Design: :class:`ImageServer` runs an aiohttp application on its own event loop in a daemon thread,
so synchronous callers (the CLI, the demo, tests) can start and stop it without an event loop of
their own; the fetcher may run in any other loop, or process, and reach it over TCP. Use it as a
context manager, or call :meth:`ImageServer.start` and :meth:`ImageServer.stop`::

    with ImageServer(Path("catalog")) as server:
        url = server.base_url + "dress-001.jpg"

The worker's SSRF guard refuses loopback addresses unless ``SWATCH_FETCH_ALLOW_NETWORKS`` lists
them (e.g. ``127.0.0.0/8``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import mimetypes
import threading
from email.utils import formatdate
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Final, Self

from aiohttp import web

__all__ = ["CONTENT_TYPES", "ImageServer"]

logger = logging.getLogger(__name__)

COPY_DIGITS: Final = 9  # ?copy=N: at most a billion copies of one image

CONTENT_TYPES: Final = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".txt": "text/plain",
}
"""Content types by file extension; other files get :mod:`mimetypes`' guess or octet-stream."""

_START_TIMEOUT_S: Final = 10.0


def _content_type(path: Path) -> str:
    known = CONTENT_TYPES.get(path.suffix.lower())
    if known is not None:
        return known
    guessed, _encoding = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def _resolve_under(root: Path, relative: str) -> Path | None:
    """The regular file that ``relative`` (a decoded URL path) names under ``root``, or None.

    ``root`` must already be resolved. Refused: empty paths, absolute paths, ``..`` segments, NUL
    bytes, and any path whose real location (after following symlinks) is outside ``root``.
    """
    if not relative or "\x00" in relative or "\\" in relative:
        return None
    parts = PurePosixPath(relative).parts
    if not parts or parts[0] == "/" or any(part in ("..", ".") for part in parts):
        return None
    try:
        candidate = root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


class ImageServer:
    """Serves the files under ``root`` over HTTP from a background thread.

    Args:
        root: Directory to serve; must exist.
        host: Address to listen on; the default keeps it on this machine.
        port: Port to listen on; 0 picks a free one (read it back from :attr:`base_url`).
        max_age_s: Send ``Cache-Control: max-age=N`` with every file (a client may then reuse it
            for N seconds without asking); None: no ``Cache-Control``.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, *, max_age_s: int | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")
        self.host = host
        self.port = port
        if max_age_s is not None and max_age_s < 0:
            raise ValueError(f"max_age_s must be at least 0, not {max_age_s}")
        self.max_age_s = max_age_s
        self._base_url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._bound: tuple[str, int] | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/`` of the running server (with the port actually bound).

        Raises:
            RuntimeError: The server is not running.
        """
        if self._base_url is None:
            raise RuntimeError("ImageServer is not running; call start() first")
        return self._base_url

    def start(self) -> str:
        """Start serving in a background thread; return the base URL once the port is bound.

        Raises:
            OSError: The address could not be bound (for example, the port is in use).
            RuntimeError: The server is already running, or did not start in time.
        """
        if self._thread is not None:
            raise RuntimeError("ImageServer is already running")
        ready = threading.Event()
        thread = threading.Thread(target=self._serve, args=(ready,), name="swatch-image-server", daemon=True)
        thread.start()
        if not ready.wait(_START_TIMEOUT_S):
            raise RuntimeError(f"image server did not start within {_START_TIMEOUT_S}s")
        if self._error is not None or self._bound is None:
            thread.join()
            raise self._error or RuntimeError("image server did not report its address")
        self._thread = thread
        host, port = self._bound
        shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
        self._base_url = f"http://{shown}:{port}/"
        logger.info("serving %s at %s", self.root, self._base_url)
        return self._base_url

    def stop(self) -> None:
        """Stop serving and wait for the thread to finish; a no-op when not running."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = self._loop = self._base_url = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        """Thread body: bind, report the address (or the error), run until stopped, clean up."""
        self._bound, self._error = None, None
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(self._app(), shutdown_timeout=1.0, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            loop.run_until_complete(site.start())
            address = runner.addresses[0]
            self._bound = (str(address[0]), int(address[1]))
            self._loop = loop
        except BaseException as exc:
            self._error = exc
            loop.run_until_complete(runner.cleanup())
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = _resolve_under(self.root, request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound()
        headers = {"Content-Type": _content_type(path)}
        if self.max_age_s is not None:
            headers["Cache-Control"] = f"max-age={self.max_age_s}"
        if "copy" in request.query:
            return await asyncio.to_thread(_jpeg_copy, path, request, headers)
        # FileResponse sends ETag and Last-Modified and answers If-None-Match / If-Modified-Since with 304
        return web.FileResponse(path, headers=headers)


def _jpeg_copy(path: Path, request: web.Request, headers: dict[str, str]) -> web.Response:
    """``path``'s JPEG with a comment segment naming the copy: new bytes, the same picture."""
    copy = request.query["copy"]
    if not copy.isdigit() or len(copy) > COPY_DIGITS:
        raise web.HTTPBadRequest(text=f"copy must be a number of at most {COPY_DIGITS} digits")
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}-copy{copy}"'
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers={"ETag": etag})
    data = path.read_bytes()
    if data[:2] != b"\xff\xd8":
        raise web.HTTPBadRequest(text="copy= needs a JPEG")
    comment = f"swatch-copy:{copy}".encode()
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    modified = formatdate(stat.st_mtime, usegmt=True)
    headers = {**headers, "ETag": etag, "Last-Modified": modified}
    return web.Response(body=data[:2] + segment + data[2:], headers=headers)
