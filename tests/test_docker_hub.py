"""The Docker Hub code path, replayed: Docker Hub is unreachable from these machines.

The exchanges below follow what registry-1.docker.io and auth.docker.io answer for
``ubuntu:23.04``: an anonymous Bearer challenge naming ``registry.docker.io``, a token from
``auth.docker.io``, an OCI index whose attestation entries are ``unknown/unknown``, and blob
GETs answered with a 307 to a CDN host. A requests adapter mounted on the real transport
plays the servers; reference normalisation, auth, platform choice and redirect policy all
run for real above it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.response import HTTPResponse

from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Platform
from imagesmith.oci.references import Reference
from imagesmith.registry.client import RegistryPool
from imagesmith.registry.credentials import CredentialStore
from imagesmith.registry.transport import RegistryOptions, Transport
from imagesmith.transports.locations import resolve_base

HUB = "https://registry-1.docker.io"
CDN = "https://production.cloudflare.docker.com"
CHALLENGE = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull"'


@dataclass
class Recorded:
    method: str
    url: str
    headers: Mapping[str, str]


@dataclass
class HubReplay(BaseAdapter):
    """Answers like Docker Hub for library/ubuntu; records every request it sees."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    seen: list[Recorded] = field(default_factory=list)
    token: str = "hub-token-0123456789"

    def __post_init__(self) -> None:
        super().__init__()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        assert request.url is not None and request.method is not None
        self.seen.append(Recorded(request.method, request.url, dict(request.headers)))
        parts = urlsplit(request.url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin == "https://auth.docker.io" and parts.path == "/token":
            query = parse_qs(parts.query)
            assert query["service"] == ["registry.docker.io"]
            assert "repository:library/ubuntu:pull" in query["scope"]
            body = {
                "token": self.token,
                "access_token": self.token,
                "expires_in": 300,
                "issued_at": "2026-11-24T00:00:00Z",
            }
            return self._response(
                request, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
        if origin == CDN:
            digest = parts.path.rsplit("/", 2)[-2]
            return self._response(request, 200, self.blobs[f"sha256:{digest}"], {})
        assert origin == HUB, request.url
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            error = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            return self._response(
                request,
                401,
                json.dumps(error).encode(),
                {"WWW-Authenticate": CHALLENGE, "Content-Type": "application/json"},
            )
        path = parts.path
        prefix = "/v2/library/ubuntu/"
        assert path.startswith(prefix), path
        kind, _, ref = path[len(prefix) :].partition("/")
        if kind == "manifests":
            media_type, data = self.manifests[ref]
            headers = {"Content-Type": media_type, "Docker-Content-Digest": str(Digest.of(data))}
            return self._response(request, 200, b"" if request.method == "HEAD" else data, headers)
        if kind == "blobs":
            hexpart = ref.split(":")[1]
            blob_path = f"/registry-v2/docker/registry/v2/blobs/sha256/{hexpart[:2]}/{hexpart}/data"
            location = f"{CDN}{blob_path}?verify=1&sig=x"
            return self._response(request, 307, b"", {"Location": location})
        raise AssertionError(path)

    @staticmethod
    def _response(
        request: requests.PreparedRequest, status: int, body: bytes, headers: Mapping[str, str]
    ) -> requests.Response:
        import io

        response = requests.Response()
        response.status_code = status
        response.headers = CaseInsensitiveDict({"Content-Length": str(len(body)), **headers})
        response.raw = HTTPResponse(
            body=io.BytesIO(body), headers=dict(response.headers), status=status, preload_content=False
        )
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


def _ubuntu(replay: HubReplay) -> str:
    """Store an ubuntu:23.04-like index (six platforms + attestations); return its digest."""
    entries = []
    for platform in (
        "linux/amd64",
        "linux/arm/v7",
        "linux/arm64/v8",
        "linux/ppc64le",
        "linux/riscv64",
        "linux/s390x",
    ):
        parsed = Platform.parse(platform)
        layer = f"{platform} rootfs".encode()
        replay.blobs[str(Digest.of(layer))] = layer
        config = json.dumps(
            {
                "architecture": parsed.architecture,
                "os": "linux",
                **({"variant": parsed.variant} if parsed.variant else {}),
                "config": {
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                    "Cmd": ["/bin/bash"],
                },
                "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(b"diff " + layer))]},
                "history": [
                    {"created_by": "/bin/sh -c #(nop) ADD file:0123 in / "},
                    {"created_by": '/bin/sh -c #(nop)  CMD ["/bin/bash"]', "empty_layer": True},
                ],
            }
        ).encode()
        replay.blobs[str(Digest.of(config))] = config
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": mt.OCI_CONFIG, "digest": str(Digest.of(config)), "size": len(config)},
                "layers": [
                    {"mediaType": mt.OCI_LAYER_GZIP, "digest": str(Digest.of(layer)), "size": len(layer)}
                ],
            }
        ).encode()
        digest = str(Digest.of(manifest))
        replay.manifests[digest] = (mt.OCI_MANIFEST, manifest)
        entries.append(
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": digest,
                "size": len(manifest),
                "platform": parsed.to_json(),
            }
        )
        entries.append(
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": digest,
                "size": len(manifest),
                "annotations": {
                    "vnd.docker.reference.digest": digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
                "platform": {"architecture": "unknown", "os": "unknown"},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}).encode()
    replay.manifests["23.04"] = (mt.OCI_INDEX, index)
    replay.manifests[str(Digest.of(index))] = (mt.OCI_INDEX, index)
    return str(Digest.of(index))


