"""Atomic, verified writes of content-addressed blobs: the protocol the cache and layouts share.

Both the blob cache and OCI layouts store ``blobs/<algorithm>/<hex>`` files. A blob is
written to a temp file while it is hashed, fsynced, checked against the digest and size it
was announced with, and only then renamed into place (unless identical bytes are already
there). A reader therefore sees a complete blob or none, two writers of the same digest both
succeed, and a killed writer leaves only a temp file.

Temp files come from :func:`create_temp`: each is locked (``flock``) by its writer for as
long as the writer has it open, which it keeps until the file is renamed or removed. So
:func:`remove_stale_temp` tells a dead writer's leftovers (unlocked: removed at once, however
recent) from a live writer's (locked: never touched), instead of guessing from their age.

Blob files are opened for reading with :func:`open_regular`: a FIFO, a device or a directory
where a blob should be is refused at once (opening a FIFO would wait forever for a writer),
and a reader that serves blobs to others can refuse symbolic links on the way as well.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from imagesmith.errors import ImagesmithError, IntegrityError
from imagesmith.oci.digests import Digest, Hasher

__all__ = [
    "BlobWriter",
    "FailFactory",
    "NotARegularFile",
    "atomic_blob",
    "create_temp",
    "fsync_dir",
    "open_regular",
    "remove_stale_temp",
    "replace_from_temp",
]

# Turns an OSError into the caller's own error type: (action, path, error) -> exception.
FailFactory = Callable[[str, Path, OSError], ImagesmithError]


# KIND@PID-RANDOM.tmp: a temp file whose writer holds a lock on it while it lives.
_LOCKED_TEMP = re.compile(r"[^@/]+@(\d+)-[^/]*\.tmp")


def create_temp(directory: Path, kind: str) -> tuple[int, Path]:
    """Create a temp file ``KIND@PID-RANDOM.tmp`` in ``directory``, locked for its writer.

    The returned descriptor holds an exclusive ``flock`` on the file: keep it open until the
    file is renamed into place or removed (:func:`atomic_blob` does), and
    :func:`remove_stale_temp` leaves the file alone. A file swept between its creation and
    its lock is simply created again. Raises :class:`OSError` as ``mkstemp`` does.
    """
    for _ in range(100):
        fd, name = tempfile.mkstemp(dir=directory, prefix=f"{kind}@{os.getpid()}-", suffix=".tmp")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                return fd, Path(name)  # no locks here: sweepers fall back to the file's age
            if Path(name).stat().st_ino == os.fstat(fd).st_ino:
                return fd, Path(name)
        except FileNotFoundError:
            pass  # swept before it was locked: make another
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EAGAIN, "temp files keep disappearing", str(directory))


def replace_from_temp(fd: int, tmp: Path, target: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` into the :func:`create_temp` file ``fd`` (at ``tmp``), fsync it and
    rename it onto ``target``, keeping it open (so locked) until then; ``mode`` sets its
    permissions first. The temp file is gone afterwards either way; errors are ``OSError``."""
    with os.fdopen(fd, "wb") as f:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            f.write(data)
            f.flush()
            os.fsync(fd)
            tmp.replace(target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _writer_gone(path: str, name: str) -> bool | None:
    """For a :func:`create_temp` file: True when its writer is gone (the file is then
    removed, under its lock), False while the writer lives; None when this cannot be told
    (another naming, or no locks on this filesystem)."""
    match = _LOCKED_TEMP.fullmatch(name)
    if match is None:
        return None
    if int(match[1]) == os.getpid():
        # This process is alive, and so is its writer. (Its lock would say so too, except on
        # NFS, where flock is emulated with POSIX locks, which never conflict in a process.)
        return False
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # its writer finished, or another sweeper got there first
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return None
        if Path(path).lstat().st_ino != os.fstat(fd).st_ino:
            return False  # replaced meanwhile: not the file that was locked
        Path(path).unlink()
        return True
    finally:
        os.close(fd)


class NotARegularFile(OSError):
    """A path that should hold a blob is a FIFO, device, directory or (when refused) a link."""


def open_regular(path: Path, *, below: Path | None = None) -> IO[bytes]:
    """Open ``path`` for reading, only if it is a regular file.

    The open never blocks: a FIFO (which would wait for a writer forever), a device node or a
    directory raises :class:`NotARegularFile`, an :class:`OSError` whose ``strerror`` says
    what was found. With ``below`` (an ancestor of ``path``), no component of ``path`` under
    ``below`` may be a symbolic link, the file included: each is opened relative to its
    parent's descriptor with ``O_NOFOLLOW``, so a link planted in a served directory cannot
    make it serve another file of the host.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if below is None:
        fd = os.open(path, flags)
    else:
        fd = _open_below(Path(below), Path(path), flags | os.O_NOFOLLOW)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "a device"
            raise NotARegularFile(errno.EINVAL, f"{kind}, not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_below(below: Path, path: Path, flags: int) -> int:
    """Open ``path`` component by component from ``below``, following no symbolic link."""
    *directories, name = path.relative_to(below).parts
    fd = os.open(below, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in directories:
            inner = os.open(part, _DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(name, flags, dir_fd=fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # what O_NOFOLLOW answers for a link
            raise NotARegularFile(errno.ELOOP, "a symbolic link, not followed", str(path)) from None
        raise
    finally:
        os.close(fd)


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
    # The file stays open (and so locked, see create_temp) until it is renamed or removed.
    with os.fdopen(fd, "wb") as f:
        try:
            # mkstemp makes 0600 files; blobs are content, not secrets, and may be linked into
            # an OCI layout that other users read.
            os.fchmod(fd, 0o644)
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
    """Remove the temp files in ``directory`` whose writers are gone; return the count.

    A :func:`create_temp` file goes as soon as its writer is gone (its lock is free), however
    recent, and never while the writer lives. Any other file (older versions, other tools)
    goes once older than ``older_than`` seconds, since a live writer finishes or removes its
    own long before. Safe while other processes write. A missing directory counts as empty.
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
            if not entry.is_file(follow_symlinks=False):
                continue
            gone = _writer_gone(entry.path, entry.name)
            if gone is None and entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                Path(entry.path).unlink()
                gone = True
            removed += bool(gone)
        except FileNotFoundError:
            continue  # its writer finished, or another cleaner got there first
        except OSError as exc:
            raise fail("remove", Path(entry.path), exc) from None
    return removed
