"""A repository's index: every image tag with its digest, package name, version, hash and
platforms, stored in the registry itself as an OCI artifact (tag ``index.imagesmith`` by
default), and beside it, for a repository holding Spack packages, Spack's own build-cache
database under ``index.spack``, the tag every Spack reads.

The index is always rebuilt from the registry's own tag list, never patched: a writer lists
the tags, HEADs each one (in parallel) and reuses the previous index's entry when the digest
is unchanged, so re-indexing thousands of unchanged tags costs one HEAD each; only new or
moved tags have their manifest and config fetched. The result is pushed as one artifact
manifest (config: the OCI empty descriptor; one layer: the canonical JSON payload), blobs
first and the manifest last, and the manifest PUT is atomic. Concurrent writers therefore
never corrupt the index: the last one wins with a complete, consistent index of the tags it
saw, and the next update picks up anything pushed meanwhile. The payload carries no
timestamp, so an unchanged repository always gives the same index digest. Tags that are not
images (signatures, other artifacts) are remembered with their digest, so they too cost one
HEAD when unchanged.

``index.spack`` holds only what Spack reads there: the database of every Spack package image
of the repository (an image at Spack's tag ``name-version-hash.spack`` whose config carries
Spack's ``spec``), built by :mod:`imagesmith.inputs.spackdb` from the same scan. The nodes of
unchanged images come from the previous database, so this too costs nothing per unchanged tag.
A repository without Spack images never gets one; an ``index.spack`` holding anything but a
Spack database (or an index an older imagesmith wrote there) is never replaced unless forced.
The formats are documented in ``docs/index.md``.

Size: one job, the repository indexes: the tag scan, imagesmith's index and Spack's database,
read, written and listed.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from imagesmith.errors import ImagesmithError, ManifestError, NotFoundError, UsageError
from imagesmith.inputs.spack import node_platform, spack_tag
from imagesmith.inputs.spackdb import MAX_DATABASE_SIZE, SpackDatabase, build_database, parse_database
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import RawManifest
from imagesmith.oci.model import (
    EMPTY_CONFIG,
    EMPTY_JSON,
    MAX_CONFIG_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    canonical_json,
    parse_manifest_document,
)
from imagesmith.oci.references import Reference, validate_tag
from imagesmith.oci.vocabulary import ANNOTATION, LABEL_HASH, LABEL_NAME, LABEL_VERSION
from imagesmith.progress import ProgressCallback, ProgressEvent, null_progress
from imagesmith.registry.client import RegistryClient, RegistryPool
from imagesmith.transports.registry import RegistrySink

__all__ = [
    "INDEX_MEDIA_TYPE",
    "INDEX_SCHEMA_VERSION",
    "INDEX_TAG",
    "MAX_INDEX_SIZE",
    "SPACK_INDEX_TAG",
    "IndexEntry",
    "IndexUpdate",
    "RepositoryIndex",
    "index_manifest",
    "list_index",
    "read_index",
    "read_spack_index",
    "scan_repository",
    "spack_index_manifest",
    "update_index",
]

log = logging.getLogger("imagesmith.ops.repoindex")

INDEX_TAG = "index.imagesmith"
#: The tag Spack reads its build-cache database from (``spack.binary_distribution``).
SPACK_INDEX_TAG = "index.spack"
INDEX_MEDIA_TYPE = "application/vnd.imagesmith.index.v1+json"
INDEX_SCHEMA_VERSION = 1
MAX_INDEX_SIZE = 64 * 1024 * 1024

# ORAS and similar tools name the file they pull after this annotation.
_TITLE_ANNOTATION = "org.opencontainers.image.title"
_PAYLOAD_FILE = "index.json"
# Spack's default tag; the name is greedy so a dash-free version is taken from the right.
_SPACK_TAG = re.compile(r"(?P<name>.+)-(?P<version>[^-]+)-(?P<hash>[a-z2-7]{32})\.spack")

_T = TypeVar("_T")
_R = TypeVar("_R")


def _str_field(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ManifestError(f"{what}: {key!r} must be a string")
    return value


@dataclass(frozen=True)
class IndexEntry:
    """One tag of the repository: the manifest (or image index) it points at, as a descriptor
    (``media_type``, ``digest``, ``size`` of the manifest document itself), and the package it
    holds (``name``, ``version``, ``hash``; empty strings when unknown) for each platform.
    ``spack`` says that the tag is a Spack build-cache entry: an image at Spack's own tag for
    its package whose config carries Spack's spec, so ``index.spack`` lists it (None: not
    known, in an index an older imagesmith wrote)."""

    tag: str
    digest: str
    media_type: str
    name: str
    version: str
    hash: str
    platforms: tuple[str, ...]
    size: int
    spack: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as it appears in the payload (see ``docs/index.md``)."""
        out: dict[str, Any] = {
            "tag": self.tag,
            "digest": self.digest,
            "mediaType": self.media_type,
            "size": self.size,
            "name": self.name,
            "version": self.version,
            "hash": self.hash,
            "platforms": list(self.platforms),
        }
        if self.spack is not None:
            out["spack"] = self.spack  # absent in payloads of older imagesmith versions
        return out

    @classmethod
    def from_json(cls, obj: Any, what: str = "index entry") -> IndexEntry:
        """Parse and validate an entry; unknown keys are ignored so later versions can add some."""
        if not isinstance(obj, dict):
            raise ManifestError(f"{what} must be an object")
        tag = _str_field(obj, "tag", what)
        what = f"{what} {tag!r}"
        digest_text = _str_field(obj, "digest", what)
        try:
            validate_tag(tag)
            digest = str(Digest.parse(digest_text))
        except ImagesmithError as exc:
            raise ManifestError(f"{what}: {exc}") from None
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{what}: 'size' must be a non-negative integer")
        platforms = obj.get("platforms")
        if not isinstance(platforms, list) or not all(isinstance(p, str) for p in platforms):
            raise ManifestError(f"{what}: 'platforms' must be a list of strings")
        return cls(
            tag=tag,
            digest=digest,
            media_type=_str_field(obj, "mediaType", what),
            name=_str_field(obj, "name", what),
            version=_str_field(obj, "version", what),
            hash=_str_field(obj, "hash", what),
            platforms=tuple(platforms),
            size=size,
            spack=obj["spack"] if isinstance(obj.get("spack"), bool) else None,
        )


