"""The everyday registry verbs: list tags, print a digest, delete, add tags, read raw documents.

Each is one or two requests, as ``crane`` and ``skopeo`` make them:

- :func:`list_tags`: ``GET /v2/<name>/tags/list``, following ``Link: rel="next"`` pages;
- :func:`image_digest`: ``HEAD`` the manifest with every accepted media type (a GET only when
  the registry answers a HEAD without a digest); with a platform, the entry of an index;
- :func:`delete_image`: a tag is resolved to its digest (``HEAD``), then the manifest is
  deleted by digest (``DELETE /v2/<name>/manifests/<digest>``), which also removes every
  other tag on it;
- :func:`tag_image`: the manifest bytes are put again under new tags of the same repository
  (no blob is read or written, the digest does not change);
- :func:`read_manifest`, :func:`read_config`: the documents exactly as stored, from a
  registry, an OCI layout or an archive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagesmith.errors import ManifestError, NotFoundError, UsageError
from imagesmith.jsonfields import JsonFields
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import RawManifest, choose_platform
from imagesmith.oci.mediatypes import is_index
from imagesmith.oci.model import MAX_CONFIG_SIZE, Index, Platform
from imagesmith.oci.references import Reference, parse_repository, validate_tag
from imagesmith.progress import null_progress
from imagesmith.registry.client import RegistryPool, borrowed_pool
from imagesmith.registry.transport import RegistryOptions
from imagesmith.transports.locations import Location, as_location, open_source
from imagesmith.transports.registry import RegistryLocation, RegistrySink

__all__ = [
    "Deleted",
    "Tagged",
    "delete_image",
    "image_digest",
    "list_tags",
    "read_config",
    "read_manifest",
    "tag_image",
]


@dataclass(frozen=True)
class Deleted:
    """A manifest deleted from a registry: ``reference`` as asked (a tag or a digest) and the
    ``digest`` that was deleted."""

    reference: Reference
    digest: Digest

    @property
    def deleted(self) -> Reference:
        """``registry/repository@digest``: what is gone."""
        return Reference(self.reference.registry, self.reference.repository, digest=self.digest)

    def to_json(self) -> dict[str, Any]:
        return {"reference": str(self.reference), "deleted": str(self.deleted), "digest": str(self.digest)}


@dataclass(frozen=True)
class Tagged(JsonFields):
    """A manifest put under new tags of its repository: ``references`` are the new names."""

    source: Reference
    digest: Digest
    media_type: str
    references: tuple[Reference, ...]


def _reference(value: str | Reference, verb: str) -> Reference:
    """A registry reference; an ``oci:``/``docker-archive:`` location is refused for ``verb``."""
    if isinstance(value, Reference):
        return value
    location = as_location(value)
    if not isinstance(location, RegistryLocation):
        raise UsageError(f"{verb} works on registries, and {value!r} is {location}: name an image REPO:TAG")
    return location.reference


def list_tags(
    repository: str | Reference,
    *,
    page_size: int | None = None,
    pool: RegistryPool | None = None,
    registry: RegistryOptions | None = None,
) -> list[str]:
    """The tags of ``repository`` (``ghcr.io/acme/stack``), in the registry's order, every page.

    ``page_size`` asks for pages of that many tags (``?n=``); the registry may use its own.
    Raises :class:`NotFoundError` for a repository the registry does not know.
    """
    if page_size is not None and page_size < 1:
        raise UsageError(f"a page size of {page_size} tags: ask for 1 or more")
    repo = repository if isinstance(repository, Reference) else parse_repository(repository)
    with borrowed_pool(pool, registry) as pool:
        return list(pool.client(repo.registry).list_tags(repo.repository, page_size))


def image_digest(
    reference: str | Reference | Location,
    *,
    platform: Platform | None = None,
    pool: RegistryPool | None = None,
    registry: RegistryOptions | None = None,
) -> Digest:
    """The digest of the manifest (or index) ``reference`` names: what ``docker pull REPO@DIGEST``
    takes. In a registry that is one ``HEAD`` (a GET only when the registry's answer lacks a
    digest or a media type, and then our hash decides); ``oci:DIR[:TAG]`` and
    ``docker-archive:PATH`` are read locally.

    With ``platform``, an index gives the digest of that platform's image (nested indexes
    followed); an image manifest is returned as it is. Raises :class:`NotFoundError` when the
    manifest does not exist, :class:`PlatformError` when the index lacks the platform.
    """
    location = as_location(reference)
    with borrowed_pool(pool, registry) as pool:
        if isinstance(location, RegistryLocation):
            ref = location.reference
            found = pool.client(ref.registry).head_manifest(ref.repository, ref.identifier)
            if found is None:
                raise NotFoundError(f"manifest unknown: {ref} does not exist in {ref.registry}", status=404)
            if platform is None or not is_index(found.media_type):
                return found.digest
        return read_manifest(location, platform=platform, pool=pool).digest


def read_manifest(
    reference: str | Reference | Location,
    *,
    platform: Platform | None = None,
    pool: RegistryPool | None = None,
    registry: RegistryOptions | None = None,
) -> RawManifest:
    """The manifest or index ``reference`` names, bytes exactly as stored (they hash to its
    digest), with its media type. With ``platform``, an index gives that platform's image
    manifest instead."""
    location = as_location(reference)
    with borrowed_pool(pool, registry) as pool, open_source(location, pool) as source:
        raw = source.top()
        if platform is not None:
            raw, _, _ = choose_platform(source, raw, platform)
        return raw


def read_config(
    reference: str | Reference | Location,
    *,
    platform: Platform | None = None,
    pool: RegistryPool | None = None,
    registry: RegistryOptions | None = None,
) -> bytes:
    """The config blob of the image ``reference`` names, bytes exactly as stored (verified
    against the manifest's digest). An index gives the image of ``platform`` (default: this
    machine's, as a pull would). Raises :class:`ManifestError` for a manifest without a config
    (an index entry that is not an image).
    """
    location = as_location(reference)
    with borrowed_pool(pool, registry) as pool, open_source(location, pool) as source:
        _, manifest, _ = choose_platform(source, source.top(), platform or Platform.host())
        if isinstance(manifest, Index):  # pragma: no cover - choose_platform follows indexes
            raise ManifestError(f"{source.name} is an index without an image for {platform}")
        return source.read_blob(manifest.config, MAX_CONFIG_SIZE)


def delete_image(
    reference: str | Reference,
    *,
    pool: RegistryPool | None = None,
    registry: RegistryOptions | None = None,
) -> Deleted:
    """Delete the manifest ``reference`` names from its registry.

    A tag is resolved to its digest first (``HEAD``) and the manifest is deleted by digest, as
    ``skopeo delete`` does: every other tag on that manifest goes with it. The blobs stay until
    the registry's garbage collection. A registry that does not allow deletes answers 405
    (``UNSUPPORTED``): the :class:`RegistryError` says so and what to change. Raises
    :class:`NotFoundError` when there is no such manifest.
    """
    ref = _reference(reference, "delete")
    with borrowed_pool(pool, registry) as pool:
        client = pool.client(ref.registry)
        digest = ref.digest
        if digest is None:
            found = client.head_manifest(ref.repository, ref.identifier)
            if found is None:
                raise NotFoundError(f"manifest unknown: {ref} does not exist in {ref.registry}", status=404)
            digest = found.digest
        client.delete_manifest(ref.repository, digest)
    return Deleted(ref, digest)


def tag_image(
    source: str | Reference,
    tags: Sequence[str],
    *,
    pool: RegistryPool | None = None,
    registry: RegistryOptions | None = None,
) -> Tagged:
    """Put the manifest ``source`` names under each of ``tags`` in the same repository.

    The bytes are put as they were served, so the digest stays the same and no blob moves
    (the repository has them already). A tag may be given as ``TAG`` or ``:TAG``; another
    repository is refused (that is a copy: :func:`copy_image`).
    """
    ref = _reference(source, "tag")
    if not tags:
        raise UsageError("name at least one new tag")
    names = []
    for text in tags:
        tag = text.removeprefix(":")
        if "/" in tag or "@" in tag or ":" in tag:
            raise UsageError(
                f"new tag {text!r}: give a tag of {ref.name} (letters, digits, . _ -), not a reference; "
                "to put the image in another repository use imagesmith copy"
            )
        names.append(validate_tag(tag, text))
    with borrowed_pool(pool, registry) as pool:
        client = pool.client(ref.registry)
        got = client.get_manifest(ref.repository, ref.identifier)
        raw = RawManifest(got.data, got.media_type, got.digest)
        for tag in names:  # as every registry write is: through the registry sink
            sink = RegistrySink(ref.with_tag(tag), pool=pool, cache=None)
            sink.put_manifest(raw, top=True, platform=None, progress=null_progress)
    return Tagged(ref, got.digest, got.media_type, tuple(ref.with_tag(tag) for tag in names))
