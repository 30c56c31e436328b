"""The checks around writing an image: the runtime-closure check before anything is written,
the refusal of an SBOM or signature with nowhere to go, and, after the image is written, its
SBOMs attached and its signatures pushed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagesmith.artifacts.referrers import Attached, attach
from imagesmith.artifacts.sbom import (
    SBOM_FILENAMES,
    SBOM_MEDIA_TYPES,
    SbomFormat,
    SbomImage,
    render_sbom,
    sbom_packages,
)
from imagesmith.artifacts.signing import Signed, sign_image
from imagesmith.errors import UsageError
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import BaseImage, Image
from imagesmith.oci.model import (
    Descriptor,
)
from imagesmith.oci.references import Reference
from imagesmith.pipeline.assemble import _created
from imagesmith.pipeline.closure import ClosureReport, check_closure, closure_gate
from imagesmith.pipeline.results import BuildOptions, StackLayer
from imagesmith.progress import ProgressCallback
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.transports.locations import (
    Location,
)
from imagesmith.transports.registry import RegistryLocation, RemoteOrigin


@dataclass(frozen=True)
class BuildContext:
    """One build call's shared state, which every step of the skeleton uses."""

    pool: RegistryPool
    cache: BlobCache
    options: BuildOptions
    progress: ProgressCallback


def check_images(
    run: BuildContext,
    images: Sequence[tuple[Image, Sequence[StackLayer]]],
    destinations: Sequence[Location],
) -> list[ClosureReport | None]:
    """Before anything is written: an SBOM or signature with nowhere to go refused (see
    :func:`check_trust_destinations`), then the runtime-closure check of each image (with its
    package layers) as ``options.check`` asks (None when off); with ``error`` a finding raises
    :class:`~imagesmith.pipeline.closure.ClosureError` before anything is written. Remote base layers
    it reads are kept in the cache when a destination will need their bytes (anything but a
    registry pushed to by mount or HEAD, see :func:`write_destinations`)."""
    check_trust_destinations(run.options, destinations)
    if run.options.check == "off":
        return [None] * len(images)
    memo: dict[tuple[Digest, bool], Any] = {}
    reports: list[ClosureReport | None] = []
    for image, layers in images:
        packages = {layer.layer.digest: layer.label for layer in layers}
        origins = [layer.origin for layer in image.layers]
        registries = {origin.registry for origin in origins if isinstance(origin, RemoteOrigin)}
        keep = any(
            not (isinstance(d, RegistryLocation) and d.reference.registry in registries) for d in destinations
        )
        report = check_closure(
            image,
            packages,
            pool=run.pool,
            cache=run.cache,
            jobs=run.options.jobs,
            progress=run.progress,
            memo=memo,
            keep_in_cache=keep,
        )
        closure_gate(report, run.options.check)
        reports.append(report)
    return reports


def check_trust_destinations(options: BuildOptions, destinations: Sequence[Location]) -> None:
    """Refuse, before anything is written, an SBOM or signature with nowhere to go."""
    if options.signing_key is not None and not any(isinstance(d, RegistryLocation) for d in destinations):
        raise UsageError("--sign signs an image in a registry: push it (--repo or --tag), not only --output")
    if options.sbom and not any(d.takes_referrers for d in destinations):
        raise UsageError("--sbom attaches the SBOM to the image: push it, or write an oci: layout")


def attach_and_sign(
    run: BuildContext,
    name: Reference | None,
    image: Image,
    digest: Digest,
    layers: Sequence[StackLayer],
    base: BaseImage,
    destinations: Sequence[Location],
    *,
    sign: bool = True,
) -> tuple[tuple[tuple[SbomFormat, bytes], ...], tuple[Attached, ...], tuple[Signed, ...]]:
    """After the image is written: its SBOMs attached to each registry or layout destination,
    then (``sign``) its signature pushed to each registry (see :mod:`imagesmith.artifacts.referrers`,
    :mod:`imagesmith.artifacts.signing`). Returns the SBOM documents, what was attached and signed."""
    options, pool, cache, progress = run.options, run.pool, run.cache, run.progress
    key = options.signing_key if sign else None
    if not options.sbom and key is None:
        return (), (), ()
    created = image.config.raw.get("created") or _created()
    manifest = image.manifest_bytes()
    subject = Descriptor(image.media_types.manifest, digest, len(manifest))
    # Each package with the digest of the layer it is in (a group's, when the budget grouped it).
    packages = sbom_packages(
        [(b.package, b.hash, str(layer.layer.digest)) for layer in layers for b in layer.packages]
    )
    shown = str(name) if name is not None else None
    described = SbomImage(shown, digest, str(image.config.platform), created, base.pinned, packages)
    sboms = tuple((fmt, render_sbom(described, fmt)) for fmt in dict.fromkeys(options.sbom))
    attached = tuple(
        attach(
            destination,
            subject,
            SBOM_MEDIA_TYPES[fmt],
            document,
            filename=SBOM_FILENAMES[fmt],
            pool=pool,
            cache=cache,
            created=created,
            progress=progress,
        )
        for destination in destinations
        if destination.takes_referrers
        for fmt, document in sboms
    )
    signed = tuple(
        sign_image(
            destination.reference, key, pool=pool, cache=cache, digest=subject.digest, progress=progress
        )
        for destination in destinations
        if key is not None and isinstance(destination, RegistryLocation)
    )
    return sboms, attached, signed
