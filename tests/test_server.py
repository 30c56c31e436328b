"""RegistryServer: the distribution protocol over HTTP, imagesmith's own client, and
independent clients (skopeo, podman, the docker CLI) pushing to and pulling from it."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import requests
from conftest import need_tool
from servers import Podman
from test_layout import write_busybox_image

from imagesmith.errors import NotFoundError
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Descriptor, Manifest, canonical_json
from imagesmith.registry.client import RegistryClient
from imagesmith.registry.server import UPLOADS_DIR, RegistryServer
from imagesmith.registry.transport import RegistryOptions
from imagesmith.store.cache import BlobCache
from imagesmith.store.layout import OCILayout

SBOM_TYPE = "application/vnd.example.sbom.v1"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Api:
    """requests against one server, with paths relative to it."""

    def __init__(self, server: RegistryServer) -> None:
        self.server = server
        self.base = f"http://{server.address}"
        self.session = requests.Session()
        self.session.trust_env = False

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        url = path if path.startswith("http") else self.base + path
        return self.session.request(method, url, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha(data)
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data=data)
        assert r.status_code == 201, r.text
        return digest

    def push_image(self, repo: str, tag: str, label: str = "") -> tuple[bytes, str]:
        config = canonical_json(
            {
                "architecture": "amd64",
                "os": "linux",
                "label": label or tag,
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        )
        layer = f"layer {label or tag}".encode()
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": {
                    "mediaType": mt.OCI_CONFIG,
                    "digest": self.push_blob(repo, config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": mt.OCI_LAYER, "digest": self.push_blob(repo, layer), "size": len(layer)}
                ],
            }
        )
        r = self.request(
            "PUT", f"/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": mt.OCI_MANIFEST}
        )
        assert r.status_code == 201, r.text
        return manifest, sha(manifest)


def error_codes(r: requests.Response) -> list[str]:
    return [e["code"] for e in r.json()["errors"]]


def raw_request(
    server: RegistryServer, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A request with the path sent exactly as given (requests would normalise ``..``)."""
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path / "registry", port=0) as srv:
        yield srv


@pytest.fixture
def api(server: RegistryServer) -> Iterator[Api]:
    a = Api(server)
    yield a
    a.session.close()


# -- basics ------------------------------------------------------------------------------


def test_base_endpoint(api: Api) -> None:
    r = api.get("/v2/")
    assert r.status_code == 200 and r.json() == {}
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert r.headers["Content-Length"] == "2"
    r = api.get("/v3/whatever")
    assert r.status_code == 404 and error_codes(r) == ["UNSUPPORTED"]
    r = api.request("PUT", "/v2/_catalog")
    assert r.status_code == 405


def test_server_lifecycle(tmp_path: Path) -> None:
    srv = RegistryServer(tmp_path / "r", port=0)
    assert srv.address.startswith("127.0.0.1:") and not srv.address.endswith(":0")
    srv.start()
    session = requests.Session()
    session.trust_env = False
    assert session.get(f"http://{srv.address}/v2/", timeout=5).status_code == 200  # keep-alive open
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        session.get(f"http://{srv.address}/v2/", timeout=5)
    assert (tmp_path / "r" / UPLOADS_DIR).is_dir()


def test_serve_forever_in_the_foreground(tmp_path: Path) -> None:
    srv = RegistryServer(tmp_path / "r", port=0)
    thread = threading.Thread(target=srv.serve_forever)
    thread.start()
    try:
        api = Api(srv)
        assert api.get("/v2/").status_code == 200
        assert api.request("HEAD", "/v2/").headers["Content-Length"] == "2"
    finally:
        srv.stop()
        thread.join(10)
    assert not thread.is_alive()


