"""Unit tests for imagesmith.registry: parsing, credentials, and fault injection against an
in-process fake HTTP server (``http.server`` in a thread)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from imagesmith.errors import (
    AuthenticationError,
    IntegrityError,
    ManifestError,
    NotFoundError,
    RateLimitError,
    RegistryError,
    RegistryUnreachableError,
    UsageError,
)
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import MAX_MANIFEST_SIZE, Descriptor
from imagesmith.registry import (
    Credentials,
    CredentialStore,
    RegistryClient,
    RegistryOptions,
    RegistryPool,
    parse_challenges,
    parse_retry_after,
    redact_url,
)
from imagesmith.registry.auth import Authenticator, scopes_cover
from imagesmith.registry.transport import Transport

SENTINEL = "S3NT1NEL-pa55w0rd-do-not-leak"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


# ------------------------------------------------------------------ fake server


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    target: str

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class Resp:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncate_at: int | None = None  # announce the full length, send this many bytes, hang up
    no_length: bool = False  # body delimited by closing the connection
    delay: float = 0.0


Handler = Callable[[Req], Resp]


class FakeServer:
    """A scriptable HTTP/1.1 server; ``handler`` maps each request to a response."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda req: Resp(404))
        self.requests: list[Req] = []
        server = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                req = Req(
                    self.command,
                    url.path,
                    parse_qs(url.query, keep_blank_values=True),
                    dict(self.headers.items()),
                    body,
                    self.path,
                )
                server.requests.append(req)
                resp = server.handler(req)
                if resp.delay:
                    time.sleep(resp.delay)
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                if resp.no_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                elif "Content-Length" not in resp.headers:
                    self.send_header("Content-Length", str(len(resp.body)))
                if resp.truncate_at is not None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command == "HEAD":
                    return
                data = resp.body if resp.truncate_at is None else resp.body[: resp.truncate_at]
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    pass

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method) and r.path.startswith(path_prefix)
        )


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture
def other() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def make_client(
    *servers: FakeServer,
    registry: FakeServer | None = None,
    credentials: CredentialStore | None = None,
    sleeps: list[float] | None = None,
    **options: Any,
) -> RegistryClient:
    reg = registry or servers[0]
    opts = RegistryOptions(
        insecure=frozenset(s.host for s in (reg, *servers)),
        backoff=0.001,
        **{"retries": 3, **options},
    )
    transport = Transport(opts, sleep=(sleeps.append if sleeps is not None else lambda _s: None))
    return RegistryClient(reg.host, opts, credentials or CredentialStore(environ={}), transport=transport)


def write_auth(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def basic_ok(req: Req, user: str = "alice", password: str = SENTINEL) -> bool:
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return req.header("Authorization") == expected


def manifest_bytes(extra: str = "") -> bytes:
    cfg = "sha256:" + "a" * 64
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
            "layers": [],
            "annotations": {"x": extra},
        }
    ).encode()


# ------------------------------------------------------------------ pure parsing


def test_parse_basic_challenge() -> None:
    [ch] = parse_challenges('Basic realm="Registry Realm"')
    assert ch.scheme == "basic"
    assert ch.realm == "Registry Realm"


def test_parse_bearer_challenge_with_commas_in_quoted_scope() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull,push"'
    )
    [ch] = parse_challenges(header)
    assert ch.scheme == "bearer"
    assert ch.realm == "https://auth.docker.io/token"
    assert ch.service == "registry.docker.io"
    assert ch.scope == "repository:library/ubuntu:pull,push"


def test_parse_several_challenges_escapes_and_tokens() -> None:
    header = (
        'Bearer realm="https://a/token", service=reg, error="insufficient_scope", '
        'Basic realm="say \\"hi\\", friend"'
    )
    first, second = parse_challenges(header)
    assert first.scheme == "bearer"
    assert first.params == {"realm": "https://a/token", "service": "reg", "error": "insufficient_scope"}
    assert second.scheme == "basic"
    assert second.realm == 'say "hi", friend'


def test_parse_challenge_edge_cases() -> None:
    assert parse_challenges(None) == []
    assert parse_challenges("") == []
    [neg, basic] = parse_challenges("Negotiate abc==, Basic realm=x")
    assert neg.scheme == "negotiate" and neg.params == {}
    assert basic.realm == "x"
    [ch] = parse_challenges('BEARER REALM="https://x/t",Service="s"')
    assert ch.scheme == "bearer" and ch.realm == "https://x/t" and ch.service == "s"


def test_scopes_cover() -> None:
    assert scopes_cover({"repository:a:pull,push"}, {"repository:a:pull"})
    assert not scopes_cover({"repository:a:pull"}, {"repository:a:pull,push"})
    assert not scopes_cover({"repository:a:pull,push"}, {"repository:b:pull"})
    assert scopes_cover({"repository:a:*"}, {"repository:a:push"})
    assert scopes_cover(
        {"repository:a:pull,push", "repository:b:pull"}, {"repository:b:pull", "repository:a:push"}
    )


def test_redact_url() -> None:
    """RELIABILITY 7."""
    url = (
        "https://user:pw@reg.example/v2/r/blobs/uploads/u1?_state=SECRETSTATE&digest=sha256:ab"
        "&X-Amz-Signature=SIG&n=5#frag"
    )
    shown = redact_url(url)
    assert "user" not in shown and "pw" not in shown
    assert "SECRETSTATE" not in shown and "SIG" not in shown and "frag" not in shown
    assert shown.startswith("https://reg.example/v2/r/blobs/uploads/u1?")
    assert "digest=sha256:ab" in shown and "n=5" in shown and "_state=REDACTED" in shown
    assert redact_url("http://h/v2/") == "http://h/v2/"


def test_parse_retry_after() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None


def test_options_from_env_and_insecure_rules(tmp_path: Path) -> None:
    """RELIABILITY 26."""
    env = {
        "IMAGESMITH_INSECURE_REGISTRY": "reg.local:5000, other.example ,",
        "IMAGESMITH_CA_CERT": str(tmp_path / "ca.pem"),
    }
    opts = RegistryOptions.from_env(env, insecure=["Extra:1"], timeout=5)
    assert opts.insecure == {"reg.local:5000", "other.example", "extra:1"}
    assert opts.ca_cert == tmp_path / "ca.pem"
    assert opts.timeout == 5
    assert opts.is_insecure("reg.local:5000")
    assert not opts.is_insecure("reg.local:5001")
    assert not opts.is_insecure("reg.local")
    assert opts.is_insecure("other.example:8443")  # an entry without port matches any port
    assert opts.scheme("other.example") == "http"
    assert opts.scheme("localhost:5000") == "https"  # never implicitly insecure
    assert RegistryOptions().scheme("127.0.0.1:5000") == "https"
    explicit = RegistryOptions.from_env(env, ca_cert=tmp_path / "mine.pem")
    assert explicit.ca_cert == tmp_path / "mine.pem"
    assert RegistryOptions.from_env({}).insecure == frozenset()
    with pytest.raises(UsageError, match="without a scheme"):
        RegistryOptions(insecure=frozenset({"http://reg:5000"}))
    with pytest.raises(UsageError):
        RegistryOptions(timeout=0)


