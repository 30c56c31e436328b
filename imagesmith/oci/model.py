"""The image model: Platform, Descriptor, Manifest, Index and ImageConfig.

Frozen dataclasses with strict parsing (a malformed document raises :class:`ManifestError`
naming what is wrong) and canonical serialisation: the same value always gives the same
bytes, so the same inputs always give the same digests.

``ImageConfig`` keeps the whole JSON document, unknown fields included (Spack stores ``spec``
there), and offers typed accessors and copy-on-write updates.
"""

from __future__ import annotations

import copy
import json
import platform as _platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagesmith.errors import DigestFormatError, ManifestError, PlatformError, UsageError
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest

__all__ = [
    "EMPTY_CONFIG",
    "EMPTY_JSON",
    "MAX_MANIFEST_SIZE",
    "Descriptor",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "canonical_json",
    "parse_manifest_document",
    "platforms_of",
    "select_platform",
]

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
MAX_CONFIG_SIZE = 32 * 1024 * 1024

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64el": "ppc64le",
}


def canonical_json(value: Any) -> bytes:
    """Deterministic compact JSON: keys in insertion order, no whitespace, UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise ManifestError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not a JSON object")
    try:
        # JSON escapes can carry lone surrogates that no UTF-8 document can hold; refuse them
        # here rather than crash when the document is written out again.
        canonical_json(value)
    except UnicodeEncodeError:
        raise ManifestError(f"{what} contains an invalid Unicode escape (a lone surrogate)") from None
    return value


def _str(obj: Mapping[str, Any], key: str, what: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{what} has no {key!r}")
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{what}: {key!r} must be a string, not {type(value).__name__}")
    return value


def _str_map(obj: Mapping[str, Any], key: str, what: str) -> dict[str, str] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"{what}: {key!r} must map strings to strings")
    # An empty map means the same as none, and serialises as none.
    return dict(value) or None


@dataclass(frozen=True)
class Platform:
    """An OS/architecture pair with optional variant, OS version and features."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` (``linux/arm64/v8``); architecture aliases normalised."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
        return cls(parts[0].lower(), parts[1].lower(), parts[2].lower() if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        """The platform of the machine we run on (Linux naming, as containers use it)."""
        machine = _platform.machine().lower()
        arch = _ARCH_ALIASES.get(machine, machine)
        variant = None
        if machine.startswith("armv7"):
            variant = "v7"
        elif machine.startswith("armv6"):
            variant = "v6"
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, obj: Any, what: str = "platform") -> Platform:
        if not isinstance(obj, dict):
            raise ManifestError(f"{what} must be an object")
        features = obj.get("os.features") or ()
        if not isinstance(features, list | tuple) or not all(isinstance(f, str) for f in features):
            raise ManifestError(f"{what}: 'os.features' must be a list of strings")
        return cls(
            os=_str(obj, "os", what) or "",
            architecture=_str(obj, "architecture", what) or "",
            variant=_str(obj, "variant", what, required=False) or None,
            os_version=_str(obj, "os.version", what, required=False) or None,
            os_features=tuple(features),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out

    def normalized(self) -> Platform:
        """Aliases resolved and default variants made explicit (arm64 -> v8, arm -> v7)."""
        arch = _ARCH_ALIASES.get(self.architecture, self.architecture)
        variant = self.variant
        if arch == "arm64" and variant in (None, "8"):
            variant = "v8"
        elif arch == "arm" and variant is None:
            variant = "v7"
        elif arch == "arm" and variant in ("5", "6", "7"):
            variant = "v" + variant
        elif arch == "amd64" and variant == "v1":
            variant = None
        return Platform(self.os, arch, variant, self.os_version, self.os_features)

    def matches(self, wanted: Platform) -> bool:
        """Whether this platform (an index entry) satisfies ``wanted``.

        OS and architecture must be equal after normalisation; a variant must be equal when
        ``wanted`` names one; an ``os.version`` is compared only when ``wanted`` names one.
        """
        mine, other = self.normalized(), wanted.normalized()
        if (mine.os, mine.architecture) != (other.os, other.architecture):
            return False
        if wanted.variant is not None and mine.variant != other.variant:
            return False
        if other.variant is not None and wanted.variant is None and mine.variant != other.variant:
            # Default variants (arm64 -> v8) must match the entry's.
            return False
        return not (wanted.os_version and mine.os_version != wanted.os_version)

    def __str__(self) -> str:
        out = f"{self.os}/{self.architecture}"
        if self.variant:
            out += f"/{self.variant}"
        return out


@dataclass(frozen=True)
class Descriptor:
    """A typed, sized, content-addressed pointer to a blob or manifest."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] | None = None
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ManifestError(f"descriptor {self.digest} has a negative size {self.size}")

    @classmethod
    def from_json(cls, obj: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise ManifestError(f"{what} must be an object")
        media_type = _str(obj, "mediaType", what) or ""
        digest_text = _str(obj, "digest", what) or ""
        try:
            digest = Digest.parse(digest_text)
        except DigestFormatError as exc:
            raise ManifestError(f"{what}: {exc}") from None
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            raise ManifestError(f"{what} {digest_text}: 'size' must be an integer")
        if size < 0:
            raise ManifestError(f"{what} {digest_text} has a negative size {size}")
        urls = obj.get("urls") or ()
        if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
            raise ManifestError(f"{what} {digest_text}: 'urls' must be a list of strings")
        platform = obj.get("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=_str_map(obj, "annotations", what),
            platform=Platform.from_json(platform, f"{what} platform") if platform else None,
            urls=tuple(urls),
            artifact_type=_str(obj, "artifactType", what, required=False) or None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


# The OCI empty descriptor: the config of an artifact that has none (image-spec 1.1).
EMPTY_JSON = b"{}"
EMPTY_CONFIG = Descriptor(mt.OCI_EMPTY, Digest.of(EMPTY_JSON), len(EMPTY_JSON))


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker v2 schema 2): a config and ordered layers."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] | None = None
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @property
    def family(self) -> mt.MediaTypes:
        return mt.family_of(self.media_type)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], media_type: str) -> Manifest:
        what = "manifest"
        if obj.get("schemaVersion") != 2:
            raise ManifestError(f"{what} has schemaVersion {obj.get('schemaVersion')!r}, not 2")
        if "manifests" in obj:
            raise ManifestError(f"{what} has both 'layers' and 'manifests': ambiguous document")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ManifestError(f"{what} has no 'layers' list")
        subject = obj.get("subject")
        return cls(
            media_type=media_type,
            config=Descriptor.from_json(obj.get("config"), f"{what} config"),
            layers=tuple(Descriptor.from_json(x, f"{what} layer {i}") for i, x in enumerate(layers)),
            annotations=_str_map(obj, "annotations", what),
            subject=Descriptor.from_json(subject, f"{what} subject") if subject else None,
            artifact_type=_str(obj, "artifactType", what, required=False) or None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["config"] = self.config.to_json()
        out["layers"] = [layer.to_json() for layer in self.layers]
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker): per-platform manifests."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], media_type: str) -> Index:
        what = "index"
        if obj.get("schemaVersion") != 2:
            raise ManifestError(f"{what} has schemaVersion {obj.get('schemaVersion')!r}, not 2")
        if "layers" in obj or "config" in obj:
            raise ManifestError(f"{what} has both 'manifests' and 'layers': ambiguous document")
        entries = obj.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError(f"{what} has no 'manifests' list")
        return cls(
            media_type=media_type,
            manifests=tuple(Descriptor.from_json(x, f"{what} entry {i}") for i, x in enumerate(entries)),
            annotations=_str_map(obj, "annotations", what),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [d.to_json() for d in self.manifests],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


def parse_manifest_document(
    data: bytes, content_type: str | None = None, what: str = "manifest"
) -> Manifest | Index:
    """Parse manifest or index bytes; the declared and embedded media types must agree.

    ``content_type`` is the type the registry (or a descriptor) announced. A document whose
    ``mediaType`` differs from it, or that has both ``layers`` and ``manifests``, is refused.
    """
    if len(data) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"{what} is larger than {MAX_MANIFEST_SIZE} bytes: refused")
    obj = _load_json(data, what)
    embedded = obj.get("mediaType")
    if embedded is not None and not isinstance(embedded, str):
        raise ManifestError(f"{what}: 'mediaType' must be a string")
    declared = (content_type or "").split(";")[0].strip() or None
    if declared in ("application/json", "text/plain", "application/octet-stream"):
        declared = None
    if embedded and declared and embedded != declared:
        raise ManifestError(f"{what} declares mediaType {embedded!r} but was served as {declared!r}")
    media_type = embedded or declared
    if media_type is None:
        # OCI allows an absent mediaType; infer it from the shape.
        if "manifests" in obj and "layers" in obj:
            raise ManifestError(f"{what} has both 'layers' and 'manifests': ambiguous document")
        media_type = mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST
    if mt.is_index(media_type):
        return Index.from_json(obj, media_type)
    if mt.is_manifest(media_type):
        return Manifest.from_json(obj, media_type)
    if media_type == "application/vnd.docker.distribution.manifest.v1+prettyjws":
        raise ManifestError(f"{what} is a Docker schema 1 manifest, which is deprecated and unsupported")
    raise ManifestError(f"{what} has unsupported media type {media_type!r}")


@dataclass(frozen=True)
class HistoryEntry:
    """One ``history`` item of an image config."""

    created_by: str
    comment: str | None = None
    created: str | None = None
    empty_layer: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.created:
            out["created"] = self.created
        out["created_by"] = self.created_by
        if self.comment:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(frozen=True)
class ImageConfig:
    """An image config document; the raw JSON is kept so unknown fields survive."""

    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, data: bytes, what: str = "image config") -> ImageConfig:
        if len(data) > MAX_CONFIG_SIZE:
            raise ManifestError(f"{what} is larger than {MAX_CONFIG_SIZE} bytes: refused")
        config = cls(_load_json(data, what))
        config.validate(what)
        return config

    @classmethod
    def empty(cls, platform: Platform) -> ImageConfig:
        """A config for an image built from scratch."""
        raw: dict[str, Any] = {"architecture": platform.architecture, "os": platform.os}
        if platform.variant:
            raw["variant"] = platform.variant
        raw["config"] = {}
        raw["rootfs"] = {"type": "layers", "diff_ids": []}
        raw["history"] = []
        return cls(raw)

    def validate(self, what: str = "image config") -> None:
        """Check the fields imagesmith relies on; raise :class:`ManifestError` when wrong."""
        rootfs = self.raw.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise ManifestError(f"{what} has no rootfs.diff_ids list")
        for d in rootfs["diff_ids"]:
            try:
                Digest.parse(d)
            except DigestFormatError as exc:
                raise ManifestError(f"{what} rootfs.diff_ids: {exc}") from None
        inner = self.raw.get("config")
        if inner is not None and not isinstance(inner, dict):
            raise ManifestError(f"{what}: 'config' must be an object")
        env = (inner or {}).get("Env")
        if env is not None:
            if not isinstance(env, list):
                raise ManifestError(f"{what}: config.Env must be a list of KEY=VALUE strings")
            for entry in env:
                if not isinstance(entry, str) or "=" not in entry:
                    raise ManifestError(f"{what}: config.Env entry {entry!r} is not of the form KEY=VALUE")
        history = self.raw.get("history")
        if history is not None and not isinstance(history, list):
            raise ManifestError(f"{what}: 'history' must be a list")

    def check_layers(self, layer_count: int, what: str = "image config") -> None:
        """The config must describe exactly ``layer_count`` layers (diff_ids and history)."""
        if len(self.diff_ids) != layer_count:
            raise ManifestError(f"{what} lists {len(self.diff_ids)} diff_ids for {layer_count} layers")
        history = self.raw.get("history")
        if history:
            non_empty = sum(1 for h in history if not (isinstance(h, dict) and h.get("empty_layer")))
            if non_empty != layer_count:
                raise ManifestError(
                    f"{what} has {non_empty} non-empty history entries for {layer_count} layers"
                )

    # accessors -------------------------------------------------------------------------
    @property
    def os(self) -> str:
        return str(self.raw.get("os", ""))

    @property
    def architecture(self) -> str:
        return str(self.raw.get("architecture", ""))

    @property
    def platform(self) -> Platform:
        variant = self.raw.get("variant")
        return Platform(self.os, self.architecture, variant if isinstance(variant, str) else None)

    @property
    def diff_ids(self) -> tuple[Digest, ...]:
        return tuple(Digest.parse(d) for d in self.raw.get("rootfs", {}).get("diff_ids", []))

    @property
    def env(self) -> tuple[str, ...]:
        return tuple((self.raw.get("config") or {}).get("Env") or ())

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.raw.get("config") or {}).get("Labels") or {})

    @property
    def history(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(self.raw.get("history") or ())

    def inner(self, key: str) -> Any:
        """A field of the runtime ``config`` object (``Entrypoint``, ``Cmd``...)."""
        return (self.raw.get("config") or {}).get(key)

    # copy-on-write updates --------------------------------------------------------------
    def _copy(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.raw))

    def with_layers(self, diff_ids: Sequence[Digest], history: Sequence[HistoryEntry]) -> ImageConfig:
        """Append layers (their diff_ids) and history entries, one non-empty per layer."""
        raw = self._copy()
        rootfs = raw.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        rootfs.setdefault("type", "layers")
        rootfs.setdefault("diff_ids", [])
        # Tools break when history does not map 1:1 onto layers; synthesise entries for a
        # base that has none so the counts stay consistent.
        existing = raw.get("history")
        if not existing and rootfs["diff_ids"]:
            raw["history"] = [
                {"created_by": "imagesmith: base layer (no history)"} for _ in rootfs["diff_ids"]
            ]
        rootfs["diff_ids"].extend(str(d) for d in diff_ids)
        raw.setdefault("history", []).extend(h.to_json() for h in history)
        return ImageConfig(raw)

    def with_config_fields(self, **fields: Any) -> ImageConfig:
        """Set (or with ``None`` remove) fields of the runtime ``config`` object."""
        raw = self._copy()
        inner = raw.setdefault("config", {})
        if inner is None:
            inner = raw["config"] = {}
        for key, value in fields.items():
            if value is None:
                inner.pop(key, None)
            else:
                inner[key] = value
        return ImageConfig(raw)

    def with_labels(self, labels: Mapping[str, str]) -> ImageConfig:
        merged = {**self.labels, **labels}
        return self.with_config_fields(Labels=merged or None)

    def with_top_level(self, **fields: Any) -> ImageConfig:
        """Set top-level keys (``created``, ``author``, Spack's ``spec``...)."""
        raw = self._copy()
        for key, value in fields.items():
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = value
        return ImageConfig(raw)

    def to_bytes(self) -> bytes:
        return canonical_json(dict(self.raw))


def platforms_of(index: Index) -> list[str]:
    """The runnable platforms an index offers, for error messages (attestations left out)."""
    out = []
    for d in index.manifests:
        if d.platform is None:
            continue
        if d.platform.os == "unknown" and d.platform.architecture == "unknown":
            continue
        out.append(str(d.platform))
    return out


def select_platform(index: Index, wanted: Platform) -> Descriptor:
    """The index entry for ``wanted``; attestation entries (``unknown/unknown``) never match.

    When several entries match, the first one whose variant equals the wanted (or default)
    variant wins; an image manifest wins over a nested index, which is chosen only when no
    image matches (the caller follows it: :func:`imagesmith.oci.image.choose_platform`). No match
    raises :class:`PlatformError` listing what the index offers.
    """
    matching = [
        d
        for d in index.manifests
        if d.platform is not None
        and not (d.platform.os == "unknown" and d.platform.architecture == "unknown")
        and (mt.is_manifest(d.media_type) or mt.is_index(d.media_type))
        and d.platform.matches(wanted)
    ]
    candidates = [d for d in matching if mt.is_manifest(d.media_type)] or matching
    if not candidates:
        offered = platforms_of(index)
        raise PlatformError(
            f"no image for platform {wanted} in the index; it offers: "
            + (", ".join(offered) if offered else "no runnable platform")
            + " (choose one with --platform)",
            offered,
        )
    return candidates[0]
