"""Layer codecs: deterministic gzip and zstd compressors, and a sniffing decompressor.

A layer's digest is the sha256 of its compressed bytes, so compression must be a pure
function of the uncompressed stream. gzip is written by hand around :func:`zlib.compressobj`
with a fixed 10-byte header (no mtime, no file name, OS byte 255 "unknown", the XFL byte
Python's :mod:`gzip` would write for the level) and the crc32/isize trailer: the same tar gives
the same blob on every run, as long as the zlib library itself is the same build (a different
deflate implementation, such as zlib-ng, may choose different matches). zstd goes through the
``zstandard`` package with the content size and checksum flags off, single-threaded.

Two gzip backends produce that same header and trailer:

- ``isal`` (the default when the ``isal`` package imports): ISA-L's igzip, ~10x zlib's speed
  per core, run on all cores pigz-style. The input is cut into fixed 1 MiB blocks by offset;
  each block is an independent raw deflate stream primed with the previous block's last
  32 KiB as a dictionary and ended by a sync flush (byte-aligned, never final), and an empty
  final block closes the stream. Blocks are compressed in a thread pool (ISA-L releases the
  GIL) with at most two per thread in flight; the crc32 is computed in order by the caller. Block edges
  depend only on input offsets, so the bytes are the same whatever the thread count.
  ISA-L has levels 0-3: gzip level 0 maps to 0, 1-3 to 1, 4-6 to 2 (the default 6 -> 2,
  ratio within ~4% of zlib 6), 7-9 to 3.
- ``zlib``: one stream from :func:`zlib.compressobj`, single-threaded, byte-identical to
  Python's ``gzip.compress(mtime=0)`` (hence to Spack). Chosen by ``IMAGESMITH_GZIP=zlib``, and
  the fallback when ``isal`` is missing.

Every codec sits behind :func:`open_compressor`, and :func:`codec_id` names the backend, its
version, level and block layout so that cache records built with one codec are never
mistaken for another's output.

:func:`open_decompressor` detects gzip, zstd or plain data by magic bytes and translates every
codec failure (truncated stream, trailing garbage, corrupt data) into :class:`LayerError`.
It inflates gzip with ISA-L when ``isal`` imports (the same bytes, ~1.5x zlib's speed), else
with zlib.
Output is produced in bounded pieces, so a decompression bomb costs disk or time but never
unbounded memory.

Size: one job, the layer codecs (gzip through ISA-L or zlib with a fixed header and a thread
pool, zstd, detection for reading); most of its length is the determinism each codec needs.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import IO, Protocol, cast

import zstandard

from imagesmith.closing import Closing
from imagesmith.errors import LayerError
from imagesmith.oci.mediatypes import Compression

_isal_zlib: ModuleType | None
_ISAL_VERSION: str
try:
    import isal as _isal
    from isal import isal_zlib as _isal_zlib

    _ISAL_VERSION = str(_isal.__version__)
    # What inflating raises: zlib's error, and ISA-L's own.
    _INFLATE_ERRORS: tuple[type[Exception], ...] = (
        zlib.error,
        cast("type[Exception]", _isal.isal_zlib.error),
    )
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    _isal_zlib = None
    _ISAL_VERSION = ""
    _INFLATE_ERRORS = (zlib.error,)

__all__ = [
    "DEFAULT_LEVELS",
    "GZIP_BACKEND_ENV",
    "Compressor",
    "Decompressor",
    "Writable",
    "codec_id",
    "detect_compression",
    "gzip_backend",
    "open_compressor",
    "open_decompressor",
]

DEFAULT_LEVELS: dict[str, int] = {"gzip": 6, "zstd": 3}

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_MAGIC = b"BZh"

# Decompressed output is produced at most this much per read(): zstd can expand ~32768:1 and
# deflate ~1032:1, so output must be bounded per call, not input.
_OUT_CHUNK = 1 << 20
_IN_CHUNK = 1 << 16
_FHD_DICT_BYTES = (0, 1, 2, 4)
_FHD_FCS_BYTES = (0, 2, 4, 8)

#: Environment variable choosing the gzip backend: ``isal`` or ``zlib``.
GZIP_BACKEND_ENV = "IMAGESMITH_GZIP"
# Uncompressed bytes per independently compressed block of the isal backend. Part of the
# output format: changing it changes every digest (and codec_id says so).
_BLOCK = 1 << 20
_WINDOW = 1 << 15
# gzip level (0-9) -> ISA-L level (0-3).
_ISAL_LEVELS = (0, 1, 1, 1, 2, 2, 2, 3, 3, 3)


class Writable(Protocol):
    """Anything with ``write(bytes)``: a file, a hasher-forwarding sink, a cache BlobWriter."""

    def write(self, data: bytes, /) -> object: ...


class Compressor(Protocol):
    """A streaming compressor: ``write`` uncompressed bytes, ``close`` to end the stream."""

    def write(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def close(self) -> None: ...


class _Identity:
    """Pass-through for ``compression="none"``."""

    def __init__(self, out: Writable) -> None:
        self._out = out

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        if data:
            self._out.write(bytes(data))

    def close(self) -> None:
        """Nothing is buffered here, so nothing to flush."""


class _GzipZlib:
    """RFC 1952 gzip with a fixed header, built on zlib's raw deflate."""

    def __init__(self, out: Writable, level: int) -> None:
        if not 0 <= level <= 9:
            raise LayerError(f"gzip level must be between 0 and 9, not {level}")
        self._out = out
        self._crc = 0
        self._size = 0
        self._closed = False
        # Same memLevel as Python's gzip module, so output matches gzip.compress(mtime=0).
        self._z = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
        xfl = 2 if level == 9 else 4 if level == 1 else 0
        # ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL OS=255: nothing that varies between runs/hosts.
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes((xfl, 255)))

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        if not data:
            return
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        chunk = self._z.compress(data)
        if chunk:
            self._out.write(chunk)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tail = self._z.flush(zlib.Z_FINISH)
        self._out.write(tail + struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))


