"""``imagesmith login`` / ``logout``: check credentials against a registry, then store them
where docker does.

Credentials are written to docker's config (``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``), or handed to the credential helper that config names for the host
(``credHelpers[host]``, else ``credsStore``). Podman's ``auth.json`` files are read by
:class:`~imagesmith.registry.credentials.CredentialStore` but never written. The password
never appears in messages, logs or ``repr``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from imagesmith.errors import AuthenticationError, UsageError
from imagesmith.oci.references import DOCKER_HUB, DOCKER_HUB_API
from imagesmith.registry.auth import Authenticator
from imagesmith.registry.credentials import Credentials, CredentialStore, registry_host
from imagesmith.registry.transport import RegistryOptions, Transport, origin_of

__all__ = ["login", "logout", "verify_credentials"]

log = logging.getLogger("imagesmith.registry.login")


class _Given(CredentialStore):
    """A store that answers only the credentials being verified (never the saved ones)."""

    def __init__(self, credentials: Credentials) -> None:
        super().__init__(environ={})
        self._given = credentials

    def __repr__(self) -> str:
        return "CredentialStore(<credentials being verified>)"

    def get(self, registry: str) -> Credentials | None:
        return self._given


def verify_credentials(
    registry: str, username: str, password: str, *, options: RegistryOptions | None = None
) -> bool:
    """``GET /v2/`` with these credentials through the challenge flow (Basic, or a Bearer token
    fetched with them). True when the registry accepted them, False when it asks for no
    authentication at all (nothing could be checked); a refusal is an
    :class:`AuthenticationError` naming the registry, never the password."""
    name = registry_host(registry)
    options = options or RegistryOptions()
    api_host = DOCKER_HUB_API if name == DOCKER_HUB else name
    base_url = f"{options.scheme(api_host)}://{api_host}"
    creds = Credentials(username, password)
    transport = Transport(options)
    auth = Authenticator(name, base_url, transport, _Given(creds))
    try:
        resp = transport.request(
            "GET",
            base_url + "/v2/",
            expect=(200,),
            host=name,
            auth=auth,
            auth_origin=origin_of(base_url),
            prefix=f"logging in to {name}",
        )
        resp.close()
    except AuthenticationError as exc:
        reason = str(exc).replace(f"; check your credentials, or run `docker login {name}`", "")
        raise AuthenticationError(
            f"login to {name} as {username!r} failed: {reason}; check the username and password",
            method=exc.method,
            url=exc.url,
            status=exc.status,
            codes=exc.codes,
        ) from None
    finally:
        transport.close()
    if auth.challenge is None:
        log.warning("%s asks for no authentication: the credentials could not be checked", name)
        return False
    return True


def login(
    registry: str,
    username: str,
    password: str,
    *,
    options: RegistryOptions | None = None,
    config_path: Path | None = None,
    verify: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Path | str:
    """Verify ``username``/``password`` against ``registry`` (unless ``verify`` is False), then
    store them where docker does.

    Returns the config file written, or ``docker-credential-NAME`` when a credential helper
    configured for the host stored them. Wrong credentials raise
    :class:`AuthenticationError` and nothing is written. ``environ`` replaces ``os.environ``
    for ``DOCKER_CONFIG``, ``HOME`` and ``PATH`` (the helpers).
    """
    name = registry_host(registry)
    if not username:
        raise UsageError("a username is needed to log in")
    if ":" in username:
        raise UsageError(f"invalid username {username!r}: it must not contain ':'")
    if not password:
        raise UsageError("a password is needed to log in (an empty one is refused)")
    if verify:
        verify_credentials(name, username, password, options=options)
    timeout = (options or RegistryOptions()).credential_helper_timeout
    store = CredentialStore(environ=environ, helper_timeout=timeout)
    return store.store(name, Credentials(username, password), config_path)


def logout(
    registry: str,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    options: RegistryOptions | None = None,
) -> bool:
    """Remove the credentials stored for ``registry`` from docker's config (every registry-wide
    ``auths`` key naming it) and, when one is configured, from the credential helper
    (``erase``, given ``options.credential_helper_timeout``). False when there was nothing
    to remove."""
    name = registry_host(registry)
    timeout = (options or RegistryOptions()).credential_helper_timeout
    return CredentialStore(environ=environ, helper_timeout=timeout).erase(name, config_path)
