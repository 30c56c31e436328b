"""Moving images between locations: sinks, writing an image value, and copying raw images.

A sink is where an image is written: a registry repository, an OCI layout, a docker archive,
or a Docker-compatible daemon (through an archive). Every sink follows the same order, which
keeps each of them consistent after an interruption: blobs first (in parallel), then the
config, then manifests (an index's children before the index), the named top document last.

Where bytes come from is a blob's origin (:mod:`imagesmith.images`). A sink asks for them only
when it lacks the blob, and takes the cheapest road: a registry HEADs the blob, then mounts it
from another repository of the same registry, and only then uploads. Uploads (which may be
retried from the start) and archive writes (which must not wait on the network while holding
the archive) read from a local file: the blob cache, filled once and verified, or the origin's
own file (a layout). A layout reads straight from the origin, or from the cache when it was
asked to keep remote blobs there (builds do, so two outputs of one base fetch it once).

:func:`copy_image` copies raw manifest bytes, never re-serialised, so a copy keeps every digest;
:func:`write_image` writes an :class:`~imagesmith.images.Image` value built by the pipeline.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, Protocol, TypeVar, cast

from . import cancel
from . import mediatypes as mt
from .archive import ArchiveSource, ArchiveWriter
from .cache import BlobCache
from .daemon import load_into_daemon
from .digests import CHUNK, Digest
from .errors import CacheError, IntegrityError, LayoutError, ManifestError, UsageError
from .images import (
    MAX_INDEX_DEPTH,
    BlobOrigin,
    Image,
    ImageSource,
    Layer,
    LayoutSource,
    RawManifest,
    RegistrySource,
    RemoteOrigin,
    choose_platform,
)
from .layout import OCILayout
from .locations import (
    ArchiveLocation,
    LayoutLocation,
    Location,
    RegistryLocation,
    parse_location,
)
from .model import Descriptor, Index, Manifest, Platform, platforms_of
from .progress import EventKind, Meter, ProgressCallback, ProgressEvent, null_progress
from .references import Reference
from .registry.client import RegistryPool

__all__ = [
    "ArchiveSink",
    "CopyResult",
    "DaemonSink",
    "ImageSink",
    "LayoutSink",
    "RegistrySink",
    "as_location",
    "copy_image",
    "fetch_blob",
    "open_sink",
    "open_source",
    "run_parallel",
    "write_image",
    "write_images",
    "write_index",
]

PlatformChoice = Platform | Literal["all"] | None
T = TypeVar("T")

log = logging.getLogger("imagesmith.transfer")


def as_location(value: str | Reference | Location) -> Location:
    """A location from a string (:func:`parse_location`), a registry reference or a location."""
    if isinstance(value, str):
        return parse_location(value)
    if isinstance(value, Reference):
        return RegistryLocation(value)
    return value


def fetch_blob(
    pool: RegistryPool,
    cache: BlobCache,
    descriptor: Descriptor,
    origin: BlobOrigin | None,
    progress: ProgressCallback = null_progress,
) -> Path:
    """Make sure a blob is in the cache (reading it from ``origin``, verified, if needed).

    Returns its path in the cache. A cached copy of a blob that has an origin is rehashed
    first: one that was truncated or bit-flipped on disk is evicted and fetched again (a
    package layer's origin builds it again), so callers that read the file directly (the
    unpacker, archive writers) never see bad bytes. A blob with no origin that is missing
    from the cache raises :class:`CacheError`. ``progress`` gets ``download-progress`` events
    while bytes are read; :func:`imagesmith.cancel.interrupt` stops the read (the partial
    temp file is removed).
    """
    if cache.has(descriptor.digest, descriptor.size) and (origin is None or cache.verify(descriptor.digest)):
        return cache.path(descriptor.digest)
    if origin is None:
        raise CacheError(
            f"layer {descriptor.digest} is missing from the cache at {cache.root}; "
            "it was removed while imagesmith ran: build again"
        )
    meter = Meter(progress, "download-progress", str(descriptor.digest), descriptor.size)
    with (
        origin.open_blob(descriptor, pool) as reader,
        cache.put_stream(descriptor.digest, descriptor.size) as writer,
    ):
        while chunk := reader.read(CHUNK):
            cancel.check()
            writer.write(chunk)
            meter.add(len(chunk))
    meter.done()
    return cache.path(descriptor.digest)


class _MeteredFile:
    """A local file read for an upload: each read checks for an interrupt, and the furthest
    position read is the bytes sent so far (a re-sent or resumed part is not counted twice)."""

    def __init__(self, raw: BinaryIO, meter: Meter) -> None:
        self._raw = raw
        self._meter = meter

    def read(self, n: int = -1, /) -> bytes:
        cancel.check(cancel.BODY_GRACE)
        data = self._raw.read(n)
        self._meter.reach(self._raw.tell())
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _MeteredFile:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _evicted(cache: BlobCache, descriptor: Descriptor, origin: BlobOrigin) -> None:
    log.warning("blob %s was damaged in the cache at %s: evicted; getting it again from %s",
                descriptor.digest, cache.root, origin)  # fmt: skip


class ImageSink(Protocol):
    """Where an image is written. Blobs first, manifests after, :meth:`commit` at the end."""

    @property
    def name(self) -> str:
        """How the destination is shown in messages and progress events."""
        ...

    def put_blob(self, descriptor: Descriptor, origin: BlobOrigin | None, progress: ProgressCallback) -> None:
        """Make the blob present, reading it from the cache or ``origin`` only if needed."""
        ...

    def put_blob_bytes(self, descriptor: Descriptor, data: bytes, progress: ProgressCallback) -> None:
        """Make a small blob (a config) present from memory."""
        ...

    def put_manifest(
        self, manifest: RawManifest, *, top: bool, platform: Platform | None, progress: ProgressCallback
    ) -> None:
        """Store manifest or index bytes as given; ``top`` names it with the sink's tag."""
        ...

    def commit(self) -> None:
        """Finish the write (publish an archive, load it into a daemon)."""
        ...

    def abort(self) -> None:
        """Give up: drop whatever is not yet published."""
        ...


