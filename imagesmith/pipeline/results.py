"""What a build is asked for and what it returns: :class:`BuildOptions` and the result values
(:class:`BuildResult`, :class:`MultiBuildResult`, :class:`ImportResult`, :class:`BuiltPackage`,
:class:`StackLayer`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagesmith.artifacts.referrers import Attached
from imagesmith.artifacts.sbom import (
    SbomFormat,
)
from imagesmith.artifacts.signing import Signed, SigningKey
from imagesmith.inputs.envmods import EnvModification
from imagesmith.inputs.packages import Package
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import BaseImage, BlobOrigin, Image
from imagesmith.oci.model import (
    Platform,
)
from imagesmith.oci.references import Reference
from imagesmith.pipeline.budget import DEFAULT_MAX_LAYERS
from imagesmith.pipeline.closure import CheckMode, ClosureReport
from imagesmith.tar.layer import LayerBlob
from imagesmith.transports.layout import LayoutLocation
from imagesmith.transports.locations import (
    Location,
)
from imagesmith.transports.registry import RegistryLocation

__all__ = [
    "BuildOptions",
    "BuildResult",
    "BuiltPackage",
    "ImportResult",
    "MultiBuildResult",
    "StackLayer",
]


@dataclass(frozen=True)
class BuildOptions:
    """Everything that shapes a build besides the base and the packages."""

    platform: Platform | None = None  # None: the machine's own
    compression: mt.Compression = "gzip"
    level: int | None = None
    env: Sequence[str] = ()  # KEY=VALUE, applied after every package's modifications
    entrypoint: Sequence[str] | None = None
    cmd: Sequence[str] | None = None
    workdir: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    profile_script: bool = False
    tag_template: str | None = None
    jobs: int = 4
    # Upload each new layer to the target repository while it is compressed (see overlap.py).
    overlap_upload: bool = True
    # The runtime-closure check (closure.py): "warn" reports, "error" fails before any write.
    check: CheckMode = "warn"
    # SBOMs attached to the image as OCI referrers (sbom.py, referrers.py), and the key that
    # signs it in its registry (signing.py).
    sbom: tuple[SbomFormat, ...] = ()
    signing_key: SigningKey | None = None
    # The most layers an image may have, base layers included (see budget.py).
    max_layers: int = DEFAULT_MAX_LAYERS


@dataclass(frozen=True)
class BuiltPackage:
    """A package turned into a layer, with its effective hash and environment changes.

    ``origin`` is where the layer's bytes come from: for a layer built into the blob cache, its
    input built again should the cached copy be lost or damaged by the time a destination reads
    it (see :class:`~imagesmith.pipeline.records.RebuildOrigin`); a Spack build-cache tarball used
    as is; a layer in a registry. ``spack_problem`` says why the layer of a Spack package is
    not one Spack can install from (then its image is no Spack build-cache entry).
    """

    package: Package
    layer: LayerBlob
    hash: str
    env: tuple[EnvModification, ...]
    origin: BlobOrigin | None = field(default=None, compare=False, repr=False)
    spack_problem: str | None = None


@dataclass(frozen=True)
class StackLayer:
    """One layer of an image: a package's own layer, or a group of several packages that the
    layer budget put into one layer (see :mod:`imagesmith.pipeline.budget`)."""

    layer: LayerBlob
    packages: tuple[BuiltPackage, ...]
    # Builds the layer again should its cached copy be lost before a destination reads it.
    origin: BlobOrigin | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """``name-version`` of the package, or of every package of a group, for messages."""
        return ", ".join(p.package.label for p in self.packages)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if len(self.packages) == 1:
            only = self.packages[0]
            out = {"package": only.package.name, "version": only.package.version, "hash": only.hash}
        out["packages"] = [
            {"package": p.package.name, "version": p.package.version, "hash": p.hash} for p in self.packages
        ]
        out.update(
            {"digest": str(self.layer.digest), "diff_id": str(self.layer.diff_id), "size": self.layer.size}
        )
        return out


# A group's layer as built, and how to build it again (see layerrecords.RebuildOrigin).
GroupLayer = tuple[LayerBlob, BlobOrigin]


def _single_layers(built: Sequence[BuiltPackage]) -> tuple[StackLayer, ...]:
    return tuple(StackLayer(p.layer, (p,), p.origin) for p in built)


class _Written:
    """Where a result went: ``reference`` (the name) and ``destinations`` (every location)."""

    reference: Reference | None
    destinations: tuple[Location, ...]

    @property
    def destination(self) -> str:
        return str(self.destinations[0]) if self.destinations else ""

    @property
    def pushed(self) -> bool:
        """Whether the image went to a registry."""
        return any(isinstance(d, RegistryLocation) for d in self.destinations)

    @property
    def tag(self) -> str:
        return _tag_of(self.reference, self.destinations)

    def _named_json(self, digest: str) -> dict[str, Any]:
        """The keys every result's JSON starts with: the name, the tag and the digest."""
        reference = str(self.reference) if self.reference is not None else None
        return {"reference": reference, "tag": self.tag, "digest": digest}


