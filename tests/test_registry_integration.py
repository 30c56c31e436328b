"""imagesmith.registry against the real CNCF registry (``docker-registry``): plain http,
TLS with a throwaway CA, Basic (htpasswd) and Bearer (token issuer) authentication."""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import BASIC_USERS, TOKEN_USERS
from servers import DistributionRegistry, TokenIssuer

from imagesmith.errors import AuthenticationError, IntegrityError, NotFoundError, RegistryUnreachableError
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Descriptor
from imagesmith.registry import CredentialStore, RegistryClient, RegistryOptions, RegistryPool

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def unique(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def auth_file(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def logged_in(
    registry: DistributionRegistry, tmp_path: Path, user: str, password: str, retries: int | None = None
) -> RegistryOptions:
    """Options for ``registry`` over http with ``user:password`` in ``tmp_path/config.json``
    (and ``retries`` when given)."""
    config = auth_file(tmp_path / "config.json", registry.host, user, password)
    opts = RegistryOptions(insecure=frozenset({registry.host}), auth_file=config)
    return opts if retries is None else replace(opts, retries=retries)


def as_the_user(
    registry: DistributionRegistry, tmp_path: Path, users: dict[str, str]
) -> tuple[str, RegistryOptions]:
    """The one user of ``users`` (BASIC_USERS, TOKEN_USERS) and ``logged_in`` options for it."""
    [(user, password)] = users.items()
    return user, logged_in(registry, tmp_path, user, password)


@dataclass(frozen=True)
class Pushed:
    manifest: bytes
    digest: Digest
    layer: Descriptor
    config: Descriptor


def push_image(client: RegistryClient, repo: str, tag: str, workdir: Path) -> Pushed:
    """Upload a random layer (from a file), a config and a manifest; return what was pushed."""
    layer_bytes = gzip.compress(os.urandom(64 * 1024), mtime=0)
    layer_path = workdir / f"layer-{uuid.uuid4().hex}.tgz"
    layer_path.write_bytes(layer_bytes)
    layer = Descriptor(OCI_LAYER, Digest.of(layer_bytes), len(layer_bytes))
    config_bytes = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(gzip.decompress(layer_bytes)))]},
        }
    ).encode()
    config = Descriptor(OCI_CONFIG, Digest.of(config_bytes), len(config_bytes))
    for desc, opener in ((layer, lambda: layer_path.open("rb")), (config, lambda: io.BytesIO(config_bytes))):
        if not client.blob_exists(repo, desc.digest):
            client.upload_blob(repo, desc.digest, desc.size, opener)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json()],
        }
    ).encode()
    digest = client.put_manifest(repo, tag, manifest, OCI_MANIFEST)
    return Pushed(manifest, digest, layer, config)


def plain(registry: DistributionRegistry, **options: object) -> RegistryClient:
    opts = RegistryOptions(insecure=frozenset({registry.host}), **options)  # type: ignore[arg-type]
    return RegistryClient(registry.host, opts, CredentialStore(environ={}))


# ------------------------------------------------------------------ plain http


def test_push_and_pull_roundtrip(registry: DistributionRegistry, tmp_path: Path) -> None:
    repo = unique("roundtrip")
    with plain(registry) as client:
        client.ping()
        pushed = push_image(client, repo, "v1", tmp_path)
        assert pushed.digest == Digest.of(pushed.manifest)

        got = client.get_manifest(repo, "v1")
        assert got.data == pushed.manifest
        assert got.media_type == OCI_MANIFEST
        assert got.digest == pushed.digest
        assert client.get_manifest(repo, str(pushed.digest)).data == pushed.manifest
        assert client.head_manifest(repo, "v1") == Descriptor(
            OCI_MANIFEST, pushed.digest, len(pushed.manifest)
        )
        assert client.head_manifest(repo, "nope") is None
        with pytest.raises(NotFoundError, match=f"manifest unknown: {registry.host}/{repo}:nope"):
            client.get_manifest(repo, "nope")

        assert client.blob_exists(repo, pushed.layer.digest)
        assert not client.blob_exists(repo, Digest.of(b"never pushed"))
        with client.open_blob(repo, pushed.layer) as reader:
            assert Digest.of(reader.read_all_chunks()) == pushed.layer.digest
        config = client.get_blob_bytes(repo, pushed.config, max_size=1 << 20)
        assert json.loads(config)["os"] == "linux"

        # The registry's bytes are checked against the descriptor we ask with.
        wrong = Descriptor(OCI_LAYER, pushed.config.digest, pushed.config.size + 1)
        with pytest.raises(IntegrityError), client.open_blob(repo, wrong) as reader:
            reader.read_all_chunks()

    # What we pushed is what the registry serves to others.
    assert (
        registry.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}).content == pushed.manifest
    )


