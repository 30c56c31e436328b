"""Multi-platform images: per-platform images of one registry assembled into one index.

An image index (OCI) or manifest list (Docker v2) is only a small document naming one
manifest per platform; the layers stay where they are. :func:`merge_images` therefore reads
the sources' manifests (and, for a single-platform manifest, its config: the only place its
platform is written), makes every blob present in the target repository by cross-repository
mount, PUTs each child manifest there by digest with its exact bytes (digests never change),
and PUTs the index under the target tag last, so the tag never names a child that is missing.
No layer is downloaded: sources must already be on the target's registry (``imagesmith copy``
moves them there). When a registry refuses a mount, the blob is streamed from the source
repository to the target, verified on the way, never held in memory.

:func:`index_document` builds the index bytes from descriptors that carry their platform; it
knows nothing of registries, so a multi-platform build can use it for the images it wrote.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from imagesmith.errors import ManifestError, UsageError
from imagesmith.jsonfields import JsonFields
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import RawManifest
from imagesmith.oci.index import _FAMILY_NAMES, _is_attestation, _platform_key, index_document
from imagesmith.oci.model import (
    MAX_CONFIG_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_manifest_document,
)
from imagesmith.oci.references import Reference
from imagesmith.progress import ProgressCallback, ProgressEvent, null_progress
from imagesmith.registry.client import ManifestResponse, RegistryClient, RegistryPool
from imagesmith.transports.base import run_parallel
from imagesmith.transports.locations import as_location
from imagesmith.transports.registry import RegistryLocation, RegistrySink, RemoteOrigin

__all__ = [
    "MergeResult",
    "merge_images",
]


log = logging.getLogger("imagesmith.merge")


_SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    }
)


@dataclass(frozen=True)
class MergeResult(JsonFields):
    """What :func:`merge_images` pushed: the index's reference (its tag), digest and media
    type, the platforms it lists (in order) and how many manifests it names."""

    reference: Reference
    digest: Digest
    media_type: str
    platforms: tuple[str, ...]
    manifests: int


@dataclass(frozen=True)
class _Child:
    """One image of the index: its entry, its manifest exactly as stored, and where it lives."""

    descriptor: Descriptor
    manifest: Manifest
    data: bytes
    repository: str
    source: str  # the source reference as the user named it, for messages


def _registry_reference(value: str | Reference, role: str) -> Reference:
    if isinstance(value, Reference):
        return value
    location = as_location(value)
    if not isinstance(location, RegistryLocation):
        raise UsageError(
            f"{role} {value} is not in a registry: merge assembles an index inside one registry; "
            f"push it there first (imagesmith copy {value} REGISTRY/REPO:TAG)"
        )
    return location.reference


def _parse(got: ManifestResponse, shown: str) -> Manifest | Index:
    """The document, after refusing Docker schema 1 with a way out (the generic parser would
    only call it unsupported)."""
    schema1 = got.media_type in _SCHEMA1_TYPES
    if not schema1:
        try:
            schema1 = json.loads(got.data).get("schemaVersion") == 1
        except (ValueError, AttributeError, RecursionError):
            schema1 = False  # the parser names what is wrong
    if schema1:
        raise ManifestError(
            f"{shown} is a Docker schema 1 manifest (deprecated; it has no config that names its "
            "platform), which cannot go into an index: push it again as Docker v2 schema 2 or OCI "
            "(e.g. skopeo copy --format v2s2, or rebuild it)"
        )
    return parse_manifest_document(got.data, got.media_type, f"manifest {shown}")


def _config_platform(config: ImageConfig, shown: str) -> Platform:
    """The platform an image config declares, every field an index entry can carry."""
    raw = config.raw

    def text(key: str) -> str | None:
        value = raw.get(key)
        return value if isinstance(value, str) and value else None

    os_name, architecture = text("os"), text("architecture")
    if os_name is None or architecture is None:
        raise ManifestError(
            f"the config of {shown} names no os and architecture, so its platform is unknown: "
            "set them (e.g. imagesmith import --platform linux/amd64) before merging"
        )
    features = raw.get("os.features")
    if not (isinstance(features, list) and all(isinstance(f, str) for f in features)):
        features = []
    return Platform(os_name, architecture, text("variant"), text("os.version"), tuple(features))


def _image(document: Manifest | Index, shown: str) -> Manifest:
    """``document`` as an image manifest, or an error saying why it cannot be an index entry."""
    if isinstance(document, Index):
        raise ManifestError(
            f"{shown} is an index nested in an index: merge its images (or that index) directly"
        )
    if document.config.media_type not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
        raise UsageError(
            f"{shown} is not a container image (its config is {document.config.media_type!r}): "
            "only images can go into an index"
        )
    return document


def _children_of(client: RegistryClient, source: Reference, shown: str) -> list[_Child]:
    """The images one source contributes: itself, or the runnable entries of its index."""
    repository = source.repository
    got = client.get_manifest(repository, source.identifier)
    document = _parse(got, shown)
    if isinstance(document, Manifest):
        manifest = _image(document, shown)
        data = client.get_blob_bytes(repository, manifest.config, MAX_CONFIG_SIZE)
        config = ImageConfig.parse(data, f"config of {shown}")
        platform = _config_platform(config, shown)
        descriptor = Descriptor(got.media_type, got.digest, len(got.data), platform=platform)
        return [_Child(descriptor, manifest, got.data, repository, shown)]
    children: list[_Child] = []
    for entry in document.manifests:
        entry_shown = f"{source.name}@{entry.digest} (in {shown})"
        if _is_attestation(entry.platform):
            log.debug("leaving out %s: platform unknown/unknown (an attestation, not an image)", entry_shown)
            continue
        if not mt.is_manifest(entry.media_type):
            raise ManifestError(
                f"{shown} lists {entry.digest} of media type {entry.media_type!r}, which is not an "
                "image manifest: merge the images it holds directly"
            )
        child = client.get_manifest(repository, str(entry.digest))  # verified against the digest
        if child.media_type != entry.media_type:
            raise ManifestError(
                f"{shown} lists {entry.digest} as {entry.media_type!r}, but it is {child.media_type!r}"
            )
        parsed = _parse(child, entry_shown)
        if isinstance(parsed, Manifest) and parsed.config.media_type not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
            # An artifact beside the images (a signature, an SBOM): no platform to run.
            log.info(
                "leaving out %s: an artifact (config %s), not an image", entry_shown, parsed.config.media_type
            )
            continue
        manifest = _image(parsed, entry_shown)
        descriptor = entry
        if entry.platform is None:
            # An index may leave the platform out; the image's own config tells it.
            data = client.get_blob_bytes(repository, manifest.config, MAX_CONFIG_SIZE)
            platform = _config_platform(ImageConfig.parse(data, f"config of {entry_shown}"), entry_shown)
            descriptor = Descriptor(
                entry.media_type,
                entry.digest,
                entry.size,
                entry.annotations,
                platform,
                entry.urls,
                entry.artifact_type,
            )
        children.append(_Child(descriptor, manifest, child.data, repository, shown))
    if not children:
        raise UsageError(f"{shown} is an index without a runnable image (only attestations or artifacts)")
    return children


def _family(children: Sequence[_Child]) -> mt.Family:
    """The one family of every child, or a :class:`UsageError` saying which source is which."""
    families = {mt.family_of(c.descriptor.media_type).family for c in children}
    if len(families) == 1:
        return next(iter(families))
    by_source: dict[str, set[str]] = {}
    for child in children:
        family = mt.family_of(child.descriptor.media_type).family
        by_source.setdefault(child.source, set()).add(_FAMILY_NAMES[family])
    listing = "; ".join(f"{source} is {' and '.join(sorted(names))}" for source, names in by_source.items())
    raise UsageError(
        f"cannot merge OCI and Docker v2 images into one index ({listing}): an index never mixes "
        "media-type families; make them all one format (imagesmith import --format oci|docker, or "
        "build them on bases of one family)"
    )


def _select(children: Sequence[_Child]) -> list[_Child]:
    """The children in order, each manifest once, and at most one per platform."""
    chosen: list[_Child] = []
    by_digest: dict[Digest, _Child] = {}
    by_slot: dict[tuple[str, str, str | None, str | None, tuple[str, ...]], _Child] = {}
    for child in children:
        descriptor = child.descriptor
        if descriptor.digest in by_digest:
            log.debug(
                "%s is named twice (by %s and %s): listed once",
                descriptor.digest,
                by_digest[descriptor.digest].source,
                child.source,
            )
            continue
        assert descriptor.platform is not None
        key = _platform_key(descriptor.platform)
        other = by_slot.get(key)
        if other is not None:
            raise UsageError(
                f"{other.source} ({other.descriptor.digest}) and {child.source} ({descriptor.digest}) "
                f"are two different images for {descriptor.platform}: an index holds one image per "
                "platform; leave one of them out"
            )
        by_digest[descriptor.digest] = child
        by_slot[key] = child
        chosen.append(child)
    return chosen


def merge_images(
    sources: Sequence[str | Reference],
    target: str | Reference,
    *,
    pool: RegistryPool,
    progress: ProgressCallback = null_progress,
    jobs: int = 4,
    annotations: Mapping[str, str] | None = None,
) -> MergeResult:
    """Push one index naming the images of ``sources`` under ``target`` (a tag).

    Each source is a registry reference (tag or digest) on the target's registry. A
    single-platform manifest contributes itself, its platform read from its config (size-capped
    and verified); an index or manifest list contributes its entries as they are, leaving out
    ``unknown/unknown`` attestations. The same manifest named twice is listed once; two
    different manifests for one platform are a :class:`UsageError`, as are images of both
    media-type families (the index takes the family of its images: a Docker manifest list for
    Docker v2 images, an OCI index for OCI ones) and sources on another registry.

    Blobs of sources in other repositories are mounted into the target repository (streamed
    over, verified, when the registry refuses; ``jobs`` at a time), then each child manifest
    is PUT there by digest with its exact bytes, and the index last. Layers are never
    downloaded. The index bytes depend only on the children, their order and ``annotations``
    (written on an OCI index; a Docker manifest list has none), so merging the same sources
    again gives the same digest.
    """
    if not sources:
        raise UsageError("merge needs at least one source image")
    target_ref = _registry_reference(target, "target")
    if target_ref.digest is not None or target_ref.tag is None:
        raise UsageError(f"--tag {target} must name a tag (repo:tag), not a digest")
    refs = [(_registry_reference(s, "source"), str(s)) for s in sources]
    for ref, shown in refs:
        if ref.registry != target_ref.registry:
            raise UsageError(
                f"{shown} is on {ref.registry}, but the index goes to {target_ref.registry}: merge "
                "never moves layers between registries; copy it there first "
                f"(imagesmith copy {shown} {target_ref.registry}/{ref.repository}:TAG) and merge that"
            )
    client = pool.client(target_ref.registry)
    repository = target_ref.repository
    collected: list[_Child] = []
    for ref, shown in refs:
        found = _children_of(client, ref, shown)
        progress(ProgressEvent("resolve", shown, sum(len(c.data) for c in found)))
        collected.extend(found)
    family = _family(collected)
    children = _select(collected)

    blobs: dict[Digest, tuple[Descriptor, str]] = {}
    for child in children:
        if child.repository == repository:
            continue  # the manifest and its blobs are in the target repository already
        for blob in (child.manifest.config, *child.manifest.layers):
            if blob.urls:
                continue  # a foreign layer is served from its URLs, never by the registry
            blobs.setdefault(blob.digest, (blob, child.repository))
    # Written as every registry write is (RegistrySink): with no cache, a blob the registry
    # refuses to mount is streamed over from its repository, never stored here.
    sink = RegistrySink(target_ref, pool=pool, cache=None)
    run_parallel(
        lambda item: sink.put_blob(item[0], RemoteOrigin(target_ref.registry, item[1]), progress),
        list(blobs.values()),
        max(1, jobs),
    )
    for child in children:
        if child.repository != repository:
            descriptor = child.descriptor
            raw = RawManifest(child.data, descriptor.media_type, descriptor.digest)
            sink.put_manifest(raw, top=False, platform=descriptor.platform, progress=progress)

    data = index_document([c.descriptor for c in children], family, annotations if family == "oci" else None)
    types = mt.OCI if family == "oci" else mt.DOCKER
    index = RawManifest(data, types.index, Digest.of(data))
    sink.put_manifest(index, top=True, platform=None, progress=progress)
    digest = index.digest
    platforms = tuple(str(c.descriptor.platform) for c in children)
    return MergeResult(target_ref, digest, types.index, platforms, len(children))
