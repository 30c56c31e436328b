"""HTTP transport for registries: options, TLS, timeouts, bounded retries, redaction, errors.

Everything that talks HTTP goes through :class:`Transport`, so the rules hold everywhere:

* TLS is always verified for https; plain http is used only for hosts named in
  :attr:`RegistryOptions.insecure`, and never as a silent fallback.
* Every request has (connect, read) timeouts; temporary failures (408, 429, 5xx, connection
  errors, timeouts) are retried a bounded number of times with backoff and jitter, and a
  ``Retry-After`` header is honoured up to a cap.
* Redirects are followed by hand, and the ``Authorization`` header is only ever attached to a
  request whose origin (scheme, host, port) is the registry's own.
* Each exchange is logged at DEBUG on ``imagesmith.http`` with secrets and query values
  redacted; the same redaction applies to URLs in exception messages.

Size: the HTTP rules of the registry protocol (options, redaction, Retry-After, redirects,
retries, capped reads, error mapping) interlock in one `Transport.request`; go-containerregistry
spreads them over eight files, here one reading order is kept.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import re
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import certifi
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from imagesmith import cancel
from imagesmith._version import __version__
from imagesmith.errors import (
    AuthenticationError,
    ImagesmithError,
    NotFoundError,
    RateLimitError,
    RegistryError,
    RegistryUnreachableError,
    UsageError,
)
from imagesmith.registry.credentials import Credentials
from imagesmith.sysregistries import RegistriesConf, certs_dir_for, certs_roots, default_registries_conf

__all__ = [
    "RETRY_STATUSES",
    "AuthHook",
    "Body",
    "Fetched",
    "RegistryOptions",
    "Transport",
    "error_from_fetched",
    "origin_of",
    "parse_error_body",
    "parse_retry_after",
    "redact_url",
]

log = logging.getLogger("imagesmith.http")
# Seconds a clean-up request (after Ctrl-C) may wait for the registry.
CLEANUP_TIMEOUT = 3.0

# verify=False is only ever used for hosts registries.conf calls insecure, on purpose: the
# warning urllib3 prints for each such request would be noise (warnings.catch_warnings is not
# thread-safe, so the filter is installed once).
warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_ERROR_BODY = 64 * 1024
_INSUFFICIENT_SCOPE = re.compile(r'error\s*=\s*"?insufficient_scope', re.IGNORECASE)
_CHUNK = 1 << 16

# Query parameters whose values carry no secret and help when reading a log. Everything
# else (upload ``_state``, signed-URL signatures, tokens) is replaced by REDACTED.
_SAFE_QUERY_KEYS = frozenset({"digest", "mount", "from", "n", "last", "service", "scope"})


def _default_user_agent() -> str:
    return f"imagesmith/{__version__}"


def _normalise_host_entry(entry: str) -> str:
    text = entry.strip().lower()
    if "://" in text or "/" in text or "@" in text or any(c.isspace() for c in text):
        raise UsageError(
            f"invalid insecure registry {entry!r}: give HOST or HOST:PORT, without a scheme "
            "or path (e.g. --insecure-registry 127.0.0.1:5000)"
        )
    return text


def _split_host_port(host: str) -> tuple[str, str | None]:
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        return host[: end + 1], rest[1:] if rest.startswith(":") else None
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, port
    return host, None


@dataclass(frozen=True)
class RegistryOptions:
    """How to talk to registries: insecure hosts, extra CA, timeouts, retries, auth file.

    ``insecure`` lists ``host`` or ``host:port`` entries spoken to over plain http; an entry
    without a port matches that host on any port. Nothing is implicitly insecure, not even
    ``localhost``. ``ca_cert`` adds a CA bundle to the default trust store for https.
    ``backoff``, ``max_backoff``, ``max_retry_after`` and ``max_redirects`` tune the retry and
    redirect bounds.

    ``chunk_size`` (default 16 MiB): blobs larger than this are uploaded in chunks of this
    size (``PATCH`` with ``Content-Range``), which can resume after a dropped connection;
    smaller blobs go in one ``PUT``. A registry that announces ``OCI-Chunk-Min-Length``
    gets a chunked upload with chunks at least that big. Ctrl-C waits for the chunk under way
    (up to :data:`imagesmith.cancel.BODY_GRACE`), so the session can then be cancelled.

    ``credential_helper_timeout`` (default 60 s): a ``docker-credential-*`` helper that has not
    answered by then is killed, with every process it started.

    ``auth_file`` is the only credentials file read when set (``--authfile``);
    ``credentials`` (``--creds``) are used for every registry and win over any file.

    ``registries`` are the ``registries.conf`` settings (insecure, blocked, mirrors, aliases,
    search registries); None reads the files podman reads (see
    :mod:`imagesmith.sysregistries`), :meth:`RegistriesConf.empty` ignores them.
    ``certs_dirs`` are the ``certs.d`` roots searched for ``HOST[:PORT]/*.crt`` and client
    certificates; None searches podman's (``~/.config/containers/certs.d``,
    ``/etc/containers/certs.d``, ``/etc/docker/certs.d``, or ``$IMAGESMITH_CERTS_DIR``).
    """

    insecure: frozenset[str] = frozenset()
    ca_cert: Path | None = None
    timeout: float = 30.0
    retries: int = 3
    user_agent: str = field(default_factory=_default_user_agent)
    auth_file: Path | None = None
    backoff: float = 0.5
    max_backoff: float = 20.0
    max_retry_after: float = 60.0
    max_redirects: int = 5
    chunk_size: int = 16 * 1024 * 1024
    credential_helper_timeout: float = 60.0
    credentials: Credentials | None = field(default=None, repr=False)
    registries: RegistriesConf | None = None
    certs_dirs: tuple[Path, ...] | None = None

    def __post_init__(self) -> None:
        # Accept any iterable of strings and normalise once, so lookups are exact matches.
        raw: Iterable[str] = [self.insecure] if isinstance(self.insecure, str) else self.insecure
        object.__setattr__(self, "insecure", frozenset(_normalise_host_entry(e) for e in raw if e.strip()))
        if self.ca_cert is not None and not isinstance(self.ca_cert, Path):
            object.__setattr__(self, "ca_cert", Path(self.ca_cert))
        if self.auth_file is not None and not isinstance(self.auth_file, Path):
            object.__setattr__(self, "auth_file", Path(self.auth_file))
        if self.certs_dirs is not None:
            object.__setattr__(self, "certs_dirs", tuple(Path(p) for p in self.certs_dirs))
        if not self.timeout > 0:
            raise UsageError(f"invalid timeout {self.timeout!r}: must be a positive number of seconds")
        if self.retries < 0:
            raise UsageError(f"invalid retries {self.retries!r}: must be 0 or more")
        if self.max_redirects < 0:
            raise UsageError(f"invalid max_redirects {self.max_redirects!r}: must be 0 or more")
        if self.chunk_size < 1:
            raise UsageError(f"invalid chunk_size {self.chunk_size!r}: must be 1 byte or more")
        if not self.credential_helper_timeout > 0:
            raise UsageError(
                f"invalid credential helper timeout {self.credential_helper_timeout!r}: must be a "
                "positive number of seconds"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RegistryOptions:
        """Options from ``IMAGESMITH_INSECURE_REGISTRY``, ``IMAGESMITH_CA_CERT``,
        ``IMAGESMITH_CREDENTIAL_HELPER_TIMEOUT``, merged, with the
        ``registries.conf`` and ``certs.d`` the environment's files name.

        ``IMAGESMITH_INSECURE_REGISTRY`` is a comma- or space-separated list of hosts added to
        any ``insecure`` override; an explicit ``ca_cert`` or ``credential_helper_timeout``
        override wins over its variable. Other keyword arguments are passed through unchanged.
        """
        env = os.environ if environ is None else environ
        if overrides.get("credential_helper_timeout") is None:
            overrides.pop("credential_helper_timeout", None)
            text = env.get("IMAGESMITH_CREDENTIAL_HELPER_TIMEOUT", "").strip()
            if text:
                try:
                    overrides["credential_helper_timeout"] = float(text)
                except ValueError:
                    raise UsageError(
                        f"IMAGESMITH_CREDENTIAL_HELPER_TIMEOUT={text!r} is not a number of seconds"
                    ) from None
        insecure = set(re.split(r"[,\s]+", env.get("IMAGESMITH_INSECURE_REGISTRY", "")))
        explicit = overrides.pop("insecure", None)
        if explicit is not None:
            insecure.update([explicit] if isinstance(explicit, str) else explicit)
        if overrides.get("ca_cert") is None:
            ca = env.get("IMAGESMITH_CA_CERT", "").strip()
            overrides["ca_cert"] = Path(ca) if ca else None
        if overrides.get("registries") is None:
            overrides["registries"] = default_registries_conf(env)
        if overrides.get("certs_dirs") is None:
            overrides["certs_dirs"] = tuple(certs_roots(env))
        return cls(insecure=frozenset(h for h in insecure if h), **overrides)

    def registries_conf(self) -> RegistriesConf:
        """:attr:`registries`, or the files podman reads when that is None."""
        return self.registries if self.registries is not None else default_registries_conf()

    def certs_roots(self) -> tuple[Path, ...]:
        """:attr:`certs_dirs`, or podman's ``certs.d`` roots when that is None."""
        return self.certs_dirs if self.certs_dirs is not None else tuple(certs_roots())

    def listed_insecure(self, host: str) -> bool:
        """Whether ``host`` is in :attr:`insecure` (``--insecure-registry``): plain http only."""
        text = host.strip().lower()
        if text in self.insecure:
            return True
        name, port = _split_host_port(text)
        return port is not None and name in self.insecure

    def conf_insecure(self, host: str) -> bool:
        """Whether ``registries.conf`` says ``insecure = true`` for ``host``: https without
        certificate checks, or plain http when the host does not speak TLS."""
        return self.registries_conf().is_insecure(host.strip().lower())

    def is_insecure(self, host: str) -> bool:
        """Whether ``host`` (``name`` or ``name:port``) may be spoken to over plain http."""
        return self.listed_insecure(host) or self.conf_insecure(host)

    def scheme(self, host: str) -> str:
        """``http`` for hosts listed insecure, ``https`` for every other host (a host only
        ``registries.conf`` calls insecure is probed by :meth:`Transport.scheme`)."""
        return "http" if self.listed_insecure(host) else "https"


# --------------------------------------------------------------------------- helpers


def redact_url(url: str) -> str:
    """``url`` fit for logs and messages: no userinfo, no fragment, query values redacted.

    The path is kept; query values are kept only for harmless keys (``digest``, ``n``,
    ``last``, ``mount``, ``from``, ``service``, ``scope``), so opaque upload state and
    signed-URL signatures never reach a log.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    query = ""
    if parts.query:
        pairs = [
            (k, v if k in _SAFE_QUERY_KEYS else "REDACTED")
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe=":/,")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def origin_of(url: str) -> str:
    """``scheme://host:port`` with the default port made explicit, for same-origin checks."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if scheme == "https" else 80
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date), or None.

    Negative results (a date in the past) become 0; an unparseable value gives None.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now or datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())


def _sanitize(text: str, limit: int = 200) -> str:
    text = re.sub(r"<[^>]*>", " ", text)  # HTML error pages: keep the words, drop the markup
    text = "".join(c if c.isprintable() else " " for c in text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:limit] + ("..." if len(text) > limit else "")


def parse_error_body(data: bytes) -> list[tuple[str, str]]:
    """The ``(code, message)`` pairs of a registry error document, or ``[]`` if it is not one.

    Handles the distribution-spec form ``{"errors": [{"code", "message", "detail"}]}`` and the
    OAuth form ``{"error": ..., "error_description": ...}`` that token servers answer with.
    """
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return []
    if not isinstance(obj, dict):
        return []
    out: list[tuple[str, str]] = []
    errors = obj.get("errors")
    if isinstance(errors, list):
        for err in errors[:10]:
            if not isinstance(err, dict):
                continue
            code = _sanitize(str(err.get("code") or "UNKNOWN"), 60)
            message = _sanitize(str(err.get("message") or ""), 200)
            detail = err.get("detail")
            if detail and not isinstance(detail, dict | list):
                message = (
                    f"{message} ({_sanitize(str(detail), 200)})" if message else _sanitize(str(detail), 200)
                )
            out.append((code, message))
    elif isinstance(obj.get("error"), str):
        out.append((_sanitize(obj["error"], 60), _sanitize(str(obj.get("error_description") or ""))))
    return out


@dataclass(frozen=True)
class Fetched:
    """A response whose body has been read (within a cap) and whose connection is released."""

    method: str
    url: str
    status: int
    reason: str
    headers: CaseInsensitiveDict[str]
    body: bytes

    def json(self, what: str) -> Any:
        """The body parsed as JSON; :class:`RegistryError` naming ``what`` when it is not."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, ValueError):
            raise RegistryError(
                f"{what}: {self.method} {redact_url(self.url)} -> {self.status} returned a body "
                f"that is not JSON: {_sanitize(self.body[:400].decode('utf-8', 'replace'))!r}",
                method=self.method,
                url=redact_url(self.url),
                status=self.status,
            ) from None


def error_from_fetched(
    fetched: Fetched,
    host: str,
    *,
    prefix: str | None = None,
    attempts: int = 1,
) -> RegistryError:
    """The :class:`RegistryError` subclass describing a failed response.

    The message names the method, the redacted URL, the status, the registry's error codes
    (or the start of a non-JSON body) and what to do: 401/403 -> check credentials or
    ``docker login``; 404 -> not found; 429 -> rate limited; 5xx -> temporary.
    """
    url = redact_url(fetched.url)
    status = fetched.status
    errors = parse_error_body(fetched.body)
    codes = [code for code, _ in errors]
    summary = f"{fetched.method} {url} -> {status}"
    if fetched.reason:
        summary += f" {_sanitize(fetched.reason, 60)}"
    if errors:
        summary += ": " + "; ".join(f"{c}: {m}" if m else c for c, m in errors)
    elif fetched.body.strip():
        summary += f": {_sanitize(fetched.body[:2000].decode('utf-8', 'replace'))!r}"
    head = f"{prefix}: " if prefix else ""
    kwargs: dict[str, Any] = {"method": fetched.method, "url": url, "status": status, "codes": codes}
    if status in (401, 403):
        what = "refused the credentials" if status == 401 else "denied access"
        if _INSUFFICIENT_SCOPE.search(fetched.headers.get("WWW-Authenticate", "")):
            what = "denied the access this needs (insufficient_scope: the account may not do this)"
        return AuthenticationError(
            f"{head}{host} {what} ({summary}); check your credentials, or run `docker login {host}`",
            **kwargs,
        )
    if status == 404:
        return NotFoundError(f"{head}not found in {host} ({summary})", **kwargs)
    if status == 429:
        return RateLimitError(
            f"{head}rate limited by {host} ({summary}); gave up after {attempts} attempt(s): "
            "wait and try again later, or log in to get a higher limit",
            **kwargs,
        )
    if status in RETRY_STATUSES:
        return RegistryError(
            f"{head}{summary}; {host} is failing, probably temporarily: try again later "
            f"(gave up after {attempts} attempt(s))",
            **kwargs,
        )
    if status == 400 and "http request to an https server" in fetched.body.decode("utf-8", "replace").lower():
        return RegistryError(
            f"{head}{summary}; {host} speaks https: remove it from the insecure registries",
            **kwargs,
        )
    return RegistryError(f"{head}{summary}", **kwargs)


# ----------------------------------------------------------------------- transport


class AuthHook(Protocol):
    """What the transport asks the authentication layer (see :mod:`.auth`)."""

    def authorization(self, scopes: frozenset[str]) -> tuple[str | None, bool]:
        """The ``Authorization`` value for a request needing ``scopes`` and whether it was
        obtained just now (a 401 after a fresh value is final)."""
        ...

    def unauthorized(self, challenge: str | None, scopes: frozenset[str], sent: str | None) -> None:
        """Record a 401's ``WWW-Authenticate`` and forget ``sent``, the ``Authorization``
        value that was refused (None when the request carried none)."""
        ...


# A request body: bytes, or a factory called for every attempt (a streamed file must be
# reopened to be re-sent whole after a retry or a token refresh).
Body = bytes | Callable[[], Any] | None


class _NetworkFailure(Exception):
    def __init__(self, error: RegistryUnreachableError, retryable: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.retryable = retryable


_SSL_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]|certificate verify failed: ([^(')\"]+)")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _network_error(
    exc: BaseException, method: str, url: str, options: RegistryOptions, plain_http_hint: str | None = None
) -> _NetworkFailure:
    # Never put str(exc) in a message: requests includes the request path and query in it.
    shown = redact_url(url)
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    text = str(exc)
    common: dict[str, Any] = {"method": method, "url": shown}
    if isinstance(exc, requests.exceptions.SSLError):
        m = _SSL_REASON.search(text)
        reason = (m.group(1) or m.group(2)).strip() if m else "TLS handshake failed"
        lower = text.lower()
        if (
            "wrong_version_number" in lower
            or "record layer failure" in lower
            or ("unknown protocol" in lower)
        ):
            # --insecure-registry picks the scheme of URLs imagesmith builds; a URL a server
            # named (a token realm, a redirect) keeps its scheme, and its caller says why.
            hint = plain_http_hint or f"is it plain http? pass --insecure-registry {host}"
        elif "certificate verify failed" in lower or "certificate_verify_failed" in lower:
            if "hostname" in lower or "ip address mismatch" in lower:
                hint = f"its certificate is not valid for {parts.hostname}"
            elif "expired" in lower:
                hint = "its certificate has expired"
            else:
                hint = (
                    "its certificate is signed by an unknown CA: put the CA in "
                    f"/etc/containers/certs.d/{host}/ca.crt (or ~/.config/containers/certs.d/{host}/), "
                    "or pass --ca-cert FILE"
                )
        else:
            hint = "check the server's TLS setup, or pass --ca-cert FILE"
        return _NetworkFailure(
            RegistryUnreachableError(
                f"TLS error talking to {host} ({method} {shown}): {reason}; {hint}", **common
            ),
            retryable=False,
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return _NetworkFailure(
            RegistryUnreachableError(
                f"{host} did not answer within {options.timeout:g} s ({method} {shown}); "
                "it may be overloaded or unreachable: try again later",
                **common,
            ),
            retryable=True,
        )
    if isinstance(exc, requests.exceptions.ConnectionError | urllib3.exceptions.HTTPError | OSError):
        m = _ERRNO.search(text)
        if m:
            reason = m.group(1).strip()
        elif "RemoteDisconnected" in text or "Connection aborted" in text:
            reason = "connection closed by the server"
        elif "Connection reset" in text:
            reason = "connection reset"
        else:
            reason = type(exc).__name__
        hint = ""
        if parts.scheme == "http":
            hint = f"; if {host} speaks https, remove it from the insecure registries"
        return _NetworkFailure(
            RegistryUnreachableError(f"cannot reach {host} ({method} {shown}): {reason}{hint}", **common),
            retryable=True,
        )
    return _NetworkFailure(
        RegistryUnreachableError(
            f"request to {host} failed ({method} {shown}): {type(exc).__name__}", **common
        ),
        retryable=False,
    )


# How much of a streamed request body the connection reads and sends at a time. urllib3's
# 16 KiB made a 500 MB layer upload 30,000 reads and sends, each through the body's Python
# read (cancel check, progress) while the build wanted the same CPU.
_SEND_BLOCK = 1 << 20


class _Adapter(HTTPAdapter):
    """requests' adapter with large send blocks and, when given, a TLS context that trusts
    the default bundle plus the user's CA file."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self._context = context
        super().__init__()

    def _tune(self, kwargs: dict[str, Any]) -> None:
        kwargs["blocksize"] = _SEND_BLOCK
        if self._context is not None:
            kwargs["ssl_context"] = self._context

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        self._tune(kwargs)
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        self._tune(proxy_kwargs)
        return super().proxy_manager_for(proxy, **proxy_kwargs)


def _tls_context(ca_cert: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_cert is None:
        return context
    try:
        context.load_verify_locations(cafile=str(ca_cert))
    except FileNotFoundError:
        raise UsageError(f"CA certificate file {ca_cert} does not exist (--ca-cert)") from None
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"cannot load CA certificate file {ca_cert} (--ca-cert): expected PEM certificates "
            f"({type(exc).__name__})"
        ) from None
    return context


class Transport:
    """One HTTP session with the registry rules applied (see the module docstring).

    Thread-safe for concurrent requests. ``sleep`` is the function used to wait between
    retries (tests pass a recorder; the default returns early, raising, on
    :func:`imagesmith.cancel.interrupt`).
    """

    def __init__(
        self, options: RegistryOptions | None = None, *, sleep: Callable[[float], None] = cancel.wait
    ) -> None:
        self.options = options or RegistryOptions()
        self.sleep = sleep
        session = requests.Session()
        # trust_env would let ~/.netrc overwrite our Authorization header (and send it to
        # redirect targets); proxies from the environment are applied per request instead.
        session.trust_env = False
        session.headers["User-Agent"] = self.options.user_agent
        # Blobs are hashed as stored: ask for no transfer compression at all.
        session.headers["Accept-Encoding"] = "identity"
        context = _tls_context(self.options.ca_cert) if self.options.ca_cert is not None else None
        session.mount("https://", _Adapter(context))
        session.mount("http://", _Adapter())
        self.session = session
        self._hosts_seen: set[str] = set()
        self._schemes: dict[str, str] = {}
        self._host_lock = threading.Lock()

    def _prepare_host(self, netloc: str) -> None:
        """Mount an adapter with the host's ``certs.d`` files (once per host)."""
        with self._host_lock:
            if netloc in self._hosts_seen:
                return
            self._hosts_seen.add(netloc)
            found = certs_dir_for(netloc, self.options.certs_roots())
            if found is None or not (found.ca_files or found.client_pairs):
                return
            context = _tls_context(self.options.ca_cert)
            found.apply(context)
            log.debug("using the TLS files of %s for %s", found.path, netloc)
            self.session.mount(f"https://{netloc}/", _Adapter(context))

    def scheme(self, host: str) -> str:
        """The scheme for ``host``: ``http`` when listed insecure; for a host only
        ``registries.conf`` calls insecure, ``https`` (unverified) when it answers TLS, else
        ``http``, as podman does; ``https`` otherwise."""
        if self.options.listed_insecure(host):
            return "http"
        if not self.options.conf_insecure(host):
            return "https"
        with self._host_lock:
            known = self._schemes.get(host)
        if known is not None:
            return known
        scheme = "https"
        try:
            resp = self.send("GET", f"https://{host}/v2/", {}, None)
            resp.close()
        except _NetworkFailure as failure:
            log.debug(
                "%s does not answer https (%s); using plain http, registries.conf calls it insecure",
                host,
                failure.error,
            )
            scheme = "http"
        with self._host_lock:
            self._schemes[host] = scheme
        return scheme

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    # -- single exchanges
    def check_url(self, url: str, http_origins: Collection[str] = ()) -> None:
        """Refuse URLs we must not follow: non-http(s) schemes, and plain http to a host not
        listed insecure (no silent downgrade through a redirect or an upload Location).
        ``http_origins`` are origins the caller has already vetted for plain http (a token
        realm next to a plain-http registry)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(f"refusing to follow {redact_url(url)!r}: not an http(s) URL")
        if scheme == "http" and origin_of(url) in http_origins:
            return
        if scheme == "http" and not self.options.is_insecure(parts.netloc.rpartition("@")[2]):
            host = parts.netloc.rpartition("@")[2]
            raise RegistryError(
                f"refusing plain http to {host} ({redact_url(url)}): it is not listed as an "
                f"insecure registry (pass --insecure-registry {host} if you trust it)",
                url=redact_url(url),
            )

    def send(
        self, method: str, url: str, headers: Mapping[str, str], data: Any, plain_http_hint: str | None = None
    ) -> requests.Response:
        """One HTTP exchange (no redirects followed, body streamed), logged at DEBUG.

        Network failures raise an internal error carrying a :class:`RegistryUnreachableError`;
        use :meth:`request` unless you need the raw exchange. ``plain_http_hint`` replaces the
        advice given when an https URL reaches a plain-http server (see :meth:`request`).
        """
        start = time.monotonic()
        try:
            proxies = requests.utils.get_environ_proxies(url)
        except Exception:
            proxies = {}
        parts = urlsplit(url)
        verify = True
        if parts.scheme.lower() == "https":
            netloc = parts.netloc.rpartition("@")[2].lower()
            self._prepare_host(netloc)
            # registries.conf's insecure = true: TLS without certificate checks, as podman.
            verify = not self.options.conf_insecure(netloc)
        timeout = self.options.timeout
        if cancel.interrupted():
            # Only clean-up runs now (a DELETE of an upload session): a registry that does
            # not answer must not hold Ctrl-C for the whole timeout.
            timeout = min(timeout, CLEANUP_TIMEOUT)
        try:
            resp = self.session.request(
                method,
                url,
                headers=dict(headers),
                data=data,
                stream=True,
                timeout=(timeout, timeout),
                allow_redirects=False,
                proxies=proxies,
                verify=verify,
            )
        except requests.RequestException as exc:
            log.debug(
                "%s %s -> %s (%.3f s)", method, redact_url(url), type(exc).__name__, time.monotonic() - start
            )
            raise _network_error(exc, method, url, self.options, plain_http_hint) from None
        log.debug("%s %s -> %d (%.3f s)", method, redact_url(url), resp.status_code, time.monotonic() - start)
        return resp

    def _send_chain(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        scopes: frozenset[str],
        auth: AuthHook | None,
        auth_origin: str | None,
        follow_redirects: bool,
        http_origins: Collection[str],
        plain_http_hint: str | None,
    ) -> tuple[requests.Response, bool, str | None]:
        current = url
        fresh = False
        first_origin = origin_of(url)
        explicit = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        for _hop in range(self.options.max_redirects + 1):
            self.check_url(current, http_origins)
            hdrs = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            fresh = False
            sent: str | None = None
            # Credentials belong to the origin they were meant for: a redirect to a CDN or
            # an upload Location on another host must never carry them.
            here = origin_of(current)
            if auth is not None and auth_origin is not None and here == auth_origin:
                value, fresh = auth.authorization(scopes)
                if value:
                    hdrs["Authorization"] = sent = value
            elif explicit is not None and here == first_origin:
                hdrs["Authorization"] = sent = explicit
            data = body() if callable(body) else body
            try:
                hint = (
                    plain_http_hint
                    if current == url
                    else (
                        "it speaks plain http, but a redirect named an https URL for it: the server "
                        "that redirected is misconfigured"
                    )
                )
                resp = self.send(method, current, hdrs, data, hint)
            finally:
                closer = getattr(data, "close", None) if callable(body) else None
                if closer is not None:
                    closer()
            location = resp.headers.get("Location")
            if not (follow_redirects and resp.status_code in REDIRECT_STATUSES and location):
                return resp, fresh, sent
            resp.close()
            if resp.status_code == 303 and method != "HEAD":
                method, body = "GET", None
            current = urljoin(current, location)
        raise RegistryError(
            f"{method} {redact_url(url)}: more than {self.options.max_redirects} redirects "
            "(a redirect loop?)",
            method=method,
            url=redact_url(url),
        )

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (0-based): exponential, capped, jittered."""
        delay = min(self.options.max_backoff, self.options.backoff * (2**attempt))
        # Jitter spreads retries from parallel uploads; it is not security-relevant.
        return float(delay / 2 + random.uniform(0, delay / 2))  # noqa: S311

    def _pause(self, method: str, url: str, attempt: int, delay: float, why: str) -> int:
        """Log the retry of ``method url`` and wait ``delay`` seconds; the next attempt's number."""
        log.info(
            "retrying %s %s in %.1f s %s (attempt %d of %d)",
            method,
            redact_url(url),
            delay,
            why,
            attempt + 2,
            self.options.retries + 1,
        )
        self.sleep(delay)
        return attempt + 1

    def request(
        self,
        method: str,
        url: str,
        *,
        expect: Collection[int],
        host: str,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        scopes: frozenset[str] = frozenset(),
        auth: AuthHook | None = None,
        auth_origin: str | None = None,
        retry: bool = True,
        follow_redirects: bool = True,
        prefix: str | None = None,
        http_origins: Collection[str] = (),
        plain_http_hint: str | None = None,
    ) -> requests.Response:
        """Send a request with retries, authentication and redirects; return the response.

        The response's status is in ``expect`` and its body is unread (close it). Any other
        status raises the matching :class:`RegistryError` (``prefix`` starts its message).
        A 401 from ``auth_origin`` makes ``auth`` handle the challenge and the request is sent
        once more; a second 401 is final. Temporary failures are retried when ``retry``.
        ``http_origins`` lists origins vetted for plain http besides the insecure hosts.
        ``plain_http_hint`` is the advice when ``url`` is https but the server speaks plain
        http, for a URL a server named (``--insecure-registry``, the default advice, only
        changes the URLs imagesmith builds itself).

        Once :func:`imagesmith.cancel.interrupt` was called, every request but a ``DELETE``
        (cancelling an upload session) raises :class:`~imagesmith.cancel.Interrupted` instead.
        """
        attempt = 0
        auth_retried = False
        while True:
            if method != "DELETE":
                cancel.check()
            try:
                resp, fresh, sent = self._send_chain(
                    method,
                    url,
                    headers or {},
                    body,
                    scopes,
                    auth,
                    auth_origin,
                    follow_redirects,
                    http_origins,
                    plain_http_hint,
                )
            except _NetworkFailure as failure:
                if retry and failure.retryable and attempt < self.options.retries:
                    attempt = self._pause(
                        method, url, attempt, self.backoff(attempt), "after a network error"
                    )
                    continue
                raise failure.error from None
            status = resp.status_code
            if (
                status == 401
                and auth is not None
                and auth_origin is not None
                and origin_of(resp.url or url) == auth_origin
                and not fresh
                and not auth_retried
                and 401 not in expect
            ):
                challenge = resp.headers.get("WWW-Authenticate")
                resp.close()
                auth.unauthorized(challenge, scopes, sent)
                auth_retried = True
                continue
            if status in expect:
                return resp
            if status in RETRY_STATUSES and retry and attempt < self.options.retries:
                wait = parse_retry_after(resp.headers.get("Retry-After"))
                delay = min(wait, self.options.max_retry_after) if wait is not None else self.backoff(attempt)
                resp.close()
                attempt = self._pause(method, url, attempt, delay, f"after HTTP {status}")
                continue
            fetched = self.read(resp, method)
            raise error_from_fetched(fetched, host, prefix=prefix, attempts=attempt + 1)

    def read(self, resp: requests.Response, method: str, limit: int = MAX_ERROR_BODY) -> Fetched:
        """Read at most ``limit`` bytes of the body (the rest is dropped, e.g. of an error
        page) and release the connection; a dropped connection is a
        :class:`RegistryUnreachableError`."""
        try:
            return self._read(resp, method, limit, truncate=True)
        except _NetworkFailure as failure:
            raise failure.error from None

    def _read(self, resp: requests.Response, method: str, limit: int, *, truncate: bool) -> Fetched:
        # A body over the limit raises _TooLarge unless truncate; a Content-Length over the
        # limit is refused before anything is read.
        try:
            length = resp.headers.get("Content-Length", "")
            if not truncate and length.isdigit() and int(length) > limit:
                raise _TooLarge(int(length))
            chunks: list[bytes] = []
            total = 0
            while total <= limit:
                want = min(_CHUNK, limit + 1 - total)
                try:
                    data = resp.raw.read(want, decode_content=True)
                except (urllib3.exceptions.HTTPError, OSError, requests.RequestException) as exc:
                    raise _network_error(exc, method, resp.url, self.options) from None
                if not data:
                    break
                chunks.append(data)
                total += len(data)
            body = b"".join(chunks)
            if total > limit:
                if not truncate:
                    raise _TooLarge(None)
                body = body[:limit]
            return Fetched(method, resp.url, resp.status_code, resp.reason or "", resp.headers, body)
        finally:
            resp.close()

    def fetch(
        self,
        method: str,
        url: str,
        *,
        limit: int,
        too_large: Callable[[int | None], ImagesmithError],
        **kwargs: Any,
    ) -> Fetched:
        """:meth:`request` then :meth:`read`, retrying the whole exchange when the connection
        drops while the body is read; ``too_large(announced_length)`` builds the error for a
        body over ``limit`` (it is raised without reading the rest)."""
        attempt = 0
        while True:
            resp = self.request(method, url, **kwargs)
            try:
                return self._read(resp, method, limit, truncate=False)
            except _TooLarge as exc:
                raise too_large(exc.length) from None
            except _NetworkFailure as failure:
                if not (kwargs.get("retry", True) and attempt < self.options.retries):
                    raise failure.error from None
                attempt = self._pause(
                    method,
                    url,
                    attempt,
                    self.backoff(attempt),
                    "after the connection was lost reading the body",
                )


class _TooLarge(Exception):
    def __init__(self, length: int | None) -> None:
        super().__init__(length)
        self.length = length
