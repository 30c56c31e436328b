"""An embedded OCI distribution registry (distribution-spec v1.1) backed by OCI layouts.

Repository ``a/b`` is the OCI image layout ``ROOT/a/b`` (created by its first push), so
``oci:ROOT/a/b:TAG`` is readable by podman, skopeo and umoci directly, and a layout copied
there is served as is. Upload sessions live in ``ROOT/_uploads/<id>`` (``_uploads`` can never
be a repository name) and are moved into the layout's ``blobs/`` once their digest is checked.

Every name and digest from a URL is validated before any path is built from it. Request bodies
are streamed to disk (``Content-Length`` or ``Transfer-Encoding: chunked``), never held in
memory, except manifests, which are capped at 4 MiB. There is no authentication and no TLS:
serve on loopback or a trusted network.

Size: the embedded registry: body framing, storage and the routes of one HTTP handler; split by
resource (as go-containerregistry's pkg/registry is) is the next step, not done in issue 16.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import resource
import socket
import socketserver
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

from imagesmith.errors import (
    DigestFormatError,
    ImagesmithError,
    IntegrityError,
    LayoutError,
    ManifestError,
    ReferenceFormatError,
    UsageError,
)
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import CHUNK, Digest, Hasher
from imagesmith.oci.model import MAX_MANIFEST_SIZE, Descriptor, Index, Manifest, parse_manifest_document
from imagesmith.oci.references import validate_repository, validate_tag
from imagesmith.store.blobstore import NotARegularFile, open_regular
from imagesmith.store.layout import INDEX_FILE, LAYOUT_FILE, LOCK_FILE, OCILayout

__all__ = ["DEFAULT_IDLE_TIMEOUT", "UPLOADS_DIR", "RegistryServer", "default_max_connections"]

log = logging.getLogger("imagesmith.serve")

UPLOADS_DIR = "_uploads"
# Path components that name files inside a layout; a repository named after one would collide
# with the layout of its parent repository (``a/blobs`` inside layout ``a``).
RESERVED_COMPONENTS = frozenset({"blobs", INDEX_FILE, LAYOUT_FILE, LOCK_FILE})
MAX_NAME_LENGTH = 255
UPLOAD_EXPIRY = 3600.0
# Seconds a connection may wait between requests, or between the bytes of a request's head.
DEFAULT_IDLE_TIMEOUT = 60.0
# Blob files remembered as hashed whole and right, so ranges of them are served without
# hashing the file again (a resumed download asks for one range after another).
MAX_VERIFIED = 4096
MAX_PAGE = 10_000
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")
_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_MALFORMED = re.compile(r"/v2/(?P<name>.+?)/(?P<kind>blobs/uploads|blobs|manifests|referrers)/(?P<rest>.+)")
_LOGGED_QUERY_KEYS = frozenset({"digest", "mount", "from", "n", "last", "artifactType"})
_MAX_DRAIN = 64 * 1024


class _Fail(Exception):
    """An error answer: status, distribution error code, message, detail, extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})


class _ClientGone(Exception):
    """The client closed the connection or sent a malformed body: no answer is possible."""


