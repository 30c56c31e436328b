"""Signatures podman, skopeo and cri-o verify: sigstore "simple signing" with ECDSA P-256 keys.

The format is the one containers/image reads (``docker/docker_client.go``, ``signature/internal/
sigstore_payload.go``, ``internal/signature/sigstore.go``) and cosign writes:

- the signatures of the manifest ``sha256:<hex>`` live in the same repository under the tag
  ``sha256-<hex>.sig``, as an OCI image manifest (never an index) whose every layer is one
  signature: a payload blob of media type ``application/vnd.dev.cosign.simplesigning.v1+json``
  with the base64 signature in the layer's ``dev.cosignproject.cosign/signature`` annotation;
  its config is an OCI image config listing the layers' digests as ``rootfs.diff_ids``, which
  is what containers/image writes itself;
- the payload is JSON ``{"critical": {"identity": {"docker-reference": REF}, "image":
  {"docker-manifest-digest": DIGEST}, "type": "cosign container image signature"},
  "optional": {"creator": ..., "timestamp": SECONDS}}``; a verifier checks the digest against
  the manifest and, by default (``matchRepoDigestOrExact``), REF against the reference pulled:
  so REF is ``registry/repository:tag`` as signed, or ``registry/repository@digest`` when signed
  by digest;
- the signature is ECDSA with SHA-256 over the payload bytes, ASN.1 DER, verified with the
  public key in PEM (SubjectPublicKeyInfo) named by ``keyPath`` in a ``sigstoreSigned`` policy.

Signing again with another key adds a layer; the same signature twice is not added twice.
Keys: :func:`generate_key` writes a PKCS#8 private key (encrypted with a password, when one is
given) and the public key; private key material is never printed, logged or put in an error
message, and :class:`SigningKey`'s ``repr`` shows none of it.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imagesmith._version import __version__
from imagesmith.artifacts.referrers import SIGNATURE_MEDIA_TYPE, manifest_if_exists, signature_tag
from imagesmith.errors import ManifestError, NotFoundError, UsageError
from imagesmith.jsonfields import JsonFields
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import RawManifest
from imagesmith.oci.model import (
    MAX_CONFIG_SIZE,
    Descriptor,
    Index,
    Manifest,
    canonical_json,
    parse_manifest_document,
)
from imagesmith.oci.references import Reference
from imagesmith.progress import ProgressCallback, ProgressEvent, null_progress
from imagesmith.registry.client import RegistryClient, RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.transports.registry import RegistrySink

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "KEY_PASSWORD_ENV",
    "SIGNATURE_ANNOTATION",
    "SIGNATURE_MEDIA_TYPE",
    "KeyPasswordNeeded",
    "Signed",
    "SigningKey",
    "generate_key",
    "key_is_encrypted",
    "load_signing_key",
    "sign_image",
    "sign_reference",
    "signature_identity",
    "signature_payload",
]

KEY_PASSWORD_ENV = "IMAGESMITH_KEY_PASSWORD"  # noqa: S105 - the name of a variable
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_COSIGN_PEM = b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"
_PUBLIC_PEM = b"-----BEGIN PUBLIC KEY-----"
MAX_KEY_FILE = 64 << 10


class KeyPasswordNeeded(UsageError):
    """The private key is encrypted and no password was given."""


@dataclass(frozen=True)
class SigningKey:
    """An ECDSA P-256 private key, loaded. Its ``repr`` names the file, never the key."""

    source: str
    _key: ec.EllipticCurvePrivateKey = field(repr=False)

    def sign(self, data: bytes) -> bytes:
        """The ASN.1 DER ECDSA-SHA256 signature of ``data``."""
        # cryptography is imported where it is used: a build that signs nothing never loads it.
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_pem(self) -> bytes:
        """The public key in PEM (SubjectPublicKeyInfo), as ``policy.json``'s keyPath reads it."""
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise UsageError(f"{path} exists: keygen never overwrites a key; choose another name") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate_key(private: str | Path, public: str | Path, password: str | None = None) -> None:
    """Write a new ECDSA P-256 key pair: the private key as PKCS#8 PEM (mode 0600, encrypted
    when ``password`` is given) and the public key as PEM. Existing files are never replaced."""
    private, public = Path(private), Path(public)
    for path in (private, public):
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path} exists: keygen never overwrites a key; choose another name")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode("utf-8"))
        if password
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    _write_new(private, pem, 0o600)
    try:
        _write_new(public, SigningKey(str(private), key).public_pem(), 0o644)
    except BaseException:
        private.unlink(missing_ok=True)
        raise


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the key {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise UsageError(f"{path} is larger than {MAX_KEY_FILE} bytes: not a private key file")
    return data


def key_is_encrypted(path: str | Path) -> bool:
    """Whether the PEM private key at ``path`` needs a password."""
    return _ENCRYPTED_PEM in _read_key_file(Path(path))


def load_signing_key(path: str | Path, password: str | None = None) -> SigningKey:
    """Load the ECDSA P-256 private key at ``path`` (PEM, PKCS#8 or SEC1, encrypted or not).

    A file that is not a PEM private key, a public key, a key of another type or curve, an
    encrypted key without a password (:class:`KeyPasswordNeeded`) or with the wrong one each
    raise :class:`UsageError` in one line naming the file and what to do.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    data = _read_key_file(path)
    if _COSIGN_PEM in data:
        raise UsageError(
            f"{path} is in cosign's own encrypted format, which imagesmith does not read: create a key "
            "with `imagesmith keygen`, or export yours as PKCS#8 PEM"
        )
    if _PUBLIC_PEM in data and b"PRIVATE KEY-----" not in data:
        raise UsageError(f"{path} is a public key: sign with the private key (the public one verifies)")
    if b"PRIVATE KEY-----" not in data:
        raise UsageError(f"{path} is not a PEM private key: create one with `imagesmith keygen`")
    encrypted = _ENCRYPTED_PEM in data
    if encrypted and not password:
        raise KeyPasswordNeeded(
            f"{path} is encrypted: give its password in {KEY_PASSWORD_ENV} (or on the terminal's prompt)"
        )
    try:
        secret = password.encode("utf-8") if encrypted and password else None
        key = serialization.load_pem_private_key(data, secret)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # cryptography's messages can quote the input: never show them.
        if encrypted:
            raise UsageError(f"cannot decrypt {path}: wrong password ({KEY_PASSWORD_ENV})") from None
        raise UsageError(f"{path} is not a readable PEM private key: use `imagesmith keygen`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
        raise UsageError(
            f"{path} holds a {kind or 'non-EC'} key: sigstore signatures here use ECDSA P-256 keys "
            "(`imagesmith keygen` makes one)"
        )
    if not isinstance(key.curve, ec.SECP256R1):
        raise UsageError(f"{path} is an ECDSA key on {key.curve.name}, not P-256: use `imagesmith keygen`")
    return SigningKey(str(path), key)


def signature_identity(reference: Reference, digest: Digest) -> str:
    """The ``docker-reference`` a signature of ``reference`` carries: ``registry/repo:tag``, or
    ``registry/repo@digest`` when signed by digest (what ``matchRepoDigestOrExact`` accepts)."""
    if reference.tag is not None:
        return f"{reference.name}:{reference.tag}"
    return f"{reference.name}@{digest}"


def signature_payload(digest: Digest, identity: str, *, timestamp: int | None = None) -> bytes:
    """The simple-signing payload for the manifest ``digest`` signed as ``identity``."""
    document = {
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": str(digest)},
            "type": SIGNATURE_TYPE,
        },
        "optional": {
            "creator": f"imagesmith {__version__}",
            "timestamp": int(time.time()) if timestamp is None else timestamp,
        },
    }
    return canonical_json(document)


@dataclass(frozen=True)
class Signed(JsonFields):
    """What :func:`sign_image` wrote: the image signed (its manifest digest and the identity
    signed), the signature tag and the digest of the signature manifest now under it."""

    reference: Reference
    digest: Digest
    identity: str
    tag: str
    signatures: Digest
    added: bool


def _signature_config(diff_ids: list[str]) -> bytes:
    # An OCI image config as containers/image's putSignaturesToSigstoreAttachments writes it.
    return canonical_json(
        {"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    )


def _existing(
    client: RegistryClient, repository: str, tag: str, shown: str
) -> tuple[list[Descriptor], list[str]]:
    """The signature layers (and their diff_ids) already under ``tag``, if any."""
    found = manifest_if_exists(client, repository, tag)
    if found is None:
        return [], []
    document = parse_manifest_document(found.data, found.media_type, f"signatures {shown}")
    if not isinstance(document, Manifest) or document.media_type != mt.OCI_MANIFEST:
        raise ManifestError(
            f"{shown} is not an OCI image manifest of signatures: another tool uses the tag; remove it first"
        )
    config = json.loads(client.get_blob_bytes(repository, document.config, MAX_CONFIG_SIZE))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    if not isinstance(diff_ids, list):
        diff_ids = [str(layer.digest) for layer in document.layers]
    return list(document.layers), [str(d) for d in diff_ids]


def _same(layer: Descriptor, payload: Descriptor, annotations: Mapping[str, str]) -> bool:
    blob = (payload.media_type, payload.digest, payload.size)
    same_blob = (layer.media_type, layer.digest, layer.size) == blob
    return same_blob and dict(layer.annotations or {}) == dict(annotations)


def sign_image(
    reference: str | Reference,
    key: SigningKey,
    *,
    pool: RegistryPool,
    cache: BlobCache,
    digest: Digest | None = None,
    progress: ProgressCallback = null_progress,
) -> Signed:
    """Sign the image (or index) ``reference`` names in its registry with ``key``.

    The manifest digest is asked of the registry (``digest`` skips that when the caller just
    pushed it); an image that does not exist raises :class:`NotFoundError` and writes nothing.
    The signature is added to the ``sha256-<hex>.sig`` manifest (payload blob and config
    first, the manifest last, through :class:`~imagesmith.transports.registry.RegistrySink`).
    """
    ref = reference if isinstance(reference, Reference) else Reference.parse(reference)
    client = pool.client(ref.registry)
    if digest is None:
        found = client.head_manifest(ref.repository, ref.identifier)
        if found is None:
            raise NotFoundError(f"image {ref} does not exist: nothing to sign (push it first)")
        digest = found.digest
    identity = signature_identity(ref, digest)
    payload = signature_payload(digest, identity)
    signature = base64.b64encode(key.sign(payload)).decode("ascii")
    annotations = {SIGNATURE_ANNOTATION: signature}
    layer = Descriptor(SIGNATURE_MEDIA_TYPE, Digest.of(payload), len(payload), annotations=annotations)
    tag = signature_tag(digest)
    layers, diff_ids = _existing(client, ref.repository, tag, f"{ref.name}:{tag}")
    added = not any(_same(existing, layer, annotations) for existing in layers)
    sink = RegistrySink(ref.with_tag(tag), pool=pool, cache=cache)
    if added:
        layers.append(layer)
        diff_ids.append(str(layer.digest))
        sink.put_blob_bytes(layer, payload, progress)
    config = _signature_config(diff_ids)
    config_descriptor = Descriptor(mt.OCI_CONFIG, Digest.of(config), len(config))
    sink.put_blob_bytes(config_descriptor, config, progress)
    data = Manifest(mt.OCI_MANIFEST, config_descriptor, tuple(layers)).to_bytes()
    raw = RawManifest(data, mt.OCI_MANIFEST, Digest.of(data))
    sink.put_manifest(raw, top=True, platform=None, progress=progress)
    progress(ProgressEvent("signed", str(ref), len(payload), tag))
    return Signed(ref, digest, identity, tag, raw.digest, added)


def sign_reference(
    reference: str | Reference,
    key: SigningKey,
    *,
    pool: RegistryPool,
    cache: BlobCache,
    progress: ProgressCallback = null_progress,
) -> list[Signed]:
    """Sign what ``reference`` names; for an index, also each manifest it lists, under the same
    identity: containers/image verifies the signature of the platform's image when it pulls
    one platform of an index, and the index's when it copies them all."""
    ref = reference if isinstance(reference, Reference) else Reference.parse(reference)
    client = pool.client(ref.registry)
    try:
        top = client.get_manifest(ref.repository, ref.identifier)
    except NotFoundError:
        raise NotFoundError(f"image {ref} does not exist: nothing to sign (push it first)") from None
    signed = [sign_image(ref, key, pool=pool, cache=cache, digest=top.digest, progress=progress)]
    document = parse_manifest_document(top.data, top.media_type, f"manifest of {ref}")
    if isinstance(document, Index):
        for entry in document.manifests:
            if entry.platform is not None and entry.platform.os == "unknown":
                continue  # an attestation, not a platform's image
            signed.append(
                sign_image(ref, key, pool=pool, cache=cache, digest=entry.digest, progress=progress)
            )
    return signed
