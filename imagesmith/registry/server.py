"""An embedded OCI distribution registry (distribution-spec v1.1) backed by OCI layouts.

Repository ``a/b`` is the OCI image layout ``ROOT/a/b`` (created by its first push), so
``oci:ROOT/a/b:TAG`` is readable by podman, skopeo and umoci directly, and a layout copied
there is served as is. Upload sessions live in ``ROOT/_uploads/<id>`` (``_uploads`` can never
be a repository name) and are moved into the layout's ``blobs/`` once their digest is checked.

Every name and digest from a URL is validated before any path is built from it. Request bodies
are streamed to disk (``Content-Length`` or ``Transfer-Encoding: chunked``), never held in
memory, except manifests, which are capped at 4 MiB. There is no authentication and no TLS:
serve on loopback or a trusted network.

The parts, split by concern as go-containerregistry's ``pkg/registry`` is:
:mod:`.serving.framing` (request bodies, error answers), :mod:`.serving.storage` (layouts and
upload sessions), :mod:`.serving.handler` (one connection's requests: dispatch, answers,
validation), :mod:`.serving.blobs` and :mod:`.serving.manifests` (the routes). This module holds
the server: connections admitted and evicted under a cap, and :class:`RegistryServer`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import resource
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from imagesmith.errors import UsageError
from imagesmith.registry.serving.blobs import BlobRoutes
from imagesmith.registry.serving.handler import Route
from imagesmith.registry.serving.manifests import ManifestRoutes
from imagesmith.registry.serving.storage import UPLOADS_DIR, Storage

__all__ = ["DEFAULT_IDLE_TIMEOUT", "UPLOADS_DIR", "RegistryServer", "default_max_connections"]

log = logging.getLogger("imagesmith.serve")

# Seconds a connection may wait between requests, or between the bytes of a request's head.
DEFAULT_IDLE_TIMEOUT = 60.0


class _Handler(BlobRoutes, ManifestRoutes):
    """Every route of the distribution API, on one handler class."""


_ROUTES: list[tuple[re.Pattern[str], dict[str, Route]]] = [
    (re.compile(r"/v2/?"), {"GET": _Handler._base}),
    (re.compile(r"/v2/_catalog"), {"GET": _Handler._catalog}),
    (re.compile(r"/v2/(?P<name>.+)/tags/list"), {"GET": _Handler._tags_list}),
    (
        re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)"),
        {"GET": _Handler._manifest_get, "PUT": _Handler._manifest_put, "DELETE": _Handler._manifest_delete},
    ),
    (
        re.compile(r"/v2/(?P<name>.+)/blobs/uploads(?:/(?P<upload_id>[^/]*))?"),
        {
            "POST": _Handler._upload_start,
            "PATCH": _Handler._upload_patch,
            "GET": _Handler._upload_status,
            "PUT": _Handler._upload_put,
            "DELETE": _Handler._upload_cancel,
        },
    ),
    (
        re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)"),
        {"GET": _Handler._blob_get, "DELETE": _Handler._blob_delete},
    ),
    (re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)"), {"GET": _Handler._referrers}),
]

_Handler.routes = _ROUTES


def default_max_connections() -> int:
    """Connections served at once by default: a third of the file descriptors this process
    may open (each connection holds a socket and, while it is served, a file or two),
    between 8 and 1,024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(8, min(1024, (soft - 32) // 3))


@dataclass(slots=True)
class _Connection:
    """What a connection is doing: ``waiting`` for a request (idle, or still sending the
    request line and headers), ``busy`` with one, or ``closing`` (evicted)."""

    state: str
    since: float


_REFUSED = json.dumps(
    {"errors": [{"code": "TOOMANYREQUESTS", "message": "every connection the registry allows is busy"}]}
).encode()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self, address: tuple[str, int], storage: Storage, *, max_connections: int, idle_timeout: float
    ) -> None:
        self.storage = storage
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections: dict[socket.socket, _Connection] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def mark(self, conn: socket.socket, state: str) -> None:
        """Record what ``conn`` is doing now (see :class:`_Connection`)."""
        with self._connections_lock:
            known = self._connections.get(conn)
            if known is not None and known.state != "closing":
                known.state, known.since = state, time.monotonic()

    def _admit(self, request: socket.socket) -> bool:
        """Make room for a new connection: past the cap, the connection waiting longest for a
        request is closed (an idle keep-alive, or one that never finished its headers); with
        every connection busy, the newcomer is refused."""
        victim = None
        with self._connections_lock:
            live = [(c, s) for c, s in self._connections.items() if s.state != "closing"]
            if len(live) >= self.max_connections:
                waiting = [(s.since, id(c), c) for c, s in live if s.state == "waiting"]
                if not waiting:
                    return False
                victim = min(waiting)[2]
                self._connections[victim].state = "closing"
            self._connections[request] = _Connection("waiting", time.monotonic())
        if victim is not None:
            log.debug("%d connections open: closing the one idle longest", self.max_connections)
            with contextlib.suppress(OSError):
                victim.shutdown(socket.SHUT_RDWR)  # its handler sees the end and exits
        return True

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for our own name (getfqdn): slow and useless here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._admit(request):
            log.warning("%d connections busy: refusing one from %s", self.max_connections, client_address[0])
            with contextlib.suppress(OSError):
                request.settimeout(1)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\n"
                    + f"Content-Length: {len(_REFUSED)}\r\n\r\n".encode()
                    + _REFUSED
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a library only logs. These are almost
        # always clients that went away mid-answer.
        log.debug("connection from %s failed", client_address[0], exc_info=True)

    def close_connections(self) -> None:
        """End idle keep-alive connections so their handler threads exit."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class RegistryServer:
    """An OCI distribution registry serving the OCI layouts under ``root``.

    Binds ``host:port`` at construction (``port=0`` picks a free port; see :attr:`address`).
    :meth:`start` serves from a background thread, :meth:`serve_forever` in the foreground
    until :meth:`stop` or Ctrl-C. Also a context manager (start on enter, stop on exit).

    At most ``max_connections`` connections are open at once (default: from the file
    descriptor limit, :func:`default_max_connections`); past that, the connection idle the
    longest is closed, and a newcomer is answered 503 only when every connection is busy
    with a request. A connection waiting ``idle_timeout`` seconds for its next request (or
    for the rest of its request line and headers) is closed.
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 5000,
        max_connections: int | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        if max_connections is None:
            max_connections = default_max_connections()
        if max_connections < 1:
            raise UsageError(f"max_connections {max_connections} must be 1 or more")
        if not idle_timeout > 0:
            raise UsageError(f"idle timeout {idle_timeout!r} must be a positive number of seconds")
        self._storage = Storage(self.root)
        try:
            self._httpd = _HTTPServer(
                (host, port), self._storage, max_connections=max_connections, idle_timeout=idle_timeout
            )
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another port"
            ) from None
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()
        self._stopped = False
        self._close_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RegistryServer({str(self.root)!r}, address={self.address!r})"

    @property
    def address(self) -> str:
        """``host:port`` as clients name it (``127.0.0.1:PORT``; IPv6 hosts in brackets)."""
        host, port = self._httpd.server_address[:2]
        host = str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _serve(self) -> None:
        self._serving.set()
        try:
            self._httpd.serve_forever(poll_interval=0.05)
        finally:
            self._serving.clear()

    def start(self) -> RegistryServer:
        """Serve from a daemon thread and return at once; returns ``self``."""
        if self._stopped:
            raise UsageError("this registry server was stopped; create a new one")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name=f"imagesmith-serve-{self.address}", daemon=True
            )
            self._thread.start()
            log.info("serving %s at http://%s", self.root, self.address)
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` is called or Ctrl-C is pressed."""
        if self._stopped:
            raise UsageError("this registry server was stopped; create a new one")
        log.info("serving %s at http://%s", self.root, self.address)
        try:
            self._serve()
        except KeyboardInterrupt:
            log.info("interrupted; stopping")
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving, end open connections and release the port (idempotent)."""
        # shutdown() waits for a serve loop, so only when one runs or is about to (the thread).
        if self._thread is not None or self._serving.is_set():
            self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._close()

    def _close(self) -> None:
        with self._close_lock:
            if self._stopped:
                return
            self._stopped = True
        self._httpd.server_close()
        self._httpd.close_connections()

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
