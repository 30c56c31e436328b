"""Artifacts attached to images: OCI 1.1 referrers (an SBOM, an attestation) and what is
attached to an image (including cosign-style signatures).

An attached artifact is an image manifest with an ``artifactType``, the OCI empty config, one
layer holding the payload and a ``subject`` naming the image's manifest (image-spec 1.1). It
is written as every image is: blobs first, the manifest last, by digest (through
:class:`~imagesmith.transports.registry.RegistrySink`, or into an OCI layout). Then it must be findable:

- a registry with the referrers API (``GET /v2/<name>/referrers/<digest>`` answers) lists it
  by itself;
- a registry without it (CNCF distribution 2.8 answers 404) gets the referrers tag schema:
  the tag ``sha256-<hex>`` of the subject holds an OCI index of the referrers, read, extended
  and put back (distribution-spec 1.1, "Referrers Tag Schema"). Two writers racing on that
  tag can lose an entry, as with every client of the schema; the next attach re-adds its own;
- an OCI layout lists the artifact in ``index.json``, where :meth:`OCILayout.referrers` (and
  ``imagesmith serve``'s referrers API) find it.

If the image is pushed but its referrer cannot be made findable (the registry refuses the tag)
the error says that the image itself is there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from imagesmith.errors import ManifestError, NotFoundError, RegistryError, UsageError
from imagesmith.jsonfields import JsonFields
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import RawManifest
from imagesmith.oci.model import (
    EMPTY_CONFIG,
    EMPTY_JSON,
    Descriptor,
    Index,
    Manifest,
    parse_manifest_document,
)
from imagesmith.oci.references import Reference
from imagesmith.progress import ProgressCallback, ProgressEvent, null_progress
from imagesmith.registry.client import ManifestResponse, RegistryClient, RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.store.layout import OCILayout
from imagesmith.transports.layout import LayoutLocation
from imagesmith.transports.locations import Location, as_location, open_source
from imagesmith.transports.registry import RegistryLocation, RegistrySink

__all__ = [
    "SIGNATURE_MEDIA_TYPE",
    "Attached",
    "Attachment",
    "artifact_manifest",
    "attach",
    "list_attachments",
    "manifest_if_exists",
    "referrers_tag",
    "signature_tag",
]

_TITLE = "org.opencontainers.image.title"
_CREATED = "org.opencontainers.image.created"
SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"

Via = Literal["referrers API", "referrers tag", "OCI layout"]


def referrers_tag(subject: Digest) -> str:
    """The referrers tag schema's tag for ``subject``: ``sha256-<hex>``."""
    return f"{subject.algorithm}-{subject.hex}"


def signature_tag(subject: Digest) -> str:
    """The sigstore attachment tag containers/image and cosign read: ``sha256-<hex>.sig``."""
    return f"{referrers_tag(subject)}.sig"


def manifest_if_exists(client: RegistryClient, repository: str, tag: str) -> ManifestResponse | None:
    """The manifest under ``tag``, or None when the registry has none there."""
    try:
        return client.get_manifest(repository, tag)
    except NotFoundError:
        return None


@dataclass(frozen=True)
class Attached(JsonFields):
    """An artifact attached to an image: its manifest digest, type, the subject and how a
    reader finds it (``via``; ``tag`` for the referrers tag schema)."""

    digest: Digest
    artifact_type: str
    subject: Digest
    via: Via
    tag: str | None = None


def artifact_manifest(
    subject: Descriptor, artifact_type: str, payload: bytes, *, filename: str, created: str | None = None
) -> tuple[RawManifest, Descriptor]:
    """The artifact manifest attaching ``payload`` (of media type ``artifact_type``) to
    ``subject``, and the payload's descriptor (named ``filename`` for ORAS-like tools)."""
    layer = Descriptor(artifact_type, Digest.of(payload), len(payload), annotations={_TITLE: filename})
    # On the manifest too: a referrers listing shows the manifest's annotations, not its layers'.
    annotations = {_TITLE: filename, **({_CREATED: created} if created else {})}
    manifest = Manifest(
        mt.OCI_MANIFEST,
        EMPTY_CONFIG,
        (layer,),
        annotations=annotations,
        subject=Descriptor(subject.media_type, subject.digest, subject.size),
        artifact_type=artifact_type,
    )
    data = manifest.to_bytes()
    return RawManifest(data, mt.OCI_MANIFEST, Digest.of(data)), layer


