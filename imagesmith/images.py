"""Images as values: a config, ordered layers and where each layer's bytes can be read.

An :class:`Image` never holds layer bytes. Each :class:`Layer` carries its descriptor, its
diff_id and its origin: a repository of a registry (a base image's layer, fetched only if a
sink really needs the bytes) or the local blob cache (a layer imagesmith built). Appending
returns a new image; the manifest is computed from the value, so the same inputs always give
the same manifest bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from . import mediatypes as mt
from .digests import Digest
from .errors import ManifestError
from .model import (
    MAX_CONFIG_SIZE,
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

__all__ = ["BaseImage", "Image", "Layer", "RemoteOrigin", "resolve_base"]

MAX_INDEX_DEPTH = 4


@dataclass(frozen=True)
class RemoteOrigin:
    """A blob that lives in ``registry/repository`` and is fetched only when read."""

    registry: str
    repository: str


@dataclass(frozen=True)
class Layer:
    """One layer of an image: what the manifest says, its diff_id and where its bytes are."""

    descriptor: Descriptor
    diff_id: Digest
    origin: RemoteOrigin | None = None  # None: the blob is in the local cache

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
class BaseImage:
    """A base image resolved for one platform: its reference, digests and the image value."""

    reference: Reference
    digest: Digest  # of the platform's manifest
    index_digest: Digest | None  # of the index it was chosen from, if any
    image: Image
    manifest: Manifest

    @property
    def pinned(self) -> Reference:
        """The base reference pinned to the digest that was used (index digest if any)."""
        return self.reference.with_digest(self.index_digest or self.digest)


def resolve_base(pool: RegistryPool, reference: Reference, platform: Platform) -> BaseImage:
    """Fetch the manifest (choosing ``platform`` from an index) and the config of a base image.

    Only the manifest and config are downloaded; the layers stay where they are and are
    represented by their origin repository.
    """
    client = pool.client(reference.registry)
    response = client.get_manifest(reference.repository, reference.identifier)
    document = parse_manifest_document(response.data, response.media_type, f"manifest of {reference}")
    index_digest: Digest | None = None
    digest = response.digest
    depth = 0
    seen: set[Digest] = {digest}
    while isinstance(document, Index):
        depth += 1
        if depth > MAX_INDEX_DEPTH:
            raise ManifestError(f"index of {reference} nests more than {MAX_INDEX_DEPTH} levels deep")
        entry = select_platform(document, platform)
        if entry.digest in seen:
            raise ManifestError(f"index of {reference} refers to itself (cycle at {entry.digest})")
        seen.add(entry.digest)
        index_digest = index_digest or digest
        response = client.get_manifest(reference.repository, str(entry.digest))
        document = parse_manifest_document(
            response.data, response.media_type, f"manifest {entry.digest} of {reference}"
        )
        digest = response.digest
    manifest = document
    config_data = client.get_blob_bytes(reference.repository, manifest.config, MAX_CONFIG_SIZE)
    config = ImageConfig.parse(config_data, f"config of {reference}")
    config.check_layers(len(manifest.layers), f"config of {reference}")
    if index_digest is None and config.os and config.architecture:
        actual = config.platform
        if not actual.matches(platform):
            raise_platform_mismatch(reference, actual, platform)
    origin = RemoteOrigin(reference.registry, reference.repository)
    layers = tuple(
        Layer(descriptor, diff_id, origin)
        for descriptor, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
    )
    family = mt.family_of(manifest.media_type)
    image = Image(family, config, layers)
    return BaseImage(reference, digest, index_digest, image, manifest)


def raise_platform_mismatch(reference: Reference, actual: Platform, wanted: Platform) -> None:
    from .errors import PlatformError

    raise PlatformError(
        f"base image {reference.familiar()} is a single-platform image for {actual}, not {wanted}; "
        f"pass --platform {actual} or choose a base built for {wanted}",
        [str(actual)],
    )