def test_bad_ca_cert_is_a_usage_error(tmp_path: Path) -> None:
    """RELIABILITY 26."""
    with pytest.raises(UsageError, match="does not exist"):
        Transport(RegistryOptions(ca_cert=tmp_path / "missing.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(UsageError, match="PEM"):
        Transport(RegistryOptions(ca_cert=bad))


# ------------------------------------------------------------------ credentials


def test_credentials_repr_redacts() -> None:
    creds = Credentials("alice", SENTINEL, identity_token=SENTINEL + "-token")
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert SENTINEL not in text
        assert "alice" in text


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("reg.example:5000", "reg.example:5000"),
        ("https://reg.example:5000", "reg.example:5000"),
        ("https://reg.example:5000/v1/", "reg.example:5000"),
        ("http://reg.example:5000/v2/", "reg.example:5000"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("REG.example", "reg.example"),
    ],
)
def test_auths_key_variants(tmp_path: Path, key: str, registry: str) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {key: {"auth": b64("u:" + SENTINEL)}}}))
    creds = CredentialStore(cfg).get(registry)
    assert creds == Credentials("u", SENTINEL)


def test_identity_token_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "dc").mkdir()
    (tmp_path / "dc" / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "ghcr.io": {"auth": b64("me:pw"), "identitytoken": "idtok"},
                    "quay.io": {},
                }
            }
        )
    )
    store = CredentialStore(environ={"DOCKER_CONFIG": str(tmp_path / "dc")})
    assert store.get("ghcr.io") == Credentials("me", "pw", identity_token="idtok")
    assert store.get("quay.io") is None
    assert store.get("nowhere.example") is None


def test_home_docker_config_then_podman_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(
        json.dumps({"auths": {"both.example": {"auth": b64("docker:d")}}})
    )
    podman = tmp_path / "podman-auth.json"
    podman.write_text(
        json.dumps(
            {
                "auths": {
                    "both.example": {"auth": b64("podman:p")},
                    "podman.example": {"auth": b64("pu:pp")},
                    "quay.io/team": {"auth": b64("team:t")},
                }
            }
        )
    )
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers" / "auth.json").write_text(
        json.dumps({"auths": {"xdg.example": {"auth": b64("xu:xp")}}})
    )
    env = {"HOME": str(home), "REGISTRY_AUTH_FILE": str(podman), "XDG_RUNTIME_DIR": str(runtime)}
    store = CredentialStore(environ=env)
    assert store.get("both.example") == Credentials("docker", "d")  # docker's file first
    assert store.get("podman.example") == Credentials("pu", "pp")
    assert store.get("xdg.example") == Credentials("xu", "xp")
    assert store.get("quay.io") is None  # a namespaced entry is not registry-wide
    # An explicit auth file is the only source.
    assert CredentialStore(podman, environ=env).get("xdg.example") is None


def test_bad_auth_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        CredentialStore(tmp_path / "missing.json").get("x.example")
    bad = tmp_path / "bad.json"
    bad.write_text('{"auths": {"x.example": {"auth": "' + SENTINEL + '"')
    with pytest.raises(UsageError, match="not valid JSON") as info:
        CredentialStore(bad).get("x.example")
    assert SENTINEL not in str(info.value)
    bad.write_text(json.dumps({"auths": {"x.example": {"auth": "!!" + SENTINEL}}}))
    with pytest.raises(UsageError, match="base64") as info:
        CredentialStore(bad).get("x.example")
    assert SENTINEL not in str(info.value)
    # Implicit files that are broken are skipped.
    (tmp_path / "dc").mkdir()
    (tmp_path / "dc" / "config.json").write_text("{nope")
    assert CredentialStore(environ={"DOCKER_CONFIG": str(tmp_path / "dc")}).get("x.example") is None