def _blob_event(kind: EventKind, descriptor: Descriptor, detail: str = "") -> ProgressEvent:
    return ProgressEvent(kind, str(descriptor.digest), descriptor.size, detail)


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


class ArchiveSink:
    """Write a docker-loadable archive at ``path`` naming the image ``reference``.

    Blobs are made local first (the cache, or the origin's own file), in parallel; the tar is
    written at :meth:`commit`, by one thread, in the manifest's order (config, layers, the
    manifest), so it never waits on the network and the same image gives the same bytes.
    """

    def __init__(
        self, path: Path, reference: Reference | None, *, pool: RegistryPool, cache: BlobCache
    ) -> None:
        self.path = Path(path)
        self.reference = reference
        self._pool = pool
        self._cache = cache
        self._writer = ArchiveWriter(self.path)
        self._lock = threading.Lock()
        self._pending: dict[Digest, tuple[Descriptor, BlobOrigin | None, bytes | None]] = {}
        self._images: list[RawManifest] = []
        self._progress: ProgressCallback = null_progress

    @property
    def name(self) -> str:
        return f"docker-archive:{self.path}" + (f":{self.reference.familiar()}" if self.reference else "")

    def put_blob(self, descriptor: Descriptor, origin: BlobOrigin | None, progress: ProgressCallback) -> None:
        digest, size = descriptor.digest, descriptor.size
        if not self._cache.has(digest, size) and (origin is None or not origin.local):
            fetch_blob(self._pool, self._cache, descriptor, origin, progress)
            progress(_blob_event("blob-fetched", descriptor))
        with self._lock:
            self._pending.setdefault(digest, (descriptor, origin, None))

    def put_blob_bytes(self, descriptor: Descriptor, data: bytes, progress: ProgressCallback) -> None:
        with self._lock:
            self._pending.setdefault(descriptor.digest, (descriptor, None, data))

    def put_manifest(
        self, manifest: RawManifest, *, top: bool, platform: Platform | None, progress: ProgressCallback
    ) -> None:
        if not top or mt.is_index(manifest.media_type):
            raise LayoutError(f"{self.name}: a docker archive holds single-platform images, not an index")
        with self._lock:
            self._images.append(manifest)
            self._progress = progress  # the blob writes of commit() report here too

    def _write_blob(self, digest: Digest, progress: ProgressCallback) -> None:
        pending = self._pending.get(digest)
        if pending is None or self._writer.has_blob(digest):
            return  # a blob the image does not have here (a foreign layer): commit names it
        descriptor, origin, data = pending
        if data is not None:
            self._writer.add_blob(descriptor, io.BytesIO(data))
            return
        if self._cache.has(descriptor.digest, descriptor.size):
            with self._cache.open(descriptor.digest, descriptor.size) as reader:
                self._writer.add_blob(descriptor, reader)
        elif origin is not None:
            with origin.open_blob(descriptor, self._pool) as reader:
                self._writer.add_blob(descriptor, reader)
        else:
            fetch_blob(self._pool, self._cache, descriptor, None)  # raises the CacheError
        progress(_blob_event("blob-uploaded", descriptor, self.name))

    def commit(self) -> None:
        """Write the blobs, the manifests, index.json and manifest.json; publish the archive."""
        cancel.check()
        progress = self._progress
        for manifest in self._images:
            document = manifest.parse(f"manifest {manifest.digest}")
            assert isinstance(document, Manifest)  # put_manifest refused indexes
            for blob in (document.config, *document.layers):
                self._write_blob(blob.digest, progress)
        for digest in sorted(self._pending):
            self._write_blob(digest, progress)
        for manifest in self._images:
            self._writer.add_image(manifest, self.reference)
        self._writer.commit()

    def abort(self) -> None:
        """Drop the temp file: the destination is left as it was."""
        self._writer.abort()