def _entry(raw: RawManifest, artifact_type: str, annotations: dict[str, str] | None) -> Descriptor:
    return Descriptor(
        raw.media_type,
        raw.digest,
        len(raw.data),
        annotations=annotations or None,
        artifact_type=artifact_type,
    )


def _attach_registry(
    reference: Reference,
    raw: RawManifest,
    blobs: list[tuple[Descriptor, bytes]],
    artifact_type: str,
    subject: Descriptor,
    annotations: dict[str, str] | None,
    pool: RegistryPool,
    cache: BlobCache,
    progress: ProgressCallback,
) -> Attached:
    sink = RegistrySink(reference.with_digest(subject.digest), pool=pool, cache=cache)
    for descriptor, data in blobs:
        sink.put_blob_bytes(descriptor, data, progress)
    sink.put_manifest(raw, top=False, platform=None, progress=progress)
    client = pool.client(reference.registry)
    if client.referrers(reference.repository, subject.digest) is not None:
        return Attached(raw.digest, artifact_type, subject.digest, "referrers API")
    tag = referrers_tag(subject.digest)
    existing = manifest_if_exists(client, reference.repository, tag)
    entries: list[Descriptor] = []
    index_annotations = None
    if existing is not None:
        document = parse_manifest_document(
            existing.data, existing.media_type, f"referrers tag {reference.name}:{tag}"
        )
        if not isinstance(document, Index):
            raise ManifestError(
                f"{reference.name}:{tag} holds a manifest, not the referrers index the tag schema "
                "keeps there: another tool uses the tag; remove it, or push to a registry with the "
                "referrers API"
            )
        entries = list(document.manifests)
        index_annotations = document.annotations
    if not any(e.digest == raw.digest for e in entries):
        entries.append(_entry(raw, artifact_type, annotations))
    data = Index(mt.OCI_INDEX, tuple(entries), index_annotations).to_bytes()
    tagged = RegistrySink(reference.with_tag(tag), pool=pool, cache=cache)
    tagged.put_manifest(
        RawManifest(data, mt.OCI_INDEX, Digest.of(data)), top=True, platform=None, progress=null_progress
    )  # the tag schema's bookkeeping: not the user's image
    return Attached(raw.digest, artifact_type, subject.digest, "referrers tag", tag)


def attach(
    location: str | Reference | Location,
    subject: Descriptor,
    artifact_type: str,
    payload: bytes,
    *,
    filename: str,
    pool: RegistryPool,
    cache: BlobCache,
    created: str | None = None,
    progress: ProgressCallback = null_progress,
) -> Attached:
    """Attach ``payload`` to the image ``subject`` stored at ``location`` (a registry
    repository or an OCI layout), so the referrers API or the tag schema lists it.

    A registry that refuses the referrers tag raises :class:`RegistryError` saying that the
    image itself is pushed and what to do.
    """
    target = as_location(location)
    raw, layer = artifact_manifest(subject, artifact_type, payload, filename=filename, created=created)
    annotations = {_TITLE: filename, **({_CREATED: created} if created else {})}
    blobs = [(EMPTY_CONFIG, EMPTY_JSON), (layer, payload)]
    if isinstance(target, LayoutLocation):
        layout = OCILayout(target.path)
        for _, data in blobs:
            layout.put_bytes(data)
        layout.add_manifest(raw.data, raw.media_type)
        progress(ProgressEvent("referrer-pushed", str(subject.digest), len(payload), str(raw.digest)))
        return Attached(raw.digest, artifact_type, subject.digest, "OCI layout")
    if not isinstance(target, RegistryLocation):
        raise UsageError(f"cannot attach artifacts to {target}: push to a registry or an oci: layout")
    reference = target.reference
    try:
        attached = _attach_registry(
            reference, raw, blobs, artifact_type, subject, annotations, pool, cache, progress
        )
    except RegistryError as exc:
        shown = f"{reference.name}@{subject.digest}"
        raise type(exc)(
            f"the image {shown} is pushed, but attaching its {artifact_type} artifact failed: {exc}; "
            "push again to a registry that accepts the referrers API or the sha256-<hex> tag",
            method=exc.method,
            url=exc.url,
            status=exc.status,
            codes=exc.codes,
        ) from None
    progress(ProgressEvent("referrer-pushed", str(subject.digest), len(payload), str(raw.digest)))
    return attached