def _serve_with_fd_limit(root: Path, limit: int, *flags: str) -> tuple[subprocess.Popen[str], str]:
    """``imagesmith serve`` in its own process under RLIMIT_NOFILE ``limit``; and its address."""

    def lower_limit() -> None:  # pragma: no cover - runs in the child
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    proc = subprocess.Popen(
        [sys.executable, "-m", "imagesmith", "serve", "--root", str(root), "--addr", "127.0.0.1:0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lower_limit,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("Serving "), line + (proc.stderr.read() if proc.stderr else "")
    return proc, line.split("http://", 1)[1].split()[0]


def test_idle_connections_never_starve_other_clients(tmp_path: Path) -> None:
    """More idle connections than the server has file descriptors: the oldest idle ones are
    closed to make room, and a client with a request is answered at once."""
    proc, address = _serve_with_fd_limit(tmp_path / "r", 256)
    host, port = address.rsplit(":", 1)
    idle: list[socket.socket] = []
    try:
        for _ in range(400):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        r = requests.get(f"http://{address}/v2/", timeout=15)
        assert r.status_code == 200
        # Of the idle ones, the oldest were closed by the server (a read sees the end).
        idle[0].settimeout(15)
        assert idle[0].recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_idle_connections_time_out(tmp_path: Path) -> None:
    proc, address = _serve_with_fd_limit(tmp_path / "r", 1024, "--idle-timeout", "1")
    host, port = address.rsplit(":", 1)
    try:
        sock = socket.create_connection((host, int(port)), timeout=10)
        with sock:
            assert sock.recv(1) == b""  # closed after a second of silence, not 300
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b"{}"
        assert conn.sock is not None and conn.sock.recv(1) == b""  # kept alive, then closed when idle
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_a_newcomer_is_refused_only_when_every_connection_is_busy(tmp_path: Path) -> None:
    with RegistryServer(tmp_path / "r", port=0, max_connections=2) as srv:
        host, port = srv.address.rsplit(":", 1)
        busy = []
        for _ in range(2):  # two uploads in progress: their bodies are still to come
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(
                b"POST /v2/r/blobs/uploads/?digest="
                + sha(b"x").encode()
                + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
            )
            busy.append(sock)
        for _ in range(200):  # until both requests reached their handlers
            states = [c.state for c in srv._httpd._connections.values()]
            if states == ["busy", "busy"]:
                break
            time.sleep(0.05)
        r = requests.get(f"http://{srv.address}/v2/", timeout=10)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert error_codes(r) == ["TOOMANYREQUESTS"]
        busy[0].close()
        busy[1].close()
        for _ in range(50):
            if requests.get(f"http://{srv.address}/v2/", timeout=10).status_code == 200:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the server never took connections again")


def test_concurrent_pushes_to_one_repository(api: Api) -> None:
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(lambda i: api.push_image("busy", f"t{i}", label=str(i))[1], range(16)))
    assert api.get("/v2/busy/tags/list").json()["tags"] == sorted(f"t{i}" for i in range(16))
    for i, digest in enumerate(digests):
        assert api.get(f"/v2/busy/manifests/t{i}").headers["Docker-Content-Digest"] == digest


def test_keep_alive_with_errors_and_head(server: RegistryServer) -> None:
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    sock_ids = set()
    for method, path, status in [
        ("GET", "/v2/", 200),
        ("HEAD", "/v2/repo/blobs/" + sha(b"x"), 404),
        ("GET", "/v2/repo/manifests/latest", 404),
        ("HEAD", "/v2/repo/manifests/latest", 404),
        ("GET", "/v2/Bad/tags/list", 400),
        ("POST", "/v2/repo/blobs/uploads/", 202),
        ("GET", "/v2/_catalog", 200),
    ]:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == status, (method, path, body)
        assert resp.getheader("Content-Length") is not None
        if method == "GET":
            assert len(body) == int(resp.getheader("Content-Length", "-1"))
        else:
            assert body == b""
        assert resp.getheader("Connection") != "close"
        assert conn.sock is not None
        sock_ids.add(id(conn.sock))
    assert len(sock_ids) == 1  # one connection served everything
    conn.close()


# -- blobs -------------------------------------------------------------------------------


def test_monolithic_upload_head_get_and_range(api: Api, server: RegistryServer) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    digest = api.push_blob("lib/blob", data)
    assert (server.root / "lib/blob/blobs/sha256" / digest.split(":")[1]).read_bytes() == data
    r = api.request("HEAD", f"/v2/lib/blob/blobs/{digest}")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Type"] == "application/octet-stream"
    r = api.get(f"/v2/lib/blob/blobs/{digest}")
    assert r.status_code == 200 and r.content == data
    r = api.get(f"/v2/lib/blob/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    r = api.get(f"/v2/lib/blob/blobs/{digest}", headers={"Range": f"bytes={len(data) - 10}-"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = api.get(f"/v2/lib/blob/blobs/{digest}", headers={"Range": "bytes=-4"})
    assert r.status_code == 206 and r.content == data[-4:]
    r = api.get(f"/v2/lib/blob/blobs/{digest}", headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
    r = api.get(f"/v2/lib/blob/blobs/{sha(b'unknown')}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
    r = api.get(f"/v2/nothere/blobs/{digest}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
    r = api.request("DELETE", f"/v2/lib/blob/blobs/{digest}")
    assert r.status_code == 405 and error_codes(r) == ["UNSUPPORTED"]


def test_corrupt_blob_is_never_served_whole(api: Api, server: RegistryServer) -> None:
    data = os.urandom(2 * 1024 * 1024 + 1)
    digest = api.push_blob("repo", data)
    path = server.root / "repo/blobs/sha256" / digest.split(":")[1]
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(requests.RequestException):
        api.get(f"/v2/repo/blobs/{digest}").content  # noqa: B018 - cut before the last chunk


def test_a_corrupt_blob_is_never_served_in_ranges(api: Api, server: RegistryServer) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = api.push_blob("repo", data)
    assert api.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=0-99"}).content == data[:100]
    path = server.root / "repo/blobs/sha256" / digest.split(":")[1]
    path.write_bytes(b"X" * 100 + data[100:])  # same size, other bytes: a resume must not get them
    for byte_range in ("bytes=0-99", "bytes=50-", "bytes=-10"):
        r = api.get(f"/v2/repo/blobs/{digest}", headers={"Range": byte_range})
        assert r.status_code == 500 and b"X" not in r.content, byte_range


def test_links_and_special_files_in_a_served_layout_are_not_served(
    api: Api, server: RegistryServer, tmp_path: Path
) -> None:
    secret = b"root:secret-hash:19000:0:99999:7:::\n"
    host_file = tmp_path / "host-secret"
    host_file.write_bytes(secret)
    digest = sha(secret)  # the right name for the content: only the link gives it away
    api.push_blob("repo", b"something")
    blobs = server.root / "repo/blobs/sha256"
    (blobs / digest.split(":")[1]).symlink_to(host_file)
    # A directory link: another repository whose blobs directory points elsewhere.
    elsewhere = tmp_path / "elsewhere" / "sha256"
    elsewhere.mkdir(parents=True)
    (elsewhere / digest.split(":")[1]).write_bytes(secret)
    OCILayout(server.root / "linked", create=True)
    (server.root / "linked/blobs/sha256").rmdir()
    (server.root / "linked/blobs").rmdir()
    (server.root / "linked/blobs").symlink_to(tmp_path / "elsewhere")
    fifo_data = b"fifo"
    os.mkfifo(blobs / sha(fifo_data).split(":")[1])
    for repo, blob in (("repo", digest), ("linked", digest), ("repo", sha(fifo_data))):
        for headers in ({}, {"Range": "bytes=0-9"}):
            r = api.get(f"/v2/{repo}/blobs/{blob}", headers=headers, timeout=5)
            assert r.status_code == 404 and secret not in r.content, (repo, blob, headers)
            assert error_codes(r) == ["BLOB_UNKNOWN"]


def test_chunked_upload_out_of_order_and_resume(api: Api, server: RegistryServer) -> None:
    data = os.urandom(250_000)
    digest = sha(data)
    r = api.request("POST", "/v2/a/b/blobs/uploads/")
    assert r.status_code == 202
    location = r.headers["Location"]
    assert location.startswith("/v2/a/b/blobs/uploads/")
    assert r.headers["Range"] == "0-0"
    assert r.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]
    assert "OCI-Chunk-Min-Length" in r.headers
    r = api.request("PATCH", location, data=data[:100_000], headers={"Content-Range": "0-99999"})
    assert r.status_code == 202 and r.headers["Range"] == "0-99999"
    location = r.headers["Location"]
    # A chunk that does not start where the upload ends is refused with the current range.
    r = api.request("PATCH", location, data=data[150_000:], headers={"Content-Range": "150000-249999"})
    assert r.status_code == 416 and r.headers["Range"] == "0-99999"
    r = api.request("PATCH", location, data=data[100_000:100_010], headers={"Content-Range": "100000-100099"})
    assert r.status_code == 400 and error_codes(r) == ["BLOB_UPLOAD_INVALID"]
    # Resume: ask where the upload stands, then send the rest (streamed, chunked encoding).
    r = api.get(location)
    assert r.status_code == 204 and r.headers["Range"] == "0-99999"
    offset = int(r.headers["Range"].split("-")[1]) + 1
    r = api.request("PATCH", location, data=iter([data[offset:200_000], data[200_000:240_000]]))
    assert r.status_code == 202 and r.headers["Range"] == "0-239999"
    # The final PUT may carry the last chunk.
    r = api.request(
        "PUT", f"{location}?digest={digest}", data=data[240_000:], headers={"Content-Range": "240000-249999"}
    )
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v2/a/b/blobs/{digest}"
    assert r.headers["Docker-Content-Digest"] == digest
    assert api.get(f"/v2/a/b/blobs/{digest}").content == data
    assert api.get(location).status_code == 404  # the session is gone
    assert list((server.root / UPLOADS_DIR).iterdir()) == []


def test_raw_chunked_transfer_encoding(server: RegistryServer) -> None:
    data = b"chunk one|" + b"x" * 70_000 + b"|chunk three"
    status, headers, _ = raw_request(server, "POST", "/v2/raw/blobs/uploads/")
    assert status == 202
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        parts = [data[:10], data[10:70_010], data[70_010:]]
        body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nX-Trailer: t\r\n\r\n"
        sock.sendall(
            f"PATCH {headers['Location']} HTTP/1.1\r\nHost: {server.address}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + body
            + f"GET {headers['Location']} HTTP/1.1\r\nHost: {server.address}\r\n\r\n".encode()
        )
        reply = b""
        while reply.count(b"HTTP/1.1") < 2 or not reply.endswith(b"\r\n\r\n"):
            reply += sock.recv(65536)
    first, second = reply.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"202") and f"Range: 0-{len(data) - 1}".encode() in first
    assert second.startswith(b"204") and f"Range: 0-{len(data) - 1}".encode() in second
    status, _, _ = raw_request(server, "PUT", f"{headers['Location']}?digest={sha(data)}")
    assert status == 201
    assert (server.root / "raw/blobs/sha256" / sha(data).split(":")[1]).read_bytes() == data


def test_digest_mismatch_discards_the_upload(api: Api, server: RegistryServer) -> None:
    r = api.request("POST", "/v2/repo/blobs/uploads/")
    location = r.headers["Location"]
    api.request("PATCH", location, data=b"some content")
    r = api.request("PUT", f"{location}?digest={sha(b'other content')}")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    assert api.get(location).status_code == 404
    r = api.request("POST", f"/v2/repo/blobs/uploads/?digest={sha(b'x')}", data=b"y")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    r = api.request("PUT", f"{location}?digest=sha256:nope")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    assert list((server.root / UPLOADS_DIR).iterdir()) == []
    assert not (server.root / "repo").exists()  # a failed upload creates no repository


def test_a_malformed_digest_parameter_stores_nothing(api: Api, server: RegistryServer) -> None:
    body = os.urandom(256 * 1024)
    for bad in ("sha256:nope", "md5:" + "0" * 32, "", "sha256:" + "A" * 64):
        r = api.request("POST", f"/v2/repo/blobs/uploads/?digest={bad}", data=body)
        assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"], bad
        assert list((server.root / UPLOADS_DIR).iterdir()) == []
    # Closing a session with a malformed digest ends the session and drops its bytes.
    location = api.request("POST", "/v2/repo/blobs/uploads/").headers["Location"]
    assert api.request("PATCH", location, data=body).status_code == 202
    r = api.request("PUT", f"{location}?digest=sha256:nope")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    assert api.get(location).status_code == 404
    assert list((server.root / UPLOADS_DIR).iterdir()) == []
    assert not (server.root / "repo").exists()


def test_cancel_upload_and_wrong_repository(api: Api, server: RegistryServer) -> None:
    location = api.request("POST", "/v2/one/blobs/uploads/").headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    r = api.get(f"/v2/two/blobs/uploads/{upload_id}")  # a session belongs to its repository
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]
    r = api.get("/v2/one/blobs/uploads/../../x")
    assert r.status_code in (400, 404)
    assert api.request("DELETE", location).status_code == 204
    assert api.get(location).status_code == 404
    assert list((server.root / UPLOADS_DIR).iterdir()) == []
    assert not (server.root / "one").exists()  # starting an upload creates no repository


def test_mount(api: Api, server: RegistryServer) -> None:
    digest = api.push_blob("src/repo", b"shared layer")
    r = api.request("POST", f"/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo")
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/dst/repo/blobs/{digest}"
    assert r.headers["Docker-Content-Digest"] == digest
    assert api.get(f"/v2/dst/repo/blobs/{digest}").content == b"shared layer"
    hexpart = digest.split(":")[1]
    assert (server.root / "dst/repo/blobs/sha256" / hexpart).stat().st_ino == (
        server.root / "src/repo/blobs/sha256" / hexpart
    ).stat().st_ino
    # Unknown blob or source: an ordinary upload session instead.
    for query in (f"mount={sha(b'missing')}&from=src/repo", f"mount={digest}&from=nowhere"):
        r = api.request("POST", f"/v2/third/blobs/uploads/?{query}")
        assert r.status_code == 202 and r.headers["Location"].startswith("/v2/third/blobs/uploads/")
    r = api.request("POST", "/v2/third/blobs/uploads/?mount=sha256:bad&from=src/repo")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    r = api.request("POST", f"/v2/third/blobs/uploads/?mount={digest}&from=../src")
    assert r.status_code == 400 and error_codes(r) == ["NAME_INVALID"]


# -- manifests ---------------------------------------------------------------------------


def test_manifest_put_get_head_delete(api: Api, server: RegistryServer) -> None:
    manifest, digest = api.push_image("app", "v1")
    r = api.get("/v2/app/manifests/v1", headers={"Accept": mt.OCI_MANIFEST})
    assert r.status_code == 200 and r.content == manifest
    assert r.headers["Content-Type"] == mt.OCI_MANIFEST
    assert r.headers["Docker-Content-Digest"] == digest
    r = api.request("HEAD", f"/v2/app/manifests/{digest}")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Length"] == str(len(manifest))
    assert r.headers["Content-Type"] == mt.OCI_MANIFEST
    # Stored as an OCI layout other tools read directly.
    layout = OCILayout(server.root / "app")
    assert layout.resolve("v1").digest == Digest.parse(digest)
    # Push by digest: untagged.
    r = api.request(
        "PUT", f"/v2/app/manifests/{digest}", data=manifest, headers={"Content-Type": mt.OCI_MANIFEST}
    )
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/app/manifests/{digest}"
    r = api.request(
        "PUT", f"/v2/app/manifests/{sha(b'other')}", data=manifest, headers={"Content-Type": mt.OCI_MANIFEST}
    )
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    # Delete by tag, then by digest.
    assert api.request("DELETE", "/v2/app/manifests/v1").status_code == 202
    assert api.get("/v2/app/manifests/v1").status_code == 404
    assert api.get(f"/v2/app/manifests/{digest}").status_code == 200
    assert api.request("DELETE", f"/v2/app/manifests/{digest}").status_code == 202
    r = api.get(f"/v2/app/manifests/{digest}")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    assert api.request("DELETE", "/v2/app/manifests/v1").status_code == 404
    r = api.get("/v2/nosuch/manifests/latest")
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]


def test_a_manifest_stays_reachable_by_digest_when_its_tag_moves(api: Api, server: RegistryServer) -> None:
    first, one = api.push_image("moving", "latest", label="one")
    with ThreadPoolExecutor(4) as pool:  # builds racing for one tag
        raced = list(pool.map(lambda i: api.push_image("moving", "latest", label=f"race {i}")[1], range(4)))
    for digest in (one, *raced):
        r = api.get(f"/v2/moving/manifests/{digest}")
        assert r.status_code == 200 and sha(r.content) == digest
    assert api.get("/v2/moving/manifests/latest").headers["Docker-Content-Digest"] in raced
    assert api.get("/v2/moving/manifests/" + one).content == first
    assert api.get("/v2/moving/tags/list").json()["tags"] == ["latest"]
    # Deleting the tag deletes no manifest; deleting a manifest does.
    assert api.request("DELETE", "/v2/moving/manifests/latest").status_code == 202
    assert all(api.get(f"/v2/moving/manifests/{d}").status_code == 200 for d in raced)
    assert api.request("DELETE", f"/v2/moving/manifests/{one}").status_code == 202
    assert api.get(f"/v2/moving/manifests/{one}").status_code == 404
    assert OCILayout(server.root / "moving").tags() == []


def test_manifest_refusals(api: Api, server: RegistryServer) -> None:
    config = api.push_blob("app", b"{}")
    missing = sha(b"never pushed")
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": mt.OCI_LAYER, "digest": missing, "size": 12}],
    }
    headers = {"Content-Type": mt.OCI_MANIFEST}
    r = api.request("PUT", "/v2/app/manifests/broken", data=canonical_json(doc), headers=headers)
    assert r.status_code == 400 and error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]
    assert r.json()["errors"][0]["detail"] == {"missing": [missing]}
    r = api.request("PUT", "/v2/elsewhere/manifests/x", data=canonical_json(doc), headers=headers)
    assert r.status_code == 400 and error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]
    assert not (server.root / "elsewhere").exists()
    # A child manifest of an index must be in the repository too.
    index = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": missing, "size": 3}],
    }
    r = api.request(
        "PUT", "/v2/app/manifests/idx", data=canonical_json(index), headers={"Content-Type": mt.OCI_INDEX}
    )
    assert r.status_code == 400 and error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]
    for body, ctype in [
        (b"not json", mt.OCI_MANIFEST),
        (canonical_json(doc), mt.DOCKER_MANIFEST),
        (b'{"schemaVersion": 1}', mt.OCI_MANIFEST),
    ]:
        r = api.request("PUT", "/v2/app/manifests/bad", data=body, headers={"Content-Type": ctype})
        assert r.status_code == 400 and error_codes(r) == ["MANIFEST_INVALID"], r.text
    big = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    r = api.request("PUT", "/v2/app/manifests/big", data=big, headers=headers)
    assert r.status_code == 413 and error_codes(r) == ["MANIFEST_INVALID"]
    r = api.request("PUT", "/v2/app/manifests/big", data=iter([big[:1000], big[1000:]]), headers=headers)
    assert r.status_code == 413
    r = api.request("PUT", "/v2/app/manifests/-bad-tag", data=canonical_json(doc), headers=headers)
    assert r.status_code == 400 and error_codes(r) == ["TAG_INVALID"]
    assert api.get("/v2/app/tags/list").json()["tags"] == []


