"""The registry sink: push an :class:`~imagesmith.images.Image` under a tag.

Order is what keeps a registry consistent: every layer blob first (HEAD, then a
cross-repository mount when the blob lives in another repository of the same registry, then
an upload), the config next, the manifest last. A tag therefore never points at a manifest
whose blobs are missing, even when a push is interrupted; running it again skips what arrived.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .cache import BlobCache
from .digests import CHUNK, Digest
from .errors import CacheError
from .images import Image, Layer
from .progress import ProgressCallback, ProgressEvent, null_progress
from .references import Reference
from .registry.client import RegistryPool

__all__ = ["fetch_layer", "push_image"]


def fetch_layer(pool: RegistryPool, cache: BlobCache, layer: Layer) -> Path:
    """Make sure a layer's blob is in the cache (downloading and verifying it if needed)."""
    descriptor = layer.descriptor
    if cache.has(descriptor.digest, descriptor.size):
        return cache.path(descriptor.digest)
    if layer.origin is None:
        raise CacheError(
            f"layer {descriptor.digest} is missing from the cache at {cache.root}; "
            "it was removed while imagesmith ran: build again"
        )
    client = pool.client(layer.origin.registry)
    with (
        client.open_blob(layer.origin.repository, descriptor) as reader,
        cache.put_stream(descriptor.digest, descriptor.size) as writer,
    ):
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
    return cache.path(descriptor.digest)


def push_image(
    image: Image,
    target: Reference,
    *,
    pool: RegistryPool,
    cache: BlobCache,
    jobs: int = 4,
    progress: ProgressCallback = null_progress,
) -> str:
    """Push ``image`` to ``target`` (a tag reference) and return the manifest digest string.

    Layers are handled in parallel (``jobs`` threads); the config follows and the manifest
    is PUT last.
    """
    client = pool.client(target.registry)
    repository = target.repository

    def ensure(layer: Layer) -> None:
        descriptor = layer.descriptor
        subject = str(descriptor.digest)
        if descriptor.urls:
            # A foreign layer is served from its own URLs; registries refuse or ignore it.
            return
        if client.blob_exists(repository, descriptor.digest):
            progress(ProgressEvent("blob-exists", subject, descriptor.size))
            return
        origin = layer.origin
        if (
            origin is not None
            and origin.registry == target.registry
            and origin.repository != repository
            and client.mount_blob(repository, descriptor.digest, origin.repository)
        ):
            progress(ProgressEvent("blob-mounted", subject, descriptor.size, origin.repository))
            return
        if not cache.has(descriptor.digest, descriptor.size):
            # A base layer from another registry must pass through the cache; a built layer
            # that vanished from it gets a clear CacheError from fetch_layer.
            fetch_layer(pool, cache, layer)
            progress(ProgressEvent("blob-fetched", subject, descriptor.size))
        path = cache.path(descriptor.digest)
        client.upload_blob(repository, descriptor.digest, descriptor.size, lambda: path.open("rb"))
        progress(ProgressEvent("blob-uploaded", subject, descriptor.size))

    _run_parallel(ensure, _unique(image.layers), jobs)

    config = image.config_descriptor
    if not client.blob_exists(repository, config.digest):
        data = image.config_bytes
        client.upload_blob(repository, config.digest, config.size, lambda: io.BytesIO(data))
        progress(ProgressEvent("blob-uploaded", str(config.digest), config.size, "config"))
    manifest = image.manifest_bytes()
    digest = client.put_manifest(repository, target.identifier, manifest, image.media_types.manifest)
    progress(ProgressEvent("manifest-pushed", str(target), len(manifest), str(digest)))
    return str(digest)


def _unique(layers: Iterable[Layer]) -> list[Layer]:
    seen: set[Digest] = set()
    out: list[Layer] = []
    for layer in layers:
        if layer.digest not in seen:
            seen.add(layer.digest)
            out.append(layer)
    return out


def _run_parallel(call: Callable[[Layer], None], items: list[Layer], jobs: int) -> None:
    if jobs <= 1 or len(items) <= 1:
        for item in items:
            call(item)
        return
    with ThreadPoolExecutor(max_workers=min(jobs, len(items))) as pool:
        futures = [pool.submit(call, item) for item in items]
        # Wait for all, then re-raise the first failure: no thread is left writing.
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
