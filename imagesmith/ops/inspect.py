"""``inspect``: what an image (or index) at a location is, read without its layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import choose_platform
from imagesmith.oci.model import (
    ImageConfig,
    Index,
    Manifest,
    Platform,
)
from imagesmith.oci.references import Reference
from imagesmith.registry.client import RegistryPool, borrowed_pool
from imagesmith.registry.transport import RegistryOptions
from imagesmith.transports.locations import (
    Location,
    as_location,
    open_source,
)

__all__ = [
    "InspectResult",
    "inspect",
]


@dataclass(frozen=True)
class InspectResult:
    """A manifest or index as stored (in a registry, layout or archive), with the config when
    it is an image. ``reference`` is None for a layout or archive; ``source`` names where it
    was read, ``raw`` holds the document's bytes exactly as stored."""

    reference: Reference | None
    digest: Digest
    media_type: str
    manifest: Manifest | Index
    config: ImageConfig | None = None
    platform_manifests: tuple[tuple[str, str], ...] = ()  # (platform, digest) of an index
    source: str = ""
    raw: bytes = field(default=b"", repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reference": str(self.reference) if self.reference is not None else self.source,
            "digest": self.digest,
            "mediaType": self.media_type,
        }
        if isinstance(self.manifest, Index):
            out["manifests"] = [d.to_json() for d in self.manifest.manifests]
            return out
        if self.manifest.artifact_type:
            out["artifactType"] = self.manifest.artifact_type
        out["layers"] = [d.to_json() for d in self.manifest.layers]
        out["annotations"] = dict(self.manifest.annotations or {})
        if self.config is not None:
            config = self.config
            out["platform"] = str(config.platform)
            out["created"] = config.raw.get("created")
            out["config"] = {
                "Env": list(config.env),
                "Entrypoint": config.inner("Entrypoint"),
                "Cmd": config.inner("Cmd"),
                "WorkingDir": config.inner("WorkingDir") or "",
                "Labels": config.labels,
            }
            out["diff_ids"] = [str(d) for d in config.diff_ids]
            out["history"] = [dict(h) for h in config.history]
        return out


def inspect(
    reference: str | Reference | Location,
    *,
    platform: Platform | None = None,
    registry: RegistryOptions | None = None,
    pool: RegistryPool | None = None,
) -> InspectResult:
    """Read a manifest (or index) and, for an image, its config.

    ``reference`` is a registry reference or any readable location (``oci:DIR:TAG``,
    ``docker-archive:PATH``). An index is shown as it is unless ``platform`` is given, in
    which case the matching image is inspected.
    """
    from imagesmith.oci.model import MAX_CONFIG_SIZE

    location = as_location(reference)
    with borrowed_pool(pool, registry) as pool, open_source(location, pool) as source:
        name = source.name
        raw = source.top()
        document = raw.parse(f"manifest of {name}")
        if isinstance(document, Index) and platform is not None:
            raw, document, _ = choose_platform(source, raw, platform)  # nested indexes followed
        ref, shown, digest = source.reference, str(location), raw.digest
        if isinstance(document, Index):
            entries = tuple(
                (str(d.platform) if d.platform else "-", str(d.digest)) for d in document.manifests
            )
            return InspectResult(
                ref,
                digest,
                document.media_type,
                document,
                platform_manifests=entries,
                source=shown,
                raw=raw.data,
            )
        if document.config.media_type not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
            # An artifact (such as an index tag payload): show the manifest without a config.
            return InspectResult(ref, digest, document.media_type, document, source=shown, raw=raw.data)
        data = source.read_blob(document.config, MAX_CONFIG_SIZE)
        config = ImageConfig.parse(data, f"config of {name}")
        config.check_layers(len(document.layers), f"config of {name}")
        return InspectResult(ref, digest, document.media_type, document, config, source=shown, raw=raw.data)
