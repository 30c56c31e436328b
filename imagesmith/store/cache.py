"""The local content-addressed blob cache.

Layout under the root (``$IMAGESMITH_CACHE_DIR``, else the platform's user cache directory)::

    blobs/sha256/<hex>      one file per blob, named by the digest of its bytes
    records/<sha256>.json   small JSON records (e.g. "this input gave that layer"), keyed by
                            the sha256 of a caller-chosen key string; mtime = last use
    tmp/                    files being written; renamed into place when complete

Writes are atomic: bytes go to a uniquely named temp file under ``tmp/``, are fsynced and
checked against the expected digest and size, and only then renamed into place with
:func:`os.replace`. A reader therefore sees a complete blob or none, two processes writing the
same digest both succeed (the second rename replaces identical bytes), and a process killed
mid-write leaves only a temp file, removed later by :meth:`BlobCache.clean_temp`.

Reads are verified: :meth:`BlobCache.open` hashes while it reads, and a blob whose bytes do not
match its name (truncated, bit-flipped, emptied) raises :class:`IntegrityError` and is evicted,
so the next run fetches or builds it again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import platformdirs

from imagesmith.closing import Closing
from imagesmith.errors import CacheError, IntegrityError
from imagesmith.jsonfields import JsonFields
from imagesmith.oci.digests import CHUNK, Digest, Hasher, VerifyingReader
from imagesmith.store.blobstore import (
    BlobWriter,
    NotARegularFile,
    atomic_blob,
    create_temp,
    open_regular,
    remove_stale_temp,
    replace_from_temp,
)

__all__ = ["CACHE_ENV", "BlobCache", "BlobWriter", "CacheStats", "CachedBlobReader", "PruneResult"]

CACHE_ENV = "IMAGESMITH_CACHE_DIR"


def _fail(action: str, path: Path, exc: OSError) -> CacheError:
    hint = ""
    if exc.errno == errno.ENOSPC:
        hint = ": the disk is full; free space or set IMAGESMITH_CACHE_DIR to another disk"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f": set {CACHE_ENV} to a writable directory"
    return CacheError(f"cannot {action} {path}: {exc.strerror or exc}{hint}")


@dataclass(frozen=True)
class CacheStats(JsonFields):
    """What the cache holds: blobs, records and leftover temp files, with their sizes."""

    root: Path
    blobs: int
    blob_bytes: int
    records: int
    temp_files: int
    temp_bytes: int


@dataclass(frozen=True)
class PruneResult(JsonFields):
    """What :meth:`BlobCache.prune` removed (or would remove, in a dry run)."""

    blobs: int
    records: int
    temp_files: int
    bytes: int
    dry_run: bool


class CachedBlobReader(Closing):
    """A verifying reader over a cached blob; see :meth:`BlobCache.open`.

    ``read(n)`` returns up to ``n`` bytes; at the end of the blob its size and digest are
    checked, and a mismatch evicts the entry and raises :class:`IntegrityError`.
    """

    def __init__(self, cache: BlobCache, digest: Digest, f: IO[bytes], size: int | None) -> None:
        self._cache = cache
        self._digest = digest
        self._f = f
        self._reader = VerifyingReader(f, digest, size, f"cached blob {digest}")

    def read(self, n: int = -1, /) -> bytes:
        """Read up to ``n`` bytes (1 MiB if negative); ``b""`` at the verified end."""
        try:
            return self._reader.read(n)
        except IntegrityError:
            self.close()
            self._cache.evict(self._digest)
            raise
        except OSError as exc:
            raise _fail("read", self._cache.path(self._digest), exc) from None

    def read_all(self) -> bytes:
        """Read the rest into memory (only for small blobs such as configs and manifests)."""
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Close the underlying file."""
        self._f.close()