def _pool(replay: HubReplay, credentials: CredentialStore | None = None) -> RegistryPool:
    transport = Transport(RegistryOptions())
    transport.session.mount("https://", replay)
    return RegistryPool(credentials=credentials, transport=transport)


@pytest.fixture
def anonymous(tmp_path: Path) -> CredentialStore:
    return CredentialStore(environ={"DOCKER_CONFIG": str(tmp_path), "HOME": str(tmp_path)})


@pytest.mark.parametrize(
    ("wanted", "arch", "variant"),
    [("linux/arm64", "arm64", "v8"), ("linux/amd64", "amd64", None), ("linux/arm/v7", "arm", "v7")],
)
def test_ubuntu_from_docker_hub(
    anonymous: CredentialStore, wanted: str, arch: str, variant: str | None
) -> None:
    replay = HubReplay()
    index_digest = _ubuntu(replay)
    ref = Reference.parse("ubuntu:23.04")
    with _pool(replay, anonymous) as pool:
        base = resolve_base(pool, ref, Platform.parse(wanted))
    assert base.image.config.architecture == arch
    assert base.image.config.raw.get("variant") == variant
    assert str(base.pinned) == f"docker.io/library/ubuntu:23.04@{index_digest}"
    # The base's layers stay on Docker Hub: only manifests and the config were fetched.
    assert base.image.layers[0].origin is not None
    hub = [r for r in replay.seen if r.url.startswith(HUB)]
    assert hub[0].url == f"{HUB}/v2/library/ubuntu/manifests/23.04"
    tokens = [r for r in replay.seen if r.url.startswith("https://auth.docker.io/")]
    assert len(tokens) == 1 and "Authorization" not in tokens[0].headers  # anonymous
    cdn = [r for r in replay.seen if r.url.startswith(CDN)]
    assert len(cdn) == 1  # the config blob
    # The CDN is another host: the Bearer token must not travel there.
    assert "Authorization" not in cdn[0].headers
    assert all(r.headers.get("Authorization") for r in hub[1:])


def test_no_such_platform_on_docker_hub(anonymous: CredentialStore) -> None:
    from imagesmith.errors import PlatformError

    replay = HubReplay()
    _ubuntu(replay)
    with _pool(replay, anonymous) as pool, pytest.raises(PlatformError) as error:
        resolve_base(pool, Reference.parse("ubuntu:23.04"), Platform.parse("windows/amd64"))
    message = str(error.value)
    assert "linux/amd64, linux/arm/v7, linux/arm64/v8, linux/ppc64le, linux/riscv64, linux/s390x" in message
    assert "unknown" not in message


def test_docker_hub_credentials_use_the_index_key(tmp_path: Path) -> None:
    auth = base64.b64encode(b"hubuser:hub-SENTINEL-secret").decode()
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": auth}}})
    )
    store = CredentialStore(environ={"DOCKER_CONFIG": str(tmp_path), "HOME": str(tmp_path)})
    replay = HubReplay()
    _ubuntu(replay)
    with _pool(replay, store) as pool:
        resolve_base(pool, Reference.parse("docker.io/library/ubuntu:23.04"), Platform.parse("linux/amd64"))
    token_request = next(r for r in replay.seen if r.url.startswith("https://auth.docker.io/"))
    assert token_request.headers["Authorization"] == f"Basic {auth}"
    assert all(
        "hub-SENTINEL-secret" not in json.dumps(dict(r.headers))
        for r in replay.seen
        if not r.url.startswith("https://auth.docker.io/")
    )
