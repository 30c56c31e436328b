"""transports.registry"""

from __future__ import annotations

import contextlib
import io
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, cast

from imagesmith import cancel
from imagesmith.closing import Closing
from imagesmith.errors import (
    IntegrityError,
    RegistryError,
)
from imagesmith.oci.digests import CHUNK, VerifyingReader
from imagesmith.oci.image import (
    BlobOrigin,
    ImageSource,
    RawManifest,
    Readable,
)
from imagesmith.oci.model import (
    Descriptor,
    Manifest,
    Platform,
    parse_manifest_document,
)
from imagesmith.oci.references import Reference
from imagesmith.progress import Meter, ProgressCallback, ProgressEvent
from imagesmith.registry.client import RegistryClient, RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.transports.base import (
    LocationKind,
    SinkOptions,
    _blob_event,
    _evicted,
    _MeteredFile,
    fetch_blob,
)

__all__ = [
    "RegistryLocation",
    "RegistrySink",
    "RegistrySource",
    "RemoteOrigin",
]

# Where a write is reported in the log (the name users filter on, as before the move).
log = logging.getLogger("imagesmith.transfer")


# Pauses before trying a manifest PUT again that the registry refused for a blob it has.
_BLOB_RACE_PAUSES = (0.2, 0.5, 1.0)


# Transports skopeo knows that imagesmith does not: named so the error can say so.
_UNSUPPORTED = ("oci-archive", "dir", "containers-storage", "docker-daemon-archive", "sif", "tarball")
_TRANSPORT_PREFIXES = ("oci:", "docker-archive:", "docker-daemon:", *(f"{t}:" for t in _UNSUPPORTED))


@dataclass(frozen=True)
class RegistryLocation(LocationKind):
    """An image in a registry, named by a reference (tag or digest).

    ``str()`` is the reference itself, what ``docker pull`` and ``podman pull`` accept; only a
    name that would read as another transport (a registry host called ``oci``...) keeps the
    ``docker://`` prefix, so the string always parses back to the same location.
    """

    reference: Reference

    holds_index: ClassVar[bool] = True
    takes_referrers: ClassVar[bool] = True

    def open_source(self, pool: RegistryPool) -> AbstractContextManager[ImageSource]:
        return nullcontext(RegistrySource(pool, self.reference))

    def open_sink(self, options: SinkOptions) -> RegistrySink:
        return RegistrySink(self.reference, pool=options.pool, cache=options.cache)

    def __str__(self) -> str:
        text = str(self.reference)
        return f"docker://{text}" if text.startswith(_TRANSPORT_PREFIXES) else text


@dataclass(frozen=True)
class RemoteOrigin:
    """A blob that lives in ``registry/repository`` and is fetched only when read."""

    registry: str
    repository: str

    @property
    def local(self) -> bool:
        return False

    def open_blob(self, descriptor: Descriptor, pool: RegistryPool) -> AbstractContextManager[Readable]:
        """Stream the blob from the registry (its registries.conf mirrors first), verified while
        read (resumed if dropped)."""
        return pool.client(self.registry).open_blob(self.repository, descriptor, mirrors=True)

    def blob_file(self, descriptor: Descriptor) -> Path | None:
        return None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"


class RegistrySource:
    """An image in a registry; documents are fetched on demand, blobs stay remote."""

    def __init__(self, pool: RegistryPool, reference: Reference) -> None:
        self._pool = pool
        self._reference = reference

    @property
    def name(self) -> str:
        return self._reference.familiar()

    @property
    def reference(self) -> Reference | None:
        return self._reference

    def top(self) -> RawManifest:
        ref = self._reference
        response = self._pool.client(ref.registry).get_manifest(ref.repository, ref.identifier, mirrors=True)
        return RawManifest(response.data, response.media_type, response.digest)

    def manifest(self, descriptor: Descriptor) -> RawManifest:
        ref = self._reference
        client = self._pool.client(ref.registry)
        response = client.get_manifest(ref.repository, str(descriptor.digest), mirrors=True)
        return RawManifest(response.data, response.media_type or descriptor.media_type, response.digest)

    def read_blob(self, descriptor: Descriptor, max_size: int) -> bytes:
        ref = self._reference
        client = self._pool.client(ref.registry)
        return client.get_blob_bytes(ref.repository, descriptor, max_size, mirrors=True)

    def origin(self, descriptor: Descriptor) -> BlobOrigin:
        return RemoteOrigin(self._reference.registry, self._reference.repository)