HELPER = """#!/bin/sh
read -r url
echo "$url" >> "{log}"
case "$url" in
  helped.example) printf '{{"ServerURL":"%s","Username":"helper-user","Secret":"{secret}"}}' "$url" ;;
  https://index.docker.io/v1/) printf '{{"ServerURL":"%s","Username":"hub-user","Secret":"hub-pw"}}' "$url" ;;
  token.example) printf '{{"ServerURL":"%s","Username":"<token>","Secret":"refresh-me"}}' "$url" ;;
  broken.example) echo "keychain exploded" >&2; exit 3 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def install_helper(bindir: Path, name: str, log: Path) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / f"docker-credential-{name}"
    script.write_text(HELPER.format(log=log, secret=SENTINEL))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_cred_helpers_and_creds_store(tmp_path: Path) -> None:
    log = tmp_path / "helper.log"
    install_helper(tmp_path / "bin", "fake", log)
    install_helper(tmp_path / "bin", "store", log)
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "credHelpers": {
                    "helped.example": "fake",
                    "broken.example": "fake",
                    "token.example": "fake",
                    "missing.example": "nonexistent",
                },
                "credsStore": "store",
                "auths": {
                    "fallback.example": {"auth": b64("file-user:file-pw")},
                    "missing.example": {"auth": b64("m:p")},
                },
            }
        )
    )
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    store = CredentialStore(cfg, environ=env)
    assert store.get("helped.example") == Credentials("helper-user", SENTINEL)
    assert store.get("docker.io") == Credentials("hub-user", "hub-pw")  # credsStore, Hub key
    assert store.get("token.example") == Credentials("", "", identity_token="refresh-me")
    # "credentials not found" from the store -> the auths entry.
    assert store.get("fallback.example") == Credentials("file-user", "file-pw")
    assert store.get("nothing.example") is None
    # A helper that is not installed is skipped with a warning.
    assert store.get("missing.example") == Credentials("m", "p")
    with pytest.raises(AuthenticationError, match="keychain exploded"):
        store.get("broken.example")
    assert "helped.example" in log.read_text().splitlines()
    assert "https://index.docker.io/v1/" in log.read_text().splitlines()


def test_helpers_on_relative_path_entries_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_helper(tmp_path / "bin", "fake", tmp_path / "log")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {"helped.example": "fake"}}))
    monkeypatch.chdir(tmp_path)
    assert CredentialStore(cfg, environ={"PATH": "bin:/usr/bin"}).get("helped.example") is None
    cfg.write_text(json.dumps({"credHelpers": {"helped.example": "../bin/fake"}}))
    assert CredentialStore(cfg, environ={"PATH": str(tmp_path / "bin")}).get("helped.example") is None


def _script(bindir: Path, name: str, body: str) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / f"docker-credential-{name}"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)


@pytest.mark.parametrize(
    "body",
    [
        # The answer itself, then a failing exit.
        """printf '{"ServerURL":"x","Username":"u","Secret":"%s"}' "$SECRET"; exit 1""",
        """printf '{\\n  "Username": "u",\\n  "Secret": "%s"\\n}\\n' "$SECRET"; exit 1""",
        """echo "error: cannot store: password=$SECRET rejected"; exit 1""",
        """printf '{"Secret": "%s"}' "$SECRET" >&2; echo "keychain locked"; exit 1""",
    ],
    ids=["json", "pretty-json", "key-value", "json-on-stderr"],
)
def test_a_failing_helper_output_never_shows_the_secret(tmp_path: Path, body: str) -> None:
    _script(tmp_path / "bin", "leaky", f"read -r url\nSECRET='{SENTINEL}'\n{body}\n")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {"leaky.example": "leaky"}}))
    store = CredentialStore(cfg, environ={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    with pytest.raises(AuthenticationError, match=r"docker-credential-leaky failed for leaky") as info:
        store.get("leaky.example")
    assert SENTINEL not in str(info.value)
    assert "\n" not in str(info.value)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie waits for a reaper, but is dead


def test_a_hanging_helper_and_its_children_are_killed_after_the_configured_time(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    _script(tmp_path / "bin", "slow", f"sleep 300 &\necho $! > {pids}\necho $$ >> {pids}\nsleep 300\n")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {"slow.example": "slow"}}))
    options = RegistryOptions.from_env({"IMAGESMITH_CREDENTIAL_HELPER_TIMEOUT": "1.5"})
    assert options.credential_helper_timeout == 1.5
    store = CredentialStore(
        cfg,
        environ={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"},
        helper_timeout=options.credential_helper_timeout,
    )
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match=r"did not answer within 1\.5 s"):
        store.get("slow.example")
    assert time.monotonic() - started < 30
    children = [int(p) for p in pids.read_text().split()]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in children), "the helper's process group outlived it"
    with pytest.raises(UsageError, match="credential helper timeout"):
        RegistryOptions(credential_helper_timeout=0)


# ------------------------------------------------------------------ retries


def test_429_retry_after_then_success(fake: FakeServer) -> None:
    data = manifest_bytes()
    calls = iter(
        [
            Resp(429, {"Retry-After": "2"}),
            Resp(429, {"Retry-After": "999"}),
            Resp(200, {"Content-Type": OCI_MANIFEST}, data),
        ]
    )
    fake.handler = lambda req: next(calls)
    sleeps: list[float] = []
    client = make_client(fake, sleeps=sleeps, max_retry_after=10)
    got = client.get_manifest("team/app", "v1")
    assert got.data == data and got.media_type == OCI_MANIFEST
    assert got.digest == Digest.of(data)
    assert sleeps == [2.0, 10.0]  # honoured, and capped


def test_429_forever_is_a_rate_limit_error_naming_the_host(fake: FakeServer) -> None:
    body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
    fake.handler = lambda req: Resp(429, {"Retry-After": "1"}, body)
    sleeps: list[float] = []
    client = make_client(fake, sleeps=sleeps, retries=2)
    with pytest.raises(RateLimitError) as info:
        client.get_manifest("team/app", "v1")
    assert fake.host in str(info.value)
    assert "TOOMANYREQUESTS" in str(info.value)
    assert info.value.temporary
    assert fake.count("GET") == 3
    assert sleeps == [1.0, 1.0]


def test_5xx_retries_are_bounded(fake: FakeServer) -> None:
    page = b"<html><body><h1>503 Service Unavailable</h1>\x07</body></html>"
    fake.handler = lambda req: Resp(503, {"Content-Type": "text/html"}, page)
    sleeps: list[float] = []
    client = make_client(fake, sleeps=sleeps, retries=3)
    with pytest.raises(RegistryError) as info:
        client.blob_exists("team/app", Digest.of(b"x"))
    assert fake.count() == 4
    assert len(sleeps) == 3 and all(s > 0 for s in sleeps)
    err = info.value
    assert err.status == 503 and err.temporary
    assert "temporarily" in str(err) and "503" in str(err)


def test_5xx_then_success(fake: FakeServer) -> None:
    calls = iter([Resp(500), Resp(502), Resp(200)])
    fake.handler = lambda req: next(calls)
    assert make_client(fake).blob_exists("team/app", Digest.of(b"x"))


def test_connection_refused_is_unreachable_after_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = f"127.0.0.1:{port}"
    opts = RegistryOptions(insecure=frozenset({host}), retries=2, backoff=0.001)
    sleeps: list[float] = []
    client = RegistryClient(
        host, opts, CredentialStore(environ={}), transport=Transport(opts, sleep=sleeps.append)
    )
    with pytest.raises(RegistryUnreachableError, match="refused") as info:
        client.ping()
    assert host in str(info.value)
    assert len(sleeps) == 2


def test_server_that_never_answers_times_out(fake: FakeServer) -> None:
    fake.handler = lambda req: Resp(200, delay=1.0)
    client = make_client(fake, timeout=0.2, retries=1)
    start = time.monotonic()
    with pytest.raises(RegistryUnreachableError, match="did not answer"):
        client.ping()
    assert time.monotonic() - start < 3
    assert fake.count() == 2


def test_tls_to_a_plain_http_server_hints_insecure_registry(fake: FakeServer) -> None:
    """RELIABILITY 26."""
    opts = RegistryOptions(retries=0)
    client = RegistryClient(fake.host, opts, CredentialStore(environ={}))
    with pytest.raises(RegistryUnreachableError) as info:
        client.ping()
    assert f"--insecure-registry {fake.host}" in str(info.value)
    assert not fake.requests or all(r.method != "GET" for r in fake.requests)


# ------------------------------------------------------------------ error messages


def test_error_message_lists_codes_method_and_redacted_url(fake: FakeServer) -> None:
    """RELIABILITY 7."""
    body = json.dumps(
        {
            "errors": [
                {"code": "MANIFEST_INVALID", "message": "manifest invalid", "detail": "bad layer"},
                {"code": "BLOB_UNKNOWN", "message": "blob unknown", "detail": {"digest": "x"}},
            ]
        }
    ).encode()
    fake.handler = lambda req: Resp(400, {"Content-Type": "application/json"}, body)
    client = make_client(fake)
    with pytest.raises(RegistryError) as info:
        client.put_manifest("team/app", "v1", manifest_bytes(), OCI_MANIFEST)
    text = str(info.value)
    assert info.value.codes == ("MANIFEST_INVALID", "BLOB_UNKNOWN")
    assert "PUT" in text and "400" in text and "bad layer" in text
    assert f"{fake.url}/v2/team/app/manifests/v1" in text
    assert info.value.url == f"{fake.url}/v2/team/app/manifests/v1"


def test_html_error_page_is_sanitized(fake: FakeServer) -> None:
    """RELIABILITY 7."""
    page = (
        b"<html><head><title>Oops</title></head><body>" + b"Gateway\x1b[31m broke " * 50 + b"</body></html>"
    )
    fake.handler = lambda req: Resp(418, {"Content-Type": "text/html"}, page)
    with pytest.raises(RegistryError) as info:
        make_client(fake).ping()
    text = str(info.value)
    assert "418" in text and "Oops" in text and "Gateway" in text
    assert "<html>" not in text and "\x1b" not in text
    assert len(text) < 600


def test_huge_error_body_is_read_with_a_cap(fake: FakeServer) -> None:
    """RELIABILITY 6: a 10 MB error body is cut at MAX_ERROR_BODY; the error stays one short line."""
    body = b'{"errors":[{"code":"DENIED","message":"' + b"x" * 10_000_000 + b'"}]}'
    fake.handler = lambda req: Resp(400, {"Content-Type": "application/json"}, body)
    with pytest.raises(RegistryError) as info:
        make_client(fake).ping()
    text = str(info.value)
    assert "400" in text and len(text) < 1000 and "\n" not in text


def test_404_manifest_is_not_found(fake: FakeServer) -> None:
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
    fake.handler = lambda req: Resp(404, {}, body)
    client = make_client(fake)
    with pytest.raises(NotFoundError, match=f"manifest unknown: {fake.host}/team/app:v1"):
        client.get_manifest("team/app", "v1")
    assert client.head_manifest("team/app", "v1") is None


# ------------------------------------------------------------------ manifests


def test_oversize_manifest_refused_by_content_length(fake: FakeServer) -> None:
    """RELIABILITY 6."""
    fake.handler = lambda req: Resp(
        200, {"Content-Type": OCI_MANIFEST, "Content-Length": str(MAX_MANIFEST_SIZE + 1)}, b"{", truncate_at=1
    )
    with pytest.raises(ManifestError, match="larger than"):
        make_client(fake).get_manifest("team/app", "v1")


def test_oversize_manifest_refused_while_streaming(fake: FakeServer) -> None:
    """RELIABILITY 6."""
    body = b" " * (MAX_MANIFEST_SIZE + 1024 * 1024)
    fake.handler = lambda req: Resp(200, {"Content-Type": OCI_MANIFEST}, body, no_length=True)
    with pytest.raises(ManifestError, match="larger than"):
        make_client(fake).get_manifest("team/app", "v1")


def test_pull_by_digest_checks_our_own_hash(fake: FakeServer) -> None:
    good = manifest_bytes("good")
    evil = manifest_bytes("evil")
    digest = Digest.of(good)
    # The registry serves other bytes, and even claims the right digest for them.
    fake.handler = lambda req: Resp(
        200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": str(digest)}, evil
    )
    with pytest.raises(IntegrityError, match=str(Digest.of(evil))):
        make_client(fake).get_manifest("team/app", str(digest))
    # A wrong Docker-Content-Digest on correct bytes does not matter: our hash decides.
    fake.handler = lambda req: Resp(
        200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": str(Digest.of(evil))}, good
    )
    got = make_client(fake).get_manifest("team/app", str(digest))
    assert got.digest == digest


def test_manifest_accept_and_content_type(fake: FakeServer) -> None:
    data = manifest_bytes()
    fake.handler = lambda req: Resp(
        201 if req.method == "PUT" else 200, {"Content-Type": "application/json"}, data
    )
    client = make_client(fake)
    got = client.get_manifest("team/app", "v1")
    assert got.media_type == OCI_MANIFEST  # sniffed from the document when the header is generic
    accept = fake.requests[-1].header("Accept") or ""
    for media_type in (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ):
        assert media_type in accept
    assert client.put_manifest("team/app", "v2", data, OCI_MANIFEST) == Digest.of(data)
    put = fake.requests[-1]
    assert put.method == "PUT" and put.header("Content-Type") == OCI_MANIFEST and put.body == data


def test_head_manifest_falls_back_to_get_on_405(fake: FakeServer) -> None:
    data = manifest_bytes()
    fake.handler = lambda req: (
        Resp(405) if req.method == "HEAD" else Resp(200, {"Content-Type": OCI_MANIFEST}, data)
    )
    desc = make_client(fake).head_manifest("team/app", "v1")
    assert desc == Descriptor(OCI_MANIFEST, Digest.of(data), len(data))


def test_invalid_references_never_reach_the_network(fake: FakeServer) -> None:
    client = make_client(fake)
    with pytest.raises(Exception, match="digest"):
        client.get_manifest("team/app", "sha256:../../etc")
    with pytest.raises(Exception, match="tag"):
        client.get_manifest("team/app", "../x")
    with pytest.raises(Exception, match="repository"):
        client.get_manifest("../x", "v1")
    assert fake.requests == []


# ------------------------------------------------------------------ blobs


def test_blob_exists_head_405_falls_back_to_get(fake: FakeServer) -> None:
    present = Digest.of(b"present")

    def handler(req: Req) -> Resp:
        if req.method == "HEAD":
            return Resp(405)
        if req.path.endswith(str(present)):
            return Resp(200, {}, b"present" * 100000)
        return Resp(404)

    fake.handler = handler
    client = make_client(fake)
    assert client.blob_exists("team/app", present)
    assert not client.blob_exists("team/app", Digest.of(b"absent"))
    assert fake.count("GET") == 2


def test_blob_redirect_to_another_host_drops_authorization(
    fake: FakeServer, other: FakeServer, tmp_path: Path
) -> None:
    """RELIABILITY 22."""
    data = os.urandom(50_000)
    digest = Digest.of(data)

    def registry(req: Req) -> Resp:
        if not basic_ok(req):
            return Resp(401, {"WWW-Authenticate": 'Basic realm="test"'})
        return Resp(307, {"Location": f"{other.url}/cdn/blob?X-Amz-Signature=abc"})

    fake.handler = registry
    other.handler = lambda req: Resp(200, {}, data)
    creds = CredentialStore(write_auth(tmp_path / "auth.json", fake.host, "alice", SENTINEL))
    client = make_client(fake, other, credentials=creds)
    with client.open_blob("team/app", Descriptor("application/octet-stream", digest, len(data))) as r:
        assert r.read_all_chunks() == data
    assert basic_ok(fake.requests[-1])
    [cdn] = other.requests
    assert cdn.header("Authorization") is None
    assert cdn.query == {"X-Amz-Signature": ["abc"]}


def test_redirect_loop_is_bounded(fake: FakeServer) -> None:
    fake.handler = lambda req: Resp(302, {"Location": "/v2/team/app/blobs/loop"})
    client = make_client(fake, max_redirects=3)
    desc = Descriptor("x", Digest.of(b"x"), 1)
    with pytest.raises(RegistryError, match="redirects"), client.open_blob("team/app", desc):
        pass
    assert fake.count() <= 4 * 4  # (max_redirects + 1) hops, no retry storm


def test_redirect_to_plain_http_elsewhere_is_refused(fake: FakeServer, other: FakeServer) -> None:
    """RELIABILITY 22."""
    fake.handler = lambda req: Resp(307, {"Location": f"{other.url}/cdn"})
    client = make_client(registry=fake)  # `other` is not listed insecure
    desc = Descriptor("x", Digest.of(b"x"), 1)
    with pytest.raises(RegistryError, match="plain http"), client.open_blob("team/app", desc):
        pass
    assert other.requests == []


def test_blob_with_wrong_bytes_or_size_is_an_integrity_error(fake: FakeServer) -> None:
    data = b"the real content"
    desc = Descriptor("x", Digest.of(data), len(data))
    fake.handler = lambda req: Resp(200, {}, b"other content!!!")
    client = make_client(fake)
    with pytest.raises(IntegrityError, match="does not match"), client.open_blob("r", desc) as r:
        r.read_all_chunks()
    fake.handler = lambda req: Resp(200, {}, data + b"more")
    with pytest.raises(IntegrityError, match="longer"), client.open_blob("r", desc) as r:
        r.read_all_chunks()
    with pytest.raises(ManifestError, match="allowed"):
        client.get_blob_bytes("r", desc, max_size=4)


def test_dropped_download_resumes_with_range(fake: FakeServer) -> None:
    data = os.urandom(300_000)
    desc = Descriptor("x", Digest.of(data), len(data))

    def handler(req: Req) -> Resp:
        rng = req.header("Range")
        if rng is None:
            return Resp(200, {"Content-Length": str(len(data))}, data, truncate_at=100_000)
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        return Resp(206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, data[start:])

    fake.handler = handler
    client = make_client(fake)
    assert client.get_blob_bytes("team/app", desc, max_size=len(data)) == data
    assert [r.header("Range") for r in fake.requests] == [None, "bytes=100000-"]


def test_foreign_layer_urls_are_fetched_without_credentials(
    fake: FakeServer, other: FakeServer, tmp_path: Path
) -> None:
    """RELIABILITY 15."""
    data = b"foreign layer"
    desc = Descriptor(
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        Digest.of(data),
        len(data),
        urls=(f"{other.url}/layer.tgz",),
    )
    fake.handler = lambda req: Resp(401, {"WWW-Authenticate": 'Basic realm="x"'})
    other.handler = lambda req: Resp(200, {}, data)
    creds = CredentialStore(write_auth(tmp_path / "auth.json", fake.host, "alice", SENTINEL))
    client = make_client(fake, other, credentials=creds)
    assert client.get_blob_bytes("team/app", desc, max_size=100) == data
    assert other.requests[0].header("Authorization") is None
    assert fake.requests == []


# ------------------------------------------------------------------ uploads and mounts


def test_mount_202_falls_back_and_cancels_the_session(fake: FakeServer) -> None:
    digest = Digest.of(b"blob")

    def handler(req: Req) -> Resp:
        if req.method == "POST" and req.query.get("from") == ["lib/base"]:
            return Resp(201, {"Location": f"/v2/team/app/blobs/{digest}"})
        if req.method == "POST":
            return Resp(202, {"Location": "/v2/team/app/blobs/uploads/u-1?_state=opaque"})
        if req.method == "DELETE":
            return Resp(204)
        return Resp(404)

    fake.handler = handler
    client = make_client(fake)
    assert client.mount_blob("team/app", digest, "lib/base")
    assert fake.requests[-1].query == {"mount": [str(digest)], "from": ["lib/base"]}
    assert not client.mount_blob("team/app", digest, "elsewhere/repo")
    delete = fake.requests[-1]
    assert delete.method == "DELETE" and delete.path == "/v2/team/app/blobs/uploads/u-1"
    assert delete.query == {"_state": ["opaque"]}


def upload_handler(
    put_results: list[Resp], location: str = "/v2/team/app/blobs/uploads/u-1?_state=st"
) -> Handler:
    results = iter(put_results)

    def handler(req: Req) -> Resp:
        if req.method == "POST":
            return Resp(202, {"Location": location})
        if req.method == "PUT":
            return next(results)
        return Resp(404)

    return handler


def test_upload_keeps_location_query_and_streams_with_length(fake: FakeServer, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    digest = Digest.of(data)
    path = tmp_path / "blob"
    path.write_bytes(data)
    fake.handler = upload_handler([Resp(201)])
    make_client(fake).upload_blob("team/app", digest, len(data), lambda: path.open("rb"))
    put = fake.requests[-1]
    assert put.path == "/v2/team/app/blobs/uploads/u-1"
    assert put.query == {"_state": ["st"], "digest": [str(digest)]}
    assert put.header("Content-Length") == str(len(data))
    assert put.header("Content-Type") == "application/octet-stream"
    assert put.body == data


def test_upload_temporary_failure_restarts_the_whole_blob(fake: FakeServer) -> None:
    data = b"blob content" * 1000
    digest = Digest.of(data)
    opened: list[int] = []

    def open_body() -> io.BytesIO:
        opened.append(1)
        return io.BytesIO(data)

    fake.handler = upload_handler([Resp(503), Resp(500), Resp(201)])
    sleeps: list[float] = []
    make_client(fake, sleeps=sleeps).upload_blob("team/app", digest, len(data), open_body)
    assert fake.count("POST") == 3 and fake.count("PUT") == 3
    assert len(opened) == 3 and len(sleeps) == 2
    assert all(r.body == data for r in fake.requests if r.method == "PUT")


def test_upload_retries_are_bounded(fake: FakeServer) -> None:
    data = b"x"
    fake.handler = upload_handler([Resp(503)] * 10)
    with pytest.raises(RegistryError) as info:
        make_client(fake, retries=2).upload_blob("r", Digest.of(data), 1, lambda: io.BytesIO(data))
    assert info.value.temporary
    assert fake.count("PUT") == 3


def test_upload_digest_invalid_is_an_integrity_error(fake: FakeServer) -> None:
    body = b'{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match"}]}'
    fake.handler = upload_handler([Resp(400, {"Content-Type": "application/json"}, body)])
    data = b"abc"
    with pytest.raises(IntegrityError, match="DIGEST_INVALID"):
        make_client(fake).upload_blob("r", Digest.of(data), 3, lambda: io.BytesIO(data))


def test_upload_body_that_does_not_match_is_stopped_before_the_end(fake: FakeServer) -> None:
    fake.handler = upload_handler([Resp(201)] * 5)
    client = make_client(fake)
    with pytest.raises(IntegrityError, match="hashes to"):
        client.upload_blob("r", Digest.of(b"expected"), 8, lambda: io.BytesIO(b"tampered"))
    with pytest.raises(IntegrityError, match="ended after"):
        client.upload_blob("r", Digest.of(b"expected"), 8, lambda: io.BytesIO(b"short"))
    assert fake.count("PUT") == 0 or all(len(r.body) < 8 for r in fake.requests if r.method == "PUT")


def test_upload_location_on_another_host_gets_no_authorization(
    fake: FakeServer, other: FakeServer, tmp_path: Path
) -> None:
    """RELIABILITY 22."""

    def registry(req: Req) -> Resp:
        if not basic_ok(req):
            return Resp(401, {"WWW-Authenticate": 'Basic realm="test"'})
        return Resp(202, {"Location": f"{other.url}/upload/u-9?sig=secret"})

    fake.handler = registry
    other.handler = lambda req: Resp(201)
    creds = CredentialStore(write_auth(tmp_path / "auth.json", fake.host, "alice", SENTINEL))
    data = b"payload"
    make_client(fake, other, credentials=creds).upload_blob(
        "team/app", Digest.of(data), len(data), lambda: io.BytesIO(data)
    )
    [put] = other.requests
    assert put.header("Authorization") is None
    assert put.query == {"sig": ["secret"], "digest": [str(Digest.of(data))]}
    assert put.body == data


# ------------------------------------------------------------------ tags


def test_list_tags_follows_relative_and_absolute_links(fake: FakeServer) -> None:
    def handler(req: Req) -> Resp:
        last = req.query.get("last", [""])[0]
        if last == "":
            return Resp(
                200,
                {"Link": '</v2/team/app/tags/list?n=2&last=b>; rel="next"'},
                json.dumps({"name": "team/app", "tags": ["a", "b"]}).encode(),
            )
        if last == "b":
            return Resp(
                200,
                {"Link": f'<{fake.url}/v2/team/app/tags/list?n=2&last=d>; rel="next"'},
                json.dumps({"name": "team/app", "tags": ["c", "d"]}).encode(),
            )
        return Resp(200, {}, json.dumps({"name": "team/app", "tags": ["e"]}).encode())

    fake.handler = handler
    assert list(make_client(fake).list_tags("team/app", page_size=2)) == ["a", "b", "c", "d", "e"]
    assert [r.query.get("n") for r in fake.requests] == [["2"]] * 3


def test_list_tags_loop_and_null(fake: FakeServer) -> None:
    fake.handler = lambda req: Resp(
        200, {"Link": '</v2/r/tags/list?last=x>; rel="next"'}, b'{"name":"r","tags":null}'
    )
    with pytest.raises(RegistryError, match="loops"):
        list(make_client(fake).list_tags("r"))


# ------------------------------------------------------------------ authentication


class TokenServer:
    """Bearer behaviour on top of a FakeServer: ``/token`` issues numbered tokens."""

    def __init__(
        self,
        server: FakeServer,
        *,
        expires_in: int | None = 300,
        accept: Callable[[str], bool] | None = None,
        user: str = "bob",
    ) -> None:
        self.server = server
        self.issued: list[Req] = []
        self.expires_in = expires_in
        self.accept = accept or (lambda token: True)
        self.user = user
        server.handler = self.handle

    def handle(self, req: Req) -> Resp:
        if req.path == "/token":
            self.issued.append(req)
            body: dict[str, Any] = {"token": f"tok-{len(self.issued)}"}
            if self.expires_in is not None:
                body["expires_in"] = self.expires_in
            return Resp(200, {"Content-Type": "application/json"}, json.dumps(body).encode())
        auth = req.header("Authorization") or ""
        if not auth.startswith("Bearer ") or not self.accept(auth[7:]):
            return Resp(
                401,
                {
                    "WWW-Authenticate": f'Bearer realm="{self.server.url}/token",'
                    'service="fake",scope="repository:x:pull"'
                },
            )
        return Resp(200, {}, b"")


def test_bearer_token_cached_per_scope_set(fake: FakeServer, tmp_path: Path) -> None:
    tokens = TokenServer(fake)
    creds = CredentialStore(write_auth(tmp_path / "auth.json", fake.host, "bob", SENTINEL))
    client = make_client(fake, credentials=creds)
    for _ in range(3):
        assert client.blob_exists("team/app", Digest.of(b"x"))
    assert len(tokens.issued) == 1
    first = tokens.issued[0]
    assert first.query["scope"] == ["repository:team/app:pull"]
    assert first.query["service"] == ["fake"]
    assert basic_ok(first, "bob", SENTINEL)
    client.blob_exists("other/repo", Digest.of(b"x"))
    assert len(tokens.issued) == 2


def test_concurrent_first_requests_share_one_token(fake: FakeServer) -> None:
    tokens = TokenServer(fake)
    inner = fake.handler

    def handler(req: Req) -> Resp:
        if not req.header("Authorization") and req.path != "/token":
            return Resp(401, {"WWW-Authenticate": f'Bearer realm="{fake.url}/token"'})
        time.sleep(0.01)
        return inner(req)

    fake.handler = handler
    client = make_client(fake)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            client.blob_exists("team/app", Digest.of(b"x"))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(tokens.issued) == 1


def test_push_token_covers_pull_requests(fake: FakeServer) -> None:
    tokens = TokenServer(fake)
    fake.handler = lambda req: (
        Resp(202, {"Location": "/up/1"})
        if req.method == "POST" and req.header("Authorization")
        else tokens.handle(req)
    )
    client = make_client(fake)
    client.mount_blob("team/app", Digest.of(b"x"), "team/app")  # gets a pull,push token
    client.blob_exists("team/app", Digest.of(b"x"))
    assert len(tokens.issued) == 1
    assert tokens.issued[0].header("Authorization") is None  # anonymous


def test_401_after_a_fresh_token_is_final(fake: FakeServer) -> None:
    """RELIABILITY 24."""
    tokens = TokenServer(fake, accept=lambda token: False)
    with pytest.raises(AuthenticationError, match="docker login"):
        make_client(fake).blob_exists("team/app", Digest.of(b"x"))
    assert len(tokens.issued) == 1
    assert fake.count("HEAD") == 2


def test_401_with_a_token_fetched_for_this_request_is_not_retried(fake: FakeServer) -> None:
    tokens = TokenServer(fake, accept=lambda token: token == "tok-1")
    client = make_client(fake)
    client.blob_exists("team/app", Digest.of(b"x"))  # learns the challenge; tok-1 works
    fake.requests.clear()
    with pytest.raises(AuthenticationError):
        client.blob_exists("other/repo", Digest.of(b"x"))  # new scope: fresh tok-2, refused
    assert len(tokens.issued) == 2
    assert fake.count("HEAD") == 1


def test_expired_token_is_refreshed_once(fake: FakeServer) -> None:
    """RELIABILITY 24."""
    tokens = TokenServer(fake, expires_in=None)  # default lifetime: 60 s
    client = make_client(fake)
    now = [1000.0]
    client.auth.clock = lambda: now[0]
    client.blob_exists("r", Digest.of(b"x"))
    client.blob_exists("r", Digest.of(b"x"))
    assert len(tokens.issued) == 1
    now[0] += 61
    client.blob_exists("r", Digest.of(b"x"))
    assert len(tokens.issued) == 2
    # A token the registry stops accepting before it expires: one refresh, then success.
    tokens.accept = lambda token: token != "tok-2"
    client.blob_exists("r", Digest.of(b"x"))
    assert len(tokens.issued) == 3


def test_token_revoked_mid_push_refreshes_once_and_resends_the_whole_body(
    fake: FakeServer,
) -> None:
    """RELIABILITY 24."""
    tokens = TokenServer(fake)
    data = os.urandom(100_000)
    digest = Digest.of(data)
    opened: list[int] = []

    def open_body() -> io.BytesIO:
        opened.append(1)
        return io.BytesIO(data)

    def handler(req: Req) -> Resp:
        auth = req.header("Authorization") or ""
        if req.method == "POST" and auth:
            return Resp(202, {"Location": "/v2/r/blobs/uploads/u?_state=s"})
        if req.method == "PUT" and auth == "Bearer tok-2":
            return Resp(201)
        if req.method == "PUT":  # tok-1 expired between the POST and the PUT
            return Resp(401, {"WWW-Authenticate": f'Bearer realm="{fake.url}/token",service="fake"'})
        return tokens.handle(req)

    fake.handler = handler
    make_client(fake).upload_blob("r", digest, len(data), open_body)
    puts = [r for r in fake.requests if r.method == "PUT"]
    assert len(puts) == 2 and all(r.body == data for r in puts)
    assert len(opened) == 2 and len(tokens.issued) == 2
    # Refused again after the refresh: an error, not a loop.
    fake.requests.clear()
    fake.handler = lambda req: (
        handler(req)
        if req.method != "PUT"
        else Resp(401, {"WWW-Authenticate": f'Bearer realm="{fake.url}/token"'})
    )
    with pytest.raises(AuthenticationError):
        make_client(fake).upload_blob("r", digest, len(data), open_body)
    assert fake.count("PUT") == 2


def test_identity_token_uses_oauth_refresh_grant(fake: FakeServer, tmp_path: Path) -> None:
    tokens = TokenServer(fake)
    cfg = tmp_path / "auth.json"
    cfg.write_text(json.dumps({"auths": {fake.host: {"identitytoken": SENTINEL}}}))

    def handler(req: Req) -> Resp:
        if req.path == "/token" and req.method == "POST":
            tokens.issued.append(req)
            return Resp(200, {}, b'{"access_token": "oauth-tok", "expires_in": 300}')
        return tokens.handle(req)

    fake.handler = handler
    make_client(fake, credentials=CredentialStore(cfg)).blob_exists("team/app", Digest.of(b"x"))
    [post] = tokens.issued
    form = parse_qs(post.body.decode())
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == [SENTINEL]
    assert form["service"] == ["fake"]
    assert form["scope"] == ["repository:team/app:pull"]
    assert fake.requests[-1].header("Authorization") == "Bearer oauth-tok"


def test_token_response_size_is_capped(fake: FakeServer) -> None:
    """RELIABILITY 6."""
    tokens = TokenServer(fake)

    def handler(req: Req) -> Resp:
        if req.path == "/token":
            return Resp(200, {}, b'{"token": "' + b"a" * (2 << 20) + b'"}', no_length=True)
        return tokens.handle(req)

    fake.handler = handler
    with pytest.raises(AuthenticationError, match="refused"):
        make_client(fake).blob_exists("r", Digest.of(b"x"))


def test_https_registry_refuses_http_realm() -> None:
    """RELIABILITY 23."""
    opts = RegistryOptions()
    auth = Authenticator("reg.example", "https://reg.example", Transport(opts), None)
    auth.unauthorized('Bearer realm="http://reg.example/token",service="s"', frozenset())
    with pytest.raises(AuthenticationError, match="plain http"):
        auth.authorization(frozenset({"repository:a:pull"}))
    # Plain-http registry: an http realm on its own host is fine, another host is not.
    local = Transport(RegistryOptions(insecure=frozenset({"127.0.0.1:5000"})))
    auth = Authenticator("127.0.0.1:5000", "http://127.0.0.1:5000", local, None)
    auth.check_realm("http://127.0.0.1:6000/token")
    auth.check_realm("https://auth.example/token")
    with pytest.raises(AuthenticationError, match="another host"):
        auth.check_realm("http://evil.example/token")


def test_an_https_realm_that_speaks_plain_http_gets_advice_that_can_help(
    fake: FakeServer, other: FakeServer
) -> None:
    """A plain-http registry whose token realm says https:// but is plain http: listing the
    realm's host as insecure cannot change the scheme the registry names, so the message says
    what can (the registry's realm setting, or TLS on the token endpoint)."""
    fake.handler = lambda req: Resp(
        401, {"WWW-Authenticate": f'Bearer realm="https://{other.host}/token",service="s"'}
    )
    other.handler = lambda req: Resp(200, {"Content-Type": "application/json"}, b'{"token": "t"}')
    client = make_client(fake, other, retries=0)
    with pytest.raises(RegistryUnreachableError) as info:
        client.blob_exists("r", Digest.of(b"x"))
    message = str(info.value)
    assert "pass --insecure-registry" not in message
    assert f"https://{other.host}/token" in message and "realm" in message
    assert f"http://{other.host}/token" in message  # what the realm should say
    assert not other.requests  # a TLS handshake only, never a request
    # The same for a redirect: the URL is the server's, the flag cannot help.
    fake.handler = lambda req: Resp(307, {"Location": f"https://{other.host}/blob"})
    with pytest.raises(RegistryUnreachableError, match="a redirect named an https URL") as info:
        make_client(fake, other, retries=0).get_manifest("r", "v1")
    assert "pass --insecure-registry" not in str(info.value)


def test_basic_challenge_without_credentials(fake: FakeServer) -> None:
    fake.handler = lambda req: Resp(401, {"WWW-Authenticate": 'Basic realm="r"'})
    with pytest.raises(AuthenticationError, match=f"docker login {fake.host}"):
        make_client(fake).blob_exists("r", Digest.of(b"x"))
    assert fake.count() == 1


def test_ping_records_challenge(fake: FakeServer, tmp_path: Path) -> None:
    def handler(req: Req) -> Resp:
        if basic_ok(req):
            return Resp(200)
        return Resp(401, {"WWW-Authenticate": 'Basic realm="r"'})

    fake.handler = handler
    creds = CredentialStore(write_auth(tmp_path / "auth.json", fake.host, "alice", SENTINEL))
    client = make_client(fake, credentials=creds)
    client.ping()
    assert client.blob_exists("r", Digest.of(b"x"))
    assert fake.count("HEAD") == 1  # Basic sent up front once the challenge is known


def test_sentinel_password_never_leaks(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Basic: wrong password, always refused.
    fake.handler = lambda req: Resp(
        401, {"WWW-Authenticate": 'Basic realm="r"'}, b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}'
    )
    auth_file = write_auth(tmp_path / "auth.json", fake.host, "alice", SENTINEL)
    store = CredentialStore(auth_file)
    client = make_client(fake, credentials=store)
    texts: list[str] = []
    with pytest.raises(AuthenticationError) as info:
        client.get_manifest("team/app", "v1")
    texts += [
        str(info.value),
        repr(info.value),
        repr(client),
        repr(store),
        repr(store.get(fake.host)),
        repr(client.auth),
    ]
    # Bearer: the token endpoint refuses.
    fake.handler = lambda req: (
        Resp(401, {}, b'{"details":"bad"}')
        if req.path == "/token"
        else Resp(401, {"WWW-Authenticate": f'Bearer realm="{fake.url}/token",service="s"'})
    )
    client = make_client(fake, credentials=CredentialStore(auth_file))
    with pytest.raises(AuthenticationError) as info:
        client.get_manifest("team/app", "v1")
    texts += [str(info.value), caplog.text]
    b64 = base64.b64encode(f"alice:{SENTINEL}".encode()).decode()
    for text in texts:
        assert SENTINEL not in text
        assert b64 not in text
    assert "-> 401" in caplog.text


def test_debug_log_format(fake: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="imagesmith.http")
    fake.handler = lambda req: (
        Resp(202, {"Location": "/v2/r/blobs/uploads/u?_state=SECRETSTATE"})
        if req.method == "POST"
        else Resp(201)
    )
    make_client(fake).upload_blob("r", Digest.of(b"x"), 1, lambda: io.BytesIO(b"x"))
    lines = [r.getMessage() for r in caplog.records if r.name == "imagesmith.http"]
    assert any(
        line.startswith(f"POST {fake.url}/v2/r/blobs/uploads/ -> 202 (") and line.endswith(" s)")
        for line in lines
    )
    put = next(line for line in lines if line.startswith("PUT"))
    assert "_state=REDACTED" in put and "SECRETSTATE" not in caplog.text
    assert f"digest={Digest.of(b'x')}" in put


# ------------------------------------------------------------------ client plumbing


def test_docker_hub_api_host_and_pool() -> None:
    opts = RegistryOptions()
    with RegistryPool(opts, CredentialStore(environ={})) as pool:
        hub = pool.client("docker.io")
        assert hub.base_url == "https://registry-1.docker.io"
        assert pool.client("index.docker.io") is hub
        assert pool.client("ghcr.io") is not hub
        assert pool.client("ghcr.io").base_url == "https://ghcr.io"
    insecure = RegistryClient("localhost:5000", RegistryOptions(insecure=frozenset({"localhost"})))
    assert insecure.base_url == "http://localhost:5000"
    assert RegistryClient("localhost:5000").base_url == "https://localhost:5000"


def test_public_api() -> None:
    import imagesmith.registry as registry

    assert set(registry.__all__) == {
        "Challenge",
        "CredentialStore",
        "Credentials",
        "ManifestResponse",
        "RegistryClient",
        "RegistryOptions",
        "RegistryPool",
        "parse_challenges",
        "parse_retry_after",
        "redact_url",
    }
    assert hashlib.sha256(b"").hexdigest() in str(Digest.of(b""))


# ------------------------------------------------------------------ chunked uploads


def chunked_handler(store: bytearray, min_length: str | None = None, refuse_at: int | None = None) -> Handler:
    """A registry keeping one upload in ``store``; PATCH with Content-Range appends (416 when
    the range does not start at the end, or once at ``refuse_at``); GET reports Range."""
    refused: list[int] = []

    def handler(req: Req) -> Resp:
        loc = {"Location": "/v2/r/blobs/uploads/u-1?_state=st"}
        rng = {"Range": f"0-{max(len(store) - 1, 0)}"}
        if req.method == "POST":
            return Resp(202, {**loc, **({"OCI-Chunk-Min-Length": min_length} if min_length else {})})
        if req.method == "PATCH":
            start = int((req.header("Content-Range") or "0-0").split("-")[0])
            if start != len(store) or (start == refuse_at and not refused):
                refused.append(start)
                return Resp(416, rng)
            store.extend(req.body)
            return Resp(202, {**loc, "Range": f"0-{len(store) - 1}"})
        if req.method == "GET":
            return Resp(204, {**loc, **rng})
        if req.method == "PUT":
            ok = req.query.get("digest") == [str(Digest.of(bytes(store)))]
            return Resp(201) if ok else Resp(400, body=b'{"errors":[{"code":"DIGEST_INVALID"}]}')
        return Resp(404)

    return handler


def test_chunked_upload_416_asks_the_status_and_resumes(fake: FakeServer) -> None:
    store = bytearray()
    data = os.urandom(10_000)
    fake.handler = chunked_handler(store, refuse_at=4096)
    make_client(fake, chunk_size=2048).upload_blob("r", Digest.of(data), len(data), lambda: io.BytesIO(data))
    assert bytes(store) == data
    assert fake.count("POST") == 1 and fake.count("GET") == 1
    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert patches[0].header("Content-Range") == "0-2047"
    assert all(len(r.body) <= 2048 for r in patches)
    assert fake.requests[-1].method == "PUT" and fake.requests[-1].body == b""


def test_chunk_min_length_from_the_registry_is_honoured(fake: FakeServer) -> None:
    store = bytearray()
    data = os.urandom(10_000)
    fake.handler = chunked_handler(store, min_length="4000")
    make_client(fake, chunk_size=1000).upload_blob("r", Digest.of(data), len(data), lambda: io.BytesIO(data))
    assert bytes(store) == data
    assert [len(r.body) for r in fake.requests if r.method == "PATCH"] == [4000, 4000, 2000]


def test_chunked_upload_with_wrong_content_is_stopped_before_the_last_byte(fake: FakeServer) -> None:
    store = bytearray()
    fake.handler = chunked_handler(store)
    with pytest.raises(IntegrityError, match="hashes to"):
        make_client(fake, chunk_size=3).upload_blob(
            "r", Digest.of(b"expected"), 8, lambda: io.BytesIO(b"tampered")
        )
    assert len(store) < 8 and fake.count("PUT") == 0


def test_a_pool_without_options_reads_the_environment_as_build_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/index.md's `with RegistryPool() as pool:` against a plain-http registry: the
    environment's IMAGESMITH_INSECURE_REGISTRY and IMAGESMITH_CA_CERT apply, as for build()."""
    monkeypatch.setenv("IMAGESMITH_INSECURE_REGISTRY", "127.0.0.1:5000, other.example")
    monkeypatch.setenv("IMAGESMITH_CA_CERT", "/etc/ssl/ca.pem")
    with RegistryPool() as pool:
        assert pool.options == RegistryOptions.from_env()
        assert pool.options.scheme("127.0.0.1:5000") == "http"
        assert pool.options.ca_cert == Path("/etc/ssl/ca.pem")
    explicit = RegistryOptions(insecure=frozenset({"a.example"}))
    assert RegistryPool(explicit).options is explicit  # given options win whole