class DaemonSink:
    """Load the image into the Docker-compatible daemon at ``docker_host`` (default:
    ``DOCKER_HOST``) as ``reference``, through a temp archive in the cache's temp directory."""

    def __init__(
        self,
        reference: Reference,
        *,
        pool: RegistryPool,
        cache: BlobCache,
        docker_host: str | None = None,
    ) -> None:
        self.reference = reference
        self.docker_host = docker_host
        self.loaded: tuple[str, ...] = ()
        try:
            cache.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create {cache.tmp_dir}: {exc.strerror or exc}") from None
        # In the cache's temp directory: the same disk as the blobs it is made of, and swept
        # by BlobCache.clean_temp if this process is killed before it removes it.
        name = f"load-{os.getpid()}-{uuid.uuid4().hex}.tar"
        self._archive = ArchiveSink(cache.tmp_dir / name, reference, pool=pool, cache=cache)

    @property
    def name(self) -> str:
        return f"docker-daemon:{self.reference.familiar()}"

    def put_blob(self, descriptor: Descriptor, origin: BlobOrigin | None, progress: ProgressCallback) -> None:
        self._archive.put_blob(descriptor, origin, progress)

    def put_blob_bytes(self, descriptor: Descriptor, data: bytes, progress: ProgressCallback) -> None:
        self._archive.put_blob_bytes(descriptor, data, progress)

    def put_manifest(
        self, manifest: RawManifest, *, top: bool, platform: Platform | None, progress: ProgressCallback
    ) -> None:
        self._archive.put_manifest(manifest, top=top, platform=platform, progress=progress)

    def commit(self) -> None:
        """Finish the archive, stream it into the daemon, and remove it."""
        cancel.check()
        self._archive.commit()
        try:
            self.loaded = load_into_daemon(self._archive.path, docker_host=self.docker_host)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._archive.path.unlink()

    def abort(self) -> None:
        """Drop the temp archive; nothing reached the daemon."""
        self._archive.abort()


