"""The embedded registry's request bodies and error answers.

``http.server`` leaves request bodies to the handler and does not decode chunked ones, which
podman and skopeo send when they stream a layer of unknown size: :class:`Body` frames a body by
``Content-Length`` or chunked transfer coding and streams it. :class:`Fail` is an error answer
(status, distribution error code, message, detail); :class:`ClientGone` a client that cannot be
answered.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from imagesmith.oci.digests import CHUNK

__all__ = ["Body", "ClientGone", "Fail", "Stream"]

_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_MAX_DRAIN = 64 * 1024


class Fail(Exception):
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


class ClientGone(Exception):
    """The client closed the connection or sent a malformed body: no answer is possible."""


class Stream(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def readline(self, limit: int = -1, /) -> bytes: ...


class Body:
    """A request body as a stream, framed by ``Content-Length`` or chunked transfer coding.

    ``http.server`` leaves bodies to the handler and does not decode chunked ones, which
    podman and skopeo send when they stream a layer of unknown size.
    """

    def __init__(self, rfile: Stream, transfer_encoding: str | None, content_length: str | None) -> None:
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
                raise Fail(400, "UNSUPPORTED", "invalid Content-Length", text[:40])
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
            raise ClientGone(f"the body ended {self._left} bytes early")
        self._left -= len(data)
        self.received += len(data)
        return data

    def _read_chunked(self, n: int) -> bytes:
        if self._eof:
            return b""
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise ClientGone("malformed or truncated chunked body")
            size_text = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise ClientGone(f"malformed chunk size {size_text[:20]!r}")
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
            raise ClientGone("the chunked body ended early")
        self._chunk_left -= len(data)
        self.received += len(data)
        if self._chunk_left == 0 and self._rfile.readline(3).strip():
            raise ClientGone("a chunk does not end with CRLF")
        return data

    def read_limited(self, limit: int, too_large: Callable[[], Fail]) -> bytes:
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
        with contextlib.suppress(ClientGone, OSError):
            while total <= limit and (chunk := self.read(min(CHUNK, limit + 1 - total))):
                total += len(chunk)