class RegistrySink:
    """Write to ``reference`` (a tag, or a digest) in a registry: HEAD, mount, else upload.

    The one registry write path: images and indexes (``write_image``, ``write_index``), copies,
    merged indexes (``merge``), artifacts (SBOMs, signatures, the repository indexes) and single
    blobs all go through it, so every write HEADs first, mounts when it can, and PUTs the
    manifest last. Without a ``cache``, a blob of another repository of the same registry that
    the registry refuses to mount is streamed over (read once, verified), never stored locally.
    """

    def __init__(self, reference: Reference, *, pool: RegistryPool, cache: BlobCache | None) -> None:
        self.reference = reference
        self._pool = pool
        self._cache = cache
        self._client = pool.client(reference.registry)

    @property
    def name(self) -> str:
        return str(self.reference)

    def put_blob(self, descriptor: Descriptor, origin: BlobOrigin | None, progress: ProgressCallback) -> None:
        client, repository = self._client, self.reference.repository
        if descriptor.urls:
            # A foreign layer is served from its own URLs; registries refuse or ignore it.
            return
        if client.blob_exists(repository, descriptor.digest):
            progress(_blob_event("blob-exists", descriptor))
            return
        if (
            isinstance(origin, RemoteOrigin)
            and origin.registry == self.reference.registry
            and origin.repository != repository
            and client.mount_blob(repository, descriptor.digest, origin.repository)
        ):
            progress(_blob_event("blob-mounted", descriptor, origin.repository))
            return
        same_registry = isinstance(origin, RemoteOrigin) and origin.registry == self.reference.registry
        if self._cache is None and same_registry:
            assert isinstance(origin, RemoteOrigin)
            self._stream_over(descriptor, origin.repository, progress)
            return
        if self._cache is None:
            raise ValueError("a RegistrySink without a cache takes blobs of its own registry only")
        path: Path | None = None
        if self._cache.has(descriptor.digest, descriptor.size):
            path = self._cache.path(descriptor.digest)
        elif origin is not None:
            path = origin.blob_file(descriptor)
        if path is None:
            # An upload may restart from the first byte: it needs a local file. A blob of
            # another registry or an archive passes through the cache once, verified; a built
            # layer that vanished from the cache gets a clear CacheError.
            path = fetch_blob(self._pool, self._cache, descriptor, origin, progress)
            progress(_blob_event("blob-fetched", descriptor))
        try:
            self._upload(descriptor, path, progress)
        except IntegrityError as exc:
            # The upload hashes what it sends: a cache entry damaged on disk since it was
            # written fails here. Evicted, it is fetched or built again from its origin.
            if not self._damaged_in_cache(descriptor, path, exc, origin):
                raise
            path = fetch_blob(self._pool, self._cache, descriptor, origin, progress)
            self._upload(descriptor, path, progress)
        progress(_blob_event("blob-uploaded", descriptor))

    def _stream_over(self, descriptor: Descriptor, source: str, progress: ProgressCallback) -> None:
        """Upload a blob of repository ``source`` of this registry, read from it as it goes."""
        client, repository = self._client, self.reference.repository
        log.info(
            "%s refused to mount %s from %s into %s: streaming it over instead",
            client.registry,
            descriptor.digest,
            source,
            repository,
        )
        stream = _SharedBlobStream(client, source, descriptor)
        try:
            client.upload_blob(repository, descriptor.digest, descriptor.size, stream.open)
            stream.verify_end()
        finally:
            stream.close()
        progress(_blob_event("blob-uploaded", descriptor, source))

    def _upload(self, descriptor: Descriptor, path: Path, progress: ProgressCallback) -> None:
        meter = Meter(progress, "upload-progress", str(descriptor.digest), descriptor.size)
        self._client.upload_blob(
            self.reference.repository,
            descriptor.digest,
            descriptor.size,
            lambda: cast("BinaryIO", _MeteredFile(path.open("rb"), meter)),
        )
        meter.done()

    def _damaged_in_cache(
        self, descriptor: Descriptor, path: Path, error: IntegrityError, origin: BlobOrigin | None
    ) -> bool:
        """Whether ``error`` came from a damaged cache copy (now evicted) that ``origin`` can
        replace; raise when there is no origin to replace it from."""
        assert self._cache is not None  # put_blob uses the cache only when there is one
        if path != self._cache.path(descriptor.digest) or self._cache.verify(descriptor.digest):
            return False  # the local bytes are right: the registry disagreed
        if origin is None:
            raise IntegrityError(f"{error}; the damaged copy was removed from the cache: run again") from None
        _evicted(self._cache, descriptor, origin)
        return True

    def put_blob_bytes(
        self, descriptor: Descriptor, data: bytes, progress: ProgressCallback, *, what: str = "config"
    ) -> None:
        """A small blob held in memory (a config, an artifact's payload); ``what`` names it in
        the progress events (a config already present is not reported, as an image's are not)."""
        repository = self.reference.repository
        if self._client.blob_exists(repository, descriptor.digest):
            if what != "config":
                progress(_blob_event("blob-exists", descriptor))
            return
        self._client.upload_blob(repository, descriptor.digest, descriptor.size, lambda: io.BytesIO(data))
        progress(_blob_event("blob-uploaded", descriptor, what))

    def put_manifest(
        self, manifest: RawManifest, *, top: bool, platform: Platform | None, progress: ProgressCallback
    ) -> None:
        identifier = self.reference.identifier if top else str(manifest.digest)
        for pause in (*_BLOB_RACE_PAUSES, None):
            try:
                self._client.put_manifest(
                    self.reference.repository, identifier, manifest.data, manifest.media_type
                )
                break
            except RegistryError as exc:
                if pause is None or not self._blobs_all_present(exc, manifest):
                    raise
                # A registry storing a blob that another client is writing at the same
                # moment (the distribution registry rewrites its link file in place) can
                # miss it for an instant: the blobs were checked, so the PUT is tried again.
                log.info("%s; every blob it names is there: trying again in %.1f s", exc, pause)
                cancel.wait(pause)
        if top:
            progress(ProgressEvent("manifest-pushed", self.name, len(manifest.data), str(manifest.digest)))

    def _blobs_all_present(self, error: RegistryError, manifest: RawManifest) -> bool:
        """Whether ``error`` is a refusal for an unknown blob although every blob the
        manifest names is in the repository (HEAD): a race inside the registry."""
        if not {"MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN"} & set(error.codes):
            return False
        document = parse_manifest_document(manifest.data, manifest.media_type)
        if not isinstance(document, Manifest):
            return False
        named = [d for d in (document.config, *document.layers) if not d.urls]
        return all(self._client.blob_exists(self.reference.repository, d.digest) for d in named)

    def commit(self) -> None:
        """Nothing to do: the registry stored each document as it came."""

    def abort(self) -> None:
        """Nothing to undo: blobs without a manifest are harmless, and no tag moved."""


