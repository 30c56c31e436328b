"""Smoke tests proving the real-server fixtures in conftest.py work."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import platform
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import BASIC_USERS, TOKEN_USERS, need_tool
from servers import (
    DEBIAN_PATH,
    DistributionRegistry,
    Podman,
    TokenIssuer,
    docker_sdk_run,
    is_static_elf,
    sha256_digest,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_PATH = "/usr/local/bin:/usr/bin:/bin"


def tar_layer(rootfs: Path) -> bytes:
    """Uncompressed, reproducible tar of ``rootfs`` (root-owned, mtime 0, sorted)."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(rootfs.iterdir()):
            tar.add(entry, arcname=entry.name, filter=normalise)
    return buf.getvalue()


def upload_blob(reg: DistributionRegistry, repo: str, data: bytes, headers: dict[str, str]) -> str:
    """Monolithic upload (POST then PUT ?digest=); returns the digest."""
    digest = sha256_digest(data)
    post = requests.post(
        f"{reg.url}/v2/{repo}/blobs/uploads/", headers=headers, verify=reg.verify, timeout=30
    )
    assert post.status_code == 202, post.text
    location = requests.compat.urljoin(reg.url, post.headers["Location"])
    put = requests.put(
        location,
        params={"digest": digest},
        data=data,
        headers={**headers, "Content-Type": "application/octet-stream"},
        verify=reg.verify,
        timeout=30,
    )
    assert put.status_code == 201, put.text
    assert put.headers["Docker-Content-Digest"] == digest
    return digest


