"""An image server with misbehaving paths: ``/slow/...`` trickles one byte a second, ``/stuck/...`` never answers.

Everything else is a plain static file under the root. The server listens on several loopback
addresses at once (127.0.0.1, .2, .3 by default) so that a test can put normal, slow and stuck
images on different hosts, as they would be on different CDNs: the fetcher limits concurrency per
host, and a stuck host must not take the normal host's slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Literal, Self

from aiohttp import web

from streams.embedded import free_port
from streams.images_server import _content_type, _resolve_under

Kind = Literal["normal", "slow", "stuck"]
HOSTS: dict[Kind, str] = {"normal": "127.0.0.1", "slow": "127.0.0.2", "stuck": "127.0.0.3"}


class SlowImageServer:
    """Serves ``root`` from a background thread; :meth:`url` names an image on a normal, slow or stuck host."""

    def __init__(self, root: Path, byte_interval_s: float = 1.0) -> None:
        self.root = Path(root).resolve()
        self.byte_interval_s = byte_interval_s
        self.port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.open_requests: dict[Kind, int] = {"normal": 0, "slow": 0, "stuck": 0}

    def url(self, kind: Kind, relative: str) -> str:
        """URL of ``relative`` (a path under the root) on the host for ``kind``."""
        prefix = "" if kind == "normal" else f"{kind}/"
        return f"http://{HOSTS[kind]}:{self.port}/{prefix}{relative}"

    def start(self) -> Self:
        """Bind every host and serve until :meth:`stop`."""
        self._thread = threading.Thread(target=self._serve, name="slow-image-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the slow image server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Release stuck requests, stop serving and join the thread."""
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._release is not None:
                self._release.set()
            if self._runner is not None:
                await self._runner.cleanup()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _setup(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/slow/{path:.*}", self._slow)
        app.router.add_get("/stuck/{path:.*}", self._stuck)
        app.router.add_get("/{path:.*}", self._normal)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        for host in HOSTS.values():
            await web.TCPSite(self._runner, host, self.port).start()

    def _file(self, request: web.Request) -> Path:
        path = _resolve_under(self.root, request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound()
        return path

    async def _normal(self, request: web.Request) -> web.StreamResponse:
        path = self._file(request)
        return web.FileResponse(path, headers={"Content-Type": _content_type(path)})

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        """Headers at once, then the body one byte per ``byte_interval_s``."""
        path = self._file(request)
        data = path.read_bytes()
        response = web.StreamResponse(headers={"Content-Type": _content_type(path)})
        response.content_length = len(data)
        self.open_requests["slow"] += 1
        try:
            await response.prepare(request)
            for i in range(len(data)):
                await response.write(data[i : i + 1])
                await asyncio.sleep(self.byte_interval_s)
            await response.write_eof()
        except ConnectionError:  # the fetcher gave up and closed the connection
            pass
        finally:
            self.open_requests["slow"] -= 1
        return response

    async def _stuck(self, request: web.Request) -> web.StreamResponse:
        """Accept the request and never send a byte (until the server stops)."""
        self._file(request)
        self.open_requests["stuck"] += 1
        try:
            if self._release is not None:
                await self._release.wait()
        finally:
            self.open_requests["stuck"] -= 1
        raise web.HTTPServiceUnavailable()