@dataclass(frozen=True)
class BuildResult(_Written):
    """What a build wrote: the name, the manifest digest, where it went, and the parts.

    ``reference`` is the image's name (the registry reference pushed to, or the name given
    to an archive or the daemon); None for an unnamed layout or archive output.
    ``destination`` is where the image was written (``REF``, ``oci:DIR:TAG``,
    ``docker-archive:PATH:NAME``, ``docker-daemon:NAME``), ``destinations`` all of them when
    the image went to several (an output and the daemon), and ``loaded`` what the daemon
    reported loading. ``packages`` are every package of the image, dependencies first;
    ``layers`` the image's package layers (one per package, unless the layer budget grouped
    some), bottom to top.
    """

    reference: Reference | None
    digest: Digest
    base: BaseImage
    image: Image
    packages: tuple[BuiltPackage, ...]
    destinations: tuple[Location, ...] = ()
    loaded: tuple[str, ...] = ()
    closure: ClosureReport | None = None
    sboms: tuple[tuple[SbomFormat, bytes], ...] = field(default=(), repr=False)
    attached: tuple[Attached, ...] = ()
    signed: tuple[Signed, ...] = ()
    layers: tuple[StackLayer, ...] = ()

    @property
    def spack(self) -> bool:
        """Whether the image is a Spack build-cache entry (Spack's config keys are in it)."""
        return "spec" in self.image.config.raw

    @property
    def notes(self) -> tuple[str, ...]:
        """What the user should know about the image: why a Spack package's image is not a
        Spack build-cache entry."""
        return _notes(self.packages, self.spack)

    def to_json(self) -> dict[str, Any]:
        return {
            **self._named_json(self.digest),
            "destinations": [str(d) for d in self.destinations],
            "loaded": list(self.loaded),
            "spack": self.spack,
            "notes": list(self.notes),
            **({"closure": self.closure.to_json()} if self.closure is not None else {}),
            **({"attached": [a.to_json() for a in self.attached]} if self.attached else {}),
            **({"signed": [s.to_json() for s in self.signed]} if self.signed else {}),
            "base": self.base.pinned,
            "layers": [layer.to_json() for layer in self.layers or _single_layers(self.packages)],
        }


_PROFILE_PROBLEM = "--profile-script puts a layer above the package, and Spack installs the last layer"


def _spack_entry(built: Sequence[BuiltPackage], options: BuildOptions) -> tuple[bool, str | None]:
    """Whether the image of the stack ``built`` is a Spack build-cache entry (Spack's tag and
    config keys), and otherwise, for a Spack package, why not."""
    top = built[-1]
    if top.package.spack is None:
        return False, None
    if top.spack_problem is not None:
        return False, top.spack_problem
    if options.profile_script:
        return False, _PROFILE_PROBLEM
    return True, None


def _notes(built: Sequence[BuiltPackage], spack: bool) -> tuple[str, ...]:
    if spack or not built or built[-1].package.spack is None:
        return ()
    top = built[-1]
    reason = top.spack_problem or _PROFILE_PROBLEM
    return (
        f"{top.package.label} is not a Spack build-cache entry (no .spack tag, no Spack config keys): "
        f"{reason}",
    )


def _tag_of(reference: Reference | None, destinations: Sequence[Location]) -> str:
    if reference is not None and reference.tag:
        return reference.tag
    for destination in destinations:
        if isinstance(destination, LayoutLocation) and destination.tag:
            return destination.tag
    return ""


@dataclass(frozen=True)
class MultiBuildResult(_Written):
    """What a multi-platform build wrote: an index naming one image per platform.

    ``digest`` and ``media_type`` are the index's (an OCI image index, or a Docker manifest
    list on a Docker-typed base); ``images`` the per-platform builds in the order the
    platforms were given, each with its own manifest ``digest`` (pushed by digest, not
    tagged) and ``platform``; ``reference`` and ``destinations`` as for :class:`BuildResult`.
    """

    reference: Reference | None
    digest: Digest
    media_type: str
    images: tuple[BuildResult, ...]
    platforms: tuple[Platform, ...]
    destinations: tuple[Location, ...] = ()
    signed: tuple[Signed, ...] = ()

    @property
    def notes(self) -> tuple[str, ...]:
        """What the user should know: a Spack package's index is no Spack build-cache entry."""
        top = self.images[0].packages[-1].package if self.images and self.images[0].packages else None
        if top is None or top.spack is None:
            return ()
        return (
            f"{top.label} is not a Spack build-cache entry (no .spack tag): Spack reads one image "
            "per tag, never a multi-platform index; push each platform's image to its own repository",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **self._named_json(self.digest),
            "mediaType": self.media_type,
            "notes": list(self.notes),
            "destinations": [str(d) for d in self.destinations],
            "platforms": [
                {"platform": str(platform), **image.to_json()}
                for platform, image in zip(self.platforms, self.images, strict=True)
            ],
            **({"signed": [s.to_json() for s in self.signed]} if self.signed else {}),
        }


@dataclass(frozen=True)
class ImportResult(_Written):
    """What ``import_rootfs`` wrote: the name (None for an unnamed layout or archive), the
    digest, where it went and the layer."""

    reference: Reference | None
    digest: Digest
    layer: LayerBlob
    platform: Platform
    destinations: tuple[Location, ...] = ()
    loaded: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            **self._named_json(self.digest),
            "destinations": [str(d) for d in self.destinations],
            "loaded": list(self.loaded),
            "platform": str(self.platform),
            "layer": str(self.layer.digest),
            "size": self.layer.size,
        }
