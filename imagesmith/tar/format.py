"""The tar format, read once: the one parser of tar headers every reader in imagesmith uses.

Three parts of imagesmith read tar archives: the layer builder (package tarballs and ``import``
root filesystems, indexed by offset), the unpacker (layers, streamed strictly in order) and the
docker-archive reader (indexed by offset). They all go through :class:`TarReader`, so a crafted
archive means the same tree at build time, at unpack time and when copied: two readers of one
format that disagree are how a build-time view and an unpack-time view diverge.

What is understood: ustar headers (a name joined to its ``prefix`` field), POSIX pax extended
headers (``x`` for one member, ``g`` for all that follow: ``path``, ``linkpath``, ``size``,
``uid``, ``gid``, ``uname``, ``gname``, ``mtime``), GNU long names and link targets (``L`` /
``K``), octal and GNU base-256 numbers, and checksums summed over unsigned or (as some old
writers did) signed bytes. Sparse members (``S``, ``GNU.sparse.*``) and multi-volume or vendor
types are refused.

Where tar readers differ, the choice is made here, once:

- Link, symlink, device, directory and FIFO headers (``1``-``6``) carry no data whatever their
  size field says (as Go's archive/tar and Python's tarfile read them). Every other type
  carries ``size`` bytes: a regular file's are its content; those of a GNU dumpdir (``D``: a
  directory, its data the listing of its contents) and of a volume label (``V``: not a file
  at all, never yielded) are skipped, as GNU tar and Go skip them.
- A regular-file header (``0``, ``\\0`` or ``7``) whose name ends in ``/`` is a directory, as
  GNU tar extracts it; whatever data it declares is skipped.
- A pax record with an empty value deletes the keyword (POSIX: "it shall delete any header
  block field, previously entered extended header value, or global extended header value of
  the same name"): in a global header it ends the global value; for a member it deletes the
  header field too, so an empty ``path`` leaves the member without a name (refused as corrupt),
  an empty ``linkpath`` without a link target, and an empty numeric value is refused.

Limits bound what a hostile archive can cost: ``max_members`` members, ``max_header_bytes`` of
extended headers before one member (globals included), ``max_bytes`` read in all (streaming),
and names and link targets of at most :data:`MAX_NAME_BYTES` (``PATH_MAX``: no file system
call takes a longer path), which also bounds a path's depth to 2048 components.

Names are decoded as UTF-8 with surrogate escapes, so the exact stored bytes survive (an old
image may hold names in another encoding); a writer that needs UTF-8 checks for itself. Safety
of names (``..``, absolute paths) is the caller's business: this module only reads.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Literal, NoReturn, Protocol, cast

from imagesmith.errors import ImagesmithError, LayerError

__all__ = [
    "BLOCK",
    "MAX_HEADER_BYTES",
    "MAX_MEMBERS",
    "MAX_NAME_BYTES",
    "TYPEFLAGS",
    "EntryKind",
    "TarMember",
    "TarReader",
    "kind_of_mode",
    "parse_pax",
    "read_members",
]

BLOCK = 512
MAX_HEADER_BYTES = 1 << 20
MAX_MEMBERS = 1_000_000
# Linux's PATH_MAX: the longest path a system call takes, terminating NUL included.
MAX_NAME_BYTES = 4096
_CHUNK = 1 << 20
_ZERO_BLOCK = bytes(BLOCK)

EntryKind = Literal["file", "dir", "symlink", "hardlink", "chardev", "blockdev", "fifo"]

# The typeflag a writer puts on each kind.
TYPEFLAGS: Mapping[EntryKind, bytes] = {
    "file": b"0",
    "hardlink": b"1",
    "symlink": b"2",
    "chardev": b"3",
    "blockdev": b"4",
    "dir": b"5",
    "fifo": b"6",
}
# The kind of a file on disk, by its st_mode (sockets and anything exotic have none).
_MODE_KINDS: tuple[tuple[Callable[[int], bool], EntryKind], ...] = (
    (stat.S_ISDIR, "dir"),
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISCHR, "chardev"),
    (stat.S_ISBLK, "blockdev"),
    (stat.S_ISFIFO, "fifo"),
)


def kind_of_mode(mode: int) -> EntryKind | None:
    """The tar entry kind of a file whose ``st_mode`` is ``mode``; None for a socket."""
    return next((kind for test, kind in _MODE_KINDS if test(mode)), None)


# What a reader makes of each typeflag it accepts. "label" (a volume label) names the archive,
# not a file, and is never yielded.
_KINDS: dict[bytes, EntryKind | Literal["label"]] = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",  # contiguous file: an ordinary file everywhere that matters
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "chardev",
    b"4": "blockdev",
    b"5": "dir",
    b"D": "dir",  # GNU dumpdir: a directory whose data lists its contents
    b"6": "fifo",
    b"V": "label",
}
_REGULAR_FLAGS = frozenset({b"0", b"\0", b"7"})
# Header-only types: their size field is ignored (see the module docstring).
_NO_DATA_FLAGS = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})
_EXTENDED_FLAGS = frozenset({b"x", b"g", b"L", b"K"})
_HIGH_BYTES = bytes(range(128, 256))


class _Source(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(slots=True)
class TarMember:
    """One member as read by :class:`TarReader`.

    ``name`` and ``linkname`` are the stored bytes decoded as UTF-8 with surrogate escapes,
    not yet cleaned or checked for safety (``linkname`` is empty unless the member is a link).
    ``size`` is the data of a regular file (0 for every other kind); ``offset`` is where that
    data starts in the uncompressed archive and ``index`` the member's position, from 0.
    """

    name: str
    kind: EntryKind
    mode: int
    size: int
    linkname: str
    uid: int
    gid: int
    uname: str
    gname: str
    mtime_ns: int
    devmajor: int
    devminor: int
    offset: int
    index: int


def parse_pax(payload: bytes) -> dict[bytes, bytes]:
    """The records of a pax extended header (``"LEN key=value\\n"``...), keys as raw bytes.

    Raises :class:`ValueError` on a corrupt record; later records of one key win.
    """
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(payload):
        if payload[pos] == 0:
            break  # some writers pad the record area with NULs
        space = payload.find(b" ", pos)
        length = int(payload[pos:space]) if space > pos else 0  # ValueError when not a number
        record = payload[pos : pos + length]
        key, eq, value = record[space - pos + 1 : -1].partition(b"=")
        if length <= 0 or len(record) != length or not record.endswith(b"\n") or not eq:
            raise ValueError("corrupt pax extended header record")
        records[key] = value
        pos += length
    return records


def _shown(name: str) -> str:
    """A name for a message: whole when short, its start and length when not."""
    if len(name) <= 200:
        return repr(name)
    return f"{name[:100]!r}... ({len(name.encode('utf-8', 'surrogateescape'))} bytes)"


class TarReader:
    """Read the members of one tar archive, in order, in a single pass.

    Two uses share this one parser. *Indexing* (``seekable=True``, an uncompressed file): member
    data is skipped by seeking, never read, and a member whose data would run past the end of
    the file is refused before it is yielded; :attr:`TarMember.offset` locates the data for
    later reads (see :func:`read_members`). *Streaming* (any object with ``read``, e.g. a
    decompressor): nothing seeks; after a member is yielded, :meth:`data` streams its content,
    and whatever is left unread is skipped when the next member is asked for.

    Reading ends at the first zero block (what follows is ignored, as tar does; an empty stream
    is an empty archive). Every failure raises ``error`` (:class:`LayerError` by default) naming
    ``what`` and the member: corruption and truncation with ``advice`` appended, a limit with
    the setting that raises it (``limits`` names where the settings live, e.g.
    ``"UnpackPolicy"``). ``consumed`` counts the archive bytes read or skipped so far.
    """

    def __init__(
        self,
        f: _Source,
        what: str,
        *,
        seekable: bool = False,
        max_members: int = MAX_MEMBERS,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_bytes: int | None = None,
        error: type[ImagesmithError] = LayerError,
        advice: str = "the archive is truncated or corrupt",
        limits: str = "",
    ) -> None:
        self._f = f
        self._what = what
        self._seekable = seekable
        self._max_members = max_members
        self._max_header_bytes = max_header_bytes
        self._max_bytes = max_bytes
        self._error = error
        self._advice = advice
        self._limits = limits
        self._total: int | None = None
        self.consumed = 0
        self._left = 0  # data of the current member not yet read
        self._pad = 0  # its padding to the next block
        # For messages, built only when one is needed: the header being read and the name of
        # the member it describes (None until known), and the last member named.
        self._header_at = 0
        self._name: str | None = None
        self._last_name: str | None = None

    # -- failures --------------------------------------------------------------------------

    @property
    def _last(self) -> str:
        name = self._last_name
        return "the first member" if name is None else f"member {_shown(name)}"

    def _during(self, part: str) -> str:
        """What was being read, for a message: ``part`` is "data", "header" or "extended"."""
        if part == "data":
            return f"the data of {self._last}"
        if part == "header":
            return f"the header after {self._last}"
        return "an extended header"

    def _where(self) -> str:
        if self._name is not None:
            return f"{self._what}: member {_shown(self._name)}"
        return f"{self._what}: header at byte {self._header_at}"

    def _corrupt(self, problem: str) -> NoReturn:
        message = f"{self._where()}: {problem}"
        raise self._error(f"{message}; {self._advice}" if self._advice else message)

    def _truncated(self, where: str) -> NoReturn:
        message = f"{self._what}: truncated {where}"
        raise self._error(f"{message}; {self._advice}" if self._advice else message)

    def _limit(self, problem: str, setting: str) -> NoReturn:
        owner = f"{self._limits}." if self._limits else ""
        raise self._error(f"{self._where()}: {problem}; raise {owner}{setting} if the archive is trusted")

    # -- bytes -------------------------------------------------------------------------------

    def _read(self, n: int, during: str) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the archive); ``during`` as for
        :meth:`_during`."""
        pieces: list[bytes] = []
        got = 0
        while got < n:
            try:
                chunk = self._f.read(min(n - got, _CHUNK))
            except LayerError as exc:  # a decompressor's verdict on its input
                message = f"{exc} (while reading {self._during(during)})"
                raise self._error(f"{message}; {self._advice}" if self._advice else message) from None
            except OSError as exc:
                raise self._error(f"cannot read {self._what}: {exc.strerror or exc}") from None
            if not chunk:
                break
            pieces.append(chunk)
            got += len(chunk)
        self.consumed += got
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _skip(self, n: int, during: str) -> None:
        if not n:
            return
        if self._seekable:
            # Members were checked against the file's size before they were yielded.
            self.consumed += n
            try:
                self._seek(self.consumed)
            except OSError as exc:
                raise self._error(f"cannot read {self._what}: {exc.strerror or exc}") from None
            return
        while n:
            want = min(_CHUNK, n)
            if len(self._read(want, during)) < want:
                self._truncated(f"inside {self._during(during)}")
            n -= want

    def _seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return cast("IO[bytes]", self._f).seek(offset, whence)  # seekable sources only

    def _budget(self, n: int) -> None:
        limit = self._max_bytes
        if limit is not None and self.consumed + n > limit:
            self._limit(
                f"the archive is larger than {limit} bytes uncompressed (a decompression bomb?)", "max_bytes"
            )

    def data(self) -> Iterator[bytes]:
        """Yield the current member's data in pieces of at most 1 MiB (streaming use)."""
        while self._left:
            want = min(_CHUNK, self._left)
            chunk = self._read(want, "data")
            if len(chunk) < want:
                self._truncated(f"inside the data of {self._last}")
            self._left -= want
            yield chunk

    # -- headers -----------------------------------------------------------------------------

    def _number(self, raw: bytes, *, signed: bool = False) -> int:
        if raw and raw[0] & 0x80:
            # GNU base-256: the high bit of the first byte marks it; 0xff starts a negative number.
            value = int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
            if raw[0] == 0xFF:
                if not signed:
                    self._corrupt("negative number in a tar header")
                value -= 1 << (8 * len(raw) - 1)
            return value
        text = raw.split(b"\0", 1)[0].strip(b" ")
        if not text:
            return 0
        try:
            return int(text, 8)
        except ValueError:
            self._corrupt(f"corrupt number {text[:20]!r} in a tar header")

    def _pax_int(self, value: bytes, key: str) -> int:
        if not value.isdigit():  # also refuses b"": an empty number deletes the field
            self._corrupt(f"corrupt {key} {value[:20]!r} in a pax header")
        return int(value)

    def _pax_time_ns(self, value: bytes) -> int:
        text = value.decode("ascii", "replace")
        negative = text.startswith("-")
        seconds, _, fraction = text.lstrip("-").partition(".")
        if not seconds.isdigit() or (fraction and not fraction.isdigit()):
            self._corrupt(f"corrupt mtime {text[:30]!r} in a pax header")
        ns = int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
        return -ns if negative else ns

    def _parse_pax(self, payload: bytes) -> dict[bytes, bytes]:
        try:
            return parse_pax(payload)
        except ValueError:
            self._corrupt("corrupt pax extended header")

    def _checksum_ok(self, block: bytes) -> bool:
        try:
            stored = self._number(block[148:156])
        except ImagesmithError:
            return False
        rest = block[:148] + block[156:]
        unsigned = sum(rest) + 256  # the checksum field itself counts as eight spaces
        if stored == unsigned:
            return True
        # Some old writers summed signed chars; tar accepts that form too.
        return stored == unsigned - 256 * (len(rest) - len(rest.translate(None, _HIGH_BYTES)))

    def _path(self, raw: bytes, role: str) -> str:
        if len(raw) > MAX_NAME_BYTES:
            name = raw.decode("utf-8", "surrogateescape")
            raise self._error(
                f"{self._where()}: its {role} {_shown(name)} is longer than {MAX_NAME_BYTES} bytes, "
                "the longest path a file system call takes (PATH_MAX): no system can hold it"
            )
        if b"\0" in raw:
            self._corrupt(f"NUL byte in the {role}")
        return raw.decode("utf-8", "surrogateescape")

    def members(self) -> Iterator[TarMember]:
        """Yield the members in archive order (see the class docstring)."""
        what = self._what
        if self._seekable:
            try:
                self._total = self._seek(0, os.SEEK_END)
                self._seek(0)
            except OSError as exc:
                raise self._error(f"cannot read {what}: {exc.strerror or exc}") from None
        global_pax: dict[bytes, bytes] = {}
        global_bytes = 0
        pax: dict[bytes, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        extended_bytes = 0
        index = 0
        while True:
            self._skip(self._left + self._pad, "data")
            self._left = self._pad = 0
            offset = self._header_at = self.consumed
            self._name = None
            self._budget(BLOCK)
            block = self._read(BLOCK, "header")
            if not block:
                if offset == 0:
                    return  # an empty stream is an empty archive: nothing was cut off
                self._truncated(f"after {self._last}: the end-of-archive marker is missing")
            if len(block) < BLOCK:
                if offset == 0:
                    raise self._error(f"{what} is not a tar archive (shorter than one 512-byte header)")
                self._truncated(f"inside the header after {self._last}")
            if block == _ZERO_BLOCK:
                if pax or long_name is not None or long_link is not None:
                    self._truncated("after an extended header that has no member")
                return
            if not self._checksum_ok(block):
                self._corrupt("bad header checksum (not a tar archive, or corrupt)")
            typeflag = block[156:157]
            size = self._number(block[124:136])
            pad = -size % BLOCK
            if typeflag in _EXTENDED_FLAGS:
                extended_bytes += size
                limit = self._max_header_bytes
                if extended_bytes > limit or (typeflag == b"g" and global_bytes + size > limit):
                    self._limit(
                        f"extended headers of more than {limit} bytes before one member", "max_header_bytes"
                    )
                self._budget(size + pad)
                payload = self._read(size, "extended")
                if len(payload) < size:
                    self._truncated("inside an extended header")
                self._skip(pad, "extended")
                if typeflag == b"x":
                    pax.update(self._parse_pax(payload))
                elif typeflag == b"g":
                    global_bytes += size
                    global_pax.update(self._parse_pax(payload))
                    # An empty value ends the global value (see the module docstring).
                    global_pax = {key: value for key, value in global_pax.items() if value}
                elif typeflag == b"L":
                    long_name = payload.rstrip(b"\0")
                else:
                    long_link = payload.rstrip(b"\0")
                continue
            records = {**global_pax, **pax} if global_pax else pax
            pax, extended_bytes = {}, 0
            member = self._member(block, typeflag, size, pad, records, long_name, long_link, index)
            long_name = long_link = None
            if member is None:
                continue  # a volume label: its data, if any, is skipped like any other
            index += 1
            yield member

    def _member(
        self,
        block: bytes,
        typeflag: bytes,
        size: int,
        pad: int,
        records: Mapping[bytes, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
        index: int,
    ) -> TarMember | None:
        """The member the header ``block`` describes; sets the data to read or skip after it.

        Names and link targets come from pax records, then GNU long-name headers, then the
        header's own fields (a ustar name joined to its prefix); an empty pax value deletes
        the field, so it is used as it is (empty).
        """
        raw_name = records.get(b"path", long_name)
        if raw_name is None:
            raw_name = block[0:100].split(b"\0", 1)[0]
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix and block[257:263] == b"ustar\0":
                raw_name = prefix + b"/" + raw_name
        raw_link = records.get(b"linkpath", long_link)
        if raw_link is None:
            raw_link = block[157:257].split(b"\0", 1)[0]
        name = self._name = self._path(raw_name, "name")
        if typeflag == b"S" or (records and any(key.startswith(b"GNU.sparse") for key in records)):
            self._corrupt("sparse members are not supported; re-create the archive without --sparse")
        kind = _KINDS.get(typeflag)
        if kind is None:
            self._corrupt(
                f"unsupported member type {typeflag!r} (multi-volume or a vendor extension); "
                "re-create the archive with a POSIX tar"
            )
        if b"size" in records:
            size = self._pax_int(records[b"size"], "size")
            pad = -size % BLOCK
        if typeflag in _NO_DATA_FLAGS:
            size = pad = 0
        self._budget(size + pad)
        self._last_name = name
        if self._total is not None and self.consumed + size > self._total:
            self._truncated(f"inside the data of {self._last}: it extends past the end of the archive")
        self._left, self._pad = size, pad
        if kind == "label":
            return None
        if not name:
            self._corrupt("the member has an empty name")
        if typeflag in _REGULAR_FLAGS and raw_name.endswith(b"/"):
            kind = "dir"  # a trailing slash makes a directory, as GNU tar extracts it
        if index >= self._max_members:
            self._limit(f"the archive has more than {self._max_members} members", "max_members")
        links = kind in ("symlink", "hardlink")
        device = kind in ("chardev", "blockdev")
        number = self._number
        return TarMember(
            name=name,
            kind=kind,
            mode=number(block[100:108]) & 0o7777,
            size=size if kind == "file" else 0,
            linkname=self._path(raw_link, "link target") if links else "",
            uid=self._pax_int(records[b"uid"], "uid") if b"uid" in records else number(block[108:116]),
            gid=self._pax_int(records[b"gid"], "gid") if b"gid" in records else number(block[116:124]),
            uname=records.get(b"uname", block[265:297].split(b"\0", 1)[0]).decode("utf-8", "surrogateescape"),
            gname=records.get(b"gname", block[297:329].split(b"\0", 1)[0]).decode("utf-8", "surrogateescape"),
            mtime_ns=self._pax_time_ns(records[b"mtime"])
            if b"mtime" in records
            else number(block[136:148], signed=True) * 1_000_000_000,
            devmajor=number(block[329:337]) if device else 0,
            devminor=number(block[337:345]) if device else 0,
            offset=self.consumed,
            index=index,
        )


def read_members(
    f: IO[bytes],
    what: str,
    *,
    max_members: int = MAX_MEMBERS,
    max_header_bytes: int = MAX_HEADER_BYTES,
    error: type[ImagesmithError] = LayerError,
) -> Iterator[TarMember]:
    """Index the uncompressed, seekable tar ``f``: its members in archive order, data unread.

    The indexing use of :class:`TarReader`: each member's data is skipped by seeking and found
    again at :attr:`TarMember.offset`. Failures (a corrupt or truncated archive, a limit
    exceeded) raise ``error`` naming ``what`` and the member.
    """
    reader = TarReader(
        f, what, seekable=True, max_members=max_members, max_header_bytes=max_header_bytes, error=error
    )
    return reader.members()