def test_index_with_children_and_foreign_layout(api: Api, server: RegistryServer) -> None:
    child, child_digest = api.push_image("multi", "child")
    api.request("DELETE", "/v2/multi/manifests/child")
    r = api.request(
        "PUT", f"/v2/multi/manifests/{child_digest}", data=child, headers={"Content-Type": mt.OCI_MANIFEST}
    )
    assert r.status_code == 201
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": mt.OCI_MANIFEST,
                    "digest": child_digest,
                    "size": len(child),
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    )
    r = api.request("PUT", "/v2/multi/manifests/latest", data=index, headers={"Content-Type": mt.OCI_INDEX})
    assert r.status_code == 201
    assert api.get("/v2/multi/manifests/latest").headers["Content-Type"] == mt.OCI_INDEX
    # A layout written by other tools lists only the index: the child is served from blobs/.
    layout = OCILayout(server.root / "multi")
    layout.remove_manifest(Digest.parse(child_digest))
    r = api.get(f"/v2/multi/manifests/{child_digest}")
    assert r.status_code == 200 and r.content == child
    assert r.headers["Content-Type"] == mt.OCI_MANIFEST
    config_digest = json.loads(child)["config"]["digest"]
    assert api.get(f"/v2/multi/manifests/{config_digest}").status_code == 404  # not a manifest