class _SharedBlobStream:
    """One blob of the source repository, opened as often as an upload needs it.

    :meth:`RegistryClient.upload_blob` opens its body again for every chunk (seeking to the
    chunk's start) and for every restart. One verified GET is kept open while each open
    continues where the last one stopped, so a chunked upload reads the blob once; an open
    that starts elsewhere reopens the GET and skips forward. Nothing is held in memory
    beyond one read, and the upload hashes what it sends, so bad bytes never complete it.
    """

    def __init__(self, client: RegistryClient, repository: str, descriptor: Descriptor) -> None:
        self._client = client
        self._repository = repository
        self._descriptor = descriptor
        self._stack = contextlib.ExitStack()
        self._reader: VerifyingReader | None = None
        self._position = 0

    def open(self) -> BinaryIO:
        """A new reader positioned at the blob's start (``seek`` moves it)."""
        return cast(BinaryIO, _StreamHandle(self))

    def read_at(self, position: int, n: int) -> bytes:
        if self._reader is None or position < self._position:
            self.close()
            opened = self._client.open_blob(self._repository, self._descriptor)
            self._reader = self._stack.enter_context(opened)
            self._position = 0
        while self._position < position:
            skipped = self._reader.read(min(CHUNK, position - self._position))
            if not skipped:
                return b""
            self._position += len(skipped)
        data = self._reader.read(n if n > 0 else CHUNK)
        self._position += len(data)
        return data

    def verify_end(self) -> None:
        """Read past the last byte, so the reader checks the digest of everything it served."""
        if self._reader is not None and self._position == self._descriptor.size:
            self._reader.read(1)

    def close(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._reader = None
        self._position = 0


class _StreamHandle(Closing):
    """A file-like view of a :class:`_SharedBlobStream` with its own position."""

    def __init__(self, stream: _SharedBlobStream) -> None:
        self._stream = stream
        self._position = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read_at(self._position, n)
        self._position += len(data)
        return data

    def seek(self, position: int, whence: int = 0) -> int:
        if whence != 0 or position < 0:
            raise OSError("only absolute seeks are supported")
        self._position = position
        return position

    def close(self) -> None:
        """The shared GET stays open for the next chunk."""