@contextlib.contextmanager
def open_source(location: str | Reference | Location, pool: RegistryPool) -> Iterator[ImageSource]:
    """An :class:`ImageSource` reading ``location`` (a registry, an OCI layout or an archive).

    Reading from a daemon is not supported (:class:`UsageError`).
    """
    location = as_location(location)
    if isinstance(location, RegistryLocation):
        yield RegistrySource(pool, location.reference)
    elif isinstance(location, LayoutLocation):
        yield LayoutSource(location.path, location.tag)
    elif isinstance(location, ArchiveLocation):
        with ArchiveSource(location.path, location.reference) as source:
            yield source
    else:
        raise UsageError(f"cannot read images from {location}: use a registry, oci: or docker-archive:")


@contextlib.contextmanager
def open_sink(
    location: str | Reference | Location,
    *,
    pool: RegistryPool,
    cache: BlobCache,
    docker_host: str | None = None,
    keep_in_cache: bool = True,
) -> Iterator[ImageSink]:
    """An :class:`ImageSink` writing to ``location``; committed when the block ends normally,
    aborted (nothing half-published) when it raises.

    ``docker_host`` is for a ``docker-daemon:`` location (default ``DOCKER_HOST``);
    ``keep_in_cache`` makes a layout keep remote blobs in the cache as it writes them.
    """
    location = as_location(location)
    sink: ImageSink
    if isinstance(location, RegistryLocation):
        sink = RegistrySink(location.reference, pool=pool, cache=cache)
    elif isinstance(location, LayoutLocation):
        sink = LayoutSink(location.path, location.tag, pool=pool, cache=cache, keep_in_cache=keep_in_cache)
    elif isinstance(location, ArchiveLocation):
        sink = ArchiveSink(location.path, location.reference, pool=pool, cache=cache)
    else:
        sink = DaemonSink(location.reference, pool=pool, cache=cache, docker_host=docker_host)
    try:
        yield sink
        sink.commit()
    except BaseException:
        sink.abort()  # also after a commit that failed half-way (a blob that did not verify)
        raise


def run_parallel(call: Callable[[T], None], items: Sequence[T], jobs: int) -> None:
    """``call`` on every item, ``jobs`` at a time; all finish before the first error is raised."""
    if jobs <= 1 or len(items) <= 1:
        for item in items:
            call(item)
        return
    with ThreadPoolExecutor(max_workers=min(jobs, len(items))) as executor:
        futures = [executor.submit(call, item) for item in items]
        # Wait for all, then re-raise the first failure: no thread is left writing.
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def write_image(
    image: Image,
    sink: ImageSink,
    *,
    jobs: int = 4,
    progress: ProgressCallback = null_progress,
    present: Collection[Digest] = (),
) -> Digest:
    """Write ``image`` into ``sink`` and return its manifest digest.

    Layers go first (``jobs`` in parallel, each blob once), then the config, then the
    manifest under the sink's name. The caller commits the sink (see :func:`open_sink`).
    ``present`` are blobs the caller knows the sink holds (it uploaded them in this run):
    they are not even checked.
    """
    _put_layers(sink, _distinct_layers([image], present), jobs, progress)
    return _put_documents(sink, image, top=True, progress=progress)


def _distinct_layers(images: Sequence[Image], present: Collection[Digest] = ()) -> list[Layer]:
    """The layers of ``images`` in order, each blob once, leaving out those ``present``."""
    seen: set[Digest] = set(present)
    layers: list[Layer] = []
    for image in images:
        for layer in image.layers:
            if layer.digest not in seen:
                seen.add(layer.digest)
                layers.append(layer)
    return layers


def _put_documents(
    sink: ImageSink,
    image: Image,
    *,
    top: bool,
    progress: ProgressCallback,
    platform: Platform | None = None,
) -> Digest:
    """An image's config, then its manifest (under the sink's name when ``top``, else by
    digest), once its layers are in ``sink``; returns the manifest digest. ``platform``
    defaults to the config's."""
    sink.put_blob_bytes(image.config_descriptor, image.config_bytes, progress)
    data = image.manifest_bytes()
    manifest = RawManifest(data, image.media_types.manifest, Digest.of(data))
    if platform is None and image.config.os:
        platform = image.config.platform
    sink.put_manifest(manifest, top=top, platform=platform, progress=progress)
    return manifest.digest