def test_tags_pagination(api: Api) -> None:
    for tag in ("b", "a", "e", "c", "d"):
        api.push_image("paged", tag, label="same")
    r = api.get("/v2/paged/tags/list")
    assert r.json() == {"name": "paged", "tags": ["a", "b", "c", "d", "e"]} and "Link" not in r.headers
    seen: list[str] = []
    url: str | None = "/v2/paged/tags/list?n=2"
    links = []
    while url:
        r = api.get(url)
        assert r.status_code == 200
        seen += r.json()["tags"]
        url = r.links.get("next", {}).get("url")
        links.append(r.headers.get("Link"))
    assert seen == ["a", "b", "c", "d", "e"]
    assert links == [
        '</v2/paged/tags/list?n=2&last=b>; rel="next"',
        '</v2/paged/tags/list?n=2&last=d>; rel="next"',
        None,
    ]
    assert api.get("/v2/paged/tags/list?n=10&last=c").json()["tags"] == ["d", "e"]
    r = api.get("/v2/paged/tags/list?n=x")
    assert r.status_code == 400 and error_codes(r) == ["PAGINATION_NUMBER_INVALID"]
    r = api.get("/v2/unknown/tags/list")
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]


def test_catalog_pagination(api: Api, server: RegistryServer) -> None:
    for repo in ("zeta", "alpha/one", "alpha", "beta/x/y"):
        api.push_blob(repo, b"b")
    (server.root / "not-a-repo" / "inner").mkdir(parents=True)
    r = api.get("/v2/_catalog")
    assert r.json() == {"repositories": ["alpha", "alpha/one", "beta/x/y", "zeta"]}
    r = api.get("/v2/_catalog?n=3")
    assert r.json()["repositories"] == ["alpha", "alpha/one", "beta/x/y"]
    assert r.headers["Link"] == '</v2/_catalog?n=3&last=beta/x/y>; rel="next"'
    r = api.get(r.links["next"]["url"])
    assert r.json()["repositories"] == ["zeta"] and "Link" not in r.headers