def _isal_block(isal: ModuleType, level: int, data: bytes, zdict: bytes) -> bytes:
    """Compress one block to a byte-aligned, non-final raw deflate piece."""
    args = (level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
    z = isal.compressobj(*args, zdict) if zdict else isal.compressobj(*args)
    return cast(bytes, z.compress(data) + z.flush(isal.Z_SYNC_FLUSH))


class _GzipIsal:
    """RFC 1952 gzip with a fixed header, pigz-style parallel blocks compressed by ISA-L."""

    def __init__(self, out: Writable, level: int, threads: int, isal: ModuleType) -> None:
        if not 0 <= level <= 9:
            raise LayerError(f"gzip level must be between 0 and 9, not {level}")
        self._out = out
        self._isal = isal
        self._level = _ISAL_LEVELS[level]
        self._threads = max(1, threads)
        # Made on the first block that is not the last: a layer of one block (most packages of
        # a stack) is compressed in the caller's thread. Threads made and dropped per small
        # layer gave a 1,000-image run 160 MB of malloc arenas and nothing in speed.
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[bytes]] = deque()
        self._buf = bytearray()
        self._window = b""
        self._crc = 0
        self._size = 0
        self._closed = False
        xfl = 2 if level == 9 else 4 if level == 1 else 0
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes((xfl, 255)))

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        if not data:
            return
        if self._closed:
            raise ValueError("write to a closed compressor")
        self._buf += data
        if len(self._buf) >= _BLOCK:
            with memoryview(self._buf) as view:
                end = len(self._buf) - len(self._buf) % _BLOCK
                for start in range(0, end, _BLOCK):
                    self._submit(bytes(view[start : start + _BLOCK]))
            del self._buf[:end]

    def _submit(self, block: bytes, *, last: bool = False) -> None:
        zdict, self._window = self._window, block[-_WINDOW:]
        # crc32 in order in this thread: ISA-L's runs at several GB/s, far from the bottleneck.
        self._crc = self._isal.crc32(block, self._crc)
        self._size += len(block)
        if self._pool is None and self._threads > 1 and not last:
            self._pool = ThreadPoolExecutor(self._threads, "imagesmith-gzip")
        if self._pool is None:
            self._emit(_isal_block(self._isal, self._level, block, zdict))
            return
        # Bounded memory: at most two blocks per thread queued or running.
        while len(self._pending) >= 2 * self._threads:
            self._emit(self._pending.popleft().result())
        self._pending.append(self._pool.submit(_isal_block, self._isal, self._level, block, zdict))

    def _emit(self, chunk: bytes) -> None:
        if chunk:
            self._out.write(chunk)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._buf:
                self._submit(bytes(self._buf), last=True)
                self._buf = bytearray()
            while self._pending:
                self._emit(self._pending.popleft().result())
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
        # A final empty fixed-Huffman block (BFINAL=1), then the crc32/isize trailer.
        self._out.write(b"\x03\x00" + struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))