def write_index(
    images: Sequence[tuple[Image, Platform]],
    index: RawManifest,
    sink: ImageSink,
    *,
    jobs: int = 4,
    progress: ProgressCallback = null_progress,
) -> Digest:
    """Write a multi-platform image into ``sink``: every image, then ``index`` naming them.

    Layers of all the images go first (each distinct blob once, ``jobs`` in parallel), then
    each image's config and manifest (by digest, not tagged), and the index last under the
    sink's name, so the tag never points at an index whose images are missing.
    """
    _put_layers(sink, _distinct_layers([image for image, _ in images]), jobs, progress)
    for image, platform in images:
        _put_documents(sink, image, top=False, platform=platform, progress=progress)
    sink.put_manifest(index, top=True, platform=None, progress=progress)
    return index.digest


def _store_key(location: Location) -> tuple[str, ...]:
    if isinstance(location, RegistryLocation):
        return ("registry", location.reference.registry, location.reference.repository)
    if isinstance(location, LayoutLocation):
        return ("layout", str(Path(location.path).resolve()))
    raise UsageError(
        f"{location} cannot take several images in one run: write them to a registry repository "
        "or an oci: layout"
    )


def _put_layers(sink: ImageSink, layers: Sequence[Layer], jobs: int, progress: ProgressCallback) -> None:
    run_parallel(lambda layer: sink.put_blob(layer.descriptor, layer.origin, progress), layers, jobs)


def write_images(
    targets: Sequence[tuple[Image, Location]],
    *,
    pool: RegistryPool,
    cache: BlobCache,
    jobs: int = 4,
    progress: ProgressCallback = null_progress,
    present: Collection[Digest] = (),
) -> list[Digest]:
    """Write several images that share blobs, doing each blob's work once per store.

    Every distinct layer blob going to the same registry repository or layout is HEAD-checked,
    mounted or uploaded once, all in parallel; then each image's config and manifest are
    written, images in parallel. Returns the manifest digests in the order of ``targets``.
    Only registry and OCI-layout locations can be written this way. ``present`` are blobs the
    caller knows every target holds (it uploaded them in this run): not even checked.
    """
    stores: dict[tuple[str, ...], list[int]] = {}
    for index, (_, location) in enumerate(targets):
        stores.setdefault(_store_key(location), []).append(index)
    for members in stores.values():
        layers = _distinct_layers([targets[index][0] for index in members], present)
        with open_sink(targets[members[0]][1], pool=pool, cache=cache) as sink:
            _put_layers(sink, layers, jobs, progress)

    digests: list[Digest | None] = [None] * len(targets)

    def finish(index: int) -> None:
        image, location = targets[index]
        with open_sink(location, pool=pool, cache=cache) as sink:
            digests[index] = _put_documents(sink, image, top=True, progress=progress)

    run_parallel(finish, list(range(len(targets))), jobs)
    return [d for d in digests if d is not None]


@dataclass(frozen=True)
class CopyResult:
    """What :func:`copy_image` wrote: the top document's digest and media type, where, and
    how many manifests and blobs it covered."""

    source: str
    destination: str
    digest: Digest
    media_type: str
    platforms: tuple[str, ...]
    manifests: int
    blobs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "digest": str(self.digest),
            "mediaType": self.media_type,
            "platforms": list(self.platforms),
            "manifests": self.manifests,
            "blobs": self.blobs,
        }


@dataclass
class _Plan:
    manifests: list[tuple[RawManifest, Platform | None]]  # children first, the top last
    blobs: dict[Digest, tuple[Descriptor, BlobOrigin]]


