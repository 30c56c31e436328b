"""Uploading a layer blob while it is still being built.

A cold push used to build each layer (tar, hash, compress into the cache) and only then
upload it, so its time was build + upload. The registry protocol allows better: an upload
session is opened before the digest is known, fed with ``PATCH`` chunks (``Content-Range``)
as the compressor produces them, and closed with ``PUT ?digest=`` once the digest is known.
The push then costs about max(build, upload).

:class:`LayerUpload` follows one layer's cache temp file as it grows (the bytes are read back
from the file with ``pread``, never buffered in memory): the layer builder reports how many
bytes it has flushed, a thread sends each whole chunk as it becomes available (one ``PATCH``
per chunk, so an interrupt stops it between two), and the end of the build sends the rest
and the digest. It starts only once a layer has produced a whole chunk, so
small layers never open a session.

It is an optimisation, never the only way a blob gets there: any failure (a refused chunk,
a dropped connection, a digest the registry disputes) cancels the session and is logged,
and the ordinary push that follows (HEAD, then a resumable upload from the cache, with
retries) uploads the blob. Nothing is retried here, so a fault never costs twice.
:class:`EarlyUploads` keeps the uploads of one build toward one repository and waits for
them all before the push writes the manifest, so the tag never points at a missing blob; a
blob the registry accepted here is not even checked again by the push.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Protocol

from imagesmith import cancel
from imagesmith.errors import ImagesmithError
from imagesmith.oci.digests import Digest
from imagesmith.progress import Meter, ProgressCallback, null_progress
from imagesmith.registry.client import RegistryClient, RequestBody, UploadSession

__all__ = ["DEFAULT_CHUNK", "BlobFollower", "EarlyUploads", "LayerUpload"]

log = logging.getLogger("imagesmith.registry.overlap")

# Each PATCH carries this much (more when the registry's minimum says so; the last one up to
# twice as much): large enough that request overhead is lost in the transfer, small enough
# that little is left to send when the build ends and that an interrupt waits for one chunk.
DEFAULT_CHUNK = 8 * 1024 * 1024


class BlobFollower(Protocol):
    """Told about a blob while it is written to a temp file (see ``layers.build_layer``)."""

    def grow(self, path: Path, size: int) -> None:
        """The first ``size`` bytes of the blob are in ``path`` and readable."""

    def finish(self, digest: Digest, size: int) -> None:
        """The blob is complete: ``size`` bytes hashing to ``digest``."""

    def abort(self) -> None:
        """The blob will never be complete (the build failed)."""


class _FileRange(RequestBody):
    """Bytes ``start`` to ``end`` of an open file as a request body (``pread``; the
    descriptor's offset is never moved, and it is not closed here)."""

    def __init__(self, fd: int, start: int, end: int, meter: Meter | None = None) -> None:
        self._fd = fd
        self._pos = start
        self._end = end
        self._length = end - start
        self._meter = meter

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        cancel.check(cancel.BODY_GRACE)
        if self._meter is not None:
            self._meter.reach(self._pos)
        left = self._end - self._pos
        if left <= 0:
            return b""
        data = os.pread(self._fd, left if n is None or n < 0 else min(n, left), self._pos)
        if not data:
            raise OSError(f"layer file ended at byte {self._pos}, expected {self._end}")
        self._pos += len(data)
        return data

    def close(self) -> None:
        """The descriptor belongs to the :class:`LayerUpload`."""


class _Aborted(Exception):
    pass


class LayerUpload:
    """One blob uploaded to ``repository`` while it is written (a :class:`BlobFollower`).

    ``progress`` gets ``upload-progress`` events naming ``label`` (the layer being built);
    their total is 0 until the build ends and the blob's size is known.
    """

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        *,
        chunk: int = DEFAULT_CHUNK,
        progress: ProgressCallback = null_progress,
        label: str = "",
    ) -> None:
        self._client = client
        self._meter = Meter(progress, "upload-progress", label or "a layer")
        self._repository = repository
        self._chunk = max(1, chunk)
        self._cond = threading.Condition()
        self._available = 0
        self._final: tuple[Digest, int] | None = None
        self._aborted = False
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self.uploaded: tuple[Digest, int] | None = None  # (digest, size) once the registry has it
        self.failure: str | None = None  # why the upload was given up, if it was

    @property
    def started(self) -> bool:
        return self._thread is not None

    def grow(self, path: Path, size: int) -> None:
        with self._cond:
            if self._aborted or self.failure is not None:
                return
            self._available = size
            if self._thread is None:
                if size < self._chunk:
                    return
                try:
                    # Opened while the temp file exists; the descriptor outlives its rename.
                    self._fd = os.open(path, os.O_RDONLY)
                except OSError as exc:
                    self.failure = f"cannot read {path}: {exc.strerror}"
                    return
                self._thread = threading.Thread(target=self._run, name="imagesmith-upload", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def finish(self, digest: Digest, size: int) -> None:
        with self._cond:
            self._meter.total = size
            self._final = (digest, size)
            self._available = size
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        self.wait()

    def wait(self) -> tuple[Digest, int] | None:
        """Wait for the upload to end; the (digest, size) the registry accepted, or None
        (never started, aborted or failed: the ordinary push then uploads the blob)."""
        thread = self._thread
        if thread is not None:
            thread.join()
        return self.uploaded

    def _next(self, offset: int, chunk: int) -> tuple[int, tuple[Digest, int] | None]:
        """Block until a whole chunk past ``offset`` or the end is known: (end, final)."""
        with self._cond:
            while not self._aborted and self._final is None and self._available - offset < chunk:
                self._cond.wait()
            if self._aborted:
                raise _Aborted
            if self._final is not None and self._final[1] - offset <= chunk:
                return self._final[1], self._final
            # One chunk per PATCH: an interrupt is honoured between two of them, where the
            # session can still be cancelled (see imagesmith.cancel).
            return offset + chunk, None

    def _run(self) -> None:
        fd = self._fd
        assert fd is not None
        session: UploadSession | None = None
        try:
            session = self._client.start_upload(self._repository)
            chunk = max(self._chunk, session.min_chunk or 0)
            while True:
                end, final = self._next(session.offset, chunk)
                if end > session.offset:
                    part = functools.partial(_FileRange, fd, session.offset, end, self._meter)
                    session = self._client.append_upload(session, end, part)
                    self._meter.reach(end)
                if final is not None:
                    self._client.finish_upload(session, final[0])
                    self.uploaded = final
                    session = None
                    self._meter.done()
                    return
        except (_Aborted, KeyboardInterrupt):
            pass  # aborted, or interrupted (cancel.interrupt): the session is cancelled below
        except (ImagesmithError, OSError) as exc:
            self.failure = str(exc)
            self._meter.done()  # this upload is over: the push sends the blob, with its own progress
            log.info(
                "uploading a layer while building it failed (%s); it will be uploaded after the build", exc
            )
        finally:
            if session is not None:
                self._client.cancel_upload(session)
            os.close(fd)


class EarlyUploads:
    """The overlapped uploads of one build toward ``repository`` of ``client``'s registry.

    :meth:`follower` gives each layer build its :class:`LayerUpload`; leaving the ``with``
    block waits for all of them (or, on an error, aborts the unfinished ones), so no upload
    thread outlives the build.
    """

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        *,
        chunk: int = DEFAULT_CHUNK,
        progress: ProgressCallback = null_progress,
    ) -> None:
        self._client = client
        self._repository = repository
        self._chunk = chunk
        self._progress = progress
        self._lock = threading.Lock()
        self._uploads: list[LayerUpload] = []

    def present(self, digest: Digest) -> bool:
        """Whether the repository already has the blob (one ``HEAD``); an error counts as
        absent, since the ordinary push checks again anyway."""
        try:
            return self._client.blob_exists(self._repository, digest)
        except ImagesmithError as exc:
            log.info("could not check blob %s before building (%s)", digest, exc)
            return False

    def follower(self, label: str = "") -> LayerUpload:
        """A :class:`LayerUpload` for one layer build; ``label`` names it in progress events."""
        upload = LayerUpload(
            self._client, self._repository, chunk=self._chunk, progress=self._progress, label=label
        )
        with self._lock:
            self._uploads.append(upload)
        return upload

    def wait(self) -> list[tuple[Digest, int]]:
        """Wait for every upload; the (digest, size) of each blob the registry accepted."""
        with self._lock:
            uploads = list(self._uploads)
        return [d for d in (u.wait() for u in uploads) if d is not None]

    def __enter__(self) -> EarlyUploads:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is not None:
            with self._lock:
                uploads = list(self._uploads)
            for upload in uploads:
                if upload.uploaded is None:
                    upload.abort()
        self.wait()
