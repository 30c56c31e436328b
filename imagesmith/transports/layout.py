"""transports.layout"""

from __future__ import annotations

import io
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from imagesmith import cancel
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
    MAX_MANIFEST_SIZE,
    Descriptor,
    Platform,
)
from imagesmith.oci.references import Reference
from imagesmith.progress import ProgressCallback, ProgressEvent
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.store.layout import OCILayout
from imagesmith.transports.base import LocationKind, SinkOptions, _blob_event, _evicted, fetch_blob

__all__ = [
    "LayoutLocation",
    "LayoutOrigin",
    "LayoutSink",
    "LayoutSource",
]


@dataclass(frozen=True)
class LayoutLocation(LocationKind):
    """An image in an OCI image layout directory; ``tag`` is its ``ref.name`` (None: untagged,
    or for reading: the layout's only image)."""

    path: Path
    tag: str | None = None

    holds_index: ClassVar[bool] = True
    takes_referrers: ClassVar[bool] = True

    def open_source(self, pool: RegistryPool) -> AbstractContextManager[ImageSource]:
        return nullcontext(LayoutSource(self.path, self.tag))

    def open_sink(self, options: SinkOptions) -> LayoutSink:
        return LayoutSink(
            self.path, self.tag, pool=options.pool, cache=options.cache, keep_in_cache=options.keep_in_cache
        )

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class LayoutOrigin:
    """A blob stored in the OCI image layout at ``path``."""

    path: Path

    @property
    def local(self) -> bool:
        return True

    def open_blob(self, descriptor: Descriptor, pool: RegistryPool) -> AbstractContextManager[Readable]:
        """Read the blob from the layout, verified while read; ``pool`` is not used."""
        return OCILayout(self.path).open_blob(descriptor)

    def blob_file(self, descriptor: Descriptor) -> Path | None:
        layout = OCILayout(self.path)
        if layout.has_blob(descriptor.digest, descriptor.size):
            return layout.blob_path(descriptor.digest)
        return None

    def __str__(self) -> str:
        return f"oci:{self.path}"


class LayoutSource:
    """An image in an OCI layout directory, named by its ``ref.name`` tag (None: the only one)."""

    def __init__(self, path: Path, tag: str | None = None) -> None:
        self._layout = OCILayout(path)  # LayoutError when path is not a layout
        self._path = self._layout.root
        self._tag = tag

    @property
    def name(self) -> str:
        return f"oci:{self._path}" + (f":{self._tag}" if self._tag else "")

    @property
    def reference(self) -> Reference | None:
        return None

    def top(self) -> RawManifest:
        descriptor = self._layout.resolve(self._tag)
        return self.manifest(descriptor)

    def manifest(self, descriptor: Descriptor) -> RawManifest:
        data = self._layout.read_blob(descriptor, MAX_MANIFEST_SIZE)
        return RawManifest(data, descriptor.media_type, descriptor.digest)

    def read_blob(self, descriptor: Descriptor, max_size: int) -> bytes:
        return self._layout.read_blob(descriptor, max_size)

    def origin(self, descriptor: Descriptor) -> BlobOrigin:
        return LayoutOrigin(self._path)


class LayoutSink:
    """Write into the OCI layout at ``path`` (created if needed) under ``tag``.

    ``keep_in_cache``: remote blobs pass through the blob cache (so another output of the
    same build reads them from there); otherwise they stream straight into the layout.
    """

    def __init__(
        self,
        path: Path,
        tag: str | None,
        *,
        pool: RegistryPool,
        cache: BlobCache,
        keep_in_cache: bool = True,
    ) -> None:
        self.layout = OCILayout(path, create=True)
        self.tag = tag
        self._pool = pool
        self._cache = cache
        self._keep_in_cache = keep_in_cache

    @property
    def name(self) -> str:
        return f"oci:{self.layout.root}" + (f":{self.tag}" if self.tag else "")

    def put_blob(self, descriptor: Descriptor, origin: BlobOrigin | None, progress: ProgressCallback) -> None:
        digest, size = descriptor.digest, descriptor.size
        if descriptor.urls and not self._cache.has(digest, size):
            return  # a foreign layer stays where its URLs say
        if self.layout.has_blob(digest, size):
            progress(_blob_event("blob-exists", descriptor, self.name))
            return
        remote = origin is not None and not origin.local
        if remote and self._keep_in_cache and not self._cache.has(digest, size):
            fetch_blob(self._pool, self._cache, descriptor, origin, progress)
            progress(_blob_event("blob-fetched", descriptor))
        if self._cache.has(digest, size):
            try:
                with self._cache.open(digest, size) as reader:
                    self.layout.put_blob_from(reader, digest, size)
            except IntegrityError:
                # The verifying reader evicted a copy damaged since it was written.
                if origin is None:
                    raise
                _evicted(self._cache, descriptor, origin)
            else:
                progress(_blob_event("blob-uploaded", descriptor, self.name))
                return
        if origin is None:
            fetch_blob(self._pool, self._cache, descriptor, None)  # raises the CacheError
        else:
            with origin.open_blob(descriptor, self._pool) as reader:
                self.layout.put_blob_from(reader, digest, size)
        progress(_blob_event("blob-uploaded", descriptor, self.name))

    def put_blob_bytes(self, descriptor: Descriptor, data: bytes, progress: ProgressCallback) -> None:
        if not self.layout.has_blob(descriptor.digest, descriptor.size):
            self.layout.put_blob_from(io.BytesIO(data), descriptor.digest, descriptor.size)
            progress(_blob_event("blob-uploaded", descriptor, "config"))

    def put_manifest(
        self, manifest: RawManifest, *, top: bool, platform: Platform | None, progress: ProgressCallback
    ) -> None:
        cancel.check()  # never name an image after an interrupt
        if not top:
            # An index's children are plain blobs of the layout; only the top is listed.
            if not self.layout.has_blob(manifest.digest, len(manifest.data)):
                self.layout.put_blob_from(io.BytesIO(manifest.data), manifest.digest, len(manifest.data))
            return
        self.layout.add_manifest(manifest.data, manifest.media_type, tag=self.tag, platform=platform)
        progress(ProgressEvent("manifest-pushed", self.name, len(manifest.data), str(manifest.digest)))

    def commit(self) -> None:
        """Nothing to do: ``index.json`` was updated last, atomically, by the top manifest."""

    def abort(self) -> None:
        """Nothing to undo: unlisted blobs are harmless and ``index.json`` did not change."""
