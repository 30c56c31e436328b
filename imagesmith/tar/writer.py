"""A small, fast, deterministic tar writer.

The writer emits POSIX ustar headers, adding a PAX extended header (typeflag ``x``) only when a
value does not fit: ``path`` / ``linkpath`` for names longer than 100 bytes or not ASCII,
``size`` for files of 8 GiB or more, ``uid`` / ``gid`` above 2097151, ``uname`` / ``gname``
longer than 32 bytes or not ASCII. Everything that could vary between runs is fixed: one
``mtime`` for every entry (the caller passes it), no atime or ctime, PAX header blocks named
``././@PaxHeader`` with sorted records, device numbers 0 for non-devices, directory names
ending with ``/``, and no padding after the two zero blocks that end the archive. Whatever
uid, gid, names and modes an entry carries are written as given: normalising them is the
caller's policy (see :mod:`imagesmith.tar.layer`).

File data is streamed from a path (opened without following symlinks), from a
``(file object, offset)`` pair (a member of another tarball), or from a file object passed to
:meth:`TarWriter.add`. A file whose size differs from its entry's size raises
:class:`LayerError` naming it, so a file modified while a layer is built never yields a
silently wrong archive.

Reading tar archives is :mod:`imagesmith.tar.format`'s job; the writer shares its block size,
kinds and typeflags.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from imagesmith.errors import LayerError
from imagesmith.tar.format import BLOCK, TYPEFLAGS, EntryKind

__all__ = ["EntryKind", "Source", "TarEntry", "TarWriter", "open_source_file"]

_CHUNK = 1 << 20
FILE_HEAD = 64  # bytes of each file kept in TarWriter.file_head
_ZERO_BLOCK = bytes(BLOCK)
_MAX_OCTAL_7 = 0o7777777
_MAX_OCTAL_11 = 0o77777777777

Source = str | Path | tuple[IO[bytes], int] | None

# A header block is packed as two halves around its checksum field: name, mode, uid, gid, size
# and mtime (148 bytes), then typeflag, linkname, magic, version, uname, gname, devmajor,
# devminor, prefix and padding (356 bytes). The checksum is the sum of the other 504 bytes
# plus eight spaces; computing it from the halves avoids patching a mutable copy.
_HEAD = struct.Struct("100s36s12s")
_TAIL = struct.Struct("1s100s6s2s32s32s8s8s167x")
_CHKSUM_AS_SPACES = 8 * ord(" ")
_ZERO_DEVICE = b"0000000\0"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _byte_sum(data: bytes) -> int:
    """The sum of the bytes of ``data``, computed in C.

    The low half of Adler-32 is one plus the byte sum modulo 65521, exact while the sum stays
    below 65520. Header fields are ASCII (names go through :func:`_ascii_fallback`, owner
    names only when ASCII, numbers as octal digits), so a whole block sums to at most
    512 * 127 = 65024.
    """
    return (zlib.adler32(data) & 0xFFFF) - 1


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One archive member, as it will be written.

    ``name`` is relative, ``/``-separated, with no leading or trailing slash and no ``.``,
    ``..`` or empty components (the writer appends ``/`` to directories). ``size`` is the
    number of data bytes and is non-zero only for files. ``linkname`` is the symlink target,
    or for a hardlink the archive name of the member it links to. ``source`` says where file
    bytes come from when :meth:`TarWriter.add` is not given a stream: a filesystem path or a
    ``(file object, offset)`` pair. Invalid values raise :class:`LayerError`.
    """

    name: str
    kind: EntryKind
    mode: int
    size: int = 0
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    devmajor: int = 0
    devminor: int = 0
    source: Source = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        name = self.name
        # With a slash added at both ends, a leading or trailing slash or an empty component
        # shows up as "//", a "." or ".." component as "/./" or "/../": three substring tests
        # instead of splitting every name (this runs once per entry of every layer).
        wrapped = f"/{name}/"
        if not name or "\0" in name or "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
            raise LayerError(f"invalid archive member name {name!r}: must be a clean relative path")
        if self.kind not in TYPEFLAGS:
            raise LayerError(f"{name}: unknown entry kind {self.kind!r}")
        if not 0 <= self.mode <= 0o7777:
            raise LayerError(f"{name}: mode {self.mode:o} is out of range")
        if self.size < 0 or (self.size and self.kind != "file"):
            raise LayerError(f"{name}: a {self.kind} cannot have size {self.size}")
        if self.kind in ("symlink", "hardlink"):
            if not self.linkname or "\0" in self.linkname:
                raise LayerError(f"{name}: a {self.kind} needs a link target without NUL bytes")
        elif self.linkname:
            raise LayerError(f"{name}: only links have a link target")
        if self.uid < 0 or self.gid < 0 or self.devmajor < 0 or self.devminor < 0:
            raise LayerError(f"{name}: negative uid, gid or device number")

    @property
    def archive_name(self) -> str:
        """The name as it appears in the archive: directories end with ``/``."""
        return self.name + "/" if self.kind == "dir" else self.name


