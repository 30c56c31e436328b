"""The embedded registry's request handler: one connection's requests framed, dispatched to
a route, answered (errors as distribution error documents), every name and digest from a URL
validated before any path is built from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

from imagesmith.errors import DigestFormatError, ImagesmithError, IntegrityError, ReferenceFormatError
from imagesmith.oci.digests import Digest
from imagesmith.oci.references import validate_repository, validate_tag
from imagesmith.registry.serving.framing import Body, ClientGone, Fail
from imagesmith.registry.serving.storage import Storage
from imagesmith.store.layout import INDEX_FILE, LAYOUT_FILE, LOCK_FILE, OCILayout

__all__ = ["Handler", "Route", "Serving"]

log = logging.getLogger("imagesmith.serve")

# Path components that name files inside a layout; a repository named after one would collide
# with the layout of its parent repository (``a/blobs`` inside layout ``a``).
RESERVED_COMPONENTS = frozenset({"blobs", INDEX_FILE, LAYOUT_FILE, LOCK_FILE})
MAX_NAME_LENGTH = 255
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
_MALFORMED = re.compile(r"/v2/(?P<name>.+?)/(?P<kind>blobs/uploads|blobs|manifests|referrers)/(?P<rest>.+)")
_LOGGED_QUERY_KEYS = frozenset({"digest", "mount", "from", "n", "last", "artifactType"})

Route = Callable[..., None]


class Serving(Protocol):
    """What a handler needs of the server it runs in."""

    storage: Storage
    idle_timeout: float

    def mark(self, conn: socket.socket, state: str) -> None: ...


class Handler(BaseHTTPRequestHandler):
    """One connection's requests: framing, answers, validation and routing. The routes
    themselves (``routes``) are the resource modules' (:mod:`.blobs`, :mod:`.manifests`)."""

    routes: ClassVar[list[tuple[re.Pattern[str], dict[str, Route]]]] = []
    protocol_version = "HTTP/1.1"
    server_version = "imagesmith"
    sys_version = ""
    disable_nagle_algorithm = True  # small answers must not wait for delayed ACKs
    # Silence allowed in the middle of a request (a slow upload); between requests, and
    # while the request line and headers arrive, the server's idle timeout applies.
    timeout = 300

    _status = 0
    _body: Body | None = None
    _headers_done = False
    _query: dict[str, list[str]]

    @property
    def _http(self) -> Serving:
        return cast(Serving, self.server)

    @property
    def storage(self) -> Storage:
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
                self._body = Body(
                    self.rfile, self.headers.get("Transfer-Encoding"), self.headers.get("Content-Length")
                )
            except Fail:
                self.close_connection = True  # the body's end is unknown: nothing can follow it
                raise
            self._route(path)
        except Fail as fail:
            self._send_error(fail)
        except ClientGone as exc:
            log.debug("%s %s: %s; closing the connection", self.command, split.path, exc)
            self.close_connection = True
        except (ConnectionError, TimeoutError) as exc:
            log.debug("%s %s: connection lost (%s)", self.command, split.path, exc)
            self.close_connection = True
        except IntegrityError as exc:
            log.error("%s %s: %s", self.command, split.path, exc)
            self._send_error(Fail(500, "UNKNOWN", "stored content is corrupt", str(exc)))
        except ImagesmithError as exc:
            log.error("%s %s: %s", self.command, split.path, exc)
            self._send_error(Fail(500, "UNKNOWN", "internal storage error", str(exc)))
        except Exception:
            log.exception("%s %s failed", self.command, split.path)
            self._send_error(Fail(500, "UNKNOWN", "internal server error"))
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

    # Every method goes through one dispatch; the routes say which paths allow which.
    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _dispatch

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
            raise ClientGone("an error after the answer started")
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

    def _send_error(self, fail: Fail) -> None:
        error: dict[str, Any] = {"code": fail.code, "message": fail.message}
        if fail.detail is not None:
            error["detail"] = fail.detail
        with contextlib.suppress(ClientGone):
            self._send_json(fail.status, {"errors": [error]}, fail.headers)

    def _require_body(self) -> Body:
        assert self._body is not None
        return self._body

    # -- validation (before any path is built)
    @staticmethod
    def _name(raw: str) -> str:
        try:
            validate_repository(raw)
        except ReferenceFormatError as exc:
            raise Fail(400, "NAME_INVALID", "invalid repository name", str(exc)) from None
        if len(raw) > MAX_NAME_LENGTH:
            raise Fail(
                400, "NAME_INVALID", "invalid repository name", f"longer than {MAX_NAME_LENGTH} characters"
            )
        reserved = RESERVED_COMPONENTS.intersection(raw.split("/"))
        if reserved:
            raise Fail(
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
            raise Fail(400, "DIGEST_INVALID", "invalid digest", str(exc)) from None

    @staticmethod
    def _tag(raw: str) -> str:
        try:
            return validate_tag(raw)
        except ReferenceFormatError as exc:
            raise Fail(400, "TAG_INVALID", "invalid tag", str(exc)) from None

    def _layout(self, name: str) -> OCILayout:
        layout = self.storage.layout(name)
        if layout is None:
            raise Fail(404, "NAME_UNKNOWN", "repository name not known to registry", name)
        return layout

    # -- routing
    def _route(self, path: str) -> None:
        method = self.command
        for pattern, handlers in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = handlers.get("GET" if method == "HEAD" else method)
            if handler is None:
                allowed = sorted({*handlers, *(["HEAD"] if "GET" in handlers else [])})
                raise Fail(
                    405, "UNSUPPORTED", f"{method} is not supported here", path, {"Allow": ", ".join(allowed)}
                )
            handler(self, **match.groupdict())
            return
        # A digest or tag with a slash (sha256:../../x) matches no route: say what is wrong.
        match = _MALFORMED.fullmatch(path)
        if match is not None:
            self._name(match["name"])
            if match["kind"] == "blobs/uploads":
                raise Fail(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
            if match["kind"] == "manifests" and ":" not in match["rest"]:
                self._tag(match["rest"])
            self._digest(match["rest"])
        raise Fail(404, "UNSUPPORTED", "unknown endpoint", path[:200])