def test_referrers(api: Api) -> None:
    image, image_digest = api.push_image("app", "v1")
    empty = api.push_blob("app", b"{}")
    payload = api.push_blob("app", b'{"sbom": true}')
    subject = {"mediaType": mt.OCI_MANIFEST, "digest": image_digest, "size": len(image)}

    def artifact(artifact_type: str | None, note: str) -> bytes:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
        if artifact_type:
            doc["artifactType"] = artifact_type
        doc["config"] = {"mediaType": mt.OCI_EMPTY, "digest": empty, "size": 2}
        doc["layers"] = [{"mediaType": "application/json", "digest": payload, "size": 14}]
        doc["subject"] = subject
        doc["annotations"] = {"note": note}
        return canonical_json(doc)

    sbom, sig = artifact(SBOM_TYPE, "sbom"), artifact(None, "sig")
    for data in (sbom, sig):
        r = api.request(
            "PUT", f"/v2/app/manifests/{sha(data)}", data=data, headers={"Content-Type": mt.OCI_MANIFEST}
        )
        assert r.status_code == 201 and r.headers["OCI-Subject"] == image_digest
    r = api.get(f"/v2/app/referrers/{image_digest}")
    assert r.status_code == 200 and r.headers["Content-Type"] == mt.OCI_INDEX
    doc = r.json()
    assert doc["mediaType"] == mt.OCI_INDEX and doc["schemaVersion"] == 2
    assert {(m["digest"], m["artifactType"], m["annotations"]["note"]) for m in doc["manifests"]} == {
        (sha(sbom), SBOM_TYPE, "sbom"),
        (sha(sig), mt.OCI_EMPTY, "sig"),
    }
    assert all(m["size"] > 0 and m["mediaType"] == mt.OCI_MANIFEST for m in doc["manifests"])
    r = api.get(f"/v2/app/referrers/{image_digest}?artifactType={SBOM_TYPE}")
    assert [m["digest"] for m in r.json()["manifests"]] == [sha(sbom)]
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    assert api.get(f"/v2/app/referrers/{sha(b'none')}").json()["manifests"] == []
    assert api.get(f"/v2/unknown/referrers/{image_digest}").json()["manifests"] == []
    r = api.get("/v2/app/referrers/sha256:xyz")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


