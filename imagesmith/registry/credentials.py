"""Registry credentials from docker and podman configuration files and credential helpers.

Lookup order for a registry: the explicit ``auth_file`` only, when one is given; otherwise
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
import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imagesmith.errors import AuthenticationError, UsageError

__all__ = ["DOCKER_HUB_AUTH_KEY", "CredentialStore", "Credentials", "normalise_registry"]

log = logging.getLogger("imagesmith.http")

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TOKEN_USERNAME = "<token>"  # noqa: S105 -- the helper protocol's marker, not a secret


def normalise_registry(registry: str) -> str:
    """The canonical registry name: lowercase, Docker Hub aliases folded into ``docker.io``."""
    name = registry.strip().lower()
    return "docker.io" if name in _HUB_ALIASES else name


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
    :class:`UsageError`; implicit files that are malformed are skipped with a warning.
    """

    def __init__(
        self,
        auth_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        helper_timeout: float = 60.0,
    ) -> None:
        self.auth_file = Path(auth_file) if auth_file is not None else None
        self._environ: Mapping[str, str] = os.environ if environ is None else dict(environ)
        self._inherit_env = environ is None
        self.helper_timeout = helper_timeout
        self._cache: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CredentialStore(auth_file={self.auth_file!r})"

    def get(self, registry: str) -> Credentials | None:
        """Credentials for ``registry`` (``docker.io``, ``ghcr.io``, ``127.0.0.1:5000``), or
        None when no source has any (anonymous access)."""
        name = normalise_registry(registry)
        with self._lock:
            if name not in self._cache:
                self._cache[name] = self._lookup(name)
            return self._cache[name]

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

    def _from_config(
        self, config: Mapping[str, Any], registry: str, path: Path
    ) -> Credentials | None:
        server = DOCKER_HUB_AUTH_KEY if registry == "docker.io" else registry
        helpers = config.get("credHelpers")
        helper: str | None = None
        if isinstance(helpers, dict):
            for key, name in helpers.items():
                if isinstance(name, str) and name and _key_registry(key) == registry:
                    helper = name
                    break
        store = config.get("credsStore")
        if helper is not None:
            creds = self._run_helper(helper, server)
            if creds is not None:
                return creds
        elif isinstance(store, str) and store:
            creds = self._run_helper(store, server)
            if creds is not None:
                return creds
        return self._from_auths(config.get("auths"), registry, path)

    def _from_auths(self, auths: Any, registry: str, path: Path) -> Credentials | None:
        if not isinstance(auths, dict):
            return None
        matches = [(k, v) for k, v in auths.items()
                   if isinstance(v, dict) and _key_registry(k) == registry]  # fmt: skip
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
                raise UsageError(
                    f"the 'auth' entry for {key!r} in {path} is not base64 of USER:PASSWORD"
                )
            username, password = user, secret
        token = entry.get("identitytoken")
        identity = token if isinstance(token, str) and token else None
        if identity is None and not (username and password):
            return None
        return Credentials(str(username or ""), str(password or ""), identity)

    # -- credential helpers
    def _run_helper(self, name: str, server: str) -> Credentials | None:
        program = f"docker-credential-{name}"
        if not _HELPER_NAME.fullmatch(name):
            log.warning("ignoring credential helper with an invalid name %r", name)
            return None
        # Only absolute PATH entries: a relative one ("." or "bin") could resolve inside an
        # unpacked image or the current directory, and a helper from there is untrusted.
        search = os.pathsep.join(
            p for p in self._environ.get("PATH", os.defpath).split(os.pathsep) if Path(p).is_absolute()
        )
        exe = shutil.which(program, path=search)
        if exe is None:
            log.warning("credential helper %s not found on PATH; looking for other credentials "
                        "for %s", program, server)  # fmt: skip
            return None
        try:
            proc = subprocess.run(
                [exe, "get"], input=server.encode(), capture_output=True,
                timeout=self.helper_timeout, check=False,
                env=None if self._inherit_env else dict(self._environ),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise AuthenticationError(
                f"credential helper {program} did not answer within {self.helper_timeout:g} s "
                f"for {server}"
            ) from None
        except OSError as exc:
            raise AuthenticationError(
                f"cannot run credential helper {exe}: {exc.strerror or type(exc).__name__}"
            ) from None
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
            if "credentials not found" in output.lower():
                return None
            first = next((line.strip() for line in output.splitlines() if line.strip()), "")
            first = "".join(c if c.isprintable() else " " for c in first)[:200]
            raise AuthenticationError(
                f"credential helper {program} failed for {server} (exit {proc.returncode})"
                + (f": {first}" if first else "")
            )
        try:
            answer = json.loads(proc.stdout)
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
