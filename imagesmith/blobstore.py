"""Atomic, verified writes of content-addressed blobs: the protocol the cache and layouts share.

Both the blob cache and OCI layouts store ``blobs/<algorithm>/<hex>`` files. A blob is
written to a temp file while it is hashed, fsynced, checked against the digest and size it
was announced with, and only then renamed into place (unless identical bytes are already
there). A reader therefore sees a complete blob or none, two writers of the same digest both
succeed, and a killed writer leaves only a temp file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .digests import Digest, Hasher
from .errors import ImagesmithError, IntegrityError

__all__ = ["BlobWriter", "FailFactory", "atomic_blob", "fsync_dir", "remove_stale_temp"]

# Turns an OSError into the caller's own error type: (action, path, error) -> exception.
FailFactory = Callable[[str, Path, OSError], ImagesmithError]


class BlobWriter:
    """The writable end of :func:`atomic_blob`.

    ``write`` hashes and stores bytes; ``size`` counts them. ``digest`` is available once the
    ``with`` block has exited without error.
    """

    def __init__(
        self,
        f: IO[bytes],
        tmp: Path,
        algorithm: str,
        limit: int | None,
        fail: FailFactory,
        misuse: type[ImagesmithError] = IntegrityError,
    ) -> None:
        self._f = f
        self._misuse = misuse
        self._tmp = tmp
        self._hasher = Hasher(algorithm)
        self._limit = limit
        self._fail = fail
        self._digest: Digest | None = None

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._hasher.size

    @property
    def path(self) -> Path:
        """The temp file being written (gone once the ``with`` block ends)."""
        return self._tmp

    @property
    def written_digest(self) -> Digest:
        """The digest of the bytes written so far (before the blob is checked and stored)."""
        return self._hasher.digest

    def flush(self) -> None:
        """Hand buffered bytes to the OS, so another reader of :attr:`path` sees all of
        :attr:`size` (an upload that follows the file while it grows, for one)."""
        try:
            self._f.flush()
        except OSError as exc:
            raise self._fail("write", self._tmp, exc) from None

    @property
    def digest(self) -> Digest:
        """The digest of everything written; valid after the ``with`` block ends."""
        if self._digest is None:
            raise self._misuse("the blob digest is known only after its writer is closed")
        return self._digest

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Store ``data``; more bytes than the announced size raise :class:`IntegrityError`."""
        self._hasher.update(data)
        if self._limit is not None and self._hasher.size > self._limit:
            raise IntegrityError(f"blob is longer than its announced size {self._limit}")
        try:
            self._f.write(data)
        except OSError as exc:
            raise self._fail("write", self._tmp, exc) from None
        return len(data)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; filesystems that cannot are silently accepted."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_blob(
    fd: int,
    tmp: Path,
    *,
    expected: Digest | None,
    size: int | None,
    destination: Callable[[Digest], Path],
    present: Callable[[Digest, int], bool],
    fail: FailFactory,
    misuse: type[ImagesmithError] = IntegrityError,
) -> Iterator[BlobWriter]:
    """Write one blob through the open temp file ``fd`` (at ``tmp``), atomically.

    When the ``with`` block ends the bytes are fsynced, checked against ``expected`` and
    ``size`` when given (:class:`IntegrityError` otherwise) and renamed to
    ``destination(digest)`` unless ``present(digest, size)`` already holds. On any exception,
    and after publishing, the temp file is gone.
    """
    algorithm = expected.algorithm if expected is not None else "sha256"
    try:
        # mkstemp makes 0600 files; blobs are content, not secrets, and may be linked into an
        # OCI layout that other users read.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            writer = BlobWriter(f, tmp, algorithm, size, fail, misuse)
            yield writer
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                raise fail("write", tmp, exc) from None
        digest = writer._hasher.digest
        if size is not None and writer.size != size:
            raise IntegrityError(f"blob is truncated: got {writer.size} bytes, expected {size}")
        if expected is not None and digest != expected:
            raise IntegrityError(f"blob does not match its digest: expected {expected}, got {digest}")
        if not present(digest, writer.size):
            final = destination(digest)
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp.replace(final)
            except OSError as exc:
                raise fail("store blob", final, exc) from None
            fsync_dir(final.parent)
        writer._digest = digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_stale_temp(directory: Path, older_than: float, fail: FailFactory) -> int:
    """Remove temp files in ``directory`` older than ``older_than`` seconds; return the count.

    Temp files that old belong to writers that were killed (a live writer finishes or removes
    its own), so this is safe while other processes write. A missing directory counts as empty.
    """
    cutoff = time.time() - older_than
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise fail("list", directory, exc) from None
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                Path(entry.path).unlink()
                removed += 1
        except FileNotFoundError:
            continue  # its writer finished, or another cleaner got there first
        except OSError as exc:
            raise fail("remove", Path(entry.path), exc) from None
    return removed
