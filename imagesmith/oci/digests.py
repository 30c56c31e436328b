"""Content digests: a validated value type, incremental hashing and verifying readers.

A digest string reaches file paths and URLs, so it is validated before anything else touches
it: ``sha256:`` followed by exactly 64 lowercase hex digits (``sha512``: 128). Everything
else (``sha256:../x``, uppercase hex, unknown algorithms) is refused.
"""

from __future__ import annotations

import hashlib
import re
from typing import IO, Protocol

from imagesmith.errors import DigestFormatError, IntegrityError

__all__ = ["Digest", "Hasher", "VerifyingReader", "sha256_of_file"]

_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")
CHUNK = 1 << 20


class Digest(str):
    """A content digest such as ``sha256:e3b0…``; construct with :meth:`parse` or :meth:`of`.

    A digest is its string (``algorithm:hex``), validated: it compares, hashes, sorts and
    serialises as that string, so every result that carries a digest carries a ``Digest``
    and code that treated it as a ``str`` keeps working.
    """

    __slots__ = ()

    def __new__(cls, algorithm: str, hex: str) -> Digest:
        expected = _HEX_LENGTHS.get(algorithm)
        if expected is None:
            raise DigestFormatError(f"unsupported digest algorithm {algorithm!r}: use sha256 or sha512")
        if len(hex) != expected or not _HEX.fullmatch(hex):
            raise DigestFormatError(
                f"invalid digest {algorithm}:{hex[:80]!r}: expected {expected} lowercase hex digits"
            )
        return super().__new__(cls, f"{algorithm}:{hex}")

    def __getnewargs__(self) -> tuple[str, str]:  # type: ignore[override]
        return self.algorithm, self.hex

    def __repr__(self) -> str:
        return f"Digest({str(self)!r})"

    @property
    def algorithm(self) -> str:
        return self.partition(":")[0]

    @property
    def hex(self) -> str:
        return self.partition(":")[2]

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse and validate ``algorithm:hex``; raise :class:`DigestFormatError` otherwise."""
        if not isinstance(text, str):
            raise DigestFormatError(f"invalid digest {text!r}: not a string")
        algorithm, sep, hexpart = text.partition(":")
        if not sep:
            raise DigestFormatError(f"invalid digest {text[:80]!r}: expected 'sha256:<hex>'")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @property
    def encoded(self) -> str:
        """The hex part, safe to use as a file name."""
        return self.hex

    def short(self, length: int = 12) -> str:
        """A short form for humans: ``sha256:0123456789ab``."""
        return f"{self.algorithm}:{self.hex[:length]}"


class Hasher:
    """Incremental sha256 that also counts bytes; ``digest`` gives the :class:`Digest`."""

    __slots__ = ("_h", "size")

    def __init__(self, algorithm: str = "sha256") -> None:
        self._h = hashlib.new(algorithm)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    @property
    def digest(self) -> Digest:
        return Digest(self._h.name, self._h.hexdigest())


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class VerifyingReader:
    """Wrap a byte stream announced as (digest, size) and check both while it is read.

    Reading stops one byte past ``size``: a longer stream is detected without reading the
    rest of it. At end of stream the size and the digest must match, otherwise
    :class:`IntegrityError` is raised with ``what`` naming the content.
    """

    def __init__(self, raw: _Readable, expected: Digest, size: int | None, what: str) -> None:
        self._raw = raw
        self._expected = expected
        self._size = size
        self._what = what
        self._hasher = Hasher(expected.algorithm)
        self._done = False

    @property
    def bytes_read(self) -> int:
        return self._hasher.size

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        limit = CHUNK if n is None or n < 0 else n
        if self._size is not None:
            # Never read more than one byte past the announced size.
            limit = min(limit, self._size + 1 - self._hasher.size)
        data = self._raw.read(limit) if limit > 0 else b""
        if data:
            self._hasher.update(data)
            if self._size is not None and self._hasher.size > self._size:
                self._done = True
                raise IntegrityError(f"{self._what} is longer than its announced size {self._size}")
            return data
        self._done = True
        self._finish()
        return b""

    def _finish(self) -> None:
        got = self._hasher.size
        if self._size is not None and got != self._size:
            raise IntegrityError(f"{self._what} is truncated: got {got} bytes, expected {self._size}")
        if self._hasher.digest != self._expected:
            raise IntegrityError(
                f"{self._what} does not match its digest: expected {self._expected}, "
                f"got {self._hasher.digest}"
            )

    def read_all_chunks(self, chunk: int = CHUNK) -> bytes:
        """Read the rest into memory (only for small documents such as configs)."""
        parts: list[bytes] = []
        while True:
            data = self.read(chunk)
            if not data:
                return b"".join(parts)
            parts.append(data)


def sha256_of_file(f: IO[bytes]) -> tuple[Digest, int]:
    """Hash a whole binary file object from its current position."""
    hasher = Hasher()
    while True:
        data = f.read(CHUNK)
        if not data:
            return hasher.digest, hasher.size
        hasher.update(data)
