"""A loopback TCP proxy that a test can cut and restore: a network partition between clients and a server.

One accept thread and one thread per connection, each pumping both directions with ``select``.
:meth:`TcpProxy.cut` closes every live connection and, until :meth:`TcpProxy.restore`, either
blackholes new ones (accepts and never answers, like a partition that drops packets) or refuses
them (accepts and resets at once, like a host whose port is closed).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from typing import Literal, Self

CutMode = Literal["blackhole", "refuse"]
_CHUNK = 65536


class TcpProxy:
    """Forwards connections to ``upstream`` from a free loopback port; see the module docstring."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._held: set[socket.socket] = set()
        self._mode: CutMode | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True)
        self.connections = 0  # connections forwarded, for diagnostics
        self.refused = 0  # connections refused or blackholed while cut

    def start(self) -> Self:
        """Start accepting."""
        self._thread.start()
        return self

    @property
    def is_cut(self) -> bool:
        """Whether the link is cut now."""
        return self._mode is not None

    def cut(self, mode: CutMode = "blackhole") -> None:
        """Close every forwarded connection; until :meth:`restore`, new ones are blackholed or refused."""
        with self._lock:
            self._mode = mode
            doomed = list(self._live)
            self._live.clear()
        for sock in doomed:
            _abort(sock)

    def restore(self) -> None:
        """Forward new connections again; blackholed ones are closed so their clients reconnect."""
        with self._lock:
            self._mode = None
            held = list(self._held)
            self._held.clear()
        for sock in held:
            _abort(sock)

    def stop(self) -> None:
        """Stop accepting and close everything."""
        self._stopped.set()
        self.cut("refuse")
        self.restore()
        if self._thread.is_alive():
            self._thread.join(5)
        self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                mode = self._mode
                if mode == "blackhole":
                    self._held.add(client)
                    self.refused += 1
                    continue
            if mode == "refuse":
                self.refused += 1
                _abort(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _abort(client)
                continue
            with self._lock:
                if self._mode is not None:  # cut while we connected
                    _abort(client)
                    _abort(server)
                    continue
                self._live.update((client, server))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server), name="proxy-pump", daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while not self._stopped.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.5)
                for sock in readable:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # closed by cut() or by a peer
            return
        finally:
            with self._lock:
                self._live.discard(client)
                self._live.discard(server)
            _abort(client)
            _abort(server)


def _abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), so the peer learns at once that the connection is gone."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