class BlobCache:
    """A content-addressed store of blobs and small JSON records on the local disk.

    ``root`` defaults to ``$IMAGESMITH_CACHE_DIR`` when set, else
    ``platformdirs.user_cache_dir("imagesmith")``. Directories are created on first write, so
    a cache that is only queried never touches the disk; that first write also removes temp
    files older than an hour (see :meth:`clean_temp`).
    """

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            env = os.environ.get(CACHE_ENV)
            root = Path(env) if env else Path(platformdirs.user_cache_dir("imagesmith"))
        self.root = Path(root).expanduser().absolute()
        self._ready = False

    def __repr__(self) -> str:
        return f"BlobCache({str(self.root)!r})"

    @property
    def tmp_dir(self) -> Path:
        """Where files being written live until they are complete."""
        return self.root / "tmp"

    def _ensure(self, digest_dir: str = "sha256") -> None:
        if self._ready and digest_dir == "sha256":
            return
        for sub in (self.tmp_dir, self.root / "records", self.root / "blobs" / digest_dir):
            try:
                sub.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _fail("create the cache directory", sub, exc) from None
        if digest_dir == "sha256" and not self._ready:
            self._ready = True
            # Leftovers of killed processes are swept on the first write of each process.
            try:
                self.clean_temp()
            except CacheError:
                pass

    def path(self, digest: Digest) -> Path:
        """Where the blob ``digest`` lives: ``root/blobs/<algorithm>/<hex>`` (present or not)."""
        return self.root / "blobs" / digest.algorithm / digest.hex

    def has(self, digest: Digest, size: int | None = None) -> bool:
        """Whether the blob is present (and, when ``size`` is given, exactly that large).

        This checks existence and size only; the bytes are verified when read (:meth:`open`)
        or on demand (:meth:`verify`).
        """
        try:
            st = self.path(digest).stat()
        except OSError:
            return False
        return size is None or st.st_size == size

    def touch(self, digest: Digest) -> None:
        """Record a use of the blob without reading it (its mtime is what :meth:`prune` goes by)."""
        with contextlib.suppress(OSError):
            os.utime(self.path(digest))

    def open(self, digest: Digest, size: int | None = None) -> CachedBlobReader:
        """Open a cached blob for verified reading.

        A missing blob raises :class:`CacheError`. A blob whose size on disk differs from
        ``size`` is evicted at once and raises :class:`IntegrityError`; one whose bytes turn out
        not to match ``digest`` raises it when the end is read, and is evicted too.
        """
        path = self.path(digest)
        try:
            f = open_regular(path)  # owned by the returned reader; never blocks on a FIFO
        except FileNotFoundError:
            raise CacheError(f"blob {digest} is not in the cache ({path})") from None
        except NotARegularFile as exc:
            self.evict(digest)
            raise IntegrityError(f"cached blob {digest} was {exc.strerror}: evicted") from None
        except OSError as exc:
            raise _fail("open", path, exc) from None
        if size is not None:
            actual = os.fstat(f.fileno()).st_size
            if actual != size:
                f.close()
                self.evict(digest)
                raise IntegrityError(f"cached blob {digest} has {actual} bytes instead of {size}: evicted")
        # The mtime records the last use, which is what `prune --older-than` goes by.
        with contextlib.suppress(OSError):
            os.utime(f.fileno())
        return CachedBlobReader(self, digest, f, size)

    @contextlib.contextmanager
    def put_stream(self, expected: Digest | None = None, size: int | None = None) -> Iterator[BlobWriter]:
        """Write a blob through a :class:`BlobWriter`, atomically, in a ``with`` block.

        Bytes go to a unique temp file under ``root/tmp``; when the block ends they are fsynced,
        checked against ``expected`` and ``size`` if given (:class:`IntegrityError` otherwise),
        and renamed into place (see :func:`imagesmith.store.blobstore.atomic_blob`). If the blob is
        already present with the same size the temp file is simply dropped. On any exception
        the temp file is removed and nothing is published.
        """
        self._ensure(expected.algorithm if expected is not None else "sha256")
        try:
            fd, tmp = create_temp(self.tmp_dir, "blob")
        except OSError as exc:
            raise _fail("create a temp file in", self.tmp_dir, exc) from None
        with atomic_blob(
            fd,
            tmp,
            expected=expected,
            size=size,
            destination=self.path,
            present=self.has,
            fail=_fail,
            misuse=CacheError,
        ) as writer:
            yield writer

    def put_bytes(self, data: bytes) -> Digest:
        """Store ``data`` (a small blob such as a config or manifest) and return its digest."""
        with self.put_stream() as writer:
            writer.write(data)
        return writer.digest

    def put_file(self, src: Path) -> Digest:
        """Copy the file ``src`` into the cache, hashing while copying, and return its digest."""
        try:
            f = open(src, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CacheError(f"cannot read {src}: {exc.strerror or exc}") from None
        with f, self.put_stream() as writer:
            while True:
                try:
                    chunk = f.read(CHUNK)
                except OSError as exc:
                    raise CacheError(f"cannot read {src}: {exc.strerror or exc}") from None
                if not chunk:
                    break
                writer.write(chunk)
        return writer.digest

    def verify(self, digest: Digest) -> bool:
        """Rehash a cached blob: ``True`` if intact; ``False`` (and evicted) if corrupt or missing."""
        path = self.path(digest)
        hasher = Hasher(digest.algorithm)
        try:
            with open_regular(path) as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
        except FileNotFoundError:
            return False
        except NotARegularFile:
            self.evict(digest)
            return False
        except OSError as exc:
            raise _fail("read", path, exc) from None
        if hasher.digest != digest:
            self.evict(digest)
            return False
        return True

    def evict(self, digest: Digest) -> None:
        """Remove a blob from the cache (no error when it is absent)."""
        path = self.path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _fail("remove", path, exc) from None

    def _record_path(self, key: str) -> Path:
        return self.root / "records" / (hashlib.sha256(key.encode("utf-8")).hexdigest() + ".json")

    def get_record(self, key: str) -> dict[str, Any] | None:
        """The JSON record stored under ``key``, or ``None`` when absent or unreadable.

        A corrupt record (not JSON, not an object, stored under another key) counts as missing:
        records are hints that save work, never the source of truth. Reading a record is a
        use: its mtime moves, so :meth:`prune` keeps records in use.
        """
        path = self._record_path(key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != key or not isinstance(doc.get("value"), dict):
            return None
        value: dict[str, Any] = doc["value"]
        with contextlib.suppress(OSError):
            os.utime(path)
        return value

    def put_record(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``, atomically replacing any old record."""
        self._ensure()
        try:
            data = json.dumps({"key": key, "value": value}, sort_keys=True).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise CacheError(f"record {key!r} is not JSON-serialisable: {exc}") from None
        path = self._record_path(key)
        try:
            fd, tmp = create_temp(self.tmp_dir, "record")
        except OSError as exc:
            raise _fail("create a temp file in", self.tmp_dir, exc) from None
        try:
            replace_from_temp(fd, tmp, path, data)
        except OSError as exc:
            raise _fail("write record", path, exc) from None

    def clean_temp(self, older_than: float = 3600) -> int:
        """Remove the temp files of writers that are gone; return how many were removed.

        imagesmith's own writers lock their temp files while they live, so a killed writer's
        file goes at once and a live one's never (:func:`~imagesmith.store.blobstore.remove_stale_temp`);
        other files go once older than ``older_than`` seconds (0: all of them, only when no
        other process uses the cache).
        """
        return remove_stale_temp(self.tmp_dir, older_than, _fail)

    def _files(self, sub: str) -> Iterator[os.DirEntry[str]]:
        top = self.root / sub
        stack = [top]
        while stack:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _fail("list", directory, exc) from None
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    yield entry

    def stats(self) -> CacheStats:
        """Count what the cache holds (a directory walk; nothing is hashed)."""
        blobs = blob_bytes = records = temp_files = temp_bytes = 0
        for entry in self._files("blobs"):
            with contextlib.suppress(FileNotFoundError):
                blob_bytes += entry.stat(follow_symlinks=False).st_size
                blobs += 1
        for _ in self._files("records"):
            records += 1
        for entry in self._files("tmp"):
            with contextlib.suppress(FileNotFoundError):
                temp_bytes += entry.stat(follow_symlinks=False).st_size
                temp_files += 1
        return CacheStats(self.root, blobs, blob_bytes, records, temp_files, temp_bytes)

    def prune(self, older_than: float | None = None, *, dry_run: bool = False) -> PruneResult:
        """Remove blobs and records not used for ``older_than`` seconds (``None``: all of them).

        A blob's mtime is its last use (written, or opened for reading). Temp files of killed
        writers older than an hour go too; younger ones may belong to a running process.
        Removing a blob is always safe: the next run builds or fetches it again.
        """
        cutoff = None if older_than is None else time.time() - older_than
        counts = {"blobs": 0, "records": 0}
        removed_bytes = 0
        for sub in ("blobs", "records"):
            for entry in self._files(sub):
                try:
                    st = entry.stat(follow_symlinks=False)
                    if cutoff is not None and st.st_mtime > cutoff:
                        continue
                    if not dry_run:
                        Path(entry.path).unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise _fail("remove", Path(entry.path), exc) from None
                counts[sub] += 1
                removed_bytes += st.st_size
        stale = 0
        if dry_run:
            limit = time.time() - 3600
            for entry in self._files("tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime <= limit:
                        stale += 1
        else:
            stale = self.clean_temp()
        return PruneResult(counts["blobs"], counts["records"], stale, removed_bytes, dry_run)