def test_mount_between_repositories(registry: DistributionRegistry, tmp_path: Path) -> None:
    source, target = unique("mount-src"), unique("mount-dst")
    with plain(registry) as client:
        pushed = push_image(client, source, "v1", tmp_path)
        assert not client.blob_exists(target, pushed.layer.digest)
        assert client.mount_blob(target, pushed.layer.digest, source) is True
        assert client.blob_exists(target, pushed.layer.digest)
        # Unknown blob: the registry opens an upload instead (202); we cancel it.
        assert client.mount_blob(target, Digest.of(b"unknown blob"), source) is False


def test_tags_list_with_page_size(registry: DistributionRegistry, tmp_path: Path) -> None:
    repo = unique("tags")
    tags = ["t1", "t2", "t3", "t4", "t5"]
    with plain(registry) as client:
        pushed = push_image(client, repo, tags[0], tmp_path)
        for tag in tags[1:]:
            client.put_manifest(repo, tag, pushed.manifest, OCI_MANIFEST)
        # distribution 2.8 may answer in one page or several: either way all tags, once each.
        listed = list(client.list_tags(repo, page_size=2))
        assert sorted(listed) == tags
        assert sorted(client.list_tags(repo)) == tags
        with pytest.raises(NotFoundError, match="repository unknown"):
            list(client.list_tags(unique("missing")))


def test_plain_http_registry_needs_insecure(registry: DistributionRegistry) -> None:
    client = RegistryClient(registry.host, RegistryOptions(retries=0), CredentialStore(environ={}))
    with pytest.raises(RegistryUnreachableError, match=f"--insecure-registry {registry.host}"):
        client.ping()


# ------------------------------------------------------------------ TLS


def test_tls_with_ca_cert(tls_registry: DistributionRegistry, tmp_path: Path) -> None:
    assert tls_registry.ca_cert is not None
    opts = RegistryOptions(ca_cert=tls_registry.ca_cert)
    with RegistryClient(tls_registry.host, opts, CredentialStore(environ={})) as client:
        assert client.base_url.startswith("https://")
        repo = unique("tls")
        pushed = push_image(client, repo, "v1", tmp_path)
        assert client.get_manifest(repo, "v1").digest == pushed.digest


def test_tls_without_ca_cert_fails_with_a_hint(tls_registry: DistributionRegistry) -> None:
    client = RegistryClient(tls_registry.host, RegistryOptions(retries=0), CredentialStore(environ={}))
    with pytest.raises(RegistryUnreachableError, match="--ca-cert") as info:
        client.ping()
    assert tls_registry.host in str(info.value)
    # Never a silent fallback to plain http either: the https registry answers 400 to http.
    insecure = RegistryClient(
        tls_registry.host,
        RegistryOptions(retries=0, insecure=frozenset({tls_registry.host})),
        CredentialStore(environ={}),
    )
    with pytest.raises(Exception, match="https"):
        insecure.ping()


# ------------------------------------------------------------------ Basic auth