class _Zstd:
    """One zstd frame per stream; content size and checksum flags off, single-threaded."""

    def __init__(self, out: Writable, level: int) -> None:
        if not 1 <= level <= 22:
            raise LayerError(f"zstd level must be between 1 and 22, not {level}")
        self._out = out
        self._closed = False
        cctx = zstandard.ZstdCompressor(
            level=level,
            write_content_size=False,
            write_checksum=False,
            write_dict_id=False,
            threads=0,
        )
        self._z = cctx.compressobj()

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        if not data:
            return
        chunk = self._z.compress(bytes(data) if not isinstance(data, bytes) else data)
        if chunk:
            self._out.write(chunk)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tail = self._z.flush()
        if tail:
            self._out.write(tail)


def gzip_backend() -> str:
    """The gzip backend in use: ``$IMAGESMITH_GZIP`` (``isal`` or ``zlib``) when set, else
    ``isal`` when the ``isal`` package is importable, else ``zlib``. Asking for ``isal`` without
    the package falls back to ``zlib`` too (the codec id records which one ran)."""
    choice = os.environ.get(GZIP_BACKEND_ENV, "").strip().lower()
    if choice not in ("", "isal", "zlib"):
        raise LayerError(f"{GZIP_BACKEND_ENV}={choice!r}: use isal or zlib")
    if choice == "zlib" or _isal_zlib is None:
        return "zlib"
    return "isal"


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def open_compressor(
    compression: Compression, out: Writable, level: int | None = None, *, threads: int | None = None
) -> Compressor:
    """Return a streaming compressor that writes the ``compression`` encoding of its input to ``out``.

    ``level`` defaults to :data:`DEFAULT_LEVELS` (gzip 6, zstd 3) and is ignored for
    ``"none"``. The result has ``write(bytes)`` and ``close()``; ``close`` flushes the end of
    the stream into ``out`` but does not close ``out``. The output is a deterministic function
    of the input bytes, the codec and the level (never of ``threads``). This is the one place
    where codec backends are chosen (see :func:`gzip_backend`; named by :func:`codec_id`).
    ``threads`` (default: the usable CPUs) only affects the isal gzip backend.
    """
    if compression == "gzip":
        lvl = DEFAULT_LEVELS["gzip"] if level is None else level
        if gzip_backend() == "isal" and _isal_zlib is not None:
            return _GzipIsal(out, lvl, _default_threads() if threads is None else threads, _isal_zlib)
        return _GzipZlib(out, lvl)
    if compression == "zstd":
        return _Zstd(out, DEFAULT_LEVELS["zstd"] if level is None else level)
    if compression == "none":
        return _Identity(out)
    raise LayerError(f"unknown compression {compression!r}: use gzip, zstd or none")


def codec_id(compression: Compression, level: int | None = None) -> str:
    """Name the exact codec :func:`open_compressor` would use, for cache keys.

    Two builds with different codec ids may produce different blobs from the same tar (another
    zlib build chooses other matches), so a record mapping content to a layer digest should
    include this string. Examples: ``"gzip-6/zlib-1.2.13"``,
    ``"gzip-6/isal-1.9.1/l2/blocks-1048576"`` (python-isal bundles its ISA-L build, so the
    package version pins the library).
    """
    if compression == "none":
        return "none"
    if compression == "gzip":
        lvl = DEFAULT_LEVELS["gzip"] if level is None else level
        if gzip_backend() == "isal" and 0 <= lvl <= 9:
            return f"gzip-{lvl}/isal-{_ISAL_VERSION}/l{_ISAL_LEVELS[lvl]}/blocks-{_BLOCK}"
        return f"gzip-{lvl}/zlib-{zlib.ZLIB_RUNTIME_VERSION}"
    if compression == "zstd":
        lvl = DEFAULT_LEVELS["zstd"] if level is None else level
        return f"zstd-{lvl}/libzstd-{'.'.join(map(str, zstandard.ZSTD_VERSION))}"
    raise LayerError(f"unknown compression {compression!r}: use gzip, zstd or none")


def detect_compression(head: bytes) -> Compression:
    """Classify a stream by its first bytes: ``"gzip"``, ``"zstd"`` or ``"none"``.

    bzip2 and xz are recognised only to refuse them with a clear :class:`LayerError`; anything
    else is reported as ``"none"`` and left to the tar reader to judge.
    """
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if head.startswith(_XZ_MAGIC):
        raise LayerError("xz-compressed input is not supported: recompress it with gzip or zstd")
    if head.startswith(_BZIP2_MAGIC) and len(head) >= 4 and head[3:4].isdigit():
        raise LayerError("bzip2-compressed input is not supported: recompress it with gzip or zstd")
    return "none"


