"""Copying raw images between any two locations, and writing several image values in one run.

:func:`copy_image` copies raw manifest bytes, never re-serialised, so a copy keeps every digest.
:func:`write_images` writes images that share blobs so each blob is written once per store.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from imagesmith.errors import ManifestError, UsageError
from imagesmith.jsonfields import JsonFields
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import (
    MAX_INDEX_DEPTH,
    BlobOrigin,
    Image,
    ImageSource,
    RawManifest,
    choose_platform,
)
from imagesmith.oci.model import Descriptor, Index, Platform, platforms_of
from imagesmith.oci.references import Reference
from imagesmith.progress import ProgressCallback, null_progress
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.transports.archive import ArchiveLocation
from imagesmith.transports.base import _distinct_layers, _put_documents, _put_layers, run_parallel
from imagesmith.transports.layout import LayoutLocation
from imagesmith.transports.locations import Location, as_location, open_sink, open_source
from imagesmith.transports.registry import RegistryLocation

__all__ = [
    "CopyResult",
    "copy_image",
    "write_images",
]

PlatformChoice = Platform | Literal["all"] | None


def _store_key(location: Location) -> tuple[str, ...]:
    if isinstance(location, RegistryLocation):
        return ("registry", location.reference.registry, location.reference.repository)
    if isinstance(location, LayoutLocation):
        return ("layout", str(Path(location.path).resolve()))
    raise UsageError(
        f"{location} cannot take several images in one run: write them to a registry repository "
        "or an oci: layout"
    )


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
class CopyResult(JsonFields):
    """What :func:`copy_image` wrote: the top document's digest and media type, where, and
    how many manifests and blobs it covered."""

    source: str
    destination: str
    digest: Digest
    media_type: str
    platforms: tuple[str, ...]
    manifests: int
    blobs: int


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
            holds_index = dst.holds_index
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
