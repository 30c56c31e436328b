"""transports.registry"""

from __future__ import annotations

import io
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, cast

from imagesmith.errors import (
    IntegrityError,
)
from imagesmith.oci.image import (
    BlobOrigin,
    ImageSource,
    RawManifest,
    Readable,
)
from imagesmith.oci.model import (
    Descriptor,
    Platform,
)
from imagesmith.oci.references import Reference
from imagesmith.progress import Meter, ProgressCallback, ProgressEvent
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.transports.base import _blob_event, _evicted, _MeteredFile, fetch_blob

__all__ = [
    "RegistryLocation",
    "RegistrySink",
    "RegistrySource",
    "RemoteOrigin",
]


# Transports skopeo knows that imagesmith does not: named so the error can say so.
_UNSUPPORTED = ("oci-archive", "dir", "containers-storage", "docker-daemon-archive", "sif", "tarball")


_TRANSPORT_PREFIXES = ("oci:", "docker-archive:", "docker-daemon:", *(f"{t}:" for t in _UNSUPPORTED))


@dataclass(frozen=True)
class RegistryLocation:
    """An image in a registry, named by a reference (tag or digest).

    ``str()`` is the reference itself, what ``docker pull`` and ``podman pull`` accept; only a
    name that would read as another transport (a registry host called ``oci``...) keeps the
    ``docker://`` prefix, so the string always parses back to the same location.
    """

    reference: Reference

    # What the location holds and takes, so callers ask it instead of testing its kind.
    holds_index: ClassVar[bool] = True  # a multi-platform index
    takes_referrers: ClassVar[bool] = True  # artifacts attached to an image (SBOMs)

    @property
    def name(self) -> Reference | None:
        """The image's name the location carries."""
        return self.reference

    def open_source(self, pool: RegistryPool) -> AbstractContextManager[ImageSource]:
        return nullcontext(RegistrySource(pool, self.reference))

    def open_sink(
        self,
        *,
        pool: RegistryPool,
        cache: BlobCache,
        docker_host: str | None = None,
        keep_in_cache: bool = True,
    ) -> RegistrySink:
        return RegistrySink(self.reference, pool=pool, cache=cache)

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
    """Write to ``reference`` (a tag, or a digest) in a registry: HEAD, mount, else upload."""

    def __init__(self, reference: Reference, *, pool: RegistryPool, cache: BlobCache) -> None:
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

    def _upload(self, descriptor: Descriptor, path: Path, progress: ProgressCallback) -> None:
        meter = Meter(progress, "upload-progress", str(descriptor.digest), descriptor.size)
        self._client.upload_blob(self.reference.repository, descriptor.digest, descriptor.size,
                                 lambda: cast("BinaryIO", _MeteredFile(path.open("rb"), meter)))  # fmt: skip
        meter.done()

    def _damaged_in_cache(
        self, descriptor: Descriptor, path: Path, error: IntegrityError, origin: BlobOrigin | None
    ) -> bool:
        """Whether ``error`` came from a damaged cache copy (now evicted) that ``origin`` can
        replace; raise when there is no origin to replace it from."""
        if path != self._cache.path(descriptor.digest) or self._cache.verify(descriptor.digest):
            return False  # the local bytes are right: the registry disagreed
        if origin is None:
            raise IntegrityError(f"{error}; the damaged copy was removed from the cache: run again") from None
        _evicted(self._cache, descriptor, origin)
        return True

    def put_blob_bytes(self, descriptor: Descriptor, data: bytes, progress: ProgressCallback) -> None:
        repository = self.reference.repository
        if self._client.blob_exists(repository, descriptor.digest):
            return
        self._client.upload_blob(repository, descriptor.digest, descriptor.size, lambda: io.BytesIO(data))
        progress(_blob_event("blob-uploaded", descriptor, "config"))

    def put_manifest(
        self, manifest: RawManifest, *, top: bool, platform: Platform | None, progress: ProgressCallback
    ) -> None:
        identifier = self.reference.identifier if top else str(manifest.digest)
        self._client.put_manifest(self.reference.repository, identifier, manifest.data, manifest.media_type)
        if top:
            progress(ProgressEvent("manifest-pushed", self.name, len(manifest.data), str(manifest.digest)))

    def commit(self) -> None:
        """Nothing to do: the registry stored each document as it came."""

    def abort(self) -> None:
        """Nothing to undo: blobs without a manifest are harmless, and no tag moved."""
