"""Media types of the OCI and Docker v2 families, and which family a type belongs to.

An image never mixes families (Apptainer and cri-o reject mixtures): when the base image is
Docker v2 the whole result is Docker v2, otherwise OCI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from imagesmith.errors import UsageError

__all__ = [
    "DOCKER",
    "MANIFEST_ACCEPT",
    "OCI",
    "Family",
    "MediaTypes",
    "family_of",
    "is_index",
    "is_manifest",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

Family = Literal["oci", "docker"]
Compression = Literal["gzip", "zstd", "none"]

# Every manifest type we can read, sent as Accept on manifest requests.
MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)


@dataclass(frozen=True)
class MediaTypes:
    """The media types one family uses for each role."""

    family: Family
    manifest: str
    index: str
    config: str
    layer_gzip: str
    layer_tar: str
    layer_zstd: str | None

    def layer(self, compression: Compression) -> str:
        """The layer media type for a compression; Docker v2 has no zstd type."""
        if compression == "gzip":
            return self.layer_gzip
        if compression == "none":
            return self.layer_tar
        if self.layer_zstd is None:
            raise UsageError(
                "zstd layers need an OCI base image: the base is Docker v2, whose media "
                "types have no zstd layer; use --compression gzip"
            )
        return self.layer_zstd


OCI = MediaTypes("oci", OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER, OCI_LAYER_ZSTD)
DOCKER = MediaTypes(
    "docker", DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LAYER, None
)

_DOCKER_TYPES = {
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER,
    DOCKER_FOREIGN_LAYER,
}


def family_of(media_type: str) -> MediaTypes:
    """The family a manifest, index, config or layer media type belongs to."""
    return DOCKER if media_type in _DOCKER_TYPES else OCI


def is_index(media_type: str) -> bool:
    return media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST)


def is_manifest(media_type: str) -> bool:
    return media_type in (OCI_MANIFEST, DOCKER_MANIFEST)


def compression_of(media_type: str) -> Compression:
    """How a layer of this media type is compressed."""
    if media_type.endswith("+zstd"):
        return "zstd"
    if media_type.endswith(("+gzip", ".gzip")):
        return "gzip"
    return "none"
