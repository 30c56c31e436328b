"""Real servers for integration tests: a throwaway CA, a Docker token issuer,
CNCF distribution (``docker-registry``), an isolated podman, and a busybox rootfs.

Plain classes with no pytest dependency; see RUNTIME.md for the machine setup.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REGISTRY_BIN = "docker-registry"
PODMAN_BIN = "podman"
DOCKER_BIN = "docker"
TOKEN_SERVICE = "test-registry"
TOKEN_ISSUER = "test-issuer"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX_APPLETS = (
    "sh",
    "env",
    "ls",
    "cat",
    "echo",
    "true",
    "false",
    "mkdir",
    "printenv",
    "id",
    "grep",
    "which",
    "test",
    "[",
    "pwd",
    "sleep",
    "rm",
    "touch",
    "wc",
    "head",
)

INSTALL_HINTS = {
    "docker-registry": "apt-get install docker-registry",
    "podman": "apt-get install podman runc",
    "runc": "apt-get install runc",
    "skopeo": "apt-get install skopeo",
    "umoci": "apt-get install umoci",
    "busybox": "apt-get install busybox-static",
    "htpasswd": "apt-get install apache2-utils",
    "openssl": "apt-get install openssl",
    "docker": "install the Docker CLI (client only), e.g. the docker-ce-cli package",
    "tmux": "apt-get install tmux",
}


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (racy by nature; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tool_available(name: str) -> bool:
    """Whether executable ``name`` is on PATH (or is a path that is executable)."""
    return shutil.which(name) is not None


def install_hint(name: str) -> str:
    return INSTALL_HINTS.get(name, f"install {name!r}")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # never send loopback traffic through a proxy from the environment
    return s


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def make_ca_and_cert(dirpath: Path | str) -> TLSFiles:
    """Write ca.crt, server.crt, server.key: a throwaway CA and a server certificate
    for 127.0.0.1 (IP SAN) and localhost (DNS SAN) signed by it."""
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("imagesmith test CA"))
        .issuer_name(_name("imagesmith test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(d / "ca.crt", d / "server.crt", d / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(_pem_key(key))
    files.server_key.chmod(0o600)
    return files


# ------------------------------------------------------------------ token issuer


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class TokenRequest:
    """One request the issuer answered (or refused: ``granted`` False)."""

    scopes: tuple[str, ...]
    user: str | None
    service: str
    granted: bool


S = TypeVar("S", bound="Service")


class Service:
    """What the test servers share: a work directory (``workdir``, else a new temporary one
    that ``stop`` removes), and ``with``, which starts the service and always stops it."""

    def __init__(self, workdir: Path | str | None, prefix: str, parent: Path | None = None) -> None:
        self._owns_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=prefix, dir=parent))
        self.workdir.mkdir(parents=True, exist_ok=True)

    def start(self: S) -> S:
        return self

    def stop(self) -> None:
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class TokenIssuer(Service):
    """Docker token-auth issuer (``GET /token?service=..&scope=..``) on 127.0.0.1.

    Authenticated users (Basic, ``users``) get the actions they ask for; anonymous
    requests get only ``pull``; bad credentials get 401. Tokens are RS256 JWTs with an
    ``x5c`` header whose self-signed certificate (``cert_path``) is the registry's
    ``rootcertbundle``. ``expires_in`` (the reported lifetime) and ``token_lifetime``
    (the ``exp`` claim, default ``expires_in``) may be changed at any time: distribution
    accepts a token until 60 s after ``exp``, so ``token_lifetime=-120`` makes tokens the
    registry rejects while the answer still says they are valid.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        expires_in: int = 300,
        token_lifetime: int | None = None,
        issuer: str = TOKEN_ISSUER,
        service: str = TOKEN_SERVICE,
        workdir: Path | str | None = None,
    ) -> None:
        self.users = dict(users or {})
        self.expires_in = expires_in
        self.token_lifetime = token_lifetime
        self.issuer = issuer
        self.service = service
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        super().__init__(workdir, "imagesmith-issuer-")
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(issuer))
            .issuer_name(_name(issuer))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = self.workdir / "token-root.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- bookkeeping for tests
    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("TokenIssuer not started")
        return int(self._server.server_address[1])

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    # -- token minting
    def make_token(
        self,
        access: list[dict[str, Any]],
        *,
        subject: str = "",
        audience: str | None = None,
        expires_in: int | None = None,
    ) -> str:
        """A signed JWT with the given ``access`` claim (also usable directly by tests)."""
        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience or self.service,
            "exp": now + (self.expires_in if expires_in is None else expires_in),
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = ".".join(
            _b64url(json.dumps(p, separators=(",", ":")).encode()) for p in (header, claims)
        )
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"

    @staticmethod
    def parse_scope(scope: str) -> dict[str, Any] | None:
        """``repository:name:pull,push`` -> access entry (name may contain ':')."""
        typ, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if not typ or not name:
            return None
        return {"type": typ, "name": name, "actions": [a for a in actions.split(",") if a]}

    def _authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """(ok, user); ok False means bad credentials."""
        if not header:
            return True, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return True, None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, None
        if user in self.users and self.users[user] == password:
            return True, user
        return False, user

    def _handle(self, query: str, auth: str | None) -> tuple[int, dict[str, Any]]:
        qs = urllib.parse.parse_qs(query, keep_blank_values=True)
        service = qs.get("service", [self.service])[0]
        scopes = tuple(s for param in qs.get("scope", []) for s in param.split())
        ok, user = self._authenticate(auth)
        with self._lock:
            self.requests.append(TokenRequest(scopes, user, service, ok))
        if not ok:
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
        access = []
        for scope in scopes:
            entry = self.parse_scope(scope)
            if entry is None:
                continue
            if user is None:
                entry["actions"] = [a for a in entry["actions"] if a == "pull"]
            access.append(entry)
        expires_in = self.expires_in
        lifetime = expires_in if self.token_lifetime is None else self.token_lifetime
        token = self.make_token(access, subject=user or "", audience=service, expires_in=lifetime)
        issued = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"token": token, "access_token": token, "expires_in": expires_in, "issued_at": issued}
        return 200, body

    # -- server lifecycle
    def start(self) -> TokenIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/token":
                    status, body = 404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]}
                else:
                    status, body = issuer._handle(url.query, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", f'Basic realm="{issuer.issuer}"')
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        super().stop()


# ---------------------------------------------------------------------- registry


class DistributionRegistry(Service):
    """``docker-registry serve`` (CNCF distribution 2.8) on 127.0.0.1:<free port>.

    Deletes are allowed unless ``delete=False``. Modes: plain http (default), ``tls``
    (throwaway CA, see ``ca_cert``), ``htpasswd_users`` (Basic auth) or ``token_issuer``
    (Bearer auth; the issuer must be started first). Data and the log (``log_path``) live in ``workdir``.
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        htpasswd_users: Mapping[str, str] | None = None,
        token_issuer: TokenIssuer | None = None,
        workdir: Path | str | None = None,
        binary: str = REGISTRY_BIN,
        delete: bool = True,
    ) -> None:
        if htpasswd_users and token_issuer:
            raise ValueError("choose htpasswd_users or token_issuer, not both")
        self.tls = tls
        self.htpasswd_users = dict(htpasswd_users) if htpasswd_users else None
        self.token_issuer = token_issuer
        self.binary = binary
        self.delete = delete
        super().__init__(workdir, "imagesmith-registry-")
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "registry.log"
        self.tls_files: TLSFiles | None = make_ca_and_cert(self.workdir / "tls") if tls else None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def ca_cert(self) -> Path | None:
        return self.tls_files.ca_cert if self.tls_files else None

    @property
    def verify(self) -> str | bool:
        """Value for requests' ``verify=``."""
        return str(self.ca_cert) if self.ca_cert else True

    def _write_config(self) -> Path:
        http: dict[str, Any] = {"addr": self.host, "secret": uuid.uuid4().hex}
        if self.tls_files:
            http["tls"] = {
                "certificate": str(self.tls_files.server_cert),
                "key": str(self.tls_files.server_key),
            }
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.data_dir)},
                # REGISTRY_STORAGE_DELETE_ENABLED: off, DELETE answers 405 UNSUPPORTED.
                "delete": {"enabled": self.delete},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
        }
        if self.htpasswd_users:
            htpasswd = self.workdir / "htpasswd"
            lines = [
                subprocess.run(
                    ["htpasswd", "-Bbn", user, password],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                for user, password in self.htpasswd_users.items()
            ]
            htpasswd.write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "test", "path": str(htpasswd)}}
        elif self.token_issuer:
            ti = self.token_issuer
            config["auth"] = {
                "token": {
                    "realm": ti.realm,
                    "service": ti.service,
                    "issuer": ti.issuer,
                    "rootcertbundle": str(ti.cert_path),
                }
            }
        path = self.workdir / "config.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        return path

    def _ready(self) -> bool:
        try:
            with _session() as s:
                r = s.get(f"{self.url}/v2/", verify=self.verify, timeout=2)
            return r.status_code in (200, 401)
        except requests.RequestException:
            return False

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        _wait_for(lambda: proc.poll() is not None or self._ready(), timeout)
        return proc.poll() is None and self._ready()

    def start(self, timeout: float = 20) -> DistributionRegistry:
        if self._proc is not None:
            return self
        for attempt in range(3):  # free_port() is racy: retry on "address already in use"
            self.port = free_port()
            config = self._write_config()
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [self.binary, "serve", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    start_new_session=True,
                )
            if self._wait_ready(self._proc, timeout):
                return self
            _stop_process(self._proc)
            self._proc = None
            if "address already in use" not in _log_tail(self.log_path) or attempt == 2:
                break
        raise RuntimeError(
            f"docker-registry did not come up on {self.url}; log tail:\n{_log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None
        super().stop()

    # -- convenience for assertions
    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """``GET {url}{path}`` (no proxy, CA-verified); kwargs go to requests (auth, headers)."""
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("timeout", 30)
        with _session() as s:
            return s.get(f"{self.url}{path}", **kwargs)

    def catalog(self, **kwargs: Any) -> list[str]:
        r = self.get("/v2/_catalog?n=1000", **kwargs)
        r.raise_for_status()
        return list(r.json().get("repositories") or [])

    def tags(self, repo: str, **kwargs: Any) -> list[str]:
        r = self.get(f"/v2/{repo}/tags/list", **kwargs)
        r.raise_for_status()
        return list(r.json().get("tags") or [])


# ------------------------------------------------------------------------ podman


class Podman(Service):
    """Podman isolated from the host (config, storage, auth) under ``workdir``.

    Call ``add_insecure_registry`` for each plain-http registry (any time: the
    registries.conf file is re-read by every podman command and by the service's pulls).
    ``podman run`` uses the host network (it can reach 127.0.0.1 registries); containers
    made through the Docker API (``docker``, the SDK) get a bridge unless they ask for
    ``--network host``.
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        binary: str = PODMAN_BIN,
        storage_driver: str = "vfs",
        parent: Path | None = None,
    ) -> None:
        self.binary = binary
        # vfs works everywhere but copies every layer whole; "overlay" stacks layers with the
        # kernel's overlayfs, as production runtimes do (see overlay_available()).
        self.storage_driver = storage_driver
        super().__init__(workdir, "imagesmith-podman-", parent)  # without workdir: a new one in parent
        self.insecure_registries: list[str] = []
        self._service: subprocess.Popen[bytes] | None = None
        d = self.workdir
        for sub in ("root", "runroot", "tmp", "docker-config"):
            (d / sub).mkdir(exist_ok=True)
        (d / "auth.json").write_text('{"auths": {}}\n')  # podman fails to pull if it is missing
        (d / "containers.conf").write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            'netns = "host"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'runtime = "runc"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{d / "events.log"}"\n'
            f'tmp_dir = "{d / "tmp"}"\n'
            "[network]\n"
            f'network_config_dir = "{d / "networks"}"\n'
        )
        (d / "storage.conf").write_text(
            f'[storage]\ndriver = "{storage_driver}"\n'
            f'graphroot = "{d / "root"}"\nrunroot = "{d / "runroot"}"\n'
        )
        self._write_registries_conf()

    def _write_registries_conf(self) -> None:
        text = "unqualified-search-registries = []\n" + "".join(
            f'\n[[registry]]\nlocation = "{h}"\ninsecure = true\n' for h in self.insecure_registries
        )
        tmp = self.workdir / "registries.conf.tmp"
        tmp.write_text(text)
        tmp.replace(self.workdir / "registries.conf")

    def add_insecure_registry(self, host: str) -> None:
        if host not in self.insecure_registries:
            self.insecure_registries.append(host)
            self._write_registries_conf()
            if self._service is not None:
                # The API service reads registries.conf once, when it starts: restart it so
                # `docker run` through the socket can pull from the new host too.
                _stop_process(self._service)
                self._service = None
                self.start_service()

    @property
    def socket_path(self) -> Path:
        return self.workdir / "podman.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_path}"

    def env(self) -> dict[str, str]:
        d = self.workdir
        return {
            **os.environ,
            "CONTAINERS_CONF": str(d / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(d / "registries.conf"),
            "CONTAINERS_STORAGE_CONF": str(d / "storage.conf"),
            "REGISTRY_AUTH_FILE": str(d / "auth.json"),
            "DOCKER_CONFIG": str(d / "docker-config"),
            "DOCKER_HOST": self.docker_host,
            "TMPDIR": str(d / "tmp"),
        }

    def base_command(self) -> list[str]:
        d = self.workdir
        return [
            self.binary,
            "--root",
            str(d / "root"),
            "--runroot",
            str(d / "runroot"),
            "--storage-driver",
            self.storage_driver,
        ]

    def podman(
        self, *args: str, check: bool = False, timeout: float = 180, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self._run([*self.base_command(), *args], check, timeout, input)

    def docker(
        self, *args: str, check: bool = False, timeout: float = 180, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this podman's API socket (``start_service`` first)."""
        return self._run([DOCKER_BIN, *args], check, timeout, input)

    def _run(
        self, argv: list[str], check: bool, timeout: float, input: str | None
    ) -> subprocess.CompletedProcess[str]:
        env = self.env()
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, check=check, timeout=timeout, input=input
        )

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(str(self.socket_path))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
                status_line = s.makefile("rb").readline()
        except OSError:
            return False
        return status_line.split(b" ")[1:2] == [b"200"]

    def start_service(self, timeout: float = 30) -> Podman:
        if self._service is not None:
            return self
        log = self.workdir / "service.log"
        with log.open("ab") as f:
            self._service = subprocess.Popen(
                [*self.base_command(), "system", "service", "--time=0", self.docker_host],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        svc = self._service
        if not _wait_for(lambda: svc.poll() is not None or self._ping(), timeout) or svc.poll():
            self.stop()
            raise RuntimeError(f"podman service did not start; log tail:\n{_log_tail(log)}")
        return self

    def stop(self) -> None:
        """Stop the service and remove containers, storage and (if owned) the directory.
        Best effort: never raises."""
        with contextlib.suppress(Exception):
            _stop_process(self._service)
        self._service = None
        with contextlib.suppress(Exception):
            self.podman("rm", "--all", "--force", "--time", "0", timeout=120)
        if not self._owns_dir:
            with contextlib.suppress(Exception):
                self.podman("system", "reset", "--force", timeout=120)
        self._unmount_leftovers()
        if self._owns_dir:
            # The storage is ours alone: unmounted, it is removed as one tree. `podman system
            # reset` would delete image by image (minutes for the 200 images of the Spack stack
            # test under load, past the test timeout), and rm does not recurse in Python frames.
            with contextlib.suppress(Exception):
                rm = ["rm", "-rf", "--one-file-system", str(self.workdir)]
                subprocess.run(rm, check=False, timeout=240)

    def _unmount_leftovers(self) -> None:
        prefix = str(self.workdir.resolve()) + "/"
        try:
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        except OSError:
            return
        for m in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True, check=False)


