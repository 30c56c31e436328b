"""Images as values, and where an image's documents and blobs are read from.

An :class:`Image` never holds layer bytes. Each :class:`Layer` carries its descriptor, its
diff_id and its origin: a repository of a registry (:class:`RemoteOrigin`), an OCI layout
directory (:class:`LayoutOrigin`), an archive (``archive.ArchiveOrigin``), or the local blob
cache (``None``: a layer imagesmith built). Bytes are read only when a sink really needs them.
Appending returns a new image; the manifest is computed from the value, so the same inputs
always give the same manifest bytes.

An :class:`ImageSource` reads an image's raw documents (manifest or index bytes exactly as
stored, so copies keep their digests), small blobs such as configs, and tells the origin of
every other blob. :func:`resolve_base` walks a source from its top document to the manifest
and config of one platform.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from . import mediatypes as mt
from .digests import Digest, VerifyingReader
from .errors import IntegrityError, LayerError, ManifestError, PlatformError
from .layout import OCILayout
from .model import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    HistoryEntry,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_manifest_document,
    select_platform,
)
from .references import Reference
from .registry.client import RegistryPool

__all__ = [
    "BaseImage",
    "BlobOrigin",
    "FileOrigin",
    "Image",
    "ImageSource",
    "Layer",
    "LayoutOrigin",
    "LayoutSource",
    "RawManifest",
    "Readable",
    "RegistrySource",
    "RemoteOrigin",
    "resolve_base",
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
class RemoteOrigin:
    """A blob that lives in ``registry/repository`` and is fetched only when read."""

    registry: str
    repository: str

    @property
    def local(self) -> bool:
        return False

    def open_blob(self, descriptor: Descriptor, pool: RegistryPool) -> AbstractContextManager[Readable]:
        """Stream the blob from the registry (its registries.conf mirrors first), verified while
        read (resumed if dropped)."""
        return pool.client(self.registry).open_blob(self.repository, descriptor, mirrors=True)

    def blob_file(self, descriptor: Descriptor) -> Path | None:
        return None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"


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


class RegistrySource:
    """An image in a registry; documents are fetched on demand, blobs stay remote."""

    def __init__(self, pool: RegistryPool, reference: Reference) -> None:
        self._pool = pool
        self._reference = reference

    @property
    def name(self) -> str:
        return self._reference.familiar()

    @property
    def reference(self) -> Reference | None:
        return self._reference

    def top(self) -> RawManifest:
        ref = self._reference
        response = self._pool.client(ref.registry).get_manifest(ref.repository, ref.identifier, mirrors=True)
        return RawManifest(response.data, response.media_type, response.digest)

    def manifest(self, descriptor: Descriptor) -> RawManifest:
        ref = self._reference
        client = self._pool.client(ref.registry)
        response = client.get_manifest(ref.repository, str(descriptor.digest), mirrors=True)
        return RawManifest(response.data, response.media_type or descriptor.media_type, response.digest)

    def read_blob(self, descriptor: Descriptor, max_size: int) -> bytes:
        ref = self._reference
        client = self._pool.client(ref.registry)
        return client.get_blob_bytes(ref.repository, descriptor, max_size, mirrors=True)

    def origin(self, descriptor: Descriptor) -> BlobOrigin:
        return RemoteOrigin(self._reference.registry, self._reference.repository)


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


def resolve_base(
    pool: RegistryPool | None, reference: Reference | ImageSource, platform: Platform
) -> BaseImage:
    """Read the manifest (choosing ``platform`` from an index) and the config of a base image.

    ``reference`` is a registry reference (read through ``pool``) or any :class:`ImageSource`
    (an OCI layout or an archive needs no pool at all). Only the manifest and config are
    read; the layers stay where they are and are represented by their origin.
    """
    if isinstance(reference, Reference):
        if pool is None:
            raise ValueError("resolve_base needs a RegistryPool to read a registry reference")
        source: ImageSource = RegistrySource(pool, reference)
    else:
        source = reference
    name = source.name
    top = source.top()
    raw, manifest, entry = choose_platform(source, top, platform)
    index_digest = top.digest if entry is not None else None
    digest = raw.digest
    config_data = source.read_blob(manifest.config, MAX_CONFIG_SIZE)
    config = ImageConfig.parse(config_data, f"config of {name}")
    config.check_layers(len(manifest.layers), f"config of {name}")
    if index_digest is None and config.os and config.architecture:
        actual = config.platform
        if not actual.matches(platform):
            raise_platform_mismatch(name, actual, platform)
    layers = tuple(
        Layer(descriptor, diff_id, source.origin(descriptor))
        for descriptor, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
    )
    family = mt.family_of(manifest.media_type)
    image = Image(family, config, layers)
    return BaseImage(source.reference, digest, index_digest, image, manifest, name)


def choose_platform(
    source: ImageSource, raw: RawManifest, platform: Platform
) -> tuple[RawManifest, Manifest, Descriptor | None]:
    """The image manifest for ``platform`` that ``raw`` leads to (raw and parsed), and the entry
    chosen in ``raw``.

    ``raw`` that is an image manifest is returned as it is (with no entry). In an index, the
    entry for ``platform`` is chosen (:func:`~imagesmith.model.select_platform`) and, when
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
                f"index too, and {exc}", exc.available,
            ) from None  # fmt: skip
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
