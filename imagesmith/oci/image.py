"""Images as values: an image, its layers and where each layer's bytes are read.

An :class:`Image` never holds layer bytes. Each :class:`Layer` carries its descriptor, its
diff_id and its origin (a :class:`BlobOrigin`): a repository of a registry
(``transports.registry.RemoteOrigin``), an OCI layout directory
(``transports.layout.LayoutOrigin``), an archive (``transports.archive.ArchiveOrigin``), a local
file (:class:`FileOrigin`), or the local blob cache (``None``: a layer imagesmith built). Bytes
are read only when a sink really needs them. Appending returns a new image; the manifest is
computed from the value, so the same inputs always give the same manifest bytes.

An :class:`ImageSource` (the protocol every transport's source implements) reads an image's raw
documents (bytes exactly as stored, so copies keep their digests), small blobs such as configs,
and tells the origin of every other blob. :func:`choose_platform` walks a source's index to one
platform's manifest; ``transports.locations.resolve_base`` reads a base image through it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from imagesmith.errors import IntegrityError, LayerError, ManifestError, PlatformError
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest, VerifyingReader
from imagesmith.oci.model import (
    Descriptor,
    HistoryEntry,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_manifest_document,
    select_platform,
)
from imagesmith.oci.references import Reference

if TYPE_CHECKING:  # type only: a registry origin reads through the run's pool
    from imagesmith.registry.client import RegistryPool

__all__ = [
    "BaseImage",
    "BlobOrigin",
    "FileOrigin",
    "Image",
    "ImageSource",
    "Layer",
    "RawManifest",
    "Readable",
]


MAX_INDEX_DEPTH = 4


class Readable(Protocol):
    """A byte stream: ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end."""

    def read(self, n: int = -1, /) -> bytes: ...


class BlobOrigin(Protocol):
    """Where the bytes of a blob can be read (see :class:`RemoteOrigin`, :class:`LayoutOrigin`)."""

    @property
    def local(self) -> bool:
        """True when reading needs no network and may be repeated cheaply (a local file)."""
        ...

    def open_blob(self, descriptor: Descriptor, pool: RegistryPool) -> AbstractContextManager[Readable]:
        """Open the blob for reading; the reader checks size and digest as it is read."""
        ...

    def blob_file(self, descriptor: Descriptor) -> Path | None:
        """A local file holding exactly the blob's bytes, when there is one."""
        ...


@dataclass(frozen=True)
class FileOrigin:
    """A blob that is exactly the bytes of the local file ``path``: a Spack build-cache tarball
    used as a layer as is, which is neither copied into the cache nor read twice."""

    path: Path

    @property
    def local(self) -> bool:
        return True

    @contextmanager
    def _open(self, descriptor: Descriptor) -> Iterator[Readable]:
        what = f"blob {descriptor.digest} ({self.path})"
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by the with block below
        except OSError as exc:
            raise LayerError(f"cannot read {what}: {exc.strerror or exc}") from None
        with f:
            if os.fstat(f.fileno()).st_size != descriptor.size:
                raise IntegrityError(f"{what} changed size since the layer was built: build again")
            yield VerifyingReader(f, descriptor.digest, descriptor.size, what)

    def open_blob(self, descriptor: Descriptor, pool: RegistryPool) -> AbstractContextManager[Readable]:
        """Read the file, verified while read; ``pool`` is not used."""
        return self._open(descriptor)

    def blob_file(self, descriptor: Descriptor) -> Path | None:
        try:
            return self.path if self.path.stat().st_size == descriptor.size else None
        except OSError:
            return None

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Layer:
    """One layer of an image: what the manifest says, its diff_id and where its bytes are."""

    descriptor: Descriptor
    diff_id: Digest
    origin: BlobOrigin | None = None  # None: the blob is in the local cache

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest


@dataclass(frozen=True)
class Image:
    """An image value: media-type family, config, layers and manifest annotations."""

    media_types: mt.MediaTypes
    config: ImageConfig
    layers: tuple[Layer, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    def append(self, layers: Sequence[Layer], history: Sequence[HistoryEntry]) -> Image:
        """A new image with ``layers`` on top; the config gains their diff_ids and history."""
        config = self.config.with_layers([layer.diff_id for layer in layers], history)
        return replace(self, config=config, layers=self.layers + tuple(layers))

    def with_config(self, config: ImageConfig) -> Image:
        return replace(self, config=config)

    def with_annotations(self, annotations: Mapping[str, str]) -> Image:
        return replace(self, annotations={**self.annotations, **annotations})

    @property
    def config_bytes(self) -> bytes:
        return self.config.to_bytes()

    @property
    def config_descriptor(self) -> Descriptor:
        data = self.config_bytes
        return Descriptor(self.media_types.config, Digest.of(data), len(data))

    def manifest(self) -> Manifest:
        """The manifest of this image in its family; Docker v2 manifests carry no annotations."""
        annotations = dict(self.annotations) if self.media_types.family == "oci" else None
        return Manifest(
            media_type=self.media_types.manifest,
            config=self.config_descriptor,
            layers=tuple(layer.descriptor for layer in self.layers),
            annotations=annotations or None,
        )

    def manifest_bytes(self) -> bytes:
        return self.manifest().to_bytes()

    @property
    def digest(self) -> Digest:
        return Digest.of(self.manifest_bytes())


@dataclass(frozen=True)
class RawManifest:
    """A manifest or index exactly as stored: its bytes, media type and digest."""

    data: bytes
    media_type: str
    digest: Digest

    def parse(self, what: str = "manifest") -> Manifest | Index:
        """The parsed document (declared and embedded media types must agree)."""
        return parse_manifest_document(self.data, self.media_type, what)


class ImageSource(Protocol):
    """Where an image (or index) is read from: a registry, an OCI layout or an archive."""

    @property
    def name(self) -> str:
        """How the source is shown in messages (``oci:/srv/base:1``, ``ubuntu:23.04``)."""
        ...

    @property
    def reference(self) -> Reference | None:
        """The registry reference, when the source is a registry."""
        ...

    def top(self) -> RawManifest:
        """The document the source names: a manifest or an index, bytes as stored."""
        ...

    def manifest(self, descriptor: Descriptor) -> RawManifest:
        """A manifest or index the top document refers to, verified against ``descriptor``."""
        ...

    def read_blob(self, descriptor: Descriptor, max_size: int) -> bytes:
        """A small blob (a config) in memory, verified; refused over ``max_size``."""
        ...

    def origin(self, descriptor: Descriptor) -> BlobOrigin:
        """Where the bytes of a blob of this image are read."""
        ...


@dataclass(frozen=True)
class BaseImage:
    """A base image resolved for one platform: where it came from, its digests and the value."""

    reference: Reference | None  # the registry reference; None for a layout or archive base
    digest: Digest  # of the platform's manifest
    index_digest: Digest | None  # of the index it was chosen from, if any
    image: Image
    manifest: Manifest
    source: str = ""  # how the base was named (``oci:/srv/base:1``...), for messages

    @property
    def pinned(self) -> str:
        """The base pinned to the digest that was used (the index digest if any)."""
        digest = self.index_digest or self.digest
        if self.reference is not None:
            return str(self.reference.with_digest(digest))
        return f"{self.source}@{digest}"


def choose_platform(
    source: ImageSource, raw: RawManifest, platform: Platform
) -> tuple[RawManifest, Manifest, Descriptor | None]:
    """The image manifest for ``platform`` that ``raw`` leads to (raw and parsed), and the entry
    chosen in ``raw``.

    ``raw`` that is an image manifest is returned as it is (with no entry). In an index, the
    entry for ``platform`` is chosen (:func:`~imagesmith.oci.model.select_platform`) and, when
    that entry is an index itself, followed in turn: at most :data:`MAX_INDEX_DEPTH` levels,
    never through the same digest twice (:class:`ManifestError` otherwise). A nested index
    without the platform raises :class:`PlatformError` saying which index that was.
    """
    name = source.name
    document = raw.parse(f"manifest of {name}")
    chosen: Descriptor | None = None
    seen: set[Digest] = {raw.digest}
    depth = 0
    while isinstance(document, Index):
        depth += 1
        if depth > MAX_INDEX_DEPTH:
            raise ManifestError(f"index of {name} nests more than {MAX_INDEX_DEPTH} levels deep")
        try:
            entry = select_platform(document, platform)
        except PlatformError as exc:
            if chosen is None:
                raise
            raise PlatformError(
                f"the index of {name} lists {raw.digest} for {chosen.platform}, but that is an "
                f"index too, and {exc}",
                exc.available,
            ) from None
        if entry.digest in seen:
            raise ManifestError(f"index of {name} refers to itself (cycle at {entry.digest})")
        seen.add(entry.digest)
        chosen = chosen or entry
        raw = source.manifest(entry)
        document = raw.parse(f"manifest {entry.digest} of {name}")
    return raw, document, chosen


def raise_platform_mismatch(name: str, actual: Platform, wanted: Platform) -> None:
    """Raise the :class:`PlatformError` for a single-platform base of the wrong platform."""
    raise PlatformError(
        f"base image {name} is a single-platform image for {actual}, not {wanted}; "
        f"pass --platform {actual} or choose a base built for {wanted}",
        [str(actual)],
    )