def overlay_available(parent: Path | None = None) -> bool:
    """Whether this machine can mount overlayfs (as root, natively) with its layers in
    ``parent`` (default: the temporary directory): podman's overlay driver needs it. Tried once
    with a throwaway mount."""
    with tempfile.TemporaryDirectory(prefix="imagesmith-overlay-", dir=parent) as tmp:
        dirs = {name: Path(tmp, name) for name in ("lower", "upper", "work", "merged")}
        for d in dirs.values():
            d.mkdir()
        options = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
        mounted = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(dirs["merged"])],
            capture_output=True,
            check=False,
        )
        if mounted.returncode != 0:
            return False
        subprocess.run(["umount", str(dirs["merged"])], capture_output=True, check=False)
        return True


# ----------------------------------------------------------------------- busybox


def is_static_elf(path: Path | str) -> bool:
    """True for an ELF executable without a PT_INTERP program header (i.e. static)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF":
        return False
    is64 = data[4] == 2
    order: Literal["little", "big"] = "little" if data[5] == 1 else "big"

    def num(off: int, size: int) -> int:
        return int.from_bytes(data[off : off + size], order)

    phoff, phentsize, phnum = (
        (num(0x20, 8), num(0x36, 2), num(0x38, 2)) if is64 else (num(0x1C, 4), num(0x2A, 2), num(0x2C, 2))
    )
    return all(num(phoff + i * phentsize, 4) != 3 for i in range(phnum))  # 3 = PT_INTERP


def docker_sdk_run(docker_host: str, image: str, command: list[str], *, timeout: float = 120) -> bytes:
    """Run ``command`` in ``image`` through the docker SDK and return its output (stdout and
    stderr, as ``containers.run`` gives), the container removed afterwards.

    Detached, waited for and then read: ``containers.run(..., remove=True)`` follows the log
    stream, and podman 4.3's API sometimes never ends that stream for a container that exited
    at once, which hung a test until pytest-timeout (seen once in seven full runs).
    """
    import docker  # a runtime dependency of imagesmith

    client = docker.DockerClient(base_url=docker_host, timeout=int(timeout))
    try:
        container = client.containers.run(image, command, detach=True)
        try:
            status = container.wait(timeout=timeout)
            out = container.logs(stdout=True, stderr=True)
        finally:
            container.remove(force=True)
    finally:
        client.close()
    code = status.get("StatusCode")
    if code != 0:
        raise AssertionError(f"{command} in {image} exited {code}: {out.decode(errors='replace')}")
    return bytes(out)


def busybox_rootfs(dest: Path | str, busybox: Path | str = "/bin/busybox") -> Path:
    """A minimal root filesystem: static busybox with applet links in bin/, etc/passwd,
    etc/group, etc/profile (Debian-like PATH), tmp/ (1777), root/, usr/bin/."""
    dest = Path(dest)
    src = Path(busybox)
    if not src.is_file() or not is_static_elf(src):
        raise RuntimeError(f"{src} is not a static busybox ({install_hint('busybox')})")
    for sub in ("bin", "etc", "root", "usr/bin"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        (dest / sub).chmod(0o755)
    (dest / "root").chmod(0o700)
    (dest / "tmp").mkdir(exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    shutil.copyfile(src, dest / "bin/busybox")
    (dest / "bin/busybox").chmod(0o755)
    for applet in BUSYBOX_APPLETS:
        link = dest / "bin" / applet
        if not link.is_symlink():
            link.symlink_to("busybox")
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": "root:x:0:\nnogroup:x:65534:\n",
        # Like Debian's: reset PATH, then source /etc/profile.d/*.sh.
        "etc/profile": (
            f'PATH="{DEBIAN_PATH}"\nexport PATH\n'
            'for i in /etc/profile.d/*.sh; do [ -r "$i" ] && . "$i"; done\nunset i\n'
        ),
    }
    for rel, text in files.items():
        (dest / rel).write_text(text)
        (dest / rel).chmod(0o644)
    return dest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