class _Stream(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def readline(self, limit: int = -1, /) -> bytes: ...


class _Body:
    """A request body as a stream, framed by ``Content-Length`` or chunked transfer coding.

    ``http.server`` leaves bodies to the handler and does not decode chunked ones, which
    podman and skopeo send when they stream a layer of unknown size.
    """

    def __init__(self, rfile: _Stream, transfer_encoding: str | None, content_length: str | None) -> None:
        self._rfile = rfile
        self.chunked = "chunked" in (transfer_encoding or "").lower()
        self._left = 0
        self._chunk_left = 0
        self._eof = False
        self.received = 0
        self.length: int | None = None
        if not self.chunked:
            text = (content_length or "0").strip()
            if not text.isdigit():
                raise _Fail(400, "UNSUPPORTED", "invalid Content-Length", text[:40])
            self.length = self._left = int(text)

    @property
    def pending(self) -> bool:
        """Whether unread body bytes remain on the connection."""
        return (not self._eof) if self.chunked else self._left > 0

    def read(self, n: int = CHUNK) -> bytes:
        """Up to ``n`` bytes, ``b""`` at the end; a connection that ends early raises."""
        if self.chunked:
            return self._read_chunked(n)
        if self._left <= 0:
            return b""
        data = self._rfile.read(min(n, self._left))
        if not data:
            raise _ClientGone(f"the body ended {self._left} bytes early")
        self._left -= len(data)
        self.received += len(data)
        return data

    def _read_chunked(self, n: int) -> bytes:
        if self._eof:
            return b""
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise _ClientGone("malformed or truncated chunked body")
            size_text = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise _ClientGone(f"malformed chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                for _ in range(64):  # trailer fields, ignored, then the empty line
                    trailer = self._rfile.readline(8192)
                    if trailer in (b"\r\n", b"\n", b""):
                        break
                self._eof = True
                return b""
            self._chunk_left = size
        data = self._rfile.read(min(n, self._chunk_left))
        if not data:
            raise _ClientGone("the chunked body ended early")
        self._chunk_left -= len(data)
        self.received += len(data)
        if self._chunk_left == 0 and self._rfile.readline(3).strip():
            raise _ClientGone("a chunk does not end with CRLF")
        return data

    def read_limited(self, limit: int, too_large: Callable[[], _Fail]) -> bytes:
        """The whole body in memory, refused (without reading on) past ``limit`` bytes."""
        if self.length is not None and self.length > limit:
            raise too_large()
        parts: list[bytes] = []
        total = 0
        while chunk := self.read(min(CHUNK, limit + 1 - total)):
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise too_large()
        return b"".join(parts)

    def drain(self, limit: int = _MAX_DRAIN) -> None:
        """Discard up to ``limit`` unread bytes so the connection can be reused."""
        total = 0
        with contextlib.suppress(_ClientGone, OSError):
            while total <= limit and (chunk := self.read(min(CHUNK, limit + 1 - total))):
                total += len(chunk)


@dataclass
class _Upload:
    """An upload session: its data file, running sha256 and size, and a lock."""

    id: str
    repository: str
    path: Path
    hasher: Any = field(default_factory=hashlib.sha256)  # of exactly the first ``size`` bytes
    size: int = 0
    touched: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Storage:
    """The registry's state: repositories (OCI layouts under the root) and upload sessions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads_dir = root / UPLOADS_DIR
        self._lock = threading.Lock()
        self._layouts: dict[str, OCILayout] = {}
        self._uploads: dict[str, _Upload] = {}
        self._last_sweep = 0.0
        self._verified: OrderedDict[tuple[int, ...], Digest] = OrderedDict()
        try:
            self.uploads_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LayoutError(f"cannot create {self.uploads_dir}: {exc.strerror or exc}") from None
        self._sweep(force=True)

    # -- repositories
    def layout(self, name: str, *, create: bool = False) -> OCILayout | None:
        """The layout of repository ``name`` (validated by the caller), or None when absent."""
        path = self.root / name
        if not create and not (path / LAYOUT_FILE).is_file():
            return None
        with self._lock:
            layout = self._layouts.get(name)
        if layout is None:
            layout = OCILayout(path, create=create)
            with self._lock:
                layout = self._layouts.setdefault(name, layout)
        elif create and not (path / LAYOUT_FILE).is_file():
            layout = OCILayout(path, create=True)  # removed behind our back: make it again
            with self._lock:
                self._layouts[name] = layout
        return layout

    def repositories(self) -> list[str]:
        """Every repository: directories under the root holding an ``oci-layout`` file."""
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            # Never descend into blob stores, upload sessions or hidden temp directories.
            dirnames[:] = sorted(d for d in dirnames if d[:1] not in "._" and d != "blobs")
            if LAYOUT_FILE not in filenames or dirpath == str(self.root):
                continue
            name = Path(dirpath).relative_to(self.root).as_posix()
            try:
                validate_repository(name)
            except ReferenceFormatError:
                continue
            out.append(name)
        return sorted(out)

    def verified(self, st: os.stat_result, digest: Digest, *, remember: bool = False) -> bool:
        """Whether the file ``st`` describes was hashed whole and found to be ``digest``
        (``remember``: record that it was). Keyed by device, inode, size, mtime and ctime,
        so a file rewritten since is hashed again; bounded, oldest forgotten first."""
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if remember:
                self._verified[key] = digest
                self._verified.move_to_end(key)
                while len(self._verified) > MAX_VERIFIED:
                    self._verified.popitem(last=False)
                return True
            return self._verified.get(key) == digest

    # -- uploads
    def new_upload(self, repository: str) -> _Upload:
        self._sweep()
        upload_id = uuid.uuid4().hex
        path = self.uploads_dir / upload_id
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except OSError as exc:
            raise _Fail(
                500, "BLOB_UPLOAD_INVALID", "cannot start an upload", exc.strerror or str(exc)
            ) from None
        upload = _Upload(upload_id, repository, path)
        with self._lock:
            self._uploads[upload_id] = upload
        return upload

    def upload(self, repository: str, upload_id: str) -> _Upload:
        upload = None
        if _UPLOAD_ID.fullmatch(upload_id):
            with self._lock:
                upload = self._uploads.get(upload_id)
        if upload is None or upload.repository != repository:
            raise _Fail(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", upload_id[:64])
        return upload

    def discard(self, upload: _Upload) -> None:
        with self._lock:
            self._uploads.pop(upload.id, None)
        with contextlib.suppress(FileNotFoundError):
            upload.path.unlink()

    def _sweep(self, force: bool = False) -> None:
        """Forget sessions idle for an hour and remove upload files no session owns."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_sweep < 60:
                return
            self._last_sweep = now
            expired = [u for u in self._uploads.values() if now - u.touched > UPLOAD_EXPIRY]
            for u in expired:
                del self._uploads[u.id]
            live = set(self._uploads)
        for u in expired:
            log.info("upload %s to %s expired after an hour without activity", u.id, u.repository)
        cutoff = time.time() - UPLOAD_EXPIRY
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.uploads_dir):
                with contextlib.suppress(OSError):
                    if entry.name not in live and entry.stat().st_mtime < cutoff:
                        Path(entry.path).unlink()

    def append(self, upload: _Upload, body: _Body) -> None:
        """Stream ``body`` onto the end of the upload (the caller holds ``upload.lock``)."""
        try:
            f = open(upload.path, "r+b", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            self.discard(upload)
            raise _Fail(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", upload.id) from None
        with f:
            f.seek(upload.size)
            while chunk := body.read(CHUNK):
                try:
                    view = memoryview(chunk)
                    while view:
                        written = f.write(view)
                        view = view[written or 0 :]
                except OSError as exc:
                    # Keep file, size and running hash consistent: drop the partial chunk.
                    with contextlib.suppress(OSError):
                        f.truncate(upload.size)
                    raise _Fail(
                        500, "BLOB_UPLOAD_INVALID", "cannot store the upload", exc.strerror or str(exc)
                    ) from None
                upload.hasher.update(chunk)
                upload.size += len(chunk)
                upload.touched = time.monotonic()

    def finish(self, upload: _Upload, name: str, digest: Digest) -> None:
        """Check the upload against ``digest`` and move it into the repository's layout; a
        mismatch discards the upload."""
        # A failed write may have left bytes past ``size`` that a later chunk did not cover.
        with contextlib.suppress(OSError):
            os.truncate(upload.path, upload.size)
        if digest.algorithm == "sha256":
            got = Digest("sha256", upload.hasher.hexdigest())
        else:
            hasher = Hasher(digest.algorithm)
            with open(upload.path, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
            got = hasher.digest
        if got != digest:
            self.discard(upload)
            raise _Fail(
                400,
                "DIGEST_INVALID",
                "provided digest did not match uploaded content",
                {"expected": str(digest), "got": str(got), "size": upload.size},
            )
        layout = self.layout(name, create=True)
        assert layout is not None
        with self._lock:
            self._uploads.pop(upload.id, None)
        layout.adopt_blob(upload.path, digest, upload.size)


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
        self, address: tuple[str, int], storage: _Storage, *, max_connections: int, idle_timeout: float
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "imagesmith"
    sys_version = ""
    disable_nagle_algorithm = True  # small answers must not wait for delayed ACKs
    # Silence allowed in the middle of a request (a slow upload); between requests, and
    # while the request line and headers arrive, the server's idle timeout applies.
    timeout = 300

    _status = 0
    _body: _Body | None = None
    _headers_done = False
    _query: dict[str, list[str]]

    @property
    def _http(self) -> _HTTPServer:
        server = self.server
        assert isinstance(server, _HTTPServer)
        return server

    @property
    def storage(self) -> _Storage:
        return self._http.storage

    def handle_one_request(self) -> None:
        # Waiting for a request is idleness: bounded by the idle timeout, and evictable when
        # the server is full. The first byte (peeked, not consumed) ends the wait.
        server = self._http
        server.mark(self.connection, "waiting")
        self.connection.settimeout(server.idle_timeout)
        try:
            started = self.rfile.peek(1)  # type: ignore[attr-defined]
        except OSError:  # the idle timeout, or a connection evicted or reset
            started = b""
        if not started:
            self.close_connection = True
            return
        super().handle_one_request()

    # -- plumbing
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.client_address[0], *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _dispatch logs every request once, with the query redacted

    def version_string(self) -> str:
        return self.server_version

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._http.mark(self.connection, "busy")
        self.connection.settimeout(self.timeout)
        self._status = 0
        self._headers_done = False
        self._body = None
        split = urlsplit(self.path)
        self._query = parse_qs(split.query, keep_blank_values=True)
        path = unquote(split.path)
        started = time.monotonic()
        try:
            try:
                self._body = _Body(
                    self.rfile, self.headers.get("Transfer-Encoding"), self.headers.get("Content-Length")
                )
            except _Fail:
                self.close_connection = True  # the body's end is unknown: nothing can follow it
                raise
            self._route(path)
        except _Fail as fail:
            self._send_error(fail)
        except _ClientGone as exc:
            log.debug("%s %s: %s; closing the connection", self.command, split.path, exc)
            self.close_connection = True
        except (ConnectionError, TimeoutError) as exc:
            log.debug("%s %s: connection lost (%s)", self.command, split.path, exc)
            self.close_connection = True
        except IntegrityError as exc:
            log.error("%s %s: %s", self.command, split.path, exc)
            self._send_error(_Fail(500, "UNKNOWN", "stored content is corrupt", str(exc)))
        except ImagesmithError as exc:
            log.error("%s %s: %s", self.command, split.path, exc)
            self._send_error(_Fail(500, "UNKNOWN", "internal storage error", str(exc)))
        except Exception:
            log.exception("%s %s failed", self.command, split.path)
            self._send_error(_Fail(500, "UNKNOWN", "internal server error"))
        finally:
            body = ""
            if self._body is not None and (self._body.received or self._body.chunked):
                framing = "chunked" if self._body.chunked else "sized"
                body = f" [{framing} body, {self._body.received} bytes]"
            log.debug(
                "%s %s%s%s -> %s (%.0f ms)",
                self.command,
                split.path,
                self._logged_query(),
                body,
                self._status or "no answer",
                (time.monotonic() - started) * 1000,
            )

    def _logged_query(self) -> str:
        if not self._query:
            return ""
        parts = [f"{k}={v[0] if k in _LOGGED_QUERY_KEYS else 'REDACTED'}" for k, v in self._query.items()]
        return "?" + "&".join(parts)

    def _q(self, key: str) -> str | None:
        values = self._query.get(key)
        return values[0] if values else None

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        """Answer with a complete body (or, for HEAD, its length only)."""
        self._start(status, len(body), headers, content_type)
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _start(
        self,
        status: int,
        length: int,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        if self._headers_done:
            # Too late to answer: the client already has a status line.
            self.close_connection = True
            raise _ClientGone("an error after the answer started")
        body = self._body
        if body is not None and body.pending:
            # An unread body would be taken for the next request: drop a small one, else close.
            body.drain()
            if body.pending:
                self.close_connection = True
        self.send_response(status)
        self.send_header(*API_VERSION_HEADER)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._headers_done = True

    def _send_json(
        self,
        status: int,
        value: Any,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self._send(status, json.dumps(value).encode(), headers, content_type)

    def _send_error(self, fail: _Fail) -> None:
        error: dict[str, Any] = {"code": fail.code, "message": fail.message}
        if fail.detail is not None:
            error["detail"] = fail.detail
        with contextlib.suppress(_ClientGone):
            self._send_json(fail.status, {"errors": [error]}, fail.headers)

    # -- validation (before any path is built)
    @staticmethod
    def _name(raw: str) -> str:
        try:
            validate_repository(raw)
        except ReferenceFormatError as exc:
            raise _Fail(400, "NAME_INVALID", "invalid repository name", str(exc)) from None
        if len(raw) > MAX_NAME_LENGTH:
            raise _Fail(
                400, "NAME_INVALID", "invalid repository name", f"longer than {MAX_NAME_LENGTH} characters"
            )
        reserved = RESERVED_COMPONENTS.intersection(raw.split("/"))
        if reserved:
            raise _Fail(
                400,
                "NAME_INVALID",
                "invalid repository name",
                f"{sorted(reserved)[0]!r} is reserved by the OCI layout storage",
            )
        return raw

    @staticmethod
    def _digest(raw: str | None) -> Digest:
        try:
            return Digest.parse(raw or "")
        except DigestFormatError as exc:
            raise _Fail(400, "DIGEST_INVALID", "invalid digest", str(exc)) from None

    @staticmethod
    def _tag(raw: str) -> str:
        try:
            return validate_tag(raw)
        except ReferenceFormatError as exc:
            raise _Fail(400, "TAG_INVALID", "invalid tag", str(exc)) from None

    def _layout(self, name: str) -> OCILayout:
        layout = self.storage.layout(name)
        if layout is None:
            raise _Fail(404, "NAME_UNKNOWN", "repository name not known to registry", name)
        return layout

    # -- routing
    def _route(self, path: str) -> None:
        method = self.command
        for pattern, handlers in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = handlers.get("GET" if method == "HEAD" else method)
            if handler is None:
                allowed = sorted({*handlers, *(["HEAD"] if "GET" in handlers else [])})
                raise _Fail(
                    405, "UNSUPPORTED", f"{method} is not supported here", path, {"Allow": ", ".join(allowed)}
                )
            handler(self, **match.groupdict())
            return
        # A digest or tag with a slash (sha256:../../x) matches no route: say what is wrong.
        match = _MALFORMED.fullmatch(path)
        if match is not None:
            self._name(match["name"])
            if match["kind"] == "blobs/uploads":
                raise _Fail(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
            if match["kind"] == "manifests" and ":" not in match["rest"]:
                self._tag(match["rest"])
            self._digest(match["rest"])
        raise _Fail(404, "UNSUPPORTED", "unknown endpoint", path[:200])

    def _base(self) -> None:
        self._send_json(200, {})

    def _catalog(self) -> None:
        names, next_last = _page(self.storage.repositories(), self._q("n"), self._q("last"))
        headers = {}
        if next_last is not None:
            headers["Link"] = f'</v2/_catalog?n={len(names)}&last={quote(next_last, safe="/")}>; rel="next"'
        self._send_json(200, {"repositories": names}, headers)

    def _tags_list(self, name: str) -> None:
        name = self._name(name)
        tags = [t for t in self._layout(name).tags() if _is_tag(t)]
        page, next_last = _page(tags, self._q("n"), self._q("last"))
        headers = {}
        if next_last is not None:
            headers["Link"] = f'</v2/{name}/tags/list?n={len(page)}&last={next_last}>; rel="next"'
        self._send_json(200, {"name": name, "tags": page}, headers)

    # -- blobs
    def _blob_get(self, name: str, digest: str) -> None:
        name = self._name(name)
        d = self._digest(digest)
        layout = self.storage.layout(name)
        f = None
        if layout is not None:
            try:
                # Regular files only, and no symbolic link below the layout's root: a link
                # planted in a served layout must not serve some other file of the host.
                f = open_regular(layout.blob_path(d), below=layout.root)
            except NotARegularFile as exc:
                log.warning("not serving blob %s of %s: %s is %s", d, name, exc.filename, exc.strerror)
            except OSError:
                pass
        if f is None:
            raise _Fail(404, "BLOB_UNKNOWN", "blob unknown to registry", str(d))
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            headers = {"Docker-Content-Digest": str(d), "Accept-Ranges": "bytes", "ETag": f'"{d}"'}
            byte_range = _parse_range(self.headers.get("Range"), size)
            if byte_range is None:
                self._start(200, size, headers, "application/octet-stream")
                if self.command != "HEAD" and self._stream_verified(f, d, size):
                    self.storage.verified(st, d, remember=True)
                return
            start, end = byte_range
            if start > end:
                raise _Fail(
                    416,
                    "BLOB_UNKNOWN",
                    "requested range not satisfiable",
                    self.headers.get("Range"),
                    {"Content-Range": f"bytes */{size}"},
                )
            if self.command != "HEAD" and not self.storage.verified(st, d):
                # A range is served only from a file whose whole content hashed right.
                _check_file(f, d, size)
                self.storage.verified(st, d, remember=True)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            self._start(206, end - start + 1, headers, "application/octet-stream")
            if self.command != "HEAD":
                f.seek(start)
                left = end - start + 1
                while left > 0 and (chunk := f.read(min(CHUNK, left))):
                    self.wfile.write(chunk)
                    left -= len(chunk)
                if left:
                    self.close_connection = True

    def _stream_verified(self, f: IO[bytes], digest: Digest, size: int) -> bool:
        # The last chunk is held back until the whole blob hashed right, so a client never
        # receives a complete-looking body of a corrupt blob: it gets a cut connection.
        hasher = Hasher(digest.algorithm)
        held = b""
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            if held:
                self.wfile.write(held)
            held = chunk
        if hasher.size != size or hasher.digest != digest:
            log.error(
                "blob %s on disk is corrupt (%d bytes hashing to %s): connection cut",
                digest,
                hasher.size,
                hasher.digest,
            )
            self.close_connection = True
            return False
        if held:
            self.wfile.write(held)
        return True

    def _blob_delete(self, name: str, digest: str) -> None:
        self._name(name)
        self._digest(digest)
        raise _Fail(
            405,
            "UNSUPPORTED",
            "blob deletion is not supported",
            "delete manifests instead; blobs are kept",
            {"Allow": "GET, HEAD"},
        )

    # -- uploads
    def _upload_headers(self, name: str, upload: _Upload) -> dict[str, str]:
        return {
            "Location": f"/v2/{name}/blobs/uploads/{upload.id}",
            "Range": f"0-{max(upload.size - 1, 0)}",
            "Docker-Upload-UUID": upload.id,
        }

    def _blob_created(self, name: str, digest: Digest) -> None:
        self._send(
            201, headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": str(digest)}
        )

    def _upload_start(self, name: str, upload_id: str | None) -> None:
        name = self._name(name)
        if upload_id:
            raise _Fail(
                405,
                "UNSUPPORTED",
                "POST to an upload session is not supported",
                headers={"Allow": "GET, PATCH, PUT, DELETE"},
            )
        mount = self._q("mount")
        if mount is not None:
            digest = self._digest(mount)
            source_name = self._q("from")
            target = self.storage.layout(name)
            if target is not None and target.has_blob(digest):
                self._blob_created(name, digest)
                return
            if source_name:
                source = self.storage.layout(self._name(source_name))
                if source is not None and source.has_blob(digest):
                    target = self.storage.layout(name, create=True)
                    assert target is not None
                    if target.mount_blob(source, digest):
                        self._blob_created(name, digest)
                        return
        raw_digest = self._q("digest")
        # Checked before a session or a byte of the body exists: a malformed digest stores nothing.
        expected = self._digest(raw_digest) if raw_digest is not None else None
        upload = self.storage.new_upload(name)
        if expected is None:
            self._send(202, headers={**self._upload_headers(name, upload), "OCI-Chunk-Min-Length": "0"})
            return
        with upload.lock:  # a monolithic upload: the body is the whole blob
            try:
                self.storage.append(upload, self._require_body())
            except BaseException:
                self.storage.discard(upload)
                raise
            self.storage.finish(upload, name, expected)
        self._blob_created(name, expected)

    def _require_body(self) -> _Body:
        assert self._body is not None
        return self._body

    def _check_content_range(self, name: str, upload: _Upload) -> None:
        header = self.headers.get("Content-Range")
        if header is None:
            return
        match = _CONTENT_RANGE.fullmatch(header.strip())
        if match is None:
            raise _Fail(400, "BLOB_UPLOAD_INVALID", "malformed Content-Range", header[:80])
        start, end = int(match[1]), int(match[2])
        if start != upload.size:
            raise _Fail(
                416,
                "BLOB_UPLOAD_INVALID",
                "chunk out of order",
                f"the upload has {upload.size} bytes; a chunk must start there",
                self._upload_headers(name, upload),
            )
        length = self._require_body().length
        if end < start or (length is not None and end - start + 1 != length):
            raise _Fail(
                400,
                "BLOB_UPLOAD_INVALID",
                "Content-Range does not match the body",
                f"{header[:80]} with Content-Length {length}",
            )

    def _upload_session(self, name: str, upload_id: str | None) -> tuple[str, _Upload]:
        name = self._name(name)
        return name, self.storage.upload(name, upload_id or "")

    def _upload_patch(self, name: str, upload_id: str | None) -> None:
        name, upload = self._upload_session(name, upload_id)
        with upload.lock:
            self._check_content_range(name, upload)
            self.storage.append(upload, self._require_body())
            headers = self._upload_headers(name, upload)
        self._send(202, headers=headers)

    def _upload_status(self, name: str, upload_id: str | None) -> None:
        name, upload = self._upload_session(name, upload_id)
        with upload.lock:
            headers = self._upload_headers(name, upload)
        self._send(204, headers=headers)

    def _upload_put(self, name: str, upload_id: str | None) -> None:
        name = self._name(name)
        try:
            digest = self._digest(self._q("digest"))
        except _Fail:
            # Before the body is read: the session ends here and its bytes go with it, rather
            # than waiting an hour for the sweep.
            with contextlib.suppress(_Fail):
                upload = self.storage.upload(name, upload_id or "")
                with upload.lock:
                    self.storage.discard(upload)
            raise
        upload = self.storage.upload(name, upload_id or "")
        with upload.lock:
            self._check_content_range(name, upload)
            self.storage.append(upload, self._require_body())
            self.storage.finish(upload, name, digest)
        self._blob_created(name, digest)

    def _upload_cancel(self, name: str, upload_id: str | None) -> None:
        name, upload = self._upload_session(name, upload_id)
        with upload.lock:
            self.storage.discard(upload)
        self._send(204)

    # -- manifests
    def _reference(self, reference: str) -> tuple[str | None, Digest | None]:
        if ":" in reference:
            return None, self._digest(reference)
        return self._tag(reference), None

    def _manifest_put(self, name: str, reference: str) -> None:
        name = self._name(name)
        tag, expected = self._reference(reference)

        def too_large() -> _Fail:
            return _Fail(
                413,
                "MANIFEST_INVALID",
                "manifest too large",
                f"manifests are limited to {MAX_MANIFEST_SIZE} bytes",
            )

        data = self._require_body().read_limited(MAX_MANIFEST_SIZE, too_large)
        try:
            doc = parse_manifest_document(data, self.headers.get("Content-Type"))
            subject = _subject_of(data)
        except ManifestError as exc:
            raise _Fail(400, "MANIFEST_INVALID", "manifest invalid", str(exc)) from None
        digest = Digest.of(data, expected.algorithm if expected is not None else "sha256")
        if expected is not None and digest != expected:
            raise _Fail(
                400,
                "DIGEST_INVALID",
                "the manifest does not match the digest it was pushed by",
                {"expected": str(expected), "got": str(digest)},
            )
        needed = [doc.config, *doc.layers] if isinstance(doc, Manifest) else list(doc.manifests)
        layout = self.storage.layout(name)
        # Foreign layers (with urls) are fetched from elsewhere and never pushed.
        missing = [
            str(d.digest)
            for d in needed
            if not d.urls and (layout is None or not layout.has_blob(d.digest, d.size))
        ]
        if missing:
            raise _Fail(
                400,
                "MANIFEST_BLOB_UNKNOWN",
                "manifest references blobs unknown to the repository",
                {"missing": missing},
            )
        layout = self.storage.layout(name, create=True)
        assert layout is not None
        try:
            # A moved tag leaves its old manifest listed, untagged: pulls by digest of what
            # an earlier push reported keep working until the manifest itself is deleted.
            entry = layout.add_manifest(data, doc.media_type, tag=tag, keep_untagged=True)
        except ManifestError as exc:
            raise _Fail(400, "MANIFEST_INVALID", "manifest invalid", str(exc)) from None
        headers = {
            "Location": f"/v2/{name}/manifests/{entry.digest}",
            "Docker-Content-Digest": str(entry.digest),
        }
        if subject is not None:
            headers["OCI-Subject"] = str(subject.digest)
        self._send(201, headers=headers)

    def _find_manifest(self, layout: OCILayout, tag: str | None, digest: Digest | None) -> Descriptor:
        if digest is None:
            try:
                return layout.resolve(tag)
            except LayoutError as exc:
                raise _Fail(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", str(exc)) from None
        found = layout.find_manifest(digest)
        if found is not None:
            return found
        # Layouts written by other tools (skopeo copy --all) list only the index: its children
        # are found through it.
        for entry in layout.manifests():
            if not mt.is_index(entry.media_type):
                continue
            try:
                index = parse_manifest_document(layout.read_blob(entry, MAX_MANIFEST_SIZE), entry.media_type)
            except ImagesmithError as exc:
                log.warning("cannot read index %s of %s: %s", entry.digest, layout.root, exc)
                continue
            if isinstance(index, Index):
                for child in index.manifests:
                    if child.digest == digest:
                        return Descriptor(child.media_type, digest, child.size)
        raise _Fail(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", str(digest))

    def _manifest_get(self, name: str, reference: str) -> None:
        name = self._name(name)
        tag, digest = self._reference(reference)
        layout = self._layout(name)
        entry = self._find_manifest(layout, tag, digest)
        try:
            data = layout.read_blob(entry, MAX_MANIFEST_SIZE)
        except LayoutError as exc:
            raise _Fail(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", str(exc)) from None
        self._send(
            200,
            data,
            {"Docker-Content-Digest": str(entry.digest), "ETag": f'"{entry.digest}"'},
            entry.media_type,
        )

    def _manifest_delete(self, name: str, reference: str) -> None:
        name = self._name(name)
        tag, digest = self._reference(reference)
        layout = self._layout(name)
        if digest is not None:
            if not layout.remove_manifest(digest):
                raise _Fail(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", str(digest))
        else:
            assert tag is not None
            try:
                layout.remove_tag(tag, keep_untagged=True)
            except LayoutError as exc:
                raise _Fail(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", str(exc)) from None
        self._send(202)

    # -- referrers
    def _referrers(self, name: str, digest: str) -> None:
        name = self._name(name)
        d = self._digest(digest)
        layout = self.storage.layout(name)
        # An unknown repository has no referrers; a 404 would tell clients the API is missing.
        found = layout.referrers(d) if layout is not None else []
        headers = {}
        artifact_type = self._q("artifactType")
        if artifact_type is not None:
            found = [x for x in found if x.artifact_type == artifact_type]
            headers["OCI-Filters-Applied"] = "artifactType"
        body = Index(mt.OCI_INDEX, tuple(found)).to_bytes()
        self._send(200, body, headers, mt.OCI_INDEX)


_Route = Callable[..., None]
_ROUTES: list[tuple[re.Pattern[str], dict[str, _Route]]] = [
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


def _check_file(f: IO[bytes], digest: Digest, size: int) -> None:
    """Hash the whole open file; :class:`IntegrityError` (answered 500) unless it is the blob."""
    hasher = Hasher(digest.algorithm)
    f.seek(0)
    while chunk := f.read(CHUNK):
        hasher.update(chunk)
    if hasher.size != size or hasher.digest != digest:
        raise IntegrityError(f"blob {digest} on disk hashes to {hasher.digest}: not serving a range of it")


def _is_tag(text: str) -> bool:
    try:
        validate_tag(text)
    except ReferenceFormatError:
        return False
    return True


def _subject_of(data: bytes) -> Descriptor | None:
    # model.Index does not keep ``subject`` (image-spec 1.1 allows it on an index too).
    obj = json.loads(data)
    subject = obj.get("subject") if isinstance(obj, dict) else None
    return Descriptor.from_json(subject, "manifest subject") if subject else None


def _page(items: list[str], n: str | None, last: str | None) -> tuple[list[str], str | None]:
    """One page of sorted ``items`` after ``last``; the second value is the ``last`` of the
    next page, or None when nothing remains."""
    if last:
        items = [i for i in items if i > last]
    if n is None or n == "":
        return items, None
    if not n.isdigit():
        raise _Fail(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested", n[:20])
    count = min(int(n), MAX_PAGE)
    page = items[:count]
    return page, (page[-1] if page and len(items) > count else None)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` as an inclusive (start, end); None to answer the whole blob.

    Several ranges or other units are ignored (answered with 200, which HTTP allows); an
    unsatisfiable range gives start > end.
    """
    if not header:
        return None
    match = _BYTE_RANGE.fullmatch(header.strip())
    if match is None or not (match[1] or match[2]):
        return None
    if not match[1]:  # a suffix: the last N bytes
        length = int(match[2])
        return (max(size - length, 0), size - 1) if length else (1, 0)
    start = int(match[1])
    end = min(int(match[2]), size - 1) if match[2] else size - 1
    if start >= size:
        return (1, 0)
    return start, end


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
        self._storage = _Storage(self.root)
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