@dataclass(frozen=True)
class Attachment(JsonFields):
    """Something attached to an image: a referrer (``artifactType``, annotations) or the
    sigstore signature tag (``kind`` ``signature``: its layers are the signatures)."""

    kind: Literal["referrer", "signature"]
    digest: Digest
    artifact_type: str
    size: int
    annotations: dict[str, str]
    via: str
    count: int = 1  # signatures in a signature manifest


def _from_index(data: bytes, what: str, via: str, artifact_type: str | None) -> list[Attachment]:
    document = parse_manifest_document(data, mt.OCI_INDEX, what)
    if not isinstance(document, Index):
        raise ManifestError(f"{what} is not an index")
    return [
        Attachment("referrer", d.digest, d.artifact_type or "", d.size, dict(d.annotations or {}), via)
        for d in document.manifests
        if artifact_type is None or d.artifact_type == artifact_type
    ]


def list_attachments(
    location: str | Reference | Location,
    *,
    pool: RegistryPool,
    artifact_type: str | None = None,
) -> tuple[Digest, list[Attachment]]:
    """What is attached to the image (or index) at ``location``: its referrers (the
    referrers API, else the ``sha256-<hex>`` tag; an OCI layout's ``index.json``) and its
    sigstore signatures (the ``sha256-<hex>.sig`` tag). Returns the subject's digest too."""
    target = as_location(location)
    with open_source(target, pool) as source:
        subject = source.top().digest
    if isinstance(target, LayoutLocation):
        layout = OCILayout(target.path)
        in_layout = [
            Attachment(
                "referrer",
                d.digest,
                d.artifact_type or "",
                d.size,
                dict(d.annotations or {}),
                "OCI layout",
            )
            for d in layout.referrers(subject)
            if artifact_type is None or d.artifact_type == artifact_type
        ]
        return subject, in_layout
    if not isinstance(target, RegistryLocation):
        raise UsageError(f"cannot list what is attached to {target}: use a registry or an oci: layout")
    reference = target.reference
    client = pool.client(reference.registry)
    attachments: list[Attachment] = []
    listed = client.referrers(reference.repository, subject, artifact_type)
    if listed is not None:
        attachments += _from_index(
            listed, f"referrers of {reference.name}@{subject}", "referrers API", artifact_type
        )
    else:
        tag = referrers_tag(subject)
        found = manifest_if_exists(client, reference.repository, tag)
        if found is not None:
            attachments += _from_index(found.data, f"{reference.name}:{tag}", f"tag {tag}", artifact_type)
    if artifact_type in (None, SIGNATURE_MEDIA_TYPE):
        tag = signature_tag(subject)
        signatures = manifest_if_exists(client, reference.repository, tag)
        if signatures is not None:
            try:
                layers = json.loads(signatures.data).get("layers") or []
            except (ValueError, AttributeError):
                layers = []
            attachments.append(
                Attachment(
                    "signature",
                    signatures.digest,
                    SIGNATURE_MEDIA_TYPE,
                    len(signatures.data),
                    {},
                    f"tag {tag}",
                    count=len(layers),
                )
            )
    return subject, attachments
