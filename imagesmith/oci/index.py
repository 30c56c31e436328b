"""Index documents from descriptors: deterministic bytes, platforms sorted, attestations last."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from imagesmith.errors import ManifestError, UsageError
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import (
    Descriptor,
    Index,
    Platform,
)

__all__ = [
    "index_document",
]


_FAMILY_NAMES: Mapping[str, str] = {"oci": "OCI", "docker": "Docker v2 (schema 2)"}


def _is_attestation(platform: Platform | None) -> bool:
    return platform is not None and platform.os == "unknown" and platform.architecture == "unknown"


def _platform_key(platform: Platform) -> tuple[str, str, str | None, str | None, tuple[str, ...]]:
    """What makes two platforms the same slot of an index: ``linux/arm64`` and
    ``linux/arm64/v8`` are one slot; Windows images of two ``os.version`` are two."""
    p = platform.normalized()
    return (p.os, p.architecture, p.variant, p.os_version, tuple(sorted(p.os_features)))


def index_document(
    children: Sequence[Descriptor],
    family: mt.Family,
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """The bytes of an index naming ``children`` in the order given.

    ``family`` ``"oci"`` gives an OCI image index, ``"docker"`` a Docker manifest list; both
    carry ``mediaType`` so no reader has to guess. Every child must be a manifest of that
    family (an index never mixes families: Apptainer and cri-o reject mixtures) and carry its
    platform (an index entry without one cannot be chosen by a runtime). The JSON is
    canonical (fixed key order, no whitespace), so the same children always give the same
    bytes and so the same digest. ``annotations`` need an OCI index: a Docker manifest list
    has none. Two children for one platform, or one manifest listed twice, are refused
    (:class:`ManifestError`): a runtime would pick one of them silently.
    """
    if family not in ("oci", "docker"):
        raise UsageError(f"unknown media-type family {family!r}: use 'oci' or 'docker'")
    types = mt.OCI if family == "oci" else mt.DOCKER
    if annotations and family != "oci":
        raise UsageError("annotations need an OCI image index: a Docker manifest list has none")
    if not children:
        raise ManifestError("an index needs at least one image")
    slots: dict[tuple[str, str, str | None, str | None, tuple[str, ...]], Descriptor] = {}
    seen: set[Digest] = set()
    for child in children:
        if child.media_type != types.manifest:
            raise ManifestError(
                f"manifest {child.digest} has media type {child.media_type!r}, but this "
                f"{_FAMILY_NAMES[family]} index lists {types.manifest!r} manifests only"
            )
        if child.platform is None:
            raise ManifestError(f"manifest {child.digest} has no platform: an index entry needs one")
        if child.digest in seen:
            raise ManifestError(f"manifest {child.digest} is listed twice")
        seen.add(child.digest)
        if _is_attestation(child.platform):
            continue  # several attestation manifests may share unknown/unknown
        key = _platform_key(child.platform)
        other = slots.get(key)
        if other is not None:
            raise ManifestError(
                f"manifests {other.digest} and {child.digest} are both for {child.platform}: "
                "an index holds one image per platform"
            )
        slots[key] = child
    return Index(types.index, tuple(children), dict(annotations) if annotations else None).to_bytes()
