"""Registry credentials from docker and podman configuration files and credential helpers.

Lookup order for a registry: explicit credentials (``--creds``) when given, for every
registry; else the explicit ``auth_file`` only, when one is given; otherwise
``$DOCKER_CONFIG/config.json`` (or ``~/.docker/config.json``), then podman's
``$REGISTRY_AUTH_FILE``, then ``$XDG_RUNTIME_DIR/containers/auth.json``; the first file that
has credentials for the registry wins. Inside one file, ``credHelpers[host]`` is preferred
over ``credsStore``, which is preferred over the ``auths`` entries.

Credential helpers (``docker-credential-NAME``) are looked up on the absolute entries of
``PATH`` only, never in the current directory or inside an image being assembled.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imagesmith.errors import AuthenticationError, UsageError

__all__ = [
    "DOCKER_HUB_AUTH_KEY",
    "CredentialStore",
    "Credentials",
    "auth_key",
    "helper_for",
    "normalise_registry",
    "registry_host",
]

log = logging.getLogger("imagesmith.http")

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TOKEN_USERNAME = "<token>"  # noqa: S105 -- the helper protocol's marker, not a secret


def normalise_registry(registry: str) -> str:
    """The canonical registry name: lowercase, Docker Hub aliases folded into ``docker.io``."""
    name = registry.strip().lower()
    return "docker.io" if name in _HUB_ALIASES else name


def auth_key(registry: str) -> str:
    """The ``auths`` key (and helper server URL) docker uses for ``registry``:
    ``https://index.docker.io/v1/`` for Docker Hub, the ``host[:port]`` otherwise."""
    name = normalise_registry(registry)
    return DOCKER_HUB_AUTH_KEY if name == "docker.io" else name


def registry_host(text: str) -> str:
    """The canonical registry named by user input: ``host[:port]``, ``https://host/``,
    ``https://index.docker.io/v1/``; a :class:`UsageError` for anything else."""
    raw = text.strip()
    host = raw
    if "://" in raw:
        try:
            parts = urlsplit(raw)
        except ValueError:
            parts = None
        if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise UsageError(f"invalid registry {raw!r}: expected HOST[:PORT]")
        host = parts.netloc.rpartition("@")[2]
    else:
        host, _, path = raw.partition("/")
        if path.strip("/") not in ("", "v1", "v2"):
            raise UsageError(f"invalid registry {raw!r}: expected HOST[:PORT], not a repository")
    if not host or not re.fullmatch(r"[A-Za-z0-9._\-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?", host):
        raise UsageError(f"invalid registry {raw!r}: expected HOST[:PORT]")
    return normalise_registry(host)


