"""What every transport shares: the sink protocol and writing an image value onto a sink.

A sink is where an image is written: a registry repository, an OCI layout, a docker archive,
or a Docker-compatible daemon (through an archive); each kind's sink lives in its own module
(``transports/registry.py``, ``layout.py``, ``archive.py``, ``daemon.py``). Every sink follows
the same order, which keeps each of them consistent after an interruption: blobs first (in
parallel), then the config, then manifests (an index's children before the index), the named
top document last.

Where bytes come from is a blob's origin (:mod:`imagesmith.oci.image`). A sink asks for them
only when it lacks the blob, and takes the cheapest road: a registry HEADs the blob, then mounts
it from another repository of the same registry, and only then uploads. Uploads (which may be
retried from the start) and archive writes (which must not wait on the network while holding
the archive) read from a local file: the blob cache, filled once and verified (:func:`fetch_blob`),
or the origin's own file (a layout).

:func:`write_image` writes an :class:`~imagesmith.oci.image.Image` value built by the pipeline;
``transports.copy`` copies raw images and writes several images in one run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, Protocol, TypeVar

from imagesmith import cancel
from imagesmith.closing import Closing
from imagesmith.errors import CacheError, UsageError
from imagesmith.oci.digests import CHUNK, Digest
from imagesmith.oci.image import (
    BlobOrigin,
    Image,
    ImageSource,
    Layer,
    RawManifest,
)
from imagesmith.oci.model import Descriptor, Platform
from imagesmith.oci.references import Reference
from imagesmith.progress import EventKind, Meter, ProgressCallback, ProgressEvent, null_progress
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache

__all__ = [
    "ImageSink",
    "fetch_blob",
    "run_parallel",
    "write_image",
    "write_index",
]

T = TypeVar("T")

log = logging.getLogger("imagesmith.transfer")


@dataclass(frozen=True)
class SinkOptions:
    """What opening a sink may need besides the location: the run's pool and cache, the
    daemon's address (``docker-daemon:``), whether a layout keeps remote blobs in the cache."""

    pool: RegistryPool
    cache: BlobCache
    docker_host: str | None = None
    keep_in_cache: bool = True


class LocationKind:
    """What every location kind offers (``registry.py``, ``layout.py``, ``archive.py``,
    ``daemon.py``), so callers ask a location instead of testing its class, as containers/image's
    destinations declare what they support."""

    #: Whether the location can hold a multi-platform index.
    holds_index: ClassVar[bool] = False
    #: Whether artifacts can be attached to an image there (SBOMs, as OCI referrers).
    takes_referrers: ClassVar[bool] = False

    @property
    def name(self) -> Reference | None:
        """The image's name the location carries (None: a layout, an unnamed archive)."""
        reference = getattr(self, "reference", None)
        return reference if isinstance(reference, Reference) else None

    def open_source(self, pool: RegistryPool) -> AbstractContextManager[ImageSource]:
        """The source reading the image there; a kind that cannot be read says so."""
        raise UsageError(f"cannot read images from {self}: use a registry, oci: or docker-archive:")

    def open_sink(self, options: SinkOptions) -> ImageSink:
        """The sink writing an image there (each kind has its own)."""
        raise NotImplementedError


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


class _MeteredFile(Closing):
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


def _evicted(cache: BlobCache, descriptor: Descriptor, origin: BlobOrigin) -> None:
    log.warning(
        "blob %s was damaged in the cache at %s: evicted; getting it again from %s",
        descriptor.digest,
        cache.root,
        origin,
    )


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


def _put_layers(sink: ImageSink, layers: Sequence[Layer], jobs: int, progress: ProgressCallback) -> None:
    run_parallel(lambda layer: sink.put_blob(layer.descriptor, layer.origin, progress), layers, jobs)