def _collect(
    source: ImageSource, raw: RawManifest, platform: Platform | None, plan: _Plan, depth: int
) -> None:
    document = raw.parse(f"manifest {raw.digest} of {source.name}")
    if isinstance(document, Index):
        if depth >= MAX_INDEX_DEPTH:
            raise ManifestError(f"index of {source.name} nests more than {MAX_INDEX_DEPTH} levels deep")
        for entry in document.manifests:
            if not (mt.is_index(entry.media_type) or mt.is_manifest(entry.media_type)):
                raise ManifestError(
                    f"index {raw.digest} of {source.name} lists {entry.digest} of media type "
                    f"{entry.media_type!r}, which is not a manifest"
                )
            if any(m.digest == entry.digest for m, _ in plan.manifests):
                continue
            _collect(source, source.manifest(entry), entry.platform, plan, depth + 1)
    else:
        for blob in (document.config, *document.layers):
            if blob.urls:
                continue  # a foreign layer is never copied: it stays at its URLs
            plan.blobs.setdefault(blob.digest, (blob, source.origin(blob)))
    plan.manifests.append((raw, platform))


def copy_image(
    source: str | Reference | Location,
    destination: str | Reference | Location,
    *,
    pool: RegistryPool,
    cache: BlobCache,
    platform: PlatformChoice = None,
    jobs: int = 4,
    docker_host: str | None = None,
    progress: ProgressCallback = null_progress,
) -> CopyResult:
    """Copy an image or a whole index from ``source`` to ``destination``, digests unchanged.

    Locations are strings (``oci:DIR:TAG``, ``docker-archive:PATH:NAME:TAG``, ``docker://REF``
    or a bare reference), references or location values. Manifest bytes are copied exactly
    as stored; every blob is streamed and verified. ``platform``: ``None`` copies an index
    whole when the destination can hold one (a registry, a layout) and otherwise this
    machine's platform; ``"all"`` insists on the whole index; a :class:`Platform` copies that
    platform's image only (then the destination holds that manifest, not the index).
    Blobs go first (``jobs`` in parallel), manifests last, an index's children before it.
    """
    src = as_location(source)
    dst = as_location(destination)
    if (
        isinstance(dst, ArchiveLocation)
        and dst.reference is None
        and isinstance(src, RegistryLocation)
        and src.reference.tag is not None
    ):
        # As docker save does: the archive keeps the image's name.
        named = src.reference
        dst = ArchiveLocation(dst.path, Reference(named.registry, named.repository, named.tag))
    with open_source(src, pool) as reader:
        top = reader.top()
        document = top.parse(f"manifest of {reader.name}")
        chosen: Platform | None = None
        if isinstance(document, Index):
            # A docker archive or a daemon holds single-platform images only.
            holds_index = isinstance(dst, RegistryLocation | LayoutLocation)
            if platform == "all" and not holds_index:
                offered = ", ".join(platforms_of(document)) or "no runnable platform"
                raise UsageError(
                    f"{dst} holds single-platform images, and {reader.name} is an index of "
                    f"{offered}: choose one with --platform"
                )
            if isinstance(platform, Platform) or (platform is None and not holds_index):
                wanted = platform if isinstance(platform, Platform) else Platform.host()
                top, _, entry = choose_platform(reader, top, wanted)  # nested indexes followed
                chosen = entry.platform if entry is not None else None
        plan = _Plan([], {})
        _collect(reader, top, chosen, plan, 0)
        with open_sink(dst, pool=pool, cache=cache, docker_host=docker_host, keep_in_cache=False) as sink:
            blobs = list(plan.blobs.values())
            run_parallel(lambda item: sink.put_blob(item[0], item[1], progress), blobs, jobs)
            *children, (last, last_platform) = plan.manifests
            for raw, entry_platform in children:
                sink.put_manifest(raw, top=False, platform=entry_platform, progress=progress)
            sink.put_manifest(last, top=True, platform=last_platform, progress=progress)
        platforms = tuple(str(p) for _, p in plan.manifests if p is not None and p.os != "unknown")
        return CopyResult(
            source=reader.name,
            destination=sink.name,
            digest=last.digest,
            media_type=last.media_type,
            platforms=platforms,
            manifests=len(plan.manifests),
            blobs=len(blobs),
        )
