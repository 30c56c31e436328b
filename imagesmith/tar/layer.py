"""Building a layer from entries in one streaming pass, and a tarball adopted as a layer.

:func:`build_layer` writes a stream of :class:`~imagesmith.tar.writer.TarEntry` (from
:mod:`imagesmith.tar.entries`) as a tar, hashes it (the diff_id), compresses it, hashes that
(the digest) and stores it in the blob cache, in one streaming pass; gzip headers carry no
mtime and no file name (see :mod:`imagesmith.tar.compression`), so the same entries always
give the same digest. :func:`adopt_tarball` takes a tarball as its own layer, byte for byte
(one read: hashed, decompressed, every member checked); :func:`with_file` puts a generated file
among a layer's sorted entries.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, cast

from imagesmith import cancel
from imagesmith.errors import IntegrityError, LayerError
from imagesmith.oci.digests import Digest, Hasher
from imagesmith.oci.mediatypes import Compression, MediaTypes
from imagesmith.oci.model import Descriptor
from imagesmith.store.blobstore import BlobWriter
from imagesmith.store.cache import BlobCache
from imagesmith.tar.compression import Compressor, open_compressor, open_decompressor
from imagesmith.tar.format import MAX_HEADER_BYTES, MAX_MEMBERS, TarMember, TarReader
from imagesmith.tar.writer import TarEntry, TarWriter

if TYPE_CHECKING:
    from imagesmith.registry.overlap import BlobFollower
from imagesmith.tar.entries import (
    _CHUNK,
    _WHITEOUT,
    MAX_TARBALL_BYTES,
    _clean_member_name,
    _sort_key,
    normalise_prefix,
    source_date_epoch,
)

__all__ = [
    "LayerBlob",
    "LayerObserver",
    "adopt_tarball",
    "build_layer",
    "with_file",
]


# How often a follower of the compressed blob hears of its growth (see build_layer).
_ANNOUNCE = 4 << 20


@dataclass(frozen=True)
class LayerBlob:
    """A layer stored in the blob cache.

    ``digest`` and ``size`` describe the compressed blob (what a manifest lists); ``diff_id``
    is the sha256 of the uncompressed tar (what the config's ``rootfs.diff_ids`` lists) and
    ``uncompressed_size`` its length. ``directories`` holds every directory of the layer (or,
    when the layer was built with a ``directory_depth``, every one at most that many components
    deep) as a relative path without leading or trailing slash (``"opt/pkg/bin"``).
    """

    digest: Digest
    diff_id: Digest
    size: int
    media_type: str
    directories: frozenset[str]
    uncompressed_size: int = 0

    def descriptor(self, annotations: Mapping[str, str] | None = None) -> Descriptor:
        """The manifest descriptor of this layer, with optional annotations."""
        return Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=self.size,
            annotations=dict(annotations) if annotations else None,
        )


class _TarSink:
    """Takes tar bytes, cuts them into fixed 1 MiB pieces, hashes them and compresses them.

    Fixed piece boundaries make the codec input independent of how the tar writer happened to
    split its writes, which keeps the compressed output identical even for codecs whose output
    depends on call boundaries (and lets a parallel codec split work deterministically).
    """

    def __init__(self, compressor: Compressor, progress: Callable[[int], None] | None) -> None:
        self._write_down = compressor.write
        self._buf = bytearray()
        self._hasher = Hasher()
        self._progress = progress

    def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _CHUNK:
            cancel.check()  # an interrupted build stops within a MiB
            self._drain(len(self._buf) - len(self._buf) % _CHUNK)

    def _drain(self, n: int) -> None:
        with memoryview(self._buf) as view:
            for start in range(0, n, _CHUNK):
                # Release each slice at once: a live export would forbid resizing the buffer.
                with view[start : start + _CHUNK] as piece:
                    self._hasher.update(piece)
                    self._write_down(piece)
        del self._buf[:n]
        if self._progress is not None:
            self._progress(self._hasher.size)

    def finish(self) -> Digest:
        if self._buf:
            self._drain(len(self._buf))
        return self._hasher.digest

    @property
    def size(self) -> int:
        return self._hasher.size


class _Announcing:
    """The compressor's output: into the cache's blob writer, flushed and announced to a
    :class:`~imagesmith.registry.overlap.BlobFollower` every :data:`_ANNOUNCE` bytes."""

    def __init__(self, blob: BlobWriter, follower: BlobFollower) -> None:
        self._blob = blob
        self._follower = follower
        self._announced = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        n = self._blob.write(data)
        if self._blob.size - self._announced >= _ANNOUNCE:
            self._blob.flush()
            self._announced = self._blob.size
            self._follower.grow(self._blob.path, self._announced)
        return n


class LayerObserver(Protocol):
    """Sees every member of a layer as :func:`build_layer` writes it or :func:`adopt_tarball`
    reads it, so that what a later step needs of the layer is gathered in the same pass
    instead of reading the layer back (the runtime-closure check's summary)."""

    def entry(self, entry: TarEntry, head: bytes) -> None:
        """``entry`` was written; ``head`` holds the first bytes of a file's data (up to
        :data:`~imagesmith.tar.writer.FILE_HEAD`), empty for anything else."""

    def member(self, member: TarMember, data: Iterator[bytes]) -> None:
        """``member`` of an adopted tarball was checked; ``data`` yields its bytes (what the
        observer leaves unread is skipped)."""


def _record_directories(directories: set[str], name: str, is_dir: bool, depth: int | None) -> None:
    """Add the directories ``name`` shows to ``directories``: itself when it is one, and its
    parents (for entries that omit them), none more than ``depth`` components deep."""
    if depth is not None and name.count("/") >= depth:
        # Too deep to record: start from its ancestor at the deepest recorded level.
        name = "/".join(name.split("/", depth)[:depth])
        if name not in directories:
            directories.add(name)
    elif is_dir:
        directories.add(name)
    parent = name.rpartition("/")[0]
    while parent and parent not in directories:
        directories.add(parent)
        parent = parent.rpartition("/")[0]


def build_layer(
    entries: Iterable[TarEntry],
    cache: BlobCache,
    *,
    media_types: MediaTypes,
    compression: Compression = "gzip",
    level: int | None = None,
    mtime: int | None = None,
    progress: Callable[[int], None] | None = None,
    follower: BlobFollower | None = None,
    directory_depth: int | None = None,
    observer: LayerObserver | None = None,
) -> LayerBlob:
    """Write ``entries`` as a layer blob into ``cache`` and describe it.

    One streaming pass: tar writer -> sha256 (diff_id) -> compressor -> sha256 (digest) ->
    a temp file in the cache, renamed into place when complete; nothing is held in memory but
    a few MiB of buffers. ``mtime`` defaults to :func:`source_date_epoch`. ``media_types``
    picks the layer media type of the image's family (Docker v2 has no zstd: that raises
    :class:`UsageError` before any work). ``progress``, if given, is called with the number of
    uncompressed bytes written so far. Entries are written in the order given: use
    :func:`directory_entries` or :func:`tarball_entries` for a sorted, normalised stream. Any
    failure raises (usually :class:`LayerError`) and leaves nothing in the cache.

    ``follower`` (see :mod:`imagesmith.registry.overlap`) is told how much of the compressed blob is
    in the cache's temp file as it grows (flushed there every few MiB), then the digest, or
    that the build failed; an upload can so run alongside the build.

    ``directory_depth`` bounds the directories :attr:`LayerBlob.directories` records to those
    at most that many components deep (what environment inference looks at lies two below a
    prefix): every directory of a deep tree, each a full path, would cost memory (and a layer
    record) in the square of its depth.

    ``observer`` sees each entry once written (see :class:`LayerObserver`).
    """
    media_type = media_types.layer(compression)
    if mtime is None:
        mtime = source_date_epoch()
    directories: set[str] = set()
    try:
        with cache.put_stream() as blob:
            out: BlobWriter | _Announcing = blob if follower is None else _Announcing(blob, follower)
            compressor = open_compressor(compression, out, level)
            sink = _TarSink(compressor, progress)
            writer = TarWriter(sink, mtime=mtime)
            for entry in entries:
                _record_directories(directories, entry.name, entry.kind == "dir", directory_depth)
                writer.add(entry)
                if observer is not None:
                    observer.entry(entry, writer.file_head)
            writer.close()
            diff_id = sink.finish()
            compressor.close()
            if follower is not None:
                # Before the cache's fsync: the upload's tail need not wait for the disk.
                blob.flush()
                follower.finish(blob.written_digest, blob.size)
    except BaseException:
        if follower is not None:
            follower.abort()
        raise
    return LayerBlob(
        digest=blob.digest,
        diff_id=diff_id,
        size=blob.size,
        media_type=media_type,
        directories=frozenset(directories),
        uncompressed_size=sink.size,
    )


def with_file(entries: Iterable[TarEntry], name: str, data: bytes, mode: int = 0o644) -> Iterator[TarEntry]:
    """``entries`` (sorted as :func:`directory_entries` yields them) with the regular file
    ``name`` holding ``data`` in its sorted place, instead of any entry of that name.

    This is how a generated file (Spack's relocation record) joins a prefix's layer without
    touching the prefix. ``name`` must lie in a directory the entries hold; a directory of
    that name, or a hardlink to the replaced file, raises :class:`LayerError`.
    """
    key = name.encode("utf-8")
    extra = TarEntry(name, "file", mode, size=len(data), source=(io.BytesIO(data), 0))
    pending = True
    for entry in entries:
        if entry.name == name:
            if entry.kind == "dir":
                raise LayerError(f"{name} is a directory: it cannot hold the generated file of that name")
            continue
        if entry.kind == "hardlink" and entry.linkname == name:
            raise LayerError(f"{entry.name} is a hardlink to {name}, which is replaced by a generated file")
        if pending and _sort_key(entry.name, entry.kind) > key:
            pending = False
            yield extra
        yield entry
    if pending:
        yield extra


class _HashingReader:
    """A file read once, start to end: its bytes are hashed (the blob's digest) and, with a
    follower, announced every few MiB so that an upload can run while the rest is read."""

    def __init__(self, f: IO[bytes], path: Path, follower: BlobFollower | None) -> None:
        self._f = f
        self._path = path
        self._follower = follower
        self._announced = 0
        self.hasher = Hasher()

    def read(self, n: int = -1) -> bytes:
        cancel.check()
        data = self._f.read(n)
        self.hasher.update(data)
        if self._follower is not None and self.hasher.size - self._announced >= _ANNOUNCE:
            self._announced = self.hasher.size
            self._follower.grow(self._path, self._announced)
        return data


class _HashedStream:
    """A decompressed stream whose every byte read is hashed (a layer's diff_id is the sha256
    of its whole uncompressed tar, end-of-archive blocks and padding included), read through to
    its end at most ``limit`` bytes long."""

    def __init__(self, source: IO[bytes], what: str, limit: int) -> None:
        self._source = source
        self._what = what
        self._limit = limit
        self.hasher = Hasher()

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(n if n >= 0 else _CHUNK)
        self.hasher.update(data)
        if self.hasher.size > self._limit:
            raise LayerError(
                f"{self._what} decompresses to more than {self._limit} bytes: refusing it "
                "(a decompression bomb, or raise the limit for a genuinely huge package)"
            )
        return data

    def drain(self) -> None:
        """Read (and hash) the rest of the stream, after the tar's end-of-archive marker."""
        while self.read(_CHUNK):
            pass


def adopt_tarball(
    path: Path,
    prefix: str,
    media_types: MediaTypes,
    *,
    expected: Digest | None = None,
    required: tuple[str, ...] = (),
    follower: BlobFollower | None = None,
    progress: Callable[[int], None] | None = None,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_TARBALL_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
    directory_depth: int | None = None,
    observer: LayerObserver | None = None,
) -> LayerBlob:
    """The tarball ``path`` as a layer, byte for byte: its digest is the file's sha256.

    One pass reads the file once: it is hashed (and, with ``follower``, uploaded meanwhile),
    decompressed (gzip, zstd or none, by magic) and the tar stream hashed (the diff_id) while
    every member is checked as :func:`tarball_entries` checks them: no absolute or ``..``
    names, no whiteouts, no devices or FIFOs, no setuid, setgid or sticky bits (they would
    reach the image as they are), hardlinks only to earlier members, nothing below a
    non-directory, and every member in ``prefix`` (an archive path) or one of its parent
    directories; every name in ``required`` (relative to ``prefix``) must be a regular file;
    and the limits on members, header and decompressed sizes hold. ``expected``, when given,
    is the digest the file must have (the checksum a build cache records: a mismatch is an
    :class:`IntegrityError`). The file is not copied: the caller keeps it as the blob's origin.
    ``directory_depth`` bounds the directories recorded as for :func:`build_layer`;
    ``observer`` sees each member once checked (see :class:`LayerObserver`).
    """
    what = str(path)
    prefix = normalise_prefix(prefix)
    directories: set[str] = set()
    kinds: dict[str, str] = {}
    has_children: set[str] = set()
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise LayerError(f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        with f:
            raw = _HashingReader(f, path, follower)
            with open_decompressor(cast("IO[bytes]", raw), what) as decompressed:
                # Before any work: Docker v2 images have no zstd layer type.
                media_type = media_types.layer(decompressed.compression)
                stream = _HashedStream(cast("IO[bytes]", decompressed), what, max_bytes)
                reader = TarReader(stream, what, max_members=max_members, max_header_bytes=max_header_bytes)
                for member in reader.members():
                    name = _clean_member_name(member.name, what)
                    if not name:
                        continue
                    _check_adopted(name, member, prefix, what, kinds, has_children)
                    _record_directories(directories, name, member.kind == "dir", directory_depth)
                    if observer is not None:
                        observer.member(member, reader.data())
                    if progress is not None:
                        progress(stream.hasher.size)
                stream.drain()
            while raw.read(_CHUNK):
                pass  # bytes the decompressor accepted after the stream (zero padding)
        for rel in required:
            if kinds.get(f"{prefix}/{rel}") != "file":
                raise LayerError(f"{what} has no {prefix}/{rel}, so it is not a Spack build-cache tarball")
        digest = raw.hasher.digest
        if expected is not None and digest != expected:
            raise IntegrityError(
                f"{what} hashes to {digest}, but its build cache records {expected}: the file is "
                "damaged or was replaced; push it to the build cache again"
            )
        if follower is not None:
            follower.finish(digest, raw.hasher.size)
    except OSError as exc:
        if follower is not None:
            follower.abort()
        raise LayerError(f"cannot read {what}: {exc.strerror or exc}") from None
    except BaseException:
        if follower is not None:
            follower.abort()
        raise
    return LayerBlob(
        digest=digest,
        diff_id=stream.hasher.digest,
        size=raw.hasher.size,
        media_type=media_type,
        directories=frozenset(directories),
        uncompressed_size=stream.hasher.size,
    )


def _check_adopted(
    name: str, member: TarMember, prefix: str, what: str, kinds: dict[str, str], has_children: set[str]
) -> None:
    """One member of a tarball used as a layer as is (see :func:`adopt_tarball`)."""
    shown = f"{what}: member {member.name!r}"
    inside = name == prefix or name.startswith(prefix + "/")
    if not (inside or (member.kind == "dir" and prefix.startswith(name + "/"))):
        raise LayerError(
            f"{shown} lies outside the install prefix /{prefix}; a build-cache tarball holds that "
            "prefix and its parent directories only"
        )
    if name.rpartition("/")[2].startswith(_WHITEOUT):
        raise LayerError(f"{shown} is a whiteout: package tarballs may not delete files of lower layers")
    if member.kind in ("chardev", "blockdev", "fifo"):
        raise LayerError(
            f"{shown} is a {'FIFO' if member.kind == 'fifo' else 'device node'}: "
            "packages may not contain special files"
        )
    if member.mode & 0o7000:
        raise LayerError(
            f"{shown} has mode {member.mode:o} (setuid, setgid or sticky): refused in a "
            "package layer used as is"
        )
    if member.kind == "hardlink":
        target = member.linkname
        if target.startswith("/") or ".." in target.split("/"):
            raise LayerError(f"{shown}: hardlink points outside the archive ({target!r})")
        found = kinds.get(_clean_member_name(target, what))
        if found is None or found == "dir":
            raise LayerError(f"{shown}: hardlink to {target!r}, which is not an earlier file of the tarball")
    parent = name.rpartition("/")[0]
    while parent:
        kind = kinds.get(parent)
        if kind is not None and kind != "dir":
            raise LayerError(f"{shown} lies below {parent!r}, which is a {kind}, not a directory")
        if parent in has_children:
            break
        has_children.add(parent)
        parent = parent.rpartition("/")[0]
    if member.kind != "dir" and name in has_children:
        raise LayerError(f"{shown} is a {member.kind}, but earlier members lie below it")
    kinds[name] = member.kind
