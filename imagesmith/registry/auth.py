"""Registry authentication: ``WWW-Authenticate`` challenges, Basic, and Bearer tokens.

The flow follows Docker's: a request goes out with whatever we already know (nothing, Basic
credentials, or a cached token covering its scopes). A 401 records the registry's challenge;
for ``Bearer`` a token is fetched from the realm (``GET realm?service=..&scope=..`` with Basic
credentials or anonymously, or ``POST`` with ``grant_type=refresh_token`` when the credentials
are an identity token) and the request is sent once more. A 401 after a fresh token or fresh
Basic credentials is final: :class:`AuthenticationError`, never a loop.

Tokens are cached per scope set for the registry (not per host) until shortly before they
expire; a cached token whose scopes cover a request's (``pull,push`` covers ``pull``) is
reused, so one token serves a whole push.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlencode, urlsplit, urlunsplit

from imagesmith.errors import AuthenticationError, ImagesmithError
from imagesmith.registry.credentials import Credentials, CredentialStore
from imagesmith.registry.transport import Fetched, Transport, origin_of, redact_url

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "TOKEN_RESPONSE_LIMIT",
    "Authenticator",
    "Challenge",
    "parse_challenges",
    "scopes_cover",
]

log = logging.getLogger("imagesmith.http")

TOKEN_RESPONSE_LIMIT = 1 << 20
DEFAULT_TOKEN_LIFETIME = 60
_CLIENT_ID = "imagesmith"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM_START = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=(?!=)")


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: a lowercase scheme and its (lowercase-keyed) params."""

    scheme: str
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """Parse a quoted-string starting at ``text[pos] == '"'``; return (value, next pos)."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        c = text[pos]
        if c == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if c == '"':
            return "".join(out), pos + 1
        out.append(c)
        pos += 1
    return "".join(out), pos  # unterminated: take what there is


def parse_challenges(header: str | None) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges (RFC 7235 syntax).

    Handles several challenges in one header (``Bearer realm="a",service="b", Basic
    realm="c"``), quoted values containing commas and escaped quotes, and unquoted token
    values. Unparseable parts are skipped rather than guessed at.
    """
    if not header:
        return []
    text = header
    pos = 0
    out: list[Challenge] = []
    while pos < len(text):
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if m is None:
            pos += 1
            continue
        scheme = m.group(0).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while True:
            pos = _skip_ws(text, pos)
            pm = _PARAM_START.match(text, pos)
            if pm is None:
                # A token68 credential (``Negotiate abc==``) or garbage: skip to the next comma.
                if pos < len(text) and text[pos] != ",":
                    nxt = text.find(",", pos)
                    pos = len(text) if nxt < 0 else nxt
                break
            name = pm.group(1).lower()
            pos = _skip_ws(text, pm.end())
            if pos < len(text) and text[pos] == '"':
                value, pos = _quoted(text, pos)
            else:
                vm = _TOKEN.match(text, pos)
                value = vm.group(0) if vm else ""
                pos = vm.end() if vm else pos
            params.setdefault(name, value)
            pos = _skip_ws(text, pos)
            if pos < len(text) and text[pos] == ",":
                # Another param of this challenge, or the start of the next challenge?
                after = _skip_ws(text, pos + 1)
                if _PARAM_START.match(text, after):
                    pos = after
                    continue
                pos += 1
            break
        out.append(Challenge(scheme, MappingProxyType(params)))
    return out


def _parse_scope(scope: str) -> tuple[str, frozenset[str]]:
    resource, _, actions = scope.rpartition(":")
    return resource, frozenset(a for a in actions.split(",") if a)


def scopes_cover(have: Iterable[str], need: Iterable[str]) -> bool:
    """Whether a token granted for ``have`` also serves ``need`` (``pull,push`` covers
    ``pull``; ``*`` covers every action)."""
    granted: dict[str, set[str]] = {}
    for scope in have:
        resource, actions = _parse_scope(scope)
        granted.setdefault(resource, set()).update(actions)
    for scope in need:
        resource, actions = _parse_scope(scope)
        got = granted.get(resource)
        if got is None or not ("*" in got or actions <= got):
            return False
    return True


@dataclass(frozen=True)
class _Token:
    value: str
    scopes: frozenset[str]
    refresh_at: float