# -- hostile input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v2/repo/blobs/sha256:../../x", 400, "DIGEST_INVALID"),
        ("GET", "/v2/repo/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd", 400, "DIGEST_INVALID"),
        ("GET", "/v2/repo/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
        ("GET", "/v2/repo/blobs/md5:" + "a" * 32, 400, "DIGEST_INVALID"),
        ("HEAD", "/v2/repo/manifests/sha256:..", 400, ""),
        ("GET", "/v2/../../etc/blobs/" + sha(b"x"), 400, "NAME_INVALID"),
        ("GET", "/v2/..%2F..%2Fetc/manifests/latest", 400, "NAME_INVALID"),
        ("PUT", "/v2/Upper/manifests/latest", 400, "NAME_INVALID"),
        ("POST", "/v2/a//b/blobs/uploads/", 400, "NAME_INVALID"),
        ("POST", "/v2/_uploads/blobs/uploads/", 400, "NAME_INVALID"),
        ("POST", "/v2/a/blobs/blobs/uploads/", 400, "NAME_INVALID"),
        ("POST", "/v2/a/index.json/blobs/uploads/", 400, "NAME_INVALID"),
        ("POST", "/v2/" + "a" * 300 + "/blobs/uploads/", 400, "NAME_INVALID"),
        ("PUT", "/v2/repo/blobs/uploads/..%2F..%2Fx?digest=" + sha(b""), 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PATCH", "/v2/repo/blobs/uploads/0123", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("GET", "/v2/repo/referrers/sha256:../x", 400, "DIGEST_INVALID"),
        ("DELETE", "/v2/repo/manifests/sha256:/etc", 400, "DIGEST_INVALID"),
        ("GET", "/v2/repo/manifests/.hidden", 400, "TAG_INVALID"),
    ],
)
def test_invalid_names_and_digests_rejected_before_the_disk(
    server: RegistryServer, method: str, path: str, status: int, code: str
) -> None:
    before = sorted(p for p in server.root.parent.rglob("*"))
    got, _, body = raw_request(server, method, path, body=b"payload" if method in ("PUT", "PATCH") else b"")
    assert got == status
    if code:
        assert json.loads(body)["errors"][0]["code"] == code
    assert sorted(p for p in server.root.parent.rglob("*")) == before