class _ZstdFrames:
    """Follow the frame structure of a zstd stream as its bytes go by.

    ``zstandard``'s bounded-output reader reports a stream cut inside a frame as a clean end,
    so the frame and block headers are tracked here (cheaply: block contents are skipped, not
    parsed) to tell a complete stream from a truncated one, and to spot trailing garbage.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._state = "magic"
        self._need = 4
        self._buf = b""
        self._skip = 0
        self._after_skip = "magic"
        self._checksum = False
        self.frames = 0

    @property
    def complete(self) -> bool:
        """True when the bytes seen so far end exactly after a whole frame."""
        return self.frames > 0 and self._state == "magic" and not self._buf and not self._skip

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                if not self._skip:
                    self._enter(self._after_skip)
                continue
            take = min(self._need - len(self._buf), end - pos)
            self._buf += data[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                header, self._buf = self._buf, b""
                self._parse(header)

    def _enter(self, state: str) -> None:
        self._state = state
        self._need = {"magic": 4, "fhd": 1, "block": 3, "skippable": 4}[state]

    def _skip_then(self, count: int, state: str) -> None:
        self._after_skip = state
        self._skip = count
        if not count:
            self._enter(state)

    def _parse(self, header: bytes) -> None:
        if self._state == "magic":
            if header == _ZSTD_MAGIC:
                self._enter("fhd")
            elif header[0] & 0xF0 == 0x50 and header[1:] == b"\x2a\x4d\x18":
                self._enter("skippable")
            elif self.frames:
                raise LayerError(f"{self._what} has trailing garbage after the zstd data")
            else:
                raise LayerError(f"{self._what} is not valid zstd data")
        elif self._state == "skippable":
            self._skip_then(int.from_bytes(header, "little"), "magic")
        elif self._state == "fhd":
            fhd = header[0]
            single_segment = fhd >> 5 & 1
            fcs_flag = fhd >> 6
            fcs = _FHD_FCS_BYTES[fcs_flag] or (1 if single_segment else 0)
            self._checksum = bool(fhd >> 2 & 1)
            self._skip_then((0 if single_segment else 1) + _FHD_DICT_BYTES[fhd & 3] + fcs, "block")
        else:
            value = int.from_bytes(header, "little")
            last, block_type, size = value & 1, value >> 1 & 3, value >> 3
            if block_type == 3:
                raise LayerError(f"{self._what} is not valid zstd data (reserved block type)")
            if last:
                self.frames += 1
            content = 1 if block_type == 1 else size
            self._skip_then(content + (4 if last and self._checksum else 0), "magic" if last else "block")


class _TrackedSource:
    """A raw reader that shows every byte it returns to a :class:`_ZstdFrames`."""

    def __init__(self, decompressor: Decompressor, frames: _ZstdFrames) -> None:
        self._decompressor = decompressor
        self._frames = frames

    def read(self, n: int = -1, /) -> bytes:
        data = self._decompressor._next_input(n if n and n > 0 else _IN_CHUNK)
        self._frames.feed(data)
        return data


class _Inflater(Protocol):
    """What zlib's and ISA-L's ``decompressobj`` share."""

    unconsumed_tail: bytes
    unused_data: bytes
    eof: bool

    def decompress(self, data: bytes, max_length: int = 0, /) -> bytes: ...


class Decompressor(Closing):
    """A readable stream of decompressed bytes; see :func:`open_decompressor`.

    ``read(n)`` returns at most ``n`` bytes (1 MiB when ``n`` is negative) and ``b""`` at the
    end; any corruption raises :class:`LayerError` naming ``what``. ``compression`` says what
    was detected. Closing closes the underlying file only when it was opened here.
    """

    def __init__(self, raw: IO[bytes], what: str, *, owns_raw: bool) -> None:
        self._raw = raw
        self._owns = owns_raw
        self.what = what
        head = self._read_raw(6)
        self.compression: Compression = detect_compression(head)
        self._pending = head
        self._out = bytearray()
        self._eof = False
        self._zlib: _Inflater | None = None
        self._members = 0
        self.compressed_bytes = 0
        self._zstd_frames = _ZstdFrames(what)
        self._zstd = (
            zstandard.ZstdDecompressor().stream_reader(
                cast(IO[bytes], _TrackedSource(self, self._zstd_frames)),
                read_size=_IN_CHUNK,
                read_across_frames=True,
                closefd=False,
            )
            if self.compression == "zstd"
            else None
        )

    def _read_raw(self, n: int) -> bytes:
        try:
            return self._raw.read(n)
        except OSError as exc:
            raise LayerError(f"cannot read {self.what}: {exc.strerror or exc}") from None

    def _next_input(self, size: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        data = self._read_raw(size)
        self.compressed_bytes += len(data)
        return data

    def read(self, n: int = -1, /) -> bytes:
        """Return up to ``n`` decompressed bytes (``b""`` at the end of the stream)."""
        limit = _OUT_CHUNK if n is None or n < 0 else n
        while len(self._out) < limit and not self._eof:
            self._fill(limit - len(self._out))
        if len(self._out) <= limit:
            data = bytes(self._out)  # the common case: everything buffered, one copy
            self._out.clear()
            return data
        with memoryview(self._out) as view:
            data = bytes(view[:limit])
        del self._out[:limit]
        return data

    def _fill(self, want: int) -> None:
        if self.compression == "none":
            data = self._next_input(max(want, 1 << 16))
            if not data:
                self._eof = True
            self._out += data
        elif self.compression == "gzip":
            self._fill_gzip(want)
        else:
            self._fill_zstd(want)

    def _fill_gzip(self, want: int) -> None:
        z = self._zlib
        if z is None:
            data = self._next_input(_IN_CHUNK)
            if not data:
                if self._members == 0:
                    raise LayerError(f"{self.what} is truncated: empty gzip stream")
                self._eof = True
                return
            if self._members > 0:
                # After a complete member only another member or zero padding may follow.
                data = data.lstrip(b"\0")
                if not data:
                    return
                if not data.startswith(_GZIP_MAGIC[: len(data)]):
                    raise LayerError(f"{self.what} has trailing garbage after the gzip data")
            # wbits 31: a gzip wrapper, header and crc32/isize trailer checked by the codec.
            inflate = _isal_zlib if _isal_zlib is not None else zlib
            z = self._zlib = cast(_Inflater, inflate.decompressobj(31))
            self._pending = data
            return
        data = z.unconsumed_tail or self._next_input(_IN_CHUNK)
        try:
            out = z.decompress(data, max(want, 1 << 16))
        except _INFLATE_ERRORS as exc:
            raise LayerError(f"{self.what} is not valid gzip data: {exc}") from None
        self._out += out
        if z.eof:
            self._members += 1
            self._pending = z.unused_data
            self._zlib = None
        elif not data and not out:
            raise LayerError(f"{self.what} is truncated: the gzip stream ends early")

    def _fill_zstd(self, want: int) -> None:
        assert self._zstd is not None
        try:
            data = self._zstd.read(max(want, 1 << 16))
        except zstandard.ZstdError as exc:
            raise LayerError(f"{self.what} is not valid zstd data: {exc}") from None
        if data:
            self._out += data
            return
        if not self._zstd_frames.complete:
            raise LayerError(f"{self.what} is truncated: the zstd stream ends inside a frame")
        self._eof = True

    def close(self) -> None:
        """Release the underlying file if this object opened it."""
        if self._owns:
            self._raw.close()


def open_decompressor(source: Path | str | IO[bytes], what: str | None = None) -> Decompressor:
    """Open a gzip, zstd or uncompressed stream for reading its decompressed bytes.

    ``source`` is a path or a binary file object positioned at the start of the data; the
    codec is chosen by magic bytes, never by file name. Concatenated gzip members and zstd
    frames are read in sequence; zero padding after gzip is accepted, any other trailing bytes,
    a truncated stream or corrupt data raise :class:`LayerError` naming ``what`` (the path by
    default). bzip2 and xz are refused with a clear message.
    """
    if isinstance(source, str | Path):
        label = what or str(source)
        try:
            raw: IO[bytes] = open(source, "rb")  # noqa: SIM115 - owned by the Decompressor
        except OSError as exc:
            raise LayerError(f"cannot open {label}: {exc.strerror or exc}") from None
        try:
            return Decompressor(raw, label, owns_raw=True)
        except BaseException:
            raw.close()
            raise
    return Decompressor(source, what or getattr(source, "name", None) or "stream", owns_raw=False)