def test_basic_auth_push_with_auth_file(
    basic_registry: DistributionRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    [(user, password)] = BASIC_USERS.items()
    opts = logged_in(basic_registry, tmp_path, user, password)
    repo = unique("basic")
    with RegistryClient(basic_registry.host, opts) as client:
        pushed = push_image(client, repo, "v1", tmp_path)
        assert client.get_manifest(repo, "v1").digest == pushed.digest
        assert client.mount_blob(unique("basic-copy"), pushed.layer.digest, repo)
    assert password not in caplog.text
    assert base64.b64encode(f"{user}:{password}".encode()).decode() not in caplog.text


def test_basic_auth_wrong_password(basic_registry: DistributionRegistry, tmp_path: Path) -> None:
    [user] = BASIC_USERS
    sentinel = "wrong-S3NT1NEL-password"
    opts = logged_in(basic_registry, tmp_path, user, sentinel, retries=0)
    client = RegistryClient(basic_registry.host, opts)
    with pytest.raises(AuthenticationError, match=f"docker login {basic_registry.host}") as info:
        push_image(client, unique("basic-bad"), "v1", tmp_path)
    assert sentinel not in str(info.value)
    # No credentials at all.
    anonymous = plain(basic_registry)
    with pytest.raises(AuthenticationError, match="none were found"):
        anonymous.get_manifest("anything", "v1")


# ------------------------------------------------------------------ Bearer auth


def test_bearer_push_caches_tokens(
    token_issuer: TokenIssuer, token_registry: DistributionRegistry, tmp_path: Path
) -> None:
    user, opts = as_the_user(token_registry, tmp_path, TOKEN_USERS)
    repo = unique("bearer")
    token_issuer.reset()
    with RegistryPool(opts) as pool:
        client = pool.client(token_registry.host)
        pushed = push_image(client, repo, "v1", tmp_path)
        client.put_manifest(repo, "v2", pushed.manifest, OCI_MANIFEST)
        assert client.head_manifest(repo, "v1") is not None
        assert client.get_manifest(repo, "v2").digest == pushed.digest
        with client.open_blob(repo, pushed.layer) as reader:
            reader.read_all_chunks()
        assert sorted(client.list_tags(repo)) == ["v1", "v2"]
        assert pool.client(token_registry.host) is client
        # A dozen operations, one token: pull,push on the repository covers the reads.
        assert token_issuer.request_count <= 2
        assert all(r.user == user and r.granted for r in token_issuer.requests)
        # A mount needs pull on the source as well: one more token.
        target = unique("bearer-copy")
        assert client.mount_blob(target, pushed.layer.digest, repo)
        assert client.blob_exists(target, pushed.layer.digest)
        assert token_issuer.request_count <= 3
        scopes = {s for r in token_issuer.requests for s in r.scopes}
        assert f"repository:{repo}:pull,push" in scopes
        assert f"repository:{target}:pull,push" in scopes and f"repository:{repo}:pull" in scopes


def test_bearer_anonymous_pull_but_push_denied(
    token_issuer: TokenIssuer, token_registry: DistributionRegistry, tmp_path: Path
) -> None:
    _, opts = as_the_user(token_registry, tmp_path, TOKEN_USERS)
    repo = unique("bearer-anon")
    with RegistryClient(token_registry.host, opts) as owner:
        pushed = push_image(owner, repo, "v1", tmp_path)

    anonymous = plain(token_registry)
    token_issuer.reset()
    assert anonymous.get_manifest(repo, "v1").digest == pushed.digest
    assert anonymous.blob_exists(repo, pushed.layer.digest)
    assert token_issuer.request_count == 1
    assert token_issuer.requests[0].user is None
    with pytest.raises(AuthenticationError) as info:
        anonymous.upload_blob(repo, Digest.of(b"x"), 1, lambda: io.BytesIO(b"x"))
    assert token_registry.host in str(info.value)
    # Denied after one fresh token: no retry loop against the issuer.
    assert token_issuer.request_count == 2


def test_bearer_wrong_password(
    token_issuer: TokenIssuer, token_registry: DistributionRegistry, tmp_path: Path
) -> None:
    [user] = TOKEN_USERS
    sentinel = "wrong-S3NT1NEL-token-password"
    opts = logged_in(token_registry, tmp_path, user, sentinel, retries=0)
    with pytest.raises(AuthenticationError, match="getting a token") as info:
        RegistryClient(token_registry.host, opts).get_manifest("some/repo", "v1")
    assert sentinel not in str(info.value)