def test_bad_content_length_closes_the_connection(server: RegistryServer) -> None:
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"PATCH /v2/x/blobs/uploads/0 HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b"Connection: close" in reply


# -- imagesmith's own client -------------------------------------------------------------


def test_registry_client(server: RegistryServer) -> None:
    options = RegistryOptions(insecure=frozenset({server.address}), retries=0)
    with RegistryClient(server.address, options) as client:
        client.ping()
        layer = os.urandom(1024 * 1024 + 3)
        layer_digest = Digest.of(layer)
        config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
        config_digest = Digest.of(config)
        assert not client.blob_exists("own/app", layer_digest)
        client.upload_blob("own/app", layer_digest, len(layer), lambda: io.BytesIO(layer))
        client.upload_blob("own/app", config_digest, len(config), lambda: io.BytesIO(config))
        assert client.blob_exists("own/app", layer_digest)
        manifest = Manifest(
            mt.OCI_MANIFEST,
            Descriptor(mt.OCI_CONFIG, config_digest, len(config)),
            (Descriptor(mt.OCI_LAYER, layer_digest, len(layer)),),
        ).to_bytes()
        for tag in ("v3", "v1", "v2"):
            assert client.put_manifest("own/app", tag, manifest, mt.OCI_MANIFEST) == Digest.of(manifest)
        got = client.get_manifest("own/app", "v1")
        assert got.data == manifest and got.media_type == mt.OCI_MANIFEST
        assert client.get_manifest("own/app", str(Digest.of(manifest))).data == manifest
        head = client.head_manifest("own/app", "v2")
        assert head == Descriptor(mt.OCI_MANIFEST, Digest.of(manifest), len(manifest))
        assert client.head_manifest("own/app", "nope") is None
        with pytest.raises(NotFoundError):
            client.get_manifest("own/app", "nope")
        assert list(client.list_tags("own/app", page_size=2)) == ["v1", "v2", "v3"]
        desc = Descriptor(mt.OCI_LAYER, layer_digest, len(layer))
        with client.open_blob("own/app", desc) as reader:
            assert reader.read_all_chunks() == layer
        assert client.mount_blob("own/other", layer_digest, "own/app")
        assert client.blob_exists("own/other", layer_digest)
        assert not client.mount_blob("own/other", Digest.of(b"absent"), "own/app")
        assert list((server.root / UPLOADS_DIR).iterdir()) == []  # the fallback session was cancelled


# -- independent clients -----------------------------------------------------------------


@pytest.fixture(scope="module")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory, busybox_dir: Path) -> OCILayout:
    root = tmp_path_factory.mktemp("busybox-layout")
    layout = OCILayout(root / "layout", create=True)
    write_busybox_image(layout, busybox_dir, BlobCache(root / "cache"), tag="busybox")
    return layout