def helper_for(config: Mapping[str, Any], registry: str) -> str | None:
    """The credential helper a docker config names for ``registry``: ``credHelpers[host]``
    over ``credsStore``; None when it names none."""
    registry = normalise_registry(registry)
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if isinstance(name, str) and name and _key_registry(key) == registry:
                return name
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an identity (refresh) token; secrets never in ``repr``."""

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        extra = ", identity_token=<redacted>" if self.identity_token else ""
        return f"Credentials(username={self.username!r}, password=<redacted>{extra})"

    __str__ = __repr__


def _key_registry(key: str) -> str | None:
    """The registry an ``auths`` key names, or None for namespaced keys (``host/org``)."""
    text = key.strip()
    if "://" in text:
        try:
            host = urlsplit(text).netloc
        except ValueError:
            return None
    else:
        host, _, path = text.partition("/")
        # Legacy keys carry the API version as path; podman's "host/namespace" entries apply
        # to part of a registry only, which a registry-wide lookup must not use.
        if path.strip("/") not in ("", "v1", "v2"):
            return None
    host = host.rpartition("@")[2]
    return normalise_registry(host) if host else None


class CredentialStore:
    """Finds credentials for a registry; results are cached per registry for the run.

    ``environ`` replaces ``os.environ`` for ``DOCKER_CONFIG``, ``HOME``,
    ``REGISTRY_AUTH_FILE``, ``XDG_RUNTIME_DIR`` and ``PATH`` (the helpers' search path and
    environment). An explicit ``auth_file`` that is missing or malformed is a
    :class:`UsageError`; implicit files that are malformed are skipped with a warning. A
    helper that has not answered after ``helper_timeout`` seconds is killed with its whole
    process group (``RegistryOptions.credential_helper_timeout``).
    """

    def __init__(
        self,
        auth_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        helper_timeout: float = 60.0,
        explicit: Credentials | None = None,
    ) -> None:
        self.auth_file = Path(auth_file) if auth_file is not None else None
        self.explicit = explicit
        self._environ: Mapping[str, str] = os.environ if environ is None else dict(environ)
        self._inherit_env = environ is None
        self.helper_timeout = helper_timeout
        self._cache: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CredentialStore(auth_file={self.auth_file!r}, explicit={self.explicit is not None})"

    def get(self, registry: str) -> Credentials | None:
        """Credentials for ``registry`` (``docker.io``, ``ghcr.io``, ``127.0.0.1:5000``), or
        None when no source has any (anonymous access)."""
        if self.explicit is not None:
            return self.explicit
        name = normalise_registry(registry)
        with self._lock:
            if name not in self._cache:
                self._cache[name] = self._lookup(name)
            return self._cache[name]

    # -- writing (``imagesmith login`` / ``logout``)
    def docker_config(self) -> Path:
        """Docker's config file: ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``.
        Logins are always written there (podman's files are only read)."""
        env = self._environ
        docker_config = env.get("DOCKER_CONFIG", "").strip()
        if docker_config:
            return Path(docker_config) / "config.json"
        home = env.get("HOME", "").strip()
        return (Path(home) if home else Path.home()) / ".docker" / "config.json"

    def store(self, registry: str, credentials: Credentials, config_path: Path | None = None) -> Path | str:
        """Save ``credentials`` for ``registry`` where docker would.

        Through the credential helper the config names for the host (``credHelpers``, then
        ``credsStore``) when there is one, returning ``docker-credential-NAME``; otherwise in
        the file's ``auths`` (every other key kept, written atomically with mode 0600),
        returning the file's path.
        """
        name = normalise_registry(registry)
        username, password = credentials.username, credentials.password
        if not username or not password:
            raise UsageError("a username and a password are needed to log in")
        if ":" in username:
            raise UsageError(f"invalid username {username!r}: it must not contain ':'")
        path = self._write_target(config_path)
        config = self._load_for_update(path)
        key = auth_key(name)
        helper = helper_for(config, name)
        if helper is not None:
            payload = json.dumps({"ServerURL": key, "Username": username, "Secret": password})
            self._call_helper(helper, "store", payload, key, secret=password)
            self._forget(name)
            return f"docker-credential-{helper}"
        auths = config.get("auths")
        if not isinstance(auths, dict):
            auths = {}
        entry = auths.get(key)
        entry = dict(entry) if isinstance(entry, dict) else {}
        # A stale identity token or plain username/password would shadow nothing, but they are
        # the old login: drop them with it.
        for stale in ("identitytoken", "username", "password"):
            entry.pop(stale, None)
        entry["auth"] = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        auths[key] = entry
        config["auths"] = auths
        _write_json_atomic(path, config)
        self._forget(name)
        log.debug("stored credentials for %s in %s", name, path)
        return path

    def erase(self, registry: str, config_path: Path | None = None) -> bool:
        """Forget the credentials stored for ``registry``: every registry-wide ``auths`` entry
        naming it, and the helper's entry when a helper is configured. False when there was
        nothing to remove."""
        name = normalise_registry(registry)
        path = self._write_target(config_path)
        if not path.exists():
            return False
        config = self._load_for_update(path)
        removed = False
        helper = helper_for(config, name)
        if helper is not None:
            removed = self._call_helper(helper, "erase", auth_key(name), auth_key(name))
        auths = config.get("auths")
        if isinstance(auths, dict):
            keys = [k for k in auths if _key_registry(k) == name]
            for k in keys:
                del auths[k]
            if keys:
                _write_json_atomic(path, config)
                removed = True
        self._forget(name)
        return removed

    def _write_target(self, config_path: Path | None) -> Path:
        path = Path(config_path) if config_path is not None else self.docker_config()
        # Keep a symlinked config (dotfiles repositories) a symlink: write its target.
        return path.resolve() if path.is_symlink() else path

    def _load_for_update(self, path: Path) -> dict[str, Any]:
        if not path.exists():
            return {}
        config = self._load(path, explicit=True)
        return config if config is not None else {}

    def _forget(self, registry: str) -> None:
        with self._lock:
            self._cache.pop(registry, None)

    def _call_helper(self, name: str, action: str, data: str, server: str, *, secret: str = "") -> bool:
        """Run ``docker-credential-NAME ACTION`` with ``data`` on stdin. False when the helper
        reports "credentials not found" (for ``erase``)."""
        program = f"docker-credential-{name}"
        if not _HELPER_NAME.fullmatch(name):
            raise UsageError(f"invalid credential helper name {name!r} in the docker config")
        exe = self._find_helper(name)
        if exe is None:
            raise UsageError(
                f"the docker config names credential helper {program} for {server}, but it is "
                "not on PATH: install it, or remove it from credHelpers/credsStore"
            )
        code, _, output = self._exec(exe, action, data.encode(), f"for {server} ({action})")
        if code == 0:
            return True
        if action == "erase" and "credentials not found" in output.lower():
            return False
        first = _helper_message(output, (secret,) if secret else ())
        raise AuthenticationError(
            f"credential helper {program} failed to {action} credentials for {server} "
            f"(exit {code})" + (f": {first}" if first else "")
        )

    def _exec(self, exe: str, action: str, data: bytes, what: str) -> tuple[int, bytes, str]:
        """Run ``exe action`` with ``data`` on stdin: its exit code, its stdout, and all its
        output as text (stdout, then stderr) for messages. It runs in a process group of its
        own: past :attr:`helper_timeout` the whole group is killed, children included, and
        that is an :class:`AuthenticationError`."""
        program = Path(exe).name
        try:
            proc = subprocess.Popen(
                [exe, action],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=None if self._inherit_env else dict(self._environ),
                start_new_session=True,
            )
        except OSError as exc:
            raise AuthenticationError(
                f"cannot run credential helper {exe}: {exc.strerror or type(exc).__name__}"
            ) from None
        try:
            stdout, stderr = proc.communicate(data, timeout=self.helper_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise AuthenticationError(
                f"credential helper {program} did not answer within {self.helper_timeout:g} s {what}; "
                f"it was stopped (set IMAGESMITH_CREDENTIAL_HELPER_TIMEOUT or "
                "--credential-helper-timeout to wait longer)"
            ) from None
        return proc.returncode, stdout, (stdout + stderr).decode("utf-8", "replace")

    # -- sources
    def sources(self) -> list[Path]:
        """The files consulted, in order (existing or not)."""
        if self.auth_file is not None:
            return [self.auth_file]
        env = self._environ
        out: list[Path] = []
        docker_config = env.get("DOCKER_CONFIG", "").strip()
        if docker_config:
            out.append(Path(docker_config) / "config.json")
        else:
            home = env.get("HOME", "").strip()
            base = Path(home) if home else Path.home()
            out.append(base / ".docker" / "config.json")
        podman = env.get("REGISTRY_AUTH_FILE", "").strip()
        if podman:
            out.append(Path(podman))
        runtime = env.get("XDG_RUNTIME_DIR", "").strip()
        if runtime:
            out.append(Path(runtime) / "containers" / "auth.json")
        return out

    def _lookup(self, registry: str) -> Credentials | None:
        explicit = self.auth_file is not None
        for path in self.sources():
            config = self._load(path, explicit)
            if config is None:
                continue
            creds = self._from_config(config, registry, path)
            if creds is not None:
                log.debug("using credentials for %s from %s", registry, path)
                return creds
        return None

    def _load(self, path: Path, explicit: bool) -> dict[str, Any] | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if explicit:
                raise UsageError(f"auth file {path} does not exist") from None
            return None
        except (OSError, UnicodeDecodeError) as exc:
            if explicit:
                raise UsageError(f"cannot read auth file {path}: {type(exc).__name__}") from None
            log.warning("ignoring unreadable credentials file %s (%s)", path, type(exc).__name__)
            return None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            # The decoder's message gives the position only, never the file's content.
            problem = f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            if explicit:
                raise UsageError(f"auth file {path} {problem}") from None
            log.warning("ignoring credentials file %s: it %s", path, problem)
            return None
        if not isinstance(obj, dict):
            if explicit:
                raise UsageError(f"auth file {path} is not a JSON object")
            log.warning("ignoring credentials file %s: not a JSON object", path)
            return None
        return obj

    def _from_config(self, config: Mapping[str, Any], registry: str, path: Path) -> Credentials | None:
        helper = helper_for(config, registry)
        if helper is not None:
            creds = self._run_helper(helper, auth_key(registry))
            if creds is not None:
                return creds
        return self._from_auths(config.get("auths"), registry, path)

    def _from_auths(self, auths: Any, registry: str, path: Path) -> Credentials | None:
        if not isinstance(auths, dict):
            return None
        matches = [(k, v) for k, v in auths.items() if isinstance(v, dict) and _key_registry(k) == registry]
        # Prefer the most specific spelling of the key when several normalise the same.
        preferred = (registry, DOCKER_HUB_AUTH_KEY, f"https://{registry}", f"http://{registry}")
        matches.sort(key=lambda kv: preferred.index(kv[0]) if kv[0] in preferred else len(preferred))
        for key, entry in matches:
            creds = self._from_entry(entry, key, path)
            if creds is not None:
                return creds
        return None

    @staticmethod
    def _from_entry(entry: Mapping[str, Any], key: str, path: Path) -> Credentials | None:
        username = entry.get("username") if isinstance(entry.get("username"), str) else ""
        password = entry.get("password") if isinstance(entry.get("password"), str) else ""
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded.strip():
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise UsageError(
                    f"the 'auth' entry for {key!r} in {path} is not base64 of USER:PASSWORD"
                ) from None
            user, sep, secret = decoded.partition(":")
            if not sep:
                raise UsageError(f"the 'auth' entry for {key!r} in {path} is not base64 of USER:PASSWORD")
            username, password = user, secret
        token = entry.get("identitytoken")
        identity = token if isinstance(token, str) and token else None
        if identity is None and not (username and password):
            return None
        return Credentials(str(username or ""), str(password or ""), identity)

    # -- credential helpers
    def _find_helper(self, name: str) -> str | None:
        """The absolute path of ``docker-credential-NAME``, or None when not installed."""
        # Only absolute PATH entries: a relative one ("." or "bin") could resolve inside an
        # unpacked image or the current directory, and a helper from there is untrusted.
        search = os.pathsep.join(
            p for p in self._environ.get("PATH", os.defpath).split(os.pathsep) if Path(p).is_absolute()
        )
        return shutil.which(f"docker-credential-{name}", path=search)

    def _run_helper(self, name: str, server: str) -> Credentials | None:
        program = f"docker-credential-{name}"
        if not _HELPER_NAME.fullmatch(name):
            log.warning("ignoring credential helper with an invalid name %r", name)
            return None
        exe = self._find_helper(name)
        if exe is None:
            log.warning(
                "credential helper %s not found on PATH; looking for other credentials for %s",
                program,
                server,
            )
            return None
        code, stdout, output = self._exec(exe, "get", server.encode(), f"for {server}")
        if code != 0:
            if "credentials not found" in output.lower():
                return None
            first = _helper_message(output)
            raise AuthenticationError(
                f"credential helper {program} failed for {server} (exit {code})"
                + (f": {first}" if first else "")
            )
        try:
            answer = json.loads(stdout)
        except (UnicodeDecodeError, ValueError):
            raise AuthenticationError(
                f"credential helper {program} answered something that is not JSON for {server}"
            ) from None
        if not isinstance(answer, dict):
            raise AuthenticationError(f"credential helper {program} answered a non-object")
        username = answer.get("Username")
        secret = answer.get("Secret")
        if not isinstance(secret, str) or not secret:
            return None
        if username == _TOKEN_USERNAME:
            return Credentials("", "", identity_token=secret)
        return Credentials(username if isinstance(username, str) else "", secret)


# Words that announce a secret in a helper's message: "password=...", "Secret: ...".
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(secret|password|passwd|token|identitytoken|auth)(\W{0,3}?[:=]\s*)(\"[^\"]*\"|\S+)"
)
_SECRET_KEYS = frozenset(
    {"secret", "password", "passwd", "token", "identitytoken", "auth", "access_token", "refresh_token"}
)


def _helper_message(output: str, secrets: tuple[str, ...] = ()) -> str:
    """The first line of a failing helper's output, fit for an error message: never a JSON
    document (a helper that printed its answer and then failed would leak the secret in it),
    every value a secret-looking key or ``secrets`` names redacted, control characters out,
    200 characters at most."""
    known = [s for s in secrets if s]
    for text in (output, *output.splitlines()):
        with contextlib.suppress(ValueError):
            doc = json.loads(text)
            if isinstance(doc, dict):
                known += [v for k, v in doc.items() if isinstance(v, str) and v and k.lower() in _SECRET_KEYS]
    first = next((line.strip() for line in output.splitlines() if line.strip()), "")
    if first[:1] in ("{", "["):
        return "(its output looks like JSON and is not shown: it may hold credentials)"
    for secret in sorted(known, key=len, reverse=True):
        first = first.replace(secret, "<redacted>")
    first = _SECRET_ASSIGNMENT.sub(lambda m: f"{m[1]}{m[2]}<redacted>", first)
    return "".join(c if c.isprintable() else " " for c in first)[:200]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a helper's whole process group (it was started in a session of its own) and reap
    it; its pipes are closed unread, since a surviving descendant could hold them forever."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    """Write ``obj`` as JSON to ``path`` via a 0600 temp file and ``os.replace``; a missing
    directory is created with mode 0700."""
    directory = path.parent
    if not directory.is_dir():
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {directory}: {exc.strerror or type(exc).__name__}") from None
    data = (json.dumps(obj, indent="\t") + "\n").encode("utf-8")
    tmp: str | None = None
    try:
        # mkstemp creates the file with mode 0600.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(0o600)
        Path(tmp).replace(path)
        tmp = None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