def _encode(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise LayerError(f"{what!r} is not valid UTF-8: tar names must be UTF-8 (rename the file)") from None


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("ascii") + b"=" + value + b"\n"
    # The length prefix counts itself, so iterate until the digit count is stable.
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode("ascii") + body


def _fits_field(value: bytes, width: int) -> bool:
    return len(value) <= width and value.isascii()


_NON_ASCII_TO_UNDERSCORE = bytes(range(128)) + b"_" * 128


def _ascii_fallback(value: bytes, width: int) -> bytes:
    # What a reader ignoring PAX would see; any fixed function will do, it only has to be stable.
    return value[:width].translate(_NON_ASCII_TO_UNDERSCORE)


class TarWriter:
    """Write a deterministic tar stream to ``out`` (anything with ``write(bytes)``).

    Every entry gets ``mtime``; :meth:`add` writes one entry (its header, then its data padded
    to 512 bytes) and :meth:`close` writes the two zero blocks that end the archive. The writer
    never closes ``out``. ``bytes_written`` counts the uncompressed bytes emitted so far.

    Layers of many small files spend most of their time here per entry rather than per byte,
    so the common case is kept short: an entry whose fields all fit ustar (short ASCII names,
    no owner names or device numbers) gets its header from two precompiled structs with the
    checksum computed in C, and a small file is read with ``os.read`` on a raw descriptor and
    written with its header and padding in one call. Every other entry takes the general
    path; both produce the same bytes for the same entry (tested against each other).
    """

    def __init__(self, out: _Writable, *, mtime: int) -> None:
        if not 0 <= mtime <= _MAX_OCTAL_11:
            raise LayerError(f"mtime {mtime} is outside the range a tar header can hold")
        self._out = out
        self._mtime_field = _octal(mtime, 12)
        # The second half of the header of a link-less entry without owner names or device
        # numbers depends on nothing but its type: build each once, with its byte sum.
        self._plain_tails: dict[str, tuple[bytes, int]] = {}
        for kind, flag in TYPEFLAGS.items():
            tail = _TAIL.pack(flag, b"", b"ustar\0", b"00", b"", b"", _ZERO_DEVICE, _ZERO_DEVICE)
            self._plain_tails[kind] = (tail, _byte_sum(tail))
        self._closed = False
        self.bytes_written = 0
        # The first bytes of the last file added (what an observer of the layer looks at to
        # tell an ELF file or a script from data, without reading the file again).
        self.file_head = b""

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.bytes_written += len(data)

    def add(self, entry: TarEntry, data: IO[bytes] | None = None) -> None:
        """Append ``entry``; file bytes come from ``data`` when given, else from ``entry.source``.

        Exactly ``entry.size`` bytes are copied. A source that is shorter or unreadable raises
        :class:`LayerError` naming the entry, and so does a path source that is no longer a
        regular file or whose size is not ``entry.size`` (the archive written so far is then
        unusable and should be discarded).
        """
        if self._closed:
            raise LayerError("cannot add entries to a closed tar writer")
        head = self._headers(entry)
        size = entry.size
        self.file_head = b""
        if not size or entry.kind != "file":
            self._write(head)
            return
        source = entry.source
        if data is not None:
            self._copy(data, entry, entry.name, head, check_longer=False)
        elif isinstance(source, str | Path):
            self._copy_path(source, entry, head)
        elif isinstance(source, tuple):
            fileobj, offset = source
            try:
                fileobj.seek(offset)
            except OSError as exc:
                raise LayerError(f"cannot read {entry.name}: {exc.strerror or exc}") from None
            self._copy(fileobj, entry, entry.name, head, check_longer=False)
        else:
            raise LayerError(f"{entry.name}: a file of {entry.size} bytes needs a data source")

    def _copy_path(self, path: str | Path, entry: TarEntry, head: bytes) -> None:
        size = entry.size
        try:
            fd, st = open_source_file(path)
        except OSError as exc:
            raise LayerError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            if st.st_size != size:
                raise LayerError(
                    f"{path} changed size while the layer was built ({size} -> "
                    f"{st.st_size} bytes): build again once it is no longer being written"
                )
            if size <= _CHUNK:
                # One read of one byte more than expected both fetches the file and shows
                # whether it grew; the data, its header and its padding go out in one write.
                data = _read_fd(fd, size, path)
                self.file_head = data[:FILE_HEAD]
                self._write(b"".join((head, data, _ZERO_BLOCK[: -size % BLOCK])))
            else:
                with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                    self._copy(f, entry, str(path), head)
        except OSError as exc:
            raise LayerError(f"cannot read {path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    def _copy(
        self, f: IO[bytes], entry: TarEntry, label: str, head: bytes, *, check_longer: bool = True
    ) -> None:
        remaining = entry.size
        try:
            while remaining:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    raise LayerError(
                        f"{label} shrank while the layer was built: {entry.size - remaining} of "
                        f"{entry.size} bytes read; build again once it is no longer being written"
                    )
                remaining -= len(chunk)
                if head:
                    self.file_head = chunk[:FILE_HEAD]
                # Header, data and padding of a small file go out in one write: many small
                # files would otherwise cost three calls each down the hashing pipeline.
                if not remaining:
                    chunk += bytes(-entry.size % BLOCK)
                if head:
                    chunk = head + chunk
                    head = b""
                self._write(chunk)
            if check_longer and f.read(1):
                raise LayerError(
                    f"{label} grew while the layer was built (more than {entry.size} bytes); "
                    "build again once it is no longer being written"
                )
        except OSError as exc:
            raise LayerError(f"cannot read {label}: {exc.strerror or exc}") from None

    def _headers(self, entry: TarEntry) -> bytes:
        kind = entry.kind
        name = entry.name + "/" if kind == "dir" else entry.name
        linkname = entry.linkname
        uid = entry.uid
        gid = entry.gid
        size = entry.size
        if (
            len(name) <= 100
            and name.isascii()
            and (not linkname or (len(linkname) <= 100 and linkname.isascii()))
            and uid <= _MAX_OCTAL_7
            and gid <= _MAX_OCTAL_7
            and size <= _MAX_OCTAL_11
            and not entry.uname
            and not entry.gname
            and not entry.devmajor
            and not entry.devminor
        ):
            # Everything fits one ustar block (almost every entry of a layer).
            head = _HEAD.pack(
                name.encode("ascii"),
                b"%07o\0%07o\0%07o\0%011o\0" % (entry.mode, uid, gid, size),
                self._mtime_field,
            )
            if linkname:
                tail = _TAIL.pack(
                    TYPEFLAGS[kind],
                    linkname.encode("ascii"),
                    b"ustar\0",
                    b"00",
                    b"",
                    b"",
                    _ZERO_DEVICE,
                    _ZERO_DEVICE,
                )
                tail_sum = _byte_sum(tail)
            else:
                tail, tail_sum = self._plain_tails[kind]
            return head + b"%06o\0 " % (_byte_sum(head) + _CHKSUM_AS_SPACES + tail_sum) + tail
        return self._general_headers(entry)

    def _general_headers(self, entry: TarEntry) -> bytes:
        pax: dict[str, bytes] = {}
        name = _encode(entry.archive_name, entry.name)
        if not _fits_field(name, 100):
            pax["path"] = name
        linkname = _encode(entry.linkname, entry.linkname) if entry.linkname else b""
        if not _fits_field(linkname, 100):
            pax["linkpath"] = linkname
        size_field = _octal(entry.size, 12)
        if entry.size > _MAX_OCTAL_11:
            pax["size"] = str(entry.size).encode("ascii")
            size_field = _octal(0, 12)
        ids = []
        for key, value in (("uid", entry.uid), ("gid", entry.gid)):
            if value > _MAX_OCTAL_7:
                pax[key] = str(value).encode("ascii")
                value = 0
            ids.append(_octal(value, 8))
        unames = []
        for key, text in (("uname", entry.uname), ("gname", entry.gname)):
            raw = _encode(text, text)
            if not _fits_field(raw, 32):
                pax[key] = raw
                raw = b""
            unames.append(raw)
        if entry.devmajor > _MAX_OCTAL_7 or entry.devminor > _MAX_OCTAL_7:
            raise LayerError(f"{entry.name}: device number too large for a tar header")
        header = self._block(
            _ascii_fallback(name, 100),
            _octal(entry.mode, 8),
            ids[0],
            ids[1],
            size_field,
            TYPEFLAGS[entry.kind],
            _ascii_fallback(linkname, 100),
            unames[0],
            unames[1],
            _octal(entry.devmajor, 8),
            _octal(entry.devminor, 8),
        )
        if not pax:
            return header
        payload = b"".join(_pax_record(key, pax[key]) for key in sorted(pax))
        pax_header = self._block(
            b"././@PaxHeader",
            _octal(0o644, 8),
            _octal(0, 8),
            _octal(0, 8),
            _octal(len(payload), 12),
            b"x",
            b"",
            b"",
            b"",
            _octal(0, 8),
            _octal(0, 8),
        )
        return pax_header + payload + bytes(-len(payload) % BLOCK) + header

    def _block(
        self,
        name: bytes,
        mode: bytes,
        uid: bytes,
        gid: bytes,
        size: bytes,
        typeflag: bytes,
        linkname: bytes,
        uname: bytes,
        gname: bytes,
        devmajor: bytes,
        devminor: bytes,
    ) -> bytes:
        head = _HEAD.pack(name, mode + uid + gid + size, self._mtime_field)
        tail = _TAIL.pack(typeflag, linkname, b"ustar\0", b"00", uname, gname, devmajor, devminor)
        return head + b"%06o\0 " % (_byte_sum(head) + _CHKSUM_AS_SPACES + _byte_sum(tail)) + tail

    def close(self) -> None:
        """End the archive with two zero blocks (idempotent); ``out`` stays open."""
        if not self._closed:
            self._closed = True
            self._write(_ZERO_BLOCK * 2)

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()


def open_source_file(path: str | Path) -> tuple[int, os.stat_result]:
    """Open the file a path entry's data comes from, as the writer reads it: a descriptor and
    its stat. ``OSError`` when it cannot be opened; :class:`LayerError` (the descriptor closed)
    when it is no longer a regular file."""
    # O_NOFOLLOW: a file swapped for a symlink after the walk must not be followed.
    # O_NONBLOCK: one swapped for a FIFO must not hang the build in open().
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LayerError(f"{path} is no longer a regular file: it changed during the build")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_fd(fd: int, size: int, label: str | Path) -> bytes:
    """The ``size`` bytes of the regular file open as ``fd``, checking that it has no more.

    Reads ``size + 1`` bytes: a regular file that returns fewer has ended (so one call does for
    a small file), and one that returns more grew since it was measured. A file that ends
    early or grew raises :class:`LayerError` naming ``label``; ``OSError`` is the caller's.
    """
    data = os.read(fd, size + 1)
    while len(data) < size:
        more = os.read(fd, size + 1 - len(data))
        if not more:
            raise LayerError(
                f"{label} shrank while the layer was built: {len(data)} of {size} bytes read; "
                "build again once it is no longer being written"
            )
        data += more
    if len(data) > size:
        raise LayerError(
            f"{label} grew while the layer was built (more than {size} bytes); "
            "build again once it is no longer being written"
        )
    return data