def _opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: path.open("rb")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.integration
def test_skopeo_push_and_pull(
    server: RegistryServer, api: Api, busybox_layout: OCILayout, tmp_path: Path
) -> None:
    need_tool("skopeo")
    addr = server.address
    expected = busybox_layout.resolve("busybox").digest
    _run(
        "skopeo",
        "copy",
        "--dest-tls-verify=false",
        f"oci:{busybox_layout.root}:busybox",
        f"docker://{addr}/library/busybox:1.0",
    )
    assert api.get("/v2/library/busybox/tags/list").json()["tags"] == ["1.0"]
    info = json.loads(
        _run("skopeo", "inspect", "--tls-verify=false", f"docker://{addr}/library/busybox:1.0").stdout
    )
    assert info["Digest"] == str(expected)  # the manifest bytes went through unchanged
    # The repository is itself an OCI layout that skopeo reads without the server.
    local = json.loads(_run("skopeo", "inspect", f"oci:{server.root}/library/busybox:1.0").stdout)
    assert local["Digest"] == str(expected)
    # A second repository: skopeo may mount the blobs it knows are here.
    _run(
        "skopeo",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{addr}/library/busybox:1.0",
        f"docker://{addr}/copies/busybox:again",
    )
    out = tmp_path / "pulled"
    _run(
        "skopeo",
        "copy",
        "--src-tls-verify=false",
        f"docker://{addr}/copies/busybox:again",
        f"oci:{out}:pulled",
    )
    pulled = OCILayout(out)
    assert pulled.resolve("pulled").digest == expected
    manifest = Manifest.from_json(
        json.loads(pulled.read_blob(pulled.resolve("pulled"), 1 << 20)), mt.OCI_MANIFEST
    )
    for blob in (manifest.config, *manifest.layers):
        with pulled.open_blob(blob) as reader:
            while reader.read(1 << 20):
                pass


@pytest.mark.integration
@pytest.mark.slow
def test_podman_and_docker_pull_run_and_push(
    server: RegistryServer,
    api: Api,
    podman: Podman,
    busybox_layout: OCILayout,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG, logger="imagesmith.serve")
    addr = server.address
    podman.add_insecure_registry(addr)
    # Push with imagesmith's own client, from the layout.
    entry = busybox_layout.resolve("busybox")
    manifest_bytes = busybox_layout.read_blob(entry, 1 << 20)
    manifest = Manifest.from_json(json.loads(manifest_bytes), entry.media_type)
    with RegistryClient(addr, RegistryOptions(insecure=frozenset({addr}))) as client:
        for blob in (manifest.config, *manifest.layers):
            client.upload_blob(
                "test/busybox", blob.digest, blob.size, _opener(busybox_layout.blob_path(blob.digest))
            )
        client.put_manifest("test/busybox", "1", manifest_bytes, entry.media_type)
    ref = f"{addr}/test/busybox:1"

    # Pulled by the podman CLI first: a podman service that already pulled from other
    # registries keeps the registries.conf it read then, and would try https here.
    pulled = podman.podman("pull", "--tls-verify=false", ref)
    assert pulled.returncode == 0, pulled.stderr
    ran = podman.docker("run", "--rm", ref, "sh", "-c", "echo ok")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "ok"
    ran = podman.podman("run", "--rm", ref, "sh", "-c", "echo $PATH")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "/usr/bin:/bin"

    # podman pushes from its own storage: the busybox layer is mounted from test/busybox.
    pushed = podman.podman("push", "--tls-verify=false", ref, f"docker://{addr}/pushed/busybox:2")
    assert pushed.returncode == 0, pushed.stderr
    assert api.get("/v2/pushed/busybox/tags/list").json()["tags"] == ["2"]
    layout = OCILayout(server.root / "pushed" / "busybox")
    stored = layout.resolve("2")
    doc = json.loads(layout.read_blob(stored, 1 << 20))
    for blob in (doc["config"], *doc["layers"]):
        assert layout.has_blob(Digest.parse(blob["digest"]), blob["size"])
    # A layer podman never compressed before is compressed while it is sent: a body of unknown
    # length, in chunked transfer coding.
    tarball = tmp_path / "new-layer.tar"
    with tarfile.open(tarball, "w") as tar:
        payload = os.urandom(300_000)
        info = tarfile.TarInfo("random.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    imported = podman.podman("import", str(tarball), "localhost/imagesmith-server-test:new")
    assert imported.returncode == 0, imported.stderr
    pushed = podman.podman(
        "push",
        "--tls-verify=false",
        "localhost/imagesmith-server-test:new",
        f"docker://{addr}/pushed/imported:3",
    )
    assert pushed.returncode == 0, pushed.stderr
    uploads = [r.getMessage() for r in caplog.records if "/pushed/imported/blobs/uploads/" in r.getMessage()]
    assert any(m.startswith(("PATCH", "PUT")) and "chunked body" in m for m in uploads), uploads
    imported_layout = OCILayout(server.root / "pushed" / "imported")
    doc = json.loads(imported_layout.read_blob(imported_layout.resolve("3"), 1 << 20))
    for blob in (doc["config"], *doc["layers"]):
        with imported_layout.open_blob(Descriptor.from_json(blob)) as reader:
            while reader.read(1 << 20):
                pass
    # And pull the pushed copy back by digest.
    pulled = podman.podman("pull", "--tls-verify=false", f"{addr}/pushed/busybox@{stored.digest}")
    assert pulled.returncode == 0, pulled.stderr