def push_busybox_image(reg: DistributionRegistry, repo: str, tag: str, rootfs: Path) -> str:
    """Push a one-layer OCI image of ``rootfs``; returns the manifest digest."""
    raw = tar_layer(rootfs)
    layer = gzip.compress(raw, mtime=0)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": [f"PATH={IMAGE_PATH}"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(raw)]},
        }
    ).encode()
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": upload_blob(reg, repo, config, {}),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": upload_blob(reg, repo, layer, {}),
                "size": len(layer),
            }
        ],
    }
    body = json.dumps(manifest).encode()
    r = requests.put(
        f"{reg.url}/v2/{repo}/manifests/{tag}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
        verify=reg.verify,
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return sha256_digest(body)


def fetch_token(issuer: TokenIssuer, *scopes: str, auth: tuple[str, str] | None = None) -> requests.Response:
    return requests.get(
        issuer.realm, params={"service": issuer.service, "scope": list(scopes)}, auth=auth, timeout=10
    )


# ------------------------------------------------------------------ unit-level


def test_need_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-xyz"):
        need_tool("no-such-tool-xyz")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-tool-xyz"):
        need_tool("no-such-tool-xyz")
    need_tool(sys.executable)  # present: no exception


def test_busybox_rootfs(busybox_dir: Path) -> None:
    assert is_static_elf(busybox_dir / "bin/busybox")
    assert os.readlink(busybox_dir / "bin/sh") == "busybox"
    assert (busybox_dir / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (busybox_dir / "usr/bin").is_dir()
    assert (busybox_dir / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert DEBIAN_PATH in (busybox_dir / "etc/profile").read_text()


# ------------------------------------------------------------------ registries


@pytest.mark.integration
def test_plain_registry(registry: DistributionRegistry) -> None:
    r = registry.get("/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert registry.url == f"http://{registry.host}"


@pytest.mark.integration
def test_tls_registry(tls_registry: DistributionRegistry) -> None:
    assert tls_registry.url.startswith("https://127.0.0.1:")
    assert tls_registry.ca_cert is not None
    assert tls_registry.get("/v2/", verify=str(tls_registry.ca_cert)).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        tls_registry.get("/v2/", verify=True)  # system CAs do not know the throwaway CA


@pytest.mark.integration
def test_basic_registry(basic_registry: DistributionRegistry) -> None:
    r = basic_registry.get("/v2/")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert basic_registry.get("/v2/", auth=("alice", "wrong")).status_code == 401
    user, password = next(iter(BASIC_USERS.items()))
    assert basic_registry.get("/v2/", auth=(user, password)).status_code == 200
    assert isinstance(basic_registry.catalog(auth=(user, password)), list)


@pytest.mark.integration
def test_token_registry_challenge_and_token(
    token_registry: DistributionRegistry, token_issuer: TokenIssuer
) -> None:
    r = token_registry.get("/v2/")
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="{token_issuer.realm}"')
    assert f'service="{token_issuer.service}"' in challenge

    token_issuer.reset()
    assert fetch_token(token_issuer, auth=("bob", "wrong")).status_code == 401
    reply = fetch_token(token_issuer, auth=("bob", TOKEN_USERS["bob"]))
    assert reply.status_code == 200
    body = reply.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == token_issuer.expires_in
    auth = {"Authorization": f"Bearer {body['token']}"}
    assert token_registry.get("/v2/", headers=auth).status_code == 200
    assert [(q.user, q.granted) for q in token_issuer.requests] == [("bob", False), ("bob", True)]
    assert token_issuer.request_count == 2

    # distribution allows 60 s of clock skew after "exp"
    for lifetime, status in ((-30, 200), (-120, 401)):
        stale = token_issuer.make_token([], expires_in=lifetime)
        assert token_registry.get("/v2/", headers={"Authorization": f"Bearer {stale}"}).status_code == status


@pytest.mark.integration
def test_token_registry_push_and_anonymous_pull_only(
    token_registry: DistributionRegistry, token_issuer: TokenIssuer
) -> None:
    repo, scope = "smoke/blobs", "repository:smoke/blobs:pull,push"
    anon = fetch_token(token_issuer, scope).json()["token"]
    payload = json.loads(base64.urlsafe_b64decode(anon.split(".")[1] + "=="))
    assert payload["access"] == [{"type": "repository", "name": repo, "actions": ["pull"]}]
    denied = requests.post(
        f"{token_registry.url}/v2/{repo}/blobs/uploads/",
        headers={"Authorization": f"Bearer {anon}"},
        timeout=10,
    )
    assert denied.status_code == 401
    challenge = denied.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge
    # distribution orders the actions randomly ("pull,push" or "push,pull")
    actions = re.search(r'scope="repository:smoke/blobs:([a-z,]+)"', challenge)
    assert actions and set(actions[1].split(",")) == {"pull", "push"}

    token = fetch_token(token_issuer, scope, auth=("bob", TOKEN_USERS["bob"])).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    digest = upload_blob(token_registry, repo, b"hello token registry\n", headers)
    head = requests.head(f"{token_registry.url}/v2/{repo}/blobs/{digest}", headers=headers, timeout=10)
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == digest


# ---------------------------------------------------------------------- podman


@pytest.fixture(scope="module")
def smoke_image(registry: DistributionRegistry, busybox_dir: Path) -> str:
    push_busybox_image(registry, "smoke", "latest", busybox_dir)
    assert "smoke" in registry.catalog() and registry.tags("smoke") == ["latest"]
    return f"{registry.host}/smoke:latest"


@pytest.mark.integration
@pytest.mark.slow
def test_podman_docker_cli_runs_image(podman: Podman, smoke_image: str) -> None:
    need_tool("docker")
    r = podman.docker("run", "--rm", smoke_image, "sh", "-c", "echo hello $PATH")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"hello {IMAGE_PATH}"


@pytest.mark.integration
@pytest.mark.slow
def test_podman_docker_sdk_runs_image(podman: Podman, smoke_image: str) -> None:
    out = docker_sdk_run(podman.docker_host, smoke_image, ["sh", "-lc", "echo sdk $PATH"])
    assert out.decode().strip() == f"sdk {DEBIAN_PATH}"  # login shell: /etc/profile resets PATH