def _skipped_from_json(obj: Any, what: str) -> tuple[str, str]:
    if not isinstance(obj, dict):
        raise ManifestError(f"{what} must be an object")
    tag, digest = _str_field(obj, "tag", what), _str_field(obj, "digest", what)
    try:
        return validate_tag(tag), str(Digest.parse(digest))
    except ImagesmithError as exc:
        raise ManifestError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class RepositoryIndex:
    """The index of one repository (``registry/path``): its image entries, sorted by tag, one
    per tag, and the ``(tag, digest)`` pairs of the tags that are not images (signatures,
    other artifacts, unreadable documents), kept so the next update need not fetch them again."""

    repository: str
    entries: tuple[IndexEntry, ...] = field(default=())
    skipped: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.entries, key=lambda e: e.tag))
        skipped = tuple(sorted(self.skipped))
        tags = sorted([*(e.tag for e in ordered), *(tag for tag, _digest in skipped)])
        for before, after in itertools.pairwise(tags):
            if before == after:
                raise ManifestError(f"index of {self.repository} lists tag {before!r} twice")
        # Sorting here (not in each producer) is what makes equal indexes byte-identical.
        object.__setattr__(self, "entries", ordered)
        object.__setattr__(self, "skipped", skipped)

    def entry(self, tag: str) -> IndexEntry | None:
        """The entry of ``tag``, or None when the index does not list it."""
        for candidate in self.entries:
            if candidate.tag == tag:
                return candidate
        return None

    def to_json(self) -> dict[str, Any]:
        """The payload document: ``schemaVersion``, ``mediaType``, ``repository``, ``entries``
        and ``skipped``."""
        return {
            "schemaVersion": INDEX_SCHEMA_VERSION,
            "mediaType": INDEX_MEDIA_TYPE,
            "repository": self.repository,
            "entries": [e.to_json() for e in self.entries],
            "skipped": [{"tag": tag, "digest": digest} for tag, digest in self.skipped],
        }

    def to_bytes(self) -> bytes:
        """The canonical JSON bytes of :meth:`to_json`: equal indexes give equal bytes."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any, what: str = "repository index") -> RepositoryIndex:
        """Parse and validate a payload document; a ``schemaVersion`` other than
        :data:`INDEX_SCHEMA_VERSION` is refused (it was written by another imagesmith)."""
        if not isinstance(obj, dict):
            raise ManifestError(f"{what} is not a JSON object")
        version = obj.get("schemaVersion")
        if version != INDEX_SCHEMA_VERSION:
            raise ManifestError(
                f"{what} has schemaVersion {version!r}; this imagesmith reads version "
                f"{INDEX_SCHEMA_VERSION} (rewrite it with `imagesmith index update`)"
            )
        media_type = obj.get("mediaType")
        if media_type is not None and media_type != INDEX_MEDIA_TYPE:
            raise ManifestError(f"{what} has mediaType {media_type!r}, not {INDEX_MEDIA_TYPE!r}")
        entries = obj.get("entries")
        if not isinstance(entries, list):
            raise ManifestError(f"{what} has no 'entries' list")
        skipped = obj.get("skipped", [])
        if not isinstance(skipped, list):
            raise ManifestError(f"{what}: 'skipped' must be a list")
        return cls(
            repository=_str_field(obj, "repository", what),
            entries=tuple(IndexEntry.from_json(e, f"{what} entry {i}") for i, e in enumerate(entries)),
            skipped=tuple(_skipped_from_json(x, f"{what} skipped entry {i}") for i, x in enumerate(skipped)),
        )

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "repository index") -> RepositoryIndex:
        """Parse payload bytes (size-capped at :data:`MAX_INDEX_SIZE`)."""
        if len(data) > MAX_INDEX_SIZE:
            raise ManifestError(f"{what} is larger than {MAX_INDEX_SIZE} bytes: refused")
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{what} is not valid JSON: {exc}") from None
        return cls.from_json(obj, what)


# ------------------------------------------------------------------------------- scanning


# A Spack spec as the database needs it: (specfile format version, nodes, root first).
_SpecNodes = tuple[int, tuple[Mapping[str, Any], ...]]


@dataclass(frozen=True)
class _Document:
    """What one manifest digest tells about the package it holds (shared by all its tags).
    ``spack`` is the Spack spec of an image Spack can install from (its config has ``spec``
    and ``binary_cache_checksum``); an image index never has one."""

    media_type: str
    size: int
    labels: Mapping[str, str]
    spec: tuple[str, str, str] | None
    platforms: tuple[str, ...]
    spack: _SpecNodes | None = field(default=None, compare=False)


def _valid_tag(tag: str, shown: str) -> bool:
    # A registry's tag list is input like any other: a "tag" such as "sha256:..." must not
    # turn into a request by digest, and one bad name must not stop the whole scan.
    try:
        validate_tag(tag)
    except ImagesmithError:
        log.warning("%s lists an invalid tag %r: left out", shown, tag[:200])
        return False
    return True


def _parallel(fn: Callable[[_T], _R], items: Sequence[_T], jobs: int) -> list[_R]:
    """``fn`` over ``items`` on ``jobs`` threads, results in order; the first failure cancels
    what has not started, so an error on tag 3 of 5000 does not wait for the other 4997."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(jobs, len(items))) as executor:
        futures = [executor.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _spack_identity(raw: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """Name, version and hash of the root spec Spack stores in the config (``spec.nodes[0]``)."""
    spec = raw.get("spec")
    nodes = spec.get("nodes") if isinstance(spec, dict) else None
    root = nodes[0] if isinstance(nodes, list) and nodes else None
    if not isinstance(root, dict):
        return None
    values = (root.get("name"), root.get("version"), root.get("hash"))
    if not all(isinstance(v, str) and v for v in values):
        return None
    return (str(values[0]), str(values[1]), str(values[2]))


def _spack_nodes(raw: Mapping[str, Any]) -> _SpecNodes | None:
    """The spec Spack stores in an image config, when the image is a Spack build-cache entry:
    ``spec`` with ``_meta.version`` and nodes, and the ``binary_cache_checksum`` Spack checks
    its tarball against."""
    spec = raw.get("spec")
    if not isinstance(spec, dict) or not isinstance(raw.get("binary_cache_checksum"), dict):
        return None
    meta = spec.get("_meta")
    version = meta.get("version") if isinstance(meta, dict) else None
    nodes = spec.get("nodes")
    if isinstance(version, bool) or not isinstance(version, int) or not isinstance(nodes, list) or not nodes:
        return None
    if not all(isinstance(n, dict) for n in nodes):
        return None
    return version, tuple(nodes)


def _identity(document: _Document, tag: str) -> tuple[str, str, str]:
    """Name, version and hash of a tag's package.

    imagesmith's labels come first (all three must be there), then Spack's ``spec`` (exact,
    unlike a tag, which may be sanitised or shortened), then the default tag form
    ``{name}-{version}-{hash}.spack``, and last the generic OCI title and version labels, which
    are only trusted as a pair since many base images set a version label of their own.
    """
    labels = document.labels
    trio = (labels.get(LABEL_NAME, ""), labels.get(LABEL_VERSION, ""), labels.get(LABEL_HASH, ""))
    if all(trio):
        return trio
    if document.spec is not None:
        return document.spec
    match = _SPACK_TAG.fullmatch(tag)
    if match:
        return (match["name"], match["version"], match["hash"])
    if trio[0] and trio[1]:
        return (trio[0], trio[1], "")
    return ("", "", "")


def _is_image(manifest: Manifest) -> bool:
    # An artifact (artifactType, or a config that is not an image config) is not an image:
    # a Spack or imagesmith index, a signature, an SBOM, a Helm chart.
    return manifest.artifact_type is None and manifest.config.media_type in (
        mt.OCI_CONFIG,
        mt.DOCKER_CONFIG,
    )


def _image_config(client: RegistryClient, repository: str, manifest: Manifest, what: str) -> ImageConfig:
    data = client.get_blob_bytes(repository, manifest.config, MAX_CONFIG_SIZE)
    return ImageConfig.parse(data, f"config of {what}")


def _platform_of(config: ImageConfig) -> tuple[str, ...]:
    return (str(config.platform),) if config.os and config.architecture else ()


def _describe_manifest(
    client: RegistryClient, repository: str, descriptor: Descriptor, what: str
) -> tuple[Manifest, ImageConfig] | None:
    """Fetch a manifest by digest and its config; None when it is not an image."""
    got = client.get_manifest(repository, str(descriptor.digest))
    document = parse_manifest_document(got.data, got.media_type, what)
    if not isinstance(document, Manifest) or not _is_image(document):
        return None
    return document, _image_config(client, repository, document, what)


def _describe(
    client: RegistryClient, shown: str, repository: str, head: Descriptor
) -> _Document | Literal["not-image", "gone"]:
    """Read what a manifest digest holds: a :class:`_Document`, ``"not-image"`` (an artifact
    or a malformed document: a verdict that holds for these bytes forever), or ``"gone"`` (a
    manifest or blob deleted meanwhile: nothing to remember).

    The manifest is fetched by digest (not by tag) so the entry describes exactly the bytes
    its digest names even if the tag moves meanwhile. Network, authentication and integrity
    failures propagate, so an index is never written from a partial view of the repository.
    """
    what = f"{shown}@{head.digest}"
    try:
        got = client.get_manifest(repository, str(head.digest))
        document = parse_manifest_document(got.data, got.media_type, f"manifest {what}")
        if isinstance(document, Index):
            described = _describe_index(client, repository, document, what, len(got.data))
            return "not-image" if described is None else described
        if not _is_image(document):
            log.debug("%s is an artifact, not an image: not indexed", what)
            return "not-image"
        config = _image_config(client, repository, document, what)
        return _Document(
            document.media_type,
            len(got.data),
            config.labels,
            _spack_identity(config.raw),
            _platform_of(config),
            _spack_nodes(config.raw),
        )
    except NotFoundError as exc:
        log.info("%s vanished while indexing (%s): left out", what, exc)
        return "gone"
    except ManifestError as exc:
        log.info("%s is not an image that can be indexed (%s): left out", what, exc)
        return "not-image"


def _describe_index(
    client: RegistryClient, repository: str, index: Index, what: str, size: int
) -> _Document | None:
    """An image index: its platforms, and the package of its first image.

    A platform the index entry names is taken as is; an entry without one has its config read.
    Only the first image's config is read for labels, since one index holds one package.
    """
    labels: Mapping[str, str] | None = None
    spec: tuple[str, str, str] | None = None
    platforms: list[str] = []
    for entry in index.manifests:
        platform = entry.platform
        if not mt.is_manifest(entry.media_type) or (
            platform is not None and platform.os == "unknown" and platform.architecture == "unknown"
        ):
            continue  # nested indexes and attestations are not runnable images
        if labels is not None and platform is not None:
            found: tuple[str, ...] = (str(platform),)
        else:
            shown = f"manifest {entry.digest} of {what}"
            try:
                described = _describe_manifest(client, repository, entry, shown)
            except (ManifestError, NotFoundError) as exc:
                # One broken platform does not hide the others.
                log.info("%s is not an image that can be indexed (%s): left out", shown, exc)
                continue
            if described is None:
                continue
            _manifest, config = described
            if labels is None:
                labels, spec = config.labels, _spack_identity(config.raw)
            found = (str(platform),) if platform is not None else _platform_of(config)
        platforms.extend(p for p in found if p not in platforms)
    if labels is None:
        log.debug("%s holds no image: not indexed", what)
        return None
    notes = index.annotations or {}
    keys = (ANNOTATION + "title", ANNOTATION + "version", LABEL_HASH)
    title, version, digest_hash = (notes.get(k, "") for k in keys)
    if title and version and digest_hash:
        # A multi-platform build names the package on the index itself, with the hash its tag
        # carries (each platform's image has its own hash when their content differs).
        labels = {**labels, LABEL_NAME: title, LABEL_VERSION: version, LABEL_HASH: digest_hash}
    return _Document(index.media_type, size, labels, spec, tuple(platforms))


def scan_repository(
    pool: RegistryPool,
    repository: Reference,
    *,
    previous: RepositoryIndex | None = None,
    jobs: int = 8,
    progress: ProgressCallback = null_progress,
    index_tag: str = INDEX_TAG,
) -> RepositoryIndex:
    """Build the index of ``repository`` (its tag and digest are ignored) from the registry.

    Lists every tag (following pagination), leaves out ``index.spack`` and ``index_tag``, and
    HEADs each tag on ``jobs`` threads. A tag whose digest equals its entry (or its skipped
    pair) in ``previous`` keeps it with nothing else fetched; every other manifest digest
    (once, however many tags share it) is fetched with its config to read the package identity
    and platforms, and reported as a ``resolve`` event. Tags that vanish while scanning are left
    out; tags that are not images are recorded in ``skipped``. ``progress`` is called from the
    worker threads.
    """
    return _scan(pool, repository, previous=previous, jobs=jobs, progress=progress, index_tag=index_tag)[0]


def _scan(
    pool: RegistryPool,
    repository: Reference,
    *,
    previous: RepositoryIndex | None,
    jobs: int,
    progress: ProgressCallback,
    index_tag: str,
) -> tuple[RepositoryIndex, dict[str, _SpecNodes]]:
    """:func:`scan_repository`, and the Spack specs it read, by root hash (only those of the
    digests it fetched: the others are unchanged, their specs in the previous database)."""
    if jobs < 1:
        raise UsageError(f"invalid jobs {jobs!r}: must be 1 or more")
    client = pool.client(repository.registry)
    repo = repository.repository
    shown = repository.name
    skip = {SPACK_INDEX_TAG, index_tag}
    tags = sorted({t for t in client.list_tags(repo) if t not in skip and _valid_tag(t, shown)})
    heads = _parallel(lambda t: client.head_manifest(repo, t), tags, jobs)

    known = {e.tag: e for e in previous.entries} if previous is not None else {}
    known_skipped = dict(previous.skipped) if previous is not None else {}
    entries: list[IndexEntry] = []
    skipped: list[tuple[str, str]] = []
    pending: dict[Digest, list[str]] = {}
    for tag, head in zip(tags, heads, strict=True):
        if head is None:
            continue  # deleted since the tag list was read
        old = known.get(tag)
        # An entry of an older index does not say whether it is Spack's: a Spack tag is read again.
        known_kind = old is not None and (old.spack is not None or not tag.endswith(".spack"))
        if old is not None and known_kind and old.digest == str(head.digest):
            entries.append(old if old.spack is not None else replace(old, spack=False))
        elif known_skipped.get(tag) == str(head.digest) or not (
            mt.is_manifest(head.media_type)
            or mt.is_index(head.media_type)
            or head.media_type in ("", "application/json")
        ):
            skipped.append((tag, str(head.digest)))
        else:
            pending.setdefault(head.digest, []).append(tag)

    digests = list(pending)
    heads_by_digest = {h.digest: h for h in heads if h is not None}

    def describe(digest: Digest) -> _Document | Literal["not-image", "gone"]:
        document = _describe(client, shown, repo, heads_by_digest[digest])
        if isinstance(document, _Document):
            progress(ProgressEvent("resolve", f"{shown}:{pending[digest][0]}", document.size, str(digest)))
        return document

    specs: dict[str, _SpecNodes] = {}
    for digest, document in zip(digests, _parallel(describe, digests, jobs), strict=True):
        for tag in pending[digest]:
            if document == "not-image":
                skipped.append((tag, str(digest)))
            elif isinstance(document, _Document):
                name, version, package_hash = _identity(document, tag)
                # Spack finds a package only under its own tag: an alias is just an image.
                spack = (
                    document.spack is not None
                    and document.spec is not None
                    and (tag == spack_tag(*document.spec))
                )
                if spack and document.spack is not None and document.spec is not None:
                    specs[document.spec[2]] = document.spack
                entries.append(
                    IndexEntry(
                        tag,
                        str(digest),
                        document.media_type,
                        name,
                        version,
                        package_hash,
                        document.platforms,
                        document.size,
                        spack,
                    )
                )
    return RepositoryIndex(shown, tuple(entries), tuple(skipped)), specs


# ------------------------------------------------------------------------------- storage


class _ForeignIndexError(ManifestError):
    """The index tag holds something imagesmith did not write (Spack's index, an image)."""


def _payload_descriptor(manifest: Manifest | Index, shown: str) -> Descriptor:
    """The payload layer of an imagesmith index manifest, after checking every media type."""
    if not isinstance(manifest, Manifest) or manifest.artifact_type != INDEX_MEDIA_TYPE:
        kind = "an image index"
        if isinstance(manifest, Manifest):
            kind = (
                f"an artifact of type {manifest.artifact_type!r}"
                if manifest.artifact_type
                else "a manifest without artifactType (a Spack build-cache index, or an image)"
            )
        raise _ForeignIndexError(f"{shown} is not an imagesmith index: it holds {kind}")
    if manifest.media_type != mt.OCI_MANIFEST:
        raise ManifestError(
            f"index {shown} has manifest type {manifest.media_type!r}, not {mt.OCI_MANIFEST!r}"
        )
    if manifest.config.media_type != mt.OCI_EMPTY:
        raise ManifestError(
            f"index {shown} has config type {manifest.config.media_type!r}, not {mt.OCI_EMPTY!r}"
        )
    if len(manifest.layers) != 1 or manifest.layers[0].media_type != INDEX_MEDIA_TYPE:
        raise ManifestError(f"index {shown} must have exactly one layer of type {INDEX_MEDIA_TYPE!r}")
    return manifest.layers[0]


def _stored_manifest(client: RegistryClient, repository: Reference, tag: str) -> Manifest | Index:
    shown = f"{repository.name}:{tag}"
    try:
        got = client.get_manifest(repository.repository, validate_tag(tag))
    except NotFoundError as exc:
        option = "" if tag == INDEX_TAG else f" --index-tag {tag}"
        raise NotFoundError(
            f"{repository.name} has no index (tag {tag}): create it with "
            f"`imagesmith index update {repository.name}{option}` ({exc})",
            method=exc.method,
            url=exc.url,
            status=exc.status,
            codes=exc.codes,
        ) from None
    return parse_manifest_document(got.data, got.media_type, f"index {shown}")


def read_index(pool: RegistryPool, repository: Reference, *, tag: str = INDEX_TAG) -> RepositoryIndex:
    """Read the index stored under ``tag`` in ``repository``.

    Raises :class:`NotFoundError` (suggesting ``imagesmith index update``) when there is none,
    and :class:`ManifestError` when the tag holds something else (such as Spack's own
    ``index.spack``), a media type is not the expected one, or the payload is malformed or
    larger than :data:`MAX_INDEX_SIZE`.
    """
    client = pool.client(repository.registry)
    shown = f"{repository.name}:{tag}"
    layer = _payload_descriptor(_stored_manifest(client, repository, tag), shown)
    data = client.get_blob_bytes(repository.repository, layer, MAX_INDEX_SIZE)
    return RepositoryIndex.from_bytes(data, f"index {shown}")


def _previous_index(
    pool: RegistryPool, repository: Reference, tag: str, force: bool
) -> RepositoryIndex | None:
    """The index to reuse entries from: None when absent or unreadable; refuses (unless
    ``force``) to replace what imagesmith did not write."""
    shown = f"{repository.name}:{tag}"
    try:
        return read_index(pool, repository, tag=tag)
    except NotFoundError:
        return None
    except _ForeignIndexError as exc:
        if not force:
            raise UsageError(
                f"{exc}; refusing to replace it: keep the imagesmith index under another tag "
                "(--index-tag), or replace it with --force"
            ) from None
        log.info("replacing %s (%s)", shown, exc)
    except ManifestError as exc:
        # An imagesmith index we cannot read (older schema, damaged): rebuild it from scratch.
        log.info("not reusing %s: %s", shown, exc)
    return None


@dataclass(frozen=True)
class _SpackIndexState:
    """What ``index.spack`` holds before an update: ``present`` (anything at all), the
    database (Spack's or ours) and an index an older imagesmith wrote there (``legacy``)."""

    present: bool
    database: SpackDatabase | None = None
    legacy: RepositoryIndex | None = None


def _spack_index_state(client: RegistryClient, repository: Reference, force: bool) -> _SpackIndexState:
    """Read ``index.spack``; refuse (unless ``force``) when it holds neither a Spack database,
    nor an imagesmith index, nor nothing at all: replacing it could break a mirror in use."""
    shown = f"{repository.name}:{SPACK_INDEX_TAG}"
    try:
        got = client.get_manifest(repository.repository, SPACK_INDEX_TAG)
    except NotFoundError:
        return _SpackIndexState(present=False)
    problem = ""
    try:
        document = parse_manifest_document(got.data, got.media_type, shown)
        if isinstance(document, Index):
            problem = "an image index"
        elif not document.layers:
            return _SpackIndexState(present=True)  # empty: nothing to lose
        elif document.artifact_type == INDEX_MEDIA_TYPE:
            try:
                data = client.get_blob_bytes(repository.repository, document.layers[0], MAX_INDEX_SIZE)
                return _SpackIndexState(True, legacy=RepositoryIndex.from_bytes(data, shown))
            except (ManifestError, NotFoundError) as exc:
                log.info("not reusing %s: %s", shown, exc)
                return _SpackIndexState(present=True)
        else:
            database = _json_blob(client, repository, document.layers[0], shown)
            if database is None:
                problem = f"a manifest whose first layer ({document.layers[0].media_type}) is not JSON"
            else:
                return _SpackIndexState(True, database=parse_database(database, f"Spack database {shown}"))
    except (ManifestError, NotFoundError) as exc:
        problem = str(exc)
    if not force:
        raise UsageError(
            f"{shown} holds something that is neither Spack's build-cache database nor an "
            f"imagesmith index ({problem}); Spack reads its index from that tag, so imagesmith "
            "refuses to replace it: remove the tag, or replace it with --force"
        )
    log.info("replacing %s (%s)", shown, problem)
    return _SpackIndexState(present=True)


def _json_blob(client: RegistryClient, repository: Reference, layer: Descriptor, shown: str) -> bytes | None:
    """The bytes of ``layer`` when they are a JSON document (no larger than a database may
    be), None otherwise; the first bytes decide, so a foreign image's layer is never fetched."""
    if layer.size > MAX_DATABASE_SIZE:
        return None
    with client.open_blob(repository.repository, layer) as reader:
        head = reader.read(64)
        if not head.lstrip().startswith(b"{"):
            return None
        chunks = [head]
        while chunk := reader.read(1 << 20):
            chunks.append(chunk)
    log.debug("read %s from %s (%d bytes)", layer.digest, shown, layer.size)
    return b"".join(chunks)


def _artifact(media_type: str, payload: bytes, title: str) -> Manifest:
    layer = Descriptor(media_type, Digest.of(payload), len(payload), annotations={_TITLE_ANNOTATION: title})
    return Manifest(mt.OCI_MANIFEST, EMPTY_CONFIG, (layer,), artifact_type=media_type)


def index_manifest(index: RepositoryIndex) -> tuple[Manifest, bytes]:
    """The artifact manifest that stores ``index``, and the payload bytes its layer names."""
    payload = index.to_bytes()
    return _artifact(INDEX_MEDIA_TYPE, payload, _PAYLOAD_FILE), payload


def spack_index_manifest(database: SpackDatabase) -> tuple[Manifest, bytes]:
    """The artifact manifest that stores Spack's build-cache database under ``index.spack``,
    and the database bytes its only layer names.

    Spack reads the first layer's digest and nothing else of this manifest (every version
    since OCI build caches exist), so it is an honest OCI 1.1 artifact: the empty config, and
    the database typed as Spack 1.x types it in a file-system build cache
    (``application/vnd.spack.db.v8+json``), rather than the config and gzip layer types Spack
    itself pretends there.
    """
    payload = database.to_bytes()
    return _artifact(database.media_type, payload, _PAYLOAD_FILE), payload


def _push_artifact(
    pool: RegistryPool,
    repository: Reference,
    tag: str,
    manifest: Manifest,
    payload: bytes,
    progress: ProgressCallback,
) -> Digest:
    """Blobs first (HEAD, else upload), the manifest last, through the one registry write path."""
    sink = RegistrySink(repository.with_tag(tag), pool=pool, cache=None)
    sink.put_blob_bytes(EMPTY_CONFIG, EMPTY_JSON, progress, what="")
    sink.put_blob_bytes(manifest.layers[0], payload, progress, what="")
    data = manifest.to_bytes()
    raw = RawManifest(data, mt.OCI_MANIFEST, Digest.of(data))
    sink.put_manifest(raw, top=True, platform=None, progress=progress)
    return raw.digest


def _spack_database(
    client: RegistryClient,
    repository: Reference,
    index: RepositoryIndex,
    fetched: Mapping[str, _SpecNodes],
    previous: SpackDatabase | None,
    jobs: int,
) -> SpackDatabase:
    """The database of every Spack entry of ``index``: specs read by the scan, else the
    previous database's nodes of that package, else its config fetched again."""

    def reused(package_hash: str) -> _SpecNodes | None:
        if previous is None:
            return None
        nodes = previous.spec_nodes(package_hash)
        if nodes is None:
            return None
        if previous.version == "7":
            return 4, tuple(nodes)
        # A version-8 database holds nodes converted from older formats: reuse only those
        # that are format 5 as written, so a database can go back to version 7.
        native = all(
            isinstance(n.get("annotations"), Mapping)
            and n["annotations"].get("original_specfile_version") == 5
            for n in nodes
        )
        return (5, tuple(nodes)) if previous.version == "8" and native else None

    entries = [e for e in index.entries if e.spack]
    specs: dict[str, _SpecNodes | None] = {e.hash: fetched.get(e.hash) or reused(e.hash) for e in entries}
    missing = [e for e in entries if specs[e.hash] is None]

    def fetch(entry: IndexEntry) -> _SpecNodes | None:
        descriptor = Descriptor(entry.media_type, Digest.parse(entry.digest), entry.size)
        described = _describe_manifest(
            client, repository.repository, descriptor, f"manifest {repository.name}:{entry.tag}"
        )
        return None if described is None else _spack_nodes(described[1].raw)

    for entry, nodes in zip(missing, _parallel(fetch, missing, jobs), strict=True):
        specs[entry.hash] = nodes
    return build_database(spec for e in entries if (spec := specs[e.hash]) is not None)


@dataclass(frozen=True)
class IndexUpdate:
    """What :func:`update_index` wrote: the imagesmith index and its manifest digest, and
    Spack's database under ``index.spack`` with its digest (both None when the repository
    holds no Spack image and never had an ``index.spack``)."""

    index: RepositoryIndex
    digest: Digest
    spack_database: SpackDatabase | None = None
    spack_digest: Digest | None = None


def update_index(
    pool: RegistryPool,
    repository: Reference,
    *,
    tag: str = INDEX_TAG,
    jobs: int = 8,
    progress: ProgressCallback = null_progress,
    force: bool = False,
) -> IndexUpdate:
    """Rebuild the indexes of ``repository``: imagesmith's under ``tag``, Spack's under
    ``index.spack`` when the repository holds Spack images (or already had one).

    The stored indexes only lend what they know to :func:`scan_repository` (entries of
    unchanged tags, nodes of unchanged Spack packages); the result comes from the registry's
    tag list. An index an older imagesmith wrote under ``index.spack`` is reused and replaced.
    Blobs are pushed first (HEAD, else upload), each manifest last. ``tag`` may not be
    ``index.spack``; a ``tag`` or an ``index.spack`` holding something imagesmith cannot
    replace safely (see :func:`_spack_index_state`) raises :class:`UsageError` before anything
    is written, unless ``force`` is set.
    """
    validate_tag(tag)
    if tag == SPACK_INDEX_TAG:
        raise UsageError(
            f"{SPACK_INDEX_TAG} is where Spack reads its build-cache database, which imagesmith "
            "writes there itself: keep imagesmith's index under another tag (default "
            f"{INDEX_TAG})"
        )
    client = pool.client(repository.registry)
    previous = _previous_index(pool, repository, tag, force)
    spack_state = _spack_index_state(client, repository, force)
    if previous is None:
        previous = spack_state.legacy  # an older imagesmith kept its index there
    index, specs = _scan(pool, repository, previous=previous, jobs=jobs, progress=progress, index_tag=tag)
    database = _spack_database(client, repository, index, specs, spack_state.database, jobs)
    manifest, payload = index_manifest(index)
    digest = _push_artifact(pool, repository, tag, manifest, payload, progress)
    if not database.packages and not spack_state.present:
        return IndexUpdate(index, digest)
    spack_manifest, spack_payload = spack_index_manifest(database)
    spack_digest = _push_artifact(pool, repository, SPACK_INDEX_TAG, spack_manifest, spack_payload, progress)
    return IndexUpdate(index, digest, database, spack_digest)


def read_spack_index(pool: RegistryPool, repository: Reference) -> SpackDatabase | None:
    """Spack's build-cache database stored under ``index.spack``, or None when there is none
    (or the tag holds something else: an index an older imagesmith wrote, an image)."""
    state = _spack_index_state(pool.client(repository.registry), repository, force=True)
    return state.database


def _database_entries(
    client: RegistryClient, repository: Reference, database: SpackDatabase, jobs: int
) -> RepositoryIndex:
    """The packages of a Spack database as index entries: each at Spack's tag, HEADed for its
    digest (a package whose tag is gone is left out: the database is older than the tags)."""
    records = [database.records[h] for h in database.packages]
    tags = [spack_tag(r.name, r.version, h) for r, h in zip(records, database.packages, strict=True)]
    heads = _parallel(lambda t: client.head_manifest(repository.repository, t), tags, jobs)
    entries = [
        IndexEntry(
            tag,
            str(head.digest),
            head.media_type,
            record.name,
            record.version,
            package_hash,
            node_platform(record.node),
            head.size,
            spack=True,
        )
        for tag, head, record, package_hash in zip(tags, heads, records, database.packages, strict=True)
        if head is not None
    ]
    return RepositoryIndex(repository.name, tuple({e.tag: e for e in entries}.values()))


def list_index(
    pool: RegistryPool,
    repository: Reference,
    *,
    tag: str = INDEX_TAG,
    live: bool = False,
    jobs: int = 8,
    progress: ProgressCallback = null_progress,
) -> RepositoryIndex:
    """What ``repository`` holds: the imagesmith index under ``tag``; else, when ``tag`` is
    ``index.spack`` or holds no index, the packages of Spack's database there (each tag HEADed
    for its digest); else a live scan (nothing written), which ``live`` asks for directly.
    A damaged imagesmith index raises :class:`ManifestError` rather than being bypassed."""
    if live:
        return scan_repository(pool, repository, jobs=jobs, progress=progress, index_tag=tag)
    if tag != SPACK_INDEX_TAG:
        try:
            return read_index(pool, repository, tag=tag)
        except (NotFoundError, _ForeignIndexError) as exc:
            log.info("no imagesmith index to read (%s)", exc)
    client = pool.client(repository.registry)
    state = _spack_index_state(client, repository, force=True)
    if state.legacy is not None:
        return state.legacy
    if state.database is not None:
        return _database_entries(client, repository, state.database, jobs)
    log.info("no index to read: scanning %s", repository.name)
    return scan_repository(pool, repository, jobs=jobs, progress=progress, index_tag=tag)
