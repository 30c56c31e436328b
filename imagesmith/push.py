"""Pushing an :class:`~imagesmith.images.Image` to a registry under a tag.

Order is what keeps a registry consistent: every layer blob first (HEAD, then a
cross-repository mount when the blob lives in another repository of the same registry, then
an upload), the config next, the manifest last. A tag therefore never points at a manifest
whose blobs are missing, even when a push is interrupted; running it again skips what arrived.
The work is done by :class:`~imagesmith.transfer.RegistrySink`, the registry's sink among
the others (layout, archive, daemon) in :mod:`imagesmith.transfer`.
"""

from __future__ import annotations

from pathlib import Path

from .cache import BlobCache
from .images import Image, Layer
from .progress import ProgressCallback, null_progress
from .references import Reference
from .registry.client import RegistryPool
from .transfer import RegistrySink, fetch_blob, write_image

__all__ = ["fetch_layer", "push_image"]


def fetch_layer(pool: RegistryPool, cache: BlobCache, layer: Layer) -> Path:
    """Make sure a layer's blob is in the cache (reading and verifying it from its origin if
    needed) and return its path there."""
    return fetch_blob(pool, cache, layer.descriptor, layer.origin)


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
    sink = RegistrySink(target, pool=pool, cache=cache)
    return str(write_image(image, sink, jobs=jobs, progress=progress))