class Authenticator:
    """Authentication state for one registry; the transport's :class:`~.transport.AuthHook`.

    ``registry`` is the canonical name (used for credential lookup and messages),
    ``base_url`` the API's ``scheme://host``. ``clock`` is a monotonic clock (tests pass a
    fake one to expire tokens).
    """

    def __init__(
        self,
        registry: str,
        base_url: str,
        transport: Transport,
        credentials: CredentialStore | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.base_url = base_url
        self.transport = transport
        self.credentials = credentials
        self.clock = clock
        self.challenge: Challenge | None = None
        self._tokens: dict[frozenset[str], _Token] = {}
        self._creds: Credentials | None = None
        self._creds_loaded = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Authenticator({self.registry!r})"

    # -- AuthHook
    def authorization(self, scopes: frozenset[str]) -> tuple[str | None, bool]:
        """The ``Authorization`` value for a request needing ``scopes``, and whether it was
        obtained just now. None until the registry has sent a challenge."""
        with self._lock:
            challenge = self.challenge
            if challenge is None:
                return None, False
            if challenge.scheme == "basic":
                creds = self._credentials()
                if creds is None or not (creds.username or creds.password):
                    return None, False
                raw = f"{creds.username}:{creds.password}".encode()
                return "Basic " + base64.b64encode(raw).decode("ascii"), True
            token = self._cached(scopes)
            if token is not None:
                return "Bearer " + token.value, False
            token = self._fetch_token(challenge, scopes)
            return "Bearer " + token.value, True

    def unauthorized(self, challenge: str | None, scopes: frozenset[str], sent: str | None = None) -> None:
        """Record a 401's challenge and forget the token in ``sent`` (the refused
        ``Authorization`` value), so the next :meth:`authorization` fetches a new one.

        Only that token is dropped: when parallel requests all meet their first 401, the
        token one of them has just fetched must survive for the others. Raises
        :class:`AuthenticationError` when the registry asks for Basic credentials and none
        are configured, or sends no challenge we can answer.
        """
        chosen = self._choose(parse_challenges(challenge))
        if chosen is None:
            raise AuthenticationError(
                f"{self.registry} requires authentication but sent no usable challenge "
                f"(WWW-Authenticate: {_shorten(challenge or 'missing')}); check your "
                f"credentials, or run `docker login {self.registry}`"
            )
        with self._lock:
            self.challenge = chosen
            if sent is not None and sent.startswith("Bearer "):
                refused = sent[len("Bearer ") :]
                for key in [k for k, t in self._tokens.items() if t.value == refused]:
                    del self._tokens[key]
            if chosen.scheme == "basic":
                creds = self._credentials()
                if creds is None or not (creds.username or creds.password):
                    raise AuthenticationError(
                        f"{self.registry} requires a username and password and none were "
                        f"found: run `docker login {self.registry}`, or pass --creds USER:PASSWORD or "
                        "--authfile FILE",
                        status=401,
                    )

    def observe(self, challenge: str | None) -> None:
        """Record a challenge seen on ``GET /v2/`` without fetching anything."""
        chosen = self._choose(parse_challenges(challenge))
        if chosen is not None:
            with self._lock:
                self.challenge = chosen

    def invalidate(self) -> None:
        """Forget every cached token."""
        with self._lock:
            self._tokens.clear()

    # -- internals
    @staticmethod
    def _choose(challenges: list[Challenge]) -> Challenge | None:
        for scheme in ("bearer", "basic"):
            for ch in challenges:
                if ch.scheme == scheme:
                    return ch
        return None

    def _credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            self._creds = self.credentials.get(self.registry) if self.credentials else None
            self._creds_loaded = True
        return self._creds

    def _cached(self, scopes: frozenset[str]) -> _Token | None:
        now = self.clock()
        for key in [k for k, t in self._tokens.items() if t.refresh_at <= now]:
            del self._tokens[key]
        token = self._tokens.get(scopes)
        if token is not None:
            return token
        for token in self._tokens.values():
            if scopes_cover(token.scopes, scopes):
                return token
        return None

    def check_realm(self, realm: str) -> None:
        """Refuse a realm that would downgrade to plain http (or is not http(s) at all).

        An http realm is accepted only for a registry that is itself spoken to over plain
        http (listed insecure), and then only on the registry's host or on a host that is
        itself listed insecure.
        """
        try:
            parts = urlsplit(realm)
        except ValueError:
            parts = None
        if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise AuthenticationError(f"{self.registry} named an invalid token realm {_shorten(realm)!r}")
        if parts.scheme.lower() == "https":
            return
        registry_url = urlsplit(self.base_url)
        if registry_url.scheme != "http":
            raise AuthenticationError(
                f"{self.registry} (https) sends its token realm over plain http "
                f"({redact_url(realm)}): refusing to send credentials or accept tokens "
                "over an unencrypted connection"
            )
        realm_host = parts.netloc.rpartition("@")[2]
        if parts.hostname != registry_url.hostname and not self.transport.options.is_insecure(realm_host):
            raise AuthenticationError(
                f"{self.registry} sends its token realm to another host over plain http "
                f"({redact_url(realm)}): refusing; list {realm_host} as an insecure registry "
                "if you trust it"
            )

    def _fetch_token(self, challenge: Challenge, scopes: frozenset[str]) -> _Token:
        realm = challenge.realm
        if not realm:
            raise AuthenticationError(f"{self.registry} asked for a Bearer token without naming a realm")
        self.check_realm(realm)
        scope_list = sorted(scopes)
        if not scope_list and challenge.scope:
            scope_list = challenge.scope.split()
        creds = self._credentials()
        headers: dict[str, str] = {"Accept": "application/json"}
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        body: bytes | None = None
        if creds is not None and creds.identity_token:
            method, url = "POST", realm
            form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.identity_token),
                ("client_id", _CLIENT_ID),
                *params,
            ]
            if scope_list:
                form.append(("scope", " ".join(scope_list)))
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            user = "an identity token"
        else:
            params.extend(("scope", s) for s in scope_list)
            method = "GET"
            url = realm + (("&" if urlsplit(realm).query else "?") + urlencode(params) if params else "")
            if creds is not None and (creds.username or creds.password):
                raw = f"{creds.username}:{creds.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
                user = f"user {creds.username!r}"
            else:
                user = "anonymous access"

        def too_large(_length: int | None) -> ImagesmithError:
            return AuthenticationError(
                f"token server {redact_url(realm)} answered more than {TOKEN_RESPONSE_LIMIT} bytes: refused"
            )

        fetched = self.transport.fetch(
            method,
            url,
            limit=TOKEN_RESPONSE_LIMIT,
            too_large=too_large,
            expect=range(200, 300),
            host=self.registry,
            headers=headers,
            body=body,
            prefix=f"getting a token for {self.registry} ({user})",
            http_origins=(origin_of(realm),),  # vetted by check_realm above
            plain_http_hint=self._plain_http_realm_hint(realm),
        )
        token = self._parse_token(fetched, realm)
        lifetime = token[1]
        # Refresh a little early so a token never expires in the middle of a request.
        entry = _Token(
            token[0], frozenset(scope_list) | scopes, self.clock() + max(lifetime - 10, lifetime / 2)
        )
        self._tokens[scopes] = entry
        log.debug(
            "got a token for %s (scopes %s, %s s)", self.registry, " ".join(scope_list) or "-", lifetime
        )
        return entry

    def _plain_http_realm_hint(self, realm: str) -> str:
        """What helps when the realm says https but its server speaks plain http: the
        registry's realm setting (an http realm is accepted for a plain-http registry), or TLS
        on the token server; never --insecure-registry, which cannot change a realm's scheme."""
        parts = urlsplit(realm)
        as_http = redact_url(urlunsplit(("http", parts.netloc, parts.path, parts.query, "")))
        accepted = urlsplit(self.base_url).scheme == "http" and (
            parts.hostname == urlsplit(self.base_url).hostname
            or self.transport.options.is_insecure(parts.netloc.rpartition("@")[2])
        )
        fix = (
            f"make the registry's token realm {as_http} (its auth.token.realm setting)"
            if accepted
            else "give the token server a TLS certificate (and pass --ca-cert if its CA is private)"
        )
        return (
            f"the token server speaks plain http, but {self.registry} names its realm "
            f"{redact_url(realm)}; --insecure-registry cannot change a realm the registry names: {fix}"
            + (", or give the token server TLS" if accepted else "")
        )

    def _parse_token(self, fetched: Fetched, realm: str) -> tuple[str, float]:
        try:
            obj = json.loads(fetched.body)
        except (UnicodeDecodeError, ValueError):
            # Never quote the body: whatever it is, it may carry a token.
            content_type = fetched.headers.get("Content-Type", "no content type")
            raise AuthenticationError(
                f"token server {redact_url(realm)} answered {fetched.status} with a body that "
                f"is not JSON ({_shorten(content_type, 60)})",
                url=redact_url(realm),
                status=fetched.status,
            ) from None
        if not isinstance(obj, dict):
            raise AuthenticationError(f"token server {redact_url(realm)} answered a non-object")
        value = obj.get("token") or obj.get("access_token")
        if not isinstance(value, str) or not value.strip():
            # Never quote the body: it may hold a refresh token.
            raise AuthenticationError(
                f"token server {redact_url(realm)} answered {fetched.status} without a "
                "'token' or 'access_token'"
            )
        expires = obj.get("expires_in")
        lifetime = (
            float(expires)
            if isinstance(expires, int | float) and not isinstance(expires, bool) and expires > 0
            else float(DEFAULT_TOKEN_LIFETIME)
        )
        return value.strip(), lifetime


def _shorten(text: str, limit: int = 120) -> str:
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:limit] + ("..." if len(text) > limit else "")
